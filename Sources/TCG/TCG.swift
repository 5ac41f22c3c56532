/// Keel's own x86-64 CPU (the tcg accelerator's core): decoder, executor, MMU, exceptions.
/// The interrupt controllers and timers it needs (LAPIC, IOAPIC, PIC, PIT) are board devices in
/// Sources/Devices/Interrupts, shared with the kvm accelerator's split-irqchip mode; the vCPU
/// thread and accelerator glue live in Sources/Accel/TCG.
public enum TCG {}
