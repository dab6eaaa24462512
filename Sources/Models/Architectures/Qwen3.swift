import Backend

/// Qwen3 dense (`qwen3`): the Llama shape with per-head Q/K RMS norm, no biases, NeoX-style RoPE.
enum Qwen3 {
    static func load(_ l: TensorLoader) throws -> LanguageModel {
        try LlamaFamily.load(l, variant: .init(qkvBias: false, qkNorm: true, neoxRope: true))
    }
}
