/// Keel's own x86-64 CPU (the tcg accelerator's core): decoder, executor, MMU, exceptions, and
/// the interrupt controllers and timers that KVM would otherwise provide in the kernel.
/// The vCPU thread and accelerator glue live in Sources/Accel/TCG.
public enum TCG {}
