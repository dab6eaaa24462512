import Foundation

/// Why a value is undefined, for jinja2's error messages.
enum Undef {
    case name(String)
    case attr(owner: String, name: String)
    case element(owner: String, index: String)
    case hint(String)

    var message: String {
        switch self {
        case .name(let n): return "'\(n)' is undefined"
        case .attr(let o, let n): return "\(o) has no attribute '\(n)'"
        case .element(let o, let i): return "\(o) has no element \(i)"
        case .hint(let h): return h
        }
    }
}

/// A dict key: Python dicts in templates are keyed by strings, sometimes by integers.
enum DictKey: Hashable {
    case str(String)
    case int(Int)

    init(_ v: V) {
        switch v {
        case .string(let s): self = .str(s)
        case .int(let i): self = .int(i)
        case .bool(let b): self = .int(b ? 1 : 0)
        case .double(let d) where d.rounded() == d && abs(d) < 9e18: self = .int(Int(d))
        default: self = .str(Runtime.repr(v))
        }
    }

    var value: V {
        switch self {
        case .str(let s): return .string(s)
        case .int(let i): return .int(i)
        }
    }

    /// The key as json.dumps writes it (integers become strings).
    var text: String {
        switch self {
        case .str(let s): return s
        case .int(let i): return String(i)
        }
    }
}

/// An insertion-ordered dictionary (Python dict).
struct Dict {
    var keys: [DictKey] = []
    var map: [DictKey: V] = [:]

    init() {}
    init(minimumCapacity n: Int) {
        keys.reserveCapacity(n)
        map.reserveCapacity(n)
    }

    subscript(key: String) -> V? {
        get { map[.str(key)] }
        set { self[DictKey.str(key)] = newValue }
    }

    subscript(key: DictKey) -> V? {
        get { map[key] }
        set {
            if let newValue {
                if map.updateValue(newValue, forKey: key) == nil { keys.append(key) }
            } else if map.removeValue(forKey: key) != nil {
                keys.removeAll { $0 == key }
            }
        }
    }
    var count: Int { keys.count }
    var values: [V] { keys.map { map[$0]! } }
    var items: [V] { keys.map { .array([$0.value, map[$0]!]) } }
}

final class Namespace {
    var attrs = Dict()
}

struct CallArgs {
    var positional: [V] = []
    var kwargs: [(String, V)] = []

    func kw(_ name: String) -> V? { kwargs.first(where: { $0.0 == name })?.1 }

    /// The argument at `index` or named `name`, or nil.
    func arg(_ index: Int, _ name: String) -> V? {
        if index < positional.count { return positional[index] }
        return kw(name)
    }
}

final class Callable {
    let name: String
    let fn: (CallArgs) throws -> V
    init(_ name: String, _ fn: @escaping (CallArgs) throws -> V) {
        self.name = name
        self.fn = fn
    }
}

final class LoopState {
    let items: [V]
    var index = 0
    let depth: Int
    var recurse: ((V) throws -> V)?
    var lastChanged: [V]? = nil
    init(items: [V], depth: Int) {
        self.items = items
        self.depth = depth
    }
}

/// A runtime value: JinjaValue's data model plus the objects templates create (namespaces, macros, loops).
enum V: @unchecked Sendable {
    case undefined(Undef)
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([V])
    case dict(Dict)
    case namespace(Namespace)
    case callable(Callable)
    case loop(LoopState)

    init(_ j: JinjaValue) {
        switch j {
        case .undefined: self = .undefined(.hint("undefined value"))
        case .none: self = .none
        case .bool(let b): self = .bool(b)
        case .int(let i): self = .int(i)
        case .double(let d): self = .double(d)
        case .string(let s): self = .string(s)
        case .array(let a): self = .array(a.map(V.init))
        case .object(let o):
            var d = Dict(minimumCapacity: o.count)
            for (k, v) in o { d[k] = V(v) }
            self = .dict(d)
        }
    }

