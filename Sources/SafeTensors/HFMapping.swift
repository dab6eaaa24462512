import Foundation
import GGUF
import Quant

/// What llama.cpp's `convert_hf_to_gguf.py` does to a Hugging Face checkpoint, for the architectures the engine
/// runs: `config.json` → GGUF metadata, HF tensor names → GGUF names, and the transforms (see `HFCheckpoint`).
///
/// | HF `architectures` | `general.architecture` |
/// |---|---|
/// | LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM (with experts) | llama |
/// | Qwen2ForCausalLM / Qwen3ForCausalLM | qwen2 / qwen3 |
/// | Qwen2MoeForCausalLM / Qwen3MoeForCausalLM | qwen2moe / qwen3moe |
/// | DeepseekV2ForCausalLM, DeepseekV3ForCausalLM | deepseek2 |
/// | Gemma3ForCausalLM, Gemma3ForConditionalGeneration (its text model) | gemma3 |
///
/// Experts may be stored one tensor per expert (`mlp.experts.{e}.gate_proj`, Mixtral's
/// `block_sparse_moe.experts.{e}.w1/w2/w3`; what checkpoints on the Hub have) or fused as transformers 5 holds
/// them in memory (`mlp.experts.gate_up_proj` `[nExpert, 2 * ff, dim]`, `mlp.experts.down_proj`).
struct HFMapping {
    let hfArchitecture: String
    let arch: String
    let config: HFConfig
    private(set) var metadata: [String: GGUFValue] = [:]
    private(set) var metadataKeys: [String] = []
    private(set) var plans: [TensorPlan] = []

    private let modelType: String
    private let checkpoint: SafeTensorsCheckpoint
    private let cfgPath: String
    private var family: Family
    private var nLayer = 0
    private var nHead = 0
    private var nKVHead = 0
    private var nExpert = 0

    enum Family { case llama, qwen2, qwen3, qwen2moe, qwen3moe, deepseek2, gemma3 }

    init(root: JSONValue, configPath: String, checkpoint: SafeTensorsCheckpoint, name: String) throws {
        self.checkpoint = checkpoint
        cfgPath = configPath
        let archs = root["architectures"]?.array?.compactMap(\.string) ?? []
        let rootType = root["model_type"]?.string ?? ""
        hfArchitecture = archs.first ?? rootType
        let known: [String: Family] = [
            "LlamaForCausalLM": .llama, "MistralForCausalLM": .llama, "MixtralForCausalLM": .llama,
            "Qwen2ForCausalLM": .qwen2, "Qwen3ForCausalLM": .qwen3,
            "Qwen2MoeForCausalLM": .qwen2moe, "Qwen3MoeForCausalLM": .qwen3moe,
            "DeepseekV2ForCausalLM": .deepseek2, "DeepseekV3ForCausalLM": .deepseek2,
            "Gemma3ForCausalLM": .gemma3, "Gemma3ForConditionalGeneration": .gemma3,
            // model_type, for configs without `architectures`
            "llama": .llama, "mistral": .llama, "mixtral": .llama, "qwen2": .qwen2, "qwen3": .qwen3,
            "qwen2_moe": .qwen2moe, "qwen3_moe": .qwen3moe, "deepseek_v2": .deepseek2, "deepseek_v3": .deepseek2,
            "gemma3": .gemma3, "gemma3_text": .gemma3,
        ]
        guard let fam = known[hfArchitecture] ?? known[rootType] else {
            throw SafeTensorsError(path: configPath, "unsupported architecture '\(hfArchitecture)' (supported: \(known.keys.filter { $0.contains("For") }.sorted().joined(separator: ", ")))")
        }
        family = fam
        arch = switch fam {
        case .llama: "llama"
        case .qwen2: "qwen2"
        case .qwen3: "qwen3"
        case .qwen2moe: "qwen2moe"
        case .qwen3moe: "qwen3moe"
        case .deepseek2: "deepseek2"
        case .gemma3: "gemma3"
        }
        // Multimodal Gemma 3 keeps the language model's settings in `text_config`.
        let json = (fam == .gemma3 ? root["text_config"].flatMap { $0.object != nil ? $0 : nil } : nil) ?? root
        config = HFConfig(json: json, path: configPath)
        modelType = json["model_type"]?.string ?? rootType
        try makeMetadata(name: name)
        try makePlans()
    }

