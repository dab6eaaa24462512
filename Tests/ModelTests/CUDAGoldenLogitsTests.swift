import Backend
import Engine
import BackendCUDA
import GGUF
import Models
import Quant
import XCTest

/// Every golden-logits test (GoldenLogitsTests) again with the models on the CUDA backend: each architecture's
/// logits against its float64 reference at the same tolerance, one pass = chunked = token by token, and a batch of
/// two sequences = each alone. Runs on a GPU, or on the CUDA emulator (scripts/test.sh sets it up:
/// KTRANSFORMERS_CUDA_DRIVER / KTRANSFORMERS_NVRTC, see docs/testing.md); skipped, visibly, where neither is.
class CUDAGoldenLogitsTests: GoldenLogitsTests {
    /// One backend for every test (its stream and compiled kernels); nil when there is no CUDA here.
    nonisolated(unsafe) static var shared: Result<CUDABackend?, Error>?

    override class func makeBackend() throws -> any ComputeBackend {
        try sharedCUDABackend(&shared)
    }

    // (Linux's XCTest discovers a class by the tests it declares; the inherited ones then run too.)

    /// The compiled kernels are cached on disk: a second backend loads them and compiles nothing.
    func testSecondStartLoadsTheKernelsFromTheCache() throws {
        _ = try Self.makeBackend()
        let second = try XCTUnwrap(try CUDABackend.makeIfPresent())
        XCTAssertTrue(second.kernelOrigin.hasPrefix("cache "), "kernels of a second start: \(second.kernelOrigin)")
    }

    /// Decode steps replayed as CUDA graphs (padded to their bucket, block tables at a fixed stride) give the bits
    /// of the same steps run op by op, for 1, 2 and 3 sequences (buckets 1, 2, 4) and an MoE model.
    func testDecodeStepsReplayedAsGraphsEqualEagerSteps() throws {
        let backend = try XCTUnwrap(try Self.makeBackend() as? CUDABackend)
        defer { backend.graphsEnabled = true }
        for name in ["llama", "qwen3moe", "gemma3"] {
            let model = try load(name)
            let vocab = model.info.vocabSize
            model.reserve(RunLimits(maxTokens: 64, maxSequences: 4, maxLogitsRows: 64, contextLength: 64))
            let prompts: [[Int32]] = [[1, 17, 42, 5, 88], [3, 9], [7, 7, 60, 11, 94, 0, 25, 31]]
            func run(graphs: Bool) throws -> [[Float]] {
                backend.graphsEnabled = graphs
                let pageSize = 4
                let cache = model.makeKVCache(pageSize: pageSize, numPages: 16)
                let tables: [[Int32]] = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
                var outputs: [[Float]] = []
                var next: [Int32] = []
                for (i, p) in prompts.enumerated() {
                    var b = ForwardBatch(pageSize: pageSize)
                    b.addSequence(tokens: p, startPosition: 0, blockTable: tables[i], logits: .last)
                    var l = [Float](repeating: 0, count: vocab)
                    try l.withUnsafeMutableBufferPointer { try model.forward(b, cache: cache, logits: $0.baseAddress!) }
                    next.append(Int32(l.indices.max { l[$0] < l[$1] }!))
                }
                var pos = prompts.map(\.count)
                // Steps of 3, then 2, then 1 sequences, each size three times (eager, capture, replay).
                for live in [3, 3, 3, 2, 2, 2, 1, 1, 1] {
                    var b = ForwardBatch(pageSize: pageSize)
                    for s in 0..<live { b.addSequence(tokens: [next[s]], startPosition: pos[s], blockTable: tables[s], logits: .last) }
                    var l = [Float](repeating: 0, count: live * vocab)
                    try l.withUnsafeMutableBufferPointer { try model.forward(b, cache: cache, logits: $0.baseAddress!) }
                    outputs.append(l)
                    for s in 0..<live {
                        let row = l[s * vocab..<(s + 1) * vocab]
                        next[s] = Int32(row.indices.max { row[$0] < row[$1] }! - s * vocab)
                        pos[s] += 1
                    }
                }
                return outputs
            }
            let before = backend.graphsCaptured
            let graphed = try run(graphs: true)
            XCTAssertEqual(backend.graphsCaptured - before, 3, "\(name): one graph per bucket (4, 2, 1)")
            let eager = try run(graphs: false)
            for (i, (g, e)) in zip(graphed, eager).enumerated() {
                XCTAssertEqual(g, e, "\(name): decode step \(i) replayed as a graph differs from the same step op by op")
            }
        }
    }

