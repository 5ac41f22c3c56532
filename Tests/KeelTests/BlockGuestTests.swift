import Foundation
import XCTest

/// virtio-blk as Debian's kernel under -accel tcg sees it, with qemu-img as the judge (issues 5
/// and 9): a flushed write survives SIGKILL of keel (raw and qcow2); qcow2 images written by the
/// guest pass `qemu-img check` and read back through qemu-img as the guest wrote them (with and
/// without backing files); keel killed in the middle of flushed qcow2 writes leaves consistent
/// images holding every write the guest saw flushed. The guest's scripts ride in a second
/// initramfs archive, so the shell is typed one short line.
final class BlockGuestTests: XCTestCase {
    var guest: DefaultGuest!
    var scratch: URL { guest.scratch }

    override func setUpWithError() throws {
        guest = try DefaultGuest(scratchPrefix: "keel-block-guest")
    }

    override func tearDownWithError() throws {
        guest?.removeScratch()
    }

    // MARK: host tools

    func qemuImg(_ arguments: [String]) throws -> RunResult {
        guard let qemuImg = KeelRunner.which("qemu-img") else {
            throw KeelRunnerError.missingBinary("qemu-img", hint: "install qemu-utils (scripts/install-dependencies.sh)")
        }
        return try KeelRunner.runCommand(executable: qemuImg, arguments: arguments, timeout: 120)
    }

    /// `qemu-img create -f qcow2 [-o options] path size`.
    func createQcow2(_ name: String, size: String, options: [String] = []) throws -> URL {
        let url = scratch.appendingPathComponent(name)
        let r = try qemuImg(["create", "-q", "-f", "qcow2"] + (options.isEmpty ? [] : ["-o", options.joined(separator: ",")]) + [url.path, size])
        XCTAssertEqual(r.status, 0, "qemu-img create \(name): \(r.stderr)")
        return url
    }

    /// `qemu-img check`: its exit status (0 clean, 2 corrupt, 3 leaks only) and report.
    func check(_ image: URL) throws -> (status: Int32, report: String) {
        let r = try qemuImg(["check", image.path])
        return (r.status, r.stdout + r.stderr)
    }

    /// The guest-visible bytes of `image` as qemu-img reads them (backing files included).
    func contentsThroughQemuImg(_ image: URL) throws -> Data {
        let out = scratch.appendingPathComponent(image.lastPathComponent + ".raw")
        let r = try qemuImg(["convert", "-O", "raw", image.path, out.path])
        XCTAssertEqual(r.status, 0, "qemu-img convert \(image.lastPathComponent): \(r.stderr)")
        defer { try? FileManager.default.removeItem(at: out) }
        return try Data(contentsOf: out)
    }

    func drive(_ image: URL, id: String, format: String) -> [String] {
        ["-drive", "file=\(image.path),if=none,id=\(id),format=\(format)", "-device", "virtio-blk-pci,drive=\(id)"]
    }

    func script(_ name: String, _ lines: [String]) -> (name: String, contents: Data) {
        (name, Data((["#!/bin/sh"] + lines).joined(separator: "\n").utf8 + [0x0A]))
    }

    /// Block `number` of the crash loop as `yes LINE | head -c LENGTH` makes it in the guest.
    static func numberedBlock(_ number: Int, length: Int) -> Data {
        let line = Array("FLUSHED-BLOCK-\(number)\n".utf8)
        return Data((0..<length).map { line[$0 % line.count] })
    }

    // MARK: a. a flushed write survives SIGKILL

