import Backend

/// DeepSeek's multi-head latent attention (MLA), with the K/V up-projections absorbed as llama.cpp and DeepSeek's
/// own inference code do, so the KV cache holds only the compressed latent.
///
/// Per token: `c = norm(W_kv_a · x)[..kvLora]` (the latent) and `k_pe = rope(W_kv_a · x)[kvLora..]` (one
/// decoupled RoPE key shared by all heads); the cache row is `[c | k_pe]` (`kvLora + ropeDims` floats, no V).
/// Queries: `q = W_q · x` or, with q LoRA, `W_q_b · norm(W_q_a · x)`, split per head into `q_nope | q_pe`.
/// HF's `k_h = W_kb,h · c` and `v_h = W_vb,h · c` are never formed: the score `q_nope·k_nope + q_pe·k_pe` equals
/// `(W_kb,hᵀ q_nope) · c + q_pe · k_pe`, so each head's query becomes `[W_kb,hᵀ q_nope | rope(q_pe)]` and attends
/// over the cached rows as one K/V head (MQA); its output is a weighted sum of latents `o_h`, and the head's value
/// output is `W_vb,h · o_h`, then `W_o` over the heads.
struct MLAAttention: AttentionBlock {
    let wq: WeightMatrix?      // [nHead * kHead, dim]      attn_q (no q LoRA: V2-Lite)
    let wqA: WeightMatrix?     // [qLora, dim]              attn_q_a
    let qANorm: Tensor?        // [qLora]                   attn_q_a_norm
    let wqB: WeightMatrix?     // [nHead * kHead, qLora]    attn_q_b
    let wkvA: WeightMatrix     // [kvLora + ropeDims, dim]  attn_kv_a_mqa
    let kvANorm: Tensor        // [kvLora]                  attn_kv_a_norm
    let kB: WeightStack        // [nHead][kvLora, nope]     attn_k_b (HF k part of kv_b_proj, transposed)
    let vB: WeightStack        // [nHead][vHead, kvLora]    attn_v_b
    let wo: WeightMatrix       // [dim, nHead * vHead]      attn_output
    let nHead: Int
    let nope: Int
    let ropeDims: Int
    let kvLora: Int
    let vHead: Int
    let normEps: Float
    /// Softmax scale: `1/sqrt(nope + ropeDims)`, times YaRN's mscale² where configured.
    let scale: Float
    let ropeIndex: Int

    var kHead: Int { nope + ropeDims }
    /// Floats one token caches in this layer.
    var latentWidth: Int { kvLora + ropeDims }
    var qLora: Int { wqA?.rows ?? 0 }

    // q: the projected queries, later the heads' value outputs; k: the cache row [c | k_pe] of each token;
    // v: the absorbed queries [nHead][kvLora + ropeDims]; o: the q LoRA activations, later the heads' latents.
    var bufferWidths: (q: Int, k: Int, v: Int, o: Int) {
        (max(nHead * kHead, nHead * vHead), latentWidth, nHead * latentWidth, max(nHead * kvLora, qLora))
    }
    /// All heads share the one cached latent.
    var queryGroupSize: Int { nHead }

    func forward(_ xn: Tensor, out: Tensor, layer: Int, ctx: ForwardContext, q: Tensor, k: Tensor, v: Tensor,
                 o: Tensor) {
        let b = ctx.backend, n = ctx.n
        if let wq {
            b.matmul(wq, xn, q, n: n, precision: .standard)
        } else if let wqA, let wqB, let qANorm {
            b.matmul(wqA, xn, o, n: n, precision: .standard)   // [n, qLora]
            let ql = wqA.rows
            b.rmsNorm(o, weight: qANorm, out: o, rows: n, dim: ql, stride: ql, eps: normEps)
            b.matmul(wqB, o, q, n: n, precision: .standard)
        }
        b.matmul(wkvA, xn, k, n: n, precision: .standard)      // [n, kvLora + ropeDims]

        // Latent norm, RoPE on k_pe and q_pe (q_pe goes straight to its place in the absorbed query).
        let rope = ctx.ropes[ropeIndex]
        let (lw, kl, nh, kh, np, rd) = (latentWidth, kvLora, nHead, kHead, nope, ropeDims)
        b.rmsNorm(k, weight: kvANorm, out: k, rows: n, dim: kl, stride: lw, eps: normEps)
        b.rope(k.offset(kl), rows: n, rowStride: lw, heads: 1, headStride: rd, table: rope,
               positions: ctx.meta.positions, norm: nil, eps: 0)
        // Row (t, h) of q_pe is at (t·nh + h)·kHead + nope, its place in v at (t·nh + h)·latentWidth + kvLora.
        b.copyRows(q.offset(np), srcStride: kh, v.offset(kl), dstStride: lw, rows: n * nh, width: rd)
        b.rope(v.offset(kl), rows: n, rowStride: nh * lw, heads: nh, headStride: lw, table: rope,
               positions: ctx.meta.positions, norm: nil, eps: 0)
        // Absorbed queries: v[t, h, ..<kvLora] = W_kb,h · q_nope[t, h].
        b.matmulHeads(kB, q, xStride: nh * kh, xHeadStride: kh, v, yStride: nh * lw, yHeadStride: lw, n: n)

        b.storeKV(k: k, v: k, n: n, cache: ctx.cache, layer: layer, meta: ctx.meta)
        var params = AttentionParams(nHead: nh, nKVHead: 1, headDim: lw, headDimV: kl, scale: scale)
        params.valueInKey = true
        b.attention(q: v, out: o, n: n, cache: ctx.cache, layer: layer, meta: ctx.meta, params: params)
        // Heads' values from their latents: q[t, h, ..<vHead] = W_vb,h · o[t, h].
        b.matmulHeads(vB, o, xStride: nh * kl, xHeadStride: kl, q, yStride: nh * vHead, yHeadStride: vHead, n: n)
        b.matmul(wo, q, out, n: n, precision: .standard)
    }
}
