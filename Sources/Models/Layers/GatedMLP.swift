import Backend

/// `down(act(gate(x)) * up(x))`: SwiGLU (Llama, Qwen) or GeGLU with tanh-GELU (Gemma).
struct GatedMLP: FeedForwardBlock {
    enum Activation { case silu, gelu }
    let gate: WeightMatrix  // [ff, dim]
    let up: WeightMatrix    // [ff, dim]
    let down: WeightMatrix  // [dim, ff]
    let activation: Activation

    var width: Int { gate.rows }
    var scratchWidth: Int { width }
    var maxInputWidth: Int { width }

    /// Reads `xn` `// [n, dim]`, writes `out` `// [n, dim]`; `g`, `u` are `// [n, ff]` scratch.
    func forward(_ xn: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, n: Int, ctx: ForwardContext,
                 g: UnsafeMutablePointer<Float>, u: UnsafeMutablePointer<Float>) {
        ctx.pool.matmulShared(gate, g, up, u, x: xn, n: n, scratch: ctx.scratch)
        // The activation, in chunks over the pool when there is enough of it (prefill).
        let total = n * width, act = activation
        let chunk = 8192
        ctx.pool.parallelFor((total + chunk - 1) / chunk) { c, _ in
            let start = c * chunk, len = min(chunk, total - start)
            switch act {
            case .silu: Ops.gatedSiLU(g + start, u + start, len)
            case .gelu: Ops.gatedGELU(g + start, u + start, len)
            }
        }
        // NOTE: f32 activations here: act(gate)·up is heavy-tailed and 8-bit quantizing it costs the most
        // accuracy of any matmul (see ThreadPool.matmul).
        ctx.pool.matmul(down, g, out, n: n, scratch: ctx.scratch, f32Activations: true)
    }
}

/// What every layer of one forward pass shares.
struct ForwardContext {
    let pool: ThreadPool
    let scratch: MatmulScratch
    let attentionScratch: ThreadScratch
    let cache: KVCache
    let meta: AttentionMetadata
    let ropes: [RoPE]
    /// Per RoPE: `// [n, dims]` cos/sin pairs for every token of the batch.
    let ropeTables: [UnsafeMutablePointer<Float>]
}
