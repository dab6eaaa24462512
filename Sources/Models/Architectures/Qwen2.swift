import Backend

/// Qwen2 / Qwen2.5 (`qwen2`): the Llama shape with Q/K/V biases and NeoX-style RoPE.
enum Qwen2 {
    static func load(_ l: TensorLoader, pool: ThreadPool) throws -> LanguageModel {
        try LlamaFamily.load(l, pool: pool, variant: .init(qkvBias: true, qkNorm: false, neoxRope: true))
    }
}