    // MARK: metadata

    private mutating func set(_ key: String, _ v: GGUFValue) {
        if metadata.updateValue(v, forKey: key) == nil { metadataKeys.append(key) }
    }
    private mutating func setArch(_ key: String, _ v: GGUFValue) { set("\(arch).\(key)", v) }
    private mutating func u32(_ key: String, _ v: Int) { setArch(key, .uint32(UInt32(clamping: v))) }
    private mutating func f32(_ key: String, _ v: Double) { setArch(key, .float32(Float(v))) }

    private func error(_ message: String) -> SafeTensorsError { SafeTensorsError(path: cfgPath, message) }

    private mutating func makeMetadata(name: String) throws {
        let c = config
        set("general.architecture", .string(arch))
        set("general.name", .string(name))
        let dim = try c.int("hidden_size")
        nLayer = try c.int("num_hidden_layers")
        nHead = try c.int("num_attention_heads")
        nKVHead = c.optionalInt("num_key_value_heads") ?? nHead
        nExpert = c.optionalInt("num_local_experts") ?? c.optionalInt("num_experts") ?? c.optionalInt("n_routed_experts") ?? 0
        let defaultTheta: Double = switch modelType {
        case "mixtral", "qwen2_moe", "qwen3_moe", "gemma3", "gemma3_text": 1_000_000
        default: 10_000
        }
        let defaultEps: Double = family == .gemma3 ? 1e-6 : (modelType.hasPrefix("deepseek") ? 1e-6 : 1e-5)

        u32("context_length", c.optionalInt("max_position_embeddings") ?? 4096)
        u32("embedding_length", dim)
        u32("block_count", nLayer)
        if let ff = c.optionalInt("intermediate_size") { u32("feed_forward_length", ff) }
        u32("attention.head_count", nHead)
        u32("attention.head_count_kv", family == .deepseek2 ? 1 : nKVHead)
        f32("attention.layer_norm_rms_epsilon", c.optionalDouble("rms_norm_eps") ?? defaultEps)
        if let v = c.optionalInt("vocab_size") { u32("vocab_size", v) }
        if nExpert > 0 {
            u32("expert_count", nExpert)
            u32("expert_used_count", try c.int("num_experts_per_tok"))
        }

        switch family {
        case .llama, .qwen2, .qwen3, .qwen2moe, .qwen3moe:
            let headDim = c.optionalInt("head_dim") ?? dim / nHead
            if c.optionalInt("head_dim") != nil {
                u32("attention.key_length", headDim)
                u32("attention.value_length", headDim)
            }
            u32("rope.dimension_count", headDim)
            let rope = c.rope(defaultTheta: defaultTheta)
            f32("rope.freq_base", rope.theta)
            try ropeScaling(rope.type, rope.params)
            if family == .qwen2moe || family == .qwen3moe {
                if let v = c.optionalInt("moe_intermediate_size") { u32("expert_feed_forward_length", v) }
                if family == .qwen2moe, let v = c.optionalInt("shared_expert_intermediate_size") {
                    u32("expert_shared_feed_forward_length", v)
                }
                if let v = c.optionalBool("norm_topk_prob") { setArch("expert_weights_norm", .bool(v)) }
                if let step = c.optionalInt("decoder_sparse_step"), step != 1 {
                    throw error("decoder_sparse_step \(step) is not supported (every layer must be MoE)")
                }
                if let only = c["mlp_only_layers"]?.array, !only.isEmpty {
                    throw error("mlp_only_layers \(only.compactMap(\.int)) is not supported (every layer must be MoE)")
                }
            }
        case .gemma3:
            let headDim = c.optionalInt("head_dim") ?? 256
            u32("attention.key_length", headDim)
            u32("attention.value_length", headDim)
            if let s = c.optionalDouble("query_pre_attn_scalar"), s != Double(headDim) {
                throw error("query_pre_attn_scalar \(s) differs from head_dim \(headDim); only 1/sqrt(head_dim) attention scaling is supported")
            }
            if c.optionalDouble("attn_logit_softcapping") != nil {
                throw error("attn_logit_softcapping is not supported")
            }
            let global = c.rope(layerType: "full_attention", defaultTheta: 1_000_000)
            let local = c["rope_parameters"] != nil ? c.rope(layerType: "sliding_attention", defaultTheta: 10_000).theta
                                                   : c.optionalDouble("rope_local_base_freq") ?? 10_000
            guard local == 10_000 else { throw error("sliding-window RoPE base \(local) is not supported (only 10000)") }
            f32("rope.freq_base", global.theta)
            try ropeScaling(global.type, global.params)
            u32("attention.sliding_window", c.optionalInt("sliding_window") ?? 4096)
            u32("attention.sliding_window_pattern", try gemmaPattern())
            if let cap = c.optionalDouble("final_logit_softcapping") { f32("final_logit_softcapping", cap) }
        case .deepseek2:
            try deepseekMetadata(defaultTheta: defaultTheta)
        }
        set("general.file_type", .uint32(0))
    }

