import Loop
import XCTest
@testable import Monitor

/// A machine that records what the monitor asked of it.
final class FakeMachine: MachineControl {
    var runState: RunState = .running
    var calls: [String] = []
    weak var monitor: Monitor?

    func stopLocked() {
        calls.append("stop")
        guard runState == .running else { return }
        runState = .paused
        monitor?.emit("STOP")
    }
    func continueLocked() throws {
        calls.append("cont")
        guard runState == .paused else { return }
        runState = .running
        monitor?.emit("RESUME")
    }
    func systemResetLocked() { calls.append("reset") }
    func systemPowerdownLocked() { calls.append("powerdown") }
    func quitLocked() { calls.append("quit") }
    var machineInfo: MachineInfo {
        MachineInfo(name: "vm0", acceleratorIsKVM: true, kvmPresent: true, memorySize: 64 << 20,
                    machineTypes: ["pc", "q35"], defaultMachineType: "pc", maxCPUs: 255)
    }
    var cpus: [CPUInfo] { [CPUInfo(index: 0, threadID: 100), CPUInfo(index: 1, threadID: 101)] }
    var chardevs: [ChardevInfo] { [ChardevInfo(label: "serial0", filename: "stdio")] }
    var devices: [DeviceInfo] { [DeviceInfo(type: "isa-serial", properties: ["iobase = 1016 (0x3f8)"])] }
}

final class CapturingTransport: MonitorTransport {
    var text = ""
    func send(_ t: String) { text += t }
    func disconnect() {}

    /// Every complete JSON message sent so far, and clears them.
    func take() throws -> [JSON] {
        var out: [JSON] = []
        var s = JSONStreamer()
        var pieces: [JSONStreamer.Piece] = []
        s.feed(Array(text.utf8)) { pieces.append($0) }
        text = ""
        for case .message(let m) in pieces { out.append(try JSONParser.parse(m)) }
        return out
    }
}

final class QMPSessionTests: XCTestCase {
    var machine: FakeMachine!
    var monitor: Monitor!
    var loop: EventLoop!

    override func setUpWithError() throws {
        machine = FakeMachine()
        loop = try EventLoop()
        monitor = Monitor(machine: machine, loop: loop, version: .init(major: 7, minor: 2, micro: 0, package: "Keel test"))
        machine.monitor = monitor
    }

    private func session() throws -> (QMPSession, CapturingTransport) {
        let s = QMPSession(monitor: monitor, pretty: false)
        let t = CapturingTransport()
        s.transport = t
        s.start()
        return (s, t)
    }

    private func send(_ s: QMPSession, _ text: String) {
        var t = text
        t.withUTF8 { s.receive(UnsafeRawBufferPointer($0)) }
    }

