import Backend
import BackendCUDA
import Engine
import Models
import XCTest

/// Prefill's cuBLAS f16 GEMMs (CUDABackend.gemmMinTokens) and f16 flash attention (flashMinTokens) on every tiny
/// architecture: both forced from 2 tokens, each
/// reference prompt's one-pass logits stay within issue 12's bar for the GPU (f32 models: max error ≤ 1e-2 of the
/// logits' max, argmax everywhere). The q8_0 models' references round every matmul input to 8-bit blocks as ggml
/// does, which the f16 GEMMs do not: their logits differ by that rounding (~3% of the max here), so for them the
/// bound is 5e-2 and the argmax must agree wherever the reference's top two are further apart than that (12
/// positions are too few for a 95% share to mean anything). The GEMMs round weights and inputs to f16,
/// so these logits are not bit-equal to token-by-token decoding (GoldenLogitsTests' invariance holds below the
/// threshold, which the default, 128 tokens, keeps their prompts under). Runs on a GPU or the CUDA emulator
/// (with its cuBLAS: KTRANSFORMERS_CUBLAS); skipped, visibly, elsewhere.
final class CUDAGemmPrefillTests: XCTestCase {
    nonisolated(unsafe) static var shared: Result<CUDABackend?, Error>?
    private var saved = (0, 0)

    override func setUp() {
        saved = (CUDABackend.gemmMinTokens, CUDABackend.flashMinTokens)
        CUDABackend.gemmMinTokens = 2
        CUDABackend.flashMinTokens = 2
    }
    override func tearDown() { (CUDABackend.gemmMinTokens, CUDABackend.flashMinTokens) = saved }

    /// `--batch-invariant`: with the f16 paths forced from 2 tokens but the backend batch invariant, a one-pass
    /// prefill runs no GEMM and gives token-by-token decoding's logits bit for bit.
    func testBatchInvariantKeepsTheExactKernels() throws {
        let backend = try sharedCUDABackend(&Self.shared)
        backend.batchInvariant = true
        defer { backend.batchInvariant = false }
        let model = try TinyModels.load("llama", backend: backend)
        let tokens = try TinyModels.reference("llama").tokens
        let vocab = model.info.vocabSize
        let before = backend.gemmCalls
        let onePass = try Generator(model: model)
        let (l, rows) = try onePass.forward(tokens, start: 0, logits: .all)
        let full = Array(UnsafeBufferPointer(start: l, count: rows * vocab))
        XCTAssertEqual(backend.gemmCalls, before, "a batch-invariant backend ran cuBLAS GEMMs")
        let stepwise = try Generator(model: model)
        for i in 0..<tokens.count {
            let (ls, _) = try stepwise.forward([tokens[i]], start: i, logits: .last)
            XCTAssertEqual(Array(UnsafeBufferPointer(start: ls, count: vocab)), Array(full[i * vocab..<(i + 1) * vocab]),
                           "position \(i): one pass differs from token by token")
        }
    }

    func testEveryArchitectureWithinTheGPUBarOnF16GEMMs() throws {
        let backend = try sharedCUDABackend(&Self.shared)
        guard backend.gemmSummary.contains("cuBLAS") && !backend.gemmSummary.contains("no cuBLAS") else {
            throw XCTSkip("no cuBLAS here (\(backend.gemmSummary)): the GEMM path is not testable")
        }
        for name in TinyModels.all {
            let model = try TinyModels.load(name, backend: backend)
            let ref = try TinyModels.reference(name)
            let vocab = model.info.vocabSize
            let before = backend.gemmCalls
            let gen = try Generator(model: model)
            let (logits, rows) = try gen.forward(ref.tokens, start: 0, logits: .all)
            XCTAssertGreaterThan(backend.gemmCalls, before, "\(name): the prompt's matmuls did not run on cuBLAS")
            let refFlat = ref.logits.flatMap { $0.map(Float.init) }
            let scale = refFlat.reduce(0) { max($0, abs($1)) }
            var err: Float = 0
            for i in 0..<rows * vocab { err = max(err, abs(logits[i] - refFlat[i])) }
            let rounded = name.hasSuffix("q8_0")
            let bound: Float = rounded ? 5e-2 : 1e-2
            var agree = 0
            for p in 0..<rows {
                let ours = Int(Sampler.argmax(logits + p * vocab, count: vocab))
                let sorted = ref.logits[p].indices.sorted { ref.logits[p][$0] > ref.logits[p][$1] }
                if ours == sorted[0] { agree += 1; continue }
                let gap = Float(ref.logits[p][sorted[0]] - ref.logits[p][sorted[1]])
                XCTAssertTrue(rounded && gap <= bound * scale,
                              "\(name): argmax differs at position \(p) on the f16 GEMMs (reference's top-2 gap \(gap / scale) of the max)")
            }
            print(String(format: "%@ on f16 GEMMs: max |ours - ref| / max |ref| = %.3g, argmax %d/%d", name, err / scale, agree, rows))
            XCTAssertLessThanOrEqual(err, bound * scale, "\(name): logits on the f16 GEMMs beyond \(bound) of the logits' max")
        }
    }
}
