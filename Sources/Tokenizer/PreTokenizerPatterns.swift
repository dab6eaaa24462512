/// Code points with their character classes, for the hand-written pattern matchers.
struct ClassifiedText {
    let v: [UInt32]
    let c: [CharClass]

    init(_ scalars: [Unicode.Scalar]) {
        v = scalars.map(\.value)
        c = scalars.map(CharClass.of)
    }

    /// Length of the run of code points from `i` (before `end`) that satisfy `p`.
    @inline(__always)
    func run(from i: Int, end: Int, _ p: (Int) -> Bool) -> Int {
        var j = i
        while j < end && p(j) { j += 1 }
        return j - i
    }

    @inline(__always) func isLetter(_ i: Int) -> Bool { c[i].contains(.letter) }
    @inline(__always) func isNumber(_ i: Int) -> Bool { c[i].contains(.number) }
    @inline(__always) func isSpace(_ i: Int) -> Bool { c[i].contains(.whitespace) }
    @inline(__always) func isNewline(_ i: Int) -> Bool { c[i].contains(.newline) }
    /// `[^\s\p{L}\p{N}]`
    @inline(__always) func isOther(_ i: Int) -> Bool { c[i].isDisjoint(with: [.whitespace, .letter, .number]) }
    @inline(__always) func isASCIILetter(_ i: Int) -> Bool { (v[i] | 0x20) >= 0x61 && (v[i] | 0x20) <= 0x7A }

    /// ASCII case-insensitive test of the code point at `i` against a lowercase ASCII letter.
    @inline(__always) func isLetter(_ i: Int, end: Int, _ lower: Character) -> Bool {
        i < end && (v[i] | 0x20) == UInt32(lower.asciiValue!) && v[i] < 128
    }
}

/// One regex of a pre-tokenizer. `match` gives the length of the match the regex engine would find at `i`
/// (leftmost alternative, greedy with backtracking), or 0 where nothing matches.
enum SplitPattern: Sendable {
    case gpt2
    case llama3(maxDigits: Int)
    case deepseekV3
    /// `[\p{P}\$\+<=>\^~\|]+` (with backtick for falcon)
    case punctuationRun(backtick: Bool)
    /// `\p{N}+`
    case numberRun
    /// `\p{N}{1,max}`
    case numbers(max: Int)
    /// `[0-9][0-9][0-9]`
    case asciiDigitTriples
    /// `[一-龥぀-ゟ゠-ヿ]+`
    case cjkKana

