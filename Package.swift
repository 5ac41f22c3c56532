// swift-tools-version:6.0
// Keel: a machine emulator and virtualizer. Targets follow ../shared/DESIGN.md; dependencies point down.
import PackageDescription

let opt: [SwiftSetting] = [.swiftLanguageMode(.v5)]
// Keel itself uses neither regexes nor Swift concurrency (vCPUs and loops are pthreads): leaving
// their modules out keeps the VMM's resident memory small.
let lean: [SwiftSetting] = opt + [.unsafeFlags(["-Xfrontend", "-disable-implicit-string-processing-module-import",
                                                 "-Xfrontend", "-disable-implicit-concurrency-module-import"])]

let package = Package(
    name: "Keel",
    products: [
        .executable(name: "keel", targets: ["keel"]),
        .library(name: "KeelKit", targets: ["KeelKit"]),
    ],
    targets: [
        .target(name: "CKeel", path: "Sources/CKeel"),
        .target(name: "KVM", dependencies: ["CKeel"], swiftSettings: lean),
        .target(name: "Memory", dependencies: ["CKeel"], swiftSettings: lean),
        .target(name: "Loop", dependencies: ["CKeel"], swiftSettings: lean),
        .systemLibrary(name: "CZlib", path: "Sources/CZlib"),
        .target(name: "CURing", path: "Sources/CURing", linkerSettings: [.linkedLibrary("uring")]),
        .target(name: "Block", dependencies: ["CKeel", "CZlib", "CURing"], swiftSettings: lean),
        // libslirp is opened with dlopen by the first -netdev user (see keel_slirp.h).
        .target(name: "CSlirp", path: "Sources/CSlirp", linkerSettings: [.linkedLibrary("dl")]),
        .target(name: "Net", dependencies: ["Loop", "CKeel", "CSlirp"], swiftSettings: lean),
        .target(name: "KeelImg", dependencies: ["Block", "CKeel"], swiftSettings: lean),
        .target(name: "SCSI", dependencies: ["Block"], swiftSettings: lean),
        .target(name: "Devices", dependencies: ["Block", "SCSI", "Net", "Loop", "Memory", "CKeel"], swiftSettings: lean),
        .target(name: "Machine", dependencies: ["Devices", "SCSI", "Block", "Net", "Memory", "Loop"], swiftSettings: lean),
        .target(name: "TCG", dependencies: ["Devices", "Memory", "Loop"], swiftSettings: lean),
        .target(name: "Accel", dependencies: ["Machine", "TCG", "Devices", "Memory", "Loop", "KVM", "CKeel"], swiftSettings: lean),
        .target(name: "Monitor", dependencies: ["Machine", "Devices", "Loop", "CKeel"], swiftSettings: lean),
        .target(name: "KeelKit", dependencies: ["Monitor", "Accel", "Machine", "Devices", "SCSI", "Block", "Loop", "Memory"], swiftSettings: lean),
        // The Swift runtime, the C++ runtime, the unwinder, zlib and liburing linked in (the linker
        // scripts in linker/ point -lstdc++, -lgcc_s, -lz, -luring at the static archives; lld,
        // because ld and gold take an archive before the Swift runtime needs it), and only the
        // symbols other objects need exported: an idle VMM maps ~5 MiB less (BENCHMARKS.md, RSS).
        .executableTarget(name: "keel", dependencies: ["KeelKit", "KeelImg"], swiftSettings: lean,
                          linkerSettings: [.unsafeFlags(["-static-stdlib", "-use-ld=lld", "-Llinker", "-Xlinker", "--no-export-dynamic"])]),
        .testTarget(name: "BlockTests", dependencies: ["Block", "KeelImg"], swiftSettings: opt),
        .testTarget(name: "SCSITests", dependencies: ["SCSI", "Block"], swiftSettings: opt),
        .testTarget(name: "NetTests", dependencies: ["Net", "Loop"], swiftSettings: opt),
        .testTarget(name: "MemoryTests", dependencies: ["Memory"], swiftSettings: opt),
        .testTarget(name: "LoopTests", dependencies: ["Loop"], swiftSettings: opt),
        .testTarget(name: "DevicesTests", dependencies: ["Devices", "SCSI"], swiftSettings: opt),
        .testTarget(name: "MachineTests", dependencies: ["Machine", "Net"], swiftSettings: opt),
        .testTarget(name: "TCGTests", dependencies: ["TCG", "Memory", "Devices", "Loop"], swiftSettings: opt),
        .testTarget(name: "KVMTests", dependencies: ["KVM", "Memory"], swiftSettings: opt),
        .testTarget(name: "MonitorTests", dependencies: ["Monitor"], swiftSettings: opt),
        .testTarget(name: "KeelTests", dependencies: ["KeelKit"], exclude: ["Guests", "Scripts"], swiftSettings: opt),
    ]
)
