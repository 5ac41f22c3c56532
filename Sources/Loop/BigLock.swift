import Glibc

/// The big lock (QEMU's BQL): device models are touched only while it is held, by the main loop's
/// callbacks and by vCPU threads around the emulation of one access. Never held inside KVM_RUN.
public final class BigLock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    public init() {
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
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