    /// Gemma 3's global-layer period: layer i is global iff (i + 1) % pattern == 0.
    private func gemmaPattern() throws -> Int {
        guard let types = config["layer_types"]?.array?.compactMap(\.string), !types.isEmpty else {
            return config.optionalInt("sliding_window_pattern") ?? config.optionalInt("_sliding_window_pattern") ?? 6
        }
        guard let first = types.firstIndex(of: "full_attention") else { return 0 }  // no global layer
        let pattern = first + 1
        for (i, t) in types.enumerated() where (t == "full_attention") != ((i + 1) % pattern == 0) {
            throw error("layer_types \(types) is not periodic with one global layer every \(pattern)")
        }
        return pattern
    }

    private mutating func ropeScaling(_ type: String, _ p: JSONValue) throws {
        switch type {
        case "default": break
        case "linear":
            setArch("rope.scaling.type", .string("linear"))
            f32("rope.scaling.factor", p["factor"]?.double ?? 1)
        case "yarn":
            setArch("rope.scaling.type", .string("yarn"))
            f32("rope.scaling.factor", p["factor"]?.double ?? 1)
            if let o = p["original_max_position_embeddings"]?.int { u32("rope.scaling.original_context_length", o) }
        case "llama3":
            break  // rope_freqs.weight, made in makePlans
        default:
            throw error("rope scaling type '\(type)' is not supported (supported: linear, yarn, llama3)")
        }
    }

    private mutating func deepseekMetadata(defaultTheta: Double) throws {
        let c = config
        let kvLora = try c.int("kv_lora_rank")
        let ropeDim = try c.int("qk_rope_head_dim")
        let nope = try c.int("qk_nope_head_dim")
        let vHead = try c.int("v_head_dim")
        if let first = c.optionalInt("first_k_dense_replace") { u32("leading_dense_block_count", first) }
        if let q = c.optionalInt("q_lora_rank") { u32("attention.q_lora_rank", q) }
        u32("attention.kv_lora_rank", kvLora)
        u32("attention.key_length", kvLora + ropeDim)
        u32("attention.value_length", kvLora)
        u32("attention.key_length_mla", nope + ropeDim)
        u32("attention.value_length_mla", vHead)
        u32("rope.dimension_count", ropeDim)
        if nExpert > 0 {
            u32("expert_feed_forward_length", try c.int("moe_intermediate_size"))
            u32("expert_shared_count", c.optionalInt("n_shared_experts") ?? 0)
            f32("expert_weights_scale", c.optionalDouble("routed_scaling_factor") ?? 1)
            setArch("expert_weights_norm", .bool(c.optionalBool("norm_topk_prob") ?? (modelType == "deepseek_v3")))
            let scoring = c.optionalString("scoring_func") ?? (modelType == "deepseek_v3" ? "sigmoid" : "softmax")
            switch scoring {
            case "softmax": u32("expert_gating_func", 1)
            case "sigmoid": u32("expert_gating_func", 2)
            default: throw error("unsupported scoring_func '\(scoring)'")
            }
            let method = c.optionalString("topk_method") ?? (modelType == "deepseek_v3" ? "noaux_tc" : "greedy")
            if method != "greedy", let g = c.optionalInt("n_group"), g > 1 {
                u32("expert_group_count", g)
                u32("expert_group_used_count", try c.int("topk_group"))
            }
            if let freq = c.optionalInt("moe_layer_freq"), freq != 1 {
                throw error("moe_layer_freq \(freq) is not supported")
            }
        }
        let rope = c.rope(defaultTheta: defaultTheta)
        f32("rope.freq_base", rope.theta)
        if rope.type == "yarn" {
            setArch("rope.scaling.type", .string("yarn"))
            f32("rope.scaling.factor", rope.params["factor"]?.double ?? 1)
            if let o = rope.params["original_max_position_embeddings"]?.int { u32("rope.scaling.original_context_length", o) }
            f32("rope.scaling.yarn_log_multiplier", 0.1 * (rope.params["mscale_all_dim"]?.double ?? 0))
            if let m = rope.params["mscale"]?.double, let mAll = rope.params["mscale_all_dim"]?.double, m != mAll {
                throw error("YaRN with mscale \(m) != mscale_all_dim \(mAll) is not supported")
            }
            if let b = rope.params["beta_fast"]?.double { f32("rope.scaling.yarn_beta_fast", b) }
            if let b = rope.params["beta_slow"]?.double { f32("rope.scaling.yarn_beta_slow", b) }
        } else if rope.type != "default" {
            throw error("rope scaling type '\(rope.type)' is not supported for DeepSeek (supported: yarn)")
        }
        if c.optionalBool("rope_interleave") == false {
            throw error("rope_interleave = false is not supported (llama.cpp's DeepSeek RoPE rotates adjacent pairs)")
        }
    }

