import Devices

/// A monitor session on a chardev: `-monitor stdio`, `-qmp stdio`, or the human monitor behind a
/// muxed console's Ctrl-A c. The chardev holds this frontend weakly; the Monitor keeps it.
final class ChardevMonitor: ChardevFrontend, ChardevFocusObserver, MonitorTransport {
    let chardev: Chardev
    let session: MonitorSession

    init(chardev: Chardev, session: MonitorSession) {
        self.chardev = chardev
        self.session = session
    }

    func receiveCapacity() -> Int { 4096 }

    func receive(_ bytes: UnsafeRawBufferPointer) { session.receive(bytes) }

    func send(_ text: String) {
        var t = text
        t.withUTF8 { chardev.write(UnsafeRawBufferPointer($0)) }
    }

    /// A chardev monitor lives as long as Keel.
    func disconnect() {}

    func focusChanged(_ focused: Bool) {
        (session as? ChardevFocusObserverShim)?.focusChanged(focused)
    }
}
