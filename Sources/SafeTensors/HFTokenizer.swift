import Foundation
import GGUF

/// A checkpoint directory's `tokenizer.json` (+ `tokenizer_config.json`) as llama.cpp's `tokenizer.ggml.*`
/// metadata: tokens by id (added tokens included, gaps filled with `[PAD{id}]` as the converter does), token types
/// (special added tokens are control tokens, other added tokens user-defined), BOS/EOS ids, add-BOS, and the chat
/// template, for the two kinds of BPE tokenizer checkpoints ship:
/// - byte-level BPE (GPT-2 style: Qwen 2/3, Llama 3, DeepSeek-V3, ...): `tokenizer.ggml.model = gpt2`, merges,
///   `tokenizer.ggml.pre` recognised from the pre-tokenizer's regexes;
/// - SentencePiece BPE with byte fallback, as `transformers` converts SentencePiece models (Llama 2, Mistral,
///   Mixtral, Gemma, ...): `tokenizer.ggml.model = llama` with scores (the merge ranks: a token made by an earlier
///   merge scores higher, the order of the SentencePiece scores the merges were generated from), `<0xXX>` byte
///   tokens, and `add_space_prefix` from the normalizer's Prepend("▁") or the Metaspace pre-tokenizer.
public enum HFTokenizer {
    /// The metadata, or nil when the directory has no tokenizer.json; throws when it has one that cannot be
    /// converted (the message says why).
    public static func metadata(directory: String, config: JSONValue) throws -> [(String, GGUFValue)]? {
        let dir = URL(fileURLWithPath: directory)
        let path = dir.appendingPathComponent("tokenizer.json").path
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let tj = try JSONValue.parse(data, what: path)
        let tc: JSONValue = try FileManager.default.contents(atPath: dir.appendingPathComponent("tokenizer_config.json").path)
            .map { try JSONValue.parse($0, what: dir.appendingPathComponent("tokenizer_config.json").path) } ?? .object([:])
        func fail(_ m: String) -> SafeTensorsError { SafeTensorsError(path: path, m) }

        guard let model = tj["model"], model["type"]?.string == "BPE" else {
            throw fail("tokenizer model '\(tj["model"]?["type"]?.string ?? "?")' is not supported (only BPE: byte-level, or SentencePiece-style with byte_fallback)")
        }
        let sentencePiece = model["byte_fallback"]?.bool == true
        let pre = sentencePiece ? "" : try preTokenizerName(tj["pre_tokenizer"], fail: fail)
        let addSpacePrefix = sentencePiece ? try spaceHandling(tj, fail: fail) : false

        // Tokens by id.
        var byID: [Int: String] = [:]
        for (tok, v) in model["vocab"]?.object ?? [:] {
            guard let id = v.int, id >= 0 else { throw fail("vocab entry '\(tok)' has no valid id") }
            byID[id] = tok
        }
        var types: [Int: Int32] = [:]
        if sentencePiece {
            for (id, t) in byID where t.count == 6 && t.hasPrefix("<0x") && t.hasSuffix(">") && UInt8(t.dropFirst(3).prefix(2), radix: 16) != nil {
                types[id] = 6  // byte
            }
            if let unk = model["unk_token"]?.string, let id = byID.first(where: { $0.value == unk })?.key { types[id] = 2 }
        }
        for a in tj["added_tokens"]?.array ?? [] {
            guard let id = a["id"]?.int, id >= 0, let content = a["content"]?.string else { continue }
            byID[id] = content
            types[id] = a["special"]?.bool == true ? 3 : 4  // control : user-defined
        }
        guard let maxID = byID.keys.max() else { throw fail("empty vocabulary") }
        let vocabSize = max(maxID + 1, config["vocab_size"]?.int ?? 0)
        var tokens: [String] = [], tokenTypes: [Int32] = []
        for i in 0..<vocabSize {
            if let t = byID[i] {
                tokens.append(t)
                tokenTypes.append(types[i] ?? 1)
            } else {
                tokens.append("[PAD\(i)]")
                tokenTypes.append(5)  // unused
            }
        }
        let ids = Dictionary(tokens.enumerated().map { ($1, $0) }, uniquingKeysWith: { a, _ in a })

        var merges: [String] = []
        for m in model["merges"]?.array ?? [] {
            if let s = m.string { merges.append(s) }
            else if let pair = m.array?.compactMap(\.string), pair.count == 2 { merges.append(pair[0] + " " + pair[1]) }
            else { throw fail("merge entry \(m) is neither \"a b\" nor [a, b]") }
        }

        var out: [(String, GGUFValue)]
        if sentencePiece {
            out = [
                ("tokenizer.ggml.model", .string("llama")),
                ("tokenizer.ggml.tokens", .array(.string(tokens))),
                ("tokenizer.ggml.scores", .array(.float32(Self.scores(tokens: tokens, types: tokenTypes, ids: ids, merges: merges)))),
                ("tokenizer.ggml.token_type", .array(.int32(tokenTypes))),
                ("tokenizer.ggml.add_space_prefix", .bool(addSpacePrefix)),
            ]
        } else {
            out = [
                ("tokenizer.ggml.model", .string("gpt2")),
                ("tokenizer.ggml.pre", .string(pre)),
                ("tokenizer.ggml.tokens", .array(.string(tokens))),
                ("tokenizer.ggml.token_type", .array(.int32(tokenTypes))),
                ("tokenizer.ggml.merges", .array(.string(merges))),
            ]
        }
        // Special tokens: tokenizer_config.json's strings first, then config.json's ids (gguf-py's SpecialVocab).
        func special(_ name: String) -> Int? {
            let v = tc["\(name)_token"]
            if let s = v?.string ?? v?["content"]?.string, let id = ids[s] { return id }
            let c = config["\(name)_token_id"]
            return c?.int ?? c?.array?.first?.int
        }
        for (name, key) in [("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")] {
            if let id = special(name), id >= 0, id < vocabSize { out.append(("tokenizer.ggml.\(key)_token_id", .uint32(UInt32(id)))) }
        }
        if let b = tc["add_bos_token"]?.bool {
            out.append(("tokenizer.ggml.add_bos_token", .bool(b)))
        } else if let bos = special("bos"), let first = templateFirstSpecial(tj["post_processor"]), ids[first] != nil {
            out.append(("tokenizer.ggml.add_bos_token", .bool(ids[first] == bos)))
        }
        if let e = tc["add_eos_token"]?.bool { out.append(("tokenizer.ggml.add_eos_token", .bool(e))) }
        if let t = tc["chat_template"]?.string {
            out.append(("tokenizer.chat_template", .string(t)))
        } else if let list = tc["chat_template"]?.array,
                  let t = list.first(where: { $0["name"]?.string == "default" })?["template"]?.string {
            out.append(("tokenizer.chat_template", .string(t)))
        }
        return out
    }

