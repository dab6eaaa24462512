/// Turns a stream of token ids into text as it is generated. Each `append` returns only whole UTF-8
/// characters: the bytes of a character split across tokens (byte-fallback tokens of an emoji, say) are held
/// back until it is complete. The concatenation of every `append` and the final `flush` equals
/// `tokenizer.decode(ids, skipSpecial:)`.
public struct IncrementalDetokenizer: Sendable {
    public let tokenizer: Tokenizer
    public let skipSpecial: Bool
    /// Special tokens rendered even with `skipSpecial` (the markers of a tool-call format).
    public let keepSpecial: Set<Int32>
    private var pending: [UInt8] = []
    private var first = true

    public init(tokenizer: Tokenizer, skipSpecial: Bool = false, keepSpecial: Set<Int32> = []) {
        self.tokenizer = tokenizer
        self.skipSpecial = skipSpecial
        self.keepSpecial = keepSpecial
    }

    /// The text newly completed by token `id`.
    public mutating func append(_ id: Int32) -> String {
        pending.append(contentsOf: tokenizer.decodedBytes(id, skipSpecial: skipSpecial, first: first, keep: keepSpecial))
        first = false
        let keep = incompleteSuffixLength(pending)
        guard pending.count > keep else { return "" }
        let text = String(decoding: pending[..<(pending.count - keep)], as: UTF8.self)
        pending.removeFirst(pending.count - keep)
        return text
    }

    /// Whatever is still held back (an incomplete character becomes U+FFFD); the stream may then continue.
    public mutating func flush() -> String {
        defer { pending.removeAll() }
        return String(decoding: pending, as: UTF8.self)
    }

    /// Number of trailing bytes that start a multi-byte character not yet complete. Cutting before them never
    /// changes how the bytes before decode, since they begin with a lead byte.
    private func incompleteSuffixLength(_ b: [UInt8]) -> Int {
        var i = b.count - 1
        let lowest = max(0, b.count - 4)
        while i >= lowest && b[i] & 0xC0 == 0x80 { i -= 1 }
        guard i >= lowest else { return 0 }
        let need: Int
        switch b[i] {
        case 0xC2...0xDF: need = 2
        case 0xE0...0xEF: need = 3
        case 0xF0...0xF4: need = 4
        default: need = 1
        }
        let have = b.count - i
        return have < need ? have : 0
    }
}
