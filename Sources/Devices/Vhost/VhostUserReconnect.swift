import Glibc
import Loop

/// Losing and regaining the back-end (QEMU's chardev reconnect=N).
extension VhostUserDevice {
    /// Watches the socket while idle: the back-end never speaks unasked (no back-end channel
    /// is negotiated), so readability means it hung up or broke the protocol.
    func watchConnection() {
        if watchedFD >= 0 { loop.remove(fd: watchedFD); watchedFD = -1 }
        guard let fd = frontend.channel?.fd, fd >= 0 else { return }
        do {
            try loop.addReadable(fd: fd) { [unowned self] _ in
                // The event may be stale: a vCPU thread already read the reply it was for.
                guard self.frontend.channel?.hasInput() == true else { return }
                let why: VhostUserError
                do { let m = try self.frontend.channel?.receive(); why = VhostUserError("unexpected message \(m?.request ?? 0) from the back-end") }
                catch let e as VhostUserError { why = e } catch { why = VhostUserError("\(error)") }
                self.connectionLost(why)
            }
            watchedFD = fd
        } catch {}
    }

    /// The back-end is gone or misbehaved: drop the connection; each running ring will resume
    /// from the used ring's index (requests it had taken but not finished are taken again).
    func connectionLost(_ why: VhostUserError) {
        guard frontend.isConnected else { return }
        log("back-end connection lost: \(why)")
        if watchedFD >= 0 { loop.remove(fd: watchedFD); watchedFD = -1 }
        frontend.disconnect()
        if let t = transport {
            let r = vhostRings
            for i in r.running.indices where r.running[i] && i < t.queues.count {
                r.bases[i] = (try? t.queues[i].usedIndex(memory)) ?? r.bases[i]
                r.running[i] = false
            }
        }
        scheduleReconnect()
    }

    func scheduleReconnect() {
        if case .listen = frontend.endpoint, frontend.listenFD >= 0 {
            // server=on: the back-end reconnects to us, as to QEMU's server chardev; accept it
            // whenever it does, reconnect= or not.
            watchListener()
            return
        }
        guard reconnectSeconds > 0 else { return }
        if reconnectTimer == nil {
            reconnectTimer = try? loop.makeTimer { [unowned self] in self.tryReconnect() }
        }
        reconnectTimer?.arm(afterNanoseconds: reconnectSeconds * 1_000_000_000)
    }

    func watchListener() {
        guard !listenerWatched else { return }
        do {
            try loop.addReadable(fd: frontend.listenFD) { [unowned self] _ in
                self.loop.remove(fd: self.frontend.listenFD)
                self.listenerWatched = false
                self.tryReconnect()
            }
            listenerWatched = true
        } catch {
            log("cannot watch the listening socket: \(error)")
        }
    }

    func tryReconnect() {
        guard !frontend.isConnected else { return }
        do throws(VhostUserError) {
            try frontend.connect(waitForPeer: false)
            let before = (deviceFeatures, transportFeatures)
            try readBackendView()
            guard before == (deviceFeatures, transportFeatures) else {
                throw VhostUserError("the new back-end offers different features")
            }
            if activated && !paused { try handOver() }
            watchConnection()
            log("back-end reconnected")
            onReconnect?()
        } catch {
            frontend.disconnect()
            scheduleReconnect()
        }
    }
}

extension VirtioPCIDevice {
    /// A back-end put chains on queue `index`'s used ring and signalled its call eventfd.
    func backendCalled(queue index: Int) {
        guard isProcessing, index >= 0, index < queues.count else { return }
        interrupt(vector: queues[index].msixVector, isrBit: 1)
    }
}