    /// The guest writes 192 KiB (not cluster-aligned) with `conv=fsync` and prints a marker once
    /// dd has returned; keel is SIGKILLed on the marker. The write must be in the image.
    func flushedWriteSurvivesKill(format: String) throws {
        let size = 8 << 20
        let image: URL, before: Data
        if format == "raw" {
            (image, before) = try guest.makeDisk("a.raw", bytes: size, seed: 5)
        } else {
            image = try createQcow2("a.qcow2", size: "8M")
            before = Data(count: size)
        }
        let payload = DefaultGuest.pattern(bytes: 192 << 10, seed: 6)
        let initrd = try guest.initramfs(adding: [
            ("pat", payload),
            script("w.sh", ["dd if=/pat of=/dev/vda bs=4096 seek=37 conv=notrunc,fsync 2>/dev/null && echo DONE-W$((6*7))"]),
        ])
        let r = try guest.runShellWatching(["sh /w.sh"], extra: drive(image, id: "d0", format: format), initrd: initrd) { keel in
            // The typed line does not contain the marker: the guest's arithmetic makes it.
            let seen = keel.waitForOutput(containing: "DONE-W42", timeout: 200)
            keel.signal(SIGKILL)
            XCTAssertTrue(seen, "the guest never reported the flushed write:\n\(keel.output.suffix(3000))")
        }
        XCTAssertEqual(r.status, 128 + SIGKILL, "keel must have died by SIGKILL:\n\(r.stdout.suffix(2000))\n\(r.stderr)")
        var expected = before
        expected.replaceSubrange((37 * 4096)..<(37 * 4096 + payload.count), with: payload)
        if format == "raw" {
            XCTAssertTrue(try Data(contentsOf: image) == expected, "the raw file must hold the flushed write")
        } else {
            let c = try check(image)
            XCTAssertTrue(c.status == 0 || c.status == 3, "qemu-img check after SIGKILL (exit \(c.status)):\n\(c.report)")
            XCTAssertTrue(try contentsThroughQemuImg(image) == expected, "the qcow2 image must hold the flushed write")
        }
    }

    func testFlushedWriteSurvivesSIGKILLRaw() throws { try flushedWriteSurvivesKill(format: "raw") }

    func testFlushedWriteSurvivesSIGKILLQcow2() throws { try flushedWriteSurvivesKill(format: "qcow2") }

    // MARK: b. qcow2 images written by the guest, judged by qemu-img

    /// Three qcow2 disks made by qemu-img: plain v3 with 64 KiB clusters; v3 over a raw backing
    /// file; v2 (compat=0.10) with 4 KiB clusters over a qcow2 backing file. The guest writes the
    /// same pieces to each (sub-cluster, cluster-crossing, 1 MiB aligned, zeroes over backing
    /// data) and powers off. qemu-img check finds no errors and no leaks, and qemu-img's view of
    /// each disk is its starting content with exactly those writes.
    func testGuestWrittenQcow2PassesQemuImgCheckAndReadsBack() throws {
        let size = 16 << 20
        let plain = try createQcow2("plain.qcow2", size: "16M")
        let (baseRaw, baseRawData) = try guest.makeDisk("base.raw", bytes: size, seed: 11)
        let overRaw = try createQcow2("over-raw.qcow2", size: "16M",
                                      options: ["backing_file=\(baseRaw.path)", "backing_fmt=raw"])
        let (seedRaw, baseQcowData) = try guest.makeDisk("seed.raw", bytes: size, seed: 12)
        let baseQcow = scratch.appendingPathComponent("base.qcow2")
        let convert = try qemuImg(["convert", "-O", "qcow2", seedRaw.path, baseQcow.path])
        XCTAssertEqual(convert.status, 0, convert.stderr)
        let overQcow = try createQcow2("over-qcow2.qcow2", size: "16M",
                                       options: ["backing_file=\(baseQcow.path)", "backing_fmt=qcow2", "cluster_size=4096", "compat=0.10"])

        let payload = DefaultGuest.pattern(bytes: (1 << 20) + (64 << 10), seed: 13)
        // (bs, seek, skip, count) of each dd from /pat, and one 4 KiB block of zeroes.
        let pieces = [(512, 3, 0, 5), (4096, 30, 1, 40), (1 << 20, 5, 0, 1), (4096, 1000, 7, 3), (65536, 200, 3, 2)]
        var lines = ["d=/dev/$1"]
        for (bs, seek, skip, count) in pieces {
            lines.append("dd if=/pat of=$d bs=\(bs) seek=\(seek) skip=\(skip) count=\(count) conv=notrunc 2>/dev/null || echo FAIL")
        }
        lines.append("dd if=/dev/zero of=$d bs=4096 seek=2 count=1 conv=notrunc 2>/dev/null || echo FAIL")
        lines.append("sync; echo wrote-$1")
        let initrd = try guest.initramfs(adding: [("pat", payload), script("w.sh", lines)])
        let extra = drive(plain, id: "d0", format: "qcow2") + drive(overRaw, id: "d1", format: "qcow2")
            + drive(overQcow, id: "d2", format: "qcow2")
        let r = try guest.runShell(["for d in vda vdb vdc; do sh /w.sh $d; done"], extra: extra, initrd: initrd, timeout: 300)
        let context = "\n" + r.stdout.suffix(3000)
        for d in ["vda", "vdb", "vdc"] { XCTAssertTrue(r.lines.contains("wrote-\(d)"), context) }
        XCTAssertFalse(r.lines.contains("FAIL"), "a guest write failed:\(context)")

        func written(over start: Data) -> Data {
            var d = start
            for (bs, seek, skip, count) in pieces {
                d.replaceSubrange((bs * seek)..<(bs * (seek + count)), with: payload[(bs * skip)..<(bs * (skip + count))])
            }
            d.replaceSubrange(8192..<12288, with: Data(count: 4096))
            return d
        }
        for (image, start) in [(plain, Data(count: size)), (overRaw, baseRawData), (overQcow, baseQcowData)] {
            let name = image.lastPathComponent
            let c = try check(image)
            XCTAssertEqual(c.status, 0, "qemu-img check \(name):\n\(c.report)")
            XCTAssertTrue(c.report.contains("No errors were found on the image."), "\(name):\n\(c.report)")
            XCTAssertFalse(c.report.contains("leaked"), "\(name):\n\(c.report)")
            XCTAssertTrue(try contentsThroughQemuImg(image) == written(over: start),
                          "qemu-img must read \(name) as the guest wrote it over its starting content")
        }
        // The backing files are only read.
        XCTAssertTrue(try Data(contentsOf: baseRaw) == baseRawData, "the raw backing file must be unchanged")
        XCTAssertEqual(try check(baseQcow).status, 0)
        XCTAssertTrue(try contentsThroughQemuImg(baseQcow) == baseQcowData, "the qcow2 backing file must be unchanged")
    }

