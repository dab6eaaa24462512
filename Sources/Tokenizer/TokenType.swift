/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
public enum TokenType: Int, Sendable {
    case undefined = 0
    case normal = 1
    case unknown = 2
    case control = 3
    case userDefined = 4
    case unused = 5
    case byte = 6

    /// Matched in the input text before tokenization: control and unknown tokens only when special tokens are
    /// parsed, user-defined tokens always (as llama.cpp and Hugging Face `tokenizers` do).
    var isSpecialText: Bool { self == .control || self == .userDefined || self == .unknown }
}