    /// Attention launches only the key splits a step's positions reach, so a decode step's graph depends on them:
    /// one graph per bucket and attention shape (split keys forced to 4 here: a sequence decoding from position 5 to
    /// 16 crosses shapes of 2, 3, 4 and 5 splits), every step with the bits of the same step op by op.
    func testDecodeGraphsFollowTheAttentionShape() throws {
        let backend = try XCTUnwrap(try Self.makeBackend() as? CUDABackend)
        defer { backend.graphsEnabled = true; backend.attentionSplitKeys = nil }
        backend.attentionSplitKeys = 4
        let model = try load("llama")
        let vocab = model.info.vocabSize
        model.reserve(RunLimits(maxTokens: 64, maxSequences: 4, maxLogitsRows: 64, contextLength: 64))
        func run(graphs: Bool) throws -> [[Float]] {
            backend.graphsEnabled = graphs
            let cache = model.makeKVCache(pageSize: 4, numPages: 16)
            var b = ForwardBatch(pageSize: 4)
            b.addSequence(tokens: [1, 17, 42, 5, 88], startPosition: 0, blockTable: [0, 1, 2, 3, 4], logits: .last)
            var l = [Float](repeating: 0, count: vocab)
            try l.withUnsafeMutableBufferPointer { try model.forward(b, cache: cache, logits: $0.baseAddress!) }
            var outputs: [[Float]] = []
            for pos in 5...16 {
                var s = ForwardBatch(pageSize: 4)
                s.addSequence(tokens: [Int32(l.indices.max { l[$0] < l[$1] }!)], startPosition: pos, blockTable: [0, 1, 2, 3, 4],
                              logits: .last)
                try l.withUnsafeMutableBufferPointer { try model.forward(s, cache: cache, logits: $0.baseAddress!) }
                outputs.append(l)
            }
            return outputs
        }
        let before = backend.graphsCaptured
        let graphed = try run(graphs: true)
        // Shapes of 2 (positions 5-7), 3 (8-11) and 4 (12-15) splits: each warmed, captured, replayed; 5 (16) warmed only.
        XCTAssertEqual(backend.graphsCaptured - before, 3, "one graph per attention shape reached twice")
        let eager = try run(graphs: false)
        for (i, (g, e)) in zip(graphed, eager).enumerated() {
            XCTAssertEqual(g.map(\.bitPattern), e.map(\.bitPattern), "decode step at position \(5 + i): the graph differs from the steps op by op")
        }
    }

}

/// Every golden-logits test once more with KTransformers' hybrid placement: routed experts on CPU threads (straight
/// from the GGUF weights), everything else on the GPU, the two joined through pinned staging and host functions in
/// stream order (`CUDAHybridExpertExecutor`). Dense fixtures have no experts and run all on the GPU. The inherited
/// tests check each architecture against its float64 reference, chunked = one pass = token by token, batched =
/// alone, and decode steps replayed as CUDA graphs (host nodes included) = the same steps op by op.
final class CUDAHybridGoldenLogitsTests: CUDAGoldenLogitsTests {
    static let hybrid = "blk.*.ffn_*_exps.weight=cpu"

    override func load(_ name: String) throws -> LanguageModel {
        let gpu = try Self.makeBackend()
        return try ModelRegistry.load(GGUFFile(path: TinyModels.path(name, "gguf")), backend: gpu,
                                      backends: [.cpu: CPUBackend(pool: TinyModels.pool)],
                                      placement: try Placement(main: gpu.device, parsing: Self.hybrid))
    }

    /// The hybrid path's logits equal the all-CPU path's within float tolerance, with the same argmax everywhere.
    func testHybridLogitsEqualTheAllCPUPath() throws {
        for name in ["qwen3moe", "qwen3moe-q8_0", "mixtral", "qwen2moe", "deepseek2", "deepseek2-v3"] {
            let cpu = try TinyModels.load(name)
            let tokens = try TinyModels.reference(name).tokens
            let vocab = cpu.info.vocabSize, n = tokens.count
            let cpuRun = try Generator(model: cpu)   // the logits live in the generator's buffer
            let (lc, rc) = try cpuRun.forward(tokens, start: 0, logits: .all)
            let all = Array(UnsafeBufferPointer(start: lc, count: rc * vocab))
            let hybrid = try load(name)
            let hybridRun = try Generator(model: hybrid)
            let (lh, rh) = try hybridRun.forward(tokens, start: 0, logits: .all)
            XCTAssertEqual(rh, n)
            let scale = all.reduce(0) { max($0, abs($1)) }
            let err = all.withUnsafeBufferPointer { maxAbsDiff(lh, $0.baseAddress!, n * vocab) }
            print(String(format: "%@: hybrid vs all-CPU max |diff| %.3g (max |logit| %.3g)", name, err, scale))
            XCTAssertLessThanOrEqual(err, 1e-5 * scale, "\(name): hybrid logits differ from the all-CPU path")
            for p in 0..<n {
                XCTAssertEqual(Sampler.argmax(lh + p * vocab, count: vocab), Sampler.argmax(lc + p * vocab, count: vocab),
                               "\(name): argmax differs at position \(p)")
            }
        }
    }
}

