// The backend conformance suite under XCTest: every backend in `BackendConformance.backends`
// (Sources/BackendConformance/Backends.swift, where a new backend is one line) runs every check. The same checks run
// from the command line, where no Swift toolchain is (the GPU machine): `ktransformers devices --conformance`.
import Backend
@testable import BackendConformance
@testable import BackendCUDA
import XCTest

final class BackendConformanceTests: XCTestCase {
    /// Runs the check `name` on a fresh instance of every available backend; skips when none is available.
    private func run(_ name: String) throws {
        guard let check = BackendConformance.checks.first(where: { $0.name == name }) else {
            return XCTFail("no conformance check '\(name)'")
        }
        var ran = 0
        for (backendName, make) in BackendConformance.backends {
            guard let backend = try make() else {
                print("[\(backendName)] not available on this machine: conformance checks skipped")
                continue
            }
            let c = BackendConformance(name: backendName, backend: backend)
            for f in Expect.collect({ try check.run(c) }) {
                XCTFail("[\(backendName)] \(name): \(f)")
            }
            ran += 1
        }
        if ran == 0 { throw XCTSkip("no backend available") }
    }

    func testEveryCheckIsListed() {
        XCTAssertEqual(BackendConformance.checks.count, 19)
    }

    /// Every tensor-parallel collective available here (host memory always; logical devices of GPU 0 on a GPU or
    /// the CUDA emulator; every GPU where there are several): the rank-order sum on every rank, bit for bit.
    func testCollectives() throws {
        for (name, make) in BackendConformance.collectives {
            guard let (backends, collective) = try make() else {
                print("[collective: \(name)] not available on this machine: skipped")
                continue
            }
            for f in Expect.collect({ BackendConformance.checkCollective(backends: backends, collective: collective) }) {
                XCTFail("[collective: \(name)] \(f)")
            }
        }
    }

    func testMemory() throws { try run("memory") }
    func testEmbed() throws { try run("embed") }
    func testRMSNorm() throws { try run("rmsNorm") }
    func testMatmul() throws { try run("matmul") }
    func testMatmulGroup() throws { try run("matmulGroup") }
    func testMatmulPrefill() throws { try run("matmulPrefill") }
    func testChainedOps() throws { try run("chainedOps") }
    func testMatmulHeads() throws { try run("matmulHeads") }
    func testElementwise() throws { try run("elementwise") }
    func testRoPE() throws { try run("rope") }
    func testRopeAndStoreKV() throws { try run("ropeAndStoreKV") }
    func testAddRMSNorm() throws { try run("addRMSNorm") }
    func testRopeStoreAndAttend() throws { try run("ropeStoreAndAttend") }
    func testPagedAttention() throws { try run("attention") }
    func testPagedAttentionPrefill() throws { try run("attentionPrefill") }
    func testMoESelect() throws { try run("moeSelect") }
    func testArgmaxRows() throws { try run("argmaxRows") }
    func testExpertExecutor() throws { try run("expertExecutor") }
    func testStagedExpertExecutor() throws { try run("stagedExpertExecutor") }
}

/// The CUDA backend's streaming kernels at every token count: by default the block-staged tiles take 2 to 32 tokens
/// of Q4_K matrices, the streaming forms the rest from 9 tokens (`CUDABackend.streamMinTokens`) and the plain kernels
/// below, so the checks above cover those; these run the matmul and expert checks again with the block-staged tiles
/// off and the streaming forms at every count.
final class CUDAStreamingConformanceTests: XCTestCase {
    private func run(_ names: [String]) throws {
        guard let backend = try CUDABackend.makeIfPresent() else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA streaming conformance skipped")
        }
        let saved = (CUDABackend.streamMinTokens, CUDABackend.mmqBlockEnabled)
        CUDABackend.streamMinTokens = 1
        CUDABackend.mmqBlockEnabled = false
        defer { (CUDABackend.streamMinTokens, CUDABackend.mmqBlockEnabled) = saved }
        let c = BackendConformance(name: "cuda, streaming from 1 token", backend: backend)
        for name in names {
            let check = try XCTUnwrap(BackendConformance.checks.first { $0.name == name })
            for f in Expect.collect({ try check.run(c) }) { XCTFail("[cuda streaming] \(name): \(f)") }
        }
    }

    func testMatmulsAndExpertsStreamingAtEveryCount() throws {
        try run(["matmul", "matmulGroup", "chainedOps", "expertExecutor"])
    }
}

