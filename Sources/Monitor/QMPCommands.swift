/// The QMP commands Keel implements, with results shaped as QEMU's (qapi/*.json).
extension Monitor {
    func makeCommands() -> [QMPCommand] {
        let m = machine
        return [
            QMPCommand("qmp_capabilities", [.optional("enable", .stringList)]) { _ in
                // Reached only after negotiation (the session answers it before).
                throw QMPError(.commandNotFound, "Capabilities negotiation is already complete, command ignored")
            },
            QMPCommand("query-version") { [unowned self] _ in self.versionJSON },
            QMPCommand("query-commands") { [unowned self] _ in
                .array(self.commandNames.map { ["name": .string($0)] })
            },
            QMPCommand("query-status") { _ in
                ["status": .string(m.runState.rawValue), "singlestep": false, "running": .bool(m.runState.isRunning)]
            },
            QMPCommand("query-name") { _ in
                if let n = m.machineInfo.name { return ["name": .string(n)] }
                return [:]
            },
            QMPCommand("query-kvm") { _ in
                let i = m.machineInfo
                return ["enabled": .bool(i.acceleratorIsKVM), "present": .bool(i.kvmPresent)]
            },
            QMPCommand("query-cpus-fast") { _ in .array(m.cpus.map(Self.cpuJSON)) },
            QMPCommand("query-machines", [.optional("compat-props", .bool)]) { _ in
                let i = m.machineInfo
                return .array(i.machineTypes.map { name in
                    var o: [(String, JSON)] = [
                        ("hotpluggable-cpus", false), ("name", .string(name)), ("numa-mem-supported", false),
                        ("default-cpu-type", "host-x86_64-cpu"), ("cpu-max", .int(i.maxCPUs)),
                        ("deprecated", false), ("default-ram-id", "pc.ram"),
                    ]
                    if name == i.defaultMachineType { o.append(("is-default", true)) }
                    return .object(o)
                })
            },
            QMPCommand("query-block") { _ in [] },
            QMPCommand("query-blockstats", [.optional("query-nodes", .bool)]) { _ in [] },
            QMPCommand("query-chardev") { [unowned self] _ in
                .array(self.allChardevs.map {
                    ["frontend-open": .bool($0.frontendOpen), "filename": .string($0.filename), "label": .string($0.label)]
                })
            },
            // No PCI host bridge yet: QEMU answers [] for a machine without a PCI bus.
            QMPCommand("query-pci") { _ in [] },
            QMPCommand("query-iothreads") { _ in
                .array(m.iothreads.map { t in
                    .object([("id", .string(t.id)), ("thread-id", .int(Int(t.threadID))),
                             ("poll-max-ns", .int(Int(clamping: t.polling.maxNanoseconds))),
                             ("poll-grow", .int(Int(clamping: t.polling.grow))), ("poll-shrink", .int(Int(clamping: t.polling.shrink))),
                             ("aio-max-batch", .int(0))])
                })
            },
            QMPCommand("query-memory-size-summary") { _ in
                ["base-memory": .int(m.machineInfo.memorySize), "plugged-memory": 0]
            },
            QMPCommand("stop") { _ in m.stopLocked(); return [:] },
            QMPCommand("cont") { _ in try m.continueLocked(); return [:] },
            QMPCommand("system_reset") { _ in m.systemResetLocked(); return [:] },
            QMPCommand("system_powerdown") { [unowned self] _ in
                self.emit("POWERDOWN")
                m.systemPowerdownLocked()
                return [:]
            },
            QMPCommand("quit") { _ in m.quitLocked(); return [:] },
            QMPCommand("human-monitor-command", [.required("command-line", .string), .optional("cpu-index", .int)]) { [unowned self] a in
                .string(self.hmp.execute(a["command-line"]?.stringValue ?? ""))
            },
            QMPCommand("device_del", [.required("id", .string)]) { a in
                throw QMPError(.deviceNotFound, "Device '\(a["id"]?.stringValue ?? "")' not found")
            },
        ]
    }

    static func cpuJSON(_ c: CPUInfo) -> JSON {
        [
            "thread-id": .int(c.threadID),
            "props": ["core-id": .int(c.coreID), "thread-id": .int(c.threadIDInCore), "socket-id": .int(c.socketID)],
            "qom-path": .string("/machine/unattached/device[\(c.index)]"),
            "cpu-index": .int(c.index),
            "target": "x86_64",
        ]
    }

    var versionJSON: JSON {
        ["qemu": ["micro": .int(version.micro), "minor": .int(version.minor), "major": .int(version.major)],
         "package": .string(version.package)]
    }
}