    var jinjaValue: JinjaValue {
        switch self {
        case .undefined: return .undefined
        case .none: return .none
        case .bool(let b): return .bool(b)
        case .int(let i): return .int(i)
        case .double(let d): return .double(d)
        case .string(let s): return .string(s)
        case .array(let a): return .array(a.map { $0.jinjaValue })
        case .dict(let d):
            var o = JinjaObject()
            for k in d.keys { o[k.text] = d.map[k]!.jinjaValue }
            return .object(o)
        case .namespace(let n):
            var o = JinjaObject()
            for k in n.attrs.keys { o[k.text] = n.attrs.map[k]!.jinjaValue }
            return .object(o)
        case .callable, .loop: return .none
        }
    }

    var isUndefined: Bool { if case .undefined = self { return true } else { return false } }
}

enum Runtime {
    static func typeName(_ v: V) -> String {
        switch v {
        case .undefined: return "Undefined"
        case .none: return "NoneType"
        case .bool: return "bool"
        case .int: return "int"
        case .double: return "float"
        case .string: return "str"
        case .array: return "list"
        case .dict: return "dict"
        case .namespace: return "Namespace"
        case .callable: return "function"
        case .loop: return "LoopContext"
        }
    }

    /// jinja2's object_type_repr: "'dict object'", or "None".
    static func ownerRepr(_ v: V) -> String {
        if case .none = v { return "'None'" }
        if case .namespace = v { return "'jinja2.utils.Namespace object'" }
        if case .loop = v { return "'jinja2.runtime.LoopContext object'" }
        return "'\(typeName(v)) object'"
    }

    static func ownerReprPlain(_ v: V) -> String {
        if case .none = v { return "None" }
        return "\(typeName(v)) object"
    }

    static func truthy(_ v: V) -> Bool {
        switch v {
        case .undefined, .none: return false
        case .bool(let b): return b
        case .int(let i): return i != 0
        case .double(let d): return d != 0
        case .string(let s): return !s.isEmpty
        case .array(let a): return !a.isEmpty
        case .dict(let d): return d.count > 0
        case .namespace, .callable, .loop: return true
        }
    }

    // MARK: str / repr