    // MARK: c. SIGKILL during flushed qcow2 writes

    /// The crash loop's two disks: `firstUnit(n)` is where block n starts, in 4 KiB units.
    struct CrashDisk {
        var image: URL
        var firstUnit: (Int) -> Int
        /// What qemu-img read before this round.
        var before: Data
    }

    static let crashBlockLength = 32 << 10
    static let crashLastBlock = 120

    /// One round: the guest writes blocks `first`... (each flushed on both disks, then
    /// "FLUSHED N"), keel is SIGKILLed after a random block, and both images are checked against
    /// what the guest saw flushed. Returns the disks with their new contents.
    func crashRound(_ disks: [CrashDisk], from first: Int, initrd: URL) throws -> [CrashDisk] {
        let blockLength = Self.crashBlockLength, lastBlock = Self.crashLastBlock
        let killAfter = first + Int.random(in: 7...25)
        let extra = drive(disks[0].image, id: "d0", format: "qcow2") + drive(disks[1].image, id: "d1", format: "qcow2")
        let r = try guest.runShellWatching(["sh /loop.sh \(first)"], extra: extra, initrd: initrd, timeout: 300) { keel in
            // The tty ends lines with \r\n; compare whole lines.
            let seen = keel.waitForOutput(timeout: 240) { RunResult.consoleLines($0).contains("FLUSHED \(killAfter)") }
            // Land somewhere inside the next block's writes.
            Thread.sleep(forTimeInterval: Double.random(in: 0...0.15))
            keel.signal(SIGKILL)
            XCTAssertTrue(seen, "the loop never reached block \(killAfter):\n\(keel.output.suffix(3000))")
        }
        let context = "\n" + r.stdout.suffix(2500)
        XCTAssertEqual(r.status, 128 + SIGKILL, "keel must have died by SIGKILL:\(context)\n\(r.stderr)")
        XCTAssertFalse(r.stdout.contains("WRITE-FAILED"), context)
        XCTAssertFalse(r.stdout.contains("LOOP-END"), "the kill must land inside the loop:\(context)")
        let flushed = r.lines.compactMap { line -> Int? in
            guard line.hasPrefix("FLUSHED ") else { return nil }
            return Int(line.dropFirst("FLUSHED ".count))
        }.max() ?? 0
        XCTAssertGreaterThanOrEqual(flushed, killAfter, context)

        var after: [CrashDisk] = []
        for disk in disks {
            let name = disk.image.lastPathComponent
            let c = try check(disk.image)
            XCTAssertTrue(c.status == 0 || c.status == 3, "qemu-img check \(name) after SIGKILL (exit \(c.status)):\n\(c.report)")
            print("round from block \(first): SIGKILL after FLUSHED \(flushed): qemu-img check \(name) exit \(c.status)")
            let contents = try contentsThroughQemuImg(disk.image)
            XCTAssertEqual(contents.count, disk.before.count, name)
            guard contents.count == disk.before.count else { continue }
            let units = blockLength / 4096
            // What must read back: the earlier content with blocks first...flushed written.
            var mustRead = disk.before
            var writer = [Int](repeating: 0, count: disk.before.count / 4096)
            for n in first...lastBlock {
                let offset = disk.firstUnit(n) * 4096
                if n <= flushed { mustRead.replaceSubrange(offset..<(offset + blockLength), with: Self.numberedBlock(n, length: blockLength)) }
                for u in disk.firstUnit(n)..<(disk.firstUnit(n) + units) { writer[u] = n }
            }
            var bad: [String] = []
            for u in writer.indices {
                let range = (u * 4096)..<((u + 1) * 4096)
                let got = contents[range]
                if got == mustRead[range] { continue }
                let n = writer[u]
                if n > flushed {
                    // A block written after the last FLUSHED line: old or new, per piece.
                    let k = u - disk.firstUnit(n)
                    if got == Self.numberedBlock(n, length: blockLength)[(k * 4096)..<((k + 1) * 4096)] { continue }
                }
                bad.append(n == 0 ? "4 KiB unit \(u) (not written this round) changed"
                           : n <= flushed ? "unit \(u) of flushed block \(n) lost" : "unit \(u) of block \(n) reads neither old nor new data")
                if bad.count > 5 { break }
            }
            XCTAssertTrue(bad.isEmpty, "\(name) after SIGKILL at FLUSHED \(flushed): \(bad.joined(separator: "; "))")
            after.append(CrashDisk(image: disk.image, firstUnit: disk.firstUnit, before: contents))
        }
        return after
    }