/// The matmul checks with the persistent one-token kernels (batch-1 decode) on one block, so that each warp walks
/// several (tile, split) items or rows and loads the next ones' weights while it computes.
final class CUDAOneTokenConformanceTests: XCTestCase {
    func testOneTokenKernelsOnOneBlock() throws {
        guard let backend = try CUDABackend.makeIfPresent() else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA one-token conformance skipped")
        }
        CUDABackend.persistentBlocksCap = 1
        defer { CUDABackend.persistentBlocksCap = nil }
        // Default mode: the fast persistent form (within the bounds) and the 16-bit-input down projections, dense and
        // routed experts; batch-invariant with the exact persistent form (mode 2): bit for bit.
        // The fast form with the inputs in registers for rows of 1 to 4 steps of 1024 columns, and without them.
        // With the register-input forms, routed experts' gate/up too (KTRANSFORMERS_CUDA_MVR_EXPERTS=1).
        // The split form (rows of 1, 2 and 4 steps across a block's warps; 3 steps take the register ring), with
        // routed experts' gate/up on it too (the default; KTRANSFORMERS_CUDA_MVS_EXPERTS=0 off): on one block each warp walks many row
        // groups, past its ring's depth, through the shared-memory combine.
        let saved = (CUDABackend.persistentOneToken, CUDABackend.q16Experts, CUDABackend.registerInputs,
                     CUDABackend.registerExperts, CUDABackend.splitRows, CUDABackend.splitExperts)
        defer {
            (CUDABackend.persistentOneToken, CUDABackend.q16Experts, CUDABackend.registerInputs,
             CUDABackend.registerExperts, CUDABackend.splitRows, CUDABackend.splitExperts) = saved
        }
        let q16: [String] = ["matvec_q4_K_q16_p ", "matvec_experts_q4_K_q16_p ", "matvec_q4_K_q16_pk "]
        let splitForms: [String] = ["matvec_q4_K_q8_ps1 ", "matvec_q4_K_q8_ps2 ", "matvec_q4_K_q8_ps4 ",
                                    "matvec_q4_K_q8_pr3 ", "matvec_experts_q4_K_q8_ps1 ", "matvec_q4_K_q16_p ",
                                    "matvec_experts_q4_K_q16_p ", "matvec_q4_K_q16_ps "]
        let ringForms: [String] = (1...4).map { "matvec_q4_K_q8_pr\($0) " } + ["matvec_experts_q4_K_q8_pr1 "] + q16
        let cases: [(Bool, Bool, Bool, [String])] = [
            (false, true, true, splitForms),
            (false, true, false, ringForms),
            (false, false, false, ["matvec_q4_K_q8_pf "] + q16),
            (true, false, true, ["matvec_q4_K_q8_p "])]
        for (invariant, registers, split, expect) in cases {
            CUDABackend.persistentOneToken = invariant ? 2 : 1
            CUDABackend.q16Experts = !invariant
            CUDABackend.registerInputs = registers
            CUDABackend.registerExperts = registers
            CUDABackend.splitRows = split
            CUDABackend.splitExperts = split
            backend.batchInvariant = invariant
            let c = BackendConformance(name: "cuda, one-token kernels on one block"
                                       + (invariant ? ", batch-invariant" : !registers ? ", inputs not in registers"
                                          : split ? ", split rows" : ""),
                                       backend: backend)
            backend.profiling = true
            backend.resetKernelProfile()
            for name in ["matmul", "matmulGroup", "chainedOps", "expertExecutor"] {
                let check = try XCTUnwrap(BackendConformance.checks.first { $0.name == name })
                for f in Expect.collect({ try check.run(c) }) { XCTFail("[cuda one block] \(name): \(f)") }
            }
            // The persistent kernels ran, their warps walking many rows each (across the group's matrices).
            let launched = backend.kernelProfile().map(\.name)
            for k in expect { XCTAssertTrue(launched.contains { $0.hasPrefix(k) }, "\(k) not in \(launched)") }
        }
    }

    /// The plain one-token integer forms (`KTRANSFORMERS_CUDA_MVP=0`): still the bits of the batches.
    func testPlainOneTokenForms() throws {
        guard let backend = try CUDABackend.makeIfPresent() else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA one-token conformance skipped")
        }
        let saved = CUDABackend.persistentOneToken
        CUDABackend.persistentOneToken = 0
        defer { CUDABackend.persistentOneToken = saved }
        backend.batchInvariant = true
        let c = BackendConformance(name: "cuda, plain one-token forms", backend: backend)
        backend.profiling = true
        backend.resetKernelProfile()
        for name in ["matmul", "matmulGroup", "chainedOps"] {
            let check = try XCTUnwrap(BackendConformance.checks.first { $0.name == name })
            for f in Expect.collect({ try check.run(c) }) { XCTFail("[cuda plain one-token] \(name): \(f)") }
        }
        XCTAssertTrue(backend.kernelProfile().contains { $0.name.hasPrefix("matvec_q4_K_q8_3_1 ") })
    }
}

