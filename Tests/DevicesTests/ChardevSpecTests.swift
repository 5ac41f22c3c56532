import Devices
import XCTest

final class ChardevSpecTests: XCTestCase {
    func testGoodSpecs() throws {
        XCTAssertEqual(try ChardevSpec.parseSerial("stdio"), .stdio)
        XCTAssertEqual(try ChardevSpec.parseSerial("null"), .null)
        XCTAssertEqual(try ChardevSpec.parseSerial("none"), .disabled)
        XCTAssertEqual(try ChardevSpec.parseSerial("file:/tmp/out.log"), .file(path: "/tmp/out.log"))
        XCTAssertEqual(try ChardevSpec.parseSerial("file:a:b"), .file(path: "a:b"))
        XCTAssertEqual(try ChardevSpec.parseSerial("unix:/tmp/s"), .unixSocket(path: "/tmp/s", server: false, wait: true))
        XCTAssertEqual(try ChardevSpec.parseSerial("unix:/tmp/s,server=on,wait=off"),
                       .unixSocket(path: "/tmp/s", server: true, wait: false))
        XCTAssertEqual(try ChardevSpec.parseSerial("unix:/tmp/s,server,nowait"),
                       .unixSocket(path: "/tmp/s", server: true, wait: false))
        XCTAssertEqual(try ChardevSpec.parseSerial("unix:/tmp/s,server=on"),
                       .unixSocket(path: "/tmp/s", server: true, wait: true))
        XCTAssertEqual(try ChardevSpec.parseSerial("unix:/tmp/s,server=off"),
                       .unixSocket(path: "/tmp/s", server: false, wait: true))
        let mon = try ChardevSpec.parseSerialWithMonitor("mon:stdio")
        XCTAssertEqual(mon.spec, .stdio)
        XCTAssertTrue(mon.monitor)
        XCTAssertFalse(try ChardevSpec.parseSerialWithMonitor("stdio").monitor)
        XCTAssertEqual(ChardevSpec.unixSocket(path: "/x", server: true, wait: false).description, "unix:/x,server=on,wait=off")
    }

    func testBadSpecsNameTheValue() {
        let bad = ["", "tcp:127.0.0.1:4444", "pty", "file:", "unix:", "unix:,server=on",
                   "unix:/x,server=maybe", "unix:/x,wait=off", "unix:/x,bogus=1", "stdio:x",
                   "unix:/" + String(repeating: "a", count: 120), "mon:none"]
        for s in bad {
            XCTAssertThrowsError(try ChardevSpec.parseSerial(s), "'\(s)' should be rejected") { error in
                let message = "\(error)"
                XCTAssertTrue(message.hasPrefix("-serial \(s): "), message)
            }
        }
        XCTAssertThrowsError(try ChardevSpec.parseSerial("vc")) { error in
            XCTAssertTrue("\(error)".contains("unsupported backend 'vc'"), "\(error)")
        }
    }
}

final class MuxEscapeTests: XCTestCase {
    func testEscapes() {
        var mux = MuxEscape()
        var out: [UInt8] = []
        var actions: [MuxEscape.Action] = []
        let input: [UInt8] = [0x61, 0x01, 0x01, 0x62, 0x01, 0x68, 0x01, 0x7A, 0x63, 0x01, 0x63, 0x01]
        input.withUnsafeBytes { mux.process($0, into: &out) { actions.append($0) } }
        XCTAssertEqual(out, [0x61, 0x01, 0x62, 0x63], "C-a C-a sends C-a; unknown escapes are swallowed")
        XCTAssertEqual(actions, [.help, .monitor])
        // The escape state carries over to the next chunk of input.
        [UInt8(0x78), 0x64].withUnsafeBytes { mux.process($0, into: &out) { actions.append($0) } }
        XCTAssertEqual(actions, [.help, .monitor, .quit])
        XCTAssertEqual(out, [0x61, 0x01, 0x62, 0x63], "input after C-a x is dropped")
        XCTAssertTrue(MuxEscape.helpText.contains("C-a x"))
    }
}
