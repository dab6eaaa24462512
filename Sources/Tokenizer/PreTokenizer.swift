/// Splits text into words before byte-level BPE, as `tokenizer.ggml.pre` says. Each pre-tokenizer is a sequence
/// of regex splits (llama.cpp's `regex_exprs`, Hugging Face's `Split(..., behavior: isolated)`): each split
/// cuts every piece of the previous one into its matches and the unmatched stretches between them.
///
/// The regexes are implemented by hand over code points (see `PreTokenizerPatterns.swift`); their sources:
/// - gpt2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`
/// - llama3: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
/// - qwen2: llama3 with `\p{N}` in place of `\p{N}{1,3}`
/// - deepseek-v3: `\p{N}{1,3}`, then `[一-龥぀-ゟ゠-ヿ]+`, then
///   ``[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+``
/// - default (llama.cpp's fallback): `[\p{P}\$\+<=>\^~\|]+`, then gpt2, then `\p{N}+`, then `[0-9][0-9][0-9]`
public struct PreTokenizer: Sendable {
    /// The `tokenizer.ggml.pre` name this was made from.
    public let name: String
    let steps: [SplitPattern]
    /// llama.cpp's `ignore_merges`: a word that is itself a token is emitted whole.
    let ignoreMerges: Bool
    /// Whether BOS is added when `tokenizer.ggml.add_bos_token` is absent.
    let defaultAddBOS: Bool

    /// The `tokenizer.ggml.pre` values understood here.
    public static let supportedNames: [String] = nameTable.map(\.name).sorted()

    private static let nameTable: [(name: String, steps: [SplitPattern], ignoreMerges: Bool, addBOS: Bool)] = {
        var t: [(String, [SplitPattern], Bool, Bool)] = []
        let defaultSteps: [SplitPattern] = [.punctuationRun(backtick: false), .gpt2, .numberRun, .asciiDigitTriples]
        t.append(("default", defaultSteps, false, false))
        for n in ["gpt-2", "phi-2", "mpt", "olmo", "jais", "gigachat", "jina-es", "jina-de", "jina-v2-es", "jina-v2-de",
                  "jina-v1-en", "jina-v2-code", "roberta-bpe", "exaone4", "a.x-4.0", "mellum", "modern-bert",
                  "trillion", "granite-docling"] {
            t.append((n, [.gpt2], false, false))
        }
        for n in ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"] {
            t.append((n, [.llama3(maxDigits: 3)], true, true))
        }
        for n in ["dbrx", "smaug-bpe"] {
            t.append((n, [.llama3(maxDigits: 3)], false, false))
        }
        for n in ["qwen2", "deepseek-r1-qwen", "megrez", "stablelm2", "hunyuan", "solar-open", "kormo", "grok-2"] {
            t.append((n, [.llama3(maxDigits: 1)], false, false))
        }
        for n in ["deepseek-v3", "hunyuan-dense", "joyai-llm"] {
            t.append((n, [.numbers(max: 3), .cjkKana, .deepseekV3], false, false))
        }
        for n in ["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"] {
            t.append((n, [.numbers(max: 1), .gpt2], false, false))
        }
        t.append(("falcon", [.punctuationRun(backtick: true), .gpt2, .asciiDigitTriples], false, false))
        return t.map { (name: $0.0, steps: $0.1, ignoreMerges: $0.2, addBOS: $0.3) }
    }()

    /// The pre-tokenizer for a `tokenizer.ggml.pre` value (nil or empty: "default").
    public init(name: String?) throws {
        let key = (name?.isEmpty ?? true) ? "default" : name!
        guard let e = Self.nameTable.first(where: { $0.name == key }) else {
            throw TokenizerError("unsupported tokenizer.ggml.pre '\(key)' (supported: \(Self.supportedNames.joined(separator: ", ")))")
        }
        self.name = key
        steps = e.steps
        ignoreMerges = e.ignoreMerges
        defaultAddBOS = e.addBOS
    }

    /// The words of `text`, in order; their concatenation is `text`.
    public func split(_ text: String) -> [String] {
        let scalars = Array(text.unicodeScalars)
        return split(scalars).map { r in
            var s = String.UnicodeScalarView()
            s.append(contentsOf: scalars[r])
            return String(s)
        }
    }

    /// Word boundaries as ranges of code point indices.
    func split(_ scalars: [Unicode.Scalar]) -> [Range<Int>] {
        guard !scalars.isEmpty else { return [] }
        let text = ClassifiedText(scalars)
        var pieces = [0..<scalars.count]
        for step in steps {
            var next: [Range<Int>] = []
            next.reserveCapacity(pieces.count * 2)
            for r in pieces {
                var gapStart = r.lowerBound
                var i = r.lowerBound
                while i < r.upperBound {
                    let n = step.match(text, at: i, end: r.upperBound)
                    if n > 0 {
                        if gapStart < i { next.append(gapStart..<i) }
                        next.append(i..<(i + n))
                        i += n
                        gapStart = i
                    } else {
                        i += 1
                    }
                }
                if gapStart < r.upperBound { next.append(gapStart..<r.upperBound) }
            }
            pieces = next
        }
        return pieces
    }
}
