import Backend

/// The attention part of a block: `AttentionLayer` (multi-head / grouped-query) or `MLAAttention` (DeepSeek).
/// The model hands it four per-token buffers of the widths it asks for.
protocol AttentionBlock {
    /// Floats per token of the `q`, `k`, `v`, `o` scratch buffers `forward` is given.
    var bufferWidths: (q: Int, k: Int, v: Int, o: Int) { get }
    /// Query heads per cached K/V head (sizes the backend's attention scratch).
    var queryGroupSize: Int { get }
    /// Reads `xn` `// [n, dim]`, writes `out` `// [n, dim]`, and this batch's K/V into layer `layer` of the cache.
    func forward(_ xn: Tensor, out: Tensor, layer: Int, ctx: ForwardContext, q: Tensor, k: Tensor, v: Tensor,
                 o: Tensor)
}

/// The shape of an MoE block's router and choices (sizes the model's MoE buffers).
struct MoEShape {
    var nExpert: Int
    var topK: Int
    var routerWork: Int
}

/// The feed-forward part of a block: `GatedMLP` (dense) or `MoEFeedForward` (experts).
protocol FeedForwardBlock {
    /// Floats per token of each of the two scratch buffers `g`, `u` that `forward` is given.
    var scratchWidth: Int { get }
    /// MoE blocks: their router's shape (nil for dense blocks).
    var moe: MoEShape? { get }
    /// Sizes buffers of the block's own for steps of `maxTokens` tokens (load time).
    func reserve(maxTokens: Int)
    /// Reads `xn` `// [n, dim]`, writes `out` `// [n, dim]`.
    func forward(_ xn: Tensor, out: Tensor, ctx: ForwardContext, g: Tensor, u: Tensor)
}

extension FeedForwardBlock {
    var moe: MoEShape? { nil }
    func reserve(maxTokens: Int) {}
}

/// What every layer of one forward pass shares: the backend, the KV cache, this step's metadata, the RoPE
/// tables and the MoE layers' buffers.
struct ForwardContext {
    let backend: any ComputeBackend
    let cache: KVCache
    let meta: BatchMetadata
    let ropes: [RopeTable]
    /// Tokens in the step.
    var n: Int { meta.tokens }
    /// `// [n, nExpert]` router logits, `// [n, topK]` chosen experts (i32) and their weights.
    let moeLogits: Tensor
    let moeExperts: Tensor
    let moeWeights: Tensor
}

/// One pre-norm transformer block, with the optional post-norms Gemma adds:
/// `x += postAttnNorm(attn(attnNorm(x)))`, `x += postFFNNorm(mlp(ffnNorm(x)))`.
struct DecoderBlock {
    let attnNorm: Tensor        // [dim]
    let attention: any AttentionBlock
    let postAttnNorm: Tensor?   // [dim]
    let ffnNorm: Tensor         // [dim]
    let mlp: any FeedForwardBlock
    let postFFNNorm: Tensor?    // [dim]
}

/// A decoder-only transformer assembled by an architecture file: token embedding (optionally scaled),
/// blocks, final norm, output projection (optionally tied to the embedding), optional logit soft-capping.
/// It holds the architecture's weights and order of operations; every computation is an op of its backend.
final class DecoderModel: LanguageModel, @unchecked Sendable {
    // NOTE: @unchecked because `reserve` replaces the run state; the LanguageModel contract is that reserve and
    // forward run on one thread at a time.
    let info: ModelInfo
    let backend: any ComputeBackend
    let dim: Int
    let embedding: WeightMatrix      // [vocab, dim]
    let embedScale: Float
    let blocks: [DecoderBlock]
    let outputNorm: Tensor           // [dim]
    let output: WeightMatrix         // [vocab, dim]
    let normEps: Float
    let finalLogitSoftcap: Float
    let ropes: [RoPE]
    /// A tensor-parallel shard's rank and the collective that sums the shards' block outputs (nil: the whole
    /// model). Such a shard runs its steps eagerly (graphs span one backend's stream), and only rank 0 computes
    /// the logits.
    let parallel: ParallelRank?
    private(set) var limits: RunLimits
    private var state: RunState
    /// Decode steps captured as graphs (backends that have them), by token-count bucket and KV pool.
    private var graphs: [GraphKey: any ComputeGraph] = [:]
    /// Buckets run once eagerly already: a bucket is captured the second time it comes, after one eager run has
    /// set up anything lazy.
    private var warmed: Set<GraphKey> = []
    /// The padded metadata of a graphed step (host side, reused).
    private var padded = PaddedStep()

