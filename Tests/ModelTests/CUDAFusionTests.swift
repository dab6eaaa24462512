import Backend
import BackendCUDA
import GGUF
import Quant
import XCTest

/// The CUDA backend's fused steps must actually be taken, not only give the right bits (the conformance checks
/// `chainedOps` and `addRMSNorm` prove the bits): with the kernel profiler on, the MLP's op chain on Q4_K weights
/// 256-multiple wide launches the fused kernels and neither the separate quantization nor the separate split.
/// Runs on a GPU or the CUDA emulator; skipped, visibly, where neither is.
final class CUDAFusionTests: XCTestCase {
    /// Owns a weight's bytes for as long as the backend may read them.
    final class Bytes {
        let pointer: UnsafeMutableRawPointer
        init(_ count: Int) { pointer = .allocate(byteCount: count, alignment: 64) }
        deinit { pointer.deallocate() }
    }

    /// A random Q4_K `[rows, cols]` matrix quantized by the reference quantizer.
    private func q4K(_ name: String, rows: Int, cols: Int) throws -> WeightRef {
        let quantize = try XCTUnwrap(QuantRegistry.kernels(for: .q4_K)?.quantize)
        let rowBytes = try XCTUnwrap(GGMLType.q4_K.byteCount(elements: cols))
        let bytes = Bytes(rows * rowBytes)
        var rng = SystemRandomNumberGenerator()
        var row = [Float](repeating: 0, count: cols)
        for r in 0..<rows {
            for c in 0..<cols { row[c] = Float.random(in: -1...1, using: &rng) }
            row.withUnsafeBufferPointer { quantize($0.baseAddress!, bytes.pointer + r * rowBytes, cols) }
        }
        return WeightRef(name: name, type: .q4_K, shape: [cols, rows], data: UnsafeRawPointer(bytes.pointer), owner: bytes)
    }

    /// `count` uniform values in [-2, 2].
    private static func normals(_ count: Int) -> [Float] { (0..<count).map { _ in Float.random(in: -2...2) } }

    /// A device tensor holding `values`.
    private static func ints(_ b: CUDABackend, _ values: [Int32]) -> Tensor {
        let t = b.allocate(values.count)
        values.withUnsafeBufferPointer { b.write($0, to: t) }
        return t
    }

    /// The first `count` values of a device tensor.
    private static func floats(_ b: CUDABackend, _ t: Tensor, _ count: Int) -> [Float] {
        Array(UnsafeBufferPointer(start: b.read(t, count: count), count: count))
    }

    /// A layer's routed experts (random Q4_K stacks of `nExpert` experts) and a GPU executor reserved for 8 tokens.
    private func expertLayer(_ b: CUDABackend, dim: Int, ff: Int, nExpert: Int, topK: Int) throws
        -> (ExpertWeights, any ExpertExecutor) {
        b.reserve(ForwardPlan(maxTokens: 8, contextLength: 64, maxQueryGroup: 1))
        func stack(_ name: String, rows: Int, cols: Int) throws -> WeightStack {
            let one = try q4K(name, rows: rows * nExpert, cols: cols)
            return try b.prepareStack(WeightRef(name: name, type: .q4_K, shape: [cols, rows, nExpert], data: one.data,
                                                owner: one.owner))
        }
        let experts = ExpertWeights(gate: try stack("blk.0.ffn_gate_exps.weight", rows: ff, cols: dim),
                                    up: try stack("blk.0.ffn_up_exps.weight", rows: ff, cols: dim),
                                    down: try stack("blk.0.ffn_down_exps.weight", rows: dim, cols: ff))
        let executor = b.makeExpertExecutor(nExpert: nExpert, dim: dim, ff: ff)
        executor.reserve(maxTokens: 8, topK: topK)
        return (experts, executor)
    }

    /// A reserved backend's random Q4_K gate, up `[ff, dim]` and down `[dim, ff]` matrices.
    private func mlp(_ b: CUDABackend, dim: Int, ff: Int) throws -> (WeightMatrix, WeightMatrix, WeightMatrix) {
        b.reserve(ForwardPlan(maxTokens: 8, contextLength: 64, maxQueryGroup: 1))
        return (try b.prepare(q4K("blk.0.ffn_gate.weight", rows: ff, cols: dim)),
                try b.prepare(q4K("blk.0.ffn_up.weight", rows: ff, cols: dim)),
                try b.prepare(q4K("blk.0.ffn_down.weight", rows: dim, cols: ff)))
    }

