@testable import KeelKit
import Machine
import XCTest

final class CommandLineVhostTests: XCTestCase {
    func configuration(_ args: [String]) throws -> MachineConfiguration {
        guard case .run(let c) = try KeelCommandLine.parse(["-kernel", "/k"] + args) else {
            XCTFail("expected a machine to run"); return MachineConfiguration()
        }
        return c
    }

    func error(_ args: [String]) -> String {
        do { let c = try configuration(args); try c.validate(); return "no error" } catch { return "\(error)" }
    }

    func testSharedMemoryNUMAChardevAndDevice() throws {
        let c = try configuration(["-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-numa", "node,memdev=mem",
                                   "-chardev", "socket,id=c0,path=/tmp/v.sock,reconnect=2",
                                   "-device", "vhost-user-blk-pci,chardev=c0,num-queues=2,queue-size=256"])
        XCTAssertEqual(c.memoryBackend, MemoryBackendConfiguration(id: "mem", size: 256 << 20, share: true))
        XCTAssertEqual(c.memorySize, 256 << 20, "RAM takes the backend's size when -m is absent")
        var v = VhostUserBlockConfiguration(chardev: "c0")
        v.path = "/tmp/v.sock"; v.reconnectSeconds = 2; v.queueCount = 2; v.queueSize = 256
        XCTAssertEqual(c.pciDevices, [.vhostUserBlock(v)])
        let m = try configuration(["-m", "512", "-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-machine", "pc,memory-backend=mem",
                                   "-chardev", "socket,id=c0,path=/s,server=on,wait=off", "-device", "vhost-user-blk-pci,chardev=c0"])
        guard case .vhostUserBlock(let s) = m.pciDevices.first else { return XCTFail("no device") }
        XCTAssertTrue(s.server)
        XCTAssertNoThrow(try m.validate())
    }

    func testMistakesGetOneLine() {
        XCTAssertEqual(error(["-chardev", "socket,id=c0,path=/s", "-device", "vhost-user-blk-pci,chardev=c0"]),
                       "Failed initializing vhost-user memory map, consider using -object memory-backend-memfd share=on")
        XCTAssertEqual(error(["-object", "memory-backend-ram,id=mem,size=128M", "-machine", "memory-backend=mem",
                              "-chardev", "socket,id=c0,path=/s", "-device", "vhost-user-blk-pci,chardev=c0"]),
                       "Failed initializing vhost-user memory map, consider using -object memory-backend-memfd share=on")
        XCTAssertEqual(error(["-device", "vhost-user-blk-pci,chardev=nope"]), "-device vhost-user-blk-pci,chardev=nope: no -chardev with id=nope")
        XCTAssertEqual(error(["-device", "vhost-user-blk-pci,chardev=c0,queue-size=100"]),
                       "-device vhost-user-blk-pci,chardev=c0,queue-size=100: queue-size=100 is not a power of two from 4 to 1024")
        XCTAssertEqual(error(["-m", "128", "-object", "memory-backend-memfd,id=mem,size=256M", "-machine", "memory-backend=mem"]),
                       "memory-backend mem: size=256M differs from -m 128M")
        XCTAssertEqual(error(["-machine", "memory-backend=zz"]), "memory-backend=zz: no -object with id=zz")
        XCTAssertEqual(error(["-chardev", "socket,id=c0,path=/s,reconnect=x"]), "-chardev socket,id=c0,path=/s,reconnect=x: reconnect=x is not a number of seconds")
        XCTAssertEqual(error(["-chardev", "socket,id=m,path=/s", "-mon", "chardev=m"]), "-mon chardev=m: chardev 'm' must listen (add server=on)")
    }
}
