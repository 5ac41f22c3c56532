import Devices
@testable import KeelKit
import Machine
import XCTest

final class CommandLineTests: XCTestCase {
    func configuration(_ args: [String]) throws -> MachineConfiguration {
        guard case .run(let c) = try KeelCommandLine.parse(args) else {
            XCTFail("expected a machine to run"); return MachineConfiguration()
        }
        return c
    }

    func error(_ args: [String]) -> String {
        do { _ = try KeelCommandLine.parse(args); return "no error" } catch { return "\(error)" }
    }

    func testQEMUStyleMachine() throws {
        let c = try configuration(["-enable-kvm", "-m", "512", "-smp", "2", "-kernel", "/k", "-initrd", "/i",
                                   "-append", "console=ttyS0 quiet", "-nographic", "-no-reboot", "-name", "vm1",
                                   "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-M", "microvm,x-option-roms=off"])
        XCTAssertEqual(c.accelerator, .kvm)
        XCTAssertEqual(c.memorySize, 512 << 20)
        XCTAssertEqual(c.cpuCount, 2)
        XCTAssertEqual(c.kernelPath, "/k")
        XCTAssertEqual(c.initrdPath, "/i")
        XCTAssertEqual(c.commandLine, "console=ttyS0 quiet")
        XCTAssertTrue(c.noReboot)
        XCTAssertEqual(c.name, "vm1")
        XCTAssertEqual(c.debugExit, .init(ioBase: 0xF4, ioSize: 4))
        XCTAssertEqual(c.serialPorts, [.stdio], "-nographic puts COM1 on stdio")
        XCTAssertTrue(c.stdioMux)
    }

    func testDefaultsFollowQEMU() throws {
        let c = try configuration(["-kernel", "/k"])
        XCTAssertEqual(c.accelerator, .tcg, "QEMU's default accelerator is tcg")
        XCTAssertEqual(c.memorySize, 128 << 20)
        XCTAssertEqual(c.cpuCount, 1)
        XCTAssertEqual(c.serialPorts, [.null], "COM1 exists, on QEMU's graphical console, which Keel does not have")
        XCTAssertEqual(try configuration(["-nographic", "-nodefaults"]).serialPorts, [])
    }

    func testSizesAndTopology() throws {
        XCTAssertEqual(try configuration(["-m", "1G"]).memorySize, 1 << 30)
        XCTAssertEqual(try configuration(["-m", "size=2048M"]).memorySize, 2 << 30)
        XCTAssertEqual(try configuration(["--m", "64"]).memorySize, 64 << 20)
        XCTAssertEqual(try configuration(["-smp", "cpus=3"]).cpuCount, 3)
        XCTAssertEqual(try configuration(["-smp", "sockets=1,cores=2,threads=2"]).cpuCount, 4)
        XCTAssertEqual(try configuration(["-accel", "kvm:tcg"]).accelerator, .kvm)
        XCTAssertEqual(try configuration(["-machine", "pc,accel=kvm"]).accelerator, .kvm)
        XCTAssertEqual(try configuration(["-M", "microvm"]).interruptChip, .split)
        XCTAssertEqual(try configuration(["-M", "pc"]).interruptChip, .inKernel)
        XCTAssertEqual(try configuration(["-M", "q35,kernel-irqchip=split"]).interruptChip, .split)
        XCTAssertEqual(try configuration(["-M", "microvm,kernel-irqchip=on"]).interruptChip, .inKernel)
        XCTAssertEqual(error(["-M", "pc,kernel-irqchip=off"]), "-M kernel-irqchip=off: Keel's kvm accelerator needs the local APICs in the kernel (on or split)")
    }

    func testSerialBackends() throws {
        let c = try configuration(["-serial", "file:/tmp/x.log", "-serial", "unix:/tmp/s,server=on,wait=off", "-serial", "null"])
        XCTAssertEqual(c.serialPorts.count, 3)
        XCTAssertEqual(c.serialPorts[0], .file(path: "/tmp/x.log"))
        XCTAssertFalse(c.stdioMux)
    }

