import Backend

/// Llama (`general.architecture = llama`, also Mistral and other Llama-shaped models): SwiGLU MLP, RMS norm,
/// RoPE on adjacent pairs (llama.cpp's converter permutes Q/K rows for that layout), optional tied output.
enum Llama {
    static func load(_ l: TensorLoader, pool: ThreadPool) throws -> LanguageModel {
        try LlamaFamily.load(l, pool: pool, variant: .init(qkvBias: false, qkNorm: false, neoxRope: false))
    }
}

/// The shared loader of the plain pre-norm SwiGLU decoders (Llama, Qwen2, Qwen3); each architecture file
/// picks its variant.
enum LlamaFamily {
    struct Variant {
        var qkvBias: Bool
        var qkNorm: Bool
        var neoxRope: Bool
    }

    static func load(_ l: TensorLoader, pool: ThreadPool, variant v: Variant) throws -> LanguageModel {
        let dim = try l.int("embedding_length")
        let nLayer = try l.int("block_count")
        let ff = try l.int("feed_forward_length")
        let nHead = try l.int("attention.head_count")
        let nKVHead = l.optionalInt("attention.head_count_kv") ?? nHead
        let headDim = l.optionalInt("attention.key_length") ?? dim / nHead
        let headDimV = l.optionalInt("attention.value_length") ?? headDim
        let eps = try l.float("attention.layer_norm_rms_epsilon")
        let ctx = try l.int("context_length")
        let ropeDims = l.optionalInt("rope.dimension_count") ?? headDim
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
        var blocks: [DecoderBlock] = []
        for i in 0..<nLayer {
            let p = "blk.\(i)."
            let params = AttentionParams(nHead: nHead, nKVHead: nKVHead, headDim: headDim, headDimV: headDimV,
                                         scale: 1 / Float(headDim).squareRoot())
            let attn = AttentionLayer(
                wq: try l.matrix(p + "attn_q.weight", rows: nHead * headDim, cols: dim),
                wk: try l.matrix(p + "attn_k.weight", rows: nKVHead * headDim, cols: dim),
                wv: try l.matrix(p + "attn_v.weight", rows: nKVHead * headDimV, cols: dim),
                wo: try l.matrix(p + "attn_output.weight", rows: dim, cols: nHead * headDimV),
                bq: v.qkvBias ? try l.vector(p + "attn_q.bias", count: nHead * headDim) : nil,
                bk: v.qkvBias ? try l.vector(p + "attn_k.bias", count: nKVHead * headDim) : nil,
                bv: v.qkvBias ? try l.vector(p + "attn_v.bias", count: nKVHead * headDimV) : nil,
                qNorm: v.qkNorm ? try l.vector(p + "attn_q_norm.weight", count: headDim) : nil,
                kNorm: v.qkNorm ? try l.vector(p + "attn_k_norm.weight", count: headDim) : nil,
                normEps: eps, params: params, ropeIndex: 0)
            let mlp = GatedMLP(gate: try l.matrix(p + "ffn_gate.weight", rows: ff, cols: dim),
                               up: try l.matrix(p + "ffn_up.weight", rows: ff, cols: dim),
                               down: try l.matrix(p + "ffn_down.weight", rows: dim, cols: ff),
                               activation: .silu)
            blocks.append(DecoderBlock(attnNorm: try l.vector(p + "attn_norm.weight", count: dim), attention: attn,
                                       postAttnNorm: nil, ffnNorm: try l.vector(p + "ffn_norm.weight", count: dim),
                                       mlp: mlp, postFFNNorm: nil))
        }
        let info = ModelInfo(architecture: l.arch, name: l.file["general.name"]?.string ?? l.arch, vocabSize: vocab,
                             contextLength: ctx, layerCount: nLayer,
                             kvKeyDims: Array(repeating: nKVHead * headDim, count: nLayer),
                             kvValueDims: Array(repeating: nKVHead * headDimV, count: nLayer))
        return DecoderModel(info: info, embedding: embedding, embedScale: 1, blocks: blocks,
                            outputNorm: try l.vector("output_norm.weight", count: dim), output: output, normEps: eps,
                            ropes: [rope], pool: pool)
    }
}
