/// A piece of the input after special tokens are cut out: a byte range of plain text, or a special token.
enum Fragment: Equatable {
    case text(Range<Int>)
    case token(Int32)
}

/// Finds special-token texts (control, user-defined and unknown tokens) in the input, as llama.cpp's
/// `tokenizer_st_partition` does: longer tokens claim their occurrences first (ties: lower id first), each token's
/// occurrences are taken left to right, and an occurrence overlapping one already taken is skipped.
/// A byte trie finds every occurrence in one pass, so the cost does not grow with the number of special tokens.
struct SpecialTokenMatcher: Sendable {
    // Trie: node 0 is the root; children are a linked list (firstChild / sibling).
    private var byte: [UInt8] = [0]
    private var firstChild: [Int32] = [-1]
    private var sibling: [Int32] = [-1]
    private var token: [Int32] = [-1]
    /// Length in bytes of each special token, by id (0 for others).
    private let lengths: [Int32]
    /// Whether each token is matched only when special tokens are parsed (control, unknown).
    private let needsParseSpecial: [Bool]

    init(tokens: [String], types: [TokenType]) {
        var lengths = [Int32](repeating: 0, count: tokens.count)
        var needs = [Bool](repeating: false, count: tokens.count)
        for (i, t) in types.enumerated() where t.isSpecialText && !tokens[i].isEmpty {
            lengths[i] = Int32(tokens[i].utf8.count)
            needs[i] = t != .userDefined
        }
        self.lengths = lengths
        self.needsParseSpecial = needs
        for (i, n) in lengths.enumerated() where n > 0 {
            var node: Int32 = 0
            for b in tokens[i].utf8 { node = child(of: node, b, create: true) }
            if token[Int(node)] < 0 { token[Int(node)] = Int32(i) }
        }
    }

    var isEmpty: Bool { firstChild[0] < 0 }

    private func child(of node: Int32, _ b: UInt8) -> Int32 {
        var c = firstChild[Int(node)]
        while c >= 0 && byte[Int(c)] != b { c = sibling[Int(c)] }
        return c
    }

    private mutating func child(of node: Int32, _ b: UInt8, create: Bool) -> Int32 {
        let c = child(of: node, b)
        if c >= 0 { return c }
        let n = Int32(byte.count)
        byte.append(b)
        firstChild.append(-1)
        sibling.append(firstChild[Int(node)])
        token.append(-1)
        firstChild[Int(node)] = n
        return n
    }

    /// Cuts `text` into plain-text ranges and special tokens. Control and unknown tokens are matched only when
    /// `parseSpecial`; user-defined tokens always.
    func partition(_ text: [UInt8], parseSpecial: Bool) -> [Fragment] {
        guard !text.isEmpty else { return [] }
        guard !isEmpty else { return [.text(0..<text.count)] }
        struct Match { var start: Int; var id: Int32; var length: Int32 }
        var matches: [Match] = []
        for i in 0..<text.count {
            var node: Int32 = 0
            var j = i
            while j < text.count {
                node = child(of: node, text[j])
                if node < 0 { break }
                j += 1
                let id = token[Int(node)]
                if id >= 0 && (parseSpecial || !needsParseSpecial[Int(id)]) {
                    matches.append(Match(start: i, id: id, length: lengths[Int(id)]))
                }
            }
        }
        guard !matches.isEmpty else { return [.text(0..<text.count)] }
        matches.sort { a, b in
            if a.length != b.length { return a.length > b.length }
            if a.id != b.id { return a.id < b.id }
            return a.start < b.start
        }
        var taken = [Bool](repeating: false, count: text.count)
        var accepted: [Match] = []
        for m in matches {
            let r = m.start..<(m.start + Int(m.length))
            if r.contains(where: { taken[$0] }) { continue }
            for k in r { taken[k] = true }
            accepted.append(m)
        }
        accepted.sort { $0.start < $1.start }
        var out: [Fragment] = []
        var pos = 0
        for m in accepted {
            if m.start > pos { out.append(.text(pos..<m.start)) }
            out.append(.token(m.id))
            pos = m.start + Int(m.length)
        }
        if pos < text.count { out.append(.text(pos..<text.count)) }
        return out
    }
}