    func testOneLineErrorsNameTheBadValue() {
        XCTAssertEqual(error(["-frobnicate"]), "-frobnicate: unknown option (see -help)")
        XCTAssertEqual(error(["-m"]), "-m: requires an argument")
        XCTAssertEqual(error(["-m", "12Q"]), "-m 12Q: unknown size suffix 'Q'")
        XCTAssertEqual(error(["-m", "lots"]), "-m lots: not a size")
        XCTAssertEqual(error(["-m", "99999999999T"]), "-m 99999999999T: size too large")
        XCTAssertEqual(error(["-smp", "two"]), "-smp: cpus=two: not a number")
        XCTAssertEqual(error(["-device", "e1000"]), "-device e1000: unknown device type 'e1000' (see -device help)")
        XCTAssertEqual(error(["-device", "isa-debug-exit,ioport=1"]), "-device isa-debug-exit,ioport=1: unknown parameter 'ioport'")
        XCTAssertEqual(error(["-device", "isa-debug-exit,iobase=0x10000"]), "-device: iobase=0x10000: out of range (at most 0xffff)")
        XCTAssertEqual(error(["-accel", "hvf"]), "-accel hvf: unknown accelerator (kvm or tcg)")
        XCTAssertTrue(error(["-M", "virt"]).hasPrefix("-M virt: unsupported machine type 'virt'"))
        XCTAssertEqual(error(["kernel.img"]), "kernel.img: unexpected argument (options start with '-'; see -help)")
        XCTAssertEqual(error(["-display", "gtk"]), "-display gtk: Keel has no graphical display; use -display none or -nographic")
        for e in [error(["-frobnicate"]), error(["-device", "e1000"])] { XCTAssertFalse(e.contains("\n")) }
    }

    func testValidationCatchesImpossibleMachines() {
        func invalid(_ args: [String]) -> String {
            do { try configuration(args).validate(); return "valid" } catch { return "\(error)" }
        }
        XCTAssertEqual(invalid(["-smp", "0", "-kernel", "/k"]), "-smp 0: at least one CPU is needed")
        XCTAssertEqual(invalid(["-smp", "300", "-kernel", "/k"]), "-smp 300: at most 255 CPUs are supported")
        XCTAssertTrue(invalid(["-m", "64T", "-kernel", "/k"]).hasPrefix("-m 67108864M: more than this host's"))
        XCTAssertEqual(invalid(["-m", "8", "-kernel", "/k"]), "-m 8M: at least 16 MiB of guest memory is needed")
        XCTAssertEqual(invalid([]), "no kernel given (use -kernel FILE)")
        XCTAssertEqual(invalid(["-kernel", "/k"]), "valid")
    }

    func testOptionListEscapesCommas() throws {
        var o = try OptionList(option: "-x", "drv,path=/a,,b,flag,nowait", impliedKey: "driver")
        XCTAssertEqual(o.implied, "drv")
        XCTAssertEqual(o.take("path"), "/a,b")
        XCTAssertEqual(try o.takeBool("flag"), true)
        XCTAssertEqual(try o.takeBool("wait"), false)
        XCTAssertNoThrow(try o.rejectUnused("x"))
    }

    func testHelpAndVersion() throws {
        guard case .help = try KeelCommandLine.parse(["-h"]) else { return XCTFail() }
        guard case .help = try KeelCommandLine.parse(["--help"]) else { return XCTFail() }
        guard case .version = try KeelCommandLine.parse(["--version"]) else { return XCTFail() }
        guard case .listDevices = try KeelCommandLine.parse(["-device", "help"]) else { return XCTFail() }
        guard case .listMachines = try KeelCommandLine.parse(["-machine", "help"]) else { return XCTFail() }
    }
}