    func testGreetingNegotiationAndIDs() throws {
        let (s, t) = try session()
        let greeting = try t.take()
        XCTAssertEqual(greeting.count, 1)
        XCTAssertEqual(greeting.first?["QMP"]?["version"]?["qemu"]?["major"], 7)
        XCTAssertEqual(greeting.first?["QMP"]?["capabilities"], [])
        XCTAssertTrue(t.text.isEmpty)

        send(s, #"{"execute": "query-status", "id": 1}"#)
        XCTAssertEqual(try t.take().first?["error"]?["class"], "CommandNotFound", "commands before negotiation")
        send(s, #"{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}"#)
        XCTAssertEqual(try t.take().first?["error"]?["desc"], "Capability 'oob' not available")
        send(s, #"{"execute": "qmp_capabilities", "id": "neg"}"#)
        XCTAssertEqual(try t.take(), [["return": [:], "id": "neg"]])
        send(s, #"{"execute": "qmp_capabilities"}"#)
        XCTAssertEqual(try t.take().first?["error"]?["class"], "CommandNotFound")
        send(s, #"{"execute": "query-status", "id": {"a": [1, "b"]}}"#)
        XCTAssertEqual(try t.take(), [["return": ["status": "running", "singlestep": false, "running": true], "id": ["a": [1, "b"]]]])
    }

    func testErrorClassesAndMessages() throws {
        let (s, t) = try session()
        send(s, #"{"execute": "qmp_capabilities"}"#)
        _ = try t.take()
        let cases: [(String, String, String)] = [
            ("garbage", "GenericError", "JSON parse error, invalid keyword 'garbage'"),
            ("[1, 2]", "GenericError", "QMP input must be a JSON object"),
            (#"{"execute": 5}"#, "GenericError", "QMP input member 'execute' must be a string"),
            (#"{"foo": 1}"#, "GenericError", "QMP input member 'foo' is unexpected"),
            (#"{"id": 3}"#, "GenericError", "QMP input lacks member 'execute'"),
            (#"{"execute": "stop", "arguments": []}"#, "GenericError", "QMP input member 'arguments' must be an object"),
            (#"{"execute": "nope"}"#, "CommandNotFound", "The command nope has not been found"),
            (#"{"execute": "query-status", "arguments": {"x": 1}}"#, "GenericError", "Parameter 'x' is unexpected"),
            (#"{"execute": "human-monitor-command", "arguments": {"command-line": 5}}"#, "GenericError",
             "Invalid parameter type for 'command-line', expected: string"),
            (#"{"execute": "human-monitor-command"}"#, "GenericError", "Parameter 'command-line' is missing"),
            (#"{"execute": "device_del", "arguments": {"id": "zz"}}"#, "DeviceNotFound", "Device 'zz' not found"),
            (#"{"exec-oob": "query-name"}"#, "GenericError", "The command query-name does not support OOB"),
        ]
        for (input, cls, desc) in cases {
            send(s, input + "\n") // a bare top-level token ends at a delimiter, as in QEMU's lexer
            let r = try t.take()
            XCTAssertEqual(r.count, 1, input)
            XCTAssertEqual(r.first?["error"]?["class"]?.stringValue, cls, input)
            XCTAssertEqual(r.first?["error"]?["desc"]?.stringValue, desc, input)
        }
        send(s, #"{"execute": "query-name", "id": 9}"#)
        XCTAssertEqual(try t.take(), [["return": ["name": "vm0"], "id": 9]], "still serving after errors")
    }

    func testQueryShapes() throws {
        let (s, t) = try session()
        _ = try t.take()
        send(s, #"{"execute": "qmp_capabilities"}{"execute": "query-cpus-fast"}{"execute": "query-kvm"}{"execute": "query-memory-size-summary"}{"execute": "query-chardev"}{"execute": "query-commands"}"#)
        let r = try t.take()
        XCTAssertEqual(r.count, 6)
        let cpu = r[1]["return"]?.arrayValue?.last
        XCTAssertEqual(cpu?["cpu-index"], 1)
        XCTAssertEqual(cpu?["thread-id"], 101)
        XCTAssertEqual(cpu?["target"], "x86_64")
        XCTAssertEqual(cpu?["props"]?["core-id"], 1)
        XCTAssertEqual(cpu?["qom-path"], "/machine/unattached/device[1]")
        XCTAssertEqual(r[2]["return"], ["enabled": true, "present": true])
        XCTAssertEqual(r[3]["return"], ["base-memory": .int(64 << 20), "plugged-memory": 0])
        XCTAssertEqual(r[4]["return"], [["frontend-open": true, "filename": "stdio", "label": "serial0"]])
        let names = r[5]["return"]?.arrayValue?.compactMap { $0["name"]?.stringValue } ?? []
        for n in ["qmp_capabilities", "query-status", "stop", "cont", "quit", "human-monitor-command", "query-pci"] {
            XCTAssertTrue(names.contains(n), n)
        }
    }

    func testEventsReachOnlyNegotiatedSessions() throws {
        let (a, ta) = try session()
        let (_, tb) = try session()
        let sa = a
        _ = try ta.take(); _ = try tb.take()
        send(sa, #"{"execute": "qmp_capabilities"}"#)
        _ = try ta.take()
        // Sessions register with the monitor only through a socket; deliver directly here.
        monitor.emit("STOP")
        sa.deliver(event: ["event": "X"])
        XCTAssertEqual(try ta.take().first?["event"], "X")
        XCTAssertTrue(tb.text.isEmpty)
        send(sa, #"{"execute": "stop"}"#)
        XCTAssertEqual(machine.calls, ["stop"])
        XCTAssertEqual(machine.runState, .paused)
    }

    func testHumanMonitorCommands() throws {
        let hmp = monitor.hmp
        XCTAssertEqual(hmp.execute("info status"), "VM status: running\r\n")
        XCTAssertEqual(hmp.execute("info cpus"), "* CPU #0: thread_id=100\r\n  CPU #1: thread_id=101\r\n")
        XCTAssertEqual(hmp.execute("info block"), "")
        XCTAssertTrue(hmp.execute("info qtree").contains("dev: isa-serial, id \"\"\r\n"))
        XCTAssertEqual(hmp.execute("bogus"), "unknown command: 'bogus'\r\n")
        XCTAssertEqual(hmp.execute("stop"), "")
        XCTAssertEqual(hmp.execute("info status"), "VM status: paused\r\n")
        _ = hmp.execute("c")
        _ = hmp.execute("system_powerdown")
        _ = hmp.execute("q")
        XCTAssertEqual(machine.calls, ["stop", "cont", "powerdown", "quit"])
    }

    func testHumanMonitorLineEditing() throws {
        let h = HMPSession(monitor: monitor)
        let t = CapturingTransport()
        h.transport = t
        h.start()
        XCTAssertTrue(t.text.hasSuffix("(qemu) "))
        t.text = ""
        var input = "info sx\u{7f}tatus\u{1b}[A\r\n"
        input.withUTF8 { h.receive(UnsafeRawBufferPointer($0)) }
        XCTAssertTrue(t.text.contains("VM status: running\r\n(qemu) "), t.text)
    }
}
