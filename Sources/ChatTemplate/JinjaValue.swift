import Foundation

/// A value passed into (or out of) a chat template: the JSON data model plus jinja2's `Undefined`.
public enum JinjaValue: Sendable, Equatable {
    case undefined
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JinjaValue])
    case object(JinjaObject)

    /// Converts the output of `JSONSerialization.jsonObject(with:)` (or any tree of Swift dictionaries, arrays,
    /// strings, numbers, booleans and `NSNull`). Dictionary keys keep their order where the input has one
    /// (`KeyValuePairs`, `JinjaObject`); `[String: Any]` has none, so its keys are sorted for determinism.
    public init(json: Any?) {
        guard let json else { self = .none; return }
        switch json {
        case let v as JinjaValue: self = v
        case is NSNull: self = .none
        case let s as String: self = .string(s)
        case let s as Substring: self = .string(String(s))
        case let b as Bool where !(json is NSNumber): self = .bool(b)
        case let n as NSNumber:
            #if canImport(Darwin)
            if CFGetTypeID(n) == CFBooleanGetTypeID() { self = .bool(n.boolValue); return }
            #else
            if type(of: n) == type(of: NSNumber(value: true)) && String(cString: n.objCType) == "c" {
                self = .bool(n.boolValue); return
            }
            #endif
            let t = String(cString: n.objCType)
            if t == "d" || t == "f" {
                self = .double(n.doubleValue)
            } else if t == "Q", n.uint64Value > UInt64(Int.max) {
                self = .double(n.doubleValue)
            } else {
                self = .int(n.intValue)
            }
        case let i as Int: self = .int(i)
        case let d as Double: self = .double(d)
        case let a as [Any]: self = .array(a.map { JinjaValue(json: $0) })
        case let a as [Any?]: self = .array(a.map { JinjaValue(json: $0) })
        case let o as JinjaObject: self = .object(o)
        case let d as [String: Any]:
            var o = JinjaObject()
            for k in d.keys.sorted() { o[k] = JinjaValue(json: d[k]) }
            self = .object(o)
        case let d as [String: Any?]:
            var o = JinjaObject()
            for k in d.keys.sorted() { o[k] = JinjaValue(json: d[k] ?? nil) }
            self = .object(o)
        case let kv as KeyValuePairs<String, Any>:
            var o = JinjaObject()
            for (k, v) in kv { o[k] = JinjaValue(json: v) }
            self = .object(o)
        default:
            self = .string(String(describing: json))
        }
    }

    /// Parses JSON text keeping the key order of its objects (which `JSONSerialization` loses); templates that
    /// print `tool | tojson` then show the keys in the order the client sent them, as Python's json module does.
    public init(jsonText: String) throws {
        var p = OrderedJSONParser(Array(jsonText.utf8))
        self = try p.parseDocument()
    }

    /// The value as `JSONSerialization`-compatible Foundation objects (keys lose their order).
    public var foundationObject: Any {
        switch self {
        case .undefined, .none: return NSNull()
        case .bool(let b): return b
        case .int(let i): return i
        case .double(let d): return d
        case .string(let s): return s
        case .array(let a): return a.map { $0.foundationObject }
        case .object(let o):
            var d: [String: Any] = [:]
            for (k, v) in o { d[k] = v.foundationObject }
            return d
        }
    }

    /// JSON text, formatted as Python's `json.dumps(value, ensure_ascii=False)` formats it.
    public var jsonString: String {
        var out = ""
        Runtime.toJSON(V(self), indent: nil, level: 0, separators: (", ", ": "), sortKeys: false, into: &out)
        return out
    }

    public subscript(key: String) -> JinjaValue {
        if case .object(let o) = self { return o[key] ?? .undefined }
        return .undefined
    }

    public subscript(index: Int) -> JinjaValue {
        if case .array(let a) = self, index >= 0, index < a.count { return a[index] }
        return .undefined
    }
}

extension JinjaValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral,
    ExpressibleByBooleanLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int) { self = .int(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(arrayLiteral elements: JinjaValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, JinjaValue)...) {
        var o = JinjaObject()
        for (k, v) in elements { o[k] = v }
        self = .object(o)
    }
    public init(nilLiteral: ()) { self = .none }
}

/// A JSON object whose keys keep their insertion order (Python dicts do, and templates print them in order).
public struct JinjaObject: Sendable, Equatable, Sequence, ExpressibleByDictionaryLiteral {
    public private(set) var keys: [String] = []
    private var storage: [String: JinjaValue] = [:]

    public init() {}
    public init(dictionaryLiteral elements: (String, JinjaValue)...) {
        for (k, v) in elements { self[k] = v }
    }

    public var count: Int { keys.count }
    public var isEmpty: Bool { keys.isEmpty }

    public subscript(key: String) -> JinjaValue? {
        get { storage[key] }
        set {
            if let newValue {
                if storage.updateValue(newValue, forKey: key) == nil { keys.append(key) }
            } else if storage.removeValue(forKey: key) != nil {
                keys.removeAll { $0 == key }
            }
        }
    }

