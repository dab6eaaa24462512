import Backend

/// Qwen3 dense (`qwen3`): the Llama shape with per-head Q/K RMS norm, no biases, NeoX-style RoPE.
enum Qwen3 {
    static func load(_ l: TensorLoader, pool: ThreadPool) throws -> LanguageModel {
        try LlamaFamily.load(l, pool: pool, variant: .init(qkvBias: false, qkNorm: true, neoxRope: true))
    }
}
