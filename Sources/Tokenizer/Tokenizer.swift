import GGUF

/// A model's tokenizer, built from its `tokenizer.ggml.*` metadata: SentencePiece-style (`llama`) or byte-level
/// BPE (`gpt2`), reproducing llama.cpp's tokenization. Immutable after init, so it can be shared across threads.
public final class Tokenizer: Sendable {
    public enum Kind: String, Sendable {
        /// `tokenizer.ggml.model = "llama"`: score-driven merges over characters, byte fallback `<0xXX>`.
        case sentencePiece = "llama"
        /// `tokenizer.ggml.model = "gpt2"`: rank-driven merges over pre-tokenized, byte-level words.
        case byteLevelBPE = "gpt2"
    }

    public let kind: Kind
    /// The pre-tokenizer (byte-level BPE only).
    public let preTokenizer: PreTokenizer?

    public let bosID: Int32?
    public let eosID: Int32?
    public let eotID: Int32?
    public let eomID: Int32?
    public let unknownID: Int32?
    public let paddingID: Int32?
    public let sepID: Int32?
    /// Whether `encode(addSpecial: true)` starts with BOS / ends with EOS.
    public let addBOS: Bool
    public let addEOS: Bool
    /// SentencePiece: a space is put before text at the start and after special tokens.
    public let addSpacePrefix: Bool

    private let tokens: [String]
    private let types: [TokenType]
    private let eog: Set<Int32>
    private let tokenTable: ByteStringTable
    private let special: SpecialTokenMatcher
    private let spm: SPMEncoder?
    private let bpe: BPEEncoder?

    public var vocabSize: Int { tokens.count }

    public convenience init(gguf: GGUFFile) throws {
        try self.init(metadata: gguf.metadata)
    }

