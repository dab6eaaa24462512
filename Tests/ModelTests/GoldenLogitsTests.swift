import Backend
import Engine
import Foundation
import Models
import XCTest

/// Every dense architecture against an independent float64 NumPy implementation (scripts/make_tiny_models.py)
/// on tiny random models: the whole sequence in one forward, then the equivalences the engine relies on
/// (one-pass prefill = chunked prefill = token by token; a batch of two sequences = each alone).
///
/// Tolerance: max |ours - ref| <= 1e-4 * max |ref| over all positions and the vocabulary (the engine computes
/// in float32; the reference in float64 on the same, exactly dequantized, weights), and the same argmax at
/// every position (the script makes sure the reference's top two are at least 1e-3 * max |ref| apart).
/// Measured (x86-64): about 1e-6 relative for every fixture (MoE ones included: 0.9e-6 to 2.1e-6).
///
/// MoE fixtures (scripts/make_tiny_moe_models.py): `mixtral` (stored as `llama`), `qwen2moe`, `qwen3moe`,
/// `qwen3moe-q8_0` (Q8_0 experts; the reference rounds the gate/up experts' input to Q8_0 as above),
/// `deepseek2` (V2 style: no q LoRA, unsplit attn_kv_b, softmax + group-limited greedy) and `deepseek2-v3` (q LoRA,
/// split attn_k_b/attn_v_b, YaRN, sigmoid + exp_probs_b + noaux_tc groups). The script keeps every routing
/// decision at least 1e-3 away from a tie, so float32 noise cannot change which experts run.
///
/// Variants: `<arch>` has f32 matrices; `qwen2-f16`, `gemma3-f16` (the latter with linear RoPE scaling 8 on its
/// global layers) F16 ones; `llama-q8_0`, `qwen3-q8_0` have Q8_0 token embedding, Q, K, V, gate and up, and F16
/// attn_output, ffn_down and output. Their reference rounds the inputs of the Q8_0 matrices to Q8_0 blocks as
/// ggml does before its integer dot (and the engine does), and the script picks weights where no such rounding
/// is within float32 noise of a tie, so the tight tolerance holds there too. If the engine stops rounding
/// those activations (or starts rounding attn_output/ffn_down/output inputs of Q8_0 weights, which these
/// files do not have), the Q8_0 variants move by ~1% and fail.
class GoldenLogitsTests: XCTestCase {
    static let relativeTolerance: Float = 1e-4

    /// The backend every test here runs the models on (CUDAGoldenLogitsTests runs them all again on the GPU).
    class func makeBackend() throws -> any ComputeBackend { CPUBackend(pool: TinyModels.pool) }

    func load(_ name: String) throws -> LanguageModel {
        try TinyModels.load(name, backend: try Self.makeBackend())
    }

    func testLlamaF32() throws { try checkGolden("llama") }
    func testLlamaQ8_0() throws { try checkGolden("llama-q8_0") }
    func testQwen2F32() throws { try checkGolden("qwen2") }
    func testQwen2F16() throws { try checkGolden("qwen2-f16") }
    func testQwen3F32() throws { try checkGolden("qwen3") }
    func testQwen3Q8_0() throws { try checkGolden("qwen3-q8_0") }
    func testGemma3F32() throws { try checkGolden("gemma3") }
    func testGemma3F16() throws { try checkGolden("gemma3-f16") }
    func testMixtral() throws { try checkGolden("mixtral") }
    func testQwen2MoE() throws { try checkGolden("qwen2moe") }
    func testQwen3MoE() throws { try checkGolden("qwen3moe") }
    func testQwen3MoEQ8_0() throws { try checkGolden("qwen3moe-q8_0") }
    func testDeepSeek2() throws { try checkGolden("deepseek2") }
    func testDeepSeek2V3() throws { try checkGolden("deepseek2-v3") }

    func testFixtureListCoversEveryRegisteredArchitecture() {
        XCTAssertEqual(Set(TinyModels.all.map(TinyModels.architecture)), Set(ModelRegistry.supportedArchitectures))
    }