/// One-token kernel forms other than those the defaults pick, and the routed experts' down projection at 4 and 2 rows
/// a warp: each run of the checks also asserts that the forms under test launched.
final class CUDAContiguousOneTokenTests: XCTestCase {
    /// Runs `names` on a fresh CUDA backend (the checks prepare their weights after the caller set the switch, so the
    /// forms it selects are used) in
    /// the given mode, and fails unless every kernel of `expect` launched.
    private func run(_ names: [String], label: String, batchInvariant: Bool, expect: Set<String>) throws {
        guard let backend = try CUDABackend.makeIfPresent() else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA \(label) conformance skipped")
        }
        backend.batchInvariant = batchInvariant
        let c = BackendConformance(name: "cuda, \(label)", backend: backend)
        backend.profiling = true
        backend.resetKernelProfile()
        for name in names {
            let check = try XCTUnwrap(BackendConformance.checks.first { $0.name == name })
            for f in Expect.collect({ try check.run(c) }) { XCTFail("[cuda \(label)] \(name): \(f)") }
        }
        let launched = Set(backend.kernelProfile().map { String($0.name.split(separator: " ")[0]) })
        XCTAssertTrue(expect.isSubset(of: launched), "\(expect) not all in \(launched)")
    }

    /// The coalesced K-split forms of the one-token FP32-core down projection (`KTRANSFORMERS_CUDA_F32_ONE=2`, dense
    /// and routed experts), default mode: within the bounds.
    func testCoalescedF32OneTokenKernels() throws {
        let saved = (CUDABackend.f32OneCoalesced, CUDABackend.q16One)
        (CUDABackend.f32OneCoalesced, CUDABackend.q16One) = (true, false)
        defer { (CUDABackend.f32OneCoalesced, CUDABackend.q16One) = saved }
        try run(["matmul", "chainedOps", "expertExecutor"], label: "coalesced one-token f32 kernels",
                batchInvariant: false, expect: ["matvec_q4_K_f32_1c", "matvec_experts_q4_K_f32_1c"])
    }

    /// The routed experts' one-token FP32-core down projection at 4 rows a warp with the experts' combine (opt-in,
    /// `matvec_experts_q4_K_f32_combine`), without it (`matvec_experts_q4_K_f32_r4`, the default) and at 2 rows
    /// (`KTRANSFORMERS_CUDA_F32_ONE_ROWS=2`): each launched, each within the bounds.
    func testExpertDownProjectionRowsPerWarp() throws {
        let savedFused = CUDABackend.fusedExpertCombine
        let saved = (CUDABackend.f32OneExpertRows, CUDABackend.q16Experts, CUDABackend.f32OneCoalesced,
                     CUDABackend.f32OneBounded)
        defer {
            (CUDABackend.f32OneExpertRows, CUDABackend.q16Experts, CUDABackend.f32OneCoalesced) = (saved.0, saved.1, saved.2)
            CUDABackend.fusedExpertCombine = savedFused
        }
        try XCTSkipIf(saved.3, "KTRANSFORMERS_CUDA_F32_ONE_LB=1 keeps the 2-row form")
        (CUDABackend.q16Experts, CUDABackend.f32OneCoalesced) = (false, false)
        for (rows, fused, kernel) in [(4, true, "matvec_experts_q4_K_f32_combine"), (4, false, "matvec_experts_q4_K_f32_r4"),
                                      (2, true, "matvec_experts_q4_K_f32_1")] {
            CUDABackend.f32OneExpertRows = rows
            CUDABackend.fusedExpertCombine = fused
            try run(["expertExecutor"], label: "routed experts' one-token down projection, \(rows) rows a warp",
                    batchInvariant: false, expect: [kernel])
        }
    }

    /// The 4-row form has the 2-row form's bits, with the experts' combine in it or not: one token, two experts, rows
    /// of 5 super-blocks (two steps of the warps' loop, the second part-filled).
    func testExpertDownProjectionFourRowsKeepTheBits() throws {
        guard let backend = try CUDABackend.makeIfPresent() else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA expert down projection skipped")
        }
        let saved = (CUDABackend.f32OneExpertRows, CUDABackend.q16Experts, CUDABackend.f32OneCoalesced,
                     CUDABackend.f32OneBounded)
        defer { (CUDABackend.f32OneExpertRows, CUDABackend.q16Experts, CUDABackend.f32OneCoalesced) = (saved.0, saved.1, saved.2) }
        try XCTSkipIf(saved.3, "KTRANSFORMERS_CUDA_F32_ONE_LB=1 keeps the 2-row form")
        (CUDABackend.q16Experts, CUDABackend.f32OneCoalesced) = (false, false)
        backend.batchInvariant = false
        var rng = SplitMix64(seed: 77)
        let nExpert = 4, dim = 256, ff = 1280, topK = 2
        func stack(_ name: String, rows: Int, cols: Int) throws -> WeightStack {
            try backend.prepareStack(Host.weight(.q4_K, name: "blk.1.ffn_\(name)_exps.weight", rows: rows, cols: cols,
                                                 count: nExpert, rng: &rng).ref)
        }
        let experts = ExpertWeights(gate: try stack("gate", rows: ff, cols: dim), up: try stack("up", rows: ff, cols: dim),
                                    down: try stack("down", rows: dim, cols: ff))
        backend.reserve(ForwardPlan(maxTokens: 1, contextLength: 16, maxQueryGroup: 1))
        let executor = backend.makeExpertExecutor(nExpert: nExpert, dim: dim, ff: ff)
        executor.reserve(maxTokens: 1, topK: topK)
        let x = backend.upload(rng.normals(dim, scale: 0.1)), ids = backend.int32Tensor([2, 0]), w = backend.upload([0.7, 0.3])
        var results: [[UInt32]] = []
        let savedFused = CUDABackend.fusedExpertCombine
        defer { CUDABackend.fusedExpertCombine = savedFused }
        for (rows, fused) in [(4, true), (4, false), (2, true)] {
            CUDABackend.f32OneExpertRows = rows
            CUDABackend.fusedExpertCombine = fused
            backend.profiling = true
            backend.resetKernelProfile()
            let out = backend.allocate(dim)
            executor.submit(experts, x: x, ids: ids, n: 1, topK: topK)
            executor.wait(weights: w, accumulateInto: out, n: 1)
            results.append(backend.floats(out, dim).map(\.bitPattern))
            let launched = backend.kernelProfile().map(\.name)
            let kernel = rows == 2 ? "matvec_experts_q4_K_f32_1 " : fused ? "matvec_experts_q4_K_f32_combine " : "matvec_experts_q4_K_f32_r4 "
            XCTAssertTrue(launched.contains { $0.hasPrefix(kernel) }, "\(kernel) not in \(launched)")
        }
        XCTAssertTrue(results[0].contains { $0 != 0 }, "the experts added nothing")
        XCTAssertEqual(results[0], results[1], "4 rows a warp with the combine against without: not the same bits")
        XCTAssertEqual(results[1], results[2], "4 rows a warp against 2: not the same bits")
    }

    /// Batched `.f32Activations` (2 to 32 tokens) on the Q16_K int8 tiles (`mmq16_block_q4_K_1` / `_4`, the default
    /// outside batch-invariant mode): within the bounds (the matmul check's 2, 4, 5, 9, 17 and 32 tokens, rows of 2, 10
    /// and 17 super-blocks: one K split, three, five with a last split of one), the chained MLP ops (SwiGLU writing
    /// the inputs) bit for bit against the ops run apart; and with `KTRANSFORMERS_CUDA_Q16_BATCH=0` the split-tf32
    /// tiles again.
    func testBatchedF32ActivationsOnQ16Tiles() throws {
        let saved = CUDABackend.q16Batched
        defer { CUDABackend.q16Batched = saved }
        try XCTSkipUnless(CUDABackend.mmqBlockEnabled, "KTRANSFORMERS_CUDA_MMQ_BLOCK=0: no block-staged tiles")
        CUDABackend.q16Batched = true
        try run(["matmul", "chainedOps"], label: "batched f32 activations on Q16_K tiles", batchInvariant: false,
                expect: ["mmq16_block_q4_K_1", "mmq16_block_q4_K_4", "gated_silu_q16"])
        CUDABackend.q16Batched = false
        try run(["matmul"], label: "batched f32 activations on split-tf32 tiles", batchInvariant: false,
                expect: ["mmf_block_q4_K_1", "mmf_block_q4_K_4"])
    }

    /// The Q4_K one-token integer kernels with contiguous input loads (`KTRANSFORMERS_CUDA_MV1=2`): the bits of the
    /// other forms, so checked in batch-invariant mode, bit for bit.
    func testContiguousIntegerOneTokenKernelsKeepTheBits() throws {
        let saved = (CUDABackend.oneTokenCoalesced, CUDABackend.persistentOneToken)
        (CUDABackend.oneTokenCoalesced, CUDABackend.persistentOneToken) = (true, 0)
        defer { (CUDABackend.oneTokenCoalesced, CUDABackend.persistentOneToken) = saved }
        try run(["matmul", "matmulGroup", "chainedOps"], label: "batch-invariant, contiguous one-token q8 kernels",
                batchInvariant: true, expect: ["matvec_q4_K_q8_1c", "matvec_q4_K_q8_3_1c"])
    }
}

