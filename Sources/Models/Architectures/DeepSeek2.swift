import Backend
import Foundation
import Quant

/// DeepSeek-V2 / V2-Lite / V3 / R1 (`deepseek2` in llama.cpp's GGUF naming): multi-head latent attention
/// (`MLAAttention`, q LoRA or plain `attn_q`, split `attn_k_b`/`attn_v_b` or the older unsplit `attn_kv_b`), NORM
/// (adjacent-pair) RoPE on the decoupled dims, optional YaRN; the first `leading_dense_block_count` layers have a
/// dense SwiGLU MLP, the others MoE with shared experts.
///
/// Routing: `expert_gating_func` 1 = softmax (V2; the default when absent, as llama.cpp), 2 = sigmoid (V3).
/// With `expert_group_count` > 1 the selection is group-limited: a layer with `exp_probs_b` (V3 `noaux_tc`)
/// ranks groups by the sum of their two best biased scores, one without (V2 `group_limited_greedy`) by their
/// best score as HF does (llama.cpp uses the top-two sum for both). Weights are renormalized when
/// `expert_weights_norm`, then scaled by `expert_weights_scale` (`routed_scaling_factor`).
///
/// YaRN (`rope.scaling.type = yarn`): frequencies blended as ggml's `rope_yarn`; llama.cpp's attention factors,
/// which for DeepSeek leave cos/sin unscaled and multiply the softmax scale by
/// `(1 + 0.1 · mscale_all_dim · ln factor)²` (GGUF `rope.scaling.yarn_log_multiplier` = 0.1 · mscale_all_dim).
enum DeepSeek2 {
    static func load(_ l: TensorLoader) throws -> LanguageModel {
        try l.requireWholeModel("MLA attention (DeepSeek)")
        let dim = try l.count("embedding_length")
        // block_count may include multi-token-prediction layers after the trunk (nextn_predict_layers, as
        // llama.cpp's n_layer_all - n_layer_nextn); they are not run here.
        let nLayer = try l.count("block_count") - (try l.optionalInt("nextn_predict_layers") ?? 0)
        guard nLayer >= 1 else {
            throw ModelError("\(l.file.path): metadata '\(l.arch).nextn_predict_layers' leaves no trunk layers of '\(l.arch).block_count'")
        }
        let nHead = try l.count("attention.head_count")
        let eps = try l.float("attention.layer_norm_rms_epsilon")
        let ctx = try l.count("context_length")
        // V2-Lite has no q LoRA (plain attn_q); decide by the tensors, as llama.cpp does by the layer count.
        let qLora = l.has("blk.0.attn_q.weight") ? 0 : try l.int("attention.q_lora_rank")
        let kvLora = try l.count("attention.kv_lora_rank")
        let ropeDims = try l.int("rope.dimension_count")
        // Files from before the MLA split store the per-head sizes in key_length / value_length.
        let kHead = try l.optionalInt("attention.key_length_mla") ?? l.int("attention.key_length")
        let vHead = try l.optionalInt("attention.value_length_mla") ?? l.int("attention.value_length")
        let nope = kHead - ropeDims
        guard nope >= 1, ropeDims >= 0, ropeDims % 2 == 0 else {
            throw ModelError("\(l.file.path): key head size \(kHead) must exceed the even RoPE dims \(ropeDims)")
        }

        // RoPE, YaRN and the softmax scale, as llama.cpp computes them.
        let base = Double(l.optionalFloat("rope.freq_base") ?? 10_000)
        var yarn: YaRN?
        var kqScale = 1 / Double(kHead).squareRoot()
        if l.file["\(l.arch).rope.scaling.type"]?.string == "yarn", let f = l.optionalFloat("rope.scaling.factor"), f > 1 {
            let factor = Double(f)
            let logMul = Double(l.optionalFloat("rope.scaling.yarn_log_multiplier") ?? 0) / 0.1
            // llama.cpp: attn_factor = get_mscale(factor, m) / get_mscale(factor, m_all) / (1 + 0.1 ln factor);
            // for DeepSeek m = m_all when a log multiplier is given, else m = 1 and m_all = 0.
            let lnF = log(factor)
            var attnFactor = (logMul != 0 ? 1 : 1 + 0.1 * lnF) / (1 + 0.1 * lnF)
            attnFactor *= Double(l.optionalFloat("rope.scaling.attn_factor") ?? 1)
            let ropeMscale = attnFactor * (1 + 0.1 * lnF)
            yarn = YaRN(factor: factor,
                        originalContext: try l.optionalInt("rope.scaling.original_context_length") ?? ctx,
                        betaFast: Double(l.optionalFloat("rope.scaling.yarn_beta_fast") ?? 32),
                        betaSlow: Double(l.optionalFloat("rope.scaling.yarn_beta_slow") ?? 1),
                        mscale: ropeMscale)
            let m = ropeMscale * (1 + 0.1 * logMul * lnF)
            kqScale *= m * m
        }
        let rope = RoPE(dims: ropeDims, base: base, neox: false, yarn: yarn)

        // MoE hyper-parameters.
        let nExpert = try l.optionalInt("expert_count") ?? 0
        let denseLead = nExpert > 0 ? (try l.optionalInt("leading_dense_block_count") ?? 0) : nLayer
        var moe: (MoEFeedForward.Options, Int)?
        if denseLead < nLayer {
            let topK = try l.count("expert_used_count")
            let ffExp = try l.int("expert_feed_forward_length")
            let scoring: MoERouting.Scoring
            switch try l.optionalInt("expert_gating_func") ?? 1 {
            case 0, 1: scoring = .softmax
            case 2: scoring = .sigmoid
            case let g: throw ModelError("\(l.file.path): unsupported expert_gating_func \(g) (1 = softmax, 2 = sigmoid)")
            }
            var routing = MoERouting(scoring: scoring, topK: topK,
                                     normalizeTopK: l.optionalBool("expert_weights_norm") ?? false)
            if let s = l.optionalFloat("expert_weights_scale"), s != 0 { routing.scale = s }
            routing.groups = max(1, try l.optionalInt("expert_group_count") ?? 1)
            routing.groupsUsed = try l.optionalInt("expert_group_used_count") ?? routing.groups
            var options = MoEFeedForward.Options(routing: routing)
            options.sharedWidth = ffExp * (try l.optionalInt("expert_shared_count") ?? 0)
            moe = (options, ffExp)
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
            let (kB, vB) = try absorbedKV(l, prefix: p, nHead: nHead, kvLora: kvLora, nope: nope, vHead: vHead)
            let attn = MLAAttention(
                wq: qLora > 0 ? nil : try l.matrix(p + "attn_q.weight", rows: nHead * kHead, cols: dim),
                wqA: qLora > 0 ? try l.matrix(p + "attn_q_a.weight", rows: qLora, cols: dim) : nil,
                qANorm: qLora > 0 ? try l.constant(p + "attn_q_a_norm.weight", count: qLora) : nil,
                wqB: qLora > 0 ? try l.matrix(p + "attn_q_b.weight", rows: nHead * kHead, cols: qLora) : nil,
                wkvA: try l.matrix(p + "attn_kv_a_mqa.weight", rows: kvLora + ropeDims, cols: dim),
                kvANorm: try l.constant(p + "attn_kv_a_norm.weight", count: kvLora),
                kB: kB, vB: vB,
                wo: try l.matrix(p + "attn_output.weight", rows: dim, cols: nHead * vHead),
                nHead: nHead, nope: nope, ropeDims: ropeDims, kvLora: kvLora, vHead: vHead, normEps: eps,
                scale: Float(kqScale), ropeIndex: 0)
            let mlp: any FeedForwardBlock
            if i < denseLead {
                let ff = try l.int("feed_forward_length")
                mlp = GatedMLP(gate: try l.matrix(p + "ffn_gate.weight", rows: ff, cols: dim),
                               up: try l.matrix(p + "ffn_up.weight", rows: ff, cols: dim),
                               down: try l.matrix(p + "ffn_down.weight", rows: dim, cols: ff),
                               activation: .silu)
            } else if let (options, ffExp) = moe {
                var o = options
                o.routing.groupScore = l.has(p + "exp_probs_b.bias") ? .topTwoSum : .max
                mlp = try MoEFeedForward.load(l, layer: i, dim: dim, nExpert: nExpert, ff: ffExp, options: o)
            } else {
                preconditionFailure("unreachable: MoE layer without MoE options")
            }
            blocks.append(DecoderBlock(attnNorm: try l.constant(p + "attn_norm.weight", count: dim), attention: attn,
                                       postAttnNorm: nil, ffnNorm: try l.constant(p + "ffn_norm.weight", count: dim),
                                       mlp: mlp, postFFNNorm: nil))
        }
        let info = ModelInfo(architecture: l.arch, name: l.file["general.name"]?.string ?? l.arch, vocabSize: vocab,
                             contextLength: ctx, layerCount: nLayer,
                             kvKeyDims: Array(repeating: kvLora + ropeDims, count: nLayer),
                             kvValueDims: Array(repeating: 0, count: nLayer))
        return DecoderModel(info: info, embedding: embedding, embedScale: 1, blocks: blocks,
                            outputNorm: try l.constant("output_norm.weight", count: dim), output: output, normEps: eps,
                            ropes: [rope], backend: l.backend)
    }