    func checkGolden(_ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let model = try load(name)
        let ref = try TinyModels.reference(name)
        let vocab = model.info.vocabSize
        XCTAssertEqual(model.info.architecture, TinyModels.architecture(name), file: file, line: line)
        XCTAssertEqual(ref.logits.count, ref.tokens.count, file: file, line: line)
        XCTAssertEqual(ref.logits.first?.count, vocab, file: file, line: line)

        let gen = try Generator(model: model)
        let (logits, rows) = try gen.forward(ref.tokens, start: 0, logits: .all)
        XCTAssertEqual(rows, ref.tokens.count, file: file, line: line)

        let refFlat = ref.logits.flatMap { $0.map(Float.init) }
        let scale = refFlat.reduce(0) { max($0, abs($1)) }
        let err = refFlat.withUnsafeBufferPointer { maxAbsDiff(logits, $0.baseAddress!, rows * vocab) }
        print(String(format: "%@: max |ours - ref| = %.3g, max |ref| = %.3g, relative %.3g (tolerance %.0e)",
                     name, err, scale, err / scale, Self.relativeTolerance))
        XCTAssertLessThanOrEqual(err, Self.relativeTolerance * scale, "\(name): logits differ from the float64 reference",
                                 file: file, line: line)
        for p in 0..<rows {
            let ours = Sampler.argmax(logits + p * vocab, count: vocab)
            let theirs = ref.logits[p].indices.max { ref.logits[p][$0] < ref.logits[p][$1] }!
            XCTAssertEqual(Int(ours), theirs, "\(name): argmax differs at position \(p)", file: file, line: line)
        }
    }

    /// One-pass prefill, prefill in chunks of 5 (each chunk attends to the cached K/V of the previous ones),
    /// and one token per forward give the same logits at every position, bit for bit (batch invariance: every
    /// backend computes a token's row the same way whatever else is in the step).
    func testPrefillEqualsChunkedAndTokenByToken() throws {
        for name in TinyModels.all {
            let model = try load(name)
            let tokens = try TinyModels.reference(name).tokens
            let vocab = model.info.vocabSize
            let n = tokens.count

            let onePass = try Generator(model: model)
            let (l, rows) = try onePass.forward(tokens, start: 0, logits: .all)
            XCTAssertEqual(rows, n)
            let full = Array(UnsafeBufferPointer(start: l, count: n * vocab))
            let scale = full.withUnsafeBufferPointer { maxAbs($0.baseAddress!, n * vocab) }

            let chunked = try Generator(model: model, chunkSize: 5)
            let (lc, rowsC) = try chunked.forward(tokens, start: 0, logits: .all)
            XCTAssertEqual(rowsC, n)
            let errChunked = full.withUnsafeBufferPointer { maxAbsDiff(lc, $0.baseAddress!, n * vocab) }
            XCTAssertEqual(errChunked, 0, "\(name): chunked prefill differs from one pass")

            let stepwise = try Generator(model: model)
            var errStep: Float = 0
            for i in 0..<n {
                let (ls, r) = try stepwise.forward([tokens[i]], start: i, logits: .last)
                XCTAssertEqual(r, 1)
                let e = full.withUnsafeBufferPointer { maxAbsDiff(ls, $0.baseAddress! + i * vocab, vocab) }
                errStep = max(errStep, e)
            }
            XCTAssertEqual(errStep, 0, "\(name): token-by-token differs from one-pass prefill")
            print(String(format: "%@: chunked vs one pass %.3g, token by token vs one pass %.3g (max |logit| %.3g)",
                         name, errChunked, errStep, scale))
        }
    }

