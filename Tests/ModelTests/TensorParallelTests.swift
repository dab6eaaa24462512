import Backend
import Engine
import Foundation
import GGUF
import Models
import XCTest

/// Tensor parallelism (`ModelRegistry.loadTensorParallel`) on CPU backends, one per shard, summing through host
/// memory: every tiny architecture but MLA split over 2 shards (K/V heads split) and 4 shards (the 2 K/V heads
/// shared by the shards of their query heads; each expert's width split in the MoE ones) against its float64 reference at GoldenLogitsTests' tolerance and
/// against the unsplit model; one pass = chunked = token by token and a batch of two = each alone, bit for bit;
/// and the models or shard counts it cannot split refused with an error that says why. CUDATensorParallelTests
/// runs the same on two logical GPUs.
class TensorParallelTests: XCTestCase {
    /// The fixtures tensor parallelism splits: f32, f16 and Q8_0 variants of each dense architecture, and the MoE
    /// ones whose attention is not MLA (each expert's width split, the router whole).
    static let splittable = ["llama", "llama-q8_0", "qwen2", "qwen2-f16", "qwen3", "qwen3-q8_0", "gemma3", "gemma3-f16",
                             "mixtral", "qwen2moe", "qwen3moe"]

    /// The backends of `shards` shards (each CPU backend its own one-thread pool: the shards run concurrently).
    class func makeBackends(_ shards: Int) throws -> [any ComputeBackend] {
        (0..<shards).map { _ in CPUBackend(threads: 1) }
    }

    class func makeCollective(_ backends: [any ComputeBackend]) throws -> any Collective {
        HostCollective(ranks: backends.count)
    }

    func loadParallel(_ name: String, shards: Int) throws -> LanguageModel {
        let backends = try Self.makeBackends(shards)
        return try ModelRegistry.loadTensorParallel(GGUFFile(path: TinyModels.path(name, "gguf")), backends: backends,
                                                    collective: try Self.makeCollective(backends))
    }

    func testArchitecturesSplitOverShardsMatchTheReference() throws {
        for shards in [2, 4] {
            for name in Self.splittable {
                let model = try loadParallel(name, shards: shards)
                let whole = try TinyModels.load(name)
                let ref = try TinyModels.reference(name)
                let vocab = model.info.vocabSize
                let gen = try Generator(model: model), wholeGen = try Generator(model: whole)
                let (logits, rows) = try gen.forward(ref.tokens, start: 0, logits: .all)
                XCTAssertEqual(rows, ref.tokens.count)
                let split = Array(UnsafeBufferPointer(start: logits, count: rows * vocab))
                let (wl, _) = try wholeGen.forward(ref.tokens, start: 0, logits: .all)
                let refFlat = ref.logits.flatMap { $0.map(Float.init) }
                let scale = refFlat.reduce(0) { max($0, abs($1)) }
                let err = refFlat.withUnsafeBufferPointer { maxAbsDiff(split, $0.baseAddress!, rows * vocab) }
                let errWhole = split.withUnsafeBufferPointer { maxAbsDiff(wl, $0.baseAddress!, rows * vocab) }
                print(String(format: "%@ over %d shards: max |ours - ref| = %.3g (relative %.3g), max |split - whole| = %.3g",
                             name, shards, err, err / scale, errWhole))
                XCTAssertLessThanOrEqual(err, GoldenLogitsTests.relativeTolerance * scale,
                                         "\(name) over \(shards) shards: logits differ from the float64 reference")
                XCTAssertLessThanOrEqual(errWhole, GoldenLogitsTests.relativeTolerance * scale,
                                         "\(name) over \(shards) shards: logits differ from the unsplit model's")
                for p in 0..<rows {
                    let ours = Sampler.argmax(logits + p * vocab, count: vocab)
                    let theirs = ref.logits[p].indices.max { ref.logits[p][$0] < ref.logits[p][$1] }!
                    XCTAssertEqual(Int(ours), theirs, "\(name) over \(shards) shards: argmax differs at position \(p)")
                }
            }
        }
    }