    // MARK: tensors

    private enum ExpertPart: String { case gate, up, down }

    private mutating func makePlans() throws {
        var out: [(order: (Int, Int), plan: TensorPlan)] = []
        var experts: [String: [Int: String]] = [:]   // "layer|part" -> expert -> HF name
        let gemma = family == .gemma3
        let permuteQK = family == .llama

        func add(_ layer: Int, _ gguf: String, _ plan: TensorPlan) { out.append(((layer, out.count), plan)) }

        for raw in checkpoint.names {
            var n = raw
            for (prefix, repl) in [("model.language_model.", "model."), ("language_model.model.", "model."),
                                   ("language_model.lm_head.", "lm_head.")] where n.hasPrefix(prefix) {
                n = repl + n.dropFirst(prefix.count)
            }
            if n.hasSuffix("rotary_emb.inv_freq") || n.hasPrefix("vision_tower.") || n.hasPrefix("multi_modal_projector.")
                || n.hasPrefix("model.vision_tower.") || n.hasPrefix("model.multi_modal_projector.") {
                continue
            }
            let info = checkpoint.tensor(named: raw)!
            func check(_ gguf: String) throws -> GGMLType {
                guard let t = info.dtype.ggmlType else {
                    throw SafeTensorsError(path: checkpoint.file(of: raw)!.path, "tensor '\(raw)' has dtype \(info.dtype.rawValue); only F32, F16 and BF16 weights are supported")
                }
                return t
            }
            func direct(_ layer: Int, _ gguf: String) throws {
                add(layer, gguf, TensorPlan(name: gguf, shape: info.shape.reversed(), type: try check(gguf), op: .direct(raw)))
            }
            func norm(_ layer: Int, _ gguf: String) throws {
                if gemma {
                    _ = try check(gguf)
                    add(layer, gguf, TensorPlan(name: gguf, shape: info.shape.reversed(), type: .f32, op: .addOne(raw)))
                } else {
                    try direct(layer, gguf)
                }
            }
            switch n {
            case "model.embed_tokens.weight": try direct(-1, "token_embd.weight"); continue
            case "model.norm.weight": try norm(Int.max - 1, "output_norm.weight"); continue
            case "lm_head.weight": try direct(Int.max, "output.weight"); continue
            default: break
            }
            guard n.hasPrefix("model.layers."), let dot = n.dropFirst(13).firstIndex(of: "."),
                  let layer = Int(n[n.index(n.startIndex, offsetBy: 13)..<dot]) else {
                throw unmapped(raw)
            }
            let suffix = String(n[n.index(after: dot)...])
            if layer >= nLayer { continue }  // e.g. DeepSeek-V3's multi-token-prediction layer
            let p = "blk.\(layer)."

            // Per-expert tensors: collected, stacked below.
            if let (e, part) = expertTensor(suffix) {
                experts["\(layer)|\(part.rawValue)", default: [:]][e] = raw
                continue
            }
            switch suffix {
            case "input_layernorm.weight": try norm(layer, p + "attn_norm.weight")
            case "post_attention_layernorm.weight":
                try norm(layer, p + (gemma ? "post_attention_norm.weight" : "ffn_norm.weight"))
            case "pre_feedforward_layernorm.weight": try norm(layer, p + "ffn_norm.weight")
            case "post_feedforward_layernorm.weight": try norm(layer, p + "post_ffw_norm.weight")
            case "self_attn.q_proj.weight", "self_attn.q_proj.bias":
                let gguf = p + "attn_q." + (suffix.hasSuffix("bias") ? "bias" : "weight")
                if permuteQK { add(layer, gguf, try permuted(raw, gguf, heads: nHead, type: try check(gguf))) }
                else { try direct(layer, gguf) }
            case "self_attn.k_proj.weight", "self_attn.k_proj.bias":
                let gguf = p + "attn_k." + (suffix.hasSuffix("bias") ? "bias" : "weight")
                if permuteQK { add(layer, gguf, try permuted(raw, gguf, heads: nKVHead, type: try check(gguf))) }
                else { try direct(layer, gguf) }
            case "self_attn.v_proj.weight": try direct(layer, p + "attn_v.weight")
            case "self_attn.v_proj.bias": try direct(layer, p + "attn_v.bias")
            case "self_attn.o_proj.weight": try direct(layer, p + "attn_output.weight")
            case "self_attn.q_norm.weight": try norm(layer, p + "attn_q_norm.weight")
            case "self_attn.k_norm.weight": try norm(layer, p + "attn_k_norm.weight")
            case "mlp.gate_proj.weight": try direct(layer, p + "ffn_gate.weight")
            case "mlp.up_proj.weight": try direct(layer, p + "ffn_up.weight")
            case "mlp.down_proj.weight": try direct(layer, p + "ffn_down.weight")
            // MoE routers and shared experts
            case "mlp.gate.weight", "block_sparse_moe.gate.weight": try direct(layer, p + "ffn_gate_inp.weight")
            case "mlp.gate.e_score_correction_bias": try direct(layer, p + "exp_probs_b.bias")
            case "mlp.shared_expert.gate_proj.weight", "mlp.shared_experts.gate_proj.weight":
                try direct(layer, p + "ffn_gate_shexp.weight")
            case "mlp.shared_expert.up_proj.weight", "mlp.shared_experts.up_proj.weight":
                try direct(layer, p + "ffn_up_shexp.weight")
            case "mlp.shared_expert.down_proj.weight", "mlp.shared_experts.down_proj.weight":
                try direct(layer, p + "ffn_down_shexp.weight")
            case "mlp.shared_expert_gate.weight":
                // [1, dim] in HF; llama.cpp's tensor is [dim].
                add(layer, p + "ffn_gate_inp_shexp.weight",
                    TensorPlan(name: p + "ffn_gate_inp_shexp.weight", shape: [info.elementCount], type: try check(p),
                               op: .direct(raw)))
            // Fused experts (transformers 5's in-memory layout)
            case "mlp.experts.gate_up_proj", "mlp.experts.down_proj":
                try fusedExperts(raw, info, layer: layer, down: suffix.hasSuffix("down_proj"), type: try check(p),
                                 add: { add(layer, $0.name, $0) })
            // DeepSeek MLA
            case "self_attn.q_a_proj.weight": try direct(layer, p + "attn_q_a.weight")
            case "self_attn.q_a_layernorm.weight": try direct(layer, p + "attn_q_a_norm.weight")
            case "self_attn.q_b_proj.weight": try direct(layer, p + "attn_q_b.weight")
            case "self_attn.kv_a_proj_with_mqa.weight": try direct(layer, p + "attn_kv_a_mqa.weight")
            case "self_attn.kv_a_layernorm.weight": try direct(layer, p + "attn_kv_a_norm.weight")
            case "self_attn.kv_b_proj.weight":
                for plan in try kvB(raw, info, prefix: p, type: try check(p)) { add(layer, plan.name, plan) }
            default:
                throw unmapped(raw)
            }
        }

        // Stack per-expert tensors: [nExpert][rows, cols] -> ggml [cols, rows, nExpert].
        for (key, byExpert) in experts.sorted(by: { $0.key < $1.key }) {
            let parts = key.split(separator: "|")
            let layer = Int(parts[0])!, part = ExpertPart(rawValue: String(parts[1]))!
            guard nExpert > 0, byExpert.count == nExpert, Set(byExpert.keys) == Set(0..<nExpert) else {
                throw SafeTensorsError(path: checkpoint.directory, "layer \(layer) has \(part.rawValue) tensors for experts \(byExpert.keys.sorted()), expected 0..<\(nExpert)")
            }
            let first = checkpoint.tensor(named: byExpert[0]!)!
            guard first.shape.count == 2, let type = first.dtype.ggmlType else {
                throw SafeTensorsError(path: checkpoint.file(of: byExpert[0]!)!.path, "expert tensor '\(byExpert[0]!)' must be a 2-D F32/F16/BF16 matrix (is \(first.dtype.rawValue) \(first.shape))")
            }
            var segs: [RowSegment] = []
            for e in 0..<nExpert {
                let name = byExpert[e]!, t = checkpoint.tensor(named: name)!
                guard t.shape == first.shape, t.dtype == first.dtype else {
                    throw SafeTensorsError(path: checkpoint.file(of: name)!.path, "expert tensor '\(name)' is \(t.dtype.rawValue) \(t.shape), expert 0's is \(first.dtype.rawValue) \(first.shape)")
                }
                segs.append(RowSegment(source: name, start: 0, count: t.shape[0]))
            }
            let gguf = "blk.\(layer).ffn_\(part.rawValue)_exps.weight"
            out.append(((layer, out.count), TensorPlan(name: gguf, shape: [first.shape[1], first.shape[0], nExpert],
                                                       type: type, op: .rows(segs))))
        }

        // Llama 3 RoPE frequency factors, as the converter computes them.
        let rope = config.rope(defaultTheta: 10_000)
        if rope.type == "llama3" && family != .gemma3 && family != .deepseek2 {
            out.append(((-2, 0), TensorPlan(name: "rope_freqs.weight", shape: [llama3Factors(rope).count], type: .f32,
                                            op: .values(llama3Factors(rope)))))
        }
        plans = out.sorted { $0.order < $1.order }.map(\.plan)
    }

