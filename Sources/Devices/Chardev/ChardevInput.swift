import Glibc
import Loop

/// Reads a chardev's input fd on its event loop and hands bytes to the frontend, only as many as
/// the frontend can take: when it is full the fd leaves the loop (no busy polling) until
/// `resume()`. With the Ctrl-A escapes on, the fd keeps being read while the guest is not reading,
/// so C-a x still works: up to `heldLimit` bytes typed or pasted meanwhile are held (a pasted
/// script must not lose bytes), and only once that much is held does the fd pause too.
///
/// Everything except `resume()` runs on the loop's thread (or before the loop runs).
final class ChardevInput {
    static let heldLimit = 64 * 1024

    private let loop: EventLoop
    private let frontend: () -> ChardevFrontend?
    private var mux: MuxEscape?
    private let onMuxAction: (MuxEscape.Action) -> Void
    private let onEndOfInput: () -> Void

    private(set) var fd: Int32 = -1
    private var registered = false
    private var readBuffer = [UInt8](repeating: 0, count: 4096)
    /// Input already read and filtered, waiting for frontend space (mux mode only).
    private var held: [UInt8] = []
    /// The fd reached end of file (or failed): no more reading, but `held` is still owed.
    private var atEndOfInput = false
    private var filtered: [UInt8] = []

    init(loop: EventLoop, muxEscape: Bool, frontend: @escaping () -> ChardevFrontend?,
         onMuxAction: @escaping (MuxEscape.Action) -> Void, onEndOfInput: @escaping () -> Void) {
        self.loop = loop
        self.frontend = frontend
        self.mux = muxEscape ? MuxEscape() : nil
        self.onMuxAction = onMuxAction
        self.onEndOfInput = onEndOfInput
    }

    /// Starts reading `fd` (which the caller keeps owning).
    func start(fd: Int32) throws {
        stop()
        self.fd = fd
        do {
            try register()
        } catch {
            self.fd = -1
            throw error
        }
    }

    /// Stops reading; the fd is not closed.
    func stop() {
        unregister()
        fd = -1
        atEndOfInput = false
        held.removeAll()
    }

    /// The frontend freed space. Safe from any thread: the work is posted to the loop.
    func resume() {
        loop.post { [weak self] in self?.resumeOnLoop() }
    }

    private func register() throws {
        guard fd >= 0, !registered else { return }
        try loop.addReadable(fd: fd) { [weak self] _ in self?.readable() }
        registered = true
    }

    private func unregister() {
        guard registered else { return }
        loop.remove(fd: fd)
        registered = false
    }

    private func resumeOnLoop() {
        guard fd >= 0 else { return }
        deliverHeld()
        if !registered && !atEndOfInput { try? register() }
    }

    private func deliverHeld() {
        guard !held.isEmpty, let f = frontend() else { return }
        let n = min(max(f.receiveCapacity(), 0), held.count)
        guard n > 0 else { return }
        held.withUnsafeBytes { f.receive(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        held.removeFirst(n)
    }

    /// Hands `filtered` to the current frontend as far as it has room; holds a bounded rest.
    private func deliverFiltered() {
        defer { filtered.removeAll(keepingCapacity: true) }
        guard !filtered.isEmpty, let t = frontend() else { return }
        let direct = held.isEmpty ? min(max(t.receiveCapacity(), 0), filtered.count) : 0
        if direct > 0 {
            filtered.withUnsafeBytes { t.receive(UnsafeRawBufferPointer(rebasing: $0[0..<direct])) }
        }
        let rest = filtered.count - direct
        let room = max(Self.heldLimit - held.count, 0)
        if rest > 0 && room > 0 { held.append(contentsOf: filtered[direct..<(direct + min(rest, room))]) }
    }

    private func readable() {
        guard fd >= 0 else { return }
        deliverHeld()
        let target = frontend()
        // No frontend: input is read and discarded (escapes still work).
        var capacity = target.map { max($0.receiveCapacity(), 0) } ?? readBuffer.count
        if !held.isEmpty { capacity = 0 }
        if capacity == 0 && mux == nil {
            unregister()
            return
        }
        let want = min(capacity > 0 ? capacity : Self.heldLimit - held.count, readBuffer.count)
        if want <= 0 {
            unregister()
            return
        }
        let n = readBuffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, want) }
        if n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) {
            // Bytes typed (or piped) before the end are still delivered as the guest reads.
            unregister()
            atEndOfInput = true
            onEndOfInput()
            return
        }
        guard n > 0 else { return }
        readBuffer.withUnsafeBytes { raw in
            let got = UnsafeRawBufferPointer(rebasing: raw[0..<n])
            guard var m = mux else {
                target?.receive(got)
                return
            }
            // Byte by byte, so that an escape that switches the focus (C-a c) applies to the very
            // next byte: input before it reaches the old frontend, input after it the new one.
            filtered.removeAll(keepingCapacity: true)
            for i in 0..<got.count {
                var actions: [MuxEscape.Action] = []
                m.process(UnsafeRawBufferPointer(rebasing: got[i..<(i + 1)]), into: &filtered) { actions.append($0) }
                guard !actions.isEmpty else { continue }
                deliverFiltered()
                mux = m
                for a in actions { onMuxAction(a) }
                if fd < 0 || actions.contains(.quit) { return }
            }
            mux = m
            deliverFiltered()
        }
        if mux == nil, let t = frontend(), t.receiveCapacity() <= 0 { unregister() }
    }
}

/// Writes all of `bytes` to a blocking fd (stdout, a file), retrying short writes and EINTR.
/// Gives up on any other error (e.g. EAGAIN on a non-blocking fd): output is best effort.
func writeAll(fd: Int32, _ bytes: UnsafeRawBufferPointer) {
    guard var p = bytes.baseAddress else { return }
    var left = bytes.count
    while left > 0 {
        let n = Glibc.write(fd, p, left)
        if n < 0 {
            if errno == EINTR { continue }
            return
        }
        if n == 0 { return }
        p += n
        left -= n
    }
}
