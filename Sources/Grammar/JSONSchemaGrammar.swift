/// A JSON schema, or JSON-in-a-format (tool calls), that cannot be compiled; `keyword` names what is not
/// supported and `path` where (a JSON pointer into the schema).
public struct SchemaError: Error, CustomStringConvertible, Sendable, Equatable {
    public let message: String
    public let keyword: String?
    public let path: String

    public var description: String { path.isEmpty || path == "#" ? message : "\(message) (at \(path))" }
}

/// Compiles JSON schemas into grammars whose sentences are exactly the JSON texts the schema accepts (within the
/// supported subset; anything outside it is refused with a `SchemaError` naming the keyword, never ignored).
///
/// Supported: `type` (one or a list), `enum`, `const`, `properties`/`required`/`additionalProperties`, `items`,
/// `prefixItems`, `minItems`/`maxItems`, `minLength`/`maxLength`, `format` (date, time, date-time, uuid, email),
/// `anyOf`/`oneOf` (as alternatives), a one-element `allOf`, `$ref` to `#`, `#/$defs/…` and `#/definitions/…`,
/// `nullable`, integer `minimum` 0 or 1, and annotations (title, description, default, examples, ...).
/// Properties are written in the schema's order; optional ones may be left out; with `properties`, no other
/// property is generated. Whitespace between tokens is limited (one space, or a line break and up to 20 spaces), numbers to 16 digits and 2-digit exponents (always a finite double).
public enum JSONSchemaGrammar {
    /// A grammar for the values of `schema`: the JSON text alone, so the output ends where the value does.
    public static func grammar(schema: JSONValue) throws -> Grammar {
        let b = GrammarBuilder()
        let c = SchemaCompiler(builder: b, root: schema)
        let v = try c.rule(schema, path: "#")
        let root = b.add("root", [[.rule(v)]])
        do { return try b.build(root: root) } catch { throw SchemaError(message: "\(error)", keyword: nil, path: "#") }
    }

    /// `response_format: {"type": "json_object"}`: any JSON object.
    public static func anyObjectGrammar() -> Grammar {
        let b = GrammarBuilder()
        let c = SchemaCompiler(builder: b, root: .object([]))
        let root = b.add("root", [[.rule(c.anyObject)]])
        return try! b.build(root: root)
    }

    /// Compiles `schema`'s value rule into an existing builder (for grammars that embed JSON, e.g. tool calls).
    public static func valueRule(_ schema: JSONValue, in b: GrammarBuilder) throws -> Int32 {
        try SchemaCompiler(builder: b, root: schema).rule(schema, path: "#")
    }

    /// The whitespace rule of `b` (shared with compiled schemas).
    public static func whitespaceRule(in b: GrammarBuilder) -> Int32 {
        SchemaCompiler(builder: b, root: .object([])).ws
    }
}

final class SchemaCompiler {
    typealias S = GrammarBuilder.Symbol
    let b: GrammarBuilder
    let root: JSONValue
    private var refs: [String: Int32] = [:]

    init(builder: GrammarBuilder, root: JSONValue) {
        b = builder
        self.root = root
    }

    static let annotations: Set<String> = [
        "title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly",
        "writeOnly", "$defs", "definitions", "strict", "discriminator", "example",
    ]
    static let supported: Set<String> = [
        "type", "enum", "const", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems",
        "maxItems", "minLength", "maxLength", "format", "anyOf", "oneOf", "allOf", "$ref", "nullable", "minimum",
    ]

    func fail(_ m: String, _ keyword: String?, _ path: String) -> SchemaError {
        SchemaError(message: m, keyword: keyword, path: path)
    }

    // MARK: Shared pieces

    /// Whitespace between tokens: nothing, one space, or one line break and an indent of up to 20 spaces or tabs
    /// (as llama.cpp's JSON grammars; unbounded whitespace lets a model pad forever).
    lazy var ws: Int32 = b.shared("ws") { b in
        b.add("ws", [[], [.text(" ")], [.text("\n")] + b.repeated([.bytes(ByteSet(" \t".utf8))], min: 0, max: 20)])
    }

