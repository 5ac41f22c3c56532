import CKeel
import Glibc

/// An iothread (`-object iothread,id=`): a pthread running its own `EventLoop` without the big
/// lock, owning the devices given to it (their virtqueue dataplane). Threads holding the big
/// lock reach the owned state only through `runSync`, which runs the work on this thread while
/// the caller waits (QEMU's aio_context_acquire / dataplane start and stop), so the device state
/// is never touched by two threads at once and the work may rely on the caller's big lock.
public final class IOThread: @unchecked Sendable {
    public let id: String
    public let loop: EventLoop
    /// The OS thread name, as /proc/<pid>/task/<tid>/comm shows it (at most 15 bytes).
    public let threadName: String
    private var thread = pthread_t()
    /// The host thread ID (gettid), once started; QMP query-iothreads reports it.
    public private(set) var threadID: Int32 = 0
    private var running = false
    private let started: UnsafeMutablePointer<sem_t>

    /// `polling`: QEMU's iothread defaults (poll-max-ns 32768, grow and shrink 0) unless given.
    public init(id: String, polling: PollParameters = PollParameters()) throws {
        self.id = id
        loop = try EventLoop(lock: nil)
        loop.pollParameters = polling
        threadName = String(decoding: Array("iothread \(id)".utf8.prefix(15)), as: UTF8.self)
        started = .allocate(capacity: 1)
        sem_init(started, 0, 0)
    }

    deinit {
        stop()
        sem_destroy(started)
        started.deallocate()
    }

    /// Starts the thread; returns once it runs its loop.
    public func start() throws {
        guard !running else { return }
        let box = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&thread, nil, { arg in
            let t = Unmanaged<IOThread>.fromOpaque(arg!).takeRetainedValue()
            t.threadMain()
            return nil
        }, box)
        guard rc == 0 else {
            Unmanaged<IOThread>.fromOpaque(box).release()
            throw SystemError(errno: rc, "pthread_create(iothread \(id))")
        }
        running = true
        while sem_wait(started) != 0 && errno == EINTR {}
    }

    private func threadMain() {
        // The termination signals are read by the main loop's signalfd: never deliver them here.
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        _ = ckeel_set_thread_name(threadName)
        threadID = ckeel_gettid()
        sem_post(started)
        loop.run()
    }

    /// True on this iothread's own thread.
    public var isCurrent: Bool { running && pthread_equal(pthread_self(), thread) != 0 }

    /// Runs `work` on the iothread and returns when it has run. On the iothread itself, or once
    /// the thread has stopped (nobody else touches its devices then), it runs right here.
    public func runSync(_ work: () -> Void) {
        guard running, !isCurrent else { return work() }
        withoutActuallyEscaping(work) { w in
            // The posted closure may outlive this call (the loop drops its batch later): it holds
            // the work only through the box, emptied before returning.
            let box = SyncWork(w)
            loop.post { box.work?(); sem_post(box.done) }
            while sem_wait(box.done) != 0 && errno == EINTR {}
            box.work = nil
        }
    }

    /// Runs `work` on the iothread soon (from any thread).
    public func post(_ work: @escaping () -> Void) { loop.post(work) }

    /// Stops the loop after the work already posted and joins the thread.
    public func stop() {
        guard running else { return }
        loop.stop()
        pthread_join(thread, nil)
        running = false
    }
}

private final class SyncWork: @unchecked Sendable {
    var work: (() -> Void)?
    let done: UnsafeMutablePointer<sem_t>
    init(_ work: @escaping () -> Void) {
        self.work = work
        done = .allocate(capacity: 1)
        sem_init(done, 0, 0)
    }
    deinit { sem_destroy(done); done.deallocate() }
}
