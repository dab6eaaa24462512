import GGUF

/// Typed access to `tokenizer.ggml.*` metadata, with errors that name the key.
struct MetadataReader {
    let md: [String: GGUFValue]

    init(_ md: [String: GGUFValue]) {
        self.md = md
    }

    func string(_ key: String, required: Bool = false) throws -> String? {
        guard let v = md[key] else {
            if required { throw TokenizerError("missing metadata \(key)") }
            return nil
        }
        guard let s = v.string else { throw TokenizerError("\(key) must be a string, found \(v.wireType)") }
        return s
    }

    func int(_ key: String) throws -> Int? {
        guard let v = md[key] else { return nil }
        guard let i = v.int else { throw TokenizerError("\(key) must be an integer, found \(v.wireType)") }
        return i
    }

    func bool(_ key: String) throws -> Bool? {
        guard let v = md[key] else { return nil }
        if let b = v.bool { return b }
        if let i = v.int, i == 0 || i == 1 { return i == 1 }
        throw TokenizerError("\(key) must be a bool, found \(v.wireType)")
    }

    /// A required array of strings.
    func strings(_ key: String) throws -> [String] {
        guard let v = md[key] else { throw TokenizerError("missing metadata \(key)") }
        guard let a = v.array, let s = a.strings else {
            throw TokenizerError("\(key) must be an array of strings, found \(describe(v))")
        }
        return s
    }

    /// An optional numeric array with at least `count` entries (truncated to `count`).
    func floats(_ key: String, count: Int) throws -> [Float]? {
        guard let v = md[key] else { return nil }
        guard let a = v.array, a.elementType != .string, a.elementType != .array, let f = a.floats else {
            throw TokenizerError("\(key) must be a numeric array, found \(describe(v))")
        }
        guard f.count >= count else {
            throw TokenizerError("\(key) has \(f.count) entries for \(count) tokens")
        }
        return Array(f.prefix(count))
    }

    /// An optional integer array with at least `count` entries (truncated to `count`).
    func ints(_ key: String, count: Int) throws -> [Int]? {
        guard let v = md[key] else { return nil }
        guard let a = v.array, let i = a.ints else {
            throw TokenizerError("\(key) must be an integer array, found \(describe(v))")
        }
        guard i.count >= count else {
            throw TokenizerError("\(key) has \(i.count) entries for \(count) tokens")
        }
        return Array(i.prefix(count))
    }

    private func describe(_ v: GGUFValue) -> String {
        if let a = v.array { return "array of \(a.elementType)" }
        return "\(v.wireType)"
    }
}
