import Backend

/// Qwen1.5-MoE / Qwen2-MoE (`qwen2moe`): the Qwen2 shape (Q/K/V biases, NeoX RoPE) with MoE feed-forward
/// blocks: softmax top-k routing without renormalization (HF `norm_topk_prob = false`, as llama.cpp) and one
/// shared expert whose output is scaled by `sigmoid(ffn_gate_inp_shexp · x)`.
enum Qwen2MoE {
    static func load(_ l: TensorLoader) throws -> LanguageModel {
        try LlamaFamily.load(l, variant: .init(qkvBias: true, qkNorm: false, neoxRope: true,
                                                           normalizeTopK: false, gatedSharedExpert: true))
    }
}
