import Glibc
import Machine
import Monitor

/// The monitor's view of the machine. Everything here runs on the main loop with the big lock held.
extension VirtualMachineInstance: MachineControl {
    public func stopLocked() {
        guard runState.isRunning, let accel = accelerator else { return }
        accel.pauseLocked()
        board.setDeviceQueuesPausedLocked(true)
        runState = .paused
        monitor.emit("STOP")
    }

    public func continueLocked() throws {
        switch runState {
        case .running: return
        case .paused, .prelaunch:
            board.setDeviceQueuesPausedLocked(false)
            accelerator?.resumeLocked()
            runState = .running
            monitor.emit("RESUME")
        case .shutdown, .internalError, .guestPanicked:
            throw QMPError.generic("Resetting the Virtual Machine is required")
        }
    }

    public func systemResetLocked() {
        if !requests.isPending { hostCause = .hostQMPSystemReset }
        requests.raise(.reset)
    }

    public func systemPowerdownLocked() {
        board.pressPowerButtonLocked()
    }

    public func quitLocked() {
        if !requests.isPending { hostCause = .hostQMPQuit }
        requests.raise(.quit(reason: ""))
    }

    public var machineInfo: MachineInfo {
        MachineInfo(name: configuration.name, acceleratorIsKVM: configuration.accelerator == .kvm,
                    kvmPresent: access("/dev/kvm", R_OK | W_OK) == 0, memorySize: configuration.memorySize,
                    machineTypes: KeelCommandLine.machineTypes, defaultMachineType: "pc",
                    maxCPUs: MachineConfiguration.maxCPUs)
    }

    public var cpus: [CPUInfo] {
        let ids = accelerator?.vcpuThreadIDs ?? []
        return (0..<configuration.cpuCount).map { CPUInfo(index: $0, threadID: $0 < ids.count ? ids[$0] : 0) }
    }

    public var iothreads: [IOThreadInfo] {
        board.iothreads.map { IOThreadInfo(id: $0.id, threadID: $0.threadID, polling: $0.polling) }
    }

    public var chardevs: [ChardevInfo] {
        configuration.serialPorts.enumerated().compactMap { i, spec in
            spec == .disabled ? nil : ChardevInfo(label: "serial\(i)", filename: spec.description)
        }
    }

    public var devices: [DeviceInfo] {
        func prop(_ name: String, _ v: UInt64) -> String { "\(name) = \(v) (0x\(String(v, radix: 16)))" }
        var d: [DeviceInfo] = []
        for (i, spec) in configuration.serialPorts.enumerated() where spec != .disabled {
            let r = MachineConfiguration.serialPortResources[i]
            d.append(DeviceInfo(type: "isa-serial", properties: [
                prop("index", UInt64(i)), prop("iobase", UInt64(r.base)), prop("irq", UInt64(r.irq)),
                "chardev = \"serial\(i)\"",
            ]))
        }
        d.append(DeviceInfo(type: "i8042", properties: [prop("iobase", 0x60), prop("irq", 1)]))
        d.append(DeviceInfo(type: "mc146818rtc", properties: [prop("iobase", 0x70), prop("irq", 8)]))
        d.append(DeviceInfo(type: "keel-acpi-pm", properties: [prop("iobase", 0x600), prop("sci-irq", 9)]))
        d.append(DeviceInfo(type: "keel-reset-control", properties: [prop("iobase", 0xCF9)]))
        if let e = configuration.debugExit {
            d.append(DeviceInfo(type: "isa-debug-exit", properties: [prop("iobase", UInt64(e.ioBase)), prop("iosize", UInt64(e.ioSize))]))
        }
        if configuration.testDevice { d.append(DeviceInfo(type: "pc-testdev")) }
        return d
    }
}
