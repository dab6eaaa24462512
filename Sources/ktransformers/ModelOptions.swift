import ArgumentParser
import Backend
import Foundation
import GGUF
import Models
import Tokenizer

/// Options shared by the commands that load a model.
struct ModelOptions: ParsableArguments {
    @Option(name: .long, help: "GGUF model file (default: the installed default model, see scripts/default-model.sh).")
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

    /// Opens the file, builds the model and its tokenizer.
    func load() throws -> LoadedModel {
        let file = try openFile()
        let pool = ThreadPool(threads: threads ?? CPUInfo.physicalCores)
        let model = try ModelRegistry.load(file, pool: pool)
        let tokenizer = try Tokenizer(gguf: file)
        return LoadedModel(file: file, pool: pool, model: model, tokenizer: tokenizer,
                           contextLength: min(contextSize ?? 4096, model.info.contextLength))
    }
}

struct LoadedModel {
    let file: GGUFFile
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
