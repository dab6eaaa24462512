import Backend

/// Multi-head attention with grouped K/V heads, optional Q/K/V biases (Qwen2), optional per-head Q/K RMS
/// norm (Qwen3, Gemma 3), rotary embeddings and an optional sliding window.
struct AttentionLayer: AttentionBlock {
    let wq: WeightMatrix   // [nHead * headDim, dim]
    let wk: WeightMatrix   // [nKVHead * headDim, dim]
    let wv: WeightMatrix   // [nKVHead * headDimV, dim]
    let wo: WeightMatrix   // [dim, nHead * headDimV]
    let bq: Tensor?        // [nHead * headDim]
    let bk: Tensor?        // [nKVHead * headDim]
    let bv: Tensor?        // [nKVHead * headDimV]
    let qNorm: Tensor?     // [headDim]
    let kNorm: Tensor?     // [headDim]
    let normEps: Float
    let params: AttentionParams
    /// Index into the model's RoPE tables (computed at load for the run's context length).
    let ropeIndex: Int

    var queryGroupSize: Int { params.nHead / params.nKVHead }
    var qWidth: Int { params.nHead * params.headDim }
    var kWidth: Int { params.nKVHead * params.headDim }
    var vWidth: Int { params.nKVHead * params.headDimV }
    var oWidth: Int { params.nHead * params.headDimV }
    var bufferWidths: (q: Int, k: Int, v: Int, o: Int) { (qWidth, kWidth, vWidth, oWidth) }

    /// Reads `xn` `// [n, dim]`, writes `out` `// [n, dim]`.
    func forward(_ xn: Tensor, out: Tensor, layer: Int, ctx: ForwardContext, q: Tensor, k: Tensor, v: Tensor,
                 o: Tensor) {
        let b = ctx.backend, n = ctx.n
        b.matmulGroup(wq, q, wk, k, wv, v, x: xn, n: n)
        if let bq { b.addBias(bq, to: q, rows: n) }
        if let bk { b.addBias(bk, to: k, rows: n) }
        if let bv { b.addBias(bv, to: v, rows: n) }
        b.ropeStoreAndAttend(q: q, qNorm: qNorm, k: k, kNorm: kNorm, v: v, out: o, n: n, table: ctx.ropes[ropeIndex],
                             eps: normEps, cache: ctx.cache, layer: layer, meta: ctx.meta, params: params)
        b.matmul(wo, o, out, n: n, precision: .standard)
    }
}