/// The hybrid MoE's layerwise prefill (a step's routed experts copied to the GPU and run there): forced from 2 tokens,
/// every MoE tiny model's logits equal the all-CPU path's within float tolerance, argmax everywhere, and the layers
/// were staged; with copies from the pageable mapping and through page-locked bounce buffers.
final class CUDALayerwisePrefillTests: XCTestCase {
    func testLayerwisePrefillLogitsEqualTheAllCPUPath() throws {
        guard let gpu = try CUDABackend.makeIfPresent() else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA layerwise test skipped")
        }
        gpu.layerwiseMinTokens = 2
        for (name, bounce) in [("qwen3moe", false), ("mixtral", true), ("deepseek2-v3", false), ("qwen3moe", true)] {
            gpu.layerwiseBounce = bounce
            let cpu = try TinyModels.load(name)
            let tokens = try TinyModels.reference(name).tokens
            let vocab = cpu.info.vocabSize, n = tokens.count
            let cpuRun = try Generator(model: cpu)   // the logits live in the generator's buffer
            let (lc, rc) = try cpuRun.forward(tokens, start: 0, logits: .all)
            let all = Array(UnsafeBufferPointer(start: lc, count: rc * vocab))
            let before = gpu.layerwiseStagings
            let hybrid = try ModelRegistry.load(GGUFFile(path: TinyModels.path(name, "gguf")), backend: gpu,
                                                backends: [.cpu: CPUBackend(pool: TinyModels.pool)],
                                                placement: try Placement(main: gpu.device,
                                                                         parsing: CUDAHybridGoldenLogitsTests.hybrid))
            let hybridRun = try Generator(model: hybrid)
            let (lh, rh) = try hybridRun.forward(tokens, start: 0, logits: .all)
            XCTAssertEqual(rh, n)
            XCTAssertGreaterThan(gpu.layerwiseStagings, before, "\(name): no layer was staged on the GPU")
            let scale = all.reduce(0) { max($0, abs($1)) }
            let err = all.withUnsafeBufferPointer { maxAbsDiff(lh, $0.baseAddress!, n * vocab) }
            print(String(format: "%@ (%@): layerwise vs all-CPU max |diff| %.3g (max |logit| %.3g)", name,
                         bounce ? "bounce buffers" : "pageable copies", err, scale))
            XCTAssertLessThanOrEqual(err, 1e-4 * scale, "\(name): layerwise logits differ from the all-CPU path")
            for p in 0..<n {
                XCTAssertEqual(Sampler.argmax(lh + p * vocab, count: vocab), Sampler.argmax(lc + p * vocab, count: vocab),
                               "\(name): argmax differs at position \(p)")
            }
            withExtendedLifetime(cpuRun) {}
        }
    }

    /// The routed experts copied to page-locked memory at load (`CPUBackend.stackMemory`, as `serve --device cuda`
    /// does by default): the layerwise steps copy them straight to the GPU (no bounce buffer) and the logits equal the
    /// all-CPU path's; with the layerwise path off, the CPU experts read the page-locked copies and give them too.
    /// Every expert stack is page-locked while its model lives, and given back with it.
    func testPageLockedExpertsAreStagedDirectly() throws {
        guard let gpu = try CUDABackend.makeIfPresent() else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA layerwise test skipped")
        }
        gpu.layerwiseBounce = true
        let start = gpu.pageLockedBytes
        for name in ["qwen3moe", "deepseek2-v3"] {
            let cpuModel = try TinyModels.load(name)
            let tokens = try TinyModels.reference(name).tokens
            let vocab = cpuModel.info.vocabSize, n = tokens.count
            let cpuRun = try Generator(model: cpuModel)
            let (lc, _) = try cpuRun.forward(tokens, start: 0, logits: .all)
            let all = Array(UnsafeBufferPointer(start: lc, count: n * vocab))
            let scale = all.reduce(0) { max($0, abs($1)) }
            let host = CPUBackend(pool: TinyModels.pool)
            host.stackMemory = gpu.pageLockedStackMemory()
            let file = try GGUFFile(path: TinyModels.path(name, "gguf"))
            let hybrid = try ModelRegistry.load(file, backend: gpu, backends: [.cpu: host],
                                                placement: try Placement(main: gpu.device, parsing: CUDAHybridGoldenLogitsTests.hybrid))
            let expertBytes = file.tensors.filter { $0.name.contains("_exps.") }.reduce(0) { $0 + $1.byteCount }
            XCTAssertGreaterThan(expertBytes, 0)
            XCTAssertEqual(gpu.pageLockedBytes - start, expertBytes, "\(name): not every expert stack is page-locked")
            for minTokens in [2, 0] {
                gpu.layerwiseMinTokens = minTokens
                let direct = gpu.layerwiseDirectStagings, bounced = gpu.layerwiseStagings - direct
                let run = try Generator(model: hybrid)
                let (lh, rows) = try run.forward(tokens, start: 0, logits: .all)
                XCTAssertEqual(rows, n)
                let err = all.withUnsafeBufferPointer { maxAbsDiff(lh, $0.baseAddress!, n * vocab) }
                XCTAssertLessThanOrEqual(err, 1e-4 * scale, "\(name), layerwise from \(minTokens): logits differ from the all-CPU path")
                for p in 0..<n {
                    XCTAssertEqual(Sampler.argmax(lh + p * vocab, count: vocab), Sampler.argmax(lc + p * vocab, count: vocab),
                                   "\(name), layerwise from \(minTokens): argmax differs at position \(p)")
                }
                XCTAssertEqual(gpu.layerwiseStagings - gpu.layerwiseDirectStagings, bounced, "\(name): a layer went through a bounce buffer")
                if minTokens > 0 {
                    XCTAssertGreaterThan(gpu.layerwiseDirectStagings, direct, "\(name): no layer was staged from the page-locked stacks")
                }
            }
            withExtendedLifetime(cpuRun) {}
        }
        XCTAssertEqual(gpu.pageLockedBytes, start, "page-locked expert stacks not freed with their models")
    }

    /// With `batchInvariant` (`--batch-invariant`) no step is staged, however large: a request's bits then never
    /// depend on how many tokens shared its step; the logits are the CPU experts' (the hybrid path's).
    func testBatchInvariantKeepsEveryStepOnTheCPUExperts() throws {
        guard let gpu = try CUDABackend.makeIfPresent() else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA layerwise test skipped")
        }
        gpu.layerwiseMinTokens = 2
        gpu.batchInvariant = true
        let name = "qwen3moe"
        let tokens = try TinyModels.reference(name).tokens
        let before = gpu.layerwiseStagings
        let hybrid = try ModelRegistry.load(GGUFFile(path: TinyModels.path(name, "gguf")), backend: gpu,
                                            backends: [.cpu: CPUBackend(pool: TinyModels.pool)],
                                            placement: try Placement(main: gpu.device, parsing: CUDAHybridGoldenLogitsTests.hybrid))
        let run = try Generator(model: hybrid)
        let (_, rows) = try run.forward(tokens, start: 0, logits: .all)
        XCTAssertEqual(rows, tokens.count)
        XCTAssertEqual(gpu.layerwiseStagings, before, "a batch-invariant step was staged on the GPU")
        gpu.batchInvariant = false
        let again = try Generator(model: hybrid)
        _ = try again.forward(tokens, start: 0, logits: .all)
        XCTAssertGreaterThan(gpu.layerwiseStagings, before, "without batchInvariant the same step is staged")
    }
}