    /// The routed-expert executors of the MoE layers, each once.
    private lazy var expertExecutors: [any ExpertExecutor] = {
        var seen = Set<ObjectIdentifier>()
        return blocks.compactMap { ($0.mlp as? MoEFeedForward)?.executor }.filter { seen.insert(ObjectIdentifier($0)).inserted }
    }()

    var expertUsage: [ExpertUsage] {
        var seen = Set<ObjectIdentifier>()
        return blocks.compactMap { ($0.mlp as? MoEFeedForward)?.executor.usage }
            .filter { seen.insert(ObjectIdentifier($0)).inserted }
    }

    private struct GraphKey: Hashable {
        let bucket: Int
        /// The KV pool: its object and every layer's K/V addresses.
        let cache: ObjectIdentifier
        let pool: [UInt]
        let pageSize: Int
        let numPages: Int
        /// The backend's scratch epoch (`ComputeBackend.graphEpoch`).
        let epoch: Int
        /// `ComputeBackend.attentionLaunchShape` of the step's largest position.
        let shape: Int
    }

    private struct PaddedStep {
        var tokens: [Int32] = []
        var positions: [Int32] = []
        var slots: [Int32] = []
        var sequences: [Int32] = []
        var tables: [Int32] = []
        var logits: [Int32] = []
    }

    init(info: ModelInfo, embedding: WeightMatrix, embedScale: Float, blocks: [DecoderBlock], outputNorm: Tensor,
         output: WeightMatrix, normEps: Float, finalLogitSoftcap: Float = 0, ropes: [RoPE], backend: any ComputeBackend,
         parallel: ParallelRank? = nil) {
        self.parallel = parallel
        self.info = info
        self.backend = backend
        dim = embedding.cols
        self.embedding = embedding
        self.embedScale = embedScale
        self.blocks = blocks
        self.outputNorm = outputNorm
        self.output = output
        self.normEps = normEps
        self.finalLogitSoftcap = finalLogitSoftcap
        self.ropes = ropes
        limits = RunLimits.defaults(contextLength: info.contextLength)
        state = RunState(limits: limits, info: info, dim: dim, blocks: blocks, ropes: ropes, backend: backend)
    }

    deinit { state.release(backend) }

    func reserve(_ l: RunLimits) {
        var wanted = limits.union(l)
        wanted.contextLength = min(wanted.contextLength, info.contextLength)
        guard wanted != limits else { return }
        state.release(backend)
        graphs.removeAll()
        warmed.removeAll()
        limits = wanted
        state = RunState(limits: limits, info: info, dim: dim, blocks: blocks, ropes: ropes, backend: backend)
    }

    func forward(_ batch: ForwardBatch, cache: KVCache) throws -> Tensor {
        let n = batch.count, m = batch.logitsIndices.count
        let s = state
        guard n > 0 else { return s.logits.prefix(0) }
        for (i, t) in batch.tokens.enumerated() where t < 0 || Int(t) >= info.vocabSize {
            throw ModelError("token \(t) at batch index \(i) is outside the vocabulary (0..<\(info.vocabSize))")
        }
        for p in batch.positions where Int(p) >= limits.contextLength {
            throw ModelError(Int(p) >= info.contextLength
                ? "position \(p) is beyond the context length \(info.contextLength)"
                : "position \(p) is beyond the run's context length \(limits.contextLength) (the model was loaded for it)")
        }
        guard n <= limits.maxTokens, m <= limits.maxLogitsRows, batch.blockTables.count <= s.blockTables.count else {
            throw ModelError("a forward pass of \(n) tokens, \(m) logits rows and \(batch.blockTables.count) block-table entries exceeds what the model was loaded for (\(limits.maxTokens) tokens, \(limits.maxLogitsRows) rows, \(s.blockTables.count) entries)")
        }
        if let bucket = graphBucket(batch, cache: cache) {
            return try forwardGraphed(batch, cache: cache, bucket: bucket)
        }
        // This step's metadata into its fixed tensors.
        let b = backend
        batch.tokens.withUnsafeBufferPointer { b.write($0, to: s.tokens) }
        batch.positions.withUnsafeBufferPointer { b.write($0, to: s.positions) }
        batch.slotMapping.withUnsafeBufferPointer { b.write($0, to: s.slotMapping) }
        batch.sequenceOfToken.withUnsafeBufferPointer { b.write($0, to: s.sequenceOfToken) }
        batch.blockTables.withUnsafeBufferPointer { b.write($0, to: s.blockTables) }
        batch.logitsIndices.withUnsafeBufferPointer { b.write($0, to: s.logitsIndices) }
        compute(n: n, m: m, blockTableStride: batch.blockTableStride, pageSize: batch.pageSize, cache: cache,
                oneTokenPerSequence: Set(batch.sequenceOfToken).count == n, maxPosition: batch.positions.max().map { Int($0) })
        return s.logits.prefix(m * info.vocabSize)
    }