    /// SentencePiece-style scores from BPE merges: the token a merge of rank k makes scores −k (its first merge
    /// counts), so the encoder's "merge the pair whose token scores highest" applies the merges in rank order.
    /// Normal tokens no merge makes score below all of those; control, byte and unknown tokens 0 (never a merge
    /// result).
    static func scores(tokens: [String], types: [Int32], ids: [String: Int], merges: [String]) -> [Float] {
        var scores = [Float](repeating: 0, count: tokens.count)
        var made = [Bool](repeating: false, count: tokens.count)
        for (rank, m) in merges.enumerated() {
            guard let space = m.firstIndex(of: " ") else { continue }
            let joined = String(m[..<space]) + String(m[m.index(after: space)...])
            if let id = ids[joined], !made[id] {
                made[id] = true
                scores[id] = -Float(rank)
            }
        }
        for id in tokens.indices where !made[id] && types[id] == 1 {
            scores[id] = -Float(merges.count + id)
        }
        return scores
    }

    /// Whether a SentencePiece-style tokenizer.json puts "▁" before the text (llama.cpp's `add_space_prefix`):
    /// a Prepend("▁") normalizer (the legacy spelling: Prepend + Replace(" ", "▁")) or a Metaspace pre-tokenizer
    /// with prepend_scheme "first" / "always" (or the older add_prefix_space). Spaces must become "▁" one way or
    /// the other; any other normalizer (NFKC, lowercasing, ...) is refused rather than silently ignored.
    static func spaceHandling(_ tj: JSONValue, fail: (String) -> SafeTensorsError) throws -> Bool {
        var prepend = false, replacesSpaces = false
        func normalizer(_ v: JSONValue?) throws {
            guard let v, v != .null else { return }
            switch v["type"]?.string {
            case "Sequence": for n in v["normalizers"]?.array ?? [] { try normalizer(n) }
            case "Prepend" where v["prepend"]?.string == "▁": prepend = true
            case "Replace" where v["pattern"]?["String"]?.string == " " && v["content"]?.string == "▁": replacesSpaces = true
            default: throw fail("SentencePiece-style tokenizer: normalizer \(v["type"]?.string ?? "?") is not supported (only Prepend(\"▁\") and Replace(\" \", \"▁\"))")
            }
        }
        try normalizer(tj["normalizer"])
        func preTokenizer(_ v: JSONValue?) throws {
            guard let v, v != .null else { return }
            switch v["type"]?.string {
            case "Sequence": for p in v["pretokenizers"]?.array ?? [] { try preTokenizer(p) }
            case "Split" where v["pattern"]?["String"]?.string == " " && replacesSpaces:
                break  // Gemma's: splits at spaces the normalizer has already turned into ▁ (a no-op)
            case "Metaspace" where (v["replacement"]?.string ?? "▁") == "▁":
                replacesSpaces = true
                let scheme = v["prepend_scheme"]?.string ?? ((v["add_prefix_space"]?.bool ?? true) ? "always" : "never")
                prepend = prepend || scheme == "always" || scheme == "first"
            default: throw fail("SentencePiece-style tokenizer: pre-tokenizer \(v["type"]?.string ?? "?") is not supported (only Metaspace)")
            }
        }
        try preTokenizer(tj["pre_tokenizer"])
        guard replacesSpaces else {
            throw fail("SentencePiece-style tokenizer without Replace(\" \", \"▁\") or Metaspace: spaces would not become ▁")
        }
        return prepend
    }