    func testMLPChainLaunchesTheFusedKernels() throws {
        guard let b = try CUDABackend.makeIfPresent() else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA fusion test skipped")
        }
        let dim = 512, ff = 768, n = 2
        let (gate, up, down) = try mlp(b, dim: dim, ff: ff)
        let x = b.upload((0..<(n * dim)).map { Float($0 % 13) - 6 }), res = b.upload([Float](repeating: 0.5, count: n * dim))
        let norm = b.upload([Float](repeating: 1, count: dim))
        let xn = b.allocate(n * dim), g = b.allocate(n * ff), u = b.allocate(n * ff), y = b.allocate(n * dim)
        func chain() -> [Substring] {
            b.profiling = true
            b.resetKernelProfile()
            b.rmsNorm(x, weight: norm, out: xn, rows: n, dim: dim, stride: dim, eps: 1e-5)
            b.matmulGroup(gate, g, up, u, nil, nil, x: xn, n: n)
            b.gatedActivation(g, u, count: n * ff, .silu)
            b.matmul(down, g, y, n: n, precision: .f32Activations)
            b.addRMSNorm(y, into: res, weight: norm, out: xn, rows: n, dim: dim, eps: 1e-5)
            b.matmulGroup(gate, g, up, u, nil, nil, x: xn, n: n)
            return b.kernelProfile().map { $0.name.split(separator: " ")[0] }
        }
        // Batched decode (2 tokens) runs the block-staged tiles by default, with the fusions around them: SwiGLU
        // writes the down projection's Q16_K inputs (no quantize_q16_K of its own).
        let block = chain()
        XCTAssertEqual(Set(block), ["rms_norm_q8K", "mmq_block_q4_K_1_8", "gated_silu_q16", "mmq16_block_q4_K_1", "add_rms_norm"],
                       "kernels launched: \(block)")
        XCTAssertEqual(b.kernelProfile().first { $0.name.hasPrefix("mmq_block_q4_K_1_8") }?.calls, 2)
        // With the down projection on the split-tf32 tiles (KTRANSFORMERS_CUDA_Q16_BATCH=0), SwiGLU writes their split.
        let savedQ16 = CUDABackend.q16Batched
        CUDABackend.q16Batched = false
        defer { CUDABackend.q16Batched = savedQ16 }
        let tf32 = chain()
        XCTAssertEqual(Set(tf32), ["rms_norm_q8K", "mmq_block_q4_K_1_8", "gated_silu_split", "mmf_block_q4_K_1", "add_rms_norm"],
                       "kernels launched: \(tf32)")
        CUDABackend.q16Batched = savedQ16
        // Without them, the plain matmul kernels (faster at 2 tokens than the streaming forms).
        let savedBlock = CUDABackend.mmqBlockEnabled
        CUDABackend.mmqBlockEnabled = false
        defer { CUDABackend.mmqBlockEnabled = savedBlock }
        let plain = chain()
        XCTAssertEqual(Set(plain), ["rms_norm_q8K", "matvec_q4_K_q8_3", "gated_silu_split", "mmf_q4_K_1", "add_rms_norm"],
                       "kernels launched: \(plain)")
        XCTAssertEqual(b.kernelProfile().first { $0.name.hasPrefix("matvec_q4_K_q8_3") }?.calls, 2)
        // With the streaming forms from 1 token: the same fusions around them.
        let saved = CUDABackend.streamMinTokens
        CUDABackend.streamMinTokens = 1
        defer { CUDABackend.streamMinTokens = saved }
        let streaming = chain()
        XCTAssertEqual(Set(streaming), ["rms_norm_q8K", "matvec_stream_q4_K_q8", "gated_silu_split", "mmf_stream_q4_K_1",
                                        "add_rms_norm"], "kernels launched: \(streaming)")
        XCTAssertEqual(b.kernelProfile().first { $0.name.hasPrefix("matvec_stream_q4_K_q8") }?.calls, 2)
    }

    /// With the fused decode attention on (opt-in, KTRANSFORMERS_CUDA_ATTENTION_FUSED=1), a decode step's attention
    /// (every token its sequence's only one) is one launch, `attention_decode` (RoPE, the K/V store, split-K attention
    /// and the combine), whose output's Q8_K form the output projection takes (no quantize_q8_K); a step without that
    /// promise, `--batch-invariant` or the switch off runs the separate kernels (the conformance check
    /// `ropeStoreAndAttend` proves the bits equal).
    func testDecodeAttentionIsOneLaunch() throws {
        guard let b = try CUDABackend.makeIfPresent() else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA fusion test skipped")
        }
        b.reserve(ForwardPlan(maxTokens: 8, contextLength: 2048, maxQueryGroup: 4))
        let params = AttentionParams(nHead: 8, nKVHead: 2, headDim: 32, scale: 0.2)
        let wo = try b.prepare(q4K("blk.0.attn_output.weight", rows: 64, cols: 256))
        let cache = b.makeKVCache(pageSize: 16, numPages: 64, kDims: [64], vDims: [64])
        let table = b.makeRopeTable(RoPE(dims: 32, base: 10000, neox: true), positions: 2048)
        func ints(_ v: [Int32]) -> Tensor {
            let t = b.allocate(v.count)
            v.withUnsafeBufferPointer { b.write($0, to: t) }
            return t
        }
        let tables = ints((0..<40).map { Int32($0) })
        let q = b.upload((0..<512).map { Float($0 % 7) - 3 }), k = b.upload((0..<128).map { Float($0 % 5) - 2 })
        let v = b.upload((0..<128).map { Float($0 % 3) }), out = b.allocate(512), y = b.allocate(128)
        let pos = ints([300, 2]), slots = ints([300, 16 * 20 + 2]), seq = ints([0, 1])
        func step(oneTokenPerSequence: Bool) -> Set<Substring> {
            let meta = BatchMetadata(tokens: 2, positions: pos, slotMapping: slots, sequenceOfToken: seq, blockTables: tables,
                                     blockTableStride: 20, pageSize: 16, oneTokenPerSequence: oneTokenPerSequence)
            b.profiling = true
            b.resetKernelProfile()
            b.ropeStoreAndAttend(q: q, qNorm: nil, k: k, kNorm: nil, v: v, out: out, n: 2, table: table, eps: 1e-6,
                                 cache: cache, layer: 0, meta: meta, params: params)
            b.matmul(wo, out, y, n: 2, precision: .standard)
            b.profiling = false
            return Set(b.kernelProfile().map { $0.name.split(separator: " ")[0] })
        }
        let savedFused = CUDABackend.fusedDecodeAttention
        defer { CUDABackend.fusedDecodeAttention = savedFused }
        CUDABackend.fusedDecodeAttention = true   // (opt-in: KTRANSFORMERS_CUDA_ATTENTION_FUSED=1)
        _ = step(oneTokenPerSequence: true)   // (the first allocates the partials and counters)
        let fused = step(oneTokenPerSequence: true)
        XCTAssertTrue(fused.contains("attention_decode"), "kernels launched: \(fused)")
        XCTAssertTrue(fused.isDisjoint(with: ["rope_store_kv", "attention", "attention_combine_q8K", "quantize_q8_K"]),
                      "kernels launched: \(fused)")
        XCTAssertEqual(fused.count, 2, "kernels launched: \(fused)")
        let apart = step(oneTokenPerSequence: false)
        XCTAssertTrue(apart.isSuperset(of: ["rope_store_kv", "attention", "attention_combine_q8K"]), "kernels launched: \(apart)")
        XCTAssertFalse(apart.contains("attention_decode"))
        b.batchInvariant = true
        XCTAssertFalse(step(oneTokenPerSequence: true).contains("attention_decode"))
        b.batchInvariant = false
        CUDABackend.fusedDecodeAttention = false
        XCTAssertFalse(step(oneTokenPerSequence: true).contains("attention_decode"))
    }

    /// The routed experts at one token (all on the GPU, Q4_K): the down projection adds the experts' weighted rows
    /// itself (matvec_experts_q4_K_f32_combine, no moe_combine), into `out` (accumulate) or over it (store), with the
    /// bits of the two launches (KTRANSFORMERS_CUDA_MOE_COMBINE_FUSED=0).
    func testOneTokenExpertsCombineInTheDownProjection() throws {
        guard let b = try CUDABackend.makeIfPresent() else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA fusion test skipped")
        }
        let dim = 512, ff = 768, nExpert = 16, topK = 8
        let (experts, executor) = try expertLayer(b, dim: dim, ff: ff, nExpert: nExpert, topK: topK)
        let x = b.upload((0..<dim).map { Float($0 % 11) * 0.02 - 0.1 })
        let ids = b.allocate(topK)
        [Int32]([3, 9, 0, 15, 7, 1, 12, 5]).withUnsafeBufferPointer { b.write($0, to: ids) }
        let weights = b.upload([0.3, 0.2, 0.1, 0.1, 0.1, 0.08, 0.07, 0.05])
        let out = b.allocate(dim), start = (0..<dim).map { Float($0 % 7) - 3 }
        let savedFused = CUDABackend.fusedExpertCombine, savedInNorm = CUDABackend.combineInNorm
        func run(fused: Bool, store: Bool) -> (kernels: Set<Substring>, out: [UInt32]) {
            CUDABackend.fusedExpertCombine = fused
            CUDABackend.combineInNorm = false  // (the combine in its own launch, not left for the next op)
            defer { CUDABackend.fusedExpertCombine = savedFused; CUDABackend.combineInNorm = savedInNorm }
            start.withUnsafeBufferPointer { b.write($0, to: out) }
            b.profiling = true
            b.resetKernelProfile()
            executor.submit(experts, x: x, ids: ids, n: 1, topK: topK)
            if store { XCTAssertTrue(executor.wait(weights: weights, storeInto: out, n: 1)) }
            else { executor.wait(weights: weights, accumulateInto: out, n: 1) }
            b.profiling = false
            let kernels = Set(b.kernelProfile().map { $0.name.split(separator: " ")[0] })
            return (kernels, Array(UnsafeBufferPointer(start: b.read(out, count: dim), count: dim)).map(\.bitPattern))
        }
        for store in [false, true] {
            let fused = run(fused: true, store: store), apart = run(fused: false, store: store)
            XCTAssertTrue(fused.kernels.contains("matvec_experts_q4_K_f32_combine"), "kernels launched: \(fused.kernels)")
            XCTAssertFalse(fused.kernels.contains("moe_combine"), "kernels launched: \(fused.kernels)")
            XCTAssertTrue(apart.kernels.isSuperset(of: ["matvec_experts_q4_K_f32_r4", "moe_combine"]), "kernels launched: \(apart.kernels)")
            XCTAssertEqual(fused.out, apart.out, "store: \(store)")
        }
    }

    /// The routed experts' combine (store form) is left for the op after it: the residual add and norm of its output
    /// run it in their launch (add_rms_norm_combine, no moe_combine), any other op launches it first; the same
    /// bits as the two launches (the default; KTRANSFORMERS_CUDA_COMBINE_NORM=1 turns the combined form on), at 1 and 3
    /// tokens.
    func testExpertsCombineInTheNormAfterThem() throws {
        guard let b = try CUDABackend.makeIfPresent() else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA fusion test skipped")
        }
        let dim = 512, ff = 768, nExpert = 16, topK = 8
        let (experts, executor) = try expertLayer(b, dim: dim, ff: ff, nExpert: nExpert, topK: topK)
        let saved = CUDABackend.combineInNorm
        defer { CUDABackend.combineInNorm = saved }
        for n in [1, 3] {
            let x = b.upload((0..<n * dim).map { Float(($0 * 7) % 11) * 0.02 - 0.1 })
            let ids = b.allocate(n * topK)
            (0..<n * topK).map { Int32(($0 * 5 + $0 / topK) % nExpert) }.withUnsafeBufferPointer { b.write($0, to: ids) }
            let weights = b.upload((0..<n * topK).map { 0.3 - Float($0 % topK) * 0.03 })
            let out = b.allocate(n * dim), residual = b.allocate(n * dim), xn = b.allocate(n * dim), other = b.allocate(16)
            let norm = b.upload((0..<dim).map { 0.5 + Float($0 % 5) * 0.1 })
            let start = (0..<n * dim).map { Float($0 % 7) - 3 }
            func run(inNorm: Bool, opBetween: Bool) -> (kernels: Set<Substring>, bits: [UInt32]) {
                CUDABackend.combineInNorm = inNorm
                start.withUnsafeBufferPointer { b.write($0, to: residual) }
                b.profiling = true
                b.resetKernelProfile()
                executor.submit(experts, x: x, ids: ids, n: n, topK: topK)
                XCTAssertTrue(executor.wait(weights: weights, storeInto: out, n: n))
                if opBetween { b.fill(other, count: 16, value: 0) }
                b.addRMSNorm(out, into: residual, weight: norm, out: xn, rows: n, dim: dim, eps: 1e-6)
                b.profiling = false
                let kernels = Set(b.kernelProfile().map { $0.name.split(separator: " ")[0] })
                let values = [out, residual, xn].flatMap { Array(UnsafeBufferPointer(start: b.read($0, count: n * dim), count: n * dim)) }
                return (kernels, values.map(\.bitPattern))
            }
            let fused = run(inNorm: true, opBetween: false), apart = run(inNorm: false, opBetween: false)
            let between = run(inNorm: true, opBetween: true)
            XCTAssertFalse(fused.kernels.contains("moe_combine"), "\(n) tokens: kernels launched: \(fused.kernels)")
            XCTAssertTrue(fused.kernels.contains("add_rms_norm_combine"), "\(n) tokens: kernels launched: \(fused.kernels)")
            XCTAssertTrue(apart.kernels.contains("moe_combine") && apart.kernels.contains("add_rms_norm"),
                          "\(n) tokens: kernels launched: \(apart.kernels)")
            XCTAssertTrue(between.kernels.contains("moe_combine"), "\(n) tokens: kernels launched: \(between.kernels)")
            XCTAssertEqual(fused.bits, apart.bits, "\(n) tokens")
            XCTAssertEqual(between.bits, apart.bits, "\(n) tokens")
            [x, ids, weights, out, residual, xn, other, norm].forEach { b.release($0) }
        }
    }

    /// Programmatic dependent launch: a kernel that follows a kernel on the stream is launched as a dependent (it
    /// may start early and waits for its predecessor itself), one that follows other work (a copy) is not; with
    /// `dependentLaunches` off none is. The results are the same bits either way.
    func testKernelsAfterKernelsLaunchAsDependents() throws {
        guard let b = try CUDABackend.makeIfPresent() else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA fusion test skipped")
        }
        let dim = 512, ff = 768, n = 1
        let (gate, up, down) = try mlp(b, dim: dim, ff: ff)
        let norm = b.upload([Float](repeating: 1, count: dim))
        let xn = b.allocate(n * dim), g = b.allocate(n * ff), u = b.allocate(n * ff), y = b.allocate(n * dim)
        func chain(dependent: Bool) -> (launched: Int, out: [Float]) {
            b.profiling = false
            b.dependentLaunches = dependent
            let x = b.upload((0..<(n * dim)).map { Float($0 % 13) - 6 })   // a copy: the next kernel waits as usual
            let before = b.dependentLaunchCount
            b.rmsNorm(x, weight: norm, out: xn, rows: n, dim: dim, stride: dim, eps: 1e-5)
            b.matmulGroup(gate, g, up, u, nil, nil, x: xn, n: n)
            b.gatedActivation(g, u, count: n * ff, .silu)
            b.matmul(down, g, y, n: n, precision: .f32Activations)
            let launched = b.dependentLaunchCount - before
            let p = b.read(y, count: n * dim)
            defer { b.release(x) }
            return (launched, Array(UnsafeBufferPointer(start: p, count: n * dim)))
        }
        let on = chain(dependent: true), off = chain(dependent: false)
        XCTAssertEqual(on.launched, 3, "the three kernels after the first launch as dependents")
        XCTAssertEqual(off.launched, 0)
        XCTAssertEqual(on.out, off.out)
        // A model step (it starts with `embed`) of more tokens than KTRANSFORMERS_CUDA_PDL_MAX (8) launches none.
        let table = try b.prepare(q4K("token_embd.weight", rows: 32, cols: dim))
        let tokens = b.allocate(16), rows = b.allocate(16 * dim)
        let ids = [Int32](repeating: 3, count: 16)
        ids.withUnsafeBufferPointer { b.write($0, to: tokens) }
        b.dependentLaunches = true
        b.embed(table, tokens: tokens, n: 16, out: rows, scale: 1)
        let before = b.dependentLaunchCount
        b.rmsNorm(rows, weight: norm, out: rows, rows: 16, dim: dim, stride: dim, eps: 1e-5)
        XCTAssertEqual(b.dependentLaunchCount, before, "a 16-token step's kernels wait as usual")
        b.embed(table, tokens: tokens, n: 1, out: rows, scale: 1)
        b.rmsNorm(rows, weight: norm, out: rows, rows: 1, dim: dim, stride: dim, eps: 1e-5)
        XCTAssertEqual(b.dependentLaunchCount, before + 2, "a one-token step's kernels are dependents")
    }

    /// Every kernel calls KT_PDL_WAIT (programmatic dependent launch lets a kernel start before its predecessor has
    /// finished: one that touched the activations without waiting would race): each `__global__` function's text,
    /// up to the next one, names it.
    func testEveryKernelWaitsForItsPredecessor() {
        let parts = CUDABackend.kernelSource.components(separatedBy: "__global__").dropFirst()
        XCTAssertGreaterThan(parts.count, 50)
        for part in parts {
            let name = part.prefix(160).replacingOccurrences(of: "\n", with: " ")
            XCTAssertTrue(part.contains("KT_PDL_WAIT"), "kernel without KT_PDL_WAIT: \(name)")
        }
    }

    /// Batch-1 decode takes the one-token kernels: batch invariant, the integer-dot one-token forms (gate/up) and
    /// mmf_q4_K_one, which sums the down projection's K splits itself (1280 wide: two splits), so no mmf_reduce
    /// launch; the down projection's output has the bits of the general kernels (KTRANSFORMERS_CUDA_MV1=0's path).
    /// By default the down projection runs on the FP32 cores instead (matvec_q4_K_f32_1): within f32 rounding.
    func testBatchOneMLPTakesTheOneTokenKernels() throws {
        guard let b = try CUDABackend.makeIfPresent() else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA fusion test skipped")
        }
        b.batchInvariant = true
        let dim = 512, ff = 1280
        let (gate, up, down) = try mlp(b, dim: dim, ff: ff)
        let x = b.upload((0..<dim).map { Float($0 % 13) - 6 }), norm = b.upload([Float](repeating: 1, count: dim))
        let xn = b.allocate(dim), g = b.allocate(ff), u = b.allocate(ff), y = b.allocate(dim)
        b.profiling = true
        b.resetKernelProfile()
        b.rmsNorm(x, weight: norm, out: xn, rows: 1, dim: dim, stride: dim, eps: 1e-5)
        b.matmulGroup(gate, g, up, u, nil, nil, x: xn, n: 1)
        b.gatedActivation(g, u, count: ff, .silu)
        b.matmul(down, g, y, n: 1, precision: .f32Activations)
        let kernels = Set(b.kernelProfile().map { $0.name.split(separator: " ")[0] })
        XCTAssertEqual(kernels, ["rms_norm_q8K", "matvec_q4_K_q8_3_1", "gated_silu_split", "mmf_q4_K_one"],
                       "kernels launched: \(kernels)")
        let one = Array(UnsafeBufferPointer(start: b.read(y, count: dim), count: dim))
        // The same product at n = 2 (a second row; row 0 is the same input): the block-staged tiles and mmf_reduce, ...
        let g2 = b.allocate(2 * ff), y2 = b.allocate(2 * dim)
        b.copyRows(g, srcStride: 0, g2, dstStride: ff, rows: 2, width: ff)
        b.resetKernelProfile()
        b.matmul(down, g2, y2, n: 2, precision: .f32Activations)
        let two = Array(UnsafeBufferPointer(start: b.read(y2, count: dim), count: dim))
        XCTAssertEqual(one.map(\.bitPattern), two.map(\.bitPattern))
        let blockKernels = Set(b.kernelProfile().map { $0.name.split(separator: " ")[0] })
        XCTAssertEqual(blockKernels, ["split_tf32", "mmf_block_q4_K_1", "mmf_reduce"], "kernels launched: \(blockKernels)")
        // ... and without them the 8-token kernel and mmf_reduce.
        let saved = CUDABackend.mmqBlockEnabled
        CUDABackend.mmqBlockEnabled = false
        defer { CUDABackend.mmqBlockEnabled = saved }
        b.resetKernelProfile()
        b.fill(y2, count: 2 * dim, value: 0)
        b.matmul(down, g2, y2, n: 2, precision: .f32Activations)
        let three = Array(UnsafeBufferPointer(start: b.read(y2, count: dim), count: dim))
        XCTAssertEqual(one.map(\.bitPattern), three.map(\.bitPattern))
        XCTAssertTrue(b.kernelProfile().contains { $0.name.hasPrefix("mmf_reduce") })
        // The default: the FP32-core kernel (its input's group sums from split_tf32: other ops ran since SwiGLU),
        // no K splits, no reduction; the same values to f32 rounding.
        b.batchInvariant = false
        b.fill(y, count: dim, value: 0)
        b.resetKernelProfile()
        let savedQ16 = CUDABackend.q16One
        CUDABackend.q16One = false
        b.matmul(down, g, y, n: 1, precision: .f32Activations)
        CUDABackend.q16One = savedQ16
        XCTAssertEqual(Set(b.kernelProfile().map { $0.name.split(separator: " ")[0] }), ["split_tf32", "matvec_q4_K_f32_1"])
        let fast = Array(UnsafeBufferPointer(start: b.read(y, count: dim), count: dim))
        let scale = one.map { abs($0) }.max()!
        XCTAssertGreaterThan(scale, 1)
        for i in 0..<dim { XCTAssertEqual(fast[i], one[i], accuracy: 1e-5 * scale, "row \(i)") }
        // The default: 16-bit integer inputs (quantized here: other ops ran since SwiGLU) and the persistent kernel;
        // within the inputs' 16-bit rounding.
        b.fill(y, count: dim, value: 0)
        b.resetKernelProfile()
        b.matmul(down, g, y, n: 1, precision: .f32Activations)
        XCTAssertEqual(Set(b.kernelProfile().map { $0.name.split(separator: " ")[0] }), ["quantize_q16_K", "matvec_q4_K_q16_p"])
        let q16 = Array(UnsafeBufferPointer(start: b.read(y, count: dim), count: dim))
        for i in 0..<dim { XCTAssertEqual(q16[i], one[i], accuracy: 1e-4 * scale, "row \(i)") }
        // After a one-token gate/up, SwiGLU writes that input itself (no quantize_q16_K), with the same bits.
        b.resetKernelProfile()
        b.rmsNorm(x, weight: norm, out: xn, rows: 1, dim: dim, stride: dim, eps: 1e-5)
        b.matmulGroup(gate, g, up, u, nil, nil, x: xn, n: 1)
        b.gatedActivation(g, u, count: ff, .silu)
        b.matmul(down, g, y, n: 1, precision: .f32Activations)
        XCTAssertEqual(Set(b.kernelProfile().map { $0.name.split(separator: " ")[0] }),
                       ["rms_norm_q8K", CUDABackend.registerInputs ? (CUDABackend.splitRows ? "matvec_q4_K_q8_ps1" : "matvec_q4_K_q8_pr1")
                                         : "matvec_q4_K_q8_pf", "gated_silu_q16",
                        "matvec_q4_K_q16_p"])
        let fused = Array(UnsafeBufferPointer(start: b.read(y, count: dim), count: dim))
        for i in 0..<dim { XCTAssertEqual(fused[i], one[i], accuracy: 1e-3 * scale, "row \(i)") }  // (gate/up's own bits)
        // The same product with the input quantized apart (an op between drops the prepared form): the same bits.
        b.fill(y, count: dim, value: 0)
        b.matmul(down, g, y, n: 1, precision: .f32Activations)
        let apart = Array(UnsafeBufferPointer(start: b.read(y, count: dim), count: dim))
        XCTAssertEqual(fused.map(\.bitPattern), apart.map(\.bitPattern))
    }

    /// Split-K attention whose output width is a multiple of 256 combines its splits and writes the output's Q8_K
    /// form in one launch (attention_combine_q8K); the output projection's integer-dot matmul takes it instead of
    /// quantizing: the same bits as with an op between the two (which drops the prepared form), one launch fewer.
    func testAttentionCombineHandsTheOutputProjectionItsQ8K() throws {
        guard let b = try CUDABackend.makeIfPresent() else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA fusion test skipped")
        }
        b.attentionSplitKeys = 4
        defer { b.attentionSplitKeys = nil }
        let params = AttentionParams(nHead: 4, nKVHead: 2, headDim: 64, scale: 0.125)
        let width = params.nHead * params.headDimV, kvDim = params.nKVHead * params.headDim, len = 20, n = 2
        b.reserve(ForwardPlan(maxTokens: len, contextLength: 64, maxQueryGroup: 2))
        let wo = try b.prepare(q4K("blk.0.attn_output.weight", rows: 96, cols: width))
        let cache = b.makeKVCache(pageSize: 4, numPages: 16, kDims: [kvDim], vDims: [kvDim])
        let tables = Self.ints(b, (0..<16).map { Int32($0) })
        func meta(_ positions: [Int]) -> BatchMetadata {
            BatchMetadata(tokens: positions.count, positions: Self.ints(b, positions.map { Int32($0) }),
                          slotMapping: Self.ints(b, positions.map { Int32($0) }), sequenceOfToken: Self.ints(b, [Int32](repeating: 0, count: positions.count)),
                          blockTables: tables, blockTableStride: 16, pageSize: 4)
        }
        b.storeKV(k: b.upload(Self.normals(len * kvDim)), v: b.upload(Self.normals(len * kvDim)), n: len, cache: cache, layer: 0,
                  meta: meta(Array(0..<len)))
        let q = b.upload(Self.normals(n * params.nHead * params.headDim)), out = b.allocate(n * width), y = b.allocate(n * 96)
        let other = b.allocate(16), m = meta([len - 2, len - 1])
        func run(apart: Bool) -> (values: [Float], kernels: [Substring]) {
            b.profiling = true
            b.resetKernelProfile()
            b.attention(q: q, out: out, n: n, cache: cache, layer: 0, meta: m, params: params)
            if apart { b.fill(other, count: 16, value: 0) }
            b.matmul(wo, out, y, n: n, precision: .standard)
            return (Self.floats(b, out, n * width) + Self.floats(b, y, n * 96), b.kernelProfile().map { $0.name.split(separator: " ")[0] })
        }
        let fused = run(apart: false), apart = run(apart: true)
        XCTAssertEqual(fused.values.map(\.bitPattern), apart.values.map(\.bitPattern))
        XCTAssertTrue(fused.kernels.contains("attention_combine_q8K"), "kernels launched: \(fused.kernels)")
        XCTAssertFalse(fused.kernels.contains("quantize_q8_K"), "kernels launched: \(fused.kernels)")
        XCTAssertTrue(apart.kernels.contains("quantize_q8_K"), "kernels launched: \(apart.kernels)")
    }

    /// Attention with one key split (the reserved context fits one, or the step's largest position reaches only the
    /// first) writes the output's Q8_K form from the grouped kernel's blocks (two 128-wide heads a block: 256 values)
    /// and no combine runs; the output projection takes that form: the same bits as 16 splits combined.
    func testOneSplitAttentionHandsTheOutputProjectionItsQ8K() throws {
        guard let b = try CUDABackend.makeIfPresent() else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA fusion test skipped")
        }
        defer { b.attentionSplitKeys = nil }
        let params = AttentionParams(nHead: 4, nKVHead: 2, headDim: 128, scale: 0.09)
        let width = params.nHead * params.headDimV, kvDim = params.nKVHead * params.headDim, len = 4, n = 2
        b.reserve(ForwardPlan(maxTokens: len, contextLength: 64, maxQueryGroup: 2))
        let wo = try b.prepare(q4K("blk.0.attn_output.weight", rows: 96, cols: width))
        let cache = b.makeKVCache(pageSize: 4, numPages: 16, kDims: [kvDim], vDims: [kvDim])
        let tables = Self.ints(b, (0..<16).map { Int32($0) })
        func meta(_ positions: [Int], told: Bool = false) -> BatchMetadata {
            BatchMetadata(tokens: positions.count, positions: Self.ints(b, positions.map { Int32($0) }),
                          slotMapping: Self.ints(b, positions.map { Int32($0) }), sequenceOfToken: Self.ints(b, [Int32](repeating: 0, count: positions.count)),
                          blockTables: tables, blockTableStride: 16, pageSize: 4, maxPosition: told ? positions.max() : nil)
        }
        b.storeKV(k: b.upload(Self.normals(len * kvDim)), v: b.upload(Self.normals(len * kvDim)), n: len, cache: cache, layer: 0,
                  meta: meta(Array(0..<len)))
        let q = b.upload(Self.normals(n * params.nHead * params.headDim)), out = b.allocate(n * width), y = b.allocate(n * 96)
        let other = b.allocate(16)
        func run(splitKeys: Int?, told: Bool, apart: Bool = false) -> (values: [Float], kernels: [Substring]) {
            b.attentionSplitKeys = splitKeys
            b.profiling = true
            b.resetKernelProfile()
            b.attention(q: q, out: out, n: n, cache: cache, layer: 0, meta: meta([len - 2, len - 1], told: told), params: params)
            if apart { b.fill(other, count: 16, value: 0) }
            b.matmul(wo, out, y, n: n, precision: .standard)
            b.profiling = false
            return (Self.floats(b, out, n * width) + Self.floats(b, y, n * 96), b.kernelProfile().map { $0.name.split(separator: " ")[0] })
        }
        let split = run(splitKeys: 4, told: false)  // 16 splits launched, one holding keys
        XCTAssertTrue(split.kernels.contains("attention_combine_q8K"), "kernels launched: \(split.kernels)")
        for (keys, told) in [(nil, false), (4, true)] as [(Int?, Bool)] {
            let one = run(splitKeys: keys, told: told), apart = run(splitKeys: keys, told: told, apart: true)
            let label = "split keys \(keys.map(String.init) ?? "automatic"), largest position told: \(told)"
            XCTAssertEqual(one.values.map(\.bitPattern), split.values.map(\.bitPattern), label)
            XCTAssertEqual(apart.values.map(\.bitPattern), split.values.map(\.bitPattern), label)
            XCTAssertTrue(one.kernels.contains("attention_gqa2"), "\(label): kernels launched: \(one.kernels)")
            XCTAssertFalse(one.kernels.contains("attention_combine_q8K") || one.kernels.contains("quantize_q8_K"),
                           "\(label): kernels launched: \(one.kernels)")
            XCTAssertTrue(apart.kernels.contains("quantize_q8_K"), "\(label): kernels launched: \(apart.kernels)")
        }
    }

    /// A batch-1 q/k/v projection of three Q4_K matrices followed by `ropeAndStoreKV` without per-head norms is one
    /// launch (matvec_q4_K_q8_ps<N>_rope: the RoPE and the K/V store in the projection's epilogue) with the bits of
    /// the projection, then rope_store_kv: at 1, 2 and 4 steps a row, NeoX and normal pairs, partial rotation, and
    /// with an op in between (the plain kernels) or the fusion switched off.
    func testQKVProjectionRunsTheRopeAndStoreInItsEpilogue() throws {
        guard let b = try CUDABackend.makeIfPresent() else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA fusion test skipped")
        }
        let saved = CUDABackend.ropeInProjection
        defer { CUDABackend.ropeInProjection = saved }
        let headDim = 64, qHeads = 4, kHeads = 2, qRows = qHeads * headDim, kvRows = kHeads * headDim
        b.reserve(ForwardPlan(maxTokens: 4, contextLength: 64, maxQueryGroup: 2))
        let position = 13, slot = 22
        let meta = BatchMetadata(tokens: 1, positions: Self.ints(b, [Int32(position)]), slotMapping: Self.ints(b, [Int32(slot)]),
                                 sequenceOfToken: Self.ints(b, [0]), blockTables: Self.ints(b, (0..<16).map { Int32($0) }),
                                 blockTableStride: 16, pageSize: 4)
        let other = b.allocate(16)
        for cols in [1024, 2048, 4096] {
            let wq = try b.prepare(q4K("blk.0.attn_q.weight", rows: qRows, cols: cols))
            let wk = try b.prepare(q4K("blk.0.attn_k.weight", rows: kvRows, cols: cols))
            let wv = try b.prepare(q4K("blk.0.attn_v.weight", rows: kvRows, cols: cols))
            let x = b.upload(Self.normals(cols))
            for (neox, dims) in [(false, headDim), (true, headDim), (false, headDim / 2), (true, headDim / 2)] {
                let table = b.makeRopeTable(RoPE(dims: dims, base: 10000, neox: neox), positions: 64)
                func run(fused: Bool, apart: Bool) -> (values: [Float], kernels: [Substring]) {
                    CUDABackend.ropeInProjection = fused
                    let q = b.allocate(qRows), k = b.allocate(kvRows), v = b.allocate(kvRows)
                    let cache = b.makeKVCache(pageSize: 4, numPages: 16, kDims: [kvRows], vDims: [kvRows])
                    b.fill(cache.k(0), count: 64 * kvRows, value: 0)
                    b.fill(cache.v(0), count: 64 * kvRows, value: 0)
                    b.profiling = true
                    b.resetKernelProfile()
                    b.matmulGroup(wq, q, wk, k, wv, v, x: x, n: 1)
                    if apart { b.fill(other, count: 16, value: 0) }
                    b.ropeAndStoreKV(q: q, qHeads: qHeads, qNorm: nil, k: k, kHeads: kHeads, kNorm: nil, v: v,
                                     headDim: headDim, n: 1, table: table, eps: 1e-6, cache: cache, layer: 0, meta: meta)
                    b.profiling = false
                    let values = Self.floats(b, q, qRows) + Self.floats(b, k, kvRows) + Self.floats(b, v, kvRows) + Self.floats(b, cache.k(0), 64 * kvRows)
                        + Self.floats(b, cache.v(0), 64 * kvRows)
                    return (values, b.kernelProfile().map { $0.name.split(separator: " ")[0] }.filter { $0 != "quantize_q8_K" })
                }
                let label = "cols \(cols), neox \(neox), dims \(dims)"
                let plain = run(fused: false, apart: false), fused = run(fused: true, apart: false)
                let apart = run(fused: true, apart: true)
                let steps = cols / 1024
                XCTAssertEqual(plain.kernels.sorted(), ["matvec_q4_K_q8_ps\(steps)", "rope_store_kv"], label)
                XCTAssertEqual(fused.kernels, ["matvec_q4_K_q8_ps\(steps)_rope"], label)
                XCTAssertEqual(apart.kernels.sorted(), ["fill", "matvec_q4_K_q8_ps\(steps)", "rope_store_kv"], label)
                XCTAssertEqual(fused.values.map(\.bitPattern), plain.values.map(\.bitPattern), label)
                XCTAssertEqual(apart.values.map(\.bitPattern), plain.values.map(\.bitPattern), label)
                // The cache row was written (a store that went nowhere would also give equal zeros).
                XCTAssertTrue(fused.values[(qRows + 2 * kvRows + slot * kvRows)...].prefix(kvRows).contains { $0 != 0 }, label)
            }
        }
    }
}
