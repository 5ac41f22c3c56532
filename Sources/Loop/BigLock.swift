import Glibc

/// The big lock (QEMU's BQL): device models are touched only while it is held, by the main loop's
/// callbacks and by vCPU threads around the emulation of one access. Never held inside KVM_RUN.
public final class BigLock: @unchecked Sendable {
    fileprivate let mutex: UnsafeMutablePointer<pthread_mutex_t>

    public init() {
        mutex = .allocate(capacity: 1)
        // Adaptive: a thread finding it taken spins briefly before sleeping. Most holds (one
        // device access) are shorter than a futex sleep and wake-up on a busy host.
        var attributes = pthread_mutexattr_t()
        pthread_mutexattr_init(&attributes)
        pthread_mutexattr_settype(&attributes, Int32(PTHREAD_MUTEX_ADAPTIVE_NP))
        pthread_mutex_init(mutex, &attributes)
        pthread_mutexattr_destroy(&attributes)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inline(__always) public func lock() { pthread_mutex_lock(mutex) }
    @inline(__always) public func unlock() { pthread_mutex_unlock(mutex) }
    /// Takes the lock if it is free (it is not recursive: this fails while any thread holds it).
    public func tryLock() -> Bool { pthread_mutex_trylock(mutex) == 0 }

    @inline(__always)
    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// A condition to wait on while holding the big lock; waiting releases it (QEMU's
    /// qemu_cond_wait on the BQL), so a vCPU blocked on the lock can make progress meanwhile.
    public final class Condition: @unchecked Sendable {
        private let cond: UnsafeMutablePointer<pthread_cond_t>
        unowned let lock: BigLock

        public init(lock: BigLock) {
            self.lock = lock
            cond = .allocate(capacity: 1)
            pthread_cond_init(cond, nil)
        }

        deinit {
            pthread_cond_destroy(cond)
            cond.deallocate()
        }

        /// Call with the big lock held; returns with it held again.
        public func wait() { pthread_cond_wait(cond, lock.mutex) }
        public func broadcast() { pthread_cond_broadcast(cond) }
    }
}

/// A small mutex for state shared between threads outside the big lock (queues of posted work).
public final class Mutex<Value>: @unchecked Sendable {
    private let m: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    public init(_ value: Value) {
        self.value = value
        m = .allocate(capacity: 1)
        pthread_mutex_init(m, nil)
    }

    deinit {
        pthread_mutex_destroy(m)
        m.deallocate()
    }

    public func withLock<T>(_ body: (inout Value) throws -> T) rethrows -> T {
        pthread_mutex_lock(m)
        defer { pthread_mutex_unlock(m) }
        return try body(&value)
    }
}