extension CUDALayerwisePrefillTests {
    /// Four layers' experts through the layerwise path, three passes: each layer's copy is prefetched into the free
    /// staging slot while the layer before runs (on the copy stream), and every step's result equals the CPU
    /// executor's. On the emulator a copy to the device from pinned memory stays pending until its stream is waited
    /// for, so a kernel that read a slot without waiting for its copy would see another layer's weights.
    func testPrefetchedLayersGiveTheCPUResults() throws {
        guard let gpu = try CUDABackend.makeIfPresent() else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA layerwise test skipped")
        }
        gpu.layerwiseMinTokens = 2
        gpu.layerwiseBounce = true  // page-locked bounce buffers: the emulator keeps their copies pending until waited for
        gpu.reserve(ForwardPlan(maxTokens: 64, contextLength: 64, maxQueryGroup: 1))
        let cpu = CPUBackend(pool: TinyModels.pool)
        let layers = 4, nExpert = 8, dim = 256, ff = 256, topK = 2, n = 12
        var rng = MoEKernelTests.Rng(s: 99)
        let experts = try randomQ4KExperts(layers: layers, nExpert: nExpert, on: cpu, rng: &rng)
        let hybrid = try XCTUnwrap(gpu.makeStagedExpertExecutor(cpu.makeExpertExecutor(nExpert: nExpert, dim: dim, ff: ff),
                                                                innerDevice: .cpu, dim: dim))
        let reference = cpu.makeExpertExecutor(nExpert: nExpert, dim: dim, ff: ff)
        hybrid.reserve(maxTokens: n, topK: topK)
        reference.reserve(maxTokens: n, topK: topK)
        let x = (0..<n * dim).map { _ in rng.float() }
        var ids: [Int32] = []
        for t in 0..<n { ids += [Int32(t % nExpert), Int32((t + 3) % nExpert)] }
        let w = (0..<n * topK).map { _ in 0.25 + abs(rng.float()) * 0.5 }
        let xg = gpu.upload(x), wg = gpu.upload(w), idg = gpu.allocate(n * topK)
        ids.withUnsafeBufferPointer { gpu.write($0, to: idg) }
        let xc = cpu.upload(x), wc = cpu.upload(w), idc = cpu.allocate(n * topK)
        ids.withUnsafeBufferPointer { cpu.write($0, to: idc) }
        let stagings = gpu.layerwiseStagings, hits = gpu.layerwisePrefetchHits
        for pass in 0..<3 {
            for l in 0..<layers {
                let outG = gpu.upload([Float](repeating: 1, count: n * dim)), outC = cpu.upload([Float](repeating: 1, count: n * dim))
                hybrid.submit(experts[l], x: xg, ids: idg, n: n, topK: topK)
                hybrid.wait(weights: wg, accumulateInto: outG, n: n)
                reference.submit(experts[l], x: xc, ids: idc, n: n, topK: topK)
                reference.wait(weights: wc, accumulateInto: outC, n: n)
                let got = gpu.read(outG, count: n * dim), want = outC.hostFloats
                let scale = (0..<n * dim).reduce(Float(0)) { max($0, abs(want[$1] - 1)) }
                let err = maxAbsDiff(got, want, n * dim)
                XCTAssertLessThanOrEqual(err, 1e-3 * scale, "pass \(pass) layer \(l): layerwise result differs from the CPU's")
                gpu.release(outG)
            }
        }
        // Pass 0: four copies; passes 1 and 2: layer 0 copied, layers 1-3 prefetched while the one before ran.
        XCTAssertEqual(gpu.layerwiseStagings - stagings, 4 + 2 * 4)
        XCTAssertEqual(gpu.layerwisePrefetchHits - hits, 2 * 3)
    }
}

