import Backend

/// Multi-head attention with grouped K/V heads, optional Q/K/V biases (Qwen2), optional per-head Q/K RMS
/// norm (Qwen3, Gemma 3), rotary embeddings and an optional sliding window.
struct AttentionLayer: AttentionBlock {
    let wq: WeightMatrix   // [nHead * headDim, dim]
    let wk: WeightMatrix   // [nKVHead * headDim, dim]
    let wv: WeightMatrix   // [nKVHead * headDimV, dim]
    let wo: WeightMatrix   // [dim, nHead * headDimV]
    let bq: [Float]?
    let bk: [Float]?
    let bv: [Float]?
    let qNorm: [Float]?    // [headDim]
    let kNorm: [Float]?    // [headDim]
    let normEps: Float
    let params: AttentionParams
    /// Index into the model's RoPE list (tables are computed once per forward for each).
    let ropeIndex: Int

    var queryGroupSize: Int { params.nHead / params.nKVHead }
    var qWidth: Int { params.nHead * params.headDim }
    var kWidth: Int { params.nKVHead * params.headDim }
    var vWidth: Int { params.nKVHead * params.headDimV }
    var oWidth: Int { params.nHead * params.headDimV }
    var bufferWidths: (q: Int, k: Int, v: Int, o: Int) { (qWidth, kWidth, vWidth, oWidth) }
    var maxInputWidth: Int { oWidth }

    /// Reads `xn` `// [n, dim]`, writes `out` `// [n, dim]`.
    func forward(_ xn: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, n: Int, layer: Int,
                 ctx: ForwardContext, q: UnsafeMutablePointer<Float>, k: UnsafeMutablePointer<Float>,
                 v: UnsafeMutablePointer<Float>, o: UnsafeMutablePointer<Float>) {
        let pool = ctx.pool
        pool.matmulShared(wq, q, wk, k, wv, v, x: xn, n: n, scratch: ctx.scratch)
        if let bq { addBias(bq, q, n) }
        if let bk { addBias(bk, k, n) }
        if let bv { addBias(bv, v, n) }
        let hd = params.headDim
        let rope = ctx.ropes[ropeIndex]
        let tables = ctx.ropeTables[ropeIndex]
        let tableWidth = rope.dims
        let (nHead, nKVHead) = (params.nHead, params.nKVHead)
        let (qw, kw) = (qWidth, kWidth)
        let eps = normEps
        let qn = qNorm, kn = kNorm
        pool.parallelFor(n) { t, _ in
            let qt = q + t * qw, kt = k + t * kw
            if let qn { qn.withUnsafeBufferPointer { Ops.rmsNormHeads(qt, $0.baseAddress!, count: nHead, dim: hd, eps: eps) } }
            if let kn { kn.withUnsafeBufferPointer { Ops.rmsNormHeads(kt, $0.baseAddress!, count: nKVHead, dim: hd, eps: eps) } }
            let table = UnsafePointer(tables + t * tableWidth)
            rope.apply(qt, heads: nHead, headDim: hd, table: table)
            rope.apply(kt, heads: nKVHead, headDim: hd, table: table)
        }
        pool.storeKV(k, v, n: n, cache: ctx.cache, layer: layer, meta: ctx.meta)
        pool.attention(q: q, out: o, n: n, cache: ctx.cache, layer: layer, meta: ctx.meta, params: params,
                       scratch: ctx.attentionScratch)
        pool.matmul(wo, o, out, n: n, scratch: ctx.scratch)
    }

    private func addBias(_ b: [Float], _ x: UnsafeMutablePointer<Float>, _ n: Int) {
        b.withUnsafeBufferPointer { bp in
            for t in 0..<n { Ops.add(bp.baseAddress!, into: x + t * b.count, b.count) }
        }
    }
}
