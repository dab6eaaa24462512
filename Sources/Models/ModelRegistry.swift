import Backend
import GGUF

/// Architectures by `general.architecture`. Adding one is a file in `Architectures/` and a line here.
public enum ModelRegistry {
    typealias Loader = @Sendable (TensorLoader, ThreadPool) throws -> LanguageModel

    static let loaders: [String: Loader] = [
        "deepseek2": DeepSeek2.load,
        "gemma3": Gemma3.load,
        "llama": Llama.load,
        "qwen2": Qwen2.load,
        "qwen2moe": Qwen2MoE.load,
        "qwen3": Qwen3.load,
        "qwen3moe": Qwen3MoE.load,
    ]

    public static var supportedArchitectures: [String] { loaders.keys.sorted() }

    /// Builds the model a GGUF file (or another `TensorSource`, such as a Hugging Face directory) describes; its
    /// weights stay in the file's mapping.
    public static func load(_ file: any TensorSource, pool: ThreadPool) throws -> LanguageModel {
        guard let arch = file.architecture else {
            throw ModelError("\(file.path): missing metadata 'general.architecture'")
        }
        guard let loader = loaders[arch] else {
            throw ModelError("\(file.path): unsupported architecture '\(arch)' (supported: \(supportedArchitectures.joined(separator: ", ")))")
        }
        return try loader(TensorLoader(file: file, arch: arch), pool)
    }
}
