// swift-tools-version: 6.0
import PackageDescription

// The compute modules are always built with optimisation: a debug build of the tests would otherwise run the
// model ~50x slower than release, which makes the real-model tests too slow for CI.
let optimized: [SwiftSetting] = [.unsafeFlags(["-O"])]

// The AVX2 kernels' module is compiled for AVX2 + FMA + F16C; Backend calls it only after a CPUID check.
#if arch(x86_64)
let avx2: [SwiftSetting] = [.unsafeFlags(["-O", "-Xcc", "-mavx2", "-Xcc", "-mfma", "-Xcc", "-mf16c"])]
let avx512: [SwiftSetting] = [.unsafeFlags(["-O", "-Xcc", "-mavx512f", "-Xcc", "-mavx512bw", "-Xcc", "-mavx512vl",
                                            "-Xcc", "-mavx512vnni", "-Xcc", "-mavx2", "-Xcc", "-mfma", "-Xcc", "-mf16c"])]
#else
let avx2: [SwiftSetting] = [.unsafeFlags(["-O"])]  // the modules compile to nothing off x86-64
let avx512: [SwiftSetting] = [.unsafeFlags(["-O"])]
#endif

let package = Package(
    name: "ktransformers-swift",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "ktransformers", targets: ["ktransformers"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.2.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.65.0"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.20.0"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.0.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.5.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
    ],
    targets: [
        // Block formats: layouts, scalar reference kernels, the traits table. Depends on nothing.
        .target(name: "Quant", swiftSettings: optimized),
        // GGUF container: mmap reader, writer, metadata.
        .target(name: "GGUF", dependencies: ["Quant"], swiftSettings: optimized),
        // Hugging Face checkpoints: safetensors (sharded), config.json, presented as GGUF-named tensors.
        .target(name: "SafeTensors", dependencies: ["GGUF", "Quant"], swiftSettings: optimized),
        // SentencePiece and byte-level BPE tokenizers, incremental detokenizer.
        .target(name: "Tokenizer", dependencies: ["GGUF"], swiftSettings: optimized),
        // CPU feature detection and the intrinsics wrappers Swift cannot import (immediate operands).
        .target(name: "CSIMD"),
        // AVX2 kernels of every format, same semantics as Quant's scalar ones.
        .target(name: "QuantAVX2", dependencies: ["Quant", "CSIMD"], swiftSettings: avx2),
        // AVX-512 + VNNI kernels where they beat the AVX2 ones (measured), same semantics.
        .target(name: "QuantAVX512", dependencies: ["Quant", "CSIMD"], swiftSettings: avx512),
        // The compute seam (ComputeBackend, Tensor, Placement, weights, KV cache) and the CPU backend (Backend/CPU:
        // thread pool, kernel drivers, expert executor).
        .target(name: "Backend", dependencies: ["Quant", "QuantAVX2", "QuantAVX512", "CSIMD",
                                                .product(name: "Atomics", package: "swift-atomics")],
                swiftSettings: optimized),
        // The CUDA backend: the driver API, NVRTC and cuBLAS loaded at run time (dlopen), so building needs no CUDA SDK and
        // the binary runs on machines without a GPU.
        .target(name: "BackendCUDA", dependencies: ["Backend", "Quant", .product(name: "Atomics", package: "swift-atomics")],
                resources: ["common.cuh", "quant.cuh", "matvec.cu", "activations.cu", "ops.cu", "attention.cu", "moe.cu", "mmq.cu", "gemm.cu"]
                    .map { .embedInCode("Kernels/\($0)") },
                swiftSettings: optimized),
        // The backend conformance checks (every ComputeBackend op against plain references), runnable from XCTest
        // and from `ktransformers devices --conformance` (the GPU machine has no Swift toolchain).
        .target(name: "BackendConformance", dependencies: ["Backend", "BackendCUDA", "Quant"], swiftSettings: optimized),
        // Output constraints: byte-level grammars, their matcher, the vocabulary trie, JSON schema → grammar.
        .target(name: "Grammar", swiftSettings: optimized),
        // Jinja-subset renderer for the chat templates GGUF files ship, plus built-in templates.
        .target(name: "ChatTemplate", swiftSettings: optimized),
        // Layers, architectures, registry keyed by general.architecture.
        .target(name: "Models", dependencies: ["GGUF", "Quant", "Backend"], swiftSettings: optimized),
        // The serving engine: scheduler and KV page allocator, model runner, sampling, the single-stream generator.
        .target(name: "Engine", dependencies: ["Models", "Backend"], swiftSettings: optimized),
        // OpenAI-compatible HTTP server (Hummingbird): routes, validation, SSE, stop strings, errors.
        .target(name: "Server", dependencies: [
            "Engine", "Tokenizer", "ChatTemplate", "Grammar",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "HummingbirdCore", package: "hummingbird"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
            .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
            .product(name: "HTTPTypes", package: "swift-http-types"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Prometheus", package: "swift-prometheus"),
        ], resources: [.embedInCode("Web/index.html")]),
        .executableTarget(name: "ktransformers", dependencies: [
            "Engine", "Models", "GGUF", "SafeTensors", "Tokenizer", "Quant", "Backend", "BackendCUDA", "BackendConformance", "Server", "ChatTemplate", "Grammar",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Yams", package: "Yams"),
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "ServerTests", dependencies: ["Server", "Engine", "Tokenizer", "GGUF", "ChatTemplate", "Grammar"]),
        .testTarget(name: "GrammarTests", dependencies: ["Grammar"]),
        .testTarget(name: "QuantTests", dependencies: ["Quant"], resources: [.copy("Fixtures")]),
        .testTarget(name: "QuantAVX512Tests", dependencies: ["Quant", "QuantAVX2", "QuantAVX512", "CSIMD", "Backend"]),
        .testTarget(name: "QuantAVX2Tests", dependencies: ["Quant", "QuantAVX2", "CSIMD", "Backend"]),
        .testTarget(name: "ChatTemplateTests", dependencies: ["ChatTemplate"], resources: [.copy("Fixtures")]),
        .testTarget(name: "GGUFTests", dependencies: ["GGUF", "Quant"]),
        .testTarget(name: "TokenizerTests", dependencies: ["Tokenizer", "GGUF"], resources: [.copy("Fixtures")]),
        .testTarget(name: "BackendTests", dependencies: ["Backend", "BackendConformance", "BackendCUDA", "Quant"]),
        .testTarget(name: "EngineTests", dependencies: ["Engine", "Models", "GGUF", "Backend", "BackendCUDA"]),
        .testTarget(name: "HFTests", dependencies: ["SafeTensors", "Models", "GGUF", "Quant", "Backend", "Engine", "Tokenizer"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "ModelTests", dependencies: ["Models", "GGUF", "Quant", "Backend", "BackendCUDA", "BackendConformance", "Engine"],
                    resources: [.copy("Fixtures")]),
        // Slow checks on the real default model and the CLI binary (see docs/testing.md).
        .testTarget(name: "EndToEndTests", dependencies: ["Models", "GGUF", "Tokenizer", "Engine"],
                    resources: [.copy("Fixtures")]),
    ]
)