    private func unmapped(_ raw: String) -> SafeTensorsError {
        SafeTensorsError(path: checkpoint.file(of: raw)?.path ?? checkpoint.directory,
                         "tensor '\(raw)' has no GGUF name for \(hfArchitecture) (\(arch))")
    }

    /// `mlp.experts.{e}.{gate,up,down}_proj.weight`, Mixtral's `block_sparse_moe.experts.{e}.w{1,3,2}.weight`.
    private func expertTensor(_ s: String) -> (Int, ExpertPart)? {
        for prefix in ["mlp.experts.", "block_sparse_moe.experts."] where s.hasPrefix(prefix) {
            let rest = s.dropFirst(prefix.count)
            guard let dot = rest.firstIndex(of: "."), let e = Int(rest[..<dot]) else { return nil }
            let part: ExpertPart? = switch String(rest[rest.index(after: dot)...]) {
            case "gate_proj.weight", "w1.weight": .gate
            case "up_proj.weight", "w3.weight": .up
            case "down_proj.weight", "w2.weight": .down
            default: nil
            }
            return part.map { (e, $0) }
        }
        return nil
    }

    /// llama.cpp's `permute`: within each head, rows `[j * half + i]` go to `[i * 2 + j]`, so HF's rotate-half RoPE
    /// becomes ggml's adjacent-pair RoPE.
    private func permuted(_ raw: String, _ gguf: String, heads: Int, type: GGMLType) throws -> TensorPlan {
        let t = checkpoint.tensor(named: raw)!
        let rows = t.shape[0]
        guard heads > 0, rows % (2 * heads) == 0 else {
            throw SafeTensorsError(path: checkpoint.file(of: raw)!.path, "tensor '\(raw)' has \(rows) rows, not a multiple of 2 × \(heads) heads")
        }
        let hd = rows / heads, half = hd / 2
        var segs: [RowSegment] = []
        segs.reserveCapacity(rows)
        for h in 0..<heads {
            for i in 0..<half {
                for j in 0..<2 { segs.append(RowSegment(source: raw, start: h * hd + j * half + i, count: 1)) }
            }
        }
        return TensorPlan(name: gguf, shape: t.shape.reversed(), type: type, op: .rows(segs))
    }

