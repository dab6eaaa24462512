import Atomics
import Backend
import Foundation
import Quant

/// The CUDA backend: tensors, weights and the paged KV cache in one GPU's memory, every op a kernel of
/// `Kernels/` on one stream. Weights are GGUF blocks uploaded as they are and decoded by the kernels (formats
/// without a decoder there are converted to f32 at load, said once in the log). Activations are f32; a `.standard`
/// matmul first rounds its input to the 8-bit blocks of the weight format's vec-dot type (Q8_0 or Q8_K), as the
/// CPU backend and ggml do, so both backends carry the same activation rounding.
///
/// The driver and NVRTC are loaded at run time; `make` fails with a message naming what is missing.
public final class CUDABackend: ComputeBackend, @unchecked Sendable {
    // NOTE: @unchecked: the ComputeBackend contract (one forward pass at a time; prepare/reserve at load) is what
    // makes the mutable state here safe; `makeCurrent` binds the context on whatever thread calls.
    public let ordinal: Int
    /// The device this backend is: `cuda:ordinal`, or another number where several backends share one GPU
    /// (tensor-parallel shards on logical devices: `--devices cuda:0,cuda:0`).
    public let device: Device
    public let summary: String
    public let gpuName: String
    public let memoryBytes: Int
    /// Where the kernels came from (compiled now, or the disk cache).
    public let kernelOrigin: String
    let driver: CUDADriver
    let context: CUDADriver.Handle
    let stream: CUDADriver.Handle
    let kernels: CUDAKernels
    private let args = ArgumentPack()
    private var allocations: [UInt: Int] = [:]
    private var staging: UnsafeMutableRawPointer?
    private var stagingBytes = 0
    private var routerWork: Tensor?
    /// The rounded copy of a `.standard` matmul's input: `// [maxTokens, widest weight's cols]`.
    private var rounded: Tensor?
    /// The same input as Q8_K integers for the integer-dot kernels: int8 values, then per-256 scales, then
    /// per-16 sums, `// [maxTokens, widest]` each part.
    private var quantized: Tensor?
    private var quantizedFor = 0
    private var widestInput = 0
    /// A split-tf32 matmul's input: its low tf32 halves (`rounded` holds the high ones) `// [maxTokens, widest]`,
    /// its per-32 sums `// [maxTokens, widest / 32]`; and the per-split partial sums `// [maxTokens, largest rows · splits]`.
    private var splitLow: Tensor?
    private var splitSums: Tensor?
    private var splitParts: Tensor?
    /// Per 16-row tile of a split-tf32 matmul, the splits done so far (mmf_q4_K_one: the last one reduces; zero
    /// between launches).
    private var mmfCounters: Tensor?
    private var widestSplitRows = 0
    private var widestSplitOutput = 0
    private var routerBias: [UnsafeRawPointer: Tensor] = [:]
    /// Bytes of weights this backend holds, and the formats it converted at load.
    public private(set) var weightBytes = 0
    public private(set) var convertedFormats: [GGMLType: Int] = [:]
    /// Decode steps replayed as CUDA graphs (`--no-cuda-graphs` turns them off).
    public var graphsEnabled = true
    /// Graphs captured so far (the start-up log and the tests).
    public private(set) var graphsCaptured = 0
    /// Goes up whenever internal scratch moves (a graph captured before holds stale addresses).
    public private(set) var graphEpoch = 0
    /// Per-kernel GPU time (`bench --profile-kernels`): each launch is bracketed by two events and the times are
    /// summed by kernel name. Turns CUDA graphs off (a replayed graph has no per-kernel events).
    public var profiling = false {
        didSet { if profiling { graphsEnabled = false } }
    }
    private var profilePending: [(name: String, start: CUDADriver.Handle, end: CUDADriver.Handle)] = []
    /// Programmatic dependent launch (sm_90+): each kernel is launched while the one before it on the stream
    /// still runs, and waits for its results itself (`KT_PDL_WAIT`, at the top of every kernel; the matrix-vector
    /// kernels first start loading their weights, which no kernel writes). Hides each launch's ramp-up and the
    /// weights' first latency behind the previous kernel's tail, in graphs too. `KTRANSFORMERS_CUDA_PDL` = 0 | 1
    /// overrides (on by default where the GPU and driver have it).
    public var dependentLaunches: Bool
    /// Kernels launched as programmatic dependents so far (tests).
    public var dependentLaunchCount: Int { driver.dependentLaunches }
    /// The kernel sources (tests check that every kernel waits for its predecessor).
    public static var kernelSource: String { CUDAKernels.source }
    static let dependentLaunchOverride: Bool? = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_PDL"].map { $0 != "0" }
    /// Model steps of at most this many tokens launch dependents (`KTRANSFORMERS_CUDA_PDL_MAX`, default 8). Measured on
    /// the H100 (Llama-3-8B shape, t/s with / without): 1 token 263.4 / 247.9, 8 sequences 1,645 / 1,622, 16 sequences
    /// 2,323 / 2,411, 32 sequences 3,880 / 4,054: the block-staged tiles of larger steps lose by it.
    static let dependentLaunchMaxTokens = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_PDL_MAX"].flatMap { Int($0) } ?? 8
    /// The token count of the model step being queued (set by `embed`, its first op; 1 before any step).
    private var stepTokens = 1
    /// Kernels launched so far: a fused kernel's extra output (`Prepared`) is used only by the very next launch.
    private var launches = 0
    /// A matmul input already prepared by the kernel that wrote it (rms_norm_q8K, gated_silu_split): its address and
    /// element count, and `launches` just after that kernel.
    private struct Prepared: Equatable {
        let address: UInt
        let count: Int
        let launch: Int
    }
    private var preparedQuantized: Prepared?
    private var preparedSplit: Prepared?
    /// The Q16_K form of a SwiGLU output (gated_silu_q16), in `splitLow`.
    private var preparedQ16: Prepared?
    /// The token count of the last matmul group (gate/up): SwiGLU after a one-token group writes the Q16_K form.
    private var lastGroupTokens = 0
    private var profileEvents: [CUDADriver.Handle] = []
    private var profileTotals: [String: (calls: Int, ms: Double)] = [:]
    /// How the host waits for the GPU (`synchronize`, `read`): spinning on the stream (the driver's default: the
    /// lowest latency), or asleep on a blocking event, which leaves the core to other threads: the hybrid MoE's
    /// expert threads need every core while the engine thread waits for the step (`KTRANSFORMERS_CUDA_SYNC`
    /// = `spin` | `blocking` overrides; the default is blocking once routed experts run on the CPU).
    public var blockingWaits = CUDABackend.syncOverride ?? false
    static let syncOverride: Bool? = {
        switch ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_SYNC"] {
        case "blocking": return true
        case "spin": return false
        default: return nil
        }
    }()
    private var waitEvent: CUDADriver.Handle?
    /// Layerwise prefill of the hybrid MoE: steps of at least this many tokens copy a layer's routed-expert weights
    /// from host memory to the GPU and run them there (KTransformers' and llama.cpp's: the copy costs the same
    /// whatever the step, the CPU's work grows with it); 0 turns it off. `KTRANSFORMERS_LAYERWISE_MIN`, default 128:
    /// measured on an H100 host with Qwen3-30B-A3B (16 threads, page-locked bounce buffers), chunks of 128 tokens ran
    /// at 239 t/s against 163 with the CPU experts, chunks of 256 at 506 against 156 (docs/performance.md). Such a
    /// step's experts carry the GPU's arithmetic instead of the CPU's (both within the references' tolerance), so a
    /// prompt's bits then depend on whether its step reached the threshold; `batchInvariant` turns it off.
    public var layerwiseMinTokens = ProcessInfo.processInfo.environment["KTRANSFORMERS_LAYERWISE_MIN"].flatMap { Int($0) } ?? 128
    /// Layerwise copies through page-locked bounce buffers filled on all cores (the default), instead of straight
    /// from the pageable mapping (`KTRANSFORMERS_LAYERWISE_PIN=0`: the driver's own staging, ~9.3 GB/s). Measured on
    /// an H100 host: pp512 1,001 t/s against 231 from the pageable mapping, pp4096 5,730 against 1,625.
    public var layerwiseBounce = ProcessInfo.processInfo.environment["KTRANSFORMERS_LAYERWISE_PIN"] != "0"
    /// Expert deferral of the hybrid MoE (KTransformers' SOSP'25 "expert deferral"): each token's `deferredExperts`
    /// lowest-scored routed experts of a layer run on the CPU while the GPU goes on to the next layer, and their sum
    /// joins the residual stream one layer late (at the next hybrid MoE layer's output, or after the last layer).
    /// 0 (the default) defers none; `--defer-experts N`. It changes the model's function slightly: the accuracy cost
    /// on the tiny references is in docs/performance.md.
    public var deferredExperts = 0
    /// Layers staged so far by the layerwise prefill (tests, the log).
    public internal(set) var layerwiseStagings = 0
    /// Layers staged straight from page-locked stacks (`pageLockedStackMemory`), with no bounce buffer (tests).
    public internal(set) var layerwiseDirectStagings = 0
    /// Layerwise steps whose layer was already in a staging slot (prefetched while the previous layer ran).
    public internal(set) var layerwisePrefetchHits = 0
    /// Whether a graph is being captured (work that cannot be captured, as copies from pageable memory, stays out).
    private(set) var capturing = false
    /// Streaming multiprocessors, and the shared memory a block may opt in to.
    let multiprocessors: Int
    let sharedOptin: Int
    /// Idle spins of the hybrid MoE's expert threads: ~1-2 ms, longer than the GPU's part of a layer.
    static let hybridIdleSpins = 1_000_000
    /// Called once per format converted at load (the CLI logs it).
    public var onConversion: (@Sendable (String) -> Void)?

    /// cuBLAS for prefill's half-precision GEMMs (nil where it is not found or turned off: `gemmSummary` says why).
    let blas: CUBLAS?
    /// What runs prefill's matmuls, for the start-up log.
    public let gemmSummary: String
    /// Steps of at least this many tokens run their matmuls as cuBLAS f16 GEMMs (the weights decoded to f16 rows
    /// first, a chunk of rows at a time; the input scaled per row by a power of two into f16 range), below it the
    /// integer / tf32 tensor-core kernels (their exact arithmetic: batch invariant). Such a step's bits differ
    /// slightly from a smaller step's (f16 weights and inputs, not the 8-bit rounding of the CPU's vec-dot).
    /// `KTRANSFORMERS_CUDA_GEMM_MIN`, default 128; 0 turns the GEMMs off.
    nonisolated(unsafe) public static var gemmMinTokens = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_GEMM_MIN"].flatMap { Int($0) } ?? 128
    /// f16 elements of decoded weight rows one GEMM may use (256 MiB; larger matrices go in chunks of rows; tests
    /// make it small to run the chunks).
    nonisolated(unsafe) public static var gemmScratchElements = 1 << 27
    /// Every step on the exact (batch-invariant) kernels: the f16 GEMMs and flash attention off whatever the step
    /// (`--batch-invariant`).
    public var batchInvariant = false
    /// cuBLAS GEMMs run so far (tests).
    public private(set) var gemmCalls = 0
    /// The decoded rows `// [chunk rows, cols]` f16, the scaled f16 input `// [maxTokens, widest]` and its per-row
    /// inverse scales `// [maxTokens]`.
    private var gemmWeights: Tensor?
    private var gemmInput: Tensor?
    private var gemmInverse: Tensor?
    /// The largest matrix (elements) and widest input of the weights a GEMM may run.
    private var gemmLargest = 0
    private var gemmWidest = 0

    /// Formats the kernels decode in place.
    static let formats: [GGMLType: String] = [
        .f32: "f32", .f16: "f16", .bf16: "bf16", .q4_0: "q4_0", .q4_1: "q4_1", .q5_0: "q5_0", .q5_1: "q5_1",
        .q8_0: "q8_0", .iq4_nl: "iq4_nl", .iq4_xs: "iq4_xs", .q2_K: "q2_K", .q4_K: "q4_K", .q5_K: "q5_K",
        .q6_K: "q6_K",
    ]

    private init(ordinal: Int, logical: Int? = nil, driver: CUDADriver, nvrtc: NVRTC) throws {
        self.ordinal = ordinal
        device = .gpu(logical ?? ordinal)
        self.driver = driver
        guard ordinal < (try driver.deviceCount()) else {
            throw CUDAError("cuda:\(ordinal): the driver sees \(try driver.deviceCount()) GPU(s)")
        }
        let p = try driver.properties(ordinal)
        multiprocessors = max(1, p.multiprocessors)
        sharedOptin = try driver.sharedMemoryOptin(ordinal)
        context = try driver.useDevice(ordinal)
        stream = try driver.makeStream()
        kernels = try CUDAKernels(driver: driver, nvrtc: nvrtc, major: p.major, minor: p.minor)
        dependentLaunches = Self.dependentLaunchOverride ?? (p.major >= 9 && driver.launchesWithAttributes)
        gpuName = p.name
        memoryBytes = p.bytes
        kernelOrigin = kernels.origin
        var loaded: CUBLAS?
        var note: String
        switch CUBLAS.load() {
        case .success(let b):
            do {
                // A workspace of ours: a GEMM inside a graph capture must not allocate.
                let workspaceBytes = 32 << 20
                let ws = try driver.allocate(workspaceBytes)
                allocations[UInt(ws)] = workspaceBytes
                try b.bind(stream: stream, workspace: UInt(ws), bytes: workspaceBytes)
                loaded = b
                note = Self.gemmMinTokens > 0
                    ? "prefill matmuls: cuBLAS \(b.version / 10000).\(b.version / 100 % 100) f16 GEMMs from \(Self.gemmMinTokens) tokens a step"
                    : "prefill matmuls: int8 / tf32 tiles (cuBLAS GEMMs off: KTRANSFORMERS_CUDA_GEMM_MIN=0)"
            } catch {
                note = "prefill matmuls: int8 / tf32 tiles (cuBLAS unusable: \(error))"
            }
        case .failure(let e):
            note = "prefill matmuls: int8 / tf32 tiles (no cuBLAS: \(e.description))"
        }
        blas = loaded
        gemmSummary = note
        summary = String(format: "%@ (%@%@, %.1f GiB, sm_%d%d, %d SMs)", device.description,
                         (logical ?? ordinal) == ordinal ? "" : "GPU \(ordinal): ", p.name, Double(p.bytes) / 1_073_741_824,
                         p.major, p.minor, p.multiprocessors)
    }

    /// The backend on GPU `ordinal`, or an error saying what is missing (driver, GPU, NVRTC) or what failed.
    /// `logical`: the device number it answers to where it is not `ordinal` (several backends on one GPU).
    public static func make(ordinal: Int = 0, logical: Int? = nil) throws -> CUDABackend {
        let driver: CUDADriver
        switch CUDADriver.load() {
        case .failure(let e): throw CUDAError("CUDA is not usable on this machine: \(e.description)")
        case .success(let d): driver = d
        }
        let nvrtc: NVRTC
        switch NVRTC.load() {
        case .failure(let e): throw CUDAError("CUDA is not usable on this machine: \(e.description) (NVRTC compiles the kernels; install the CUDA toolkit's libnvrtc or set CUDA_HOME)")
        case .success(let n): nvrtc = n
        }
        return try CUDABackend(ordinal: ordinal, logical: logical, driver: driver, nvrtc: nvrtc)
    }

    /// GPUs the CUDA driver sees here (0 without a driver).
    public static func visibleGPUs() -> Int {
        guard case .success(let driver) = CUDADriver.load() else { return 0 }
        return (try? driver.deviceCount()) ?? 0
    }

    /// The backend on GPU 0; nil when this machine has no CUDA driver, no GPU or no NVRTC (the conformance suite
    /// then skips it); an error when it has them and the backend still fails (kernels that do not compile).
    public static func makeIfPresent() throws -> CUDABackend? {
        guard case .success(let driver) = CUDADriver.load(), (try? driver.deviceCount()) ?? 0 > 0,
              case .success(let nvrtc) = NVRTC.load() else { return nil }
        return try CUDABackend(ordinal: 0, driver: driver, nvrtc: nvrtc)
    }

    deinit {
        try? driver.makeCurrent(context)
        try? driver.synchronize(stream)
        for (p, _) in allocations { driver.free(CUDADriver.CUdeviceptr(p)) }
        if let staging { driver.freeHost(staging) }
        for e in profileEvents + profilePending.flatMap({ [$0.start, $0.end] }) { driver.destroyEvent(e) }
        if let waitEvent { driver.destroyEvent(waitEvent) }
    }

    // MARK: plumbing

    @inline(__always)
    func must(_ what: @autoclosure () -> String, _ body: () throws -> Void) {
        do { try body() } catch { fatalError("CUDA backend (\(gpuName)): \(what()): \(error)") }
    }

    func current() {
        must("cuCtxSetCurrent") { try driver.makeCurrent(context) }
        if pendingCombine != nil { flushCombine() }
        if pendingProjection != nil { flushProjection() }
    }

    /// The routed experts' combine of a step (moe_combine's store form) left for the op after it
    /// (`CUDAExpertExecutor.wait(weights:storeInto:)`): `addRMSNorm` of its output runs it in its own launch
    /// (add_rms_norm_combine: one launch fewer, the same bits); every other op (each enters through
    /// `current()`) launches it first.
    struct PendingCombine {
        let ys: UInt, weights: UInt, out: UInt
        let n: Int, topK: Int, dim: Int
    }
    var pendingCombine: PendingCombine?
    /// `KTRANSFORMERS_CUDA_COMBINE_NORM=1`: the routed experts' combine inside the residual add and norm that follows
    /// it (add_rms_norm_combine). Off by default: measured slower than moe_combine + add_rms_norm once the plain norm
    /// had its own code again (H200, 2026-12-07 17:49, Qwen3-30B-A3B all on the GPU tg128: 377.2 against 384.2 t/s).
    nonisolated(unsafe) public static var combineInNorm = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_COMBINE_NORM"] == "1"

    /// A batch-1 q/k/v projection (matmulGroup of three Q4_K matrices on the split-row kernel) left for the op after
    /// it: `ropeAndStoreKV` of its outputs without per-head norms runs it with the RoPE and the K/V store in its
    /// epilogue (matvec_q4_K_q8_ps<N>_rope: one launch fewer a layer, the same bits); every other op (each enters
    /// through `current()`) launches the plain projection first.
    struct PendingProjection {
        let form: (f: CUDADriver.Handle, name: String, split: Int)
        let weight: CUDAWeight
        let parts: [(address: UInt, rows: Int, y: UInt)]
        let cols: Int
        let input: (UInt, UInt, UInt)
    }
    var pendingProjection: PendingProjection?
    /// `KTRANSFORMERS_CUDA_ROPE_PROJECTION=1`: the batch-1 RoPE and K/V store inside the q/k/v projection where
    /// attention has no per-head norms. Off by default: its first form measured slower than rope_store_kv on an H100
    /// (2026-12-07 15:31, Llama-3-8B tg128: 338.0 against 376.4 t/s; thread 0 of each block then waited for the
    /// pair's cos/sin between two barriers). The present form, which asks for them before the row sums and has one
    /// barrier an iteration, measured slower too (H200, 2026-12-07 17:49: 381.0 against 419.5 t/s).
    nonisolated(unsafe) public static var ropeInProjection = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_ROPE_PROJECTION"] == "1"

    /// Launches the pending q/k/v projection (the plain split-row kernel).
    func flushProjection() {
        guard let p = pendingProjection else { return }
        pendingProjection = nil
        persistentMatvec(p.form, p.weight, p.parts, cols: p.cols, input: p.input)
    }

    /// Launches the pending combine (moe_combine, store form).
    func flushCombine() {
        guard let p = pendingCombine else { return }
        pendingCombine = nil
        launch("moe_combine", grid: (Self.blocks(p.n * p.dim), 1, 1), block: 256,
               [.ptr(p.ys), .ptr(p.weights), .ptr(p.out), .i32(p.n), .i32(p.topK), .i32(p.dim), .i32(1)])
    }

    /// Launches kernel `f` on the backend's stream.
    func launch(_ f: CUDADriver.Handle, _ name: @autoclosure () -> String, grid: (Int, Int, Int), block: Int,
                shared: Int = 0, _ a: [KernelArg]) {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 { return }
        let dependent = dependentLaunches && !profiling && stepTokens <= Self.dependentLaunchMaxTokens
        profiled(name()) {
            must("launch of \(name())") {
                try driver.launch(f, grid: (UInt32(grid.0), UInt32(grid.1), UInt32(grid.2)), block: (UInt32(block), 1, 1),
                                  sharedBytes: UInt32(shared), stream: stream, args: args.pack(a), dependent: dependent)
            }
        }
        if Self.emptyLaunchesAfter > 0 && grid.0 * grid.1 * grid.2 <= Self.emptyLaunchesAfter {
            // The cost of one more kernel boundary (a measurement: what fusing two kernels would save). Not counted
            // in `launches`: it writes nothing, so an input prepared by the launch before stays valid.
            must("launch of kt_empty") {
                try driver.launch(kernels.function("kt_empty"), grid: (1, 1, 1), block: (32, 1, 1), sharedBytes: 0,
                                  stream: stream, args: args.pack([]), dependent: dependent)
            }
        }
    }

    /// `KTRANSFORMERS_CUDA_EMPTY_AFTER=B` (a measurement, default 0: off): an empty dependent kernel after every launch
    /// of at most B blocks, so that the step time's rise over the launches added is the cost of a kernel boundary.
    static let emptyLaunchesAfter = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_EMPTY_AFTER"].flatMap { Int($0) } ?? 0

    /// Work on the stream (a kernel, a cuBLAS call), counted in `launches` and timed by events around it when
    /// profiling.
    private func profiled(_ name: @autoclosure () -> String, _ body: () -> Void) {
        launches &+= 1
        let events = profiling ? (profileEvent(), profileEvent()) : nil
        if let e = events { must("cuEventRecord") { try driver.record(e.0, stream: stream) } }
        body()
        if let e = events {
            must("cuEventRecord") { try driver.record(e.1, stream: stream) }
            profilePending.append((name(), e.0, e.1))
            if profilePending.count >= 4096 { harvestProfile() }
        }
    }

    private func profileEvent() -> CUDADriver.Handle {
        if let e = profileEvents.popLast() { return e }
        var e: CUDADriver.Handle?
        must("cuEventCreate") { e = try driver.makeEvent() }
        return e!
    }

    private func harvestProfile() {
        for p in profilePending {
            var ms: Float = 0
            must("cuEventElapsedTime") { ms = try driver.elapsed(from: p.start, to: p.end) }
            let t = profileTotals[p.name] ?? (0, 0)
            profileTotals[p.name] = (t.calls + 1, t.ms + Double(ms))
            profileEvents += [p.start, p.end]
        }
        profilePending.removeAll(keepingCapacity: true)
    }

    /// The kernels' GPU time since the last reset, by kernel (name and shape), largest first.
    public func kernelProfile() -> [(name: String, calls: Int, ms: Double)] {
        current()
        harvestProfile()
        return profileTotals.map { ($0.key, $0.value.calls, $0.value.ms) }.sorted { $0.ms > $1.ms }
    }

    public func resetKernelProfile() {
        current()
        harvestProfile()
        profileTotals = [:]
    }

    func launch(_ name: String, grid: (Int, Int, Int), block: Int, _ a: [KernelArg]) {
        launch(kernels.function(name), name, grid: grid, block: block, a)
    }

    /// Blocks for a grid-stride loop over `count` elements.
    @inline(__always)
    static func blocks(_ count: Int, _ threads: Int = 256) -> Int { max(1, min((count + threads - 1) / threads, 4096)) }

    /// An allocation for a weight: failure is an error naming the tensor and the memory left (a model that does not
    /// fit), not a crash.
    private func weightAllocate(bytes: Int, name: String) throws -> UInt {
        current()
        do {
            // 64 bytes of slack: the streaming kernels copy whole aligned 16-byte pieces around a super-block, which
            // for a 210-byte Q6_K block reach up to 14 bytes past the matrix's last byte.
            let p = try driver.allocate(bytes + 64)
            allocations[UInt(p)] = bytes + 64
            RunMemory.noteAllocation()
            return UInt(p)
        } catch {
            let mem = (try? driver.memoryInfo()) ?? (free: 0, total: memoryBytes)
            throw BackendError(String(format: "tensor '%@' (%.1f MiB) does not fit in %@'s memory: %.1f MiB free of %.1f GiB after %.2f GiB of weights; the model needs a GPU with more memory, or a smaller quantization (%@)",
                                      name, Double(bytes) / 1_048_576, device.description, Double(mem.free) / 1_048_576,
                                      Double(mem.total) / 1_073_741_824, Double(weightBytes) / 1_073_741_824, "\(error)"))
        }
    }

    /// Device memory for weights staged at run time (the hybrid MoE's layerwise prefill); an error, not a crash,
    /// when it does not fit. `freeWeights` gives it back.
    func allocateWeights(bytes: Int, name: String) throws -> UInt { try weightAllocate(bytes: bytes, name: name) }

    /// Page-locked host memory for the CPU backend's stacks (`CPUBackend.stackMemory`): the hybrid MoE's routed experts
    /// copied there at load, so that the layerwise prefill's copies read them at the link's speed with no bounce buffer
    /// (llama.cpp does the same without mmap). Each block is freed when its weights are; nil when the driver refuses.
    public func pageLockedStackMemory() -> @Sendable (Int) -> (pointer: UnsafeMutableRawPointer, owner: AnyObject)? {
        { [self] bytes in
            current()
            guard let p = try? driver.allocateHost(bytes) else { return nil }
            pinnedLock.lock()
            pinnedRanges.append((UInt(bitPattern: p), UInt(bitPattern: p) + UInt(bytes)))
            pinnedLock.unlock()
            return (p, PageLockedBlock(backend: self, pointer: p))
        }
    }

    /// Bytes of `pageLockedStackMemory` held now (the log, tests).
    public var pageLockedBytes: Int {
        pinnedLock.lock()
        defer { pinnedLock.unlock() }
        return pinnedRanges.reduce(0) { $0 + Int($1.1 - $1.0) }
    }

    /// Whether `bytes` from `p` lie in one block of `pageLockedStackMemory`.
    func isPageLocked(_ p: UnsafeRawPointer, bytes: Int) -> Bool {
        let a = UInt(bitPattern: p)
        pinnedLock.lock()
        defer { pinnedLock.unlock() }
        return pinnedRanges.contains { a >= $0.0 && a + UInt(bytes) <= $0.1 }
    }

    fileprivate func freePageLocked(_ p: UnsafeMutableRawPointer) {
        pinnedLock.lock()
        pinnedRanges.removeAll { $0.0 == UInt(bitPattern: p) }
        pinnedLock.unlock()
        current()   // the weights may be dropped on any thread: cuMemFreeHost needs the context
        driver.freeHost(p)
    }
    private var pinnedRanges: [(UInt, UInt)] = []
    private let pinnedLock = NSLock()
    func freeWeights(_ address: UInt) {
        guard allocations.removeValue(forKey: address) != nil else { return }
        current()
        must("cuStreamSynchronize") { try driver.synchronize(stream) }
        driver.free(CUDADriver.CUdeviceptr(address))
    }

    func deviceAllocate(bytes: Int) -> UInt {
        current()
        var p: CUDADriver.CUdeviceptr = 0
        must("allocation of \(bytes) bytes") { p = try driver.allocate(bytes) }
        allocations[UInt(p)] = bytes
        RunMemory.noteAllocation()
        return UInt(p)
    }

    /// Synchronises the stream (tests and timing).
    public func synchronize() {
        current()
        must("cuStreamSynchronize") { try waitForStream() }
    }

    /// Waits for the stream's work: spinning, or asleep on a blocking event (`blockingWaits`).
    private func waitForStream() throws {
        let after = streamWaitHooks.map { $0() }
        if blockingWaits {
            if waitEvent == nil { waitEvent = try driver.makeBlockingEvent() }
            try driver.record(waitEvent!, stream: stream)
            try driver.wait(waitEvent!)
        } else {
            try driver.synchronize(stream)
        }
        for a in after { a() }
    }

    /// Called before every wait for the whole stream (`synchronize`, `read`); what each returns is called once the
    /// wait is over (the hybrid MoE's expert thread learns there that no job it was armed for is still queued).
    var streamWaitHooks: [() -> () -> Void] = []

    /// Free and total device memory.
    public func memoryInfo() -> (free: Int, total: Int) {
        current()
        var r = (free: 0, total: 0)
        must("cuMemGetInfo") { r = try driver.memoryInfo() }
        return r
    }

    // MARK: memory

    public func allocate(_ count: Int) -> Tensor {
        let p = deviceAllocate(bytes: max(1, count) * 4)
        must("clearing an allocation") { try driver.fill32(CUDADriver.CUdeviceptr(p), value: 0, count: max(1, count), stream: stream) }
        return Tensor(address: p, count: count, device: device)
    }

    /// `slot` at least `count` floats long: a new allocation (zeroed, as every allocation) in place of a shorter one,
    /// which moves the graphs' scratch (a new `graphEpoch`). For the scratch that grows with the plan or a step.
    private func grow(_ slot: inout Tensor?, to count: Int) -> Tensor {
        if let t = slot, t.count >= count { return t }
        if let old = slot { release(old) }
        let t = allocate(count)
        slot = t
        graphEpoch += 1
        return t
    }

    public func release(_ t: Tensor) {
        guard allocations.removeValue(forKey: t.address) != nil else { return }
        current()
        must("cuStreamSynchronize") { try driver.synchronize(stream) }
        driver.free(CUDADriver.CUdeviceptr(t.address))
    }

    public func upload(_ values: [Float]) -> Tensor {
        let t = allocate(values.count)
        values.withUnsafeBufferPointer { write($0, to: t) }
        return t
    }

    private func copyIn(_ p: UnsafeRawPointer, bytes: Int, to address: UInt) {
        guard bytes > 0 else { return }
        current()
        must("host-to-device copy") {
            try driver.copyAsync(toDevice: CUDADriver.CUdeviceptr(address), from: p, bytes: bytes, stream: stream)
        }
    }

    public func write(_ values: UnsafeBufferPointer<Int32>, to t: Tensor) {
        precondition(values.count <= t.count, "write of \(values.count) elements into a tensor of \(t.count)")
        if let b = values.baseAddress { copyIn(b, bytes: values.count * 4, to: t.address) }
    }

    public func write(_ values: UnsafeBufferPointer<Float>, to t: Tensor) {
        precondition(values.count <= t.count, "write of \(values.count) elements into a tensor of \(t.count)")
        if let b = values.baseAddress { copyIn(b, bytes: values.count * 4, to: t.address) }
    }

    public func read(_ t: Tensor, count: Int) -> UnsafeMutablePointer<Float> {
        current()
        let bytes = max(1, count) * 4
        if stagingBytes < bytes {
            if let staging { driver.freeHost(staging) }
            must("pinned staging of \(bytes) bytes") { staging = try driver.allocateHost(bytes) }
            stagingBytes = bytes
            RunMemory.noteAllocation()
        }
        must("device-to-host copy") {
            if count > 0 {
                try driver.copyAsync(toHost: staging!, from: CUDADriver.CUdeviceptr(t.address), bytes: count * 4, stream: stream)
            }
            try waitForStream()
        }
        return staging!.bindMemory(to: Float.self, capacity: max(1, count))
    }

    public func makeKVCache(pageSize: Int, numPages: Int, kDims: [Int], vDims: [Int]) -> KVCache {
        let slots = pageSize * numPages
        let k = kDims.map { allocate(max(1, slots * $0)) }
        let v = vDims.map { allocate(max(1, slots * $0)) }
        return KVCache(pageSize: pageSize, numPages: numPages, kDims: kDims, vDims: vDims, k: k, v: v, device: device,
                       storage: DeviceTensors(backend: self, tensors: k + v))
    }

    public func makeRopeTable(_ rope: RoPE, positions: Int) -> RopeTable {
        var host = [Float](repeating: 0, count: max(1, positions * rope.dims))
        host.withUnsafeMutableBufferPointer { b in
            for pos in 0..<positions { rope.table(position: pos, into: b.baseAddress! + pos * rope.dims) }
        }
        return RopeTable(rope: rope, table: upload(host), positions: positions)
    }

    // MARK: weights

    /// Uploads `rows` rows of a weight: as they are when the kernels decode the format, else decoded to f32.
    private func uploadWeight(name: String, type: GGMLType, rows: Int, cols: Int, data: UnsafeRawPointer,
                              host: QuantKernels, hostRowBytes: Int) throws -> CUDAWeight {
        if let tag = Self.formats[type] {
            let bytes = rows * hostRowBytes
            let p = try weightAllocate(bytes: max(1, bytes), name: name)
            copyIn(data, bytes: bytes, to: p)
            weightBytes += bytes
            return CUDAWeight(address: p, tag: tag, rowBytes: hostRowBytes, rounding: Self.rounding(host), kernels: kernels)
        }
        if convertedFormats[type] == nil {
            onConversion?("cuda: no kernel reads \(type) blocks; \(type) weights are converted to f32 at load (\(name) first)")
        }
        convertedFormats[type, default: 0] += 1
        let rowBytes = cols * 4
        let p = try weightAllocate(bytes: max(1, rows * rowBytes), name: name)
        let chunkRows = max(1, (1 << 22) / max(1, cols))
        var chunk = [Float](repeating: 0, count: chunkRows * cols)
        var r = 0
        while r < rows {
            let n = min(chunkRows, rows - r)
            chunk.withUnsafeMutableBufferPointer { c in
                for i in 0..<n { host.dequantize(data + (r + i) * hostRowBytes, c.baseAddress! + i * cols, cols) }
            }
            chunk.withUnsafeBytes { copyIn($0.baseAddress!, bytes: n * rowBytes, to: p + UInt(r * rowBytes)) }
            // The copy from pageable memory is staged before it returns, so the buffer can be reused.
            r += n
        }
        weightBytes += rows * rowBytes
        return CUDAWeight(address: p, tag: "f32", rowBytes: rowBytes, rounding: Self.rounding(host), kernels: kernels)
    }

    /// The activation rounding of a `.standard` matmul with weights of these CPU kernels (their vec-dot type).
    static func rounding(_ k: QuantKernels) -> ActivationRounding {
        switch k.vecDotType {
        case .q8_0, .q8_1: return .q8_0
        case .q8_K: return .q8_K
        default: return .none
        }
    }

    /// Notes a weight's input width: the rounding scratch must hold `maxTokens` rows of the widest.
    func noteInput(cols: Int) {
        widestInput = max(widestInput, cols)
        growRounded()
    }

    private func growRounded() {
        let need = plan.maxTokens * widestInput
        if need > (rounded?.count ?? 0) {
            if let old = rounded { release(old) }
            rounded = allocate(need)
            graphEpoch += 1
        }
        if widestSplitOutput > 0 {
            if need > (splitLow?.count ?? 0) {
                if let old = splitLow { release(old) }
                splitLow = allocate(need)
                graphEpoch += 1
            }
            if need / 32 + 1 > (splitSums?.count ?? 0) {
                if let old = splitSums { release(old) }
                splitSums = allocate(need / 32 + 1)
                graphEpoch += 1
            }
            let parts = plan.maxTokens * widestSplitOutput
            if parts > (splitParts?.count ?? 0) {
                if let old = splitParts { release(old) }
                splitParts = allocate(parts)
                graphEpoch += 1
            }
            // A counter per 16-row tile of the split-tf32 form, or per row range of matvec_q4_K_q16_pk (≤ rows).
            _ = grow(&mmfCounters, to: widestSplitRows)
        }
        growGemm()
        let q = Self.quantizedLayout(elements: need).total
        if q > (quantized?.count ?? 0) {
            if let old = quantized { release(old) }
            quantized = allocate(q)
        }
        // The quantized parts sit at offsets of the reserved maximum: a new maximum moves them.
        if need != quantizedFor {
            quantizedFor = need
            graphEpoch += 1
        }
    }

    /// The GEMM scratch for the plan (none while steps stay below `gemmMinTokens`).
    private func growGemm() {
        guard blas != nil, Self.gemmMinTokens > 0, plan.maxTokens >= Self.gemmMinTokens, gemmLargest > 0 else { return }
        func grow(_ t: inout Tensor?, floats: Int) {
            guard floats > (t?.count ?? 0) else { return }
            if let old = t { release(old) }
            t = allocate(floats)
            graphEpoch += 1
        }
        grow(&gemmWeights, floats: (min(gemmLargest, Self.gemmScratchElements) + 1) / 2)
        grow(&gemmInput, floats: (plan.maxTokens * gemmWidest + 1) / 2)
        grow(&gemmInverse, floats: plan.maxTokens)
    }

    /// Whether an `n`-token matmul of `w` runs as a cuBLAS f16 GEMM.
    private func gemmApplies(_ w: WeightMatrix, n: Int) -> Bool {
        guard blas != nil, !batchInvariant, Self.gemmMinTokens > 0, n >= Self.gemmMinTokens, w.cols % 32 == 0,
              let input = gemmInput, let inv = gemmInverse, gemmWeights != nil,
              n * w.cols <= 2 * input.count, n <= inv.count else { return false }
        return true
    }

    /// `x` (`n` rows of `cols`) as f16 rows scaled by powers of two in `gemmInput`, the inverse scales in `gemmInverse`.
    private func gemmInputF16(_ x: Tensor, cols: Int, n: Int) {
        launch("to_f16_scaled", grid: (n, 1, 1), block: 256,
               [.ptr(x.address), .ptr(gemmInput!.address), .ptr(gemmInverse!.address), .i32(cols)])
    }

    /// `y[n, rows] = x · Wᵀ` on cuBLAS from the prepared f16 input: the weight's rows decoded to f16 a chunk at a time
    /// (f16 weights are read as they are), then the rows' scales undone.
    private func gemm(_ g: CUDAWeight, rows: Int, cols: Int, y: Tensor, n: Int) {
        guard let blas, let scratch = gemmWeights else { preconditionFailure("CUDA GEMM without cuBLAS or scratch") }
        // Rows per chunk: as many as the scratch holds, a multiple of 64 where it holds that many.
        let fit = 2 * scratch.count / cols
        precondition(fit >= 1 || g.tag == "f16", "CUDA GEMM: a row of \(cols) does not fit the f16 scratch")
        let chunk = g.tag == "f16" ? rows : min(rows, fit >= 64 ? fit / 64 * 64 : fit)
        var r0 = 0
        while r0 < rows {
            let rc = min(chunk, rows - r0)
            let a: UInt
            if g.tag == "f16" {
                a = g.address
            } else {
                launch(g.dequantF16, "dequant_f16_\(g.tag) \(rc)x\(cols)", grid: (Self.blocks(rc * cols / 32), 1, 1), block: 256,
                       [.ptr(g.address + UInt(r0 * g.rowBytes)), .i64(g.rowBytes), .i32(rc), .i32(cols), .ptr(scratch.address)])
                a = scratch.address
            }
            profiled("cublas_gemm_f16 \(rc)x\(cols)") {
                must("cuBLAS GEMM \(rc)x\(n)x\(cols)") {
                    driver.noteOtherWork()
                    try blas.gemmF16(m: rc, n: n, k: cols, a: a, x: gemmInput!.address, c: y.address + UInt(r0 * 4), ldc: rows)
                }
            }
            gemmCalls += 1
            r0 += rc
        }
        launch("scale_rows", grid: (Self.blocks(n * rows), 1, 1), block: 256,
               [.ptr(y.address), .ptr(gemmInverse!.address), .i32(rows), .i64(n * rows)])
    }

    /// Offsets (in 4-byte elements) of the parts of `quantized` for `elements` inputs: int8 values, per-256 scales,
    /// per-16 sums.
    static func quantizedLayout(elements: Int) -> (scales: Int, sums: Int, total: Int) {
        // Each region starts 16-byte aligned: the block-staged tiles copy the sums in 16-byte pieces.
        func align4(_ x: Int) -> Int { (x + 3) & ~3 }
        let values = align4((elements + 3) / 4 + 16)
        let scales = align4((elements + 255) / 256 + 16)
        return (values, values + scales, values + scales + (elements + 15) / 16)
    }

    /// Whether a `.standard` matmul with `w` runs the integer-dot kernels (Q4_K or Q6_K rows, whole Q8_K blocks).
    static func integerDot(_ w: CUDAWeight, cols: Int) -> Bool { w.integerDot != nil && cols % 256 == 0 }

    /// Token rows from which an integer-dot matmul runs the tensor-core tiles (mmq.cu) instead of the matrix-vector
    /// kernel; both give the same bits. Measured on the H200 (Llama-3-8B shape, 64 decode steps): at 32 sequences
    /// the tiles gave 940 t/s against the matvec's 843, at 16 the matvec 752 against 560.
    /// `KTRANSFORMERS_CUDA_MMQ_MIN` overrides it (measurements, tests).
    static let mmqMinTokens: Int = {
        if let v = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_MMQ_MIN"], let n = Int(v), n >= 1 { return n }
        return 32
    }()

    /// The parts of `quantized` (values, scales, sums addresses), at the offsets of the reserved maximum so that one
    /// layout serves every token count.
    private func quantizedParts(_ qt: Tensor) -> (UInt, UInt, UInt) {
        let full = Self.quantizedLayout(elements: plan.maxTokens * widestInput)
        return (qt.address, qt.offset(full.scales).address, qt.offset(full.sums).address)
    }

    /// Where a norm of `rows` packed rows of `dim` also writes its output's Q8_K form for the integer-dot matmul
    /// that reads it next (nil when no such matmul input is that wide).
    private func quantizedTarget(rows: Int, dim: Int) -> (UInt, UInt, UInt)? {
        guard dim % 256 == 0, dim <= widestInput, rows <= plan.maxTokens, let qt = quantized else { return nil }
        return quantizedParts(qt)
    }

    /// `x` as Q8_K integers in `quantized` (values, scales, sums addresses), for `n` rows of `cols`.
    func quantizeInput(_ x: Tensor, cols: Int, n: Int) -> (UInt, UInt, UInt) {
        guard let qt = quantized else { preconditionFailure("CUDA matmul: quantized input scratch not reserved") }
        let layout = Self.quantizedLayout(elements: n * cols)
        precondition(layout.total <= qt.count, "CUDA matmul: quantized input scratch not reserved for \(n) rows of \(cols)")
        let (q, d, s) = quantizedParts(qt)
        if preparedQuantized == Prepared(address: x.address, count: n * cols, launch: launches) { return (q, d, s) }
        launch("quantize_q8_K", grid: (n, (cols / 256 + 3) / 4, 1), block: 128,
               [.ptr(x.address), .ptr(q), .ptr(d), .ptr(s), .i32(cols)])
        return (q, d, s)
    }

    private func integerMatvec(_ g: CUDAWeight, rows: Int, cols: Int, input: (UInt, UInt, UInt), y: Tensor, n: Int) {
        let args: [KernelArg] = [.ptr(g.address), .i64(g.rowBytes), .i32(rows), .i32(cols), .ptr(input.0), .ptr(input.1),
                                 .ptr(input.2), .ptr(y.address), .i32(n)]
        if streamMatmul(g, [(g.address, rows, y.address)], cols: cols, input: input, n: n) { return }
        if n >= Self.mmqMinTokens, let tiles = g.tensorCoreTiles {
            launch(tiles, "mmq_\(g.tag) \(rows)x\(cols)", grid: ((rows + 63) / 64, (n + 63) / 64, 1), block: 128, args)
        } else if n == 1, let f = persistentForm(g, cols: cols) {
            persistentMatvec(f, g, [(g.address, rows, y.address)], cols: cols, input: input)
        } else {
            let one = n == 1 && Self.oneTokenForms ? g.integerDotOne : nil
            launch(one ?? g.integerDot!, "matvec_\(g.tag)_q8\(one == nil ? "" : "_1" + g.oneTokenSuffix) \(rows)x\(cols)",
                   grid: ((rows + 3) / 4, (n + 7) / 8, 1), block: 128, args)
        }
    }

    /// The persistent one-token kernel `persistentOneToken` picks for `g` in this mode, if any.
    private func persistentForm(_ g: CUDAWeight, cols: Int) -> (f: CUDADriver.Handle, name: String, split: Int)? {
        guard let p = g.integerDotPersistent else { return nil }
        switch Self.persistentOneToken {
        case 1:
            if batchInvariant { return nil }
            let steps = (cols + 1023) / 1024
            if Self.splitRows, Self.registerInputs, let r = g.integerDotSplit, steps != 3, steps <= 4 {
                return (r[steps == 4 ? 2 : steps - 1], "matvec_q4_K_q8_ps\(steps)", 4 / steps)
            }
            if Self.registerInputs, let r = g.integerDotRegisters, steps <= r.count {
                return (r[steps - 1], "matvec_q4_K_q8_pr\(steps)", 0)
            }
            return (p.fast, "matvec_q4_K_q8_pf", 0)
        case 2: return (p.exact, "matvec_q4_K_q8_p", 0)
        default: return nil
        }
    }

    /// A model step of `tokens` tokens starts (`embed`, its first op).
    func beginStep(tokens: Int) { stepTokens = tokens }

    /// Batch-1 decode's persistent Q4_K kernel over up to three matrices (matvec_q4_K_q8_p[f]): as many warps as the
    /// GPU holds at once, each the same number of consecutive rows (the last ones fewer), streaming them.
    /// The split form (`form.split` rows a block at a time, matvec_q4_K_q8_ps<N>): as many blocks as the GPU holds at
    /// once, at most one per row group.
    private func persistentMatvec(_ form: (f: CUDADriver.Handle, name: String, split: Int), _ g: CUDAWeight,
                                  _ parts: [(address: UInt, rows: Int, y: UInt)], cols: Int, input: (UInt, UInt, UInt)) {
        let f = form.f
        let p = parts + Array(repeating: (address: UInt(0), rows: 0, y: UInt(0)), count: 3 - parts.count)
        let total = parts.reduce(0) { $0 + $1.rows }
        let (rpw, blocks) = form.split > 0 ? (0, splitGrid(f, items: (total + form.split - 1) / form.split, threads: 128))
                                           : persistentGrid(f, rows: total)
        let args: [KernelArg] = [.ptr(p[0].address), .ptr(p[1].address), .ptr(p[2].address), .i64(g.rowBytes), .i32(p[0].rows),
                                 .i32(p[1].rows), .i32(p[2].rows), .i32(cols), .ptr(input.0), .ptr(input.1), .ptr(input.2),
                                 .ptr(p[0].y), .ptr(p[1].y), .ptr(p[2].y), .i32(rpw),
                                 .i32(form.split > 0 ? Self.splitPrefetch : Self.prefetchRows)]
        launch(f, "\(form.name) \(total)x\(cols)", grid: (blocks, 1, 1), block: 128, args)
    }

    /// The grid of a split-row kernel (matvec_q4_K_q8_ps<N>, matvec_experts_q4_K_q8_ps<N>, matvec_q4_K_q16_ps) over
    /// `items` row groups: as many blocks of `threads` as the GPU holds at once (`persistentBlocksCap` in tests), at
    /// most one per group.
    func splitGrid(_ f: CUDADriver.Handle, items: Int, threads: Int) -> Int {
        min(items, Self.persistentBlocksCap ?? multiprocessors * blocksPerSM(f, threads: threads, shared: 0))
    }

    /// The grid of a batch-1 persistent kernel (4 warps a block of 128 threads) over `rows` rows, once per each of
    /// `groups` (grid y): as many warps as the GPU holds at once (`persistentBlocksCap` blocks in tests), shared among
    /// the groups, each the same number of consecutive rows `rpw` (the last ones fewer).
    func persistentGrid(_ f: CUDADriver.Handle, rows: Int, groups: Int = 1) -> (rpw: Int, blocks: Int) {
        let resident = 4 * (Self.persistentBlocksCap ?? multiprocessors * blocksPerSM(f, threads: 128, shared: 0))
        let perGroup = max(1, resident / groups)
        let rpw = (rows + perGroup - 1) / perGroup, warps = (rows + rpw - 1) / rpw
        return (rpw, (warps + 3) / 4)
    }

    /// The staged kernels for up to three matrices of one integer-dot format and width: the block-staged tiles
    /// from 2 to 32 tokens (`KTRANSFORMERS_CUDA_MMQ_BLOCK_MIN`; Q4_K, Q6_K), else the streaming matrix-vector
    /// kernel up to 8 tokens (`streamMatvec`, from `streamMinTokens`) and the streaming tensor-core tiles from 9
    /// (mmq_stream_<fmt>: per-warp rings of shared memory, 32 or 64 tokens a warp); false where none applies (the
    /// caller launches the plain kernels).
    private func streamMatmul(_ g: CUDAWeight, _ parts: [(address: UInt, rows: Int, y: UInt)], cols: Int,
                              input: (UInt, UInt, UInt), n: Int) -> Bool {
        // Both staged tile kernels take the same arguments (up to three matrices, the Q8_K input, n).
        func tileArgs() -> [KernelArg] {
            let p = parts + Array(repeating: (address: UInt(0), rows: 0, y: UInt(0)), count: 3 - parts.count)
            return [.ptr(p[0].address), .ptr(p[1].address), .ptr(p[2].address), .i64(g.rowBytes), .i32(p[0].rows),
                    .i32(p[1].rows), .i32(p[2].rows), .i32(cols), .ptr(input.0), .ptr(input.1), .ptr(input.2),
                    .ptr(p[0].y), .ptr(p[1].y), .ptr(p[2].y), .i32(n)]
        }
        if n >= Self.mmqBlockMin, n <= 32, Self.mmqBlockEnabled, let blocks = g.tensorCoreBlock {
            // Batched decode: block-staged tiles (inputs and weights through one ring of shared-memory stages), the
            // same bits. Units of TW tiles: the widest that still gives every multiprocessor a unit (a small
            // matrix in units of 8 tiles would leave most of them idle). Measured on an H100 at 32 tokens: q/k/v
            // and the output projection in units of 2 and gate/up in units of 8 (3,806 t/s) against all in units
            // of 8 (3,539), and gate/up in units of 4 (the widest giving every resident block a unit) slower
            // than in 8 (72.5 against 68.6 µs a call).
            let nt = n <= 8 ? 1 : (n <= 16 ? 2 : 4)
            let tiles = parts.reduce(0) { $0 + ($1.rows + 15) / 16 }
            var widths = [8, 4, 2].filter { blocks[100 * nt + $0] != nil }
            if let tw = Self.mmqBlockTW, widths.contains(tw) { widths = [tw] }
            var pick: (f: CUDADriver.Handle, tw: Int, shared: Int, slots: Int)?
            for tw in widths {
                let f = blocks[100 * nt + tw]!
                let shared = Self.mmqBlockDepth(nt, g.tag) * Self.mmqBlockStageBytes(g.tag, tokens: 8 * nt, tiles: tw)
                guard shared <= sharedOptin else { continue }
                setShared(f, shared)  // (before the occupancy query: above 48 KiB a block needs the opt-in)
                let slots = Self.persistentBlocksCap
                    ?? multiprocessors * blocksPerSM(f, threads: 32 * Self.mmqBlockWarps, shared: shared)
                pick = (f, tw, shared, slots)
                if (tiles + tw - 1) / tw >= (Self.persistentBlocksCap ?? multiprocessors) { break }
            }
            if let pick {
                let units = (tiles + pick.tw - 1) / pick.tw
                launch(pick.f, "mmq_block_\(g.tag)_\(nt)_\(pick.tw) \(parts.reduce(0) { $0 + $1.rows })x\(cols)",
                       grid: (min(units, pick.slots), (n + 8 * nt - 1) / (8 * nt), 1),
                       block: 32 * Self.mmqBlockWarps, shared: pick.shared, tileArgs())
                return true
            }
        }
        guard Self.streamTiles(g, n: n), let (f4, f8) = g.tensorCoreStream else {
            return streamMatvec(g, parts, cols: cols, input: input, n: n)
        }
        // A slot: one super-block of 16 rows (Q6_K: the 224 aligned bytes around each row's 210-byte block).
        let shared = 4 * Self.mmqStreamDepth * 16 * (g.tag == "q6_K" ? 224 : 144)
        guard shared <= sharedOptin else { return false }
        let f = n <= 32 ? f4 : f8, tokens = n <= 32 ? 32 : 64
        setShared(f, shared)
        let tiles = parts.reduce(0) { $0 + ($1.rows + 15) / 16 }
        let perSM = blocksPerSM(f, threads: 128, shared: shared)
        launch(f, "mmq_stream_\(g.tag)_\(tokens / 8) \(parts.reduce(0) { $0 + $1.rows })x\(cols)",
               grid: (min((tiles + 3) / 4, multiprocessors * perSM), (n + tokens - 1) / tokens, 1), block: 128,
               shared: shared, tileArgs())
        return true
    }
    /// Routed experts' gate and up (stacks g, u of one format and shape) for every pair in one streaming launch
    /// (matvec_stream_experts_<fmt>_q8); false where it does not apply.
    func streamExperts(_ g: CUDAWeight, _ u: CUDAWeight, rows: Int, cols: Int, input: (UInt, UInt, UInt), xDiv: Int,
                       ids: Tensor, y0: Tensor, y1: Tensor, pairs: Int) -> Bool {
        guard Self.streamMatvecEnabled, let f = g.integerExpertsStream, g.rowBytes % 16 == 0 else { return false }
        let shared = Self.streamStages * Self.streamRows * g.rowBytes
        guard shared <= sharedOptin else { return false }
        setShared(f, shared)
        let chunks = 2 * pairs * ((rows + Self.streamRows - 1) / Self.streamRows)
        let perSM = blocksPerSM(f, threads: 256, shared: shared)
        launch(f, "matvec_stream_experts_\(g.tag)_q8 2x\(rows)x\(cols)", grid: (min(chunks, multiprocessors * perSM), 1, 1),
               block: 256, shared: shared,
               [.ptr(g.address), .ptr(u.address), .i64(g.rowBytes), .i64(g.rowBytes * rows), .i32(rows), .i32(cols),
                .ptr(input.0), .ptr(input.1), .ptr(input.2), .i32(xDiv), .ptr(ids.address), .ptr(y0.address),
                .ptr(y1.address), .i32(pairs)])
        return true
    }

    /// Routed experts' tf32 down projection into `out` (the output, or the K-split partials): streaming pair by pair
    /// (mmf_stream_experts_q4_K), or with `grouped` (experts, moe_group's meta and order) as tiles over each
    /// expert's pairs (mmf_grouped_q4_K).
    func streamF32Experts(_ f: CUDADriver.Handle, _ d: CUDAWeight, rows: Int, cols: Int, hi: Tensor, lo: Tensor,
                          sums: Tensor, ids: Tensor, out: Tensor, pairs: Int, tiles: Int, splits: Int,
                          grouped: (experts: Int, meta: Tensor, order: Tensor)?) {
        let shared = 4 * Self.mmfStreamDepth * 16 * 144
        setShared(f, shared)
        let perSM = blocksPerSM(f, threads: 128, shared: shared)
        if let grouped {
            launch(f, "mmf_grouped_\(d.tag) \(rows)x\(cols)", grid: (multiprocessors * perSM, 1, 1), block: 128,
                   shared: shared,
                   [.ptr(d.address), .i64(d.rowBytes), .i64(d.rowBytes * rows), .i32(rows), .i32(cols),
                    .i32(grouped.experts), .ptr(grouped.meta.address), .ptr(grouped.order.address), .ptr(hi.address),
                    .ptr(lo.address), .ptr(sums.address), .ptr(out.address), .i32(pairs), .i32(Self.mmfSplitSuperBlocks)])
            return
        }
        launch(f, "mmf_stream_experts_\(d.tag) \(rows)x\(cols)",
               grid: (min((pairs * tiles * splits + 3) / 4, multiprocessors * perSM), 1, 1), block: 128, shared: shared,
               [.ptr(d.address), .i64(d.rowBytes), .i64(d.rowBytes * rows), .i32(rows), .i32(cols), .ptr(hi.address),
                .ptr(lo.address), .ptr(sums.address), .ptr(ids.address), .ptr(out.address), .i32(pairs),
                .i32(Self.mmfSplitSuperBlocks)])
    }

    /// Routed experts' gate and up as int8 tiles over each expert's pairs (mmq_grouped_q4_K_4), after moe_group.
    func groupedExperts(_ f: CUDADriver.Handle, _ g: CUDAWeight, _ u: CUDAWeight, rows: Int, cols: Int, nExpert: Int,
                        meta: Tensor, order: Tensor, input: (UInt, UInt, UInt), xDiv: Int, y0: Tensor, y1: Tensor) {
        let shared = 4 * Self.mmqStreamDepth * 16 * 144
        setShared(f, shared)
        let perSM = blocksPerSM(f, threads: 128, shared: shared)
        launch(f, "mmq_grouped_\(g.tag) 2x\(rows)x\(cols)", grid: (multiprocessors * perSM, 1, 1), block: 128,
               shared: shared,
               [.ptr(g.address), .ptr(u.address), .i64(g.rowBytes), .i64(g.rowBytes * rows), .i32(rows), .i32(cols),
                .i32(nExpert), .ptr(meta.address), .ptr(order.address), .i32(xDiv), .ptr(input.0), .ptr(input.1),
                .ptr(input.2), .ptr(y0.address), .ptr(y1.address)])
    }


    /// Blocks of `f` one multiprocessor runs at once (registers and shared memory counted, the driver's occupancy
    /// calculator): a persistent grid is this times the multiprocessors, so that no block waits for a second wave.
    func blocksPerSM(_ f: CUDADriver.Handle, threads: Int, shared: Int) -> Int {
        let key = OccupancyKey(f: f, threads: threads, shared: shared)
        if let n = occupancy[key] { return n }
        var n = 1
        must("cuOccupancyMaxActiveBlocksPerMultiprocessor") {
            n = max(1, try driver.activeBlocksPerMultiprocessor(f, threads: threads, sharedBytes: shared))
        }
        occupancy[key] = n
        return n
    }
    private struct OccupancyKey: Hashable {
        let f: CUDADriver.Handle
        let threads: Int
        let shared: Int
    }
    private var occupancy: [OccupancyKey: Int] = [:]

    /// Lets kernel `f` take `bytes` of dynamic shared memory (once per size).
    private func setShared(_ f: CUDADriver.Handle, _ bytes: Int) {
        guard (streamSharedSet[f] ?? 0) < bytes else { return }
        must("cuFuncSetAttribute") { try driver.setMaxDynamicShared(f, bytes: bytes) }
        streamSharedSet[f] = bytes
    }

    /// Whether `n` tokens of `g` run the streaming tensor-core tiles (from 9 tokens; up to
    /// `KTRANSFORMERS_CUDA_STREAM_TILES_MAX` tokens, by default all: above it the 64 × 64 block tiles).
    static func streamTiles(_ g: CUDAWeight, n: Int) -> Bool {
        streamMatvecEnabled && g.tensorCoreStream != nil && n > 8 && n <= streamTilesMax
    }
    static let streamTilesMax = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_STREAM_TILES_MAX"].flatMap { Int($0) } ?? Int.max
    static let mmqStreamDepth = 6  // KT_MMQS_DEPTH
    /// The block-staged tiles of batched decode (mmq_block_<q4_K, q6_K>_1 / _2 / _4, up to 32 tokens): KT_MMQB_WARPS,
    /// KT_MMQB_DEPTH(NT) and the bytes of one stage (KtMmqbStage: 8 tiles' weights at a 160-byte row stride, the token
    /// group's values at 288, sums at 80, scales). `KTRANSFORMERS_CUDA_MMQ_BLOCK=0`: the streaming tiles instead,
    /// for these and the split-tf32 form below (measurements; the same bits).
    static let mmqBlockWarps = 8
    static func mmqBlockDepth(_ nt: Int, _ tag: String) -> Int { tag == "q6_K" ? 2 : (nt == 1 ? 4 : 3) }
    /// Q6_K (mmq_block_q6_K_*): KT_MMQB6_DEPTH, weight rows of 240 bytes (the aligned 224 around a block), values
    /// at 272, scales.
    static func mmqBlockStageBytes(_ tag: String, tokens: Int, tiles: Int) -> Int {
        tag == "q6_K" ? tiles * 16 * 240 + tokens * (272 + 4) : tiles * 16 * 160 + tokens * (288 + 80 + 4)
    }
    /// `KTRANSFORMERS_CUDA_MMQ_BLOCK_TW=8|4|2`: units of that many tiles wherever there is such a form (Q4_K: 2 and
    /// 4 from 9 and 17 tokens; elsewhere the default widths), for measurements; the same bits. (A variable for the tests of each width; set it before work is queued.)
    nonisolated(unsafe) public static var mmqBlockTW = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_MMQ_BLOCK_TW"].flatMap { Int($0) }
    /// (A variable for the tests that run the streaming forms; set it before work is queued.)
    nonisolated(unsafe) public static var mmqBlockEnabled = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_MMQ_BLOCK"] != "0"
    /// Token counts from which the block-staged tiles run (`KTRANSFORMERS_CUDA_MMQ_BLOCK_MIN`; below it the
    /// matrix-vector kernels); `KTRANSFORMERS_CUDA_MMF_BLOCK_MIN` the same for the split-tf32 form.
    static let mmqBlockMin = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_MMQ_BLOCK_MIN"].flatMap { Int($0) } ?? 2
    static let mmfBlockMin = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_MMF_BLOCK_MIN"].flatMap { Int($0) } ?? 2
    /// The split-tf32 form (mmf_block_q4_K_1 / _4, 8 or 32 tokens a block): KT_MMFB_WARPS, KT_MMFB_DEPTH and
    /// KtMmfbStage's bytes (8 tiles' weights, the tokens' hi and lo rows of 258 floats, their group sums).
    static let mmfBlockWarps = 8
    static func mmfBlockDepth(_ nt: Int) -> Int { nt == 1 ? 4 : 2 }
    static func mmfBlockStageBytes(tokens: Int) -> Int { 8 * 16 * 160 + tokens * (2 * 258 * 4 + 8 * 4) }
    /// Batched `.f32Activations` on Q4_K (2 to 32 tokens) with Q16_K inputs on the int8 tensor cores
    /// (`mmq16_block_q4_K_1` / `_4`; SwiGLU writes the inputs, as before a batch-1 down projection) instead of the
    /// split-tf32 block tiles: not under `--batch-invariant` (its own bits, as the batch-1 form), nor where the
    /// block-staged tiles are off; `KTRANSFORMERS_CUDA_Q16_BATCH=0` turns it off alone. (A test var.)
    nonisolated(unsafe) public static var q16Batched = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_Q16_BATCH"] != "0"
    /// Its stages (KT_MMQ16_DEPTH of KtMmq16Stage: 8 tiles' weights, the tokens' int16 rows of 576 bytes, per-16
    /// sums in rows of 80 bytes, scales).
    static let mmq16BlockDepth = 4
    static func mmq16BlockStageBytes(tokens: Int) -> Int { 8 * 16 * 160 + tokens * (576 + 80 + 4) }
    /// Whether a batched `.f32Activations` matmul of `n` tokens takes the Q16_K tiles (where its weights have them).
    func q16BatchedApplies(n: Int) -> Bool {
        n >= Self.mmfBlockMin && n <= 32 && !batchInvariant && Self.q16Batched && Self.mmqBlockEnabled
            && Self.mmq16BlockDepth * Self.mmq16BlockStageBytes(tokens: n <= 8 ? 8 : 32) <= sharedOptin
    }

    /// The streaming integer-dot kernel (matvec.cu: rows through a ring of shared-memory stages) for up to three
    /// matrices of one format and width; false where it does not apply (no such kernel, rows not 16-byte multiples,
    /// stages over the shared memory, or `KTRANSFORMERS_CUDA_STREAM_MATVEC=0`), and the caller launches the plain one.
    private func streamMatvec(_ g: CUDAWeight, _ parts: [(address: UInt, rows: Int, y: UInt)], cols: Int,
                              input: (UInt, UInt, UInt), n: Int) -> Bool {
        guard Self.streamMatvecEnabled, n >= Self.streamMinTokens, let f = g.integerDotStream, g.rowBytes % 16 == 0 else { return false }
        let shared = Self.streamStages * Self.streamRows * g.rowBytes
        guard shared <= sharedOptin else { return false }
        setShared(f, shared)
        let chunks = parts.reduce(0) { $0 + ($1.rows + Self.streamRows - 1) / Self.streamRows }
        let perSM = blocksPerSM(f, threads: 256, shared: shared)
        let p = parts + Array(repeating: (address: UInt(0), rows: 0, y: UInt(0)), count: 3 - parts.count)
        launch(f, "matvec_stream_\(g.tag)_q8 \(parts.reduce(0) { $0 + $1.rows })x\(cols)",
               grid: (min(chunks, multiprocessors * perSM), (n + 7) / 8, 1), block: 256, shared: shared,
               [.ptr(p[0].address), .ptr(p[1].address), .ptr(p[2].address), .i64(g.rowBytes), .i32(p[0].rows),
                .i32(p[1].rows), .i32(p[2].rows), .i32(cols), .ptr(input.0), .ptr(input.1), .ptr(input.2),
                .ptr(p[0].y), .ptr(p[1].y), .ptr(p[2].y), .i32(n)])
        return true
    }
    static let streamStages = 4  // KT_MVS_STAGES
    static let mmfStreamDepth = 8  // KT_MMFS_DEPTH
    /// Token counts up to which the f32-activation matmul streams its weights (`KTRANSFORMERS_CUDA_MMF_STREAM_MAX`,
    /// default 32: above it, prefill, the inputs' traffic dominates and the block tiles run, mmf_tile_q4_K).
    static let mmfStreamMax = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_MMF_STREAM_MAX"].flatMap { Int($0) } ?? 32
    static let mmfTileStride = 260  // KT_MMFT_STRIDE
    static let streamRows = 8    // KT_MVS_ROWS
    /// The one-token forms at n = 1: the integer-dot matrix-vector kernels' and the split-tf32 mmf_q4_K_one
    /// (`KTRANSFORMERS_CUDA_MV1=0`: the general ones, for measurements; the same bits either way). A lane per
    /// Q4_K super-block instead of a warp per row was measured slower on the H100 (tg128 216 against 232 t/s: each
    /// lane's 16-byte loads at a 144-byte stride keep the L1 at 95%), and dropped.
    static let oneTokenForms = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_MV1"] != "0"
    /// Batch-1 Q4_K integer matmuls on the persistent kernel (`matvec_q4_K_q8_p`: every warp resident, the same rows
    /// each, 4 steps of weights in flight across row ends; the same bits as the one-token forms).
    /// `KTRANSFORMERS_CUDA_MVP=0`: the one-token forms instead (measurements). (A test var.)
    /// 0: off; 1 (default): the fast form (`matvec_q4_K_q8_pf`: each lane sums its own parts, the warp once per row;
    /// own bits) where the backend is not batch-invariant, the one-token forms where it is (the exact persistent form
    /// measured slower than them on the H100: 253.7 against 258.0 t/s); 2: the exact form in every mode.
    nonisolated(unsafe) public static var persistentOneToken: Int = {
        let env = ProcessInfo.processInfo.environment
        if env["KTRANSFORMERS_CUDA_MV1"] != nil { return 0 }
        return env["KTRANSFORMERS_CUDA_MVP"].flatMap { Int($0) } ?? 1
    }()
    /// The fast persistent form takes rows of up to 4096 columns with its inputs in registers (`matvec_q4_K_q8_pr<N>`)
    /// unless `KTRANSFORMERS_CUDA_MVR=0` (then `matvec_q4_K_q8_pf`): Llama-3-8B tg128 287.3 against 277.7 t/s on the
    /// H200, Qwen3-30B-A3B 321.3 against 314.8. (A test var.)
    nonisolated(unsafe) public static var registerInputs = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_MVR"] != "0"
    /// Rows of 1, 2 or 4 steps split across a block's warps (`matvec_q4_K_q8_ps<N>`: 32 warps an SM, a step of inputs
    /// in registers each, row groups interleaved over the blocks; where the register-input forms run) and the
    /// 16-bit-input down projection of rows of 5 to 32 steps (`matvec_q4_K_q16_ps`, where the K-split form runs)
    /// unless `KTRANSFORMERS_CUDA_MVS=0` (then the ring above, and the K-split form). (A test var.)
    nonisolated(unsafe) public static var splitRows = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_MVS"] != "0"
    /// Routed experts' gate and up at one token on the split form too (`matvec_experts_q4_K_q8_ps<N>`; the default:
    /// Qwen3-30B-A3B 335.6 against 321.7 t/s on an H100), `KTRANSFORMERS_CUDA_MVS_EXPERTS=0` off (and
    /// `KTRANSFORMERS_CUDA_MVS=0`, which turns every split form off). (A test var.)
    nonisolated(unsafe) public static var splitExperts = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_MVS_EXPERTS"] != "0"
    /// Routed experts' gate and up at one token on those kernels too (`matvec_experts_q4_K_q8_pr<N>`, Q4_K rows of up
    /// to 4096 columns): `KTRANSFORMERS_CUDA_MVR_EXPERTS=1` with `KTRANSFORMERS_CUDA_MVS_EXPERTS=0` (the split form
    /// takes rows of 1, 2 and 4 steps first); off by default (Qwen3-30B-A3B 318.9 against 315.3 t/s on an H100, below
    /// the split form). (A test var.)
    nonisolated(unsafe) public static var registerExperts = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_MVR_EXPERTS"] == "1"
    /// How many rows ahead of its loads each warp of the batch-1 persistent kernels asks the L2 for its next rows
    /// (`prefetch.global.L2`: more of the weight stream in flight than the registers hold): the Q8_K-input forms
    /// (`KTRANSFORMERS_CUDA_PF`, default 1) and the Q16_K-input down projection (`KTRANSFORMERS_CUDA_PF16`, default 0);
    /// 0: none. Measured on the H100 (Llama-3-8B tg128, t/s): none 261.8, PF=1 269.7, 2 265.9, 4 255.1; PF16=0 271.6
    /// (with PF=2), 1 265.9, 2 266.9, 8 266.0; Qwen3-30B-A3B within ±1.5%.
    static let prefetchRows = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_PF"].flatMap { Int($0) } ?? 1
    static let prefetchRowsQ16 = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_PF16"].flatMap { Int($0) } ?? 0
    /// Row groups ahead of its loads that each block of the batch-1 split-row kernels asks the L2 for
    /// (`cp.async.bulk.prefetch.L2` of whole rows, no registers): the dense Q8_K-input forms (matvec_q4_K_q8_ps<N>:
    /// `KTRANSFORMERS_CUDA_MVS_PF`, default 1) and the routed experts' form (matvec_experts_q4_K_q8_ps<N>:
    /// `KTRANSFORMERS_CUDA_MVS_EXPERTS_PF`, default 0); 0: none. Only the memory traffic changes, never a result.
    /// Measured on an H100 (2026-12-07, tg128 t/s): Llama-3-8B 391.9 without, 399.3 / 397.4 / 394.6 at 1 / 2 / 4 groups
    /// ahead (21:07), 391.3 against 402.3 at 22:08; Qwen3-30B-A3B all on the GPU 369.7 without, 367.0 / 366.9 / 365.3
    /// with the dense and experts' forms together (21:07). The same prefetch in the down projection (1, 2, 4 rows
    /// ahead: +0.3%, -0.9%, -3.0%), in the warp-a-row one-token forms (the Q6_K output matrix: +0.4% Llama, -0.8%
    /// Qwen3), at 4 groups ahead for matrices under 16 MiB (-1.5%), and double-buffered partial sums with one barrier
    /// a row round (+0.3% / -0.5% Llama, -0.1% / +0.7% Qwen3 in two calls) measured no gain and were removed.
    /// (Both held to 0 ... 64.)
    static let splitPrefetch = min(64, max(0, ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_MVS_PF"].flatMap { Int($0) } ?? 1))
    static let splitPrefetchExperts = min(64, max(0, ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_MVS_EXPERTS_PF"].flatMap { Int($0) } ?? 0))
    /// Routed experts' batch-1 down projection with 16-bit integer inputs too (`KTRANSFORMERS_CUDA_Q16_EXPERTS=1`; off
    /// by default: Qwen3-30B-A3B on the H100 decoded 293.9 t/s with it, 304.2 without, its 768-wide rows are one step
    /// each). (A test var.)
    nonisolated(unsafe) public static var q16Experts = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_Q16_EXPERTS"] == "1"
    /// `KTRANSFORMERS_CUDA_MV1=2`: the Q4_K one-token forms with contiguous input loads (`matvec_q4_K_q8_1c`,
    /// `_3_1c`; the same bits). (A test var: read when weights are prepared.)
    nonisolated(unsafe) public static var oneTokenCoalesced = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_MV1"] == "2"
    /// `KTRANSFORMERS_CUDA_F32_ONE=0`: batch-1 `.f32Activations` on the tensor-core forms (the bits of every other
    /// token count) instead of the FP32-core kernels (matvec_q4_K_f32_1, matvec_experts_q4_K_f32_1); `--batch-invariant`
    /// does the same.
    static let f32OneEnabled = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_F32_ONE"] != "0"
    /// Batch-1 `.f32Activations` on Q4_K with 16-bit integer inputs (`matvec_q4_K_q16_p`; SwiGLU writes them,
    /// gated_silu_q16), instead of the FP32-core kernels: not under `--batch-invariant`, nor with
    /// `KTRANSFORMERS_CUDA_F32_ONE=0`; `KTRANSFORMERS_CUDA_Q16=0` turns it off alone. (A test var.)
    nonisolated(unsafe) public static var q16One = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_Q16"] != "0"
    /// Byte offsets of a Q16_K input of `elements` values: int16 values at 0, f32 scales, int sums (16-byte aligned).
    static func q16Layout(elements: Int) -> (scales: Int, sums: Int, bytes: Int) {
        func align16(_ x: Int) -> Int { (x + 15) & ~15 }
        let scales = align16(2 * elements), sums = scales + align16(4 * (elements / 256))
        return (scales, sums, sums + 4 * (elements / 16))
    }
    /// The persistent Q16_K-input kernel over `pairs` × `rows` rows (`ids` nil: one matrix), input at `q`.
    func q16Matvec(_ f: CUDADriver.Handle, _ g: CUDAWeight, rows: Int, cols: Int, pairs: Int, q: UInt, ids: UInt, y: UInt,
                   name: String) {
        let l = Self.q16Layout(elements: pairs * cols)
        let total = pairs * rows
        let (rpw, blocks) = persistentGrid(f, rows: total)
        launch(f, name, grid: (blocks, 1, 1), block: 128,
               [.ptr(g.address), .i64(g.rowBytes), .i64(g.rowBytes * rows), .i32(rows), .i32(cols), .ptr(q),
                .ptr(q + UInt(l.scales)), .ptr(q + UInt(l.sums)), .ptr(ids), .i32(pairs), .ptr(y), .i32(rpw),
                .i32(Self.prefetchRowsQ16)])
    }
    /// The K-split form (`matvec_q4_K_q16_pk`): slices of 2048 columns (8 super-blocks), as many warps per slice as
    /// the GPU holds at once divided among the slices, the same rows each; partial sums in `splitParts` (slices ×
    /// rows ≤ the split-tf32 form's splits × rows), one counter per row range in `mmfCounters`.
    func q16SplitMatvec(_ f: CUDADriver.Handle, _ g: CUDAWeight, rows: Int, cols: Int, q: UInt, parts: Tensor,
                        counters: Tensor, y: UInt) {
        let l = Self.q16Layout(elements: cols)
        let slices = (cols / 256 + 7) / 8
        precondition(slices * rows <= parts.count && rows <= counters.count, "CUDA matmul: K-split scratch not reserved")
        let (rpw, blocks) = persistentGrid(f, rows: rows, groups: slices)
        launch(f, "matvec_\(g.tag)_q16_pk \(rows)x\(cols)", grid: (blocks, slices, 1), block: 128,
               [.ptr(g.address), .i64(g.rowBytes), .i32(rows), .i32(cols), .ptr(q), .ptr(q + UInt(l.scales)),
                .ptr(q + UInt(l.sums)), .ptr(parts.address), .ptr(counters.address), .ptr(y), .i32(rpw),
                .i32(Self.prefetchRowsQ16)])
    }
    /// Dense batch-1 down projections wider than 4096 columns on the K-split form unless `KTRANSFORMERS_CUDA_Q16K=0`:
    /// Llama-3-8B tg128 311.8 against 279.3 t/s on the H100 (4096 × 14336 in 22.8 µs against 32.5). (A test var.)
    nonisolated(unsafe) public static var q16KSplit = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_Q16K"] != "0"
    /// `KTRANSFORMERS_CUDA_F32_ONE_LB=1`: those kernels held to 64 registers (more blocks an SM; same bits).
    static let f32OneBounded = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_F32_ONE_LB"] == "1"
    /// Rows a warp of the routed experts' one-token down projection: 4 (matvec_experts_q4_K_f32_r4, the default:
    /// Qwen3-30B-A3B 325.9 against 321.7 t/s on an H100) or 2 (`KTRANSFORMERS_CUDA_F32_ONE_ROWS=2`, and always with
    /// `KTRANSFORMERS_CUDA_F32_ONE_LB=1` or `=2`); the same bits. (A test var, read at launch.)
    nonisolated(unsafe) public static var f32OneExpertRows = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_F32_ONE_ROWS"].flatMap { Int($0) } ?? 4
    /// `KTRANSFORMERS_CUDA_MOE_COMBINE_FUSED=1`: with 4 rows a warp and at most 8 experts a token, the one-token down
    /// projection waits for the executor's `wait` and adds the experts' weighted rows itself
    /// (matvec_experts_q4_K_f32_combine: no moe_combine launch; the same bits); `=2` the form held to 128 registers
    /// (`_lb`). Off by default: Qwen3-30B-A3B all on an H100, 327 t/s with it against 334 without (2026-12-07, 03:56;
    /// a block of 8 warps for 8 experts shares no inputs and holds one block an SM). (A test var, read at launch.)
    nonisolated(unsafe) public static var fusedExpertCombine = ["1", "2"].contains(ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_MOE_COMBINE_FUSED"] ?? "0")
    static let fusedExpertCombineBounded = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_MOE_COMBINE_FUSED"] == "2"
    /// `KTRANSFORMERS_CUDA_F32_ONE=2`: their coalesced K-split forms instead (`matvec_q4_K_f32_1c`; own bits).
    /// (A test var: read when weights are prepared.)
    nonisolated(unsafe) public static var f32OneCoalesced = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_F32_ONE"] == "2"
    /// `KTRANSFORMERS_CUDA_MMF_ONE=0`: mmf_q4_K_1 at n = 1 instead of mmf_q4_K_one (measurements; the same bits).
    static let mmfOneEnabled = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_MMF_ONE"] != "0"
    /// At most this many blocks for the persistent one-token kernels (tests: one block, so that its warps walk
    /// several items each); nil: as many as the GPU holds at once.
    nonisolated(unsafe) public static var persistentBlocksCap: Int?
    /// Threads of a row norm's block (KT_NORM_THREADS in ops.cu).
    static let normThreads = 512
    static let streamMatvecEnabled = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_STREAM_MATVEC"] != "0"
    /// Token counts from which the streaming kernels run (every form: the integer-dot matvec, the f32-activation
    /// stream, the routed experts' streams; the tiles start at 9 anyway). Measured on an H200 (2026-12-05, Llama-3-8B
    /// shape): at 1 and 8 tokens the plain kernels were faster (tg128 229 against 206 t/s, 8 sequences 728 against
    /// 637), at 32 the streaming ones (1,288 against 932), prefill a little (3,209 against 3,107).
    /// `KTRANSFORMERS_CUDA_STREAM_MIN` overrides (1: stream at every count). Same bits either way.
    /// (A variable for the tests that run the streaming forms at every count; set it before work is queued.)
    nonisolated(unsafe) public static var streamMinTokens = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_STREAM_MIN"].flatMap { Int($0) } ?? 9
    private var streamSharedSet: [CUDADriver.Handle: Int] = [:]

    public func prepare(_ w: WeightRef) throws -> WeightMatrix {
        guard w.shape.count == 2 else { throw BackendError("tensor '\(w.name)': shape \(w.shape) is not a matrix") }
        let host = try WeightMatrix(name: w.name, type: w.type, rows: w.shape[1], cols: w.shape[0], data: w.data, owner: w.owner)
        let g = try uploadWeight(name: w.name, type: w.type, rows: host.rows, cols: host.cols, data: w.data,
                                 host: host.kernels, hostRowBytes: host.rowBytes)
        if g.rounding != .none { noteInput(cols: host.cols) }
        if blas != nil, host.cols % 32 == 0 {
            gemmLargest = max(gemmLargest, host.rows * host.cols)
            gemmWidest = max(gemmWidest, host.cols)
            growRounded()
        }
        if g.tensorCoreF32 != nil && host.cols % 256 == 0 {
            widestSplitOutput = max(widestSplitOutput, host.rows * Self.mmfSplits(cols: host.cols))
            widestSplitRows = max(widestSplitRows, host.rows)
            growRounded()
        }
        return try WeightMatrix(name: w.name, type: w.type, rows: host.rows, cols: host.cols, data: w.data, owner: w.owner,
                                device: device, storage: g)
    }

    public func prepareStack(_ w: WeightRef) throws -> WeightStack {
        guard w.shape.count == 3 else { throw BackendError("tensor '\(w.name)': shape \(w.shape) is not a stack of matrices") }
        let host = try WeightStack(name: w.name, type: w.type, count: w.shape[2], rows: w.shape[1], cols: w.shape[0],
                                   data: w.data, owner: w.owner)
        let g = try uploadWeight(name: w.name, type: w.type, rows: host.rows * host.count, cols: host.cols, data: w.data,
                                 host: host.kernels, hostRowBytes: host.rowBytes)
        if g.rounding != .none { noteInput(cols: host.cols) }
        return try WeightStack(name: w.name, type: w.type, count: host.count, rows: host.rows, cols: host.cols, data: w.data,
                               owner: w.owner, device: device, storage: g)
    }

    /// Routed experts held by another device (the CPU) for a model on this GPU: staged through pinned memory in
    /// stream order (`CUDAHybridExpertExecutor`).
    public func makeStagedExpertExecutor(_ inner: any ExpertExecutor, innerDevice: Device, dim: Int) -> (any ExpertExecutor)? {
        guard innerDevice == .cpu else { return nil }
        blockingWaits = Self.syncOverride ?? true
        // The expert threads' regions come once per layer with the GPU's part in between: keep them awake across it.
        if let cpu = inner as? CPUExpertExecutor { cpu.pool.idleSpins = Self.hybridIdleSpins }
        return CUDAHybridExpertExecutor(gpu: self, inner: inner, dim: dim)
    }

    /// Scratch that captured graphs may point at has moved.
    func noteScratchMoved() { graphEpoch += 1 }

    public func makeExpertExecutor(nExpert: Int, dim: Int, ff: Int) -> any ExpertExecutor {
        CUDAExpertExecutor(backend: self, nExpert: nExpert, dim: dim, ff: ff)
    }

    private var plan = ForwardPlan(maxTokens: 0, contextLength: 0, maxQueryGroup: 1)

    public func reserve(_ p: ForwardPlan) {
        let grown = ForwardPlan(maxTokens: max(plan.maxTokens, p.maxTokens), contextLength: max(plan.contextLength, p.contextLength),
                                maxQueryGroup: max(plan.maxQueryGroup, p.maxQueryGroup), routerWork: max(plan.routerWork, p.routerWork))
        let need = grown.maxTokens * grown.routerWork
        if need > (routerWork?.count ?? 0) {
            if let old = routerWork { release(old) }
            routerWork = allocate(need)
            graphEpoch += 1
        }
        // A longer context can change the attention's split rule (and its launch shape): captured graphs are stale.
        if grown.contextLength != plan.contextLength || grown.maxTokens != plan.maxTokens { graphEpoch += 1 }
        plan = grown
        growRounded()
    }

    static func weight(_ m: WeightMatrix) -> CUDAWeight {
        guard let w = m.storage as? CUDAWeight else {
            preconditionFailure("weight '\(m.name)' is on \(m.device), not prepared by the CUDA backend")
        }
        return w
    }

    static func weight(_ s: WeightStack) -> CUDAWeight {
        guard let w = s.storage as? CUDAWeight else {
            preconditionFailure("weight '\(s.name)' is on \(s.device), not prepared by the CUDA backend")
        }
        return w
    }

    // MARK: graphs

    public var capturesGraphs: Bool { graphsEnabled }

    public func captureGraph(_ body: () throws -> Void) throws -> (any ComputeGraph)? {
        guard graphsEnabled else { return nil }
        current()
        must("cuStreamBeginCapture") { try driver.beginCapture(stream) }
        capturing = true
        defer { capturing = false }
        do {
            try body()
            flushCombine()
            flushProjection()
        } catch {
            pendingCombine = nil
            pendingProjection = nil
            if let e = try? driver.endCapture(stream) { driver.destroyGraph(e) }
            throw error
        }
        var exec: CUDADriver.Handle?
        must("graph capture") { exec = try driver.endCapture(stream) }
        graphsCaptured += 1
        return CUDAGraph(backend: self, exec: exec!)
    }

    /// Whether hybrid MoE executors made from now on hand their layers to the expert thread through a mailbox in
    /// page-locked memory (stream memory operations) rather than host functions (`CUDAHybridExpertExecutor`): on
    /// where the driver has the stream memory operations; `KTRANSFORMERS_HYBRID_MAILBOX=0` turns it off. Measured on
    /// an H100 host (Qwen3-30B-A3B, 16 threads): tg128 54.8 t/s against 36.5 through host functions in the same call,
    /// llama.cpp's `-ot exps=CPU` 36.0 (docs/performance.md). It was off by default for a while after one
    /// wrong-logits failure of a hybrid golden test on the CUDA emulator in one CI run (2026-12-06, commit d84f3a0),
    /// never reproduced (70 reruns of that test with it on) and not explained: performance.md keeps the record.
    nonisolated(unsafe) public static var hybridMailbox = ProcessInfo.processInfo.environment["KTRANSFORMERS_HYBRID_MAILBOX"] != "0"
    /// Hybrid MoE layers handed over through the mailbox so far (tests).
    public var hybridMailboxJobs: Int { mailboxJobs.load(ordering: .relaxed) }
    let mailboxJobs = ManagedAtomic<Int>(0)

    /// Called before every graph launch (the hybrid MoE's expert thread is woken here: the graph's mailbox writes
    /// need it spinning).
    var graphLaunchHooks: [() -> Void] = []

    public func launch(_ graph: any ComputeGraph) {
        guard let g = graph as? CUDAGraph, g.backend === self else {
            preconditionFailure("a graph of another backend")
        }
        for hook in graphLaunchHooks { hook() }
        current()
        must("cuGraphLaunch") { try driver.launchGraph(g.exec, stream: stream) }
    }

    // MARK: ops

    public func embed(_ table: WeightMatrix, tokens: Tensor, n: Int, out: Tensor, scale: Float) {
        let w = Self.weight(table)
        current()
        beginStep(tokens: n)
        launch(w.embed, "embed_\(w.tag)", grid: (n, 1, 1), block: 128,
               [.ptr(w.address), .i64(w.rowBytes), .i32(table.cols), .ptr(tokens.address), .ptr(out.address), .f32(scale)])
    }

    public func rmsNorm(_ x: Tensor, weight: Tensor, out: Tensor, rows: Int, dim: Int, stride: Int, eps: Float) {
        current()
        // Packed rows as wide as an integer-dot matmul's input: also write their Q8_K form, which the matmul that
        // reads `out` next takes instead of quantizing it again.
        if stride == dim, let q = quantizedTarget(rows: rows, dim: dim) {
            launch("rms_norm_q8K", grid: (rows, 1, 1), block: Self.normThreads,
                   [.ptr(x.address), .ptr(weight.address), .ptr(out.address), .i32(dim), .f32(eps), .ptr(q.0), .ptr(q.1),
                    .ptr(q.2)])
            preparedQuantized = Prepared(address: out.address, count: rows * dim, launch: launches)
            return
        }
        launch("rms_norm", grid: (rows, 1, 1), block: Self.normThreads,
               [.ptr(x.address), .ptr(weight.address), .ptr(out.address), .i32(dim), .i64(stride), .f32(eps)])
    }

    public func addRMSNorm(_ x: Tensor, into y: Tensor, weight: Tensor, out: Tensor, rows: Int, dim: Int, eps: Float) {
        // The routed experts' combine that writes x, when it is pending, in the same launch.
        let combine = pendingCombine.flatMap { $0.out == x.address && $0.n == rows && $0.dim == dim ? $0 : nil }
        if combine != nil { pendingCombine = nil }
        current()
        // As rmsNorm: the output's Q8_K form too when an integer-dot matmul can take it next.
        let q = quantizedTarget(rows: rows, dim: dim)
        let args: [KernelArg] = [.ptr(x.address), .ptr(y.address), .ptr(weight.address), .ptr(out.address), .i32(dim),
                                 .f32(eps), .ptr(q?.0 ?? 0), .ptr(q?.1 ?? 0), .ptr(q?.2 ?? 0)]
        if let combine {
            launch("add_rms_norm_combine", grid: (rows, 1, 1), block: Self.normThreads,
                   args + [.ptr(combine.ys), .ptr(combine.weights), .i32(combine.topK)])
        } else {
            launch("add_rms_norm", grid: (rows, 1, 1), block: Self.normThreads, args)
        }
        if q != nil { preparedQuantized = Prepared(address: out.address, count: rows * dim, launch: launches) }
    }

    public func rmsNormRows(_ x: Tensor, indices: Tensor, count: Int, weight: Tensor, out: Tensor, dim: Int, eps: Float) {
        current()
        launch("rms_norm_rows", grid: (count, 1, 1), block: Self.normThreads,
               [.ptr(x.address), .ptr(indices.address), .ptr(weight.address), .ptr(out.address), .i32(dim), .f32(eps)])
    }

    private func matvec(_ w: CUDAWeight, rows: Int, cols: Int, matrixBytes: Int, heads: Int, x: Tensor, xStride: Int,
                        xHeadStride: Int, y: Tensor, yStride: Int, yHeadStride: Int, n: Int) {
        if w.tag == "f32", cols % 4 == 0, (w.address | UInt(w.rowBytes) | UInt(matrixBytes) | x.address) % 16 == 0,
           xStride % 4 == 0, xHeadStride % 4 == 0 {
            // A block per row: the routers' 128-row f32 matrices kept one warp per SM in the warp-per-row kernel.
            launch("matvec_f32_wide", grid: (rows, (n + 7) / 8, heads), block: 256,
                   [.ptr(w.address), .i64(w.rowBytes), .i64(matrixBytes), .i32(rows), .i32(cols), .ptr(x.address),
                    .i64(xStride), .i64(xHeadStride), .ptr(y.address), .i64(yStride), .i64(yHeadStride), .i32(n)])
            // It writes y alone (never the quantized scratch): unless y is the prepared input, that stays valid.
            if preparedQuantized.map({ y.address >= $0.address + UInt(4 * $0.count) || y.address + UInt(4 * n * yStride) <= $0.address }) ?? false {
                keepPrepared()
            }
            return
        }
        launch(w.matvec, "matvec_\(w.tag) \(rows)x\(cols)\(heads > 1 ? "x\(heads)" : "")", grid: ((rows + 3) / 4, (n + 7) / 8, heads), block: 128,
               [.ptr(w.address), .i64(w.rowBytes), .i64(matrixBytes), .i32(rows), .i32(cols), .ptr(x.address), .i64(xStride),
                .i64(xHeadStride), .ptr(y.address), .i64(yStride), .i64(yHeadStride), .i32(n)])
    }

    /// `x` rounded as a `.standard` matmul with `w` takes it: the rounding scratch, or `x` itself.
    func roundedInput(_ x: Tensor, _ rounding: ActivationRounding, cols: Int, n: Int) -> Tensor {
        guard rounding != .none else { return x }
        guard let r = rounded, r.count >= n * cols else {
            preconditionFailure("CUDA matmul: rounding scratch not reserved for \(n) rows of \(cols)")
        }
        let block = rounding == .q8_0 ? 32 : 256
        precondition(cols % block == 0, "CUDA matmul: \(cols) columns are not whole \(rounding) blocks")
        launch(rounding == .q8_0 ? "round_q8_0" : "round_q8_K", grid: (n, (cols / block + 3) / 4, 1), block: 128,
               [.ptr(x.address), .ptr(r.address), .i32(cols)])
        return r
    }

    /// Super-blocks per K split of a split-tf32 matmul, and the splits of a row of `cols` (fixed by the shape alone,
    /// so that every token count adds the same partial sums).
    static let mmfSplitSuperBlocks = 4
    static func mmfSplits(cols: Int) -> Int { (cols / 256 + mmfSplitSuperBlocks - 1) / mmfSplitSuperBlocks }

    /// `.f32Activations` with Q4_K or Q6_K rows on the tf32 tensor cores (kernels in mmq.cu): the input split into
    /// high and low tf32 halves and per-32 sums, one kernel for every token count, the K splits added in order.
    private func tensorCoreF32Matmul(_ g: CUDAWeight, _ f: CUDADriver.Handle, rows: Int, cols: Int, x: Tensor, y: Tensor, n: Int) {
        guard let hi = rounded, let lo = splitLow, let sums = splitSums, let parts = splitParts, hi.count >= n * cols,
              parts.count >= n * rows * Self.mmfSplits(cols: cols) else {
            preconditionFailure("CUDA matmul: split-tf32 scratch not reserved for \(n) rows of \(cols)")
        }
        if n == 1, !batchInvariant, Self.f32OneEnabled, Self.q16One, let f = g.f32OneQ16, g.rowBytes % 16 == 0,
           x.address % 16 == 0, Self.q16Layout(elements: cols).bytes <= 4 * lo.count {
            // Batch-1 decode: 16-bit integer inputs (written by SwiGLU, or here), the persistent streaming kernel.
            if preparedQ16 != Prepared(address: x.address, count: cols, launch: launches) {
                let l = Self.q16Layout(elements: cols)
                launch("quantize_q16_K", grid: ((cols / 256 + 3) / 4, 1, 1), block: 128,
                       [.ptr(x.address), .ptr(lo.address), .ptr(lo.address + UInt(l.scales)), .ptr(lo.address + UInt(l.sums)),
                        .i64(cols / 256)])
            }
            if Self.splitRows, Self.q16KSplit, cols > 4096, cols <= 32 * 1024, let ps = g.f32OneQ16Rows {
                // One row at a time per block, a warp per step of 1024 columns (matvec_q4_K_q16_ps).
                let steps = (cols + 1023) / 1024, l = Self.q16Layout(elements: cols)
                return launch(ps, "matvec_\(g.tag)_q16_ps \(rows)x\(cols)",
                              grid: (splitGrid(ps, items: rows, threads: 32 * steps), 1, 1), block: 32 * steps,
                              [.ptr(g.address), .i64(g.rowBytes), .i32(rows), .i32(cols), .ptr(lo.address),
                               .ptr(lo.address + UInt(l.scales)), .ptr(lo.address + UInt(l.sums)), .ptr(y.address)])
            }
            if Self.q16KSplit, cols > 4096, let pk = g.f32OneQ16Split, let parts = splitParts, let counters = mmfCounters {
                return q16SplitMatvec(pk, g, rows: rows, cols: cols, q: lo.address, parts: parts, counters: counters, y: y.address)
            }
            return q16Matvec(f, g, rows: rows, cols: cols, pairs: 1, q: lo.address, ids: 0, y: y.address,
                             name: "matvec_\(g.tag)_q16_p \(rows)x\(cols)")
        }
        if n > 1, q16BatchedApplies(n: n), let tiles16 = g.f32Q16Staged, g.rowBytes % 16 == 0, x.address % 16 == 0,
           Self.q16Layout(elements: n * cols).bytes <= 4 * lo.count {
            // Batched decode: Q16_K inputs (written by SwiGLU, or here) on the int8 tensor cores, the K splits
            // added in order by mmf_reduce.
            let l = Self.q16Layout(elements: n * cols)
            if preparedQ16 != Prepared(address: x.address, count: n * cols, launch: launches) {
                launch("quantize_q16_K", grid: ((n * cols / 256 + 3) / 4, 1, 1), block: 128,
                       [.ptr(x.address), .ptr(lo.address), .ptr(lo.address + UInt(l.scales)), .ptr(lo.address + UInt(l.sums)),
                        .i64(n * cols / 256)])
            }
            let splits = Self.mmfSplits(cols: cols), tiles = (rows + 15) / 16, nt = n <= 8 ? 1 : 4
            let out = splits == 1 ? y : parts
            let shared = Self.mmq16BlockDepth * Self.mmq16BlockStageBytes(tokens: 8 * nt)
            let f = nt == 1 ? tiles16.0 : tiles16.1
            setShared(f, shared)
            let units = (tiles + Self.mmfBlockWarps - 1) / Self.mmfBlockWarps * splits
            let perSM = blocksPerSM(f, threads: 32 * Self.mmfBlockWarps, shared: shared)
            launch(f, "mmq16_block_q4_K_\(nt) \(rows)x\(cols)",
                   grid: (min(units, Self.persistentBlocksCap ?? multiprocessors * perSM), (n + 8 * nt - 1) / (8 * nt), 1),
                   block: 32 * Self.mmfBlockWarps, shared: shared,
                   [.ptr(g.address), .i64(g.rowBytes), .i32(rows), .i32(cols), .ptr(lo.address),
                    .ptr(lo.address + UInt(l.scales)), .ptr(lo.address + UInt(l.sums)), .ptr(out.address), .i32(n),
                    .i32(Self.mmfSplitSuperBlocks)])
            reduceSplits(parts, into: y, splits: splits, n: n, rows: rows)
            return
        }
        if preparedSplit != Prepared(address: x.address, count: n * cols, launch: launches) {
            launch("split_tf32", grid: (Self.blocks(n * cols, 128), 1, 1), block: 128,
                   [.ptr(x.address), .ptr(hi.address), .ptr(lo.address), .ptr(sums.address), .i64(n * cols / 32)])
        }
        if n == 1, !batchInvariant, Self.f32OneEnabled, let one = g.f32One, x.address % 16 == 0, g.rowBytes % 16 == 0 {
            // Batch-1 decode on the FP32 cores (not the bits of the tensor-core forms that larger steps take).
            let c = Self.f32OneCoalesced
            return launch(one, "matvec_\(g.tag)_f32_1\(c ? "c" : "") \(rows)x\(cols)",
                          grid: (c ? (rows + 1) / 2 : (rows + 7) / 8, 1, 1), block: c ? 256 : 128,
                          [.ptr(g.address), .i64(g.rowBytes), .i32(rows), .i32(cols), .ptr(x.address), .ptr(sums.address),
                           .ptr(y.address)])
        }
        let splits = Self.mmfSplits(cols: cols), tiles = (rows + 15) / 16
        let nt = n <= 8 ? 1 : 4
        let out = splits == 1 ? y : parts
        let args: [KernelArg] = [.ptr(g.address), .i64(g.rowBytes), .i32(rows), .i32(cols), .ptr(hi.address),
                                 .ptr(lo.address), .ptr(sums.address), .ptr(out.address), .i32(n),
                                 .i32(Self.mmfSplitSuperBlocks)]
        // A slot: one super-block of 16 rows (Q6_K: the 224 aligned bytes around each row's 210-byte block).
        let streamShared = 4 * Self.mmfStreamDepth * 16 * (g.tag == "q6_K" ? 224 : 144)
        let tileShared = (64 * Self.mmfTileStride + 32 * Self.mmfTileStride / 32) * 4
        if n > Self.mmfStreamMax, Self.streamMatvecEnabled, let tile = g.tensorCoreF32Block, tileShared <= sharedOptin {
            // Prefill: 64-row block tiles sharing the inputs staged in shared memory, same bits.
            setShared(tile, tileShared)
            launch(tile, "mmf_tile_\(g.tag) \(rows)x\(cols)", grid: ((rows + 63) / 64 * splits, (n + 31) / 32, 1),
                   block: 128, shared: tileShared, args)
        } else if n >= Self.mmfBlockMin, n <= 32, Self.mmqBlockEnabled, let blocks = g.tensorCoreF32Staged,
                  Self.mmfBlockDepth(nt) * Self.mmfBlockStageBytes(tokens: 8 * nt) <= sharedOptin {
            // Batched decode: block-staged tiles (weights and the token group's inputs through one ring of
            // shared-memory stages), the same bits.
            let shared = Self.mmfBlockDepth(nt) * Self.mmfBlockStageBytes(tokens: 8 * nt)
            let block = nt == 1 ? blocks.0 : blocks.1
            setShared(block, shared)
            let units = (tiles + Self.mmfBlockWarps - 1) / Self.mmfBlockWarps * splits
            let perSM = blocksPerSM(block, threads: 32 * Self.mmfBlockWarps, shared: shared)
            launch(block, "mmf_block_\(g.tag)_\(nt) \(rows)x\(cols)",
                   grid: (min(units, Self.persistentBlocksCap ?? multiprocessors * perSM), (n + 8 * nt - 1) / (8 * nt), 1),
                   block: 32 * Self.mmfBlockWarps, shared: shared, args)
        } else if n <= Self.mmfStreamMax, n >= Self.streamMinTokens, Self.streamMatvecEnabled, let streams = g.tensorCoreF32Stream,
           streamShared <= sharedOptin {
            // Decode and batched decode: the streaming forms (weights through per-warp rings of shared memory), same bits.
            let stream = nt == 1 ? streams.0 : streams.1
            setShared(stream, streamShared)
            let perSM = blocksPerSM(stream, threads: 128, shared: streamShared)
            launch(stream, "mmf_stream_\(g.tag)_\(nt) \(rows)x\(cols)",
                   grid: (min((tiles * splits + 3) / 4, multiprocessors * perSM), (n + 8 * nt - 1) / (8 * nt), 1),
                   block: 128, shared: streamShared, args)
        } else if n == 1, Self.oneTokenForms, Self.mmfOneEnabled, let one = g.tensorCoreF32One, let counters = mmfCounters,
                  counters.count >= tiles {
            // Batch-1 decode: persistent warps with the next super-block's loads in flight, the splits summed by
            // each tile's last warp (no mmf_reduce); the same bits.
            let items = tiles * splits
            launch(one, "mmf_\(g.tag)_one \(rows)x\(cols)",
                   grid: (min((items + 3) / 4, Self.persistentBlocksCap ?? multiprocessors * blocksPerSM(one, threads: 128, shared: 0)), 1, 1),
                   block: 128, args + [.ptr(y.address), .ptr(counters.address)])
            return
        } else {
            launch(nt == 1 ? f : g.tensorCoreF32Tiles!, "mmf_\(g.tag)_\(nt) \(rows)x\(cols)",
                   grid: ((tiles * splits + 3) / 4, (n + 8 * nt - 1) / (8 * nt), 1), block: 128, args)
        }
        reduceSplits(parts, into: y, splits: splits, n: n, rows: rows)
    }

    /// y[t, r] = Σ_s parts[s][t][r] in split order (mmf_reduce), after a K-split matmul of `splits` > 1.
    func reduceSplits(_ parts: Tensor, into y: Tensor, splits: Int, n: Int, rows: Int) {
        guard splits > 1 else { return }
        launch("mmf_reduce", grid: (Self.blocks(n * rows), 1, 1), block: 256,
               [.ptr(parts.address), .ptr(y.address), .i32(splits), .i32(n), .i32(rows)])
    }

    public func matmul(_ w: WeightMatrix, _ x: Tensor, _ y: Tensor, n: Int, precision: MatmulPrecision) {
        current()
        let g = Self.weight(w)
        if gemmApplies(w, n: n) {
            gemmInputF16(x, cols: w.cols, n: n)
            return gemm(g, rows: w.rows, cols: w.cols, y: y, n: n)
        }
        if precision == .f32Activations, let f = g.tensorCoreF32, w.cols % 256 == 0 {
            return tensorCoreF32Matmul(g, f, rows: w.rows, cols: w.cols, x: x, y: y, n: n)
        }
        if precision == .standard && Self.integerDot(g, cols: w.cols) {
            return integerMatvec(g, rows: w.rows, cols: w.cols, input: quantizeInput(x, cols: w.cols, n: n), y: y, n: n)
        }
        let input = precision == .standard ? roundedInput(x, g.rounding, cols: w.cols, n: n) : x
        matvec(g, rows: w.rows, cols: w.cols, matrixBytes: 0, heads: 1, x: input, xStride: w.cols, xHeadStride: 0,
               y: y, yStride: w.rows, yHeadStride: 0, n: n)
    }

    public func matmulGroup(_ w0: WeightMatrix, _ y0: Tensor, _ w1: WeightMatrix, _ y1: Tensor, _ w2: WeightMatrix?,
                            _ y2: Tensor?, x: Tensor, n: Int) {
        current()
        lastGroupTokens = n
        let ws = [w0, w1] + (w2.map { [$0] } ?? [])
        if ws.allSatisfy({ gemmApplies($0, n: n) && $0.cols == w0.cols }) {
            // Prefill: one f16 input for the group's GEMMs.
            gemmInputF16(x, cols: w0.cols, n: n)
            for (w, y) in zip(ws, [y0, y1] + (y2.map { [$0] } ?? [])) { gemm(Self.weight(w), rows: w.rows, cols: w.cols, y: y, n: n) }
            return
        }
        // One launch for the whole group when its matrices share an integer-dot format and width (decode).
        let gs = ws.map { Self.weight($0) }
        if gs.allSatisfy({ $0.tag == gs[0].tag && $0.rowBytes == gs[0].rowBytes }), ws.allSatisfy({ $0.cols == w0.cols }),
           let grouped = gs[0].integerDotGroup, Self.integerDot(gs[0], cols: w0.cols),
           n < Self.mmqMinTokens || gs[0].tensorCoreTiles == nil || Self.streamTiles(gs[0], n: n) {
            let q = quantizeInput(x, cols: w0.cols, n: n)
            let r2 = w2?.rows ?? 0, rows = w0.rows + w1.rows + r2
            var parts = [(gs[0].address, w0.rows, y0.address), (gs[1].address, w1.rows, y1.address)]
            if let y2, gs.count > 2 { parts.append((gs[2].address, r2, y2.address)) }
            if streamMatmul(gs[0], parts, cols: w0.cols, input: q, n: n) { return }
            if n == 1, let f = persistentForm(gs[0], cols: w0.cols) {
                if Self.ropeInProjection, f.split > 0, parts.count == 3 {
                    // Perhaps q, k, v before their RoPE: ropeAndStoreKV decides (see PendingProjection).
                    pendingProjection = PendingProjection(form: f, weight: gs[0], parts: parts, cols: w0.cols, input: q)
                    return
                }
                return persistentMatvec(f, gs[0], parts, cols: w0.cols, input: q)
            }
            let one = n == 1 && Self.oneTokenForms ? gs[0].integerDotGroupOne : nil
            launch(one ?? grouped, "matvec_\(gs[0].tag)_q8_3\(one == nil ? "" : "_1" + gs[0].oneTokenSuffix) \(rows)x\(w0.cols)",
                   grid: ((rows + 3) / 4, (n + 7) / 8, 1), block: 128,
                   [.ptr(gs[0].address), .ptr(gs[1].address), .ptr(gs.count > 2 ? gs[2].address : 0), .i64(gs[0].rowBytes),
                    .i32(w0.rows), .i32(w1.rows), .i32(r2), .i32(w0.cols), .ptr(q.0), .ptr(q.1), .ptr(q.2), .ptr(y0.address),
                    .ptr(y1.address), .ptr(y2?.address ?? 0), .i32(n)])
            return
        }
        // The input is rounded (or quantized) once per form the group's formats need, in the order they come.
        var last: (ActivationRounding, Tensor)?
        var lastQuantized: (UInt, UInt, UInt)?
        for (w, y) in [(w0, y0), (w1, y1)] + (w2.flatMap { w in y2.map { [(w, $0)] } } ?? []) {
            let g = Self.weight(w)
            if Self.integerDot(g, cols: w.cols) {
                let q = lastQuantized ?? quantizeInput(x, cols: w.cols, n: n)
                lastQuantized = q
                integerMatvec(g, rows: w.rows, cols: w.cols, input: q, y: y, n: n)
                continue
            }
            let input: Tensor
            if let l = last, l.0 == g.rounding { input = l.1 } else {
                input = roundedInput(x, g.rounding, cols: w.cols, n: n)
                last = (g.rounding, input)
            }
            matvec(g, rows: w.rows, cols: w.cols, matrixBytes: 0, heads: 1, x: input, xStride: w.cols, xHeadStride: 0,
                   y: y, yStride: w.rows, yHeadStride: 0, n: n)
        }
    }

    public func matmulHeads(_ w: WeightStack, _ x: Tensor, xStride: Int, xHeadStride: Int, _ y: Tensor, yStride: Int,
                            yHeadStride: Int, n: Int) {
        current()
        let g = Self.weight(w)
        matvec(g, rows: w.rows, cols: w.cols, matrixBytes: g.rowBytes * w.rows, heads: w.count, x: x, xStride: xStride,
               xHeadStride: xHeadStride, y: y, yStride: yStride, yHeadStride: yHeadStride, n: n)
    }

    public func addBias(_ bias: Tensor, to x: Tensor, rows: Int) {
        current()
        let count = rows * bias.count
        launch("add_bias", grid: (Self.blocks(count), 1, 1), block: 256,
               [.ptr(bias.address), .ptr(x.address), .i32(bias.count), .i64(count)])
    }

    public func rope(_ x: Tensor, rows: Int, rowStride: Int, heads: Int, headStride: Int, table: RopeTable,
                     positions: Tensor, norm: Tensor?, eps: Float) {
        current()
        launch("rope", grid: (rows, heads, 1), block: 128,
               [.ptr(x.address), .i64(rowStride), .i32(headStride), .ptr(table.table.address), .i32(table.dims),
                .i32(table.rope.neox ? 1 : 0), .ptr(positions.address), .ptr(norm?.address ?? 0), .f32(eps)])
    }

    public func ropeAndStoreKV(q: Tensor, qHeads: Int, qNorm: Tensor?, k: Tensor, kHeads: Int, kNorm: Tensor?, v: Tensor,
                               headDim: Int, n: Int, table: RopeTable, eps: Float, cache: KVCache, layer: Int,
                               meta: BatchMetadata) {
        if let p = pendingProjection, n == 1, qNorm == nil, kNorm == nil, p.parts.count == 3, p.parts[0].y == q.address,
           p.parts[1].y == k.address, p.parts[2].y == v.address, p.parts[0].rows == qHeads * headDim,
           p.parts[1].rows == kHeads * headDim, cache.kDims[layer] == p.parts[1].rows, cache.vDims[layer] == p.parts[2].rows,
           headDim % 2 == 0, table.dims % 2 == 0, table.dims <= headDim, p.parts[2].rows % 2 == 0 {
            // The projection with the RoPE and the store in its epilogue (one launch for the three).
            pendingProjection = nil
            must("cuCtxSetCurrent") { try driver.makeCurrent(context) }
            let steps = 4 / p.form.split  // (a pending projection is always the split-row form: split 4, 2 or 1)
            let name = "matvec_q4_K_q8_ps\(steps)_rope"
            let f = kernels.function(name)
            let total = p.parts.reduce(0) { $0 + $1.rows }
            launch(f, "\(name) \(total)x\(p.cols)", grid: (splitGrid(f, items: total / 2, threads: 128), 1, 1), block: 128,
                   [.ptr(p.parts[0].address), .ptr(p.parts[1].address), .ptr(p.parts[2].address), .i64(p.weight.rowBytes),
                    .i32(p.parts[0].rows), .i32(p.parts[1].rows), .i32(p.parts[2].rows), .i32(p.cols), .ptr(p.input.0),
                    .ptr(p.input.1), .ptr(p.input.2), .ptr(q.address), .ptr(k.address), .ptr(v.address), .i32(headDim),
                    .ptr(table.table.address), .i32(table.dims), .i32(table.rope.neox ? 1 : 0), .ptr(meta.positions.address),
                    .ptr(meta.slotMapping.address), .ptr(cache.k(layer).address), .ptr(cache.v(layer).address)])
            return
        }
        // One launch when the cache's K rows are the k rows (not MLA's latent layout); else the three ops.
        guard cache.kDims[layer] == kHeads * headDim else {
            rope(q, rows: n, rowStride: qHeads * headDim, heads: qHeads, headStride: headDim, table: table,
                 positions: meta.positions, norm: qNorm, eps: eps)
            rope(k, rows: n, rowStride: kHeads * headDim, heads: kHeads, headStride: headDim, table: table,
                 positions: meta.positions, norm: kNorm, eps: eps)
            return storeKV(k: k, v: v, n: n, cache: cache, layer: layer, meta: meta)
        }
        current()
        launch("rope_store_kv", grid: (n, qHeads + kHeads + 1, 1), block: 128,
               [.ptr(q.address), .i32(qHeads), .ptr(qNorm?.address ?? 0), .ptr(k.address), .i32(kHeads),
                .ptr(kNorm?.address ?? 0), .ptr(v.address), .i32(cache.vDims[layer]), .i32(headDim),
                .ptr(table.table.address), .i32(table.dims), .i32(table.rope.neox ? 1 : 0), .ptr(meta.positions.address),
                .f32(eps), .ptr(meta.slotMapping.address), .ptr(cache.k(layer).address), .ptr(cache.v(layer).address)])
    }

    /// `KTRANSFORMERS_CUDA_ATTENTION_FUSED=1`: decode steps (every token its sequence's only one) below
    /// `attentionGroupMinTokens` tokens run RoPE, the K/V store, split-K attention and the combine in one launch
    /// (`attention_decode`, the arithmetic of the three kernels). Off by default: slower than the separate launches on
    /// an H100 in both its forms (2026-12-07 03:56: Llama-3-8B 305 against 321 t/s; 05:35, q and k loaded together
    /// and one split writing each head directly: Llama-3-8B 357.1 against 369.3, Qwen3-30B-A3B 343.3 against 369.9).
    /// Not under `--batch-invariant` (the separate kernels' bits are what every step shares there).
    nonisolated(unsafe) public static var fusedDecodeAttention = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_ATTENTION_FUSED"] == "1"
    /// attention_decode's counters: one per token and group of heads, zero between launches (each launch's last
    /// blocks set theirs back).
    private var attentionCounters: Tensor?
    /// Whether every counter of attention_decode is back at zero (after a step: a launch whose blocks did not all
    /// arrive, or arrived twice, would leave one set and race the next launch). For the conformance check.
    public var attentionCountersAreZero: Bool {
        guard let c = attentionCounters else { return true }
        let p = read(c, count: c.count)
        return (0..<c.count).allSatisfy { p[$0].bitPattern == 0 }
    }

    public func ropeStoreAndAttend(q: Tensor, qNorm: Tensor?, k: Tensor, kNorm: Tensor?, v: Tensor, out: Tensor, n: Int,
                                   table: RopeTable, eps: Float, cache: KVCache, layer: Int, meta: BatchMetadata,
                                   params p: AttentionParams) {
        let kd = p.nKVHead * p.headDim, vd = p.nKVHead * p.headDimV
        guard Self.fusedDecodeAttention, meta.oneTokenPerSequence, !batchInvariant, n >= 1, n < attentionGroupMinTokens,
              !p.valueInKey, p.nKVHead > 0, p.nHead % p.nKVHead == 0, p.headDim <= 1024, p.headDimV <= 512,
              cache.kDims[layer] == kd, cache.vDims[layer] == vd, n <= plan.maxTokens else {
            ropeAndStoreKV(q: q, qHeads: p.nHead, qNorm: qNorm, k: k, kHeads: p.nKVHead, kNorm: kNorm, v: v,
                           headDim: p.headDim, n: n, table: table, eps: eps, cache: cache, layer: layer, meta: meta)
            return attention(q: q, out: out, n: n, cache: cache, layer: layer, meta: meta, params: p)
        }
        current()
        let keys = splitKeys
        let splits = (max(1, plan.contextLength) + keys - 1) / keys
        let width = p.nHead * p.headDimV
        // Split keys: output groups of 256 values (their Q8_K form for the output projection) where the heads tile
        // them, else a head, combined by each group's last block. One split: each block writes its head, no partials.
        let target = splits > 1 && p.headDimV > 0 && 256 % p.headDimV == 0 && width % 256 == 0
            ? quantizedTarget(rows: n, dim: width) : nil
        let groupHeads = target != nil ? 256 / p.headDimV : 1
        let parts = splits > 1 ? grow(&attentionParts, to: max(plan.maxTokens, n) * p.nHead * splits * (p.headDimV + 2)).address : 0
        let counters = splits > 1 ? grow(&attentionCounters, to: max(plan.maxTokens, n) * p.nHead).address : 0
        launch("attention_decode", grid: (n, p.nHead, splits), block: 128,
               [.ptr(q.address), .ptr(qNorm?.address ?? 0), .ptr(k.address), .ptr(kNorm?.address ?? 0), .ptr(v.address),
                .ptr(out.address), .ptr(cache.k(layer).address), .ptr(cache.v(layer).address), .i32(p.nHead),
                .i32(p.nKVHead), .i32(p.headDim), .i32(p.headDimV), .f32(p.scale), .i32(p.window), .f32(p.softcap),
                .ptr(table.table.address), .i32(table.dims), .i32(table.rope.neox ? 1 : 0), .f32(eps),
                .ptr(meta.positions.address), .ptr(meta.slotMapping.address), .ptr(meta.sequenceOfToken.address),
                .ptr(meta.blockTables.address), .i32(meta.blockTableStride), .i32(meta.pageSize),
                .ptr(parts), .i32(keys), .ptr(counters), .i32(groupHeads),
                .ptr(target?.0 ?? 0), .ptr(target?.1 ?? 0), .ptr(target?.2 ?? 0)])
        if target != nil { preparedQuantized = Prepared(address: out.address, count: n * width, launch: launches) }
    }

    public func storeKV(k: Tensor, v: Tensor, n: Int, cache: KVCache, layer: Int, meta: BatchMetadata) {
        current()
        launch("store_kv", grid: (n, 1, 1), block: 128,
               [.ptr(k.address), .ptr(v.address), .i32(cache.kDims[layer]), .i32(cache.vDims[layer]),
                .ptr(meta.slotMapping.address), .ptr(cache.k(layer).address), .ptr(cache.v(layer).address)])
    }

    /// Keys per split of a split-K attention (nil: automatic, from the reserved context length: at least 256 and at
    /// most 8 splits; one split, the plain kernel, when the context fits in one). Fixed for a run, so a token's bits
    /// depend on its own position only.
    public var attentionSplitKeys: Int? { didSet { graphEpoch += 1 } }  // (launch shapes change: graphs are stale)
    /// Query tokens from which attention runs a block per K/V head for its GQA group of query heads
    /// (`attention_gqa<G>`: each key and value read once per group; same bits), `KTRANSFORMERS_CUDA_ATTENTION_GROUP_MIN`,
    /// default 16: below it the per-head kernel's more blocks fill the GPU better.
    public var attentionGroupMinTokens = CUDABackend.attentionGroupDefault
    static let attentionGroupDefault = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_ATTENTION_GROUP_MIN"].flatMap { Int($0) } ?? 16
    private var attentionParts: Tensor?

    private var splitKeys: Int {
        if let k = attentionSplitKeys { return max(1, k) }
        return max(256, (plan.contextLength + 7) / 8)
    }

    /// Key splits an attention launch has: those of the reserved context, or only as many as the step's positions
    /// reach (`BatchMetadata.maxPosition`): a token's splits and their order are the same either way (the same bits),
    /// and with one split no combine runs.
    private func launchedSplits(maxPosition: Int?) -> Int {
        let keys = splitKeys
        let all = (max(1, plan.contextLength) + keys - 1) / keys
        guard Self.attentionSpan, let m = maxPosition else { return all }
        return max(1, min(all, m / keys + 1))
    }
    /// `KTRANSFORMERS_CUDA_ATTENTION_SPAN=0`: every key split of the reserved context launched whatever the positions
    /// (the launches before 741d04b; a measurement, default on).
    static let attentionSpan = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_ATTENTION_SPAN"] != "0"

    public func attentionLaunchShape(maxPosition: Int) -> Int { launchedSplits(maxPosition: maxPosition) }

    /// `KTRANSFORMERS_CUDA_ATTENTION_Q8=0`: without key splits, attention writes only its float output (the output
    /// projection quantizes it in its own launch) instead of its Q8_K form too (a measurement; default on).
    static let attentionQ8 = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_ATTENTION_Q8"] != "0"

    /// Steps of at least this many tokens run attention on the f16 tensor cores (`attention_flash`, head dims up to
    /// 128, query heads per K/V head dividing 64), below it the f32 kernels (batch invariant). As the GEMMs, a large
    /// step's bits then differ slightly from a small step's. `KTRANSFORMERS_CUDA_FLASH_MIN`, default 128; 0 turns
    /// it off.
    nonisolated(unsafe) public static var flashMinTokens = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_FLASH_MIN"].flatMap { Int($0) } ?? 128
    /// Its shared memory: the Q and K tiles (64 rows of 128 + 8 f16) and the transposed V tile (128 × (64 + 8) f16).
    static let flashShared = (2 * 64 * 136 + 128 * 72) * 2

    public func attention(q: Tensor, out: Tensor, n: Int, cache: KVCache, layer: Int, meta: BatchMetadata,
                          params p: AttentionParams) {
        precondition(p.headDim <= 1024 && p.headDimV <= 512, "CUDA attention: head dims \(p.headDim)/\(p.headDimV) above 1024/512")
        current()
        let kd = cache.kDims[layer]
        let vc = p.valueInKey ? cache.k(layer) : cache.v(layer)
        let vStride = p.valueInKey ? kd : cache.vDims[layer]
        let vHeadStride = p.valueInKey ? p.headDim : p.headDimV
        let keys = splitKeys
        let splits = launchedSplits(maxPosition: meta.maxPosition)
        var part: UInt = 0
        if splits > 1 {
            let need = max(plan.maxTokens, n) * p.nHead * splits * (p.headDimV + 2)
            part = grow(&attentionParts, to: need).address
        }
        let group = p.nKVHead > 0 && p.nHead % p.nKVHead == 0 ? p.nHead / p.nKVHead : 0
        if !batchInvariant, Self.flashMinTokens > 0, n >= Self.flashMinTokens, group > 0, group <= 64, 64 % group == 0,
           p.headDim % 16 == 0, p.headDim <= 128, p.headDimV % 16 == 0, p.headDimV <= 128,
           kd % 4 == 0, vStride % 4 == 0, vHeadStride % 4 == 0, Self.flashShared <= sharedOptin {
            // Prefill: the f16 tensor cores, 64 query rows a block (tokens × the K/V head's query heads).
            let f = kernels.function("attention_flash")
            setShared(f, Self.flashShared)
            launch(f, "attention_flash", grid: ((n + 64 / group - 1) / (64 / group), p.nKVHead, 1), block: 128,
                   shared: Self.flashShared,
                   [.ptr(q.address), .ptr(out.address), .ptr(cache.k(layer).address), .ptr(vc.address), .i32(kd),
                    .i32(vStride), .i32(vHeadStride), .i32(p.nHead), .i32(p.nKVHead), .i32(p.headDim), .i32(p.headDimV),
                    .f32(p.scale), .i32(p.window), .f32(p.softcap), .ptr(meta.positions.address),
                    .ptr(meta.sequenceOfToken.address), .ptr(meta.blockTables.address), .i32(meta.blockTableStride),
                    .i32(meta.pageSize), .i32(n)])
            return
        }
        let width = p.nHead * p.headDimV
        // Heads a block of attention_gqa<G> takes: the whole K/V group from attentionGroupMinTokens tokens, else (one
        // key split, the output's Q8_K form wanted next) the fewest heads whose outputs fill Q8_K blocks of 256.
        var heads = n >= attentionGroupMinTokens ? group : 0
        var q8: (UInt, UInt, UInt)?
        if splits == 1, Self.attentionQ8, p.headDimV > 0, 256 % p.headDimV == 0, width % 256 == 0,
           let g = [2, 4, 8].first(where: { $0 * p.headDimV >= 256 }), group % g == 0, g <= group,
           let target = quantizedTarget(rows: n, dim: width) {
            heads = max(heads, g)
            q8 = target
        }
        if [2, 4, 8].contains(heads), p.headDim <= 256, p.headDimV <= 128 {
            // Query heads of one K/V head in one block (each key and value read once for all of them), same bits.
            launch("attention_gqa\(heads)", grid: (n, p.nHead / heads, splits), block: 128,
                   [.ptr(q.address), .ptr(out.address), .ptr(cache.k(layer).address), .ptr(vc.address), .i32(kd),
                    .i32(vStride), .i32(vHeadStride), .i32(p.nHead), .i32(p.headDim), .i32(p.headDimV), .f32(p.scale),
                    .i32(p.window), .f32(p.softcap), .ptr(meta.positions.address), .ptr(meta.sequenceOfToken.address),
                    .ptr(meta.blockTables.address), .i32(meta.blockTableStride), .i32(meta.pageSize), .ptr(part), .i32(keys),
                    .i32(group), .ptr(q8?.0 ?? 0), .ptr(q8?.1 ?? 0), .ptr(q8?.2 ?? 0)])
            if q8 != nil { preparedQuantized = Prepared(address: out.address, count: n * width, launch: launches) }
        } else {
        launch("attention", grid: (n, p.nHead, splits), block: 128,
               [.ptr(q.address), .ptr(out.address), .ptr(cache.k(layer).address), .ptr(vc.address), .i32(kd), .i32(vStride),
                .i32(vHeadStride), .i32(p.nHead), .i32(p.nKVHead), .i32(p.headDim), .i32(p.headDimV), .f32(p.scale),
                .i32(p.window), .f32(p.softcap), .ptr(meta.positions.address), .ptr(meta.sequenceOfToken.address),
                .ptr(meta.blockTables.address), .i32(meta.blockTableStride), .i32(meta.pageSize), .ptr(part), .i32(keys)])
        }
        if splits > 1 {
            let combine: [KernelArg] = [.ptr(part), .ptr(out.address), .i32(p.nHead), .i32(p.headDimV), .i32(splits),
                                        .i32(keys), .i32(p.window), .ptr(meta.positions.address)]
            if p.headDimV > 0, 256 % p.headDimV == 0, width % 256 == 0, let target = quantizedTarget(rows: n, dim: width) {
                // Also the output's Q8_K form, for the output projection's integer-dot matmul next.
                launch("attention_combine_q8K", grid: (n, width / 256, 1), block: 256,
                       combine + [.ptr(target.0), .ptr(target.1), .ptr(target.2)])
                preparedQuantized = Prepared(address: out.address, count: n * width, launch: launches)
            } else {
                launch("attention_combine", grid: (n, p.nHead, 1), block: 128, combine)
            }
        }
    }

    public func gatedActivation(_ g: Tensor, _ u: Tensor, count: Int, _ kind: GatedActivation) {
        current()
        // SwiGLU output as wide as a split-tf32 matmul's input (the down projection reads it next): also write its
        // split, which that matmul then takes.
        if kind == .silu, lastGroupTokens == 1 ? Self.f32OneEnabled && Self.q16One : q16BatchedApplies(n: lastGroupTokens),
           !batchInvariant, count % 256 == 0,
           g.address % 16 == 0, u.address % 16 == 0, let lo = splitLow, Self.q16Layout(elements: count).bytes <= 4 * lo.count {
            // After a one-token gate/up: the Q16_K form the batch-1 down projection takes (matvec_q4_K_q16_p); after
            // 2 to 32 tokens, that of each token for the batched one (mmq16_block_q4_K).
            let l = Self.q16Layout(elements: count)
            launch("gated_silu_q16", grid: ((count / 256 + 3) / 4, 1, 1), block: 128,
                   [.ptr(g.address), .ptr(u.address), .ptr(lo.address), .ptr(lo.address + UInt(l.scales)),
                    .ptr(lo.address + UInt(l.sums)), .i64(count / 256)])
            preparedQ16 = Prepared(address: g.address, count: count, launch: launches)
            return
        }
        if kind == .silu, count % 32 == 0, let hi = rounded, let lo = splitLow, let sums = splitSums, count <= hi.count,
           count <= lo.count, count / 32 <= sums.count {
            launch("gated_silu_split", grid: (Self.blocks(count, 128), 1, 1), block: 128,
                   [.ptr(g.address), .ptr(u.address), .ptr(hi.address), .ptr(lo.address), .ptr(sums.address), .i64(count / 32)])
            preparedSplit = Prepared(address: g.address, count: count, launch: launches)
            return
        }
        launch(kind == .silu ? "gated_silu" : "gated_gelu", grid: (Self.blocks(count), 1, 1), block: 256,
               [.ptr(g.address), .ptr(u.address), .i64(count)])
    }

    public func add(_ x: Tensor, into y: Tensor, count: Int) {
        current()
        launch("add_into", grid: (Self.blocks(count), 1, 1), block: 256, [.ptr(x.address), .ptr(y.address), .i64(count)])
    }

    public func copyRows(_ src: Tensor, srcStride: Int, _ dst: Tensor, dstStride: Int, rows: Int, width: Int) {
        current()
        launch("copy_rows", grid: (Self.blocks(rows * width), 1, 1), block: 256,
               [.ptr(src.address), .i64(srcStride), .ptr(dst.address), .i64(dstStride), .i32(rows), .i32(width)])
    }

    public func fill(_ x: Tensor, count: Int, value: Float) {
        current()
        launch("fill", grid: (Self.blocks(count), 1, 1), block: 256, [.ptr(x.address), .i64(count), .f32(value)])
    }

    public func moeSelect(logits: Tensor, nExpert: Int, routing: MoERouting, experts: Tensor, weights: Tensor, n: Int) {
        current()
        let stride = routing.workFloats(nExpert: nExpert)
        guard let work = routerWork, work.count >= n * stride else {
            preconditionFailure("CUDA router work not reserved for \(n) tokens of \(stride) floats")
        }
        var bias: UInt = 0
        if let b = routing.selectionBias {
            let key = b.withUnsafeBufferPointer { UnsafeRawPointer($0.baseAddress!) }
            if let t = routerBias[key] { bias = t.address } else {
                let t = upload(b)
                routerBias[key] = t
                bias = t.address
            }
        }
        launch("moe_select", grid: (n, 1, 1), block: 32,
               [.ptr(logits.address), .i32(n), .i32(nExpert), .i32(routing.topK), .i32(routing.scoring == .softmax ? 0 : 1),
                .i32(routing.normalizeTopK ? 1 : 0), .f32(routing.scale), .ptr(bias), .i32(routing.groups),
                .i32(routing.groupsUsed), .i32(routing.groupScore == .max ? 0 : 1), .ptr(work.address), .i32(stride),
                .ptr(experts.address), .ptr(weights.address)])
        keepPrepared()
    }

    /// The kernel just launched wrote neither a prepared input nor its quantized scratch (the router's matvec,
    /// moe_select): a Q8_K form prepared for the launch before it stays valid for the next one (the routed experts'
    /// gate/up take the norm's instead of quantizing again).
    private func keepPrepared() {
        if let p = preparedQuantized, p.launch == launches - 1 {
            preparedQuantized = Prepared(address: p.address, count: p.count, launch: launches)
        }
    }

    public func sigmoidGate(_ out: Tensor, gate: Tensor, x: Tensor, width: Int, n: Int) {
        current()
        launch("sigmoid_gate", grid: (n, 1, 1), block: 256, [.ptr(out.address), .ptr(gate.address), .ptr(x.address), .i32(width)])
    }

    public func softcap(_ x: Tensor, count: Int, cap: Float) {
        current()
        launch("softcap", grid: (Self.blocks(count), 1, 1), block: 256, [.ptr(x.address), .i64(count), .f32(cap)])
    }

    public func argmaxRows(_ x: Tensor, rows: Int, cols: Int, out: Tensor) {
        current()
        guard rows > 0 else { return }
        launch("argmax_rows", grid: (rows, 1, 1), block: 1024, [.ptr(x.address), .i32(cols), .ptr(out.address)])
    }
}

/// How a `.standard` matmul rounds its input (the weight format's vec-dot type).
enum ActivationRounding { case none, q8_0, q8_K }

/// A weight in device memory: its blocks (or their f32 conversion) and the kernels that read its format.
final class CUDAWeight: @unchecked Sendable {
    let address: UInt
    /// The kernels' name for the device format ("q4_K", ..., "f32").
    let tag: String
    let rowBytes: Int
    let rounding: ActivationRounding
    let matvec: CUDADriver.Handle
    let matvecExperts: CUDADriver.Handle
    let embed: CUDADriver.Handle
    /// Its rows decoded to f16 (the cuBLAS GEMMs of prefill).
    let dequantF16: CUDADriver.Handle
    /// The integer-dot matrix-vector kernel of the format, where there is one.
    let integerDot: CUDADriver.Handle?
    /// Its form for up to three matrices in one launch (`matmulGroup`).
    let integerDotGroup: CUDADriver.Handle?
    /// Both compiled for one token alone (batch-1 decode: fewer registers; the same bits).
    let integerDotOne: CUDADriver.Handle?
    /// "c" where the one-token forms are the contiguous-input ones (`KTRANSFORMERS_CUDA_MV1=2`), else "".
    let oneTokenSuffix: String
    let integerDotGroupOne: CUDADriver.Handle?
    /// The persistent one-token forms (Q4_K; up to three matrices): `matvec_q4_K_q8_p` (the bits of the one-token
    /// forms) and `matvec_q4_K_q8_pf` (fast: each lane's own sums).
    let integerDotPersistent: (exact: CUDADriver.Handle, fast: CUDADriver.Handle)?
    /// The fast persistent form with the inputs in registers, for rows of 1 to 4 steps of 1024 columns
    /// (`matvec_q4_K_q8_pr1` ... `_pr4`; index: steps − 1).
    let integerDotRegisters: [CUDADriver.Handle]?
    /// Its split form for rows of 1, 2 and 4 steps (`matvec_q4_K_q8_ps1`, `_ps2`, `_ps4`).
    let integerDotSplit: [CUDADriver.Handle]?
    /// Routed experts' gate and up at one token split across blocks' warps (`matvec_experts_q4_K_q8_ps1`, `_ps2`, `_ps4`).
    let integerExpertsSplit: [CUDADriver.Handle]?
    /// Routed experts' gate and up at one token on the same kernels (`matvec_experts_q4_K_q8_pr1` ... `_pr4`).
    let integerExpertsRegisters: [CUDADriver.Handle]?
    /// Its form for routed experts (each pair's expert through the ids in device memory).
    let integerExperts: CUDADriver.Handle?
    /// Its streaming form (decode: rows staged through shared memory by cp.async; up to three matrices).
    let integerDotStream: CUDADriver.Handle?
    /// Its tensor-core tile kernel (prefill), where there is one.
    let tensorCoreTiles: CUDADriver.Handle?
    /// The split-tf32 kernels for f32 activations (one and four token tiles per warp; routed experts), where there
    /// are.
    let tensorCoreF32: CUDADriver.Handle?
    let tensorCoreF32Tiles: CUDADriver.Handle?
    /// The one-token form (batch-1 decode; persistent, loads one super-block ahead), where there is one (Q4_K).
    let tensorCoreF32One: CUDADriver.Handle?
    let tensorCoreF32Experts: CUDADriver.Handle?
    /// The block-tiled form for prefill (inputs staged in shared memory for 4 warps), where there is one.
    let tensorCoreF32Block: CUDADriver.Handle?
    /// The streaming forms of the one- and four-token-tile kernels (decode, batched decode), where there are.
    let tensorCoreF32Stream: (CUDADriver.Handle, CUDADriver.Handle)?
    /// The streaming forms of the routed experts' kernels (integer gate/up, two stacks a launch; the tf32 down).
    let integerExpertsStream: CUDADriver.Handle?
    let tensorCoreF32ExpertsStream: CUDADriver.Handle?
    /// Their forms over each expert's pairs (prefill, after moe_group): int8 gate/up tiles, tf32 down tiles.
    let tensorCoreGrouped: CUDADriver.Handle?
    let tensorCoreF32Grouped: CUDADriver.Handle?
    /// The streaming forms of the tensor-core tiles (32 and 64 tokens a warp; up to three matrices), where there are
    /// (Q4_K and Q6_K).
    let tensorCoreStream: (CUDADriver.Handle, CUDADriver.Handle)?
    /// The block-staged tiles of batched decode (8, 16 and 32 tokens a block), where there are (Q4_K, Q6_K), by
    /// 100 · (tokens / 8) + tiles a unit.
    let tensorCoreBlock: [Int: CUDADriver.Handle]?
    /// The block-staged split-tf32 tiles of batched decode (8 and 32 tokens a block), where there are (Q4_K).
    let tensorCoreF32Staged: (CUDADriver.Handle, CUDADriver.Handle)?
    /// Batched `.f32Activations` with Q16_K inputs on the int8 tensor cores, 8 and 32 tokens a block (Q4_K).
    let f32Q16Staged: (CUDADriver.Handle, CUDADriver.Handle)?
    /// Batch-1 `.f32Activations` on the FP32 cores, plain and for routed experts (Q4_K).
    let f32One: CUDADriver.Handle?
    /// Batch-1 `.f32Activations` with Q16_K inputs, dense and routed experts (Q4_K): `matvec_q4_K_q16_p`.
    let f32OneQ16: CUDADriver.Handle?
    /// Its K-split form for dense rows longer than 4096 columns (`matvec_q4_K_q16_pk`).
    let f32OneQ16Split: CUDADriver.Handle?
    /// Its form with each row split across a block's warps, a warp per step (`matvec_q4_K_q16_ps`).
    let f32OneQ16Rows: CUDADriver.Handle?
    let f32OneExperts: CUDADriver.Handle?
    /// The same with 4 rows a warp (matvec_experts_q4_K_f32_r4; `CUDABackend.f32OneExpertRows`).
    let f32OneExperts4: CUDADriver.Handle?
    /// The same with the experts' weighted sum (matvec_experts_q4_K_f32_combine).
    let f32OneExpertsCombine: CUDADriver.Handle?

    init(address: UInt, tag: String, rowBytes: Int, rounding: ActivationRounding, kernels: CUDAKernels) {
        self.address = address
        self.tag = tag
        self.rowBytes = rowBytes
        self.rounding = rounding
        matvec = kernels.function("matvec_\(tag)")
        matvecExperts = kernels.function("matvec_experts_\(tag)")
        embed = kernels.function("embed_\(tag)")
        dequantF16 = kernels.function(tag == "q4_K" && rowBytes % 16 == 0 ? "dequant_f16_q4_K_vec" : "dequant_f16_\(tag)")
        integerDot = tag == "q4_K" || tag == "q6_K" ? kernels.function("matvec_\(tag)_q8") : nil
        integerDotGroup = tag == "q4_K" || tag == "q6_K" ? kernels.function("matvec_\(tag)_q8_3") : nil
        let mv1 = tag == "q4_K" && CUDABackend.oneTokenCoalesced ? "c" : ""
        oneTokenSuffix = mv1
        integerDotOne = tag == "q4_K" || tag == "q6_K" ? kernels.function("matvec_\(tag)_q8_1\(mv1)") : nil
        integerDotGroupOne = tag == "q4_K" || tag == "q6_K" ? kernels.function("matvec_\(tag)_q8_3_1\(mv1)") : nil
        integerDotPersistent = tag == "q4_K" ? (kernels.function("matvec_q4_K_q8_p"), kernels.function("matvec_q4_K_q8_pf")) : nil
        integerDotRegisters = tag == "q4_K" ? (1...4).map { kernels.function("matvec_q4_K_q8_pr\($0)") } : nil
        integerDotSplit = tag == "q4_K" ? [1, 2, 4].map { kernels.function("matvec_q4_K_q8_ps\($0)") } : nil
        integerExpertsSplit = tag == "q4_K" ? [1, 2, 4].map { kernels.function("matvec_experts_q4_K_q8_ps\($0)") } : nil
        integerExpertsRegisters = tag == "q4_K" ? (1...4).map { kernels.function("matvec_experts_q4_K_q8_pr\($0)") } : nil
        f32OneQ16 = tag == "q4_K" ? kernels.function("matvec_q4_K_q16_p") : nil
        f32OneQ16Split = tag == "q4_K" ? kernels.function("matvec_q4_K_q16_pk") : nil
        f32OneQ16Rows = tag == "q4_K" ? kernels.function("matvec_q4_K_q16_ps") : nil
        integerExperts = tag == "q4_K" || tag == "q6_K" ? kernels.function("matvec_experts_\(tag)_q8") : nil
        integerDotStream = tag == "q4_K" || tag == "q6_K" ? kernels.function("matvec_stream_\(tag)_q8") : nil
        tensorCoreTiles = tag == "q4_K" ? kernels.function("mmq_q4_K") : nil
        tensorCoreF32 = tag == "q4_K" || tag == "q6_K" ? kernels.function("mmf_\(tag)_1") : nil
        tensorCoreF32Tiles = tag == "q4_K" || tag == "q6_K" ? kernels.function("mmf_\(tag)_4") : nil
        tensorCoreF32One = tag == "q4_K" ? kernels.function("mmf_q4_K_one") : nil
        tensorCoreF32Experts = tag == "q4_K" || tag == "q6_K" ? kernels.function("mmf_experts_\(tag)") : nil
        tensorCoreF32Block = tag == "q4_K" ? kernels.function("mmf_tile_q4_K") : nil
        tensorCoreF32Stream = tag == "q4_K" || tag == "q6_K"
            ? (kernels.function("mmf_stream_\(tag)_1"), kernels.function("mmf_stream_\(tag)_4")) : nil
        integerExpertsStream = tag == "q4_K" || tag == "q6_K" ? kernels.function("matvec_stream_experts_\(tag)_q8") : nil
        tensorCoreF32ExpertsStream = tag == "q4_K" ? kernels.function("mmf_stream_experts_q4_K") : nil
        tensorCoreGrouped = tag == "q4_K" ? kernels.function("mmq_grouped_q4_K_4") : nil
        tensorCoreF32Grouped = tag == "q4_K" ? kernels.function("mmf_grouped_q4_K") : nil
        tensorCoreStream = tag == "q4_K" || tag == "q6_K"
            ? (kernels.function("mmq_stream_\(tag)_4"), kernels.function("mmq_stream_\(tag)_8")) : nil
        if tag == "q4_K" {
            tensorCoreBlock = Dictionary(uniqueKeysWithValues: [(1, 8), (2, 8), (2, 4), (4, 8), (4, 4), (4, 2)].map {
                (100 * $0.0 + $0.1, kernels.function("mmq_block_q4_K_\($0.0)_\($0.1)"))
            })
        } else if tag == "q6_K" {
            tensorCoreBlock = Dictionary(uniqueKeysWithValues: [1, 2, 4].map { (100 * $0 + 8, kernels.function("mmq_block_q6_K_\($0)")) })
        } else {
            tensorCoreBlock = nil
        }
        tensorCoreF32Staged = tag == "q4_K" ? (kernels.function("mmf_block_q4_K_1"), kernels.function("mmf_block_q4_K_4")) : nil
        f32Q16Staged = tag == "q4_K" ? (kernels.function("mmq16_block_q4_K_1"), kernels.function("mmq16_block_q4_K_4")) : nil
        let lb = CUDABackend.f32OneCoalesced ? "c" : CUDABackend.f32OneBounded ? "_lb" : ""
        f32One = tag == "q4_K" ? kernels.function("matvec_q4_K_f32_1\(lb)") : nil
        f32OneExperts = tag == "q4_K" ? kernels.function("matvec_experts_q4_K_f32_1\(lb)") : nil
        f32OneExperts4 = tag == "q4_K" ? kernels.function("matvec_experts_q4_K_f32_r4") : nil
        f32OneExpertsCombine = tag == "q4_K"
            ? kernels.function(CUDABackend.fusedExpertCombineBounded ? "matvec_experts_q4_K_f32_combine_lb" : "matvec_experts_q4_K_f32_combine") : nil
    }
}

/// An instantiated CUDA graph of this backend's stream.
final class CUDAGraph: ComputeGraph, @unchecked Sendable {
    let backend: CUDABackend
    let exec: CUDADriver.Handle
    init(backend: CUDABackend, exec: CUDADriver.Handle) {
        self.backend = backend
        self.exec = exec
    }
    deinit {
        backend.current()
        backend.driver.destroyGraph(exec)
    }
}

/// Device tensors freed when the object that holds them (a KV cache) goes away.
final class DeviceTensors: @unchecked Sendable {
    let backend: CUDABackend
    let tensors: [Tensor]
    init(backend: CUDABackend, tensors: [Tensor]) {
        self.backend = backend
        self.tensors = tensors
    }
    deinit { tensors.forEach { backend.release($0) } }
}

/// The routed experts of MoE layers whose expert weights are on the GPU: for every (token, chosen expert) pair,
/// gate and up rows (their input rounded to 8 bits as the CPU executor rounds it), SwiGLU, down rows (f32 input), each pair's expert found through the ids in device memory (no host
/// round trip); `wait` adds the weighted outputs to the residual in choice order.
final class CUDAExpertExecutor: ExpertExecutor {
    let backend: CUDABackend
    let nExpert: Int
    let dim: Int
    let ff: Int
    /// The step's pairs sorted by expert on the device (moe_group): offsets and token groups `// [2·nExpert + 2]`,
    /// and the order `// [pairs]`; for the grouped tiles (from `groupedMinTokens` tokens).
    private var groupMeta: Tensor?
    private var groupOrder: Tensor?
    private var gate: Tensor?
    private var up: Tensor?
    private var down: Tensor?
    /// The down projection's input split for the tf32 tensor cores (hi, lo, per-32 sums) and its K-split partials.
    private var splitHi: Tensor?
    private var splitLo: Tensor?
    private var splitSums: Tensor?
    private var parts: Tensor?
    private var capacity = 0
    private var topK = 0

    /// Tokens from which Q4_K experts run as tiles over each expert's pairs (prefill: each chosen expert's weights
    /// read once per 32 of its pairs) instead of pair by pair (`KTRANSFORMERS_CUDA_MOE_GROUPED_MIN`, default 9).
    static let groupedMinTokens = ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_MOE_GROUPED_MIN"].flatMap { Int($0) } ?? 9

    init(backend: CUDABackend, nExpert: Int, dim: Int, ff: Int) {
        self.backend = backend
        self.nExpert = nExpert
        self.dim = dim
        self.ff = ff
    }

    func reserve(maxTokens: Int, topK: Int) {
        let pairs = maxTokens * topK
        guard pairs > capacity else { return }
        [gate, up, down, splitHi, splitLo, splitSums, parts, groupMeta, groupOrder].compactMap { $0 }.forEach { backend.release($0) }
        groupMeta = backend.allocate(2 * nExpert + 2)
        groupOrder = backend.allocate(pairs)
        gate = backend.allocate(pairs * ff)
        up = backend.allocate(pairs * ff)
        down = backend.allocate(pairs * dim)
        if ff % 256 == 0 {
            splitHi = backend.allocate(pairs * ff)
            splitLo = backend.allocate(pairs * ff)
            splitSums = backend.allocate(pairs * ff / 32)
            let splits = CUDABackend.mmfSplits(cols: ff)
            parts = splits > 1 ? backend.allocate(pairs * dim * splits) : nil
        }
        capacity = pairs
        backend.noteScratchMoved()
    }

    func submit(_ experts: ExpertWeights, x: Tensor, ids: Tensor, n: Int, topK k: Int) {
        let pairs = n * k
        precondition(pairs <= capacity, "CUDA expert executor reserved for \(capacity) pairs, asked for \(pairs)")
        precondition(pendingDown == nil, "CUDA expert executor: submit before the last submit's wait")
        topK = k
        let g = CUDABackend.weight(experts.gate), u = CUDABackend.weight(experts.up), d = CUDABackend.weight(experts.down)
        backend.current()
        // Grid y is at most 65535: pairs in chunks of whole tokens.
        func chunks(_ xDiv: Int, _ body: (Int, Int) -> Void) {
            let step = 65535 / xDiv * xDiv
            var p0 = 0
            while p0 < pairs {
                let c = min(step, pairs - p0)
                body(p0, c)
                p0 += c
            }
        }
        func run(_ w: CUDAWeight, _ stack: WeightStack, x: Tensor, xDiv: Int, y: Tensor) {
            chunks(xDiv) { p0, c in
                backend.launch(w.matvecExperts, "matvec_experts_\(w.tag)", grid: ((stack.rows + 3) / 4, c, 1), block: 128,
                               [.ptr(w.address), .i64(w.rowBytes), .i64(w.rowBytes * stack.rows), .i32(stack.rows),
                                .i32(stack.cols), .ptr(x.offset(p0 / xDiv * stack.cols).address), .i32(xDiv),
                                .ptr(ids.offset(p0).address), .ptr(y.offset(p0 * stack.rows).address)])
            }
        }
        // Gate and up: integer dot products with the token's Q8_K input where the format has them (the same rounding
        // as the CPU executor), else the input rounded to the vec-dot format and the float kernels.
        // `second`: another stack of the same format and shape on the same input (up), in the same launch.
        func runInteger(_ w: CUDAWeight, _ stack: WeightStack, q: (UInt, UInt, UInt), y: Tensor,
                        second: (CUDAWeight, Tensor)? = nil) {
            let cols = stack.cols
            chunks(k) { p0, c in
                let t = p0 / k
                backend.launch(w.integerExperts!, "matvec_experts_\(w.tag)_q8 \(second == nil ? "" : "2x")\(stack.rows)x\(cols)",
                               grid: ((stack.rows + 3) / 4, c, second == nil ? 1 : 2), block: 128,
                               [.ptr(w.address), .i64(w.rowBytes), .i64(w.rowBytes * stack.rows), .i32(stack.rows), .i32(cols),
                                .ptr(q.0 + UInt(t * cols)), .ptr(q.1 + UInt(4 * t * (cols / 256))), .ptr(q.2 + UInt(4 * t * (cols / 16))),
                                .i32(k), .ptr(ids.offset(p0).address), .ptr(y.offset(p0 * stack.rows).address),
                                .ptr(second?.0.address ?? 0), .ptr(second?.1.offset(p0 * stack.rows).address ?? 0)])
            }
        }
        let sorted = sortPairs(experts, n: n, ids: ids, pairs: pairs)
        let gateCols = experts.gate.cols
        if g.integerExperts != nil, u.integerExperts != nil, CUDABackend.integerDot(g, cols: gateCols), experts.up.cols == gateCols {
            let q = backend.quantizeInput(x, cols: gateCols, n: n)
            // Both stacks in one launch where they share a format and shape: tiles over each expert's pairs
            // (prefill), or streaming pair by pair.
            let same = g.tag == u.tag && g.rowBytes == u.rowBytes && experts.gate.rows == experts.up.rows
            if same, let sorted, let f = g.tensorCoreGrouped, experts.gate.count == nExpert, g.rowBytes % 16 == 0 {
                backend.groupedExperts(f, g, u, rows: experts.gate.rows, cols: gateCols, nExpert: nExpert,
                                       meta: sorted.meta, order: sorted.order, input: q, xDiv: k, y0: gate!, y1: up!)
            } else if same, n >= CUDABackend.streamMinTokens,
                      backend.streamExperts(g, u, rows: experts.gate.rows, cols: gateCols, input: q, xDiv: k,
                                                  ids: ids, y0: gate!, y1: up!, pairs: pairs) {
            } else if same, n == 1, !backend.batchInvariant, CUDABackend.splitRows, CUDABackend.splitExperts,
                      let r = g.integerExpertsSplit,
                      case let steps = (gateCols + 1023) / 1024, steps != 3, steps <= 4 {
                // One token: both stacks' rows of every pair split across blocks' warps (matvec_experts_q4_K_q8_ps<N>).
                let rows = experts.gate.rows, f = r[steps == 4 ? 2 : steps - 1], groups = (2 * pairs * rows + 4 / steps - 1) / (4 / steps)
                backend.launch(f, "matvec_experts_q4_K_q8_ps\(steps) 2x\(rows)x\(gateCols)",
                               grid: (backend.splitGrid(f, items: groups, threads: 128), 1, 1), block: 128,
                               [.ptr(g.address), .ptr(u.address), .i64(g.rowBytes), .i64(g.rowBytes * rows), .i32(rows),
                                .i32(gateCols), .ptr(q.0), .ptr(q.1), .ptr(q.2), .ptr(ids.address), .i32(pairs),
                                .ptr(gate!.address), .ptr(up!.address), .i32(CUDABackend.splitPrefetchExperts)])
            } else if same, n == 1, !backend.batchInvariant, CUDABackend.registerExperts, let r = g.integerExpertsRegisters,
                      (gateCols + 1023) / 1024 <= r.count {
                // One token: both stacks' rows of every pair on the persistent register-input kernel.
                let rows = experts.gate.rows, steps = (gateCols + 1023) / 1024, f = r[steps - 1], total = 2 * pairs * rows
                let (rpw, blocks) = backend.persistentGrid(f, rows: total)
                backend.launch(f, "matvec_experts_q4_K_q8_pr\(steps) 2x\(rows)x\(gateCols)", grid: (blocks, 1, 1),
                               block: 128,
                               [.ptr(g.address), .ptr(u.address), .i64(g.rowBytes), .i64(g.rowBytes * rows), .i32(rows),
                                .i32(gateCols), .ptr(q.0), .ptr(q.1), .ptr(q.2), .ptr(ids.address), .i32(pairs),
                                .ptr(gate!.address), .ptr(up!.address), .i32(rpw), .i32(CUDABackend.prefetchRows)])
            } else if same {
                runInteger(g, experts.gate, q: q, y: gate!, second: (u, up!))
            } else {
                runInteger(g, experts.gate, q: q, y: gate!)
                runInteger(u, experts.up, q: q, y: up!)
            }
        } else {
            let xg = backend.roundedInput(x, g.rounding, cols: experts.gate.cols, n: n)
            run(g, experts.gate, x: xg, xDiv: k, y: gate!)
            let xu = u.rounding == g.rounding ? xg : backend.roundedInput(x, u.rounding, cols: experts.up.cols, n: n)
            run(u, experts.up, x: xu, xDiv: k, y: up!)
        }
        // Down (f32 input): SwiGLU and the split in one pass, then the tf32 tensor cores, where the format has them.
        if n == 1, !backend.batchInvariant, CUDABackend.f32OneEnabled, CUDABackend.q16One, CUDABackend.q16Experts, let f = d.f32OneQ16,
           d.rowBytes % 16 == 0, experts.down.cols == ff, ff % 256 == 0, let lo = splitLo,
           CUDABackend.q16Layout(elements: pairs * ff).bytes <= 4 * lo.count {
            // One token: SwiGLU writes the 16-bit integer inputs, the persistent kernel streams the chosen experts.
            let l = CUDABackend.q16Layout(elements: pairs * ff)
            backend.launch("gated_silu_q16", grid: ((pairs * ff / 256 + 3) / 4, 1, 1), block: 128,
                           [.ptr(gate!.address), .ptr(up!.address), .ptr(lo.address), .ptr(lo.address + UInt(l.scales)),
                            .ptr(lo.address + UInt(l.sums)), .i64(pairs * ff / 256)])
            return backend.q16Matvec(f, d, rows: experts.down.rows, cols: ff, pairs: pairs, q: lo.address, ids: ids.address,
                                     y: down!.address, name: "matvec_experts_\(d.tag)_q16_p \(experts.down.rows)x\(ff)")
        }
        if d.tensorCoreF32 != nil, experts.down.cols == ff, let hi = splitHi, let lo = splitLo, let sums = splitSums {
            backend.launch("gated_silu_split", grid: (CUDABackend.blocks(pairs * ff, 128), 1, 1), block: 128,
                           [.ptr(gate!.address), .ptr(up!.address), .ptr(hi.address), .ptr(lo.address), .ptr(sums.address),
                            .i64(pairs * ff / 32)])
            let rows = experts.down.rows, splits = CUDABackend.mmfSplits(cols: ff), tiles = (rows + 15) / 16
            precondition(splits == 1 || pairs <= 65535, "CUDA expert executor: split-K experts past 65535 pairs")
            let out = splits > 1 ? parts! : down!
            if n == 1, !backend.batchInvariant, CUDABackend.f32OneEnabled, let one = d.f32OneExperts, d.rowBytes % 16 == 0 {
                // One token: the FP32-core kernel (as the dense down projection's at one token).
                let c = CUDABackend.f32OneCoalesced
                if !c, !CUDABackend.f32OneBounded, CUDABackend.f32OneExpertRows == 4, CUDABackend.fusedExpertCombine,
                   pairs <= 8, let f = d.f32OneExpertsCombine {
                    // The launch waits for `wait`, which brings the weights and the output.
                    pendingDown = (f, [.ptr(d.address), .i64(d.rowBytes), .i64(d.rowBytes * rows), .i32(rows), .i32(ff),
                                       .ptr(gate!.address), .ptr(sums.address), .ptr(ids.address)], rows, pairs)
                    return
                }
                if !c, !CUDABackend.f32OneBounded, CUDABackend.f32OneExpertRows == 4, let r4 = d.f32OneExperts4 {
                    return backend.launch(r4, "matvec_experts_\(d.tag)_f32_r4 \(rows)x\(ff)", grid: ((rows + 15) / 16, pairs, 1),
                                          block: 128,
                                          [.ptr(d.address), .i64(d.rowBytes), .i64(d.rowBytes * rows), .i32(rows), .i32(ff),
                                           .ptr(gate!.address), .ptr(sums.address), .ptr(ids.address), .ptr(down!.address)])
                }
                return backend.launch(one, "matvec_experts_\(d.tag)_f32_1\(c ? "c" : "") \(rows)x\(ff)",
                                      grid: (c ? (rows + 1) / 2 : (rows + 7) / 8, pairs, 1), block: c ? 64 : 128,
                                      [.ptr(d.address), .i64(d.rowBytes), .i64(d.rowBytes * rows), .i32(rows), .i32(ff),
                                       .ptr(gate!.address), .ptr(sums.address), .ptr(ids.address), .ptr(down!.address)])
            }
            if let sorted, let f = d.tensorCoreF32Grouped, experts.down.count == nExpert {
                backend.streamF32Experts(f, d, rows: rows, cols: ff, hi: hi, lo: lo, sums: sums, ids: ids, out: out,
                                         pairs: pairs, tiles: tiles, splits: splits,
                                         grouped: (nExpert, sorted.meta, sorted.order))
            } else if let f = d.tensorCoreF32ExpertsStream, CUDABackend.streamMatvecEnabled, n >= CUDABackend.streamMinTokens,
               4 * CUDABackend.mmfStreamDepth * 16 * 144 <= backend.sharedOptin {
                backend.streamF32Experts(f, d, rows: rows, cols: ff, hi: hi, lo: lo, sums: sums, ids: ids, out: out,
                                         pairs: pairs, tiles: tiles, splits: splits, grouped: nil)
            } else {
            chunks(1) { p0, c in
                backend.launch(d.tensorCoreF32Experts!, "mmf_experts_\(d.tag)", grid: ((tiles * splits + 3) / 4, c, 1), block: 128,
                               [.ptr(d.address), .i64(d.rowBytes), .i64(d.rowBytes * rows), .i32(rows), .i32(ff),
                                .ptr(hi.offset(p0 * ff).address), .ptr(lo.offset(p0 * ff).address),
                                .ptr(sums.offset(p0 * ff / 32).address), .ptr(ids.offset(p0).address),
                                .ptr(out.offset(p0 * rows).address), .i32(c), .i32(CUDABackend.mmfSplitSuperBlocks)])
            }
            }
            backend.reduceSplits(out, into: down!, splits: splits, n: pairs, rows: rows)
            return
        }
        backend.gatedActivation(gate!, up!, count: pairs * ff, .silu)
        run(d, experts.down, x: gate!, xDiv: 1, y: down!)
    }

    /// The step's pairs sorted by expert on the device (moe_group: offsets, token groups of 32, order), when the
    /// grouped tiles run (streaming on, at least `groupedMinTokens` tokens, a Q4_K stack with the executor's
    /// expert count); nil otherwise.
    private func sortPairs(_ experts: ExpertWeights, n: Int, ids: Tensor, pairs: Int) -> (meta: Tensor, order: Tensor)? {
        let stacks = [experts.gate, experts.up, experts.down]
        guard CUDABackend.streamMatvecEnabled, n >= Self.groupedMinTokens, let meta = groupMeta, let order = groupOrder,
              stacks.contains(where: { CUDABackend.weight($0).tensorCoreGrouped != nil && $0.count == nExpert })
        else { return nil }
        backend.launch(backend.kernels.function("moe_group"), "moe_group", grid: (1, 1, 1), block: 1024,
                       shared: 8 * nExpert,
                       [.ptr(ids.address), .i32(pairs), .i32(nExpert), .i32(32), .ptr(meta.address), .ptr(order.address)])
        return (meta, order)
    }

    /// The one-token down projection with the combine, left for `wait` (matvec_experts_q4_K_f32_combine): the
    /// kernel, its arguments up to the ids, the rows and the pairs.
    private var pendingDown: (CUDADriver.Handle, [KernelArg], rows: Int, pairs: Int)?

    /// Launches the pending down projection with the combine into `out`; false when none is pending.
    private func combinePending(weights: Tensor, out: Tensor, store: Bool) -> Bool {
        guard let (f, args, rows, pairs) = pendingDown else { return false }
        pendingDown = nil
        backend.launch(f, "matvec_experts_q4_K_f32_combine\(CUDABackend.fusedExpertCombineBounded ? "_lb" : "") \(rows)x\(ff)", grid: ((rows + 3) / 4, 1, 1), block: 32 * pairs,
                       args + [.ptr(weights.address), .ptr(out.address), .i32(store ? 1 : 0)])
        return true
    }

    func wait(weights: Tensor, accumulateInto out: Tensor, n: Int) {
        backend.current()
        if combinePending(weights: weights, out: out, store: false) { return }
        backend.launch("moe_combine", grid: (CUDABackend.blocks(n * dim), 1, 1), block: 256,
                       [.ptr(down!.address), .ptr(weights.address), .ptr(out.address), .i32(n), .i32(topK), .i32(dim), .i32(0)])
    }

    /// The combine writes `out` (no fill before it): the bits of zeroing it and accumulating.
    func wait(weights: Tensor, storeInto out: Tensor, n: Int) -> Bool {
        backend.current()
        if combinePending(weights: weights, out: out, store: true) { return true }
        if CUDABackend.combineInNorm {
            // Left for the op after it (addRMSNorm of `out` runs it in its launch; any other op launches it first).
            backend.pendingCombine = CUDABackend.PendingCombine(ys: down!.address, weights: weights.address, out: out.address,
                                                                n: n, topK: topK, dim: dim)
            return true
        }
        backend.launch("moe_combine", grid: (CUDABackend.blocks(n * dim), 1, 1), block: 256,
                       [.ptr(down!.address), .ptr(weights.address), .ptr(out.address), .i32(n), .i32(topK), .i32(dim), .i32(1)])
        return true
    }
}

/// One block of `CUDABackend.pageLockedStackMemory`: frees it with the weights that own it.
final class PageLockedBlock: @unchecked Sendable {
    // NOTE: @unchecked: immutable after init; the backend's range list has its own lock.
    let backend: CUDABackend
    let pointer: UnsafeMutableRawPointer
    init(backend: CUDABackend, pointer: UnsafeMutableRawPointer) {
        self.backend = backend
        self.pointer = pointer
    }
    deinit { backend.freePageLocked(pointer) }
}
