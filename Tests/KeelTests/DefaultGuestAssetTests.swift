import Foundation
import XCTest

/// Checks the default guest built by scripts/fetch-default-guest.sh: Debian's cloud kernel as a
/// bzImage and as a PVH ELF, and the busybox initramfs with the kernel's virtio modules.
final class DefaultGuestAssetTests: XCTestCase {
    static let repoRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let guestDir = repoRoot.appendingPathComponent("guest")
    static let script = repoRoot.appendingPathComponent("scripts/fetch-default-guest.sh")

    struct FetchFailed: Error {}
    struct RunResult { var status: Int32; var stdout: String; var stderr: String }

    static func run(_ command: String) throws -> RunResult {
        let errURL = FileManager.default.temporaryDirectory
            .appendingPathComponent("keel-guest-test-\(getpid())-\(UUID().uuidString).err")
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: errURL) }
        let errHandle = try FileHandle(forWritingTo: errURL)
        defer { try? errHandle.close() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = ["-c", command]
        process.currentDirectoryURL = repoRoot
        let out = Pipe()
        process.standardOutput = out
        // stderr goes to a file so a chatty child can never block on a full pipe.
        process.standardError = errHandle
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let errData = (try? Data(contentsOf: errURL)) ?? Data()
        return RunResult(status: process.terminationStatus,
                         stdout: String(decoding: outData, as: UTF8.self),
                         stderr: String(decoding: errData, as: UTF8.self))
    }

    /// Runs the fetch script once per test process (it is cached after the first build).
    static let fetchResult: Result<RunResult, Error> = Result { try run("bash '\(script.path)'") }

    func fetchedGuest() throws -> RunResult {
        let result = try Self.fetchResult.get()
        XCTAssertEqual(result.status, 0, "fetch-default-guest.sh failed:\n\(result.stderr)")
        if result.status != 0 { throw FetchFailed() }
        return result
    }

    func guestFile(_ name: String) throws -> Data {
        try Data(contentsOf: Self.guestDir.appendingPathComponent(name), options: .alwaysMapped)
    }

    func le16(_ d: Data, _ at: Int) -> UInt16 {
        UInt16(d[d.startIndex + at]) | UInt16(d[d.startIndex + at + 1]) << 8
    }
    func le32(_ d: Data, _ at: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 | UInt32(d[d.startIndex + at + $1]) << (8 * UInt32($1)) }
    }
    func le64(_ d: Data, _ at: Int) -> UInt64 {
        (0..<8).reduce(UInt64(0)) { $0 | UInt64(d[d.startIndex + at + $1]) << (8 * UInt64($1)) }
    }

    func testScriptPrintsThePathsAndIsCached() throws {
        let first = try fetchedGuest()
        for name in ["vmlinuz", "vmlinux", "initrd.img"] {
            XCTAssertTrue(first.stdout.contains(Self.guestDir.appendingPathComponent(name).path),
                          "script output lacks the path of \(name): \(first.stdout)")
        }
        let initrd = Self.guestDir.appendingPathComponent("initrd.img").path
        let before = try FileManager.default.attributesOfItem(atPath: initrd)[.modificationDate] as? Date
        let started = Date()
        let second = try Self.run("bash '\(Self.script.path)'")
        let elapsed = Date().timeIntervalSince(started)
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertEqual(second.stdout, first.stdout, "a cached run prints the same paths")
        XCTAssertLessThan(elapsed, 5, "a cached run should only print the paths")
        let after = try FileManager.default.attributesOfItem(atPath: initrd)[.modificationDate] as? Date
        XCTAssertNotNil(before)
        XCTAssertEqual(before, after, "a cached run rebuilt initrd.img")

        let version = String(decoding: try guestFile("VERSION"), as: UTF8.self)
        XCTAssertTrue(version.contains("package=linux-image-"), version)
        XCTAssertNotNil(version.range(of: #"(?m)^version=\S+$"#, options: .regularExpression), version)
    }

    /// Linux boot protocol setup header (Documentation/arch/x86/boot.rst).
    func testVmlinuzHasBzImageSetupHeader() throws {
        _ = try fetchedGuest()
        let image = try guestFile("vmlinuz")
        XCTAssertGreaterThan(image.count, 1 << 20)
        XCTAssertEqual(le16(image, 0x1FE), 0xAA55, "boot_flag")
        XCTAssertEqual(image.subdata(in: 0x202..<0x206), Data("HdrS".utf8), "header magic")
        let version = le16(image, 0x206)
        XCTAssertGreaterThanOrEqual(version, 0x020C, "boot protocol \(String(version, radix: 16)) < 2.12")
        let xloadflags = le16(image, 0x236)
        XCTAssertNotEqual(xloadflags & 0x1, 0, "XLF_KERNEL_64 not set")
        XCTAssertNotEqual(image[0x211] & 0x1, 0, "LOADED_HIGH not set: not a bzImage")
        let setupSects = Int(image[0x1F1] == 0 ? 4 : image[0x1F1])
        let payloadEnd = (setupSects + 1) * 512 + Int(le32(image, 0x248)) + Int(le32(image, 0x24C))
        XCTAssertLessThanOrEqual(payloadEnd, image.count, "payload runs past the end of the file")
    }

    /// Xen PVH ABI: an ELF note, owner "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (18), in a PT_NOTE.
    func testVmlinuxIsElf64WithPVHEntryNote() throws {
        _ = try fetchedGuest()
        let elf = try guestFile("vmlinux")
        XCTAssertGreaterThan(elf.count, 64)
        XCTAssertEqual(elf.prefix(4), Data([0x7F, 0x45, 0x4C, 0x46]), "ELF magic")
        XCTAssertEqual(elf[4], 2, "ELFCLASS64")
        XCTAssertEqual(elf[5], 1, "ELFDATA2LSB")
        XCTAssertEqual(le16(elf, 18), 62, "EM_X86_64")
        let phoff = le64(elf, 32), phentsize = Int(le16(elf, 54)), phnum = Int(le16(elf, 56))
        XCTAssertEqual(phentsize, 56)
        XCTAssertLessThanOrEqual(phoff + UInt64(phentsize * phnum), UInt64(elf.count))

        var entry: UInt64?
        for i in 0..<phnum {
            let ph = Int(phoff) + i * phentsize
            guard le32(elf, ph) == 4 else { continue }  // PT_NOTE
            let offset = Int(le64(elf, ph + 8)), size = Int(le64(elf, ph + 32))
            XCTAssertLessThanOrEqual(offset + size, elf.count)
            var at = offset
            while at + 12 <= offset + size {
                let namesz = Int(le32(elf, at)), descsz = Int(le32(elf, at + 4)), type = le32(elf, at + 8)
                let name = at + 12
                let desc = name + ((namesz + 3) & ~3)
                guard desc + descsz <= offset + size else { break }
                if type == 18, namesz == 4, elf.subdata(in: name..<name + 4) == Data("Xen\0".utf8) {
                    entry = descsz >= 8 ? le64(elf, desc) : UInt64(le32(elf, desc))
                }
                at = desc + ((descsz + 3) & ~3)
            }
        }
        let pvhEntry = try XCTUnwrap(entry, "no Xen PHYS32_ENTRY note: kernel lacks CONFIG_PVH")
        XCTAssertGreaterThan(pvhEntry, 0)
        XCTAssertLessThan(pvhEntry, 1 << 32, "PVH entry must be a 32-bit physical address")
    }

    func testInitrdHoldsInitBusyboxAndVirtioModules() throws {
        _ = try fetchedGuest()
        let initrd = Self.guestDir.appendingPathComponent("initrd.img").path
        let listing = try Self.run("set -o pipefail; gzip -dc '\(initrd)' | cpio -t --quiet")
        XCTAssertEqual(listing.status, 0, listing.stderr)
        let entries = Set(listing.stdout.split(separator: "\n").map(String.init))
        XCTAssertTrue(entries.contains("init"))
        XCTAssertTrue(entries.contains("bin/busybox"))
        XCTAssertTrue(entries.contains("bin/sh"))
        XCTAssertTrue(entries.contains("dev"))
        XCTAssertTrue(entries.contains("proc"))
        XCTAssertTrue(entries.contains("sys"))

        let config = String(decoding: try guestFile("config"), as: UTF8.self)
        for (module, option) in [("virtio_blk", "CONFIG_VIRTIO_BLK"), ("virtio_pci", "CONFIG_VIRTIO_PCI")] {
            let shipped = entries.contains { $0.hasPrefix("lib/modules/") && $0.hasSuffix("/\(module).ko") }
            let builtIn = config.contains("\n\(option)=y\n")
            XCTAssertTrue(shipped || builtIn, "\(module) is neither in the initramfs nor built in")
        }

        // /init loads modules.keel-load top to bottom: every module's dependencies come first.
        let order = try Self.run(
            "set -o pipefail; gzip -dc '\(initrd)' | cpio -i --quiet --to-stdout 'lib/modules/*/modules.keel-load'")
        XCTAssertEqual(order.status, 0, order.stderr)
        let load = order.stdout.split(separator: "\n").map { String($0.split(separator: "/").last ?? "") }
        if let blk = load.firstIndex(of: "virtio_blk.ko") {
            let core = try XCTUnwrap(load.firstIndex(of: "virtio.ko"), "virtio_blk is loaded without virtio")
            XCTAssertLessThan(core, blk)
        }
        if let net = load.firstIndex(of: "virtio_net.ko"), let failover = load.firstIndex(of: "net_failover.ko") {
            XCTAssertLessThan(failover, net)
        }
        for path in order.stdout.split(separator: "\n") where !path.isEmpty {
            XCTAssertTrue(entries.contains { $0.hasSuffix(String(path)) && $0.hasPrefix("lib/modules/") },
                          "modules.keel-load names \(path), which the initramfs lacks")
        }
    }
}
