@testable import KeelKit
import Machine
import XCTest

/// -qmp, -qmp-pretty, -monitor, -chardev, -mon, -S as QEMU spells them.
final class MonitorCommandLineTests: XCTestCase {
    func monitors(_ args: [String]) throws -> [MonitorSpec] {
        guard case .run(let c) = try KeelCommandLine.parse(["-kernel", "/k"] + args) else {
            XCTFail("expected a machine to run"); return []
        }
        return c.monitors
    }

    func error(_ args: [String]) -> String {
        do { _ = try KeelCommandLine.parse(["-kernel", "/k"] + args); return "no error" } catch { return "\(error)" }
    }

    func testQMPSockets() throws {
        let m = try monitors(["-qmp", "unix:/tmp/q.sock,server=on,wait=off", "-qmp-pretty", "tcp:localhost:4444,server,nowait",
                              "-qmp", "tcp::5555,server=on"])
        XCTAssertEqual(m, [
            MonitorSpec(mode: .control, backend: .unixSocket(path: "/tmp/q.sock"), wait: false, label: "compat_monitor0"),
            MonitorSpec(mode: .control, backend: .tcpSocket(host: "localhost", port: 4444), wait: false, pretty: true, label: "compat_monitor1"),
            MonitorSpec(mode: .control, backend: .tcpSocket(host: "", port: 5555), wait: true, label: "compat_monitor2"),
        ])
    }

    func testChardevAndMon() throws {
        let m = try monitors(["-mon", "chardev=c1,mode=control,pretty=on",
                              "-chardev", "socket,id=c1,host=127.0.0.1,port=4000,server=on,wait=off",
                              "-chardev", "socket,id=h,path=/tmp/h.sock,server=on,wait=off", "-mon", "chardev=h"])
        XCTAssertEqual(m, [
            MonitorSpec(mode: .control, backend: .tcpSocket(host: "127.0.0.1", port: 4000), wait: false, pretty: true, label: "c1"),
            MonitorSpec(mode: .readline, backend: .unixSocket(path: "/tmp/h.sock"), wait: false, label: "h"),
        ])
    }

    func testMonitorStdioAndStartPaused() throws {
        guard case .run(let c) = try KeelCommandLine.parse(["-kernel", "/k", "-S", "-monitor", "stdio", "-serial", "null"]) else {
            return XCTFail("expected a machine to run")
        }
        XCTAssertTrue(c.startPaused)
        XCTAssertEqual(c.monitors, [MonitorSpec(mode: .readline, backend: .stdio, label: "compat_monitor0")])
        XCTAssertEqual(try monitors(["-monitor", "none"]), [])
    }

    func testMistakesNameTheValue() {
        XCTAssertEqual(error(["-qmp", "unix:/tmp/q.sock"]), "-qmp unix:/tmp/q.sock: Keel's monitor sockets listen: add server=on")
        XCTAssertTrue(error(["-qmp", "tcp:host:http,server=on"]).contains("port 'http'"))
        XCTAssertTrue(error(["-qmp", "pty"]).hasPrefix("-qmp pty: unsupported monitor device"))
        XCTAssertTrue(error(["-qmp", "unix:/q,server=on,bogus=1"]).contains("unknown parameter 'bogus'"))
        XCTAssertEqual(error(["-mon", "chardev=nope,mode=control"]), "-mon chardev=nope,mode=control: chardev 'nope' not found")
        XCTAssertTrue(error(["-mon", "chardev=x,mode=fancy"]).contains("mode=fancy"))
        XCTAssertTrue(error(["-chardev", "socket,path=/x,server=on"]).contains("id="))
        XCTAssertTrue(error(["-chardev", "pty,id=x"]).contains("unsupported backend 'pty'"))
        XCTAssertTrue(error(["-nographic", "-monitor", "stdio"]).hasPrefix("stdio: used by more than one"))
    }
}
