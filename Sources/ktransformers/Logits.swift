import ArgumentParser
import Engine
import Foundation

struct Logits: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the model over exactly these token ids and print the logits at every position.",
        discussion: "Without --top: {\"tokens\": [...], \"logits\": [[...], ...]} (one full row per position). With --top K: {\"tokens\": [...], \"top\": [[{\"id\": 506, \"logprob\": -1.65}, ...], ...]}, log-probabilities of the K most likely next tokens. With --reference FILE instead of --tokens: the teacher-forced comparison with a reference's log-probabilities (docs/testing.md).")

    @OptionGroup var options: ModelOptions

    @Option(help: "Token ids separated by spaces or commas.")
    var tokens: String?

    @Option(help: "Instead of --tokens: a reference JSONL (one case per line: prompt_ids, gen_ids, steps[].top5[].{id, logprob}, as reference/ref_f64.jsonl). Feeds prompt + continuation of each case and prints the mean and max |Δlogprob| over the reference's top-5 at every step, and the argmax agreement at the steps whose top-1/top-2 gap is at least 0.5.")
    var reference: String?

    @Option(help: "Print the K most likely next tokens with log-probabilities instead of full logits.")
    var top: Int?

    @Flag(help: "JSON output (the only format; accepted for symmetry with the other commands).")
    var json = false

    func run() throws {
        if let reference { return try compare(reference) }
        guard let tokens else { throw CLIError("give --tokens (or --reference FILE)") }
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

    /// The teacher-forced comparison with a reference file (`--reference`).
    private func compare(_ path: String) throws {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw CLIError("--reference: cannot read \(path)") }
        let m = try options.loadModel()
        let vocab = m.model.info.vocabSize
        var sum = 0.0, count = 0, worst = 0.0, decisive = 0, agree = 0, cases = 0
        for (n, line) in text.split(separator: "\n").enumerated() where !line.allSatisfy(\.isWhitespace) {
            guard let d = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let prompt = d["prompt_ids"] as? [Int], let gen = d["gen_ids"] as? [Int],
                  let steps = d["steps"] as? [[String: Any]] else {
                throw CLIError("--reference \(path):\(n + 1): expected an object with prompt_ids, gen_ids and steps")
            }
            let ids = (prompt + gen).map { Int32($0) }
            guard !prompt.isEmpty, steps.count <= gen.count, ids.allSatisfy({ $0 >= 0 && Int($0) < vocab }) else {
                throw CLIError("--reference \(path):\(n + 1): empty prompt, more steps than tokens, or ids outside the vocabulary")
            }
            let generator = try Generator(model: m.model, contextLength: ids.count)
            let (logits, _) = try generator.forward(ids, start: 0, logits: .all)
            for (i, step) in steps.enumerated() {
                guard let top = step["top5"] as? [[String: Any]], top.count >= 2 else {
                    throw CLIError("--reference \(path):\(n + 1): step \(i) has no top5")
                }
                let row = logits + (prompt.count - 1 + i) * vocab
                let lse = logSumExp(row, vocab)
                var best: (id: Int, lp: Double)? = nil, second = -Double.infinity
                for e in top {
                    guard let id = e["id"] as? Int, let lp = e["logprob"] as? Double, id >= 0, id < vocab else {
                        throw CLIError("--reference \(path):\(n + 1): step \(i): bad top5 entry")
                    }
                    let diff = abs(Double(row[id]) - lse - lp)
                    sum += diff
                    count += 1
                    worst = max(worst, diff)
                    if best == nil || lp > best!.lp { if let b = best { second = max(second, b.lp) }; best = (id, lp) } else { second = max(second, lp) }
                }
                if let best, best.lp - second >= 0.5 {
                    decisive += 1
                    if topK(row, vocab, 1)[0] == best.id { agree += 1 }
                }
            }
            cases += 1
        }
        Output.out(String(format: "{\"cases\": %d, \"entries\": %d, \"mean_abs_logprob_diff\": %.6f, \"max_abs_logprob_diff\": %.6f, \"decisive_steps\": %d, \"decisive_argmax_agree\": %d}\n",
                          cases, count, count > 0 ? sum / Double(count) : 0, worst, decisive, agree))
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