    /// transformers 5's fused experts: `gate_up_proj` `[nExpert, 2 * ff, dim]` (gate rows first) and
    /// `down_proj` `[nExpert, dim, ff]`.
    private func fusedExperts(_ raw: String, _ t: SafeTensorInfo, layer: Int, down: Bool, type: GGMLType,
                              add: (TensorPlan) -> Void) throws {
        guard t.shape.count == 3, t.shape[0] == nExpert else {
            throw SafeTensorsError(path: checkpoint.file(of: raw)!.path, "tensor '\(raw)' has shape \(t.shape), expected [\(nExpert), rows, cols]")
        }
        let p = "blk.\(layer)."
        if down {
            add(TensorPlan(name: p + "ffn_down_exps.weight", shape: t.shape.reversed(), type: type, op: .direct(raw)))
            return
        }
        guard t.shape[1] % 2 == 0 else {
            throw SafeTensorsError(path: checkpoint.file(of: raw)!.path, "tensor '\(raw)' has an odd gate_up row count \(t.shape[1])")
        }
        let ff = t.shape[1] / 2
        for (part, offset) in [("gate", 0), ("up", ff)] {
            let segs = (0..<nExpert).map { RowSegment(source: raw, start: $0 * 2 * ff + offset, count: ff) }
            add(TensorPlan(name: p + "ffn_\(part)_exps.weight", shape: [t.shape[2], ff, nExpert], type: type, op: .rows(segs)))
        }
    }

