import Backend

/// The shared loader of the plain pre-norm SwiGLU decoders (Llama, Qwen2, Qwen3); each architecture file
/// picks its variant.
enum LlamaFamily {
    struct Variant {
        var qkvBias: Bool
        var qkNorm: Bool
        var neoxRope: Bool
        /// MoE layers (when the file has `{arch}.expert_count`): whether the top-k weights are renormalized
        /// unless `{arch}.expert_weights_norm` says otherwise (HF `norm_topk_prob`).
        var normalizeTopK = true
        /// Qwen2-MoE: a shared expert (`ffn_*_shexp`) scaled by `sigmoid(ffn_gate_inp_shexp · x)`.
        var gatedSharedExpert = false
    }

    static func load(_ l: TensorLoader, variant v: Variant) throws -> LanguageModel {
        let dim = try l.count("embedding_length")
        let nLayer = try l.count("block_count")
        let nExpert = try l.optionalInt("expert_count") ?? 0
        let ff = nExpert > 0 ? (try l.optionalInt("feed_forward_length") ?? 0) : try l.int("feed_forward_length")
        let nHead = try l.count("attention.head_count")
        let nKVHead = try l.optionalInt("attention.head_count_kv") ?? nHead
        let headDim = try l.optionalInt("attention.key_length") ?? dim / nHead
        let headDimV = try l.optionalInt("attention.value_length") ?? headDim
        let eps = try l.float("attention.layer_norm_rms_epsilon")
        let ctx = try l.count("context_length")
        let ropeDims = try l.optionalInt("rope.dimension_count") ?? headDim
        guard ropeDims >= 0, ropeDims <= headDim, ropeDims % 2 == 0 else {
            throw ModelError("\(l.file.path): metadata '\(l.arch).rope.dimension_count' is \(ropeDims); it must be even and at most the head size \(headDim)")
        }
        var ropeScale = 1.0
        if l.file["\(l.arch).rope.scaling.type"]?.string == "linear", let f = l.optionalFloat("rope.scaling.factor"), f > 0 {
            ropeScale = Double(f)
        }
        let rope = RoPE(dims: ropeDims, base: Double(l.optionalFloat("rope.freq_base") ?? 10_000), neox: v.neoxRope,
                        linearScale: ropeScale, freqFactors: try l.optionalVector("rope_freqs.weight", count: ropeDims / 2))
        guard nKVHead > 0, nHead % nKVHead == 0 else {
            throw ModelError("\(l.file.path): attention.head_count \(nHead) is not a multiple of head_count_kv \(nKVHead)")
        }
        guard let embT = l.file.tensor(named: "token_embd.weight"), embT.shape.count == 2 else {
            throw ModelError("\(l.file.path): missing 2-D tensor 'token_embd.weight'")
        }
        let embedding = try l.matrix("token_embd.weight", rows: embT.shape[1], cols: dim)
        let vocab = embedding.rows
        let output = try l.optionalMatrix("output.weight", rows: vocab, cols: dim) ?? embedding
        let moe = nExpert > 0 ? try moeOptions(l, variant: v, nExpert: nExpert, dim: dim, ff: ff) : nil
        // A tensor-parallel shard's heads (all of them without tensor parallelism); its feed-forward columns below.
        let heads = try HeadSplit(nHead: nHead, nKVHead: nKVHead, shard: l.shard, path: l.file.path)
        var blocks: [DecoderBlock] = []
        for i in 0..<nLayer {
            let p = "blk.\(i)."
            let params = AttentionParams(nHead: heads.q.count, nKVHead: heads.kv.count, headDim: headDim, headDimV: headDimV,
                                         scale: 1 / Float(headDim).squareRoot())
            let attn = AttentionLayer(
                wq: try l.matrix(p + "attn_q.weight", rows: nHead * headDim, cols: dim, keepRows: heads.q.scaled(headDim)),
                wk: try l.matrix(p + "attn_k.weight", rows: nKVHead * headDim, cols: dim, keepRows: heads.kv.scaled(headDim)),
                wv: try l.matrix(p + "attn_v.weight", rows: nKVHead * headDimV, cols: dim, keepRows: heads.kv.scaled(headDimV)),
                wo: try l.matrix(p + "attn_output.weight", rows: dim, cols: nHead * headDimV, keepCols: heads.q.scaled(headDimV)),
                bq: v.qkvBias ? try l.constant(p + "attn_q.bias", count: nHead * headDim, keep: heads.q.scaled(headDim)) : nil,
                bk: v.qkvBias ? try l.constant(p + "attn_k.bias", count: nKVHead * headDim, keep: heads.kv.scaled(headDim)) : nil,
                bv: v.qkvBias ? try l.constant(p + "attn_v.bias", count: nKVHead * headDimV, keep: heads.kv.scaled(headDimV)) : nil,
                qNorm: v.qkNorm ? try l.constant(p + "attn_q_norm.weight", count: headDim) : nil,
                kNorm: v.qkNorm ? try l.constant(p + "attn_k_norm.weight", count: headDim) : nil,
                normEps: eps, params: params, ropeIndex: 0)
            let mlp: any FeedForwardBlock
            if let moe {
                mlp = try MoEFeedForward.load(l, layer: i, dim: dim, nExpert: nExpert, ff: moe.ff, options: moe.options)
            } else {
                let ffPart = try l.feedForwardPart(ff, down: p + "ffn_down.weight")
                mlp = GatedMLP(gate: try l.matrix(p + "ffn_gate.weight", rows: ff, cols: dim, keepRows: ffPart),
                               up: try l.matrix(p + "ffn_up.weight", rows: ff, cols: dim, keepRows: ffPart),
                               down: try l.matrix(p + "ffn_down.weight", rows: dim, cols: ff, keepCols: ffPart),
                               activation: .silu)
            }
            blocks.append(DecoderBlock(attnNorm: try l.constant(p + "attn_norm.weight", count: dim), attention: attn,
                                       postAttnNorm: nil, ffnNorm: try l.constant(p + "ffn_norm.weight", count: dim),
                                       mlp: mlp, postFFNNorm: nil))
        }
        let info = ModelInfo(architecture: l.arch, name: l.file["general.name"]?.string ?? l.arch, vocabSize: vocab,
                             contextLength: ctx, layerCount: nLayer,
                             kvKeyDims: Array(repeating: heads.kv.count * headDim, count: nLayer),
                             kvValueDims: Array(repeating: heads.kv.count * headDimV, count: nLayer))
        return DecoderModel(info: info, embedding: embedding, embedScale: 1, blocks: blocks,
                            outputNorm: try l.constant("output_norm.weight", count: dim), output: output, normEps: eps,
                            ropes: [rope], backend: l.backend, parallel: l.parallel)
    }
}