    /// The ops of one step over the metadata already in the run state: `n` tokens, `m` logits rows.
    /// `oneTokenPerSequence`: every token is its sequence's only one in the step (`BatchMetadata`).
    /// `maxPosition`: the largest of the tokens' positions (the attention launches' shape may follow it).
    private func compute(n: Int, m: Int, blockTableStride: Int, pageSize: Int, cache: KVCache, oneTokenPerSequence: Bool,
                         maxPosition: Int?) {
        let s = state, b = backend
        let meta = BatchMetadata(tokens: n, positions: s.positions, slotMapping: s.slotMapping,
                                 sequenceOfToken: s.sequenceOfToken, blockTables: s.blockTables,
                                 blockTableStride: blockTableStride, pageSize: pageSize,
                                 oneTokenPerSequence: oneTokenPerSequence, maxPosition: maxPosition)
        let ctx = ForwardContext(backend: b, cache: cache, meta: meta, ropes: s.ropeTables, moeLogits: s.moeLogits,
                                 moeExperts: s.moeExperts, moeWeights: s.moeWeights)
        let x = s.x, xn = s.xn, proj = s.proj

        b.embed(embedding, tokens: s.tokens, n: n, out: x, scale: embedScale)     // x: [n, dim]
        // Each residual add and the norm after it are one call (`addRMSNorm`): x += proj, xn = norm(x).
        if let first = blocks.first {
            b.rmsNorm(x, weight: first.attnNorm, out: xn, rows: n, dim: dim, stride: dim, eps: normEps)
        }
        for (l, blk) in blocks.enumerated() {
            blk.attention.forward(xn, out: proj, layer: l, ctx: ctx, q: s.q, k: s.k, v: s.v, o: s.o)
            reduceShards(proj, n: n)
            if let pn = blk.postAttnNorm { b.rmsNorm(proj, weight: pn, out: proj, rows: n, dim: dim, stride: dim, eps: normEps) }
            b.addRMSNorm(proj, into: x, weight: blk.ffnNorm, out: xn, rows: n, dim: dim, eps: normEps)
            blk.mlp.forward(xn, out: proj, ctx: ctx, g: s.gate, u: s.up)
            reduceShards(proj, n: n)
            if let pn = blk.postFFNNorm { b.rmsNorm(proj, weight: pn, out: proj, rows: n, dim: dim, stride: dim, eps: normEps) }
            if l + 1 < blocks.count {
                b.addRMSNorm(proj, into: x, weight: blocks[l + 1].attnNorm, out: xn, rows: n, dim: dim, eps: normEps)
            } else {
                b.add(proj, into: x, count: n * dim)
            }
        }
        // What expert executors hold back (deferred experts of the last MoE layer) joins the residual stream.
        for e in expertExecutors { e.flush(accumulateInto: x, n: n) }
        if let parallel, parallel.shard.index > 0 { return }   // rank 0 has the same residual stream and the logits

        // Final norm of the selected rows, gathered into xn, then the output projection.
        b.rmsNormRows(x, indices: s.logitsIndices, count: m, weight: outputNorm, out: xn, dim: dim, eps: normEps)
        b.matmul(output, xn, s.logits, n: m, precision: .standard)
        if finalLogitSoftcap > 0 { b.softcap(s.logits, count: m * info.vocabSize, cap: finalLogitSoftcap) }
    }

