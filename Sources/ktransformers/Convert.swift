import ArgumentParser
import Foundation
import GGUF
import Quant
import SafeTensors

/// `ktransformers convert`: a Hugging Face checkpoint directory to a GGUF file with llama.cpp's tensor names and
/// metadata keys (the same view `--model DIR` runs on, `SafeTensors.HFCheckpoint`).
struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert a Hugging Face checkpoint directory (config.json + *.safetensors) to GGUF.",
        discussion: """
            Matrices (2-D and stacked expert tensors) are stored in --type where their row length is a multiple of \
            the type's block size, else in the next wider type that fits (q4_k/q6_k -> q8_0 -> f16, as llama.cpp \
            does); norms, biases, MoE routers and other 1-D tensors stay f32. Tensors are converted one at a time, \
            so memory stays near the size of the largest tensor. A byte-level BPE tokenizer.json (Qwen, Llama 3, \
            DeepSeek-V3 style) becomes tokenizer.ggml.* metadata; other tokenizers are left out with a warning.
            """)

    @Option(help: "Hugging Face checkpoint directory.")
    var input: String

    @Option(help: "GGUF file to write.")
    var output: String

    @Option(help: "Matrix type: f32, f16, bf16, q8_0, q4_0, q4_k, q6_k.")
    var type: String = "f16"

    static var types: [String: GGMLType] { HFCheckpoint.conversionTypes }

    func validate() throws {
        guard Self.types[type.lowercased()] != nil else {
            throw ValidationError("--type must be one of \(Self.types.keys.sorted().joined(separator: ", "))")
        }
    }

    func run() throws {
        let start = Date()
        let target = Self.types[type.lowercased()]!
        guard HFCheckpoint.isCheckpointDirectory(input) else {
            throw CLIError("\(input): not a Hugging Face checkpoint directory (a directory with config.json)")
        }
        let hf = try HFCheckpoint(directory: input)
        if let problem = hf.tokenizerProblem { Output.err("warning: no tokenizer metadata written: \(problem)\n") }
        let stats = try hf.writeGGUF(to: output, type: target)
        let mb = Double((try? FileManager.default.attributesOfItem(atPath: output)[.size] as? Int) ?? 0) / 1e6
        Output.err(String(format: "%@ -> %@: %@, %d tensors (%@), %.1f MB in %.1f s\n", input, output, hf.architecture ?? "?",
                          stats.values.reduce(0, +), stats.map { "\($0.value) \($0.key)" }.sorted().joined(separator: ", "), mb,
                          Date().timeIntervalSince(start)))
    }
}