    lazy var stringChar: Int32 = b.shared("char") { b in
        var plain = ByteSet(range: 0x20...0x7F)
        for c in "\"\\".utf8 { plain = plain.union(ByteSet([c])).union(ByteSet()) }
        plain = ByteSet((0x20...0x7E).filter { $0 != 0x22 && $0 != 0x5C })
        let cont = ByteSet(range: 0x80...0xBF)
        let hex = ByteSet("0123456789abcdefABCDEF".utf8)
        return b.add("char", [
            [.bytes(plain)],
            [.bytes(ByteSet(range: 0xC2...0xDF)), .bytes(cont)],
            [.literal([0xE0]), .bytes(ByteSet(range: 0xA0...0xBF)), .bytes(cont)],
            [.bytes(ByteSet(range: 0xE1...0xEC)), .bytes(cont), .bytes(cont)],
            [.literal([0xED]), .bytes(ByteSet(range: 0x80...0x9F)), .bytes(cont)],
            [.bytes(ByteSet(range: 0xEE...0xEF)), .bytes(cont), .bytes(cont)],
            [.literal([0xF0]), .bytes(ByteSet(range: 0x90...0xBF)), .bytes(cont), .bytes(cont)],
            [.bytes(ByteSet(range: 0xF1...0xF3)), .bytes(cont), .bytes(cont), .bytes(cont)],
            [.literal([0xF4]), .bytes(ByteSet(range: 0x80...0x8F)), .bytes(cont), .bytes(cont)],
            [.text("\\"), .bytes(ByteSet("\"\\/bfnrt".utf8))],
            // \uXXXX outside the surrogates, or a high surrogate followed by a low one (JSON parsers such as
            // Foundation's refuse a lone surrogate).
            [.text("\\u"), .bytes(ByteSet("0123456789abcABC".utf8)), .bytes(hex), .bytes(hex), .bytes(hex)],
            [.text("\\u"), .bytes(ByteSet("dD".utf8)), .bytes(ByteSet("01234567".utf8)), .bytes(hex), .bytes(hex)],
            [.text("\\u"), .bytes(ByteSet("eEfF".utf8)), .bytes(hex), .bytes(hex), .bytes(hex)],
            [.text("\\u"), .bytes(ByteSet("dD".utf8)), .bytes(ByteSet("89abAB".utf8)), .bytes(hex), .bytes(hex),
             .text("\\u"), .bytes(ByteSet("dD".utf8)), .bytes(ByteSet("cdefCDEF".utf8)), .bytes(hex), .bytes(hex)],
        ])
    }

    lazy var string: Int32 = b.shared("string") { b in
        b.add("string", [[.text("\""), b.star([.rule(self.stringChar)]), .text("\"")]])
    }

    let digit = S.bytes(ByteSet(range: 0x30...0x39))
    let nonZero = S.bytes(ByteSet(range: 0x31...0x39))

    lazy var naturalDigits: [S] = b.repeated([digit], min: 0, max: 15)

    lazy var nonNegativeInteger: Int32 = b.shared("uint") { b in
        b.add("uint", [[.text("0")], [self.nonZero] + self.naturalDigits])
    }

    lazy var positiveInteger: Int32 = b.shared("pint") { b in
        b.add("pint", [[self.nonZero] + self.naturalDigits])
    }

    lazy var integer: Int32 = b.shared("int") { b in
        b.add("int", [[b.optional([.text("-")]), .rule(self.nonNegativeInteger)]])
    }

    lazy var number: Int32 = b.shared("number") { b in
        let frac = b.optional([.text(".")] + b.repeated([self.digit], min: 1, max: 16))
        let exp = b.optional([.bytes(ByteSet("eE".utf8)), b.optional([.bytes(ByteSet("+-".utf8))])]
                             + b.repeated([self.digit], min: 1, max: 2))
        return b.add("number", [[.rule(self.integer), frac, exp]])
    }

    lazy var boolean: Int32 = b.shared("boolean") { b in b.add("boolean", [[.text("true")], [.text("false")]]) }
    lazy var null: Int32 = b.shared("null") { b in b.add("null", [[.text("null")]]) }

    /// Any JSON value.
    lazy var anyValue: Int32 = b.shared("value") { b in
        let v = b.declare("value")
        let arr = b.declare("array")
        let obj = b.shared("object") { b in b.declare("object") }
        b.define(v, [[.rule(obj)], [.rule(arr)], [.rule(self.string)], [.rule(self.number)], [.rule(self.boolean)],
                     [.rule(self.null)]])
        let more = b.star([.rule(self.ws), .text(","), .rule(self.ws), .rule(v)])
        b.define(arr, [[.text("["), .rule(self.ws), b.optional([.rule(v), more]), .rule(self.ws), .text("]")]])
        self.defineMap(obj, valueRule: v)
        return v
    }

    /// Any JSON object.
    var anyObject: Int32 {
        _ = anyValue
        return b.shared("object") { _ in fatalError("defined with the value rule") }
    }

