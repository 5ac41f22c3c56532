import Block
import CKeel
import Glibc

extension KeelImg {
    static func create(_ args: [String]) throws -> Int32 {
        let a = try ImgArgs(args, valued: ["f", "b", "F", "o"], flags: ["q", "u"])
        guard let path = a.positional.first, a.positional.count <= 2 else { throw ImgError("create: expecting a filename and an optional size") }
        let fmt = try parseFormat(a.value("f")) ?? .raw
        var o = try a.creationOptions()
        let backing = a.value("b") ?? o.removeValue(forKey: "backing_file")
        let backingFormat = a.value("F") ?? o.removeValue(forKey: "backing_fmt")
        var size: UInt64? = try a.positional.count == 2 ? parseSize(a.positional[1]) : o.removeValue(forKey: "size").map(parseSize)
        if size == nil, let b = backing {
            // Size from the backing file, opened relative to the new image as QEMU does.
            var opts = ImageOpenOptions(format: try parseFormat(backingFormat), readOnly: true)
            opts.openBacking = false
            let dev = try openImage(path: resolveBackingPath(b, of: path), options: opts)
            size = dev.size
            dev.close()
        }
        guard let size else { throw ImgError("create: image size must be specified") }
        switch fmt {
        case .raw:
            guard backing == nil else { throw ImgError("create: raw images cannot have a backing file") }
            if let p = o.removeValue(forKey: "preallocation"), p != "off" { throw ImgError("create: preallocation '\(p)' is not supported") }
            guard o.isEmpty else { throw ImgError("create: invalid option '\(o.keys.sorted()[0])' for raw") }
            let fd = ckeel_open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw ImgError("cannot create '\(path)': \(String(cString: strerror(errno)))") }
            defer { Glibc.close(fd) }
            guard size <= UInt64(Int.max), ftruncate(fd, Int(size)) == 0 else { throw ImgError("cannot resize '\(path)' to \(size) bytes: \(String(cString: strerror(errno)))") }
            if !a.has("q") { output("Formatting '\(path)', fmt=raw size=\(size)\n") }
        case .qcow2:
            var q = Qcow2CreateOptions(size: size)
            q.backingFile = backing
            q.backingFormat = backingFormat
            if backing != nil && backingFormat == nil {
                q.backingFormat = try probeImageFormat(path: resolveBackingPath(backing!, of: path)).rawValue
            }
            if let v = o.removeValue(forKey: "cluster_size") { q.clusterSize = Int(try parseSize(v)) }
            if let v = o.removeValue(forKey: "refcount_bits") {
                guard let n = Int(v) else { throw ImgError("invalid refcount_bits '\(v)'") }
                q.refcountBits = n
            }
            if let v = o.removeValue(forKey: "compat") {
                switch v {
                case "0.10", "v2": q.version = 2
                case "1.1", "v3": q.version = 3
                default: throw ImgError("invalid compat level '\(v)' (0.10 or 1.1)")
                }
            }
            for (k, off) in [("preallocation", "off"), ("lazy_refcounts", "off"), ("extended_l2", "off"), ("compression_type", "zlib")] {
                if let v = o.removeValue(forKey: k), v != off { throw ImgError("create: \(k)=\(v) is not supported") }
            }
            guard o.isEmpty else { throw ImgError("create: invalid option '\(o.keys.sorted()[0])' for qcow2") }
            try Qcow2Image.create(path: path, options: q)
            if !a.has("q") {
                var line = "Formatting '\(path)', fmt=qcow2 cluster_size=\(q.clusterSize) extended_l2=off compression_type=zlib size=\(size)"
                if let b = backing { line += " backing_file=\(b)" }
                if let f = q.backingFormat, backing != nil { line += " backing_fmt=\(f)" }
                output(line + " lazy_refcounts=off refcount_bits=\(q.refcountBits)\n")
            }
        }
        return 0
    }

    static func info(_ args: [String]) throws -> Int32 {
        let a = try ImgArgs(args, valued: ["f", "output"], flags: ["U", "force-share"])
        guard a.positional.count == 1, let path = a.positional.first else { throw ImgError("info: expecting one filename") }
        let json = try jsonFlag(a)
        var opts = ImageOpenOptions(format: try parseFormat(a.value("f")), readOnly: true)
        opts.openBacking = false
        let dev = try openImage(path: path, options: opts)
        defer { dev.close() }
        output(json ? infoJSON(path, dev) : infoHuman(path, dev))
        return 0
    }

    static func jsonFlag(_ a: ImgArgs) throws -> Bool {
        switch a.value("output") ?? "human" {
        case "human": return false
        case "json": return true
        case let v: throw ImgError("--output must be used with human or json as argument (got '\(v)')")
        }
    }

    static func infoHuman(_ path: String, _ dev: BlockDevice) -> String {
        var s = "image: \(path)\n"
        s += "file format: \(dev is Qcow2Image ? "qcow2" : "raw")\n"
        s += "virtual size: \(humanSize(dev.size)) (\(dev.size) bytes)\n"
        s += "disk size: \(humanSize(allocatedBytes(path)))\n"
        guard let q = dev as? Qcow2Image else { return s }
        let h = q.header
        s += "cluster_size: \(q.clusterSize)\n"
        if let b = h.backingFile {
            s += "backing file: \(b)"
            let full = resolveBackingPath(b, of: path)
            s += full != b ? " (actual path: \(full))\n" : "\n"
            if let f = h.backingFormat { s += "backing file format: \(f)\n" }
        }
        if !q.snapshots.isEmpty {
            s += "Snapshot list:\n"
            s += pad("ID", 10) + pad("TAG", 18) + lpad("VM SIZE", 7) + lpad("DATE", 20) + lpad("VM CLOCK", 13) + lpad("ICOUNT", 11) + "\n"
            for sn in q.snapshots {
                s += pad(sn.id, 10) + pad(sn.name, 18) + lpad(humanSize(sn.vmStateSize), 7) + " " + dateString(sn.dateSeconds)
                s += " " + clockString(sn.vmClockNanoseconds) + lpad(sn.icount.map { String($0) } ?? "--", 11) + "\n"
            }
        }
        s += "Format specific information:\n"
        s += "    compat: \(h.version >= 3 ? "1.1" : "0.10")\n"
        s += "    compression type: zlib\n"
        if h.version >= 3 {
            s += "    lazy refcounts: \(h.hasLazyRefcounts)\n"
            s += "    refcount bits: \(h.refcountBits)\n"
            s += "    corrupt: \(h.isCorrupt)\n"
            s += "    extended l2: false\n"
        } else {
            s += "    refcount bits: \(h.refcountBits)\n"
        }
        return s
    }

    static func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }
    static func lpad(_ s: String, _ n: Int) -> String { s.count >= n ? s : String(repeating: " ", count: n - s.count) + s }

    static func dateString(_ seconds: UInt32) -> String {
        var t = time_t(seconds)
        var tm = Glibc.tm()
        localtime_r(&t, &tm)
        var buf = [CChar](repeating: 0, count: 32)
        strftime(&buf, 32, "%Y-%m-%d %H:%M:%S", &tm)
        return String(cString: buf)
    }

    static func clockString(_ ns: UInt64) -> String {
        let ms = ns / 1_000_000, s = ms / 1000
        func two(_ v: UInt64) -> String { v < 10 ? "0\(v)" : "\(v)" }
        let frac = ms % 1000
        return "\(two(s / 3600)):\(two(s / 60 % 60)):\(two(s % 60)).\(frac < 10 ? "00" : frac < 100 ? "0" : "")\(frac)"
    }

    static func jsonString(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            default:
                if u.value < 0x20 { out += "\\u00" + (u.value < 16 ? "0" : "") + String(u.value, radix: 16) } else { out.unicodeScalars.append(u) }
            }
        }
        return out + "\""
    }

    /// qemu-img info --output json, same field names and nesting.
    static func infoJSON(_ path: String, _ dev: BlockDevice) -> String {
        var fields: [(String, String)] = [
            ("virtual-size", "\(dev.size)"),
            ("filename", jsonString(path)),
        ]
        let q = dev as? Qcow2Image
        if let q { fields.append(("cluster-size", "\(q.clusterSize)")) }
        fields.append(("format", jsonString(q == nil ? "raw" : "qcow2")))
        fields.append(("actual-size", "\(allocatedBytes(path))"))
        if let q {
            let h = q.header
            if !q.snapshots.isEmpty {
                let list = q.snapshots.map { sn -> String in
                    var f = [("icount", sn.icount.map { String($0) }), ("vm-clock-nsec", "\(sn.vmClockNanoseconds % 1_000_000_000)"),
                             ("name", jsonString(sn.name)), ("date-sec", "\(sn.dateSeconds)"), ("date-nsec", "\(sn.dateNanoseconds)"),
                             ("vm-clock-sec", "\(sn.vmClockNanoseconds / 1_000_000_000)"), ("id", jsonString(sn.id)),
                             ("vm-state-size", "\(sn.vmStateSize)")]
                    f = f.filter { $0.1 != nil }
                    return "        {\n" + f.map { "            \"\($0.0)\": \($0.1!)" }.joined(separator: ",\n") + "\n        }"
                }
                fields.append(("snapshots", "[\n" + list.joined(separator: ",\n") + "\n    ]"))
            }
            var data = [("compat", jsonString(h.version >= 3 ? "1.1" : "0.10")), ("compression-type", jsonString("zlib"))]
            if h.version >= 3 { data.append(("lazy-refcounts", "\(h.hasLazyRefcounts)")) }
            data.append(("refcount-bits", "\(h.refcountBits)"))
            if h.version >= 3 { data += [("corrupt", "\(h.isCorrupt)"), ("extended-l2", "false")] }
            let inner = data.map { "            \"\($0.0)\": \($0.1)" }.joined(separator: ",\n")
            fields.append(("format-specific", "{\n        \"type\": \"qcow2\",\n        \"data\": {\n\(inner)\n        }\n    }"))
            if let b = h.backingFile {
                fields.append(("full-backing-filename", jsonString(resolveBackingPath(b, of: path))))
                fields.append(("backing-filename", jsonString(b)))
                if let f = h.backingFormat { fields.append(("backing-filename-format", jsonString(f))) }
            }
            fields.append(("dirty-flag", "\(h.isDirty)"))
        } else {
            fields.append(("dirty-flag", "false"))
        }
        return "{\n" + fields.map { "    \"\($0.0)\": \($0.1)" }.joined(separator: ",\n") + "\n}\n"
    }

    static func check(_ args: [String]) throws -> Int32 {
        let a = try ImgArgs(args, valued: ["f", "r", "output", "T"], flags: ["q", "U", "force-share"])
        guard a.positional.count == 1, let path = a.positional.first else { throw ImgError("check: expecting one filename") }
        let json = try jsonFlag(a)
        let repair: Qcow2Repair
        switch a.value("r") {
        case nil: repair = .none
        case "leaks": repair = .leaks
        case "all": repair = .all
        case let v?: throw ImgError("check: invalid repair mode '\(v)' (leaks or all)")
        }
        var opts = ImageOpenOptions(format: try parseFormat(a.value("f")), readOnly: repair == .none)
        opts.openBacking = false
        opts.forRepair = repair != .none
        let dev = try openImage(path: path, options: opts)
        defer { dev.close() }
        guard let q = dev as? Qcow2Image else {
            fail("This image format does not support checks")
            return 63
        }
        let r = try q.check(repair: repair)
        let quiet = a.has("q")
        if json {
            var f: [(String, String)] = [("image-end-offset", "\(r.imageEndOffset)"), ("total-clusters", "\(r.totalClusters)"), ("check-errors", "0")]
            if r.leaks > 0 { f.append(("leaks", "\(r.leaks)")) }
            if r.corruptions > 0 { f.append(("corruptions", "\(r.corruptions)")) }
            if r.leaksFixed > 0 { f.append(("leaks-fixed", "\(r.leaksFixed)")) }
            if r.corruptionsFixed > 0 { f.append(("corruptions-fixed", "\(r.corruptionsFixed)")) }
            f += [("allocated-clusters", "\(r.allocatedClusters)"), ("filename", jsonString(path)), ("format", "\"qcow2\""),
                  ("fragmented-clusters", "\(r.fragmentedClusters)"), ("compressed-clusters", "\(r.compressedClusters)")]
            output("{\n" + f.map { "    \"\($0.0)\": \($0.1)" }.joined(separator: ",\n") + "\n}\n")
        } else if !quiet {
            var s = r.messages.map { $0 + "\n" }.joined()
            if r.leaksFixed > 0 || r.corruptionsFixed > 0 {
                s += "The following inconsistencies were found and repaired:\n\n"
                s += "    \(r.leaksFixed) leaked clusters\n    \(r.corruptionsFixed) corruptions\n\nDouble checking the fixed image now...\n"
            }
            if r.corruptions == 0 && r.leaks == 0 { s += "No errors were found on the image.\n" }
            if r.corruptions > 0 {
                s += "\n\(r.corruptions) errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n"
            }
            if r.leaks > 0 {
                s += "\n\(r.leaks) leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n"
            }
            if r.totalClusters > 0 && r.allocatedClusters > 0 {
                let t = Double(r.totalClusters), al = Double(r.allocatedClusters)
                s += "\(r.allocatedClusters)/\(r.totalClusters) = " + format("%0.2f", al * 100 / t) + "% allocated, "
                s += format("%0.2f", Double(r.fragmentedClusters) * 100 / al) + "% fragmented, "
                s += format("%0.2f", Double(r.compressedClusters) * 100 / al) + "% compressed clusters\n"
            }
            s += "Image end offset: \(r.imageEndOffset)\n"
            output(s)
        }
        return r.corruptions > 0 ? 2 : r.leaks > 0 ? 3 : 0
    }

    static func resize(_ args: [String]) throws -> Int32 {
        // "-1G" is a size, not an option: take the last argument as the size before parsing.
        guard args.count >= 2, let sizeArg = args.last else { throw ImgError("resize: expecting a filename and a size") }
        let a = try ImgArgs(Array(args.dropLast()), valued: ["f"], flags: ["q", "shrink", "U"])
        guard a.positional.count == 1, let path = a.positional.first else { throw ImgError("resize: expecting a filename and a size") }
        let dev = try openImage(path: path, options: ImageOpenOptions(format: try parseFormat(a.value("f")), readOnly: false))
        defer { dev.close() }
        let old = dev.size
        var new: UInt64
        if sizeArg.hasPrefix("+") { new = old &+ (try parseSize(String(sizeArg.dropFirst()))); guard new >= old else { throw ImgError("resize: size overflow") } }
        else if sizeArg.hasPrefix("-") {
            let d = try parseSize(String(sizeArg.dropFirst()))
            guard d <= old else { throw ImgError("resize: new size would be negative") }
            new = old - d
        } else { new = try parseSize(sizeArg) }
        if let q = dev as? Qcow2Image {
            guard new >= old else { throw ImgError("resize: shrinking qcow2 images is not supported") }
            try q.resize(to: new)
        } else if let r = dev as? RawFileDevice {
            if new < old && !a.has("shrink") {
                throw ImgError("Use the --shrink option to perform a shrink operation.")
            }
            try r.truncate(to: new)
        }
        if !a.has("q") { output("Image resized.\n") }
        return 0
    }
}
