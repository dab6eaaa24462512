import ArgumentParser
import Engine
import Foundation

struct Logits: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the model over exactly these token ids and print the logits at every position.",
        discussion: "Without --top: {\"tokens\": [...], \"logits\": [[...], ...]} (one full row per position). With --top K: {\"tokens\": [...], \"top\": [[{\"id\": 506, \"logprob\": -1.65}, ...], ...]}, log-probabilities of the K most likely next tokens.")

    @OptionGroup var options: ModelOptions

    @Option(help: "Token ids separated by spaces or commas.")
    var tokens: String

    @Option(help: "Print the K most likely next tokens with log-probabilities instead of full logits.")
    var top: Int?

    @Flag(help: "JSON output (the only format; accepted for symmetry with the other commands).")
    var json = false

    func run() throws {
        let ids = try tokens.split(whereSeparator: { $0 == " " || $0 == "," || $0 == "\n" }).map { s -> Int32 in
            guard let v = Int32(s) else { throw CLIError("--tokens: '\(s)' is not a token id") }
            return v
        }
        guard !ids.isEmpty else { throw CLIError("--tokens: no token ids given") }
        if let top, top < 1 { throw CLIError("--top must be at least 1") }
        let m = try options.loadModel()  // no tokenizer needed: Hugging Face directories work too
        let vocab = m.model.info.vocabSize
        if let bad = ids.first(where: { $0 < 0 || Int($0) >= vocab }) {
            throw CLIError("--tokens: id \(bad) is outside the vocabulary (0..<\(vocab))")
        }
        let generator = try Generator(model: m.model, contextLength: max(ids.count, min(m.contextLength, m.model.info.contextLength)))
        let (logits, rows) = try generator.forward(ids, start: 0, logits: .all)
        var s = "{\"tokens\": [" + ids.map(String.init).joined(separator: ", ") + "], "
        if let top {
            s += "\"top\": ["
            for r in 0..<rows {
                let row = logits + r * vocab
                let lse = logSumExp(row, vocab)
                let best = topK(row, vocab, min(top, vocab))
                s += (r > 0 ? ", " : "") + "[" + best.map { "{\"id\": \($0), \"logprob\": \(Double(row[$0]) - lse)}" }
                    .joined(separator: ", ") + "]"
            }
        } else {
            s += "\"logits\": ["
            for r in 0..<rows {
                let row = UnsafeBufferPointer(start: logits + r * vocab, count: vocab)
                s += (r > 0 ? ", " : "") + "[" + row.map { "\($0)" }.joined(separator: ", ") + "]"
            }
        }
        s += "]}\n"
        Output.out(s)
    }

    private func logSumExp(_ x: UnsafePointer<Float>, _ n: Int) -> Double {
        var m = -Float.infinity
        for i in 0..<n { m = max(m, x[i]) }
        var sum = 0.0
        for i in 0..<n { sum += exp(Double(x[i] - m)) }
        return Double(m) + log(sum)
    }

    private func topK(_ x: UnsafePointer<Float>, _ n: Int, _ k: Int) -> [Int] {
        var best: [Int] = []
        for i in 0..<n {
            if best.count < k || x[i] > x[best[best.count - 1]] {
                var j = best.count
                best.append(i)
                while j > 0 && x[best[j - 1]] < x[i] { best[j] = best[j - 1]; j -= 1 }
                best[j] = i
                if best.count > k { best.removeLast() }
            }
        }
        return best
    }
}
