import ArgumentParser
import Backend
import Foundation
import GGUF
import Models
import SafeTensors
import Tokenizer

/// Options shared by the commands that load a model.
struct ModelOptions: ParsableArguments {
    @Option(name: .long, help: "GGUF model file or Hugging Face checkpoint directory (config.json + *.safetensors) (default: the installed default model, see scripts/default-model.sh).")
    var model: String?

    @Option(name: [.customShort("t"), .long], help: "Compute threads (default: physical cores).")
    var threads: Int?

    @Option(name: .customLong("ctx-size"), help: "Context length for this run (default: the model's, at most 4096).")
    var contextSize: Int?

    func validate() throws {
        if let threads, threads < 1 || threads > 1024 { throw ValidationError("--threads must be between 1 and 1024") }
        if let contextSize, contextSize < 1 { throw ValidationError("--ctx-size must be positive") }
    }

    var modelPath: String { model ?? DefaultModel.path }

    func openFile() throws -> GGUFFile {
        let path = modelPath
        if model == nil && !FileManager.default.fileExists(atPath: path) {
            throw CLIError(DefaultModel.installHint)
        }
        return try GGUFFile(path: path, populate: true)
    }

    /// The GGUF file, or the Hugging Face checkpoint directory seen as one (`HFCheckpoint`).
    func openSource() throws -> any TensorSource {
        if let model, HFCheckpoint.isCheckpointDirectory(model) {
            return try HFCheckpoint(directory: model)
        }
        return try openFile()
    }

    /// Opens the model, builds it and its tokenizer.
    func load() throws -> LoadedModel {
        let m = try loadModel()
        guard let tokenizer = m.tokenizer else {
            let why = (m.file as? HFCheckpoint).map { $0.tokenizerProblem ?? "the directory has no tokenizer.json" }
                ?? "the file has no tokenizer.ggml.* metadata"
            throw CLIError("\(m.file.path): no tokenizer (\(why)); only `logits` works without one")
        }
        return LoadedModel(file: m.file, pool: m.pool, model: m.model, tokenizer: tokenizer, contextLength: m.contextLength)
    }

    /// Opens the model and builds it; the tokenizer only where the source has one (`logits` needs none).
    func loadModel() throws -> (file: any TensorSource, pool: ThreadPool, model: LanguageModel, tokenizer: Tokenizer?,
                                contextLength: Int) {
        let file = try openSource()
        let pool = ThreadPool(threads: threads ?? CPUInfo.physicalCores)
        let model = try ModelRegistry.load(file, pool: pool)
        let tokenizer = file.metadata["tokenizer.ggml.model"] == nil ? nil : try Tokenizer(metadata: file.metadata)
        return (file, pool, model, tokenizer, min(contextSize ?? 4096, model.info.contextLength))
    }
}

struct LoadedModel {
    let file: any TensorSource
    let pool: ThreadPool
    let model: LanguageModel
    let tokenizer: Tokenizer
    let contextLength: Int
}

struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// Unbuffered-enough writes to stdout/stderr for streaming.
enum Output {
    static func out(_ s: String) {
        FileHandle.standardOutput.write(Data(s.utf8))
    }

    static func err(_ s: String) {
        FileHandle.standardError.write(Data(s.utf8))
    }
}