    /// The engine's equivalences hold across shards too: every shard sums the partial outputs in rank order, so a
    /// row's bits do not depend on how the step was cut or what it was batched with.
    func testChunkedTokenByTokenAndBatchedEqualOnePass() throws {
        for name in ["llama", "qwen2", "gemma3", "qwen2moe"] {
            let model = try loadParallel(name, shards: 2)
            let tokens = try TinyModels.reference(name).tokens
            let vocab = model.info.vocabSize, n = tokens.count
            let onePass = try Generator(model: model), chunked = try Generator(model: model, chunkSize: 5)
            let (l, _) = try onePass.forward(tokens, start: 0, logits: .all)
            let full = Array(UnsafeBufferPointer(start: l, count: n * vocab))
            let (lc, _) = try chunked.forward(tokens, start: 0, logits: .all)
            XCTAssertEqual(full.withUnsafeBufferPointer { maxAbsDiff(lc, $0.baseAddress!, n * vocab) }, 0,
                           "\(name): chunked prefill over 2 shards differs from one pass")
            let stepwise = try Generator(model: model)
            for i in 0..<n {
                let (ls, _) = try stepwise.forward([tokens[i]], start: i, logits: .last)
                XCTAssertEqual(full.withUnsafeBufferPointer { maxAbsDiff(ls, $0.baseAddress! + i * vocab, vocab) }, 0,
                               "\(name): token \(i) alone over 2 shards differs from one pass")
            }

            // Two sequences in one batch over one paged pool (interleaved pages) = each alone.
            let b: [Int32] = [7, 3, 60, 11, 94, 0, 25]
            model.reserve(RunLimits(maxTokens: 64, maxSequences: 2, maxLogitsRows: 64, contextLength: 64))
            let cache = model.makeKVCache(pageSize: 4, numPages: 12)
            XCTAssertEqual(cache.shards.count, 2)
            var batch = ForwardBatch(pageSize: 4)
            batch.addSequence(tokens: b, startPosition: 0, blockTable: [2, 9], logits: .all)
            batch.addSequence(tokens: tokens, startPosition: 0, blockTable: [5, 0, 7, 10], logits: .all)
            var joint = [Float](repeating: .nan, count: (n + b.count) * vocab)
            try joint.withUnsafeMutableBufferPointer { try model.forward(batch, cache: cache, logits: $0.baseAddress!) }
            let alone = try Generator(model: model)
            let (lb, _) = try alone.forward(b, start: 0, logits: .all)
            XCTAssertEqual(joint.withUnsafeBufferPointer { maxAbsDiff(lb, $0.baseAddress!, b.count * vocab) }, 0,
                           "\(name): sequence B in a batch over 2 shards differs from B alone")
            XCTAssertEqual(joint.withUnsafeBufferPointer { j in full.withUnsafeBufferPointer { maxAbsDiff(j.baseAddress! + b.count * vocab, $0.baseAddress!, n * vocab) } }, 0,
                           "\(name): sequence A in a batch over 2 shards differs from A alone")
        }
    }

    /// What tensor parallelism does not split yet, and shard counts that do not divide the heads, are refused at
    /// load with the reason; a bad token is refused by every shard alike (no shard is left waiting for the others).
    func testWhatCannotBeSplitIsRefusedWithTheReason() throws {
        for name in ["deepseek2", "deepseek2-v3"] {
            XCTAssertThrowsError(try loadParallel(name, shards: 2), name) { e in
                XCTAssertTrue("\(e)".contains("tensor parallelism does not split MLA attention"), "\(name): \(e)")
            }
        }
        // The Q8_0 experts' down projection has 32 columns: one block, which 2 shards cannot share.
        XCTAssertThrowsError(try loadParallel("qwen3moe-q8_0", shards: 2)) { e in
            XCTAssertTrue("\(e)".contains("feed-forward width 32 (tensor 'blk.0.ffn_down_exps.weight', blocks of 32) cannot be split over 2"), "\(e)")
        }
        XCTAssertThrowsError(try loadParallel("llama", shards: 3)) { e in
            XCTAssertTrue("\(e)".contains("4 attention heads cannot be split over 3"), "\(e)")
        }
        let model = try loadParallel("llama", shards: 2)
        let gen = try Generator(model: model)
        XCTAssertThrowsError(try gen.forward([1, Int32(model.info.vocabSize)], start: 0, logits: .last)) { e in
            XCTAssertTrue("\(e)".contains("outside the vocabulary"), "\(e)")
        }
        // The shards are still in step after the refusal.
        let tokens = try TinyModels.reference("llama").tokens
        let again = try Generator(model: model)
        XCTAssertNoThrow(try again.forward(tokens, start: 0, logits: .last))
    }
}
