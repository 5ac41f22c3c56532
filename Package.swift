// swift-tools-version:6.0
// Keel: a machine emulator and virtualizer. Targets follow ../shared/DESIGN.md; dependencies point down.
import PackageDescription

let opt: [SwiftSetting] = [.swiftLanguageMode(.v5)]

let package = Package(
    name: "Keel",
    products: [
        .executable(name: "keel", targets: ["keel"]),
        .library(name: "KeelKit", targets: ["KeelKit"]),
    ],
    targets: [
        .target(name: "CKeel", path: "Sources/CKeel"),
        .target(name: "KVM", dependencies: ["CKeel"], swiftSettings: opt),
        .target(name: "Memory", dependencies: ["CKeel"], swiftSettings: opt),
        .target(name: "Loop", dependencies: ["CKeel"], swiftSettings: opt),
        .target(name: "Devices", dependencies: ["Loop", "Memory", "CKeel"], swiftSettings: opt),
        .target(name: "Machine", dependencies: ["Devices", "Memory", "Loop"], swiftSettings: opt),
        .target(name: "TCG", dependencies: ["Devices", "Memory", "Loop"], swiftSettings: opt),
        .target(name: "Accel", dependencies: ["Machine", "TCG", "Devices", "Memory", "Loop", "KVM", "CKeel"], swiftSettings: opt),
        .target(name: "KeelKit", dependencies: ["Accel", "Machine", "Devices", "Loop", "Memory"], swiftSettings: opt),
        .executableTarget(name: "keel", dependencies: ["KeelKit"], swiftSettings: opt),
        .testTarget(name: "MemoryTests", dependencies: ["Memory"], swiftSettings: opt),
        .testTarget(name: "LoopTests", dependencies: ["Loop"], swiftSettings: opt),
        .testTarget(name: "DevicesTests", dependencies: ["Devices"], swiftSettings: opt),
        .testTarget(name: "MachineTests", dependencies: ["Machine"], swiftSettings: opt),
        .testTarget(name: "TCGTests", dependencies: ["TCG", "Memory", "Devices", "Loop"], swiftSettings: opt),
        .testTarget(name: "KVMTests", dependencies: ["KVM", "Memory"], swiftSettings: opt),
        .testTarget(name: "KeelTests", dependencies: ["KeelKit"], exclude: ["Guests"], swiftSettings: opt),
    ]
)