    public func makeIterator() -> AnyIterator<(key: String, value: JinjaValue)> {
        var i = 0
        return AnyIterator {
            guard i < keys.count else { return nil }
            defer { i += 1 }
            return (keys[i], storage[keys[i]]!)
        }
    }

    /// Python dict equality: same keys and values, order ignored.
    public static func == (a: JinjaObject, b: JinjaObject) -> Bool { a.storage == b.storage }
}

/// A small JSON parser that keeps object key order and tells integers from floats as Python's json module does.
struct OrderedJSONParser {
    let b: [UInt8]
    var i = 0
    init(_ bytes: [UInt8]) { b = bytes }

    mutating func parseDocument() throws -> JinjaValue {
        let v = try parseValue()
        skipWS()
        if i != b.count { throw fail("trailing characters") }
        return v
    }

    func fail(_ what: String) -> ChatTemplateError {
        .invalidInput(message: "invalid JSON at byte \(i): \(what)")
    }

    mutating func skipWS() {
        while i < b.count, b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x0D || b[i] == 0x09 { i += 1 }
    }

    mutating func parseValue() throws -> JinjaValue {
        skipWS()
        guard i < b.count else { throw fail("unexpected end") }
        switch b[i] {
        case UInt8(ascii: "{"):
            i += 1
            var o = JinjaObject()
            skipWS()
            if i < b.count, b[i] == UInt8(ascii: "}") { i += 1; return .object(o) }
            while true {
                skipWS()
                guard i < b.count, b[i] == UInt8(ascii: "\"") else { throw fail("expected a key") }
                let k = try parseString()
                skipWS()
                guard i < b.count, b[i] == UInt8(ascii: ":") else { throw fail("expected ':'") }
                i += 1
                o[k] = try parseValue()
                skipWS()
                guard i < b.count else { throw fail("unexpected end") }
                if b[i] == UInt8(ascii: ",") { i += 1; continue }
                if b[i] == UInt8(ascii: "}") { i += 1; return .object(o) }
                throw fail("expected ',' or '}'")
            }
        case UInt8(ascii: "["):
            i += 1
            var a: [JinjaValue] = []
            skipWS()
            if i < b.count, b[i] == UInt8(ascii: "]") { i += 1; return .array(a) }
            while true {
                a.append(try parseValue())
                skipWS()
                guard i < b.count else { throw fail("unexpected end") }
                if b[i] == UInt8(ascii: ",") { i += 1; continue }
                if b[i] == UInt8(ascii: "]") { i += 1; return .array(a) }
                throw fail("expected ',' or ']'")
            }
        case UInt8(ascii: "\""):
            return .string(try parseString())
        case UInt8(ascii: "t"):
            guard b[i...].starts(with: Array("true".utf8)) else { throw fail("bad literal") }
            i += 4; return .bool(true)
        case UInt8(ascii: "f"):
            guard b[i...].starts(with: Array("false".utf8)) else { throw fail("bad literal") }
            i += 5; return .bool(false)
        case UInt8(ascii: "n"):
            guard b[i...].starts(with: Array("null".utf8)) else { throw fail("bad literal") }
            i += 4; return .none
        default:
            let start = i
            var isFloat = false
            while i < b.count {
                let c = b[i]
                if (c >= 0x30 && c <= 0x39) || c == UInt8(ascii: "-") || c == UInt8(ascii: "+") { i += 1 }
                else if c == UInt8(ascii: ".") || c == UInt8(ascii: "e") || c == UInt8(ascii: "E") { isFloat = true; i += 1 }
                else { break }
            }
            let text = String(decoding: b[start..<i], as: UTF8.self)
            if text.isEmpty { throw fail("unexpected character") }
            if !isFloat, let n = Int(text) { return .int(n) }
            guard let d = Double(text) else { throw fail("bad number") }
            return .double(d)
        }
    }

    mutating func parseString() throws -> String {
        i += 1
        var out = [UInt8]()
        while true {
            guard i < b.count else { throw fail("unterminated string") }
            let c = b[i]
            if c == UInt8(ascii: "\"") { i += 1; break }
            if c == UInt8(ascii: "\\") {
                i += 1
                guard i < b.count else { throw fail("bad escape") }
                let e = b[i]; i += 1
                switch e {
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "u"):
                    var code = try hex4()
                    if code >= 0xD800, code < 0xDC00, i + 1 < b.count, b[i] == UInt8(ascii: "\\"),
                        b[i + 1] == UInt8(ascii: "u")
                    {
                        i += 2
                        let lo = try hex4()
                        code = 0x10000 + ((code - 0xD800) << 10) + (lo - 0xDC00)
                    }
                    let scalar = Unicode.Scalar(code) ?? "\u{FFFD}"
                    out.append(contentsOf: Array(String(Character(scalar)).utf8))
                default: out.append(e)
                }
            } else {
                out.append(c); i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    mutating func hex4() throws -> UInt32 {
        guard i + 4 <= b.count, let v = UInt32(String(decoding: b[i..<i + 4], as: UTF8.self), radix: 16) else {
            throw fail("bad \\u escape")
        }
        i += 4
        return v
    }
}