    /// The per-head K and V up-projections: `attn_k_b` `// [nHead][kvLora, nope]` and `attn_v_b`
    /// `// [nHead][vHead, kvLora]` as current converters write them, or split (and k transposed) here from the
    /// older `attn_kv_b` `// [nHead * (nope + vHead), kvLora]` into f32 copies.
    static func absorbedKV(_ l: TensorLoader, prefix p: String, nHead: Int, kvLora: Int, nope: Int, vHead: Int)
        throws -> (WeightStack, WeightStack) {
        if !l.has(p + "attn_k_b.weight") && !l.has(p + "attn_kv_b.weight") {
            throw ModelError("\(l.file.path): missing tensor '\(p)attn_k_b.weight' (or the older '\(p)attn_kv_b.weight')")
        }
        if l.has(p + "attn_k_b.weight") {
            return (try l.stack(p + "attn_k_b.weight", count: nHead, rows: kvLora, cols: nope),
                    try l.stack(p + "attn_v_b.weight", count: nHead, rows: vHead, cols: kvLora))
        }
        let kvB = try l.matrix(p + "attn_kv_b.weight", rows: nHead * (nope + vHead), cols: kvLora)
        let kStore = FloatStorage(count: nHead * kvLora * nope), vStore = FloatStorage(count: nHead * vHead * kvLora)
        let row = UnsafeMutablePointer<Float>.allocate(capacity: kvLora)
        defer { row.deallocate() }
        for h in 0..<nHead {
            for i in 0..<nope + vHead {
                kvB.dequantizeRow(h * (nope + vHead) + i, into: row)
                for c in 0..<kvLora {
                    if i < nope {
                        kStore.p[(h * kvLora + c) * nope + i] = row[c]
                    } else {
                        vStore.p[(h * vHead + i - nope) * kvLora + c] = row[c]
                    }
                }
            }
        }
        return (try l.prepareStack(WeightRef(name: p + "attn_k_b.weight", type: .f32, shape: [nope, kvLora, nHead],
                                             data: UnsafeRawPointer(kStore.p), owner: kStore)),
                try l.prepareStack(WeightRef(name: p + "attn_v_b.weight", type: .f32, shape: [kvLora, vHead, nHead],
                                             data: UnsafeRawPointer(vStore.p), owner: vStore)))
    }
}

/// An owned f32 buffer that weights made at load time point into.
final class FloatStorage: @unchecked Sendable {
    let p: UnsafeMutablePointer<Float>
    init(count: Int) {
        p = .allocate(capacity: max(1, count))
        p.initialize(repeating: 0, count: max(1, count))
    }
    deinit { p.deallocate() }
}