    /// Builds the tokenizer from GGUF metadata (the `tokenizer.ggml.*` keys).
    public init(metadata md: [String: GGUFValue]) throws {
        let meta = MetadataReader(md)
        let modelName = try meta.string("tokenizer.ggml.model", required: true)!
        guard let kind = Kind(rawValue: modelName) else {
            throw TokenizerError("unsupported tokenizer.ggml.model '\(modelName)' (supported: llama, gpt2)")
        }
        self.kind = kind
        let tokens = try meta.strings("tokenizer.ggml.tokens")
        guard !tokens.isEmpty else { throw TokenizerError("tokenizer.ggml.tokens is empty") }
        guard tokens.count < Int(Int32.max) else { throw TokenizerError("tokenizer.ggml.tokens has too many entries") }
        self.tokens = tokens
        let n = tokens.count
        let scores = try meta.floats("tokenizer.ggml.scores", count: n)
        var types: [TokenType] = try meta.ints("tokenizer.ggml.token_type", count: n)?
            .map { TokenType(rawValue: $0) ?? .undefined } ?? Array(repeating: .normal, count: n)

        var table = ByteStringTable(capacity: n)
        for (i, t) in tokens.enumerated() { table.insert(t, value: Int32(i)) }

        // Special ids, with llama.cpp's defaults where the metadata has none.
        func id(_ key: String, default d: Int32?) throws -> Int32? {
            guard let v = try meta.int(key) else { return d.flatMap { $0 < n ? $0 : nil } }
            guard v >= 0, v < n else { throw TokenizerError("\(key) = \(v) is outside the vocabulary (\(n) tokens)") }
            return Int32(v)
        }
        let spmKind = kind == .sentencePiece
        bosID = try id("tokenizer.ggml.bos_token_id", default: spmKind ? 1 : 11)
        eosID = try id("tokenizer.ggml.eos_token_id", default: spmKind ? 2 : 11)
        unknownID = try id("tokenizer.ggml.unknown_token_id", default: spmKind ? 0 : nil)
        paddingID = try id("tokenizer.ggml.padding_token_id", default: nil)
        sepID = try id("tokenizer.ggml.seperator_token_id", default: nil) ?? id("tokenizer.ggml.separator_token_id", default: nil)
        var eot = try id("tokenizer.ggml.eot_token_id", default: nil)
        let eom = try id("tokenizer.ggml.eom_token_id", default: nil)
        var fimIDs: [Int32] = [], fimByName: [Int32] = []
        for (kind, names) in SpecialTokenNames.fillInMiddleEnd {
            if let t = try id("tokenizer.ggml.\(kind)_token_id", default: nil) {
                fimIDs.append(t)
            } else if let t = names.lazy.compactMap({ table.lookup($0) }).first {
                fimIDs.append(t)
                fimByName.append(t)
            }
        }

        let pre: PreTokenizer?
        switch kind {
        case .sentencePiece:
            pre = nil
            addSpacePrefix = try meta.bool("tokenizer.ggml.add_space_prefix") ?? true
            addBOS = try meta.bool("tokenizer.ggml.add_bos_token") ?? true
        case .byteLevelBPE:
            pre = try PreTokenizer(name: meta.string("tokenizer.ggml.pre"))
            addSpacePrefix = false
            addBOS = try meta.bool("tokenizer.ggml.add_bos_token") ?? pre!.defaultAddBOS
        }
        preTokenizer = pre
        addEOS = try meta.bool("tokenizer.ggml.add_eos_token") ?? false
        if addBOS && bosID == nil {
            throw TokenizerError("tokenizer.ggml.add_bos_token is true, but tokenizer.ggml.bos_token_id is not set")
        }
        if addEOS && eosID == nil {
            throw TokenizerError("tokenizer.ggml.add_eos_token is true, but tokenizer.ggml.eos_token_id is not set")
        }

        // End-of-generation tokens. Those recognised by their text (as llama.cpp does) become control tokens.
        var byName: [Int32] = SpecialTokenNames.endOfGeneration.compactMap { table.lookup($0) } + fimByName
        if eot == nil {
            eot = SpecialTokenNames.endOfTurn.lazy.compactMap { table.lookup($0) }.first
            if let eot { byName.append(eot) }
        }
        var eog = Set(fimIDs).union(byName).union([eosID, eot, eom].compactMap { $0 })
        if let end = table.lookup("<|end|>"), table.lookup("<|return|>") != nil || table.lookup("<|flush|>") != nil,
           table.lookup("<|call|>") != nil || table.lookup("<|calls|>") != nil, end != eosID {
            eog.remove(end)  // gpt-oss / solar-open: <|end|> ends a message, not the generation
            byName.removeAll { $0 == end }
        }
        if let s = table.lookup("</s>"), table.lookup("<|tool_response>") != nil, s != eosID {
            eog.remove(s)  // gemma 4
            byName.removeAll { $0 == s }
        }
        for t in byName { types[Int(t)] = .control }
        eotID = eot
        eomID = eom
        self.eog = eog
        self.types = types
        tokenTable = table
        special = SpecialTokenMatcher(tokens: tokens, types: types)

        switch kind {
        case .sentencePiece:
            var byteTokens = [Int32](repeating: -1, count: 256)
            for b in 0..<256 {
                let hex = String(b, radix: 16, uppercase: true)
                byteTokens[b] = table.lookup("<0x\(hex.count == 1 ? "0" + hex : hex)>") ?? table.lookup([UInt8(b)]) ?? -1
            }
            spm = SPMEncoder(table: table, scores: scores ?? Array(repeating: 0, count: n), byteTokens: byteTokens,
                             unknownID: unknownID)
            bpe = nil
        case .byteLevelBPE:
            let merges = try meta.strings("tokenizer.ggml.merges")
            var pieces = ByteStringTable(capacity: n + 2 * merges.count)
            for (i, t) in tokens.enumerated() { pieces.insert(t, value: Int32(i)) }
            var nextID = Int32(n)
            var ranks: [UInt64: Int32] = [:]
            ranks.reserveCapacity(merges.count)
            for (rank, m) in merges.enumerated() {
                let u = Array(m.utf8)
                guard u.count >= 3, let sp = u[1...].firstIndex(of: 0x20) else {
                    throw TokenizerError("tokenizer.ggml.merges[\(rank)] = '\(m)' is not two pieces separated by a space")
                }
                var ids: [Int32] = []
                for part in [Array(u[..<sp]), Array(u[(sp + 1)...])] {
                    if let id = pieces.lookup(part) {
                        ids.append(id)
                    } else {
                        pieces.insert(part, value: nextID)
                        ids.append(nextID)
                        nextID += 1
                    }
                }
                let key = UInt64(UInt32(ids[0])) << 32 | UInt64(UInt32(ids[1]))
                if ranks[key] == nil { ranks[key] = Int32(rank) }
            }
            bpe = BPEEncoder(pieces: pieces, vocabSize: n, ranks: ranks, pre: pre!)
            spm = nil
        }
    }

    // MARK: - Encoding

    /// Token ids of `text`. `addSpecial` adds BOS/EOS as the model's add_bos/add_eos flags say; `parseSpecial`
    /// turns control-token texts such as `<start_of_turn>` into those tokens (user-defined tokens are always
    /// matched, as in llama.cpp).
    public func encode(_ text: String, addSpecial: Bool = true, parseSpecial: Bool = true) -> [Int32] {
        var out: [Int32] = []
        if addSpecial && addBOS, let bosID { out.append(bosID) }
        let bytes = Array(text.utf8)
        var previousWasSpecial = true
        for fragment in special.partition(bytes, parseSpecial: parseSpecial) {
            switch fragment {
            case .token(let id):
                out.append(id)
                previousWasSpecial = true
            case .text(let r):
                if let spm {
                    var escaped: [UInt8] = []
                    escaped.reserveCapacity(r.count + 8)
                    if addSpacePrefix && previousWasSpecial { escaped.append(contentsOf: [0xE2, 0x96, 0x81]) }
                    for b in bytes[r] {
                        if b == 0x20 { escaped.append(contentsOf: [0xE2, 0x96, 0x81]) } else { escaped.append(b) }
                    }
                    spm.encode(escaped, into: &out)
                } else if let bpe {
                    bpe.encode(bytes[r], into: &out)
                }
                previousWasSpecial = false
            }
        }
        if addSpecial && addEOS, let eosID { out.append(eosID) }
        return out
    }

