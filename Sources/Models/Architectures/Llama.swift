import Backend

/// Llama (`general.architecture = llama`, also Mistral and other Llama-shaped models): SwiGLU MLP, RMS norm,
/// RoPE on adjacent pairs (llama.cpp's converter permutes Q/K rows for that layout), optional tied output.
/// Mixtral is stored as `llama` with experts (`llama.expert_count`, `blk.N.ffn_{gate,up,down}_exps`,
/// `ffn_gate_inp`): softmax top-k routing with the chosen weights renormalized.
enum Llama {
    static func load(_ l: TensorLoader) throws -> LanguageModel {
        try LlamaFamily.load(l, variant: .init(qkvBias: false, qkNorm: false, neoxRope: false))
    }
}