    /// obj ::= "{" ws ( string ws ":" ws value ( ws "," ws string ws ":" ws value )* )? ws "}"
    func defineMap(_ r: Int32, valueRule: Int32) {
        let kv: [S] = [.rule(string), .rule(ws), .text(":"), .rule(ws), .rule(valueRule)]
        let more = b.star([.rule(ws), .text(","), .rule(ws)] + kv)
        b.define(r, [[.text("{"), .rule(ws), b.optional(kv + [more]), .rule(ws), .text("}")]])
    }

    // MARK: Schemas

    func resolve(_ ref: String, path: String) throws -> JSONValue {
        if ref == "#" { return root }
        for prefix in ["#/$defs/", "#/definitions/"] where ref.hasPrefix(prefix) {
            let name = String(ref.dropFirst(prefix.count))
            let container = prefix == "#/$defs/" ? "$defs" : "definitions"
            if let s = root[container]?[name] { return s }
            throw fail("'$ref' \(ref) does not resolve to a definition in the schema", "$ref", path)
        }
        throw fail("'$ref' \(ref) is not supported: only '#', '#/$defs/…' and '#/definitions/…' are", "$ref", path)
    }

    func rule(_ schema: JSONValue, path: String) throws -> Int32 {
        switch schema {
        case .bool(true): return anyValue
        case .bool(false): throw fail("the schema 'false' accepts no value", nil, path)
        case .object: break
        default: throw fail("a schema must be an object or a boolean", nil, path)
        }
        let o = schema.objectValue!
        for (k, _) in o where !Self.supported.contains(k) && !Self.annotations.contains(k) {
            throw fail("the JSON schema keyword '\(k)' is not supported", k, path + "/" + k)
        }
        if let ref = schema["$ref"] {
            guard let r = ref.stringValue else { throw fail("'$ref' must be a string", "$ref", path) }
            if let id = refs[r] { return id }
            let id = b.declare("ref")
            refs[r] = id
            let target = try resolve(r, path: path)
            b.define(id, [[.rule(try rule(target, path: r))]])
            return id
        }
        if let c = schema["const"] { return b.add("const", [[.text(c.compactText)]]) }
        if let e = schema["enum"] {
            guard let values = e.arrayValue, !values.isEmpty else {
                throw fail("'enum' must be a non-empty array", "enum", path + "/enum")
            }
            return b.add("enum", values.map { [.text($0.compactText)] })
        }
        for key in ["anyOf", "oneOf"] {
            if let list = schema[key] {
                guard let items = list.arrayValue, !items.isEmpty else {
                    throw fail("'\(key)' must be a non-empty array", key, path + "/" + key)
                }
                let alts = try items.enumerated().map { [S.rule(try rule($1, path: "\(path)/\(key)/\($0)"))] }
                return b.add(key, alts)
            }
        }
        if let all = schema["allOf"] {
            guard let items = all.arrayValue, items.count == 1 else {
                throw fail("'allOf' is supported with exactly one schema", "allOf", path + "/allOf")
            }
            return try rule(items[0], path: path + "/allOf/0")
        }
        var types: [String]
        switch schema["type"] {
        case nil:
            if schema["properties"] != nil || schema["additionalProperties"] != nil { types = ["object"] }
            else if schema["items"] != nil || schema["prefixItems"] != nil { types = ["array"] }
            else { types = [] }
        case .string(let t)?: types = [t]
        case .array(let a)?:
            types = try a.map {
                guard let t = $0.stringValue else { throw fail("'type' must list strings", "type", path + "/type") }
                return t
            }
        default: throw fail("'type' must be a string or a list of strings", "type", path + "/type")
        }
        if schema["nullable"]?.boolValue == true && !types.isEmpty && !types.contains("null") { types.append("null") }
        if types.isEmpty { return anyValue }
        let alts = try types.map { [S.rule(try typed($0, schema, path: path))] }
        return alts.count == 1 ? (alts[0][0].ruleID ?? b.add("type", alts)) : b.add("types", alts)
    }

