import ArgumentParser

@main
struct KTransformers: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ktransformers",
        abstract: "LLM inference server for GGUF files and Hugging Face checkpoints (CPU backend; large MoE models).",
        subcommands: [Generate.self, Tokenize.self, Logits.self, Inspect.self, Bench.self, Convert.self, Serve.self, Devices.self]
    )
}