    /// Two sequences of different lengths in one ForwardBatch, each with its own block table over pages of one
    /// KVCache (interleaved, out of order), give the logits each gives alone; then one decode step of both in
    /// one batch (different positions) matches each sequence's own next step.
    func testBatchOfTwoSequencesEqualsEachAlone() throws {
        for name in TinyModels.f32 {
            let model = try load(name)
            let vocab = model.info.vocabSize
            let a = try TinyModels.reference(name).tokens               // 12 tokens
            let b: [Int32] = [7, 3, 60, 11, 94, 0, 25]                 // 7 tokens
            let nextA: Int32 = 40, nextB: Int32 = 81
            let pageSize = 4
            // Sequence A needs 4 pages (13 positions), B 2 (8 positions). B's narrower table goes in first, so
            // adding A's re-strides it.
            let tableA: [Int32] = [5, 0, 7, 10]
            let tableB: [Int32] = [2, 9]
            let cache = model.makeKVCache(pageSize: pageSize, numPages: 12)
            // Every row's logits come back from one pass: size the model for them.
            model.reserve(RunLimits(maxTokens: 64, maxSequences: 2, maxLogitsRows: 64, contextLength: 64))

            var batch = ForwardBatch(pageSize: pageSize)
            batch.addSequence(tokens: b, startPosition: 0, blockTable: tableB, logits: .all)
            batch.addSequence(tokens: a, startPosition: 0, blockTable: tableA, logits: .all)
            XCTAssertEqual(batch.logitsIndices.count, a.count + b.count)
            var joint = [Float](repeating: .nan, count: (a.count + b.count) * vocab)
            try joint.withUnsafeMutableBufferPointer { try model.forward(batch, cache: cache, logits: $0.baseAddress!) }

            var step = ForwardBatch(pageSize: pageSize)
            step.addSequence(tokens: [nextA], startPosition: a.count, blockTable: tableA, logits: .last)
            step.addSequence(tokens: [nextB], startPosition: b.count, blockTable: tableB, logits: .last)
            var jointStep = [Float](repeating: .nan, count: 2 * vocab)
            try jointStep.withUnsafeMutableBufferPointer { try model.forward(step, cache: cache, logits: $0.baseAddress!) }

            // Each alone, in its own cache.
            func alone(_ tokens: [Int32], _ next: Int32) throws -> (prefill: [Float], next: [Float]) {
                let gen = try Generator(model: model)
                let (l, rows) = try gen.forward(tokens, start: 0, logits: .all)
                let prefill = Array(UnsafeBufferPointer(start: l, count: rows * vocab))
                let (ln, _) = try gen.forward([next], start: tokens.count, logits: .last)
                return (prefill, Array(UnsafeBufferPointer(start: ln, count: vocab)))
            }
            let soloA = try alone(a, nextA), soloB = try alone(b, nextB)
            let scale = max(soloA.prefill.withUnsafeBufferPointer { maxAbs($0.baseAddress!, $0.count) },
                            soloB.prefill.withUnsafeBufferPointer { maxAbs($0.baseAddress!, $0.count) })
            func diff(_ x: [Float], _ xOffset: Int, _ y: [Float], _ count: Int) -> Float {
                x.withUnsafeBufferPointer { xp in
                    y.withUnsafeBufferPointer { yp in maxAbsDiff(xp.baseAddress! + xOffset, yp.baseAddress!, count) }
                }
            }
            // Logits come in batch order: B's tokens, then A's.
            let eB = diff(joint, 0, soloB.prefill, b.count * vocab)
            let eA = diff(joint, b.count * vocab, soloA.prefill, a.count * vocab)
            let eNextA = diff(jointStep, 0, soloA.next, vocab)
            let eNextB = diff(jointStep, vocab, soloB.next, vocab)
            XCTAssertEqual(eA, 0, "\(name): sequence A in a batch differs from A alone")
            XCTAssertEqual(eB, 0, "\(name): sequence B in a batch differs from B alone")
            XCTAssertEqual(eNextA, 0, "\(name): A's decode step in a batch differs from A alone")
            XCTAssertEqual(eNextB, 0, "\(name): B's decode step in a batch differs from B alone")
            print(String(format: "%@: batch vs alone: A %.3g, B %.3g, decode A %.3g, decode B %.3g (max |logit| %.3g)",
                         name, eA, eB, eNextA, eNextB, scale))
        }
    }
}
