/// Splits a template into data and tag tokens the way jinja2's lexer does with `trim_blocks=True`,
/// `lstrip_blocks=True` and `keep_trailing_newline=False`.
struct Token {
    enum Kind: Equatable {
        case data, varBegin, varEnd, blockBegin, blockEnd, name, string, int, float, op, eof
    }
    var kind: Kind
    var text: String
    var offset: Int  // byte offset in the normalised source, for line/column
}

struct Lexer {
    let src: [UInt8]
    var tokens: [Token] = []

    static func normalise(_ source: String) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(source.utf8.count)
        var it = source.utf8.makeIterator()
        var pendingCR = false
        while let c = it.next() {
            if pendingCR {
                pendingCR = false
                if c == 0x0A { continue }
            }
            if c == 0x0D { out.append(0x0A); pendingCR = true } else { out.append(c) }
        }
        // keep_trailing_newline=False: one final newline is dropped.
        if out.last == 0x0A { out.removeLast() }
        return out
    }

    init(_ source: String) {
        src = Lexer.normalise(source)
    }

    func location(_ offset: Int) -> (line: Int, column: Int) {
        var line = 1, col = 1
        var i = 0
        let end = min(offset, src.count)
        while i < end {
            let c = src[i]
            if c == 0x0A { line += 1; col = 1 } else if c & 0xC0 != 0x80 { col += 1 }
            i += 1
        }
        return (line, col)
    }

    func error(_ message: String, at offset: Int) -> ChatTemplateError {
        let (l, c) = location(offset)
        return .syntax(message: message, line: l, column: c)
    }

    @inline(__always) static func isSpace(_ c: UInt8) -> Bool {
        c == 0x20 || c == 0x0A || c == 0x09 || c == 0x0D || c == 0x0C || c == 0x0B
    }

    func startsWith(_ s: String, at i: Int) -> Bool {
        var j = i
        for c in s.utf8 {
            if j >= src.count || src[j] != c { return false }
            j += 1
        }
        return true
    }

    mutating func tokenize() throws -> [Token] {
        let n = src.count
        var pos = 0
        var lineStarting = true
        while pos < n {
            // Find the next tag start.
            var start = pos
            var kind: UInt8 = 0
            while start + 1 < n {
                if src[start] == UInt8(ascii: "{") {
                    let k = src[start + 1]
                    if k == UInt8(ascii: "{") || k == UInt8(ascii: "%") || k == UInt8(ascii: "#") { kind = k; break }
                }
                start += 1
            }
            if kind == 0 {
                emitData(pos, n)
                break
            }
            var dataEnd = start
            let mod: UInt8 = start + 2 < n ? src[start + 2] : 0
            if mod == UInt8(ascii: "-") {
                while dataEnd > pos, Lexer.isSpace(src[dataEnd - 1]) { dataEnd -= 1 }
            } else if mod != UInt8(ascii: "+") && kind != UInt8(ascii: "{") {
                // lstrip_blocks: drop spaces/tabs between the line start and a block or comment tag.
                var l = dataEnd
                while l > pos, src[l - 1] != 0x0A { l -= 1 }
                let atLineStart = l > pos || (l == pos && lineStarting)
                if atLineStart {
                    var allWS = true
                    var j = l
                    while j < dataEnd {
                        if !Lexer.isSpace(src[j]) { allWS = false; break }
                        j += 1
                    }
                    if allWS { dataEnd = l }
                }
            }
            emitData(pos, dataEnd)
            var p = start + 2
            if mod == UInt8(ascii: "-") || mod == UInt8(ascii: "+") { p += 1 }

            if kind == UInt8(ascii: "#") {
                // Comment: up to the first "#}".
                var e = p
                while e + 1 < n, !(src[e] == UInt8(ascii: "#") && src[e + 1] == UInt8(ascii: "}")) { e += 1 }
                if e + 1 >= n { throw error("missing end of comment tag", at: start) }
                let before: UInt8 = e > p ? src[e - 1] : 0
                pos = e + 2
                if before == UInt8(ascii: "-") {
                    while pos < n, Lexer.isSpace(src[pos]) { pos += 1 }
                } else if before != UInt8(ascii: "+") {
                    if pos < n, src[pos] == 0x0A { pos += 1 }
                }
                lineStarting = src[pos - 1] == 0x0A
                continue
            }

            let isBlock = kind == UInt8(ascii: "%")
            // {% raw %} ... {% endraw %}
            if isBlock, let rawEnd = try lexRaw(from: p, tagStart: start) {
                pos = rawEnd.next
                lineStarting = src[pos - 1] == 0x0A
                continue
            }
            tokens.append(Token(kind: isBlock ? .blockBegin : .varBegin, text: "", offset: start))
            pos = try lexTag(from: p, isBlock: isBlock, tagStart: start)
            lineStarting = src[pos - 1] == 0x0A
        }
        tokens.append(Token(kind: .eof, text: "", offset: n))
        return tokens
    }

    mutating func emitData(_ a: Int, _ b: Int) {
        if b > a {
            tokens.append(Token(kind: .data, text: String(decoding: src[a..<b], as: UTF8.self), offset: a))
        }
    }

    /// Recognises `{% raw %}`; emits its body as data and returns the position after `{% endraw %}`.
    mutating func lexRaw(from p: Int, tagStart: Int) throws -> (next: Int, Void)? {
        let n = src.count
        var i = p
        while i < n, Lexer.isSpace(src[i]) { i += 1 }
        guard startsWith("raw", at: i) else { return nil }
        i += 3
        while i < n, Lexer.isSpace(src[i]) { i += 1 }
        var stripAfter = false
        if startsWith("-%}", at: i) { stripAfter = true; i += 3 } else if startsWith("%}", at: i) { i += 2 } else {
            return nil
        }
        if stripAfter { while i < n, Lexer.isSpace(src[i]) { i += 1 } }
        // Find {% endraw %}
        var j = i
        while j < n {
            if src[j] == UInt8(ascii: "{"), j + 1 < n, src[j + 1] == UInt8(ascii: "%") {
                var k = j + 2
                let minus = k < n && src[k] == UInt8(ascii: "-")
                if minus || (k < n && src[k] == UInt8(ascii: "+")) { k += 1 }
                while k < n, Lexer.isSpace(src[k]) { k += 1 }
                if startsWith("endraw", at: k) {
                    k += 6
                    while k < n, Lexer.isSpace(src[k]) { k += 1 }
                    var endStrip = false
                    if startsWith("-%}", at: k) { endStrip = true; k += 3 } else if startsWith("%}", at: k) { k += 2 } else {
                        throw error("expected end of raw tag", at: k)
                    }
                    var bodyEnd = j
                    if minus { while bodyEnd > i, Lexer.isSpace(src[bodyEnd - 1]) { bodyEnd -= 1 } }
                    emitData(i, bodyEnd)
                    if endStrip { while k < n, Lexer.isSpace(src[k]) { k += 1 } } else if k < n, src[k] == 0x0A { k += 1 }
                    return (k, ())
                }
            }
            j += 1
        }
        throw error("missing {% endraw %}", at: tagStart)
    }

    /// Lexes the inside of `{{ ... }}` or `{% ... %}` starting at `p`; returns the position after the tag end
    /// (and the whitespace it removes).
    mutating func lexTag(from start: Int, isBlock: Bool, tagStart: Int) throws -> Int {
        let n = src.count
        var i = start
        var depth = 0
        let closer: UInt8 = isBlock ? UInt8(ascii: "%") : UInt8(ascii: "}")
        while true {
            while i < n, Lexer.isSpace(src[i]) { i += 1 }
            if i >= n { throw error(isBlock ? "unexpected end of template inside a block tag (missing '%}')" : "unexpected end of template inside an expression (missing '}}')", at: tagStart) }
            let c = src[i]
            if depth == 0 {
                // Tag end: "-%}", "+%}", "%}" (or the "}}" forms).
                if (c == UInt8(ascii: "-") || c == UInt8(ascii: "+")) && i + 2 < n && src[i + 1] == closer
                    && src[i + 2] == UInt8(ascii: "}") && (isBlock || c == UInt8(ascii: "-"))
                {
                    tokens.append(Token(kind: isBlock ? .blockEnd : .varEnd, text: "", offset: i))
                    var j = i + 3
                    if c == UInt8(ascii: "-") { while j < n, Lexer.isSpace(src[j]) { j += 1 } }
                    return j
                }
                if c == closer, i + 1 < n, src[i + 1] == UInt8(ascii: "}") {
                    tokens.append(Token(kind: isBlock ? .blockEnd : .varEnd, text: "", offset: i))
                    var j = i + 2
                    if isBlock, j < n, src[j] == 0x0A { j += 1 }  // trim_blocks
                    return j
                }
            }
            if c == UInt8(ascii: "_") || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) {
                let s = i
                while i < n {
                    let d = src[i]
                    if d == UInt8(ascii: "_") || (d >= 0x41 && d <= 0x5A) || (d >= 0x61 && d <= 0x7A) || (d >= 0x30 && d <= 0x39) { i += 1 } else { break }
                }
                tokens.append(Token(kind: .name, text: String(decoding: src[s..<i], as: UTF8.self), offset: s))
                continue
            }
            if c >= 0x30 && c <= 0x39 {
                let s = i
                var isFloat = false
                func digits() { while i < n, (src[i] >= 0x30 && src[i] <= 0x39) || (src[i] == UInt8(ascii: "_") && i + 1 < n && src[i + 1] >= 0x30 && src[i + 1] <= 0x39) { i += 1 } }
                digits()
                if i + 1 < n, src[i] == UInt8(ascii: "."), src[i + 1] >= 0x30, src[i + 1] <= 0x39 {
                    isFloat = true
                    i += 1
                    digits()
                }
                if i < n, src[i] == UInt8(ascii: "e") || src[i] == UInt8(ascii: "E") {
                    var j = i + 1
                    if j < n, src[j] == UInt8(ascii: "+") || src[j] == UInt8(ascii: "-") { j += 1 }
                    if j < n, src[j] >= 0x30, src[j] <= 0x39 {
                        isFloat = true
                        i = j
                        digits()
                    }
                }
                let text = String(decoding: src[s..<i], as: UTF8.self).replacingOccurrences(of: "_", with: "")
                tokens.append(Token(kind: isFloat ? .float : .int, text: text, offset: s))
                continue
            }
            if c == UInt8(ascii: "'") || c == UInt8(ascii: "\"") {
                let s = i
                i += 1
                var raw = [UInt8]()
                while true {
                    if i >= n { throw error("unterminated string literal", at: s) }
                    let d = src[i]
                    if d == c { i += 1; break }
                    if d == UInt8(ascii: "\\"), i + 1 < n {
                        raw.append(d); raw.append(src[i + 1]); i += 2; continue
                    }
                    raw.append(d); i += 1
                }
                tokens.append(Token(kind: .string, text: Lexer.unescape(raw), offset: s))
                continue
            }
            // Operators.
            let two: [String] = ["//", "**", "==", "!=", "<=", ">="]
            var matched = false
            if i + 1 < n {
                for t in two where src[i] == t.utf8.first! && src[i + 1] == t.utf8.last! {
                    tokens.append(Token(kind: .op, text: t, offset: i))
                    i += 2
                    matched = true
                    break
                }
            }
            if matched { continue }
            switch c {
            case UInt8(ascii: "("), UInt8(ascii: "["), UInt8(ascii: "{"): depth += 1
            case UInt8(ascii: ")"), UInt8(ascii: "]"), UInt8(ascii: "}"):
                if depth == 0 { throw error("unexpected '\(Character(Unicode.Scalar(c)))'", at: i) }
                depth -= 1
            case UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "*"), UInt8(ascii: "/"), UInt8(ascii: "%"),
                UInt8(ascii: "~"), UInt8(ascii: "<"), UInt8(ascii: ">"), UInt8(ascii: "="), UInt8(ascii: ","),
                UInt8(ascii: "."), UInt8(ascii: ":"), UInt8(ascii: "|"), UInt8(ascii: ";"):
                break
            default:
                throw error("unexpected character '\(String(decoding: [c], as: UTF8.self))'", at: i)
            }
            tokens.append(Token(kind: .op, text: String(decoding: [c], as: UTF8.self), offset: i))
            i += 1
        }
    }

    /// Python's "unicode-escape" decoding of a string literal's body (unknown escapes are kept).
    static func unescape(_ raw: [UInt8]) -> String {
        if !raw.contains(UInt8(ascii: "\\")) { return String(decoding: raw, as: UTF8.self) }
        var out = [UInt8]()
        var i = 0
        func appendScalar(_ v: UInt32) {
            let s = Unicode.Scalar(v) ?? "\u{FFFD}"
            out.append(contentsOf: Array(String(Character(s)).utf8))
        }
        func hex(_ count: Int) -> UInt32? {
            guard i + 1 + count <= raw.count else { return nil }
            let v = UInt32(String(decoding: raw[(i + 1)..<(i + 1 + count)], as: UTF8.self), radix: 16)
            return v
        }
        while i < raw.count {
            let c = raw[i]
            guard c == UInt8(ascii: "\\"), i + 1 < raw.count else { out.append(c); i += 1; continue }
            let e = raw[i + 1]
            i += 1
            switch e {
            case UInt8(ascii: "n"): out.append(0x0A); i += 1
            case UInt8(ascii: "t"): out.append(0x09); i += 1
            case UInt8(ascii: "r"): out.append(0x0D); i += 1
            case UInt8(ascii: "\\"): out.append(0x5C); i += 1
            case UInt8(ascii: "'"): out.append(0x27); i += 1
            case UInt8(ascii: "\""): out.append(0x22); i += 1
            case UInt8(ascii: "a"): out.append(0x07); i += 1
            case UInt8(ascii: "b"): out.append(0x08); i += 1
            case UInt8(ascii: "f"): out.append(0x0C); i += 1
            case UInt8(ascii: "v"): out.append(0x0B); i += 1
            case 0x0A: i += 1  // line continuation
            case UInt8(ascii: "x"):
                if let v = hex(2) { appendScalar(v); i += 3 } else { out.append(0x5C) }
            case UInt8(ascii: "u"):
                if let v = hex(4) { appendScalar(v); i += 5 } else { out.append(0x5C) }
            case UInt8(ascii: "U"):
                if let v = hex(8) { appendScalar(v); i += 9 } else { out.append(0x5C) }
            case UInt8(ascii: "0")...UInt8(ascii: "7"):
                var v: UInt32 = 0
                var k = 0
                while k < 3, i < raw.count, raw[i] >= UInt8(ascii: "0"), raw[i] <= UInt8(ascii: "7") {
                    v = v * 8 + UInt32(raw[i] - UInt8(ascii: "0")); i += 1; k += 1
                }
                appendScalar(v)
            default:
                out.append(0x5C)  // unknown escape: kept as is
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