    /// A tensor-parallel shard's attention and feed-forward outputs are partial sums: every shard adds the others'
    /// (nothing for the whole model).
    @inline(__always)
    private func reduceShards(_ t: Tensor, n: Int) {
        if let parallel { parallel.collective.allReduceSum(t, count: n * dim, rank: parallel.shard.index) }
    }

    // MARK: graphs

    /// Buckets of decode steps: 1, 2, 4, 8, 16, 32, 64, ... up to the model's sequences per step.
    private func bucket(for n: Int) -> Int? {
        var b = 1
        while b < n { b *= 2 }
        return min(b, limits.maxSequences) >= n ? min(b, limits.maxSequences) : nil
    }

    /// The bucket a step is replayed in, or nil when it runs eagerly: only decode steps (one token per sequence,
    /// every token's logits) whose block tables fit the fixed stride, on a pool with the model's scratch page.
    private func graphBucket(_ batch: ForwardBatch, cache: KVCache) -> Int? {
        let n = batch.count
        guard backend.capturesGraphs, parallel == nil, n > 0, batch.logitsIndices.count == n, cache.pageSize == batch.pageSize,
              let bucket = bucket(for: n), bucket <= limits.maxTokens, bucket <= limits.maxLogitsRows else { return nil }
        for i in 0..<n where batch.sequenceOfToken[i] != Int32(i) || batch.logitsIndices[i] != Int32(i) { return nil }
        let stride = maxPagesPerSequence(pageSize: batch.pageSize)
        guard batch.blockTableStride <= stride, bucket * stride <= state.blockTables.count else { return nil }
        return bucket
    }

    private func maxPagesPerSequence(pageSize: Int) -> Int { (limits.contextLength + pageSize - 1) / pageSize }

    /// A decode step padded to `bucket` rows (the padding tokens write their K/V in the pool's last page, which
    /// no sequence uses) with block tables at a fixed stride, so one graph per bucket replays every such step;
    /// the real rows come first and their logits are the first `n` rows.
    private func forwardGraphed(_ batch: ForwardBatch, cache: KVCache, bucket: Int) throws -> Tensor {
        let n = batch.count, s = state, b = backend
        let stride = maxPagesPerSequence(pageSize: batch.pageSize)
        let scratchPage = Int32(cache.numPages - 1)
        var p = padded
        p.tokens = batch.tokens + [Int32](repeating: 0, count: bucket - n)
        p.positions = batch.positions + [Int32](repeating: 0, count: bucket - n)
        p.slots = batch.slotMapping + [Int32](repeating: scratchPage * Int32(batch.pageSize), count: bucket - n)
        p.sequences = (0..<Int32(bucket)).map { $0 }
        p.logits = p.sequences
        p.tables = [Int32](repeating: -1, count: bucket * stride)
        for i in 0..<n {
            for j in 0..<batch.blockTableStride { p.tables[i * stride + j] = batch.blockTables[i * batch.blockTableStride + j] }
        }
        for i in n..<bucket { p.tables[i * stride] = scratchPage }
        padded = p
        p.tokens.withUnsafeBufferPointer { b.write($0, to: s.tokens) }
        p.positions.withUnsafeBufferPointer { b.write($0, to: s.positions) }
        p.slots.withUnsafeBufferPointer { b.write($0, to: s.slotMapping) }
        p.sequences.withUnsafeBufferPointer { b.write($0, to: s.sequenceOfToken) }
        p.tables.withUnsafeBufferPointer { b.write($0, to: s.blockTables) }
        p.logits.withUnsafeBufferPointer { b.write($0, to: s.logitsIndices) }

        let maxPosition = Int(batch.positions.max() ?? 0)
        let shape = b.attentionLaunchShape(maxPosition: maxPosition)
        let key = GraphKey(bucket: bucket, cache: ObjectIdentifier(cache),
                           pool: (0..<cache.kDims.count).flatMap { [cache.k($0).address, cache.v($0).address] },
                           pageSize: batch.pageSize, numPages: cache.numPages, epoch: b.graphEpoch, shape: shape)
        if graphs.count > 256 { graphs.removeAll() }  // keys of pools or epochs gone: drop, recapture what is used
        // The graph of a shape replays every step of that shape (its launches depend on the shape alone).
        let run = { self.compute(n: bucket, m: bucket, blockTableStride: stride, pageSize: batch.pageSize, cache: cache,
                                 oneTokenPerSequence: true, maxPosition: maxPosition) }
        if let g = graphs[key] {
            b.launch(g)
        } else if warmed.contains(key), let g = try b.captureGraph(run) {
            graphs[key] = g
            b.launch(g)
        } else {
            warmed.insert(key)
            run()
        }
        return s.logits.prefix(n * info.vocabSize)
    }
}