/// The hybrid MoE's two hand-overs between the GPU's stream and the expert thread: the mailbox (stream memory
/// operations on words in page-locked memory, the default) and host functions (`KTRANSFORMERS_HYBRID_MAILBOX=0`).
final class CUDAHybridMailboxTests: XCTestCase {
    /// Three MoE layers through each hand-over, op by op and captured as a graph replayed three times: every result
    /// is the same bits, the mailbox runs every layer (its job count), and the results match the CPU executor's.
    func testMailboxAndHostFunctionsGiveTheSameBitsEagerAndInGraphs() throws {
        guard let gpu = try CUDABackend.makeIfPresent() else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA hybrid mailbox test skipped")
        }
        let saved = CUDABackend.hybridMailbox
        defer { CUDABackend.hybridMailbox = saved }
        gpu.reserve(ForwardPlan(maxTokens: 64, contextLength: 64, maxQueryGroup: 1))
        let cpu = CPUBackend(pool: ThreadPool(threads: 2))
        let layers = 3, nExpert = 8, dim = 256, ff = 256, topK = 2, n = 5
        var rng = MoEKernelTests.Rng(s: 7)
        let experts = try randomQ4KExperts(layers: layers, nExpert: nExpert, on: cpu, rng: &rng)
        let x = (0..<n * dim).map { _ in rng.float() }
        var ids: [Int32] = []
        for t in 0..<n { ids += [Int32(t % nExpert), Int32((t * 3 + 1) % nExpert)] }
        let w = (0..<n * topK).map { _ in 0.25 + abs(rng.float()) * 0.5 }
        let xg = gpu.upload(x), wg = gpu.upload(w), idg = gpu.allocate(n * topK)
        ids.withUnsafeBufferPointer { gpu.write($0, to: idg) }
        let ones = [Float](repeating: 1, count: n * dim)

        /// Outputs of each layer (1 + its routed sum): op by op, then from three replays of a captured graph.
        func run(mailbox: Bool) throws -> (eager: [[Float]], replays: [[[Float]]], jobs: Int) {
            CUDABackend.hybridMailbox = mailbox
            let hybrid = try XCTUnwrap(gpu.makeStagedExpertExecutor(cpu.makeExpertExecutor(nExpert: nExpert, dim: dim, ff: ff),
                                                                    innerDevice: .cpu, dim: dim))
            hybrid.reserve(maxTokens: n, topK: topK)
            let outs = (0..<layers).map { _ in gpu.upload(ones) }
            defer { outs.forEach { gpu.release($0) } }
            let jobs = gpu.hybridMailboxJobs
            func layersOnce() {
                for l in 0..<layers {
                    hybrid.submit(experts[l], x: xg, ids: idg, n: n, topK: topK)
                    hybrid.wait(weights: wg, accumulateInto: outs[l], n: n)
                }
            }
            layersOnce()
            func readAll() -> [[Float]] { outs.map { Array(UnsafeBufferPointer(start: gpu.read($0, count: n * dim), count: n * dim)) } }
            let eager = readAll()
            let graph = try XCTUnwrap(try gpu.captureGraph { layersOnce() }, "graphs are on")
            var replays: [[[Float]]] = []
            for _ in 0..<3 {
                for o in outs { ones.withUnsafeBufferPointer { gpu.write($0, to: o) } }
                gpu.launch(graph)
                replays.append(readAll())
            }
            return (eager, replays, gpu.hybridMailboxJobs - jobs)
        }
        let viaMailbox = try run(mailbox: true), viaHost = try run(mailbox: false)
        XCTAssertEqual(viaMailbox.jobs, layers * 4, "every layer, op by op and in each replay, through the mailbox")
        XCTAssertEqual(viaHost.jobs, 0, "mailbox off: host functions only")
        XCTAssertEqual(viaMailbox.eager, viaHost.eager, "mailbox and host functions give different bits")
        for r in 0..<3 {
            XCTAssertEqual(viaMailbox.replays[r], viaMailbox.eager, "mailbox: replay \(r) differs from the eager run")
            XCTAssertEqual(viaHost.replays[r], viaHost.eager, "host functions: replay \(r) differs from the eager run")
        }
        // Against the CPU executor (its combine adds into `out` directly: float tolerance).
        let reference = cpu.makeExpertExecutor(nExpert: nExpert, dim: dim, ff: ff)
        reference.reserve(maxTokens: n, topK: topK)
        let xc = cpu.upload(x), wc = cpu.upload(w), idc = cpu.allocate(n * topK)
        ids.withUnsafeBufferPointer { cpu.write($0, to: idc) }
        for l in 0..<layers {
            let outC = cpu.upload(ones)
            reference.submit(experts[l], x: xc, ids: idc, n: n, topK: topK)
            reference.wait(weights: wc, accumulateInto: outC, n: n)
            let want = outC.hostFloats
            let scale = (0..<n * dim).reduce(Float(0)) { max($0, abs(want[$1] - 1)) }
            XCTAssertGreaterThan(scale, 0)
            XCTAssertLessThanOrEqual(maxAbsDiff(viaMailbox.eager[l], want, n * dim), 1e-5 * scale, "layer \(l) vs the CPU executor")
        }
    }
}