/// The quantized-input scratch's regions start 16-byte aligned for every size (the block-staged tiles copy the
/// per-16 sums in 16-byte pieces: an odd number of 256-blocks before them would misalign them).
final class CUDAQuantizedLayoutTests: XCTestCase {
    func testRegionsAreSixteenByteAligned() {
        for blocks in [1, 2, 3, 5, 7, 27, 135, 1001] {
            let l = CUDABackend.quantizedLayout(elements: 256 * blocks)
            XCTAssertEqual(l.scales % 4, 0, "\(blocks) blocks")
            XCTAssertEqual(l.sums % 4, 0, "\(blocks) blocks")
            XCTAssertGreaterThanOrEqual(l.scales * 4, 256 * blocks)           // the int8 values fit
            XCTAssertGreaterThanOrEqual(l.sums - l.scales, blocks)            // a scale per 256
            XCTAssertGreaterThanOrEqual(l.total - l.sums, 16 * blocks)        // a sum per 16
        }
    }
}

/// The matmul checks with the block-staged tiles in units of 4 and of 2 tiles (by default the width depends on the
/// matrix and the GPU's size), so that every form (warps splitting a unit's token tiles) gives the bits of the rest.
final class CUDABlockTilesConformanceTests: XCTestCase {
    func testEveryUnitWidth() throws {
        guard let backend = try CUDABackend.makeIfPresent() else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA block-tile conformance skipped")
        }
        defer { CUDABackend.mmqBlockTW = nil }
        for tw in [4, 2] {
            CUDABackend.mmqBlockTW = tw
            let c = BackendConformance(name: "cuda, block tiles of \(tw) tiles", backend: backend)
            for name in ["matmul", "matmulGroup"] {
                let check = try XCTUnwrap(BackendConformance.checks.first { $0.name == name })
                for f in Expect.collect({ try check.run(c) }) { XCTFail("[cuda block tiles \(tw)] \(name): \(f)") }
            }
        }
    }
}

/// The prefill conformance check with the GEMMs' weight scratch shrunk to 40 rows of 512: every matrix is decoded
/// and multiplied in chunks of rows (the path of matrices over 256 MiB in f16, such as a large vocabulary's output).
final class CUDAGemmChunksConformanceTests: XCTestCase {
    func testPrefillMatmulsInChunksOfRows() throws {
        let saved = CUDABackend.gemmScratchElements
        CUDABackend.gemmScratchElements = 40 * 512
        defer { CUDABackend.gemmScratchElements = saved }
        guard let backend = try CUDABackend.makeIfPresent() else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA GEMM chunks skipped")
        }
        guard !backend.gemmSummary.contains("no cuBLAS") else { throw XCTSkip("no cuBLAS here: \(backend.gemmSummary)") }
        let c = BackendConformance(name: "cuda, GEMM scratch of 40 rows", backend: backend)
        let check = try XCTUnwrap(BackendConformance.checks.first { $0.name == "matmulPrefill" })
        for f in Expect.collect({ try check.run(c) }) { XCTFail("[cuda GEMM chunks] \(f)") }
        XCTAssertGreaterThan(backend.gemmCalls, 30, "the 72-row matrices ran in chunks of 40 rows")
    }
}