    // MARK: - Decoding

    /// The text of `ids`. With `skipSpecial`, control and unknown tokens (BOS, EOS, `<end_of_turn>`, ...) are
    /// left out. Invalid UTF-8 (a multi-byte character cut off) becomes U+FFFD.
    public func decode(_ ids: [Int32], skipSpecial: Bool = false) -> String {
        var bytes: [UInt8] = []
        for (i, id) in ids.enumerated() {
            bytes.append(contentsOf: decodedBytes(id, skipSpecial: skipSpecial, first: i == 0))
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The bytes token `id` contributes to `decode`: `tokenBytes`, empty for skipped special tokens, and for the
    /// first token, less the space SentencePiece's add_space_prefix put there.
    func decodedBytes(_ id: Int32, skipSpecial: Bool, first: Bool, keep: Set<Int32> = []) -> [UInt8] {
        if skipSpecial, let t = type(id), t == .control || t == .unknown, !keep.contains(id) { return [] }
        var b = tokenBytes(id)
        if first && addSpacePrefix && b.first == 0x20 { b.removeFirst() }
        return b
    }

    /// The bytes a token stands for: `<0xAB>` byte tokens their byte, SentencePiece's ▁ a space, byte-level BPE's
    /// alphabet its bytes; control and user-defined tokens their text. Empty for unknown ids and unused tokens.
    public func tokenBytes(_ id: Int32) -> [UInt8] {
        guard let t = type(id) else { return [] }
        let text = tokens[Int(id)]
        switch t {
        case .control, .userDefined, .unknown:
            return Array(text.utf8)
        case .normal:
            if kind == .byteLevelBPE { return ByteLevel.decode(text) }
            var out: [UInt8] = []
            let u = Array(text.utf8)
            var i = 0
            while i < u.count {
                if i + 2 < u.count && u[i] == 0xE2 && u[i + 1] == 0x96 && u[i + 2] == 0x81 {
                    out.append(0x20)
                    i += 3
                } else {
                    out.append(u[i])
                    i += 1
                }
            }
            return out
        case .byte:
            let u = Array(text.utf8)
            if u.count == 6, let b = UInt8(String(decoding: u[3..<5], as: UTF8.self), radix: 16) { return [b] }
            return kind == .byteLevelBPE ? ByteLevel.decode(text) : u
        case .unused, .undefined:
            return []
        }
    }

    // MARK: - Vocabulary

    /// The raw vocabulary string of a token ("" for ids outside the vocabulary).
    public func piece(_ id: Int32) -> String {
        type(id) == nil ? "" : tokens[Int(id)]
    }

    /// The token whose vocabulary string is `piece`.
    public func tokenID(for piece: String) -> Int32? {
        guard let id = tokenTable.lookup(piece), Int(id) < tokens.count else { return nil }
        return id
    }

    /// The token's type (nil for ids outside the vocabulary). EOG tokens are reported as control tokens.
    public func type(_ id: Int32) -> TokenType? {
        id >= 0 && Int(id) < tokens.count ? types[Int(id)] : nil
    }

    public func isControl(_ id: Int32) -> Bool { type(id) == .control }

    /// Whether generation stops at this token: EOS, EOT, EOM and tokens such as `<end_of_turn>`, `<|im_end|>`,
    /// `<|eot_id|>`, `<|endoftext|>` (llama.cpp's list).
    public func isEndOfGeneration(_ id: Int32) -> Bool { eog.contains(id) }

    /// All end-of-generation tokens, ascending.
    public var endOfGenerationIDs: [Int32] { eog.sorted() }
}

/// Token texts llama.cpp recognises by name.
enum SpecialTokenNames {
    /// Fill-in-the-middle tokens that end generation, by metadata key stem.
    static let fillInMiddleEnd: [(String, [String])] = [
        ("fim_pad", ["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"]),
        ("fim_rep", ["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"]),
        ("fim_sep", ["<|file_sep|>"]),
    ]
    static let endOfTurn = [
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>", "_<EOT>",
        "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
    ]
    static let endOfGeneration = [
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
        "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
        "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
    ]
}