/// Expert deferral in the hybrid MoE (`--defer-experts`): each token's lowest-scored experts of a layer join the
/// residual stream one layer late. With one MoE layer that is right after it (the flush after the last layer), so the
/// logits equal the all-CPU path's; with two, the function changes: the cost against the float64 references is
/// measured (printed; docs/performance.md). A token's result does not depend on the others in its step, so one pass =
/// chunked = token by token (decode steps replayed as graphs, with the flush's host node) still holds bit for bit.
final class CUDAExpertDeferralTests: XCTestCase {
    nonisolated(unsafe) static var shared: Result<CUDABackend?, Error>?

    func backend() throws -> CUDABackend {
        try sharedCUDABackend(&Self.shared) { $0.deferredExperts = 1 }
    }

    func load(_ name: String) throws -> LanguageModel {
        let gpu = try backend()
        return try ModelRegistry.load(GGUFFile(path: TinyModels.path(name, "gguf")), backend: gpu,
                                      backends: [.cpu: CPUBackend(pool: TinyModels.pool)],
                                      placement: try Placement(main: gpu.device, parsing: CUDAHybridGoldenLogitsTests.hybrid))
    }

    func logits(_ model: LanguageModel, _ tokens: [Int32], chunk: Int? = nil) throws -> [Float] {
        let g = try chunk.map { try Generator(model: model, chunkSize: $0) } ?? Generator(model: model)
        let (l, rows) = try g.forward(tokens, start: 0, logits: .all)
        return Array(UnsafeBufferPointer(start: l, count: rows * model.info.vocabSize))
    }

