import Backend
import Foundation

/// Gemma 3 (`general.architecture = gemma3`): GeGLU MLP, pre- and post-norms around attention and MLP,
/// per-head Q/K RMS norm, embeddings scaled by sqrt(dim) and tied to the output, and interleaved attention:
/// five sliding-window layers (RoPE base 10000) then one global layer (RoPE base `rope.freq_base`).
/// Norm weights in GGUF already include Gemma's `1 +` offset (llama.cpp's converter adds it).
enum Gemma3 {
    static func load(_ l: TensorLoader) throws -> LanguageModel {
        let dim = try l.count("embedding_length")
        let nLayer = try l.count("block_count")
        let ff = try l.int("feed_forward_length")
        let nHead = try l.count("attention.head_count")
        let nKVHead = try l.optionalInt("attention.head_count_kv") ?? nHead
        let headDim = try l.optionalInt("attention.key_length") ?? dim / nHead
        let headDimV = try l.optionalInt("attention.value_length") ?? headDim
        let eps = try l.float("attention.layer_norm_rms_epsilon")
        let window = try l.int("attention.sliding_window")
        let pattern = try l.optionalInt("attention.sliding_window_pattern") ?? 6
        let ctx = try l.count("context_length")
        let globalBase = Double(l.optionalFloat("rope.freq_base") ?? 1_000_000)
        var globalScale = 1.0
        if l.file["gemma3.rope.scaling.type"]?.string == "linear", let f = l.optionalFloat("rope.scaling.factor"), f > 0 {
            globalScale = Double(f)
        }
        let ropes = [
            RoPE(dims: headDim, base: 10_000, neox: true),                              // sliding-window layers
            RoPE(dims: headDim, base: globalBase, neox: true, linearScale: globalScale), // global layers
        ]
        let embedding = try l.matrix("token_embd.weight", rows: l.file.tensor(named: "token_embd.weight")?.shape.last ?? 0, cols: dim)
        let vocab = embedding.rows
        let output = try l.optionalMatrix("output.weight", rows: vocab, cols: dim) ?? embedding
        // A tensor-parallel shard's heads (all of them without tensor parallelism); its feed-forward columns below.
        let heads = try HeadSplit(nHead: nHead, nKVHead: nKVHead, shard: l.shard, path: l.file.path)
        var blocks: [DecoderBlock] = []
        for i in 0..<nLayer {
            let p = "blk.\(i)."
            let isGlobal = pattern > 0 && (i + 1) % pattern == 0
            let params = AttentionParams(nHead: heads.q.count, nKVHead: heads.kv.count, headDim: headDim, headDimV: headDimV,
                                         scale: 1 / Float(headDim).squareRoot(), window: isGlobal ? 0 : window)
            let attn = AttentionLayer(
                wq: try l.matrix(p + "attn_q.weight", rows: nHead * headDim, cols: dim, keepRows: heads.q.scaled(headDim)),
                wk: try l.matrix(p + "attn_k.weight", rows: nKVHead * headDim, cols: dim, keepRows: heads.kv.scaled(headDim)),
                wv: try l.matrix(p + "attn_v.weight", rows: nKVHead * headDimV, cols: dim, keepRows: heads.kv.scaled(headDimV)),
                wo: try l.matrix(p + "attn_output.weight", rows: dim, cols: nHead * headDimV, keepCols: heads.q.scaled(headDimV)),
                bq: nil, bk: nil, bv: nil,
                qNorm: try l.constant(p + "attn_q_norm.weight", count: headDim),
                kNorm: try l.constant(p + "attn_k_norm.weight", count: headDim),
                normEps: eps, params: params, ropeIndex: isGlobal ? 1 : 0)
            let ffPart = try l.feedForwardPart(ff, down: p + "ffn_down.weight")
            let mlp = GatedMLP(gate: try l.matrix(p + "ffn_gate.weight", rows: ff, cols: dim, keepRows: ffPart),
                               up: try l.matrix(p + "ffn_up.weight", rows: ff, cols: dim, keepRows: ffPart),
                               down: try l.matrix(p + "ffn_down.weight", rows: dim, cols: ff, keepCols: ffPart),
                               activation: .gelu)
            blocks.append(DecoderBlock(attnNorm: try l.constant(p + "attn_norm.weight", count: dim),
                                       attention: attn,
                                       postAttnNorm: try l.constant(p + "post_attention_norm.weight", count: dim),
                                       ffnNorm: try l.constant(p + "ffn_norm.weight", count: dim),
                                       mlp: mlp,
                                       postFFNNorm: try l.constant(p + "post_ffw_norm.weight", count: dim)))
        }
        let info = ModelInfo(architecture: l.arch, name: l.file["general.name"]?.string ?? "gemma3", vocabSize: vocab,
                             contextLength: ctx, layerCount: nLayer,
                             kvKeyDims: Array(repeating: heads.kv.count * headDim, count: nLayer),
                             kvValueDims: Array(repeating: heads.kv.count * headDimV, count: nLayer))
        return DecoderModel(info: info, embedding: embedding, embedScale: Float(dim).squareRoot(), blocks: blocks,
                            outputNorm: try l.constant("output_norm.weight", count: dim), output: output, normEps: eps,
                            finalLogitSoftcap: l.optionalFloat("final_logit_softcapping") ?? 0, ropes: ropes, backend: l.backend, parallel: l.parallel)
    }
}