    /// The guest loops writing numbered 32 KiB blocks, each flushed (`conv=fsync`) to two qcow2
    /// disks — 4 KiB clusters with a new L2 table every other block, and 64 KiB clusters over a
    /// raw backing file so every block copies backing data around itself — and prints
    /// "FLUSHED N" after both. keel is SIGKILLed at a random point of the loop. qemu-img check
    /// must find both images consistent (leaks allowed), every block whose FLUSHED line was
    /// printed must read back, and every other 4 KiB piece must read either as before or as the
    /// block the guest was writing there. A second round reopens the killed images, rewrites
    /// from the first block not known flushed, and is killed again.
    func testSIGKILLDuringFlushedQcow2WritesKeepsImagesConsistent() throws {
        let blockLength = Self.crashBlockLength
        // Offsets in 4 KiB units: vda's blocks are 1 MiB + 4 KiB apart, vdb's 36 KiB apart.
        let a = try createQcow2("crash-a.qcow2", size: "128M", options: ["cluster_size=4096"])
        let (backing, backingData) = try guest.makeDisk("crash-base.raw", bytes: 16 << 20, seed: 21)
        let b = try createQcow2("crash-b.qcow2", size: "16M", options: ["backing_file=\(backing.path)", "backing_fmt=raw"])
        let loop = script("loop.sh", [
            "i=$1",
            "while [ $i -le \(Self.crashLastBlock) ]; do",
            "  yes FLUSHED-BLOCK-$i | head -c \(blockLength) > /tmp/b",
            "  if dd if=/tmp/b of=/dev/vda bs=4096 seek=$((i*257)) conv=notrunc,fsync 2>/dev/null &&",
            "     dd if=/tmp/b of=/dev/vdb bs=4096 seek=$((i*9+1)) conv=notrunc,fsync 2>/dev/null; then",
            "    echo \"FLUSHED $i\"",
            "  else echo \"WRITE-FAILED $i\"; fi",
            "  i=$((i+1))",
            "done",
            "echo LOOP-END",
        ])
        let initrd = try guest.initramfs(adding: [loop])
        var disks = [CrashDisk(image: a, firstUnit: { $0 * 257 }, before: Data(count: 128 << 20)),
                     CrashDisk(image: b, firstUnit: { $0 * 9 + 1 }, before: backingData)]
        disks = try crashRound(disks, from: 1, initrd: initrd)
        guard disks.count == 2 else { return }
        // The last FLUSHED block is intact; start again after it, over whatever the kill left.
        let current = disks
        func intact(_ n: Int) -> Bool {
            let block = Self.numberedBlock(n, length: blockLength)
            return current.allSatisfy { disk in
                let offset = disk.firstUnit(n) * 4096
                return disk.before[offset..<(offset + blockLength)] == block
            }
        }
        let resume = (1...Self.crashLastBlock).last(where: intact) ?? 0
        XCTAssertGreaterThan(resume, 0)
        _ = try crashRound(disks, from: resume + 1, initrd: initrd)
    }
}
