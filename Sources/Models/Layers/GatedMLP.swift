import Backend

/// `down(act(gate(x)) * up(x))`: SwiGLU (Llama, Qwen) or GeGLU with tanh-GELU (Gemma).
struct GatedMLP: FeedForwardBlock {
    let gate: WeightMatrix  // [ff, dim]
    let up: WeightMatrix    // [ff, dim]
    let down: WeightMatrix  // [dim, ff]
    let activation: GatedActivation

    var width: Int { gate.rows }
    var scratchWidth: Int { width }

    /// Reads `xn` `// [n, dim]`, writes `out` `// [n, dim]`; `g`, `u` are `// [n, ff]` scratch.
    func forward(_ xn: Tensor, out: Tensor, ctx: ForwardContext, g: Tensor, u: Tensor) {
        let b = ctx.backend, n = ctx.n
        b.matmulGroup(gate, g, up, u, nil, nil, x: xn, n: n)
        b.gatedActivation(g, u, count: n * width, activation)
        // NOTE: f32 activations here: act(gate)·up is heavy-tailed and 8-bit quantizing it costs the most
        // accuracy of any matmul (see ThreadPool.matmul).
        b.matmul(down, g, out, n: n, precision: .f32Activations)
    }
}
