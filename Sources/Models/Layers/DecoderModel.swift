import Backend

/// The attention part of a block: `AttentionLayer` (multi-head / grouped-query) or `MLAAttention` (DeepSeek).
/// The model hands it four per-token buffers of the widths it asks for.
protocol AttentionBlock {
    /// Floats per token of the `q`, `k`, `v`, `o` scratch buffers `forward` is given.
    var bufferWidths: (q: Int, k: Int, v: Int, o: Int) { get }
    /// Widest input of its matmuls (sizes the per-thread matmul scratch).
    var maxInputWidth: Int { get }
    /// Query heads per cached K/V head (sizes the attention scratch: see `ThreadPool.attention`).
    var queryGroupSize: Int { get }
    /// Reads `xn` `// [n, dim]`, writes `out` `// [n, dim]`, and this batch's K/V into layer `layer` of the cache.
    func forward(_ xn: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, n: Int, layer: Int,
                 ctx: ForwardContext, q: UnsafeMutablePointer<Float>, k: UnsafeMutablePointer<Float>,
                 v: UnsafeMutablePointer<Float>, o: UnsafeMutablePointer<Float>)
}

/// The feed-forward part of a block: `GatedMLP` (dense) or `MoEFeedForward` (experts).
protocol FeedForwardBlock {
    /// Floats per token of each of the two scratch buffers `g`, `u` that `forward` is given.
    var scratchWidth: Int { get }
    /// Widest input of its matmuls (sizes the per-thread matmul scratch).
    var maxInputWidth: Int { get }
    /// Reads `xn` `// [n, dim]`, writes `out` `// [n, dim]`.
    func forward(_ xn: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, n: Int, ctx: ForwardContext,
                 g: UnsafeMutablePointer<Float>, u: UnsafeMutablePointer<Float>)
}

/// One pre-norm transformer block, with the optional post-norms Gemma adds:
/// `x += postAttnNorm(attn(attnNorm(x)))`, `x += postFFNNorm(mlp(ffnNorm(x)))`.
struct DecoderBlock {
    let attnNorm: [Float]
    let attention: any AttentionBlock
    let postAttnNorm: [Float]?
    let ffnNorm: [Float]
    let mlp: any FeedForwardBlock
    let postFFNNorm: [Float]?
}

/// A decoder-only transformer assembled by an architecture file: token embedding (optionally scaled),
/// blocks, final norm, output projection (optionally tied to the embedding), optional logit soft-capping.
final class DecoderModel: LanguageModel, @unchecked Sendable {
    // NOTE: @unchecked because the workspace is mutated by `forward`; the LanguageModel contract is that
    // forward runs on one thread at a time.
    let info: ModelInfo
    let dim: Int
    let embedding: WeightMatrix      // [vocab, dim]
    let embedScale: Float
    let blocks: [DecoderBlock]
    let outputNorm: [Float]
    let output: WeightMatrix         // [vocab, dim]
    let normEps: Float
    let finalLogitSoftcap: Float
    let ropes: [RoPE]
    let pool: ThreadPool
    private let scratch: MatmulScratch
    private var attentionScratch: ThreadScratch
    private let maxQueryGroup: Int
    private let work: Workspace
    private var ropeTables: [UnsafeMutablePointer<Float>] = []
    private var ropeCapacity = 0

    // Workspace buffer indices.
    private enum Buf: Int { case x, xn, proj, q, k, v, o, gate, up }

    init(info: ModelInfo, embedding: WeightMatrix, embedScale: Float, blocks: [DecoderBlock], outputNorm: [Float],
         output: WeightMatrix, normEps: Float, finalLogitSoftcap: Float = 0, ropes: [RoPE], pool: ThreadPool) {
        self.info = info
        dim = embedding.cols
        self.embedding = embedding
        self.embedScale = embedScale
        self.blocks = blocks
        self.outputNorm = outputNorm
        self.output = output
        self.normEps = normEps
        self.finalLogitSoftcap = finalLogitSoftcap
        self.ropes = ropes
        self.pool = pool
        let a = blocks.map(\.attention.bufferWidths)
        let maxCols = ([dim] + blocks.map { max($0.attention.maxInputWidth, $0.mlp.maxInputWidth) }).max()!
        scratch = MatmulScratch(perThread: ThreadScratch(threads: pool.threadCount, floatsPerThread: maxCols),
                                activations: ActivationBuffer())
        // Scores of a GQA group plus the visible positions' slots (see ThreadPool.attention).
        let maxGroup = blocks.map(\.attention.queryGroupSize).max() ?? 1
        maxQueryGroup = maxGroup
        // Sized for 4096 positions and grown when a batch reaches further (DeepSeek-V3 has 128 query heads per
        // cached latent and a 163840-token context: sizing for that up front would take 84 MB per thread).
        attentionScratch = ThreadScratch(threads: pool.threadCount,
                                         floatsPerThread: min(info.contextLength, 4096) * (maxGroup + 1))
        work = Workspace(widths: [
            dim, dim, dim,
            a.map(\.q).max() ?? 1, a.map(\.k).max() ?? 1, a.map(\.v).max() ?? 1, a.map(\.o).max() ?? 1,
            blocks.map(\.mlp.scratchWidth).max() ?? 1, blocks.map(\.mlp.scratchWidth).max() ?? 1,
        ])
    }