extension LlamaFamily {
    /// The MoE hyper-parameters of Mixtral / Qwen2-MoE / Qwen3-MoE: `expert_count`, `expert_used_count`,
    /// `expert_feed_forward_length` (else the width of `blk.0.ffn_gate_exps`), `expert_weights_norm`,
    /// `expert_weights_scale`, and for Qwen2-MoE `expert_shared_feed_forward_length` (else `feed_forward_length`).
    static func moeOptions(_ l: TensorLoader, variant v: Variant, nExpert: Int, dim: Int, ff: Int)
        throws -> (options: MoEFeedForward.Options, ff: Int) {
        let topK = try l.count("expert_used_count")
        guard let exps = l.file.tensor(named: "blk.0.ffn_gate_exps.weight"), exps.shape.count == 3 else {
            throw ModelError("\(l.file.path): missing 3-D tensor 'blk.0.ffn_gate_exps.weight'")
        }
        let ffExp = try l.optionalInt("expert_feed_forward_length") ?? exps.shape[1]
        var routing = MoERouting(scoring: .softmax, topK: topK,
                                 normalizeTopK: l.optionalBool("expert_weights_norm") ?? v.normalizeTopK)
        if let s = l.optionalFloat("expert_weights_scale"), s != 0 { routing.scale = s }
        var options = MoEFeedForward.Options(routing: routing)
        if v.gatedSharedExpert {
            options.sharedWidth = try l.optionalInt("expert_shared_feed_forward_length") ?? ff
            options.sharedGate = true
        }
        return (options, ffExp)
    }
}
