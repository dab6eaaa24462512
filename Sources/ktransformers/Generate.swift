import ArgumentParser
import Engine
import Foundation
import Tokenizer

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate a continuation of a prompt, streaming it to stdout.")

    @OptionGroup var options: ModelOptions

    @Option(name: [.short, .long], help: "The prompt text.")
    var prompt: String

    @Option(name: [.customShort("n"), .customLong("max-tokens")], help: "Tokens to generate at most.")
    var maxTokens: Int = 128

    @Option(help: "Sampling temperature; 0 is greedy.")
    var temperature: Float = 0.8

    @Option(name: .customLong("top-k"), help: "Keep the K most likely tokens (0 = off).")
    var topK: Int = 40

    @Option(name: .customLong("top-p"), help: "Nucleus sampling mass (1 = off).")
    var topP: Float = 0.95

    @Option(name: .customLong("min-p"), help: "Drop tokens below this fraction of the top probability (0 = off).")
    var minP: Float = 0.05

    @Option(help: "Random seed (default: random).")
    var seed: UInt64?

    @Flag(name: .customLong("ignore-eos"), help: "Keep generating after an end-of-generation token.")
    var ignoreEOS = false

    func validate() throws {
        guard maxTokens >= 0 else { throw ValidationError("--max-tokens must be >= 0") }
        guard temperature >= 0, temperature.isFinite else { throw ValidationError("--temperature must be >= 0") }
        guard topK >= 0 else { throw ValidationError("--top-k must be >= 0") }
        guard topP > 0, topP <= 1 else { throw ValidationError("--top-p must be in (0, 1]") }
        guard minP >= 0, minP <= 1 else { throw ValidationError("--min-p must be in [0, 1]") }
    }

    func run() throws {
        let m = try options.load()
        guard let tokenizer = m.tokenizer else { throw CLIError("\(m.file.path): no tokenizer") }
        let ids = tokenizer.encode(prompt)
        guard !ids.isEmpty else { throw CLIError("the prompt encodes to no tokens") }
        guard ids.count < m.contextLength else {
            throw CLIError("the prompt has \(ids.count) tokens, the context is \(m.contextLength) (--ctx-size)")
        }
        let generator = try Generator(model: m.model, contextLength: m.contextLength)
        var sampler = Sampler(SamplingParams(temperature: temperature, topK: topK, topP: topP, minP: minP, seed: seed))
        var detok = IncrementalDetokenizer(tokenizer: tokenizer)
        let stats = try generator.generate(prompt: ids, maxTokens: maxTokens, sampler: &sampler) { id in
            if !ignoreEOS && tokenizer.isEndOfGeneration(id) { return false }
            Output.out(detok.append(id))
            return true
        }
        Output.out(detok.flush() + "\n")
        Output.err(String(format: "prompt: %d tokens, %.1f tok/s | generation: %d tokens, %.1f tok/s | threads: %d\n",
                          stats.promptTokens, stats.promptTokensPerSecond, stats.generatedTokens,
                          stats.generateTokensPerSecond, m.cpu.pool.threadCount))
    }
}