    /// llama.cpp's `tokenizer.ggml.pre` for the regexes of a byte-level pre-tokenizer.
    static func preTokenizerName(_ pt: JSONValue?, fail: (String) -> SafeTensorsError) throws -> String {
        var patterns: [String] = []
        var byteLevelRegex = false
        func walk(_ v: JSONValue?) {
            guard let v else { return }
            switch v["type"]?.string {
            case "Sequence": (v["pretokenizers"]?.array ?? []).forEach(walk)
            case "Split": if let p = v["pattern"]?["Regex"]?.string ?? v["pattern"]?["String"]?.string { patterns.append(p) }
            case "ByteLevel": byteLevelRegex = byteLevelRegex || (v["use_regex"]?.bool ?? true)
            default: break
            }
        }
        walk(pt)
        let letters = #"[^\r\n\p{L}\p{N}]?\p{L}+"#
        let tail = #"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
        if patterns.isEmpty && byteLevelRegex { return "gpt-2" }
        if patterns.count == 1 {
            let p = patterns[0]
            if p.hasSuffix(letters + #"|\p{N}{1,3}"# + tail) { return "llama-bpe" }
            if p.hasSuffix(letters + #"|\p{N}"# + tail) { return "qwen2" }
        }
        if patterns.count == 3, patterns[0] == #"\p{N}{1,3}"#, patterns[1].hasPrefix("[一-龥") { return "deepseek-v3" }
        throw fail("pre-tokenizer regexes \(patterns) (ByteLevel use_regex \(byteLevelRegex)) match no known llama.cpp pre-tokenizer (known: gpt-2, llama-bpe, qwen2, deepseek-v3)")
    }

    /// The first special token of a `TemplateProcessing` post-processor's single-sequence template (the BOS that
    /// Llama 3's tokenizer adds), if it starts with one.
    static func templateFirstSpecial(_ pp: JSONValue?) -> String? {
        guard let pp else { return nil }
        if pp["type"]?.string == "Sequence" {
            return (pp["processors"]?.array ?? []).lazy.compactMap { templateFirstSpecial($0) }.first
        }
        guard pp["type"]?.string == "TemplateProcessing", let first = pp["single"]?.array?.first else { return nil }
        return first["SpecialToken"]?["id"]?.string
    }
}
