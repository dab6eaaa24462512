/// The character classes the pre-tokenizer patterns test, as bit flags per code point.
struct CharClass: OptionSet, Sendable {
    let rawValue: UInt8

    static let letter = CharClass(rawValue: 1)          // \p{L}
    static let number = CharClass(rawValue: 2)          // \p{N}
    static let punctuation = CharClass(rawValue: 4)     // \p{P}
    static let symbol = CharClass(rawValue: 8)          // \p{S}
    static let mark = CharClass(rawValue: 16)           // \p{M}
    static let whitespace = CharClass(rawValue: 32)     // \s (Unicode White_Space)
    static let newline = CharClass(rawValue: 64)        // [\r\n]

    static func of(_ s: Unicode.Scalar) -> CharClass {
        if s.value < 128 { return ascii[Int(s.value)] }
        return compute(s)
    }

    private static let ascii: [CharClass] = (0..<128).map { compute(Unicode.Scalar(UInt8($0))) }

    private static func compute(_ s: Unicode.Scalar) -> CharClass {
        var c: CharClass = []
        switch s.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            c.insert(.letter)
        case .decimalNumber, .letterNumber, .otherNumber:
            c.insert(.number)
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
             .initialPunctuation, .finalPunctuation, .otherPunctuation:
            c.insert(.punctuation)
        case .mathSymbol, .currencySymbol, .modifierSymbol, .otherSymbol:
            c.insert(.symbol)
        case .nonspacingMark, .spacingMark, .enclosingMark:
            c.insert(.mark)
        default:
            break
        }
        if s.properties.isWhitespace { c.insert(.whitespace) }
        if s == "\r" || s == "\n" { c.insert(.newline) }
        return c
    }
}