    func match(_ t: ClassifiedText, at i: Int, end: Int) -> Int {
        switch self {
        case .gpt2: return Self.gpt2(t, i, end)
        case .llama3(let maxDigits): return Self.llama3(t, i, end, maxDigits: maxDigits)
        case .deepseekV3: return Self.deepseekV3(t, i, end)
        case .punctuationRun(let backtick):
            return t.run(from: i, end: end) { j in
                if t.c[j].contains(.punctuation) { return true }
                switch t.v[j] {
                case 0x24, 0x2B, 0x3C, 0x3D, 0x3E, 0x5E, 0x7E, 0x7C: return true  // $ + < = > ^ ~ |
                case 0x60: return backtick
                default: return false
                }
            }
        case .numberRun: return t.run(from: i, end: end, t.isNumber)
        case .numbers(let max): return min(t.run(from: i, end: end, t.isNumber), max)
        case .asciiDigitTriples:
            guard i + 3 <= end else { return 0 }
            for j in i..<(i + 3) where !(0x30...0x39).contains(t.v[j]) { return 0 }
            return 3
        case .cjkKana:
            return t.run(from: i, end: end) { j in
                let x = t.v[j]
                return (0x4E00...0x9FA5).contains(x) || (0x3040...0x309F).contains(x) || (0x30A0...0x30FF).contains(x)
            }
        }
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d` (ASCII case-insensitive when `ignoreCase`).
    private static func contraction(_ t: ClassifiedText, _ i: Int, _ end: Int, ignoreCase: Bool) -> Int {
        guard t.v[i] == 0x27, i + 1 < end else { return 0 }
        func at(_ k: Int, _ ch: Character) -> Bool {
            ignoreCase ? t.isLetter(k, end: end, ch) : (k < end && t.v[k] == UInt32(ch.asciiValue!))
        }
        if at(i + 1, "s") || at(i + 1, "t") || at(i + 1, "m") || at(i + 1, "d") { return 2 }
        if (at(i + 1, "r") && at(i + 2, "e")) || (at(i + 1, "v") && at(i + 2, "e")) || (at(i + 1, "l") && at(i + 2, "l")) {
            return 3
        }
        return 0
    }

    /// `\s+(?!\S)|\s+` when `fallback`, else `\s+(?!\S)`: a whitespace run, less its last code point when a
    /// non-space follows (the last one then starts the next word).
    private static func spaces(_ t: ClassifiedText, _ i: Int, _ end: Int, fallback: Bool) -> Int {
        let k = t.run(from: i, end: end, t.isSpace)
        if k == 0 { return 0 }
        if i + k == end { return k }
        if k > 1 { return k - 1 }
        return fallback ? 1 : 0
    }

    /// `\s*[\r\n]+`: whitespace up to and including the last newline of the whitespace run.
    private static func spacesToNewline(_ t: ClassifiedText, _ i: Int, _ end: Int) -> Int {
        let k = t.run(from: i, end: end, t.isSpace)
        var j = i + k - 1
        while j >= i {
            if t.isNewline(j) { return j - i + 1 }
            j -= 1
        }
        return 0
    }

    /// ` ?X+` for a class X that excludes the space: an optional leading space, then a run of X.
    private static func spaceThenRun(_ t: ClassifiedText, _ i: Int, _ end: Int, _ p: (Int) -> Bool) -> Int {
        let s = t.v[i] == 0x20 ? 1 : 0
        guard i + s < end, p(i + s) else { return 0 }
        return s + t.run(from: i + s, end: end, p)
    }

    private static func gpt2(_ t: ClassifiedText, _ i: Int, _ end: Int) -> Int {
        var n = contraction(t, i, end, ignoreCase: false)
        if n > 0 { return n }
        n = spaceThenRun(t, i, end, t.isLetter)
        if n > 0 { return n }
        n = spaceThenRun(t, i, end, t.isNumber)
        if n > 0 { return n }
        n = spaceThenRun(t, i, end, t.isOther)
        if n > 0 { return n }
        return spaces(t, i, end, fallback: false)
    }

    private static func llama3(_ t: ClassifiedText, _ i: Int, _ end: Int, maxDigits: Int) -> Int {
        var n = contraction(t, i, end, ignoreCase: true)
        if n > 0 { return n }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if t.isLetter(i) { return t.run(from: i, end: end, t.isLetter) }
        if !t.isNewline(i) && !t.isNumber(i) && i + 1 < end && t.isLetter(i + 1) {
            return 1 + t.run(from: i + 1, end: end, t.isLetter)
        }
        // \p{N}{1,3}
        if t.isNumber(i) { return min(t.run(from: i, end: end, t.isNumber), maxDigits) }
        // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
        n = spaceThenRun(t, i, end, t.isOther)
        if n > 0 { return n + t.run(from: i + n, end: end, t.isNewline) }
        n = spacesToNewline(t, i, end)
        if n > 0 { return n }
        return spaces(t, i, end, fallback: true)
    }

    private static func deepseekV3(_ t: ClassifiedText, _ i: Int, _ end: Int) -> Int {
        // [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+
        let x = t.v[i]
        let asciiPunct = (0x21...0x2F).contains(x) || (0x3A...0x40).contains(x) || (0x5B...0x60).contains(x)
            || (0x7B...0x7E).contains(x)
        if asciiPunct && i + 1 < end && t.isASCIILetter(i + 1) && t.v[i + 1] < 128 {
            return 1 + t.run(from: i + 1, end: end) { t.isASCIILetter($0) && t.v[$0] < 128 }
        }
        // [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
        let letterOrMark: (Int) -> Bool = { !t.c[$0].isDisjoint(with: [.letter, .mark]) }
        if t.c[i].isDisjoint(with: [.newline, .letter, .punctuation, .symbol]) && i + 1 < end && letterOrMark(i + 1) {
            return 1 + t.run(from: i + 1, end: end, letterOrMark)
        }
        if letterOrMark(i) { return t.run(from: i, end: end, letterOrMark) }
        // ' ?[\p{P}\p{S}]+[\r\n]*'
        let n = spaceThenRun(t, i, end) { !t.c[$0].isDisjoint(with: [.punctuation, .symbol]) }
        if n > 0 { return n + t.run(from: i + n, end: end, t.isNewline) }
        let m = spacesToNewline(t, i, end)
        if m > 0 { return m }
        return spaces(t, i, end, fallback: true)
    }
}