    static func str(_ v: V) -> String {
        switch v {
        case .undefined: return ""
        case .string(let s): return s
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let i): return String(i)
        case .double(let d): return pyFloat(d)
        default: return repr(v)
        }
    }

    static func repr(_ v: V) -> String {
        switch v {
        case .undefined: return ""
        case .string(let s): return reprString(s)
        case .array(let a): return "[" + a.map(repr).joined(separator: ", ") + "]"
        case .dict(let d):
            return "{" + d.keys.map { repr($0.value) + ": " + repr(d.map[$0]!) }.joined(separator: ", ") + "}"
        case .namespace(let n):
            return "<Namespace " + repr(.dict(n.attrs)) + ">"
        case .callable(let c): return "<function \(c.name)>"
        case .loop: return "<LoopContext>"
        default: return str(v)
        }
    }

    static func reprString(_ s: String) -> String {
        let quote: Character = s.contains("'") && !s.contains("\"") ? "\"" : "'"
        var out = String(quote)
        for u in s.unicodeScalars {
            switch u {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if Character(u) == quote {
                    out += "\\" + String(quote)
                } else if u.value < 0x20 || u.value == 0x7F {
                    out += String(format: "\\x%02x", u.value)
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        out.append(quote)
        return out
    }

    /// Python's repr(float).
    static func pyFloat(_ d: Double) -> String {
        if d.isNaN { return "nan" }
        if d.isInfinite { return d < 0 ? "-inf" : "inf" }
        if d == 0 { return d.sign == .minus ? "-0.0" : "0.0" }
        // Shortest round-trip digits from Swift's description.
        var desc = "\(d.magnitude)"
        var exp = 0
        if let e = desc.firstIndex(where: { $0 == "e" || $0 == "E" }) {
            exp = Int(desc[desc.index(after: e)...]) ?? 0
            desc = String(desc[..<e])
        }
        var intPart = desc
        var frac = ""
        if let dot = desc.firstIndex(of: ".") {
            intPart = String(desc[..<dot])
            frac = String(desc[desc.index(after: dot)...])
        }
        var digits = intPart + frac
        var point = intPart.count + exp  // decimal point position within digits
        // strip leading zeros
        while digits.count > 1, digits.first == "0" { digits.removeFirst(); point -= 1 }
        while digits.count > 1, digits.last == "0" { digits.removeLast() }
        let sci = point - 1
        let sign = d < 0 ? "-" : ""
        if sci >= -4 && sci < 16 {
            if point <= 0 {
                return sign + "0." + String(repeating: "0", count: -point) + digits
            } else if point >= digits.count {
                return sign + digits + String(repeating: "0", count: point - digits.count) + ".0"
            } else {
                let idx = digits.index(digits.startIndex, offsetBy: point)
                return sign + digits[..<idx] + "." + digits[idx...]
            }
        }
        var mant = String(digits.first!)
        if digits.count > 1 { mant += "." + digits.dropFirst() }
        let es = abs(sci) < 10 ? "0\(abs(sci))" : "\(abs(sci))"
        return sign + mant + "e" + (sci < 0 ? "-" : "+") + es
    }

    // MARK: JSON (Python json.dumps)

    static func toJSON(_ v: V, indent: String?, level: Int, separators: (String, String), sortKeys: Bool,
                       into out: inout String) {
        switch v {
        case .none: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .double(let d):
            if d.isNaN { out += "NaN" } else if d.isInfinite { out += d < 0 ? "-Infinity" : "Infinity" } else { out += pyFloat(d) }
        case .string(let s): jsonString(s, into: &out)
        case .array(let a):
            if a.isEmpty { out += "[]"; return }
            out += "["
            for (k, e) in a.enumerated() {
                if k > 0 { out += separators.0 }
                if let indent { out += "\n" + String(repeating: indent, count: level + 1) }
                toJSON(e, indent: indent, level: level + 1, separators: separators, sortKeys: sortKeys, into: &out)
            }
            if let indent { out += "\n" + String(repeating: indent, count: level) }
            out += "]"
        case .dict(let d):
            if d.count == 0 { out += "{}"; return }
            out += "{"
            let keys = sortKeys ? d.keys.sorted { $0.text.unicodeScalars.lexicographicallyPrecedes($1.text.unicodeScalars) } : d.keys
            for (k, key) in keys.enumerated() {
                if k > 0 { out += separators.0 }
                if let indent { out += "\n" + String(repeating: indent, count: level + 1) }
                jsonString(key.text, into: &out)
                out += separators.1
                toJSON(d.map[key]!, indent: indent, level: level + 1, separators: separators, sortKeys: sortKeys, into: &out)
            }
            if let indent { out += "\n" + String(repeating: indent, count: level) }
            out += "}"
        case .namespace(let n):
            toJSON(.dict(n.attrs), indent: indent, level: level, separators: separators, sortKeys: sortKeys, into: &out)
        case .undefined, .callable, .loop:
            out += "null"
        }
    }

    static func jsonString(_ s: String, into out: inout String) {
        out += "\""
        var needs = false
        for u in s.utf8 where u < 0x20 || u == 0x22 || u == 0x5C { needs = true; break }
        if !needs {
            out += s
        } else {
            for u in s.unicodeScalars {
                switch u {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\r": out += "\\r"
                case "\t": out += "\\t"
                case "\u{08}": out += "\\b"
                case "\u{0C}": out += "\\f"
                default:
                    if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
                }
            }
        }
        out += "\""
    }

    // MARK: equality and ordering

    static func number(_ v: V) -> Double? {
        switch v {
        case .int(let i): return Double(i)
        case .double(let d): return d
        case .bool(let b): return b ? 1 : 0
        default: return nil
        }
    }

    static func intLike(_ v: V) -> Int? {
        switch v {
        case .int(let i): return i
        case .bool(let b): return b ? 1 : 0
        default: return nil
        }
    }

    static func eq(_ a: V, _ b: V) -> Bool {
        switch (a, b) {
        case (.string(let x), .string(let y)): return x == y
        case (.int(let x), .int(let y)): return x == y
        case (.none, .none): return true
        case (.undefined, .undefined): return true
        case (.array(let x), .array(let y)):
            guard x.count == y.count else { return false }
            for k in 0..<x.count where !eq(x[k], y[k]) { return false }
            return true
        case (.dict(let x), .dict(let y)):
            guard x.count == y.count else { return false }
            for (k, v) in x.map {
                guard let w = y.map[k], eq(v, w) else { return false }
            }
            return true
        case (.namespace(let x), .namespace(let y)): return x === y
        case (.callable(let x), .callable(let y)): return x === y
        case (.loop(let x), .loop(let y)): return x === y
        default:
            if let x = intLike(a), let y = intLike(b) { return x == y }
            if let x = number(a), let y = number(b) { return x == y }
            return false
        }
    }

    /// Python's `<`-style ordering; throws TypeError text for unorderable types.
    static func compare(_ a: V, _ b: V, op: String) throws -> Int {
        switch (a, b) {
        case (.string(let x), .string(let y)):
            if x == y { return 0 }
            return x.unicodeScalars.lexicographicallyPrecedes(y.unicodeScalars) ? -1 : 1
        case (.array(let x), .array(let y)):
            for k in 0..<min(x.count, y.count) where !eq(x[k], y[k]) {
                return try compare(x[k], y[k], op: op)
            }
            return x.count < y.count ? -1 : (x.count == y.count ? 0 : 1)
        default:
            if let x = intLike(a), let y = intLike(b) { return x < y ? -1 : (x == y ? 0 : 1) }
            if let x = number(a), let y = number(b) { return x < y ? -1 : (x == y ? 0 : 1) }
            if case .undefined(let u) = a { throw RuntimeFailure(message: u.message) }
            if case .undefined(let u) = b { throw RuntimeFailure(message: u.message) }
            throw RuntimeFailure(message: "'\(op)' not supported between instances of '\(typeName(a))' and '\(typeName(b))'")
        }
    }

    /// Python iteration: list items, dict keys, string characters; Undefined iterates as empty.
    static func iterate(_ v: V) throws -> [V] {
        switch v {
        case .array(let a): return a
        case .dict(let d): return d.keys.map { $0.value }
        case .string(let s): return s.unicodeScalars.map { .string(String($0)) }
        case .undefined: return []
        case .namespace(let n): return n.attrs.keys.map { $0.value }
        case .loop(let l): return l.items
        default: throw RuntimeFailure(message: "'\(typeName(v))' object is not iterable")
        }
    }

    static func length(_ v: V) throws -> Int {
        switch v {
        case .array(let a): return a.count
        case .dict(let d): return d.count
        case .string(let s): return s.unicodeScalars.count
        case .undefined: return 0
        case .loop(let l): return l.items.count
        default: throw RuntimeFailure(message: "object of type '\(typeName(v))' has no len()")
        }
    }

    static func contains(_ container: V, _ item: V) throws -> Bool {
        switch container {
        case .string(let s):
            guard case .string(let t) = item else {
                if case .undefined(let u) = item { throw RuntimeFailure(message: u.message) }
                throw RuntimeFailure(message: "'in <string>' requires string as left operand, not \(typeName(item))")
            }
            return t.isEmpty || s.contains(t)
        case .array(let a): return a.contains { eq($0, item) }
        case .dict(let d):
            return d.map[DictKey(item)] != nil
        case .namespace(let n):
            if case .string(let k) = item { return n.attrs[k] != nil }
            return false
        case .undefined: return false
        default:
            throw RuntimeFailure(message: "argument of type '\(typeName(container))' is not iterable")
        }
    }
}