    func typed(_ type: String, _ s: JSONValue, path: String) throws -> Int32 {
        func int(_ k: String) throws -> Int? {
            guard let v = s[k] else { return nil }
            guard let d = v.numberValue, d >= 0, d == d.rounded(), d < 1e9 else {
                throw fail("'\(k)' must be a non-negative integer", k, path + "/" + k)
            }
            return Int(d)
        }
        switch type {
        case "string":
            if let f = s["format"] {
                guard let name = f.stringValue, let r = format(name) else {
                    throw fail("the string format '\(f.stringValue ?? f.compactText)' is not supported (date, time, date-time, uuid, email are)",
                               "format", path + "/format")
                }
                return r
            }
            let lo = try int("minLength") ?? 0, hi = try int("maxLength")
            if lo == 0 && hi == nil { return string }
            if let hi, hi < lo { throw fail("'maxLength' is less than 'minLength'", "maxLength", path) }
            return b.add("string", [[.text("\"")] + b.repeated([.rule(stringChar)], min: lo, max: hi) + [.text("\"")]])
        case "integer":
            if let m = s["minimum"] {
                switch m.numberValue {
                case 0: return nonNegativeInteger
                case 1: return positiveInteger
                default: throw fail("'minimum' is supported only as 0 or 1 on integers", "minimum", path + "/minimum")
                }
            }
            return integer
        case "number":
            if s["minimum"] != nil { throw fail("'minimum' is supported only as 0 or 1 on integers", "minimum", path + "/minimum") }
            return number
        case "boolean": return boolean
        case "null": return null
        case "object": return try object(s, path: path)
        case "array": return try array(s, path: path)
        default: throw fail("unknown type '\(type)'", "type", path + "/type")
        }
    }

    func object(_ s: JSONValue, path: String) throws -> Int32 {
        let props = s["properties"]?.objectValue ?? []
        if s["properties"] != nil && s["properties"]?.objectValue == nil {
            throw fail("'properties' must be an object", "properties", path + "/properties")
        }
        var required: Set<String> = []
        if let r = s["required"] {
            guard let list = r.arrayValue?.compactMap(\.stringValue), list.count == r.arrayValue?.count else {
                throw fail("'required' must be a list of strings", "required", path + "/required")
            }
            for name in list where !props.contains(where: { $0.0 == name }) {
                // Without `properties`, a required name constrains a free-form map, which a grammar here cannot.
                throw fail("required property '\(name)' is not defined in 'properties'", "required", path + "/required")
            }
            required = Set(list)
        }
        if props.isEmpty {
            let r = b.declare("map")
            switch s["additionalProperties"] {
            case .bool(false)?: b.define(r, [[.text("{"), .rule(ws), .text("}")]])
            case nil, .bool(true)?: defineMap(r, valueRule: anyValue)
            case let v?: defineMap(r, valueRule: try rule(v, path: path + "/additionalProperties"))
            }
            return r
        }
        // kv_i; then A_i (nothing written yet) and B_i (something written) from the last property back.
        var kvs: [[S]] = []
        for (name, sub) in props {
            let v = try rule(sub, path: path + "/properties/" + name)
            kvs.append([.text(JSONValue.quote(name)), .rule(ws), .text(":"), .rule(ws), .rule(v)])
        }
        var a: S? = nil, bRule: S? = nil  // nil = empty
        for i in stride(from: props.count - 1, through: 0, by: -1) {
            let req = required.contains(props[i].0)
            let restB: [S] = bRule.map { [$0] } ?? []
            let restA: [S] = a.map { [$0] } ?? []
            let newB = b.add("props", [[.rule(ws), .text(","), .rule(ws)] + kvs[i] + restB] + (req ? [] : [restB]))
            let newA = b.add("props", [kvs[i] + restB] + (req ? [] : [restA]))
            bRule = .rule(newB)
            a = .rule(newA)
        }
        return b.add("object", [[.text("{"), .rule(ws), a!, .rule(ws), .text("}")]])
    }

