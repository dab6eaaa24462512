import Backend

/// Qwen2 / Qwen2.5 (`qwen2`): the Llama shape with Q/K/V biases and NeoX-style RoPE.
enum Qwen2 {
    static func load(_ l: TensorLoader) throws -> LanguageModel {
        try LlamaFamily.load(l, variant: .init(qkvBias: true, qkNorm: false, neoxRope: true))
    }
}
