import ArgumentParser

@main
struct KTransformers: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ktransformers",
        abstract: "LLM inference on CPU from GGUF files.",
        subcommands: [Generate.self, Tokenize.self, Logits.self, Inspect.self, Bench.self, Convert.self, Serve.self]
    )
}