    deinit { ropeTables.forEach { $0.deallocate() } }

    func forward(_ batch: ForwardBatch, cache: KVCache, logits: UnsafeMutablePointer<Float>) throws {
        let n = batch.count
        guard n > 0 else { return }
        for (i, t) in batch.tokens.enumerated() where t < 0 || Int(t) >= info.vocabSize {
            throw ModelError("token \(t) at batch index \(i) is outside the vocabulary (0..<\(info.vocabSize))")
        }
        for p in batch.positions where Int(p) >= info.contextLength {
            throw ModelError("position \(p) is beyond the context length \(info.contextLength)")
        }
        work.reserve(tokens: n)
        let needed = (maxQueryGroup + 1) * (Int(batch.positions.max() ?? 0) + 1)
        if needed > attentionScratch.floatsPerThread {
            attentionScratch = ThreadScratch(threads: pool.threadCount,
                                             floatsPerThread: max(needed, 2 * attentionScratch.floatsPerThread))
        }
        reserveRopeTables(n)
        let x = work[Buf.x.rawValue], xn = work[Buf.xn.rawValue], proj = work[Buf.proj.rawValue]

        // Embedding lookup: `// x: [n, dim]`.
        let emb = embedding, scale = embedScale, d = dim
        batch.tokens.withUnsafeBufferPointer { toks in
            pool.parallelFor(n) { t, _ in
                emb.dequantizeRow(Int(toks[t]), into: x + t * d)
                if scale != 1 { Ops.scale(x + t * d, scale, d) }
            }
        }
        for (r, rope) in ropes.enumerated() {
            let table = ropeTables[r]
            for t in 0..<n { rope.table(position: Int(batch.positions[t]), into: table + t * rope.dims) }
        }

        batch.withAttentionMetadata { meta in
            let ctx = ForwardContext(pool: pool, scratch: scratch, attentionScratch: attentionScratch, cache: cache,
                                     meta: meta, ropes: ropes, ropeTables: ropeTables)
            for (l, b) in blocks.enumerated() {
                norm(x, b.attnNorm, xn, n)
                b.attention.forward(xn, out: proj, n: n, layer: l, ctx: ctx, q: work[Buf.q.rawValue],
                                    k: work[Buf.k.rawValue], v: work[Buf.v.rawValue], o: work[Buf.o.rawValue])
                if let pn = b.postAttnNorm { norm(proj, pn, proj, n) }
                Ops.add(proj, into: x, n * dim)
                norm(x, b.ffnNorm, xn, n)
                b.mlp.forward(xn, out: proj, n: n, ctx: ctx, g: work[Buf.gate.rawValue], u: work[Buf.up.rawValue])
                if let pn = b.postFFNNorm { norm(proj, pn, proj, n) }
                Ops.add(proj, into: x, n * dim)
            }
        }

        // Final norm of the selected rows, gathered into xn, then the output projection.
        let m = batch.logitsIndices.count
        for (i, t) in batch.logitsIndices.enumerated() {
            norm(x + Int(t) * dim, outputNorm, xn + i * dim, 1)
        }
        pool.matmul(output, xn, logits, n: m, scratch: scratch)
        if finalLogitSoftcap > 0 {
            let c = finalLogitSoftcap
            for i in 0..<m * info.vocabSize { logits[i] = c * tanhf(logits[i] / c) }
        }
    }

    private func norm(_ x: UnsafeMutablePointer<Float>, _ w: [Float], _ out: UnsafeMutablePointer<Float>, _ n: Int) {
        let d = dim, eps = normEps
        w.withUnsafeBufferPointer { wp in
            let wb = wp.baseAddress!
            if n == 1 {
                Ops.rmsNorm(x, wb, out, rows: 1, dim: d, eps: eps)
            } else {
                pool.parallelFor(n) { t, _ in Ops.rmsNorm(x + t * d, wb, out + t * d, rows: 1, dim: d, eps: eps) }
            }
        }
    }

    private func reserveRopeTables(_ n: Int) {
        guard n > ropeCapacity else { return }
        ropeTables.forEach { $0.deallocate() }
        ropeCapacity = max(n, ropeCapacity * 2)
        ropeTables = ropes.map { .allocate(capacity: max(1, ropeCapacity * $0.dims)) }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