    /// The executor alone over three layers: each layer's output is its first choices plus the layer before's
    /// deferred ones, and the flush gives the last layer's deferred ones (all against the CPU executor run on the
    /// split choices).
    func testEachLayerAddsTheDeferredExpertsOfTheLayerBefore() throws {
        let gpu = try backend()
        gpu.reserve(ForwardPlan(maxTokens: 64, contextLength: 64, maxQueryGroup: 1))
        let cpu = CPUBackend(pool: TinyModels.pool)
        let nExpert = 6, dim = 256, ff = 256, topK = 3, n = 5, layers = 3
        var rng = MoEKernelTests.Rng(s: 5)
        let experts = try randomQ4KExperts(layers: layers, nExpert: nExpert, on: cpu, rng: &rng)
        let hybrid = try XCTUnwrap(gpu.makeStagedExpertExecutor(cpu.makeExpertExecutor(nExpert: nExpert, dim: dim, ff: ff),
                                                                innerDevice: .cpu, dim: dim))
        hybrid.reserve(maxTokens: n, topK: topK)
        // The reference runs on a pool of its own: the hybrid's deferred experts of a layer are still running on
        // `cpu`'s pool (its expert thread) while this thread computes that layer's reference, and a pool takes one
        // caller at a time.
        let refPool = ThreadPool(threads: 2)
        let reference = CPUBackend(pool: refPool).makeExpertExecutor(nExpert: nExpert, dim: dim, ff: ff)
        reference.reserve(maxTokens: n, topK: topK)
        /// The CPU executor's `Σ w·expert` over the choices `cols` of each token.
        func part(_ l: Int, _ x: [Float], _ ids: [Int32], _ w: [Float], _ cols: Range<Int>) -> [Float] {
            let k = cols.count
            let idc = cpu.allocate(n * k), wc = cpu.upload((0..<n).flatMap { t in cols.map { w[t * topK + $0] } })
            for t in 0..<n { for (j, c) in cols.enumerated() { idc.hostInt32[t * k + j] = ids[t * topK + c] } }
            let out = cpu.upload([Float](repeating: 0, count: n * dim))
            reference.submit(experts[l], x: cpu.upload(x), ids: idc, n: n, topK: k)
            reference.wait(weights: wc, accumulateInto: out, n: n)
            return Array(UnsafeBufferPointer(start: out.hostFloats, count: n * dim))
        }
        var pendingLate = [Float](repeating: 0, count: n * dim)
        for l in 0..<layers {
            let x = (0..<n * dim).map { _ in rng.float() }
            var ids: [Int32] = []
            for t in 0..<n { ids += [Int32((t + l) % nExpert), Int32((t + l + 2) % nExpert), Int32((t + l + 4) % nExpert)] }
            let w = (0..<n * topK).map { _ in 0.25 + abs(rng.float()) * 0.5 }
            let idg = gpu.allocate(n * topK), out = gpu.upload([Float](repeating: 0, count: n * dim))
            ids.withUnsafeBufferPointer { gpu.write($0, to: idg) }
            hybrid.submit(experts[l], x: gpu.upload(x), ids: idg, n: n, topK: topK)
            hybrid.wait(weights: gpu.upload(w), accumulateInto: out, n: n)
            let want = zip(part(l, x, ids, w, 0..<topK - 1), pendingLate).map { $0 + $1 }
            let got = Array(UnsafeBufferPointer(start: gpu.read(out, count: n * dim), count: n * dim))
            let scale = want.reduce(Float(0)) { max($0, abs($1)) }
            XCTAssertLessThanOrEqual(zip(got, want).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }, 1e-5 * scale,
                                     "layer \(l): not its first choices plus the layer before's deferred one")
            pendingLate = part(l, x, ids, w, topK - 1..<topK)
        }
        let flushed = gpu.upload([Float](repeating: 0, count: n * dim))
        hybrid.flush(accumulateInto: flushed, n: n)
        let got = Array(UnsafeBufferPointer(start: gpu.read(flushed, count: n * dim), count: n * dim))
        let scale = pendingLate.reduce(Float(0)) { max($0, abs($1)) }
        XCTAssertLessThanOrEqual(zip(got, pendingLate).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }, 1e-5 * scale,
                                 "the flush does not give the last layer's deferred experts")
    }

    func testOneMoELayerDeferredEqualsTheAllCPUPath() throws {
        // deepseek2 cut to its first two layers (one dense, one MoE): the MoE layer's deferred experts join right
        // after it (the flush after the last layer), so the logits are the all-CPU path's.
        let src = try GGUFFile(path: TinyModels.path("deepseek2", "gguf"))
        var w = GGUFWriter()
        for k in src.metadataKeys { w.set(k, k == "deepseek2.block_count" ? .uint32(2) : src.metadata[k]!) }
        for t in src.tensors where !t.name.hasPrefix("blk.2.") {
            w.addTensor(name: t.name, shape: t.shape, type: t.type,
                        data: Array(UnsafeRawBufferPointer(start: src.data(of: t), count: t.byteCount)))
        }
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("deepseek2-2-layers-\(UUID().uuidString).gguf").path
        try w.write(to: path)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let gpu = try backend()
        let cpuModel = try ModelRegistry.load(GGUFFile(path: path), backend: CPUBackend(pool: TinyModels.pool))
        let hybrid = try ModelRegistry.load(GGUFFile(path: path), backend: gpu, backends: [.cpu: CPUBackend(pool: TinyModels.pool)],
                                            placement: try Placement(main: gpu.device, parsing: CUDAHybridGoldenLogitsTests.hybrid))
        let tokens = try TinyModels.reference("deepseek2").tokens
        let all = try logits(cpuModel, tokens), deferred = try logits(hybrid, tokens)
        let scale = all.reduce(0) { max($0, abs($1)) }
        let err = zip(all, deferred).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
        print(String(format: "deepseek2 (2 layers), one expert deferred: vs all-CPU max |diff| %.3g (max |logit| %.3g)", err, scale))
        XCTAssertLessThanOrEqual(err, 1e-4 * scale, "the deferred experts of the last layer were lost or added twice")
    }

    func testDeferralCostOnTheReferencesAndBatchInvariance() throws {
        for name in ["qwen3moe", "mixtral", "qwen2moe"] {
            let ref = try TinyModels.reference(name)
            let tokens = ref.tokens, model = try load(name), vocab = model.info.vocabSize, n = tokens.count
            let deferred = try logits(model, tokens)
            let undeferred = try logits(try TinyModels.load(name), tokens)
            let refFlat = ref.logits.flatMap { $0.map(Float.init) }
            let scale = refFlat.reduce(0) { max($0, abs($1)) }
            let err = zip(refFlat, deferred).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
            let moved = zip(undeferred, deferred).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) }
            var agree = 0
            for p in 0..<n {
                let ours = deferred.withUnsafeBufferPointer { Sampler.argmax($0.baseAddress! + p * vocab, count: vocab) }
                if Int(ours) == ref.logits[p].indices.max(by: { ref.logits[p][$0] < ref.logits[p][$1] })! { agree += 1 }
            }
            print(String(format: "%@, one expert deferred: max |ours - ref| %.3g = %.3g of max |ref| (undeferred: within 1e-4), argmax %d/%d",
                         name, err, err / scale, agree, n))
            // The cost is reported (docs/performance.md), not bounded tightly: these models have two MoE layers of
            // width 32 and two or three experts a token, so one deferred expert is a large share of a layer.
            XCTAssertGreaterThan(moved, 1e-4 * scale, "\(name): deferral changed nothing (is it on?)")
            XCTAssertTrue(deferred.allSatisfy(\.isFinite), "\(name): non-finite logits with deferral")
            XCTAssertLessThan(err, scale, "\(name): deferral logits unrelated to the reference")
            // Batch invariance with deferral: chunks of 5 and token by token (graph-replayed decode steps) = one pass.
            XCTAssertEqual(try logits(model, tokens, chunk: 5), deferred, "\(name): chunked prefill differs with deferral")
            let stepwise = try Generator(model: model)
            for i in 0..<n {
                let (l, _) = try stepwise.forward([tokens[i]], start: i, logits: .last)
                let row = Array(UnsafeBufferPointer(start: l, count: vocab))
                XCTAssertEqual(row, Array(deferred[i * vocab..<(i + 1) * vocab]), "\(name): token \(i) alone differs with deferral")
            }
        }
    }
}