/// Everything a forward pass writes besides the KV cache, allocated once for `RunLimits` in the backend's memory:
/// one arena of activation and metadata tensors at fixed addresses, and the RoPE tables.
private struct RunState {
    let arena: Tensor
    let x, xn, proj: Tensor                          // [maxTokens, dim]
    let q, k, v, o: Tensor                           // [maxTokens, widest layer's width]
    let gate, up: Tensor                             // [maxTokens, widest feed-forward scratch]
    let moeLogits, moeExperts, moeWeights: Tensor    // [maxTokens, nExpert], [maxTokens, topK] ×2
    let tokens, positions, slotMapping, sequenceOfToken: Tensor   // [maxTokens] i32
    let logitsIndices: Tensor                        // [maxLogitsRows] i32
    let blockTables: Tensor                          // [maxSequences * contextLength] i32
    let logits: Tensor                               // [maxLogitsRows, vocab]
    let ropeTables: [RopeTable]

    init(limits: RunLimits, info: ModelInfo, dim: Int, blocks: [DecoderBlock], ropes: [RoPE], backend: any ComputeBackend) {
        let t = limits.maxTokens
        let a = blocks.map(\.attention.bufferWidths)
        let moe = blocks.compactMap(\.mlp.moe)
        let ff = blocks.map(\.mlp.scratchWidth).max() ?? 1
        let nExpert = moe.map(\.nExpert).max() ?? 1, topK = moe.map(\.topK).max() ?? 1
        // NOTE: a page holds at least one position, so a sequence's block table has at most contextLength entries.
        let sizes = [
            t * dim, t * dim, t * dim,
            t * (a.map(\.q).max() ?? 1), t * (a.map(\.k).max() ?? 1), t * (a.map(\.v).max() ?? 1), t * (a.map(\.o).max() ?? 1),
            t * ff, t * ff,
            t * nExpert, t * topK, t * topK,
            t, t, t, t,
            limits.maxLogitsRows,
            limits.maxSequences * max(limits.contextLength, 1),
            limits.maxLogitsRows * info.vocabSize,
        ]
        // Each tensor starts on a 64-byte boundary.
        let padded = sizes.map { ($0 + 15) & ~15 }
        arena = backend.allocate(padded.reduce(0, +))
        var views: [Tensor] = []
        var offset = 0
        for (size, p) in zip(sizes, padded) {
            views.append(arena.offset(offset).prefix(size))
            offset += p
        }
        (x, xn, proj) = (views[0], views[1], views[2])
        (q, k, v, o) = (views[3], views[4], views[5], views[6])
        (gate, up) = (views[7], views[8])
        (moeLogits, moeExperts, moeWeights) = (views[9], views[10], views[11])
        (tokens, positions, slotMapping, sequenceOfToken) = (views[12], views[13], views[14], views[15])
        (logitsIndices, blockTables, logits) = (views[16], views[17], views[18])
        ropeTables = ropes.map { backend.makeRopeTable($0, positions: limits.contextLength) }
        backend.reserve(ForwardPlan(maxTokens: t, contextLength: limits.contextLength,
                                    maxQueryGroup: blocks.map(\.attention.queryGroupSize).max() ?? 1,
                                    routerWork: moe.map(\.routerWork).max() ?? 0))
        for b in blocks { b.mlp.reserve(maxTokens: t) }
    }

    /// Gives the arena and tables back to the backend (before a larger state replaces this one).
    func release(_ backend: any ComputeBackend) {
        backend.release(arena)
        ropeTables.forEach { backend.release($0.table) }
    }
}
