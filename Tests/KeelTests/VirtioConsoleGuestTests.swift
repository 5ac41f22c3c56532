import Foundation
import XCTest

extension GuestRecipe {
    static let virtioConsole = pvh("virtio-console", "virtio-console.gc")
}

/// `-device virtio-serial-pci -device virtconsole,chardev=ID`: the guest driver's MULTIPORT
/// handshake makes port 0 a console (Linux's hvc0), and its bytes travel to and from the chardev.
final class VirtioConsoleGuestTests: XCTestCase {
    func testConsolePortOverAUnixSocketChardev() throws {
        guard FileManager.default.fileExists(atPath: "/dev/kvm") else {
            throw XCTSkip("/dev/kvm is absent: this host cannot run Keel's kvm accelerator")
        }
        let runner = try KeelRunner.fromEnvironment()
        guard case .keel = runner.emulator else { throw XCTSkip("-chardev for virtconsole is spelled for Keel here") }
        let socket = "/tmp/keel-vcon-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        defer { unlink(socket) }
        for machine in ["pc", "microvm"] {
            var o = MachineOptions(kernel: try GuestBuilder.shared.image(for: .virtioConsole))
            o.machine = machine
            let args = runner.arguments(for: o) + [
                "-chardev", "socket,id=con0,path=\(socket),server=on,wait=on",
                "-device", "virtio-serial-pci", "-device", "virtconsole,chardev=con0",
            ]
            var hello = "", reply = ""
            let r = try KeelRunner.runCommand(executable: runner.binary, arguments: args, timeout: 60, whileRunning: {
                let client = try UnixSocketClient(path: socket, timeout: 20)
                hello = client.receive(until: "hello from the guest\n!", timeout: 20)
                try client.send(Data("ping pong\n".utf8))
                reply = client.receive(until: "hvc0: got 'PING PONG'\n", timeout: 20)
            })
            XCTAssertEqual(r.status, KVMGuestTestsStatus.pass, "\(machine):\n\(r.stdout)\n\(r.stderr)")
            XCTAssertEqual(hello, "hvc0: hello from the guest\n!", machine)
            XCTAssertEqual(reply, "hvc0: got 'PING PONG'\n", machine)
            for event in [1, 4, 6] {
                XCTAssertTrue(r.lines.contains("virtio-console: control event \(event) for port 0"), "\(machine):\n\(r.stdout)")
            }
            XCTAssertTrue(r.lines.contains { $0.hasPrefix("virtio-console: got 'PING PONG', ") }, r.stdout)
        }
    }

    func testVirtconsoleOptionsAreChecked() throws {
        let keel = PackagePaths.root.appendingPathComponent(".build/debug/keel").path
        guard FileManager.default.isExecutableFile(atPath: keel) else { throw XCTSkip("run `swift build` first") }
        let kernel = try GuestBuilder.shared.image(for: .hello).path
        let cases: [([String], String)] = [
            (["-device", "virtconsole,chardev=c0"], "no virtio-serial-pci before it"),
            (["-device", "virtio-serial-pci", "-device", "virtconsole,chardev=c0"], "no -chardev with id=c0"),
            (["-chardev", "stdio,id=c0", "-device", "virtio-serial-pci", "-device", "virtconsole,chardev=c0"], "stdio is already in use"),
            (["-device", "virtio-serial-pci"], "no -device virtconsole"),
        ]
        for (extra, message) in cases {
            let r = try KeelRunner.runCommand(executable: keel, arguments: ["-accel", "tcg", "-kernel", kernel, "-nographic"] + extra, timeout: 30)
            XCTAssertEqual(r.status, 1, extra.joined(separator: " "))
            XCTAssertTrue(r.stderr.contains(message), "\(extra): \(r.stderr)")
        }
    }
}