/// `layers` MoE layers of random Q4_K experts (`nExpert` experts of 256 × 256, gate, up and down) quantized by the
/// reference quantizer, prepared by `cpu` (host memory, as the hybrid placement leaves them).
func randomQ4KExperts(layers: Int, nExpert: Int, on cpu: CPUBackend, rng: inout MoEKernelTests.Rng) throws -> [ExpertWeights] {
    let quantize = try XCTUnwrap(QuantRegistry.kernels(for: .q4_K)?.quantize)
    let rowBytes = try XCTUnwrap(GGMLType.q4_K.byteCount(elements: 256))
    func stack(_ layer: Int, _ kind: String) throws -> WeightStack {
        let b = MoEKernelTests.Bytes(nExpert * 256 * rowBytes)
        var row = [Float](repeating: 0, count: 256)
        for r in 0..<nExpert * 256 {
            for c in 0..<256 { row[c] = rng.float() * 0.5 }
            row.withUnsafeBufferPointer { quantize($0.baseAddress!, b.p + r * rowBytes, 256) }
        }
        return try cpu.prepareStack(WeightRef(name: "blk.\(layer).ffn_\(kind)_exps.weight", type: .q4_K,
                                              shape: [256, 256, nExpert], data: UnsafeRawPointer(b.p), owner: b))
    }
    return try (0..<layers).map { l in
        ExpertWeights(gate: try stack(l, "gate"), up: try stack(l, "up"), down: try stack(l, "down"))
    }
}

/// A CUDA backend shared by one test class (its stream and compiled kernels), made once with `configure` applied;
/// XCTSkip where there is no CUDA here.
func sharedCUDABackend(_ slot: inout Result<CUDABackend?, Error>?,
                       configure: (CUDABackend) -> Void = { _ in }) throws -> CUDABackend {
    if slot == nil {
        slot = Result {
            let b = try CUDABackend.makeIfPresent()
            if let b { configure(b) }
            return b
        }
    }
    guard let b = try slot!.get() else {
        throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA model tests skipped")
    }
    return b
}

/// Every golden-logits test again on the CUDA backend with split-K attention forced on at 3 keys per split, so that
/// every prompt's tokens span several splits: logits against the references, one pass = chunked = token by token
/// and batch = alone (a token's splits depend on its own position only).
final class CUDASplitAttentionGoldenLogitsTests: GoldenLogitsTests {
    nonisolated(unsafe) static var shared: Result<CUDABackend?, Error>?

    override class func makeBackend() throws -> any ComputeBackend {
        try sharedCUDABackend(&shared) {
            $0.attentionSplitKeys = 3
            $0.attentionGroupMinTokens = 2  // the grouped kernel's split parts too
        }
    }

    /// (Declared so that Linux's XCTest discovers the class; the inherited tests run too.)
    func testSplitKeysAreForced() throws {
        let backend = try Self.makeBackend()  // throws XCTSkip without a GPU or the emulator
        let b = try XCTUnwrap(backend as? CUDABackend)
        XCTAssertEqual(b.attentionSplitKeys, 3)
    }
}

/// Every golden-logits test again with the grouped attention kernel (a block per K/V head for its query heads) from
/// 2 query tokens: prefill then runs it and token-by-token decode the per-head kernel, so one pass = chunked = token
/// by token checks that both give every head the same bits (CUDASplitAttentionGoldenLogitsTests forces it too, with
/// its split parts).
final class CUDAGroupedAttentionGoldenLogitsTests: GoldenLogitsTests {
    nonisolated(unsafe) static var shared: Result<CUDABackend?, Error>?

    override class func makeBackend() throws -> any ComputeBackend {
        try sharedCUDABackend(&shared) { $0.attentionGroupMinTokens = 2 }
    }

    /// (Declared so that Linux's XCTest discovers the class; the inherited tests run too.)
    func testGroupedAttentionIsForced() throws {
        let backend = try Self.makeBackend()  // throws XCTSkip without a GPU or the emulator
        let b = try XCTUnwrap(backend as? CUDABackend)
        XCTAssertEqual(b.attentionGroupMinTokens, 2)
    }
}
