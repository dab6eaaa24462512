import Backend

/// Qwen3-MoE (`qwen3moe`, e.g. Qwen3-30B-A3B): the Qwen3 shape (per-head Q/K RMS norm, NeoX RoPE, no biases)
/// with MoE feed-forward blocks: softmax top-k routing, chosen weights renormalized (`norm_topk_prob`), no
/// shared expert.
enum Qwen3MoE {
    static func load(_ l: TensorLoader) throws -> LanguageModel {
        try LlamaFamily.load(l, variant: .init(qkvBias: false, qkNorm: true, neoxRope: true,
                                                           normalizeTopK: true))
    }
}