    func array(_ s: JSONValue, path: String) throws -> Int32 {
        func int(_ k: String) throws -> Int? {
            guard let v = s[k] else { return nil }
            guard let d = v.numberValue, d >= 0, d == d.rounded(), d < 1e6 else {
                throw fail("'\(k)' must be a non-negative integer", k, path + "/" + k)
            }
            return Int(d)
        }
        let prefix = try (s["prefixItems"]?.arrayValue ?? []).enumerated().map {
            try rule($1, path: "\(path)/prefixItems/\($0)")
        }
        var item: Int32? = nil
        switch s["items"] {
        case nil, .bool(true)?: item = anyValue
        case .bool(false)?: item = nil
        case let v?: item = try rule(v, path: path + "/items")
        }
        let lo = try int("minItems") ?? 0
        let hi = try int("maxItems")
        if let hi, hi < lo { throw fail("'maxItems' is less than 'minItems'", "maxItems", path) }
        let sep: [S] = [.rule(ws), .text(","), .rule(ws)]
        // Elements in order: the prefix items, then `item` for the rest.
        var elems: [S] = []
        var count = 0
        for (i, p) in prefix.enumerated() {
            if let hi, count >= hi { break }
            let required = i < lo
            let piece: [S] = (i == 0 ? [] : sep) + [.rule(p)]
            if required { elems += piece } else { break }
            count += 1
        }
        // Optional prefix items (beyond minItems) and the tail, nested so each may only follow the one before.
        var tail: [S] = []
        if let item {
            let restLo = max(0, lo - max(count, prefix.count))
            let restHi = hi.map { max(0, $0 - max(count, prefix.count)) }
            if count >= prefix.count {
                if count == 0 {
                    if restLo == 0 {
                        if restHi != 0 {
                            let more = b.repeated(sep + [.rule(item)], min: 0, max: restHi.map { $0 - 1 })
                            tail = [b.optional([.rule(item)] + more)]
                        }
                    } else {
                        tail = [.rule(item)] + b.repeated(sep + [.rule(item)], min: restLo - 1, max: restHi.map { $0 - 1 })
                    }
                } else {
                    tail = b.repeated(sep + [.rule(item)], min: restLo, max: restHi)
                }
            }
            if count < prefix.count {
                // Build from the last optional prefix item back: each optional element may be followed by the next.
                var after: [S] = b.repeated(sep + [.rule(item)], min: 0, max: restHi)
                if let hi, hi <= prefix.count { after = [] }
                let last = min(prefix.count, hi ?? prefix.count)
                for i in stride(from: last - 1, through: count, by: -1) {
                    let piece: [S] = (i == 0 ? [] : sep) + [.rule(prefix[i])]
                    after = [b.optional(piece + after)]
                }
                tail = after
            }
        } else {
            let last = min(prefix.count, hi ?? prefix.count)
            if lo > prefix.count { throw fail("'minItems' exceeds the 'prefixItems' allowed with 'items': false", "minItems", path) }
            var after: [S] = []
            if count < last {
                for i in stride(from: last - 1, through: count, by: -1) {
                    let piece: [S] = (i == 0 ? [] : sep) + [.rule(prefix[i])]
                    after = [b.optional(piece + after)]
                }
            }
            tail = after
        }
        return b.add("array", [[.text("["), .rule(ws)] + elems + tail + [.rule(ws), .text("]")]])
    }

    func format(_ name: String) -> Int32? {
        let d = digit
        let hex = S.bytes(ByteSet("0123456789abcdefABCDEF".utf8))
        func rep(_ s: S, _ n: Int) -> [S] { Array(repeating: s, count: n) }
        let month = b.add("month", [[.text("0"), nonZero], [.text("1"), .bytes(ByteSet("012".utf8))]])
        let day = b.add("day", [[.text("0"), nonZero], [.bytes(ByteSet("12".utf8)), d], [.text("3"), .bytes(ByteSet("01".utf8))]])
        var date: [S] = rep(d, 4)
        date += [.text("-"), .rule(month), .text("-"), .rule(day)]
        let hour = b.add("hour", [[.bytes(ByteSet("01".utf8)), d], [.text("2"), .bytes(ByteSet("0123".utf8))]])
        let sixty = S.bytes(ByteSet(range: 0x30...0x35))
        let zone = b.add("zone", [[.text("Z")], [.bytes(ByteSet("+-".utf8)), .rule(hour), .text(":"), sixty, d]])
        let time: [S] = [.rule(hour), .text(":"), sixty, d, .text(":"), sixty, d,
                         b.optional([.text(".")] + b.repeated([d], min: 1, max: 9)), .rule(zone)]
        let body: [S]
        switch name {
        case "date": body = date
        case "time": body = time
        case "date-time": body = date + [.text("T")] + time
        case "uuid":
            let dash: [S] = [.text("-")]
            var u: [S] = rep(hex, 8)
            for n in [4, 4, 4, 12] { u += dash; u += rep(hex, n) }
            body = u
        case "email":
            let local = S.bytes(ByteSet("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-".utf8))
            let label = S.bytes(ByteSet("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-".utf8))
            var e: [S] = b.repeated([local], min: 1, max: 64)
            e.append(.text("@"))
            e += b.repeated([label], min: 1, max: 63)
            let dotLabel: [S] = [.text(".")] + b.repeated([label], min: 1, max: 63)
            e += b.repeated(dotLabel, min: 1, max: 4)
            body = e
        default: return nil
        }
        return b.add(name, [[.text("\"")] + body + [.text("\"")]])
    }
}

extension GrammarBuilder.Symbol {
    var ruleID: Int32? { if case .rule(let r) = self { r } else { nil } }
}