    /// DeepSeek's `kv_b_proj` `[nHead * (nope + vHead), kvLora]` → `attn_k_b` `[nHead][kvLora, nope]` (transposed K
    /// part) and `attn_v_b` `[nHead][vHead, kvLora]`, as the converter writes them for MLA with absorption.
    private func kvB(_ raw: String, _ t: SafeTensorInfo, prefix p: String, type: GGMLType) throws -> [TensorPlan] {
        let nope = try config.int("qk_nope_head_dim"), vHead = try config.int("v_head_dim")
        let kvLora = try config.int("kv_lora_rank")
        guard t.shape == [nHead * (nope + vHead), kvLora] else {
            throw SafeTensorsError(path: checkpoint.file(of: raw)!.path, "tensor '\(raw)' has shape \(t.shape), expected [\(nHead * (nope + vHead)), \(kvLora)]")
        }
        let vSegs = (0..<nHead).map { RowSegment(source: raw, start: $0 * (nope + vHead) + nope, count: vHead) }
        return [
            TensorPlan(name: p + "attn_k_b.weight", shape: [nope, kvLora, nHead], type: type,
                       op: .kvbK(raw, nHead: nHead, nope: nope, vHead: vHead, kvLora: kvLora)),
            TensorPlan(name: p + "attn_v_b.weight", shape: [kvLora, vHead, nHead], type: type, op: .rows(vSegs)),
        ]
    }

    /// `rope_freqs` for `rope_type = llama3` (convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors).
    private func llama3Factors(_ rope: (theta: Double, type: String, params: JSONValue)) -> [Float] {
        let dim = config.optionalInt("head_dim") ?? ((config.optionalInt("hidden_size") ?? 0) / max(nHead, 1))
        let factor = rope.params["factor"]?.double ?? 8
        let low = rope.params["low_freq_factor"]?.double ?? 1
        let high = rope.params["high_freq_factor"]?.double ?? 4
        let old = Double(rope.params["original_max_position_embeddings"]?.int ?? 8192)
        let lowWavelen = old / low, highWavelen = old / high
        return stride(from: 0, to: dim, by: 2).map { i in
            // As torch computes it: base ** (arange / dim) in f32.
            let freq = Double(1 / Float(pow(Float(rope.theta), Float(i) / Float(dim))))
            let wavelen = 2 * Double.pi / freq
            if wavelen < highWavelen { return 1 }
            if wavelen > lowWavelen { return Float(factor) }
            let smooth = (old / wavelen - low) / (high - low)
            return Float(1 / ((1 - smooth) / factor + smooth))
        }
    }
}
