import Foundation

/// Filters, tests, methods and global functions, with jinja2's (and Python's) semantics.
enum Builtins {
    static let dictMethods: Set<String> = ["get", "items", "keys", "values", "copy"]
    static let unsafeDictMethods: Set<String> = ["pop", "popitem", "update", "setdefault", "clear"]
    static let listMethods: Set<String> = ["index", "count", "copy"]
    static let unsafeListMethods: Set<String> = ["append", "extend", "insert", "pop", "remove", "sort", "reverse", "clear"]
    static let stringMethods: Set<String> = [
        "strip", "lstrip", "rstrip", "startswith", "endswith", "split", "rsplit", "splitlines", "upper", "lower",
        "replace", "title", "capitalize", "format", "find", "rfind", "index", "rindex", "count", "join", "isdigit",
        "isalpha", "isalnum", "isspace", "isupper", "islower", "isnumeric", "isdecimal", "istitle", "center", "ljust",
        "rjust", "zfill", "swapcase", "casefold", "partition", "rpartition", "removeprefix", "removesuffix",
        "expandtabs",
    ]

    static func fail(_ m: String) -> RuntimeFailure { RuntimeFailure(message: m) }

    static func boundMethod(_ obj: V, _ name: String, _ it: Interpreter) -> Callable {
        Callable(name) { args in
            guard let r = try callMethod(obj, name, args, it) else {
                throw fail("'\(Runtime.typeName(obj))' object has no attribute '\(name)'")
            }
            return r
        }
    }

    static func str(_ v: V?) -> String? {
        if case .string(let s)? = v { return s }
        return nil
    }

    static func stringArg(_ v: V?, _ what: String) throws -> String? {
        guard let v else { return nil }
        switch v {
        case .string(let s): return s
        case .none: return nil
        default: throw fail("\(what) arg must be None or str")
        }
    }

    // MARK: - string helpers (Python semantics)

    static let pyWhitespace: Set<Unicode.Scalar> = [" ", "\t", "\n", "\r", "\u{0B}", "\u{0C}", "\u{1C}", "\u{1D}",
                                                    "\u{1E}", "\u{1F}", "\u{85}", "\u{A0}", "\u{1680}", "\u{2000}",
                                                    "\u{2001}", "\u{2002}", "\u{2003}", "\u{2004}", "\u{2005}",
                                                    "\u{2006}", "\u{2007}", "\u{2008}", "\u{2009}", "\u{200A}",
                                                    "\u{2028}", "\u{2029}", "\u{202F}", "\u{205F}", "\u{3000}"]

    static func isPySpace(_ u: Unicode.Scalar) -> Bool { pyWhitespace.contains(u) }

    static func strip(_ s: String, _ chars: String?, left: Bool, right: Bool) -> String {
        let set: Set<Unicode.Scalar>? = chars.map { Set($0.unicodeScalars) }
        func drop(_ u: Unicode.Scalar) -> Bool { set.map { $0.contains(u) } ?? isPySpace(u) }
        let sc = s.unicodeScalars
        var lo = sc.startIndex, hi = sc.endIndex
        if left { while lo < hi, drop(sc[lo]) { lo = sc.index(after: lo) } }
        if right {
            while hi > lo {
                let p = sc.index(before: hi)
                if drop(sc[p]) { hi = p } else { break }
            }
        }
        if lo == sc.startIndex && hi == sc.endIndex { return s }
        return String(sc[lo..<hi])
    }

    static func split(_ s: String, _ sep: String?, _ maxsplit: Int) -> [String] {
        var out: [String] = []
        if let sep {
            if maxsplit < 0 { return s.components(separatedBy: sep) }
            var rest = Substring(s)
            var n = 0
            while n < maxsplit, let r = rest.range(of: sep) {
                out.append(String(rest[..<r.lowerBound]))
                rest = rest[r.upperBound...]
                n += 1
            }
            out.append(String(rest))
            return out
        }
        // Whitespace split.
        let sc = Array(s.unicodeScalars)
        var i = 0
        var n = 0
        while i < sc.count {
            while i < sc.count, isPySpace(sc[i]) { i += 1 }
            if i >= sc.count { break }
            if maxsplit >= 0 && n >= maxsplit {
                var j = sc.count
                while j > i, isPySpace(sc[j - 1]) { j -= 1 }
                var v = String.UnicodeScalarView(); v.append(contentsOf: sc[i..<j])
                out.append(String(v))
                break
            }
            let st = i
            while i < sc.count, !isPySpace(sc[i]) { i += 1 }
            var v = String.UnicodeScalarView(); v.append(contentsOf: sc[st..<i])
            out.append(String(v))
            n += 1
        }
        return out
    }

    static func replace(_ s: String, _ old: String, _ new: String, count: Int) -> String {
        if count < 0 {
            if old.isEmpty {
                var out = new
                for u in s.unicodeScalars { out.unicodeScalars.append(u); out += new }
                return out
            }
            return s.replacingOccurrences(of: old, with: new)
        }
        var out = ""
        var rest = Substring(s)
        var n = 0
        if old.isEmpty {
            var sc = s.unicodeScalars.makeIterator()
            while n < count { out += new; n += 1; if let u = sc.next() { out.unicodeScalars.append(u) } else { return out } }
            while let u = sc.next() { out.unicodeScalars.append(u) }
            return out
        }
        while n < count, let r = rest.range(of: old) {
            out += rest[..<r.lowerBound]
            out += new
            rest = rest[r.upperBound...]
            n += 1
        }
        out += rest
        return out
    }

    static func upper(_ s: String) -> String { s.uppercased() }
    static func lower(_ s: String) -> String { s.lowercased() }

    static func capitalize(_ s: String) -> String {
        guard let f = s.unicodeScalars.first else { return s }
        return String(f).uppercased() + String(s.unicodeScalars.dropFirst()).lowercased()
    }

    /// jinja2's `title` filter: words start after whitespace, '-', '(', '{', '[' or '<'.
    static func jinjaTitle(_ s: String) -> String {
        var out = ""
        var atStart = true
        for u in s.unicodeScalars {
            let sep = isPySpace(u) || u == "-" || u == "(" || u == "{" || u == "[" || u == "<"
            if sep { out.unicodeScalars.append(u); atStart = true; continue }
            out += atStart ? String(u).uppercased() : String(u).lowercased()
            atStart = false
        }
        return out
    }

    /// Python's str.title(): a letter after a non-letter starts a word.
    static func pyTitle(_ s: String) -> String {
        var out = ""
        var prevCased = false
        for u in s.unicodeScalars {
            let isLetter = u.properties.isAlphabetic
            out += isLetter ? (prevCased ? String(u).lowercased() : String(u).uppercased()) : String(u)
            prevCased = isLetter
        }
        return out
    }

    static func scalarIndex(_ s: String, of sub: String, reverse: Bool = false) -> Int {
        let a = Array(s.unicodeScalars), b = Array(sub.unicodeScalars)
        if b.isEmpty { return reverse ? a.count : 0 }
        if b.count > a.count { return -1 }
        let range = Array(0...(a.count - b.count))
        for i in (reverse ? range.reversed() : range) where a[i] == b[0] && Array(a[i..<(i + b.count)]) == b { return i }
        return -1
    }

    static func countOccurrences(_ s: String, _ sub: String) -> Int {
        if sub.isEmpty { return s.unicodeScalars.count + 1 }
        var n = 0
        var rest = Substring(s)
        while let r = rest.range(of: sub) { n += 1; rest = rest[r.upperBound...] }
        return n
    }

    /// str.format with `{}`, `{0}`, `{name}`, `{name.attr}`/`{name[key]}` and simple `:` specs (`>10`, `.2f`, `d`).
    static func pyFormat(_ fmt: String, _ args: CallArgs, _ it: Interpreter) throws -> String {
        var out = ""
        var auto = 0
        let chars = Array(fmt)
        var i = 0
        while i < chars.count {
            let c = chars[i]
            if c == "{" {
                if i + 1 < chars.count, chars[i + 1] == "{" { out.append("{"); i += 2; continue }
                var j = i + 1
                var depth = 1
                while j < chars.count {
                    if chars[j] == "{" { depth += 1 }
                    if chars[j] == "}" { depth -= 1; if depth == 0 { break } }
                    j += 1
                }
                if j >= chars.count { throw fail("Single '{' encountered in format string") }
                let field = String(chars[(i + 1)..<j])
                var name = field
                var spec = ""
                var conv: Character? = nil
                if let colon = field.firstIndex(of: ":") {
                    name = String(field[..<colon]); spec = String(field[field.index(after: colon)...])
                }
                if let bang = name.firstIndex(of: "!") {
                    conv = name[name.index(after: bang)...].first
                    name = String(name[..<bang])
                }
                // Split "a.b[c]" into the head and accessors.
                var head = name
                var rest = ""
                if let k = name.firstIndex(where: { $0 == "." || $0 == "[" }) {
                    head = String(name[..<k]); rest = String(name[k...])
                }
                var v: V
                if head.isEmpty {
                    guard auto < args.positional.count else { throw fail("Replacement index \(auto) out of range for positional args tuple") }
                    v = args.positional[auto]; auto += 1
                } else if let n = Int(head) {
                    guard n < args.positional.count else { throw fail("Replacement index \(n) out of range for positional args tuple") }
                    v = args.positional[n]
                } else {
                    guard let kv = args.kw(head) else { throw fail("'\(head)'") }
                    v = kv
                }
                var r = Substring(rest)
                while !r.isEmpty {
                    if r.first == "." {
                        r = r.dropFirst()
                        let end = r.firstIndex(where: { $0 == "." || $0 == "[" }) ?? r.endIndex
                        v = try it.getattr(v, String(r[..<end])); r = r[end...]
                    } else if r.first == "[" {
                        let end = r.firstIndex(of: "]") ?? r.endIndex
                        let key = String(r[r.index(after: r.startIndex)..<end])
                        v = try it.getitem(v, Int(key).map { .int($0) } ?? .string(key))
                        r = end < r.endIndex ? r[r.index(after: end)...] : r[end...]
                    } else { break }
                }
                var text = conv == "r" ? Runtime.repr(v) : Runtime.str(v)
                if !spec.isEmpty { text = try formatSpec(v, spec, conv == "r" ? text : nil) }
                out += text
                i = j + 1
                continue
            }
            if c == "}" {
                if i + 1 < chars.count, chars[i + 1] == "}" { out.append("}"); i += 2; continue }
                throw fail("Single '}' encountered in format string")
            }
            out.append(c)
            i += 1
        }
        return out
    }

    /// A subset of Python's format-spec mini-language: [[fill]align][sign][0][width][.precision][type].
    static func formatSpec(_ v: V, _ spec: String, _ preformatted: String?) throws -> String {
        var chars = Array(spec)
        var fill: Character = " "
        var align: Character? = nil
        if chars.count >= 2, "<>^=".contains(chars[1]) { fill = chars[0]; align = chars[1]; chars.removeFirst(2) } else if let f = chars.first, "<>^=".contains(f) { align = f; chars.removeFirst() }
        var sign: Character? = nil
        if let f = chars.first, "+- ".contains(f) { sign = f; chars.removeFirst() }
        if chars.first == "0" { fill = "0"; if align == nil { align = "=" }; chars.removeFirst() }
        var width = 0
        while let f = chars.first, let d = f.wholeNumberValue { width = width * 10 + d; chars.removeFirst() }
        if chars.first == "," { chars.removeFirst() }
        var precision: Int? = nil
        if chars.first == "." {
            chars.removeFirst()
            var p = 0
            while let f = chars.first, let d = f.wholeNumberValue { p = p * 10 + d; chars.removeFirst() }
            precision = p
        }
        let type = chars.first
        var body: String
        let isNum: Bool
        switch type {
        case "f", "F", "e", "E", "g", "G", "%":
            guard let x = Runtime.number(v) else { throw fail("Unknown format code '\(type!)' for object of type '\(Runtime.typeName(v))'") }
            let p = precision ?? 6
            switch type {
            case "e", "E": body = String(format: "%.\(p)\(type!)", x)
            case "g", "G": body = String(format: "%.\(p)\(type!)", x)
            case "%": body = String(format: "%.\(p)f", x * 100) + "%"
            default: body = String(format: "%.\(p)f", x)
            }
            isNum = true
        case "d":
            guard let x = Runtime.intLike(v) else { throw fail("Unknown format code 'd' for object of type '\(Runtime.typeName(v))'") }
            body = String(x); isNum = true
        case "x", "X", "o", "b":
            guard let x = Runtime.intLike(v) else { throw fail("Unknown format code '\(type!)' for object of type '\(Runtime.typeName(v))'") }
            let radix = type == "o" ? 8 : (type == "b" ? 2 : 16)
            body = String(x, radix: radix, uppercase: type == "X"); isNum = true
        case "s", nil:
            if let x = preformatted {
                body = x
            } else if let precision, case .string(let t) = v {
                body = String(t.prefix(precision))
            } else if let precision, case .double(let d) = v {
                body = String(format: "%.\(precision)g", d)
            } else {
                body = Runtime.str(v)
            }
            isNum = { if case .string = v { return false }; return Runtime.number(v) != nil }()
        default:
            throw fail("Unknown format code '\(type!)'")
        }
        if isNum, let sign, !body.hasPrefix("-") {
            if sign == "+" { body = "+" + body } else if sign == " " { body = " " + body }
        }
        let count = body.count
        if width <= count { return body }
        let pad = width - count
        let a = align ?? (isNum ? ">" : "<")
        switch a {
        case ">": return String(repeating: fill, count: pad) + body
        case "^": return String(repeating: fill, count: pad / 2) + body + String(repeating: fill, count: pad - pad / 2)
        case "=":
            if let f = body.first, "+- ".contains(f) { return String(f) + String(repeating: fill, count: pad) + body.dropFirst() }
            return String(repeating: fill, count: pad) + body
        default: return body + String(repeating: fill, count: pad)
        }
    }

    /// Python's `"fmt" % value` for %s, %r, %d, %i, %f, %x, %% and %(name)s.
    static func percentFormat(_ fmt: String, _ value: V) throws -> String {
        var positional: [V]
        var mapping: Dict? = nil
        switch value {
        case .array(let a): positional = a
        case .dict(let d): positional = [value]; mapping = d
        default: positional = [value]
        }
        var out = ""
        let chars = Array(fmt)
        var i = 0
        var k = 0
        while i < chars.count {
            let c = chars[i]
            if c != "%" { out.append(c); i += 1; continue }
            i += 1
            guard i < chars.count else { throw fail("incomplete format") }
            var key: String? = nil
            if chars[i] == "(" {
                var j = i + 1
                while j < chars.count, chars[j] != ")" { j += 1 }
                key = String(chars[(i + 1)..<j]); i = j + 1
            }
            var flags = ""
            while i < chars.count, "-+ 0#".contains(chars[i]) { flags.append(chars[i]); i += 1 }
            var width = ""
            while i < chars.count, chars[i].isNumber { width.append(chars[i]); i += 1 }
            var prec: String? = nil
            if i < chars.count, chars[i] == "." {
                i += 1; prec = ""
                while i < chars.count, chars[i].isNumber { prec!.append(chars[i]); i += 1 }
            }
            guard i < chars.count else { throw fail("incomplete format") }
            let t = chars[i]; i += 1
            if t == "%" { out += "%"; continue }
            let v: V
            if let key {
                guard let m = mapping, let x = m[key] else { throw fail("'\(key)'") }
                v = x
            } else {
                guard k < positional.count else { throw fail("not enough arguments for format string") }
                v = positional[k]; k += 1
            }
            var body: String
            switch t {
            case "s": body = Runtime.str(v)
            case "r", "a": body = Runtime.repr(v)
            case "d", "i", "u":
                guard let n = Runtime.number(v) else { throw fail("%\(t) format: a real number is required, not \(Runtime.typeName(v))") }
                body = String(Int(n.rounded(.towardZero)))
            case "f", "F":
                guard let n = Runtime.number(v) else { throw fail("must be real number, not \(Runtime.typeName(v))") }
                body = String(format: "%.\(prec ?? "6")f", n)
            case "x", "X":
                guard let n = Runtime.intLike(v) else { throw fail("%x format: an integer is required") }
                body = String(n, radix: 16, uppercase: t == "X")
            default: throw fail("unsupported format character '\(t)'")
            }
            if t == "s", let p = prec, let pn = Int(p) { body = String(body.prefix(pn)) }
            if let w = Int(width), body.count < w {
                let pad = String(repeating: flags.contains("0") && t != "s" ? "0" : " ", count: w - body.count)
                body = flags.contains("-") ? body + pad : pad + body
            }
            out += body
        }
        if mapping == nil && k < positional.count, case .array = value {
            throw fail("not all arguments converted during string formatting")
        }
        return out
    }

    // MARK: - methods

    static func callMethod(_ obj: V, _ name: String, _ a: CallArgs, _ it: Interpreter) throws -> V? {
        switch obj {
        case .string(let s): return try stringMethod(s, name, a, it)
        case .dict(let d):
            switch name {
            case "get":
                guard let k = a.arg(0, "key") else { throw fail("get expected at least 1 argument, got 0") }
                return d.map[DictKey(k)] ?? a.arg(1, "default") ?? V.none
            case "items": return .array(d.items)
            case "keys": return .array(d.keys.map { $0.value })
            case "values": return .array(d.values)
            case "copy": return obj
            default:
                if unsafeDictMethods.contains(name) { throw fail("access to attribute '\(name)' of 'dict' object is unsafe.") }
                return nil
            }
        case .array(let arr):
            switch name {
            case "index":
                guard let x = a.positional.first else { throw fail("index expected 1 argument") }
                guard let i = arr.firstIndex(where: { Runtime.eq($0, x) }) else { throw fail("\(Runtime.repr(x)) is not in list") }
                return .int(i)
            case "count":
                guard let x = a.positional.first else { throw fail("count expected 1 argument") }
                return .int(arr.filter { Runtime.eq($0, x) }.count)
            case "copy": return obj
            default:
                if unsafeListMethods.contains(name) { throw fail("access to attribute '\(name)' of 'list' object is unsafe.") }
                return nil
            }
        case .undefined(let u):
            throw fail(u.message)
        default:
            return nil
        }
    }

    static func stringMethod(_ s: String, _ name: String, _ a: CallArgs, _ it: Interpreter) throws -> V? {
        func strArg(_ i: Int, _ n: String) throws -> String {
            guard let v = a.arg(i, n) else { throw fail("\(name)() missing required argument '\(n)'") }
            guard case .string(let x) = v else {
                if case .undefined(let u) = v { throw fail(u.message) }
                throw fail("\(name)() argument must be str, not \(Runtime.typeName(v))")
            }
            return x
        }
        func intArg(_ i: Int, _ n: String, _ def: Int) throws -> Int {
            guard let v = a.arg(i, n) else { return def }
            if case .none = v { return def }
            guard let x = Runtime.intLike(v) else { throw fail("'\(Runtime.typeName(v))' object cannot be interpreted as an integer") }
            return x
        }
        switch name {
        case "strip": return .string(strip(s, try stringArg(a.arg(0, "chars"), "strip"), left: true, right: true))
        case "lstrip": return .string(strip(s, try stringArg(a.arg(0, "chars"), "lstrip"), left: true, right: false))
        case "rstrip": return .string(strip(s, try stringArg(a.arg(0, "chars"), "rstrip"), left: false, right: true))
        case "startswith", "endswith":
            guard let p = a.arg(0, "prefix") else { throw fail("\(name)() takes at least 1 argument (0 given)") }
            let cands: [V]
            if case .array(let arr) = p { cands = arr } else { cands = [p] }
            for c in cands {
                guard case .string(let x) = c else {
                    if case .undefined(let u) = c { throw fail(u.message) }
                    throw fail("\(name) first arg must be str or a tuple of str, not \(Runtime.typeName(c))")
                }
                if name == "startswith" ? s.unicodeScalars.starts(with: x.unicodeScalars) : s.unicodeScalars.reversed().starts(with: x.unicodeScalars.reversed()) { return .bool(true) }
            }
            return .bool(false)
        case "split", "rsplit":
            let sep = try stringArg(a.arg(0, "sep"), "split")
            if sep == "" { throw fail("empty separator") }
            let maxsplit = try intArg(1, "maxsplit", -1)
            if name == "rsplit" && maxsplit >= 0 {
                // rsplit with a limit: split from the right.
                let rev = String(s.reversed())
                let parts = split(rev, sep.map { String($0.reversed()) }, maxsplit)
                return .array(parts.reversed().map { .string(String($0.reversed())) })
            }
            return .array(split(s, sep, maxsplit).map { .string($0) })
        case "splitlines":
            var lines = s.components(separatedBy: "\n")
            if lines.last == "" { lines.removeLast() }
            return .array(lines.map { .string($0.hasSuffix("\r") ? String($0.dropLast()) : $0) })
        case "upper": return .string(upper(s))
        case "lower", "casefold": return .string(lower(s))
        case "title": return .string(pyTitle(s))
        case "capitalize": return .string(capitalize(s))
        case "swapcase": return .string(String(s.map { $0.isUppercase ? Character($0.lowercased()) : Character($0.uppercased()) }))
        case "replace":
            return .string(replace(s, try strArg(0, "old"), try strArg(1, "new"), count: try intArg(2, "count", -1)))
        case "format":
            return .string(try pyFormat(s, a, it))
        case "find": return .int(scalarIndex(s, of: try strArg(0, "sub")))
        case "rfind": return .int(scalarIndex(s, of: try strArg(0, "sub"), reverse: true))
        case "index", "rindex":
            let r = scalarIndex(s, of: try strArg(0, "sub"), reverse: name == "rindex")
            if r < 0 { throw fail("substring not found") }
            return .int(r)
        case "count": return .int(countOccurrences(s, try strArg(0, "sub")))
        case "join":
            guard let v = a.positional.first else { throw fail("join() takes exactly one argument") }
            return .string(try Runtime.iterate(v).map { x -> String in
                guard case .string(let t) = x else { throw fail("sequence item: expected str instance, \(Runtime.typeName(x)) found") }
                return t
            }.joined(separator: s))
        case "isdigit", "isnumeric", "isdecimal":
            return .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.numericType != nil })
        case "isalpha": return .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.isAlphabetic })
        case "isalnum": return .bool(!s.isEmpty && s.unicodeScalars.allSatisfy { $0.properties.isAlphabetic || $0.properties.numericType != nil })
        case "isspace": return .bool(!s.isEmpty && s.unicodeScalars.allSatisfy(isPySpace))
        case "isupper": return .bool(s.contains { $0.isCased } && s == s.uppercased())
        case "islower": return .bool(s.contains { $0.isCased } && s == s.lowercased())
        case "istitle": return .bool(!s.isEmpty && s == pyTitle(s) && s.contains { $0.isCased })
        case "center", "ljust", "rjust":
            let w = try intArg(0, "width", 0)
            let fill = try stringArg(a.arg(1, "fillchar"), name) ?? " "
            let n = s.unicodeScalars.count
            if w <= n { return .string(s) }
            let pad = w - n
            switch name {
            case "ljust": return .string(s + String(repeating: fill, count: pad))
            case "rjust": return .string(String(repeating: fill, count: pad) + s)
            default:
                let left = pad / 2 + (pad & w & 1)
                return .string(String(repeating: fill, count: left) + s + String(repeating: fill, count: pad - left))
            }
        case "zfill":
            let w = try intArg(0, "width", 0)
            let n = s.unicodeScalars.count
            if w <= n { return .string(s) }
            if let f = s.first, f == "-" || f == "+" { return .string(String(f) + String(repeating: "0", count: w - n) + s.dropFirst()) }
            return .string(String(repeating: "0", count: w - n) + s)
        case "partition", "rpartition":
            let sep = try strArg(0, "sep")
            let r = name == "partition" ? s.range(of: sep) : s.range(of: sep, options: .backwards)
            guard let r else {
                return name == "partition" ? .array([.string(s), .string(""), .string("")]) : .array([.string(""), .string(""), .string(s)])
            }
            return .array([.string(String(s[..<r.lowerBound])), .string(sep), .string(String(s[r.upperBound...]))])
        case "removeprefix":
            let p = try strArg(0, "prefix")
            return .string(s.hasPrefix(p) ? String(s.dropFirst(p.count)) : s)
        case "removesuffix":
            let p = try strArg(0, "suffix")
            return .string(s.hasSuffix(p) && !p.isEmpty ? String(s.dropLast(p.count)) : s)
        case "expandtabs":
            return .string(s.replacingOccurrences(of: "\t", with: String(repeating: " ", count: try intArg(0, "tabsize", 8))))
        default:
            return nil
        }
    }

    // MARK: - loop

    static func loopAttr(_ l: LoopState, _ name: String, _ it: Interpreter) throws -> V {
        let n = l.items.count
        switch name {
        case "index": return .int(l.index + 1)
        case "index0": return .int(l.index)
        case "revindex": return .int(n - l.index)
        case "revindex0": return .int(n - l.index - 1)
        case "first": return .bool(l.index == 0)
        case "last": return .bool(l.index == n - 1)
        case "length": return .int(n)
        case "depth": return .int(l.depth)
        case "depth0": return .int(l.depth - 1)
        case "previtem":
            return l.index > 0 ? l.items[l.index - 1] : .undefined(.hint("there is no previous item"))
        case "nextitem":
            return l.index + 1 < n ? l.items[l.index + 1] : .undefined(.hint("there is no next item"))
        case "cycle":
            return .callable(Callable("cycle") { a in
                guard !a.positional.isEmpty else { throw fail("no items for cycling given") }
                return a.positional[l.index % a.positional.count]
            })
        case "changed":
            return .callable(Callable("changed") { a in
                if let last = l.lastChanged, last.count == a.positional.count, zip(last, a.positional).allSatisfy({ Runtime.eq($0, $1) }) {
                    return .bool(false)
                }
                l.lastChanged = a.positional
                return .bool(true)
            })
        default:
            return .undefined(.attr(owner: "'jinja2.runtime.LoopContext object'", name: name))
        }
    }

    // MARK: - tests

    static func test(_ name: String, _ v: V, _ a: CallArgs, _ it: Interpreter) throws -> Bool {
        let arg = a.positional.first ?? a.kwargs.first?.1
        switch name {
        case "defined": return !v.isUndefined
        case "undefined": return v.isUndefined
        case "none": if case .none = v { return true }; return false
        case "string": if case .string = v { return true }; return false
        case "number":
            switch v { case .int, .double, .bool: return true; default: return false }
        case "integer": if case .int = v { return true }; return false
        case "float": if case .double = v { return true }; return false
        case "boolean": if case .bool = v { return true }; return false
        case "true": if case .bool(true) = v { return true }; return false
        case "false": if case .bool(false) = v { return true }; return false
        case "mapping": if case .dict = v { return true }; return false
        case "iterable":
            switch v { case .string, .array, .dict, .undefined, .namespace, .loop: return true; default: return false }
        case "sequence":
            switch v { case .string, .array, .dict, .undefined: return true; default: return false }
        case "callable":
            switch v { case .callable: return true; case .loop(let l): return l.recurse != nil; default: return false }
        case "equalto", "eq", "==": return Runtime.eq(v, arg ?? .undefined(.hint("missing argument")))
        case "ne", "!=": return !Runtime.eq(v, arg ?? .undefined(.hint("missing argument")))
        case "lt", "lessthan", "<": return try Runtime.compare(v, arg ?? V.none, op: "<") < 0
        case "le", "<=": return try Runtime.compare(v, arg ?? V.none, op: "<=") <= 0
        case "gt", "greaterthan", ">": return try Runtime.compare(v, arg ?? V.none, op: ">") > 0
        case "ge", ">=": return try Runtime.compare(v, arg ?? V.none, op: ">=") >= 0
        case "sameas":
            guard let arg else { return false }
            switch (v, arg) {
            case (.none, .none): return true
            case (.bool(let x), .bool(let y)): return x == y
            case (.int(let x), .int(let y)): return x == y && x >= -5 && x <= 256
            case (.string(let x), .string(let y)): return x == y
            case (.namespace(let x), .namespace(let y)): return x === y
            case (.callable(let x), .callable(let y)): return x === y
            default: return false
            }
        case "in": return try Runtime.contains(arg ?? .array([]), v)
        case "odd", "even":
            guard let x = Runtime.intLike(v) else {
                if case .undefined(let u) = v { throw fail(u.message) }
                throw fail("unsupported operand type(s) for %: '\(Runtime.typeName(v))' and 'int'")
            }
            return (x & 1 == 1) == (name == "odd")
        case "divisibleby":
            guard let x = Runtime.intLike(v), let y = arg.flatMap(Runtime.intLike) else { throw fail("divisibleby needs integers") }
            if y == 0 { throw fail("integer division or modulo by zero") }
            return x % y == 0
        case "lower": if case .string(let s) = v { return s == s.lowercased() }; return false
        case "upper": if case .string(let s) = v { return s == s.uppercased() }; return false
        case "escaped": return false
        case "filter": if case .string(let s) = v { return filterNames.contains(s) }; return false
        case "test": if case .string(let s) = v { return testNames.contains(s) }; return false
        default:
            throw fail("No test named '\(name)'.")
        }
    }

    static let testNames: Set<String> = ["defined", "undefined", "none", "string", "number", "integer", "float",
                                         "boolean", "true", "false", "mapping", "iterable", "sequence", "callable",
                                         "equalto", "eq", "==", "ne", "!=", "lt", "lessthan", "<", "le", "<=", "gt",
                                         "greaterthan", ">", "ge", ">=", "sameas", "in", "odd", "even", "divisibleby",
                                         "lower", "upper", "escaped", "filter", "test"]

    static let filterNames: Set<String> = ["trim", "length", "count", "tojson", "upper", "lower", "title",
                                           "capitalize", "default", "d", "first", "last", "join", "list", "items",
                                           "replace", "string", "int", "float", "abs", "round", "map", "select",
                                           "reject", "selectattr", "rejectattr", "unique", "sort", "reverse",
                                           "indent", "safe", "wordcount", "batch", "dictsort", "sum", "min", "max",
                                           "center", "format", "e", "escape", "forceescape", "attr", "truncate",
                                           "striptags", "slice", "wordwrap", "urlencode", "pprint", "xmlattr",
                                           "groupby", "filesizeformat", "random", "bool"]

    // MARK: - filters

    static func attribute(_ v: V, _ path: V?, _ it: Interpreter) throws -> V {
        guard let path else { return v }
        switch path {
        case .int(let i): return try it.getitem(v, .int(i))
        case .string(let p):
            var cur = v
            for part in p.split(separator: ".", omittingEmptySubsequences: false) {
                if let i = Int(part) { cur = try it.getitem(cur, .int(i)) } else { cur = try it.getitem(cur, .string(String(part))) }
            }
            return cur
        default: return v
        }
    }

    static func sortKey(_ v: V, caseSensitive: Bool) -> V {
        if !caseSensitive, case .string(let s) = v { return .string(s.lowercased()) }
        return v
    }

    static func filter(_ name: String, _ v: V, _ a: CallArgs, _ it: Interpreter) throws -> V {
        func requireDefined(_ x: V) throws {
            if case .undefined(let u) = x { throw fail(u.message) }
        }
        switch name {
        case "trim":
            let chars = try stringArg(a.arg(0, "chars"), "strip")
            return .string(strip(Runtime.str(v), chars, left: true, right: true))
        case "length", "count":
            return .int(try Runtime.length(v))
        case "tojson":
            var indent: String? = nil
            if let iv = a.arg(0, "indent") {
                switch iv {
                case .int(let n): indent = String(repeating: " ", count: max(0, n))
                case .string(let s): indent = s
                default: break
                }
            }
            var seps: (String, String) = indent == nil ? (", ", ": ") : (",", ": ")
            if let sv = a.kw("separators"), case .array(let p) = sv, p.count == 2 {
                seps = (Runtime.str(p[0]), Runtime.str(p[1]))
            }
            let sortKeys = a.kw("sort_keys").map(Runtime.truthy) ?? false
            if case .undefined = v { throw fail("Object of type Undefined is not JSON serializable") }
            var out = ""
            try checkJSONSerializable(v)
            Runtime.toJSON(v, indent: indent, level: 0, separators: seps, sortKeys: sortKeys, into: &out)
            return .string(out)
        case "upper": return .string(upper(Runtime.str(v)))
        case "lower": return .string(lower(Runtime.str(v)))
        case "title": return .string(jinjaTitle(Runtime.str(v)))
        case "capitalize": return .string(capitalize(Runtime.str(v)))
        case "default", "d":
            let def = a.arg(0, "default_value") ?? .string("")
            let boolean = a.arg(1, "boolean").map(Runtime.truthy) ?? false
            if v.isUndefined || (boolean && !Runtime.truthy(v)) { return def }
            return v
        case "first":
            if case .undefined(let u) = v { throw fail(u.message) }
            let items = try Runtime.iterate(v)
            return items.first ?? .undefined(.hint("No first item, sequence was empty."))
        case "last":
            if case .undefined(let u) = v { throw fail(u.message) }
            let items = try Runtime.iterate(v)
            return items.last ?? .undefined(.hint("No last item, sequence was empty."))
        case "join":
            let sep = a.arg(0, "d").map(Runtime.str) ?? ""
            var items = try Runtime.iterate(v)
            if let attr = a.arg(1, "attribute") { items = try items.map { try attribute($0, attr, it) } }
            return .string(items.map(Runtime.str).joined(separator: sep))
        case "list":
            return .array(try Runtime.iterate(v))
        case "items":
            switch v {
            case .undefined: return .array([])
            case .dict(let d): return .array(d.items)
            case .namespace(let n): return .array(n.attrs.items)
            default: throw fail("Can only get item pairs from a mapping.")
            }
        case "replace":
            let s = Runtime.str(v)
            guard let old = a.arg(0, "old"), let new = a.arg(1, "new") else { throw fail("replace() needs old and new") }
            let count = a.arg(2, "count").flatMap(Runtime.intLike) ?? -1
            return .string(replace(s, Runtime.str(old), Runtime.str(new), count: count))
        case "string":
            return .string(Runtime.str(v))
        case "safe", "e", "escape", "forceescape":
            if name == "safe" { return v }
            return .string(Runtime.str(v).replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
                .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&#34;")
                .replacingOccurrences(of: "'", with: "&#39;"))
        case "int":
            let def = a.arg(0, "default") ?? .int(0)
            let base = a.arg(1, "base").flatMap(Runtime.intLike) ?? 10
            switch v {
            case .int: return v
            case .bool(let b): return .int(b ? 1 : 0)
            case .double(let d): return d.isFinite ? .int(Int(d.rounded(.towardZero))) : def
            case .string(let s):
                let t = strip(s, nil, left: true, right: true).replacingOccurrences(of: "_", with: "")
                var body = t
                var r = base
                if base == 10 || base == 0 {
                    for (p, rb) in [("0x", 16), ("0X", 16), ("0o", 8), ("0O", 8), ("0b", 2), ("0B", 2)] where t.hasPrefix(p) && base != 10 {
                        body = String(t.dropFirst(2)); r = rb
                    }
                    if base == 0 { r = r == 0 ? 10 : r }
                } else if [16, 8, 2].contains(base) {
                    let p = base == 16 ? "0x" : (base == 8 ? "0o" : "0b")
                    if t.lowercased().hasPrefix(p) { body = String(t.dropFirst(2)) }
                }
                if let n = Int(body, radix: r) { return .int(n) }
                if let d = Double(t), d.isFinite { return .int(Int(d.rounded(.towardZero))) }
                return def
            default: return def
            }
        case "float":
            let def = a.arg(0, "default") ?? .double(0)
            switch v {
            case .double: return v
            case .int(let i): return .double(Double(i))
            case .bool(let b): return .double(b ? 1 : 0)
            case .string(let s):
                let t = strip(s, nil, left: true, right: true).lowercased()
                if let d = Double(t) { return .double(d) }
                if t == "inf" || t == "infinity" || t == "+inf" { return .double(.infinity) }
                if t == "-inf" || t == "-infinity" { return .double(-.infinity) }
                if t == "nan" { return .double(.nan) }
                return def
            default: return def
            }
        case "bool": return .bool(Runtime.truthy(v))
        case "abs":
            switch v {
            case .int(let i): return .int(abs(i))
            case .double(let d): return .double(abs(d))
            case .bool(let b): return .int(b ? 1 : 0)
            default: throw fail("bad operand type for abs(): '\(Runtime.typeName(v))'")
            }
        case "round":
            let precision = a.arg(0, "precision").flatMap(Runtime.intLike) ?? 0
            let method = a.arg(1, "method").flatMap { str($0) } ?? "common"
            guard let x = Runtime.number(v) else { throw fail("type \(Runtime.typeName(v)) doesn't define __round__ method") }
            let m = pow(10.0, Double(precision))
            let r: Double
            switch method {
            case "ceil": r = (x * m).rounded(.up) / m
            case "floor": r = (x * m).rounded(.down) / m
            case "common":
                // Python's round(): half to even; an int stays an int.
                if case .int(let i) = v, precision >= 0 { return .int(i) }
                if case .bool(let b) = v, precision >= 0 { return .int(b ? 1 : 0) }
                if precision == 0 {
                    r = x.rounded(.toNearestOrEven)
                } else if precision > 0, x.isFinite {
                    // Correctly rounded from the exact binary value, as Python's round() does.
                    r = Double(String(format: "%.\(min(precision, 300))f", x)) ?? x
                } else {
                    r = (x * m).rounded(.toNearestOrEven) / m
                }
            default: throw fail("method must be common, ceil or floor")
            }
            return .double(r)
        case "map":
            let items = try Runtime.iterate(v)
            if let attr = a.kw("attribute") {
                let def = a.kw("default")
                return .array(try items.map { x in
                    let r = try attribute(x, attr, it)
                    if r.isUndefined, let def { return def }
                    return r
                })
            }
            guard let fname = a.positional.first.flatMap({ str($0) }) else { throw fail("map requires a filter name or attribute=") }
            let rest = CallArgs(positional: Array(a.positional.dropFirst()), kwargs: a.kwargs)
            return .array(try items.map { try filter(fname, $0, rest, it) })
        case "select", "reject":
            let items = try Runtime.iterate(v)
            let keep = name == "select"
            guard let tname = a.positional.first.flatMap({ str($0) }) else {
                return .array(items.filter { Runtime.truthy($0) == keep })
            }
            let rest = CallArgs(positional: Array(a.positional.dropFirst()), kwargs: a.kwargs)
            return .array(try items.filter { try test(tname, $0, rest, it) == keep })
        case "selectattr", "rejectattr":
            let items = try Runtime.iterate(v)
            let keep = name == "selectattr"
            guard let attr = a.positional.first else { throw fail("\(name) requires an attribute name") }
            if a.positional.count < 2 {
                return .array(try items.filter { Runtime.truthy(try attribute($0, attr, it)) == keep })
            }
            guard let tname = str(a.positional[1]) else { throw fail("test name must be a string") }
            let rest = CallArgs(positional: Array(a.positional.dropFirst(2)), kwargs: a.kwargs)
            return .array(try items.filter { try test(tname, try attribute($0, attr, it), rest, it) == keep })
        case "unique":
            let cs = a.arg(0, "case_sensitive").map(Runtime.truthy) ?? false
            let attr = a.arg(1, "attribute")
            var seen: [V] = []
            var out: [V] = []
            for x in try Runtime.iterate(v) {
                let key = sortKey(try attribute(x, attr, it), caseSensitive: cs)
                if !seen.contains(where: { Runtime.eq($0, key) }) { seen.append(key); out.append(x) }
            }
            return .array(out)
        case "sort":
            let reverse = a.arg(0, "reverse").map(Runtime.truthy) ?? false
            let cs = a.arg(1, "case_sensitive").map(Runtime.truthy) ?? false
            let attr = a.arg(2, "attribute")
            let items = try Runtime.iterate(v)
            let keyed = try items.map { (sortKey(try attribute($0, attr, it), caseSensitive: cs), $0) }
            var err: Error? = nil
            let idx = Array(keyed.indices)
            let sorted = idx.sorted { i, j in
                do {
                    let c = try Runtime.compare(keyed[i].0, keyed[j].0, op: "<")
                    if c == 0 { return i < j }
                    return reverse ? c > 0 : c < 0
                } catch { err = error; return false }
            }
            if let err { throw err }
            return .array(sorted.map { keyed[$0].1 })
        case "dictsort":
            guard case .dict(let d) = v else { throw fail("You can only sort by either \"key\" or \"value\"") }
            let cs = a.arg(0, "case_sensitive").map(Runtime.truthy) ?? false
            let by = a.arg(1, "by").flatMap { str($0) } ?? "key"
            let reverse = a.arg(2, "reverse").map(Runtime.truthy) ?? false
            let pairs = d.keys.map { ($0.value, d.map[$0]!) }
            let sorted = try pairs.sorted { x, y in
                let kx = sortKey(by == "value" ? x.1 : x.0, caseSensitive: cs)
                let ky = sortKey(by == "value" ? y.1 : y.0, caseSensitive: cs)
                let c = try Runtime.compare(kx, ky, op: "<")
                return reverse ? c > 0 : c < 0
            }
            return .array(sorted.map { .array([$0.0, $0.1]) })
        case "reverse":
            if case .string(let s) = v { return .string(String(String.UnicodeScalarView(s.unicodeScalars.reversed()))) }
            return .array(try Runtime.iterate(v).reversed())
        case "indent":
            var width = "    "
            if let w = a.arg(0, "width") {
                if case .string(let s) = w { width = s } else if let n = Runtime.intLike(w) { width = String(repeating: " ", count: n) }
            }
            let first = a.arg(1, "first").map(Runtime.truthy) ?? false
            let blank = a.arg(2, "blank").map(Runtime.truthy) ?? false
            var s = Runtime.str(v)
            let newline = "\n"
            s += newline
            var lines = s.components(separatedBy: newline)
            // Python splitlines on s + "\n": the last (empty) element comes from the added newline.
            lines.removeLast()
            var out = ""
            if blank {
                out = lines.dropFirst().map { width + $0 }.joined(separator: newline)
            } else {
                out = lines.dropFirst().map { $0.isEmpty ? $0 : width + $0 }.joined(separator: newline)
            }
            var head = lines.first ?? ""
            if first { head = width + head }
            if lines.count > 1 { return .string(head + newline + out) }
            return .string(head)
        case "wordcount":
            var n = 0
            var inWord = false
            for u in Runtime.str(v).unicodeScalars {
                let w = u.properties.isAlphabetic || u.properties.numericType != nil || u == "_"
                if w && !inWord { n += 1 }
                inWord = w
            }
            return .int(n)
        case "batch":
            guard let count = a.arg(0, "linecount").flatMap(Runtime.intLike), count > 0 else { throw fail("batch needs a positive count") }
            let fill = a.arg(1, "fill_with")
            var out: [V] = []
            var cur: [V] = []
            for x in try Runtime.iterate(v) {
                cur.append(x)
                if cur.count == count { out.append(.array(cur)); cur = [] }
            }
            if !cur.isEmpty {
                if let fill, !(fill.isUndefined) { while cur.count < count { cur.append(fill) } }
                out.append(.array(cur))
            }
            return .array(out)
        case "sum":
            let attr = a.arg(0, "attribute")
            var total = a.arg(1, "start") ?? .int(0)
            for x in try Runtime.iterate(v) { total = try it.binary(.add, total, try attribute(x, attr, it)) }
            return total
        case "min", "max":
            let cs = a.arg(0, "case_sensitive").map(Runtime.truthy) ?? false
            let attr = a.arg(1, "attribute")
            let items = try Runtime.iterate(v)
            guard var best = items.first else { return .undefined(.hint("No aggregated item, sequence was empty.")) }
            for x in items.dropFirst() {
                let c = try Runtime.compare(sortKey(try attribute(x, attr, it), caseSensitive: cs),
                                            sortKey(try attribute(best, attr, it), caseSensitive: cs), op: "<")
                if name == "min" ? c < 0 : c > 0 { best = x }
            }
            return best
        case "center":
            let w = a.arg(0, "width").flatMap(Runtime.intLike) ?? 80
            return try stringMethod(Runtime.str(v), "center", CallArgs(positional: [.int(w)]), it) ?? v
        case "format":
            let s = Runtime.str(v)
            if !a.kwargs.isEmpty { return .string(try percentFormat(s, .dict({ var d = Dict(); for (k, x) in a.kwargs { d[k] = x }; return d }()))) }
            return .string(try percentFormat(s, .array(a.positional)))
        case "attr":
            guard let n = a.positional.first.flatMap({ str($0) }) else { throw fail("attr needs a name") }
            return try it.getattr(v, n)
        case "truncate":
            let s = Runtime.str(v)
            let length = a.arg(0, "length").flatMap(Runtime.intLike) ?? 255
            let killwords = a.arg(1, "killwords").map(Runtime.truthy) ?? false
            let end = a.arg(2, "end").map(Runtime.str) ?? "..."
            let leeway = a.arg(3, "leeway").flatMap(Runtime.intLike) ?? 5
            let sc = Array(s.unicodeScalars)
            if sc.count <= length + leeway { return .string(s) }
            let cut = max(0, length - end.unicodeScalars.count)
            var head = String(String.UnicodeScalarView(sc[0..<cut]))
            if !killwords, let sp = head.lastIndex(of: " ") { head = String(head[..<sp]) }
            return .string(head + end)
        case "striptags":
            var out = ""
            var inTag = false
            for c in Runtime.str(v) {
                if c == "<" { inTag = true } else if c == ">" && inTag { inTag = false } else if !inTag { out.append(c) }
            }
            return .string(split(out, nil, -1).joined(separator: " "))
        case "pprint":
            return .string(Runtime.repr(v))
        default:
            throw fail("No filter named '\(name)'.")
        }
    }

    static func checkJSONSerializable(_ v: V) throws {
        switch v {
        case .undefined: throw fail("Object of type Undefined is not JSON serializable")
        case .callable: throw fail("Object of type function is not JSON serializable")
        case .loop: throw fail("Object of type LoopContext is not JSON serializable")
        case .namespace: throw fail("Object of type Namespace is not JSON serializable")
        case .array(let a): for x in a { try checkJSONSerializable(x) }
        case .dict(let d): for x in d.map.values { try checkJSONSerializable(x) }
        default: break
        }
    }

    // MARK: - globals

    static func globals(_ it: Interpreter, now: @escaping @Sendable () -> Date) -> [String: V] {
        var g: [String: V] = [:]
        g["range"] = .callable(Callable("range") { a in
            let nums = try a.positional.map { v -> Int in
                guard let n = Runtime.intLike(v) else { throw fail("'\(Runtime.typeName(v))' object cannot be interpreted as an integer") }
                return n
            }
            var start = 0, stop = 0, step = 1
            switch nums.count {
            case 1: stop = nums[0]
            case 2: start = nums[0]; stop = nums[1]
            case 3: start = nums[0]; stop = nums[1]; step = nums[2]
            default: throw fail("range expected 1 to 3 arguments, got \(nums.count)")
            }
            if step == 0 { throw fail("range() arg 3 must not be zero") }
            var out: [V] = []
            var i = start
            if (step > 0 ? stop - start : start - stop) > 100_000 { throw fail("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).") }
            while step > 0 ? i < stop : i > stop { out.append(.int(i)); i += step }
            return .array(out)
        })
        g["namespace"] = .callable(Callable("namespace") { a in
            let ns = Namespace()
            for p in a.positional {
                if case .dict(let d) = p { for k in d.keys { ns.attrs[k] = d.map[k]! } }
            }
            for (k, v) in a.kwargs { ns.attrs[k] = v }
            return .namespace(ns)
        })
        g["dict"] = .callable(Callable("dict") { a in
            var d = Dict()
            for p in a.positional {
                if case .dict(let x) = p { for k in x.keys { d[k] = x.map[k]! } } else {
                    for pair in try Runtime.iterate(p) {
                        let kv = try Runtime.iterate(pair)
                        if kv.count == 2 { d[Runtime.str(kv[0])] = kv[1] }
                    }
                }
            }
            for (k, v) in a.kwargs { d[k] = v }
            return .dict(d)
        })
        g["raise_exception"] = .callable(Callable("raise_exception") { a in
            throw RaisedByTemplate(message: a.positional.first.map(Runtime.str) ?? a.kw("message").map(Runtime.str) ?? "")
        })
        g["strftime_now"] = .callable(Callable("strftime_now") { a in
            guard let f = a.positional.first.flatMap({ str($0) }) else { throw fail("strftime_now needs a format string") }
            return .string(strftime(f, now()))
        })
        g["cycler"] = .callable(Callable("cycler") { a in
            let items = a.positional
            let ns = Namespace()
            final class Box { var i = 0 }
            let box = Box()
            ns.attrs["next"] = .callable(Callable("next") { _ in
                guard !items.isEmpty else { return .none }
                defer { box.i = (box.i + 1) % items.count }
                return items[box.i]
            })
            ns.attrs["reset"] = .callable(Callable("reset") { _ in box.i = 0; return .none })
            return .namespace(ns)
        })
        g["joiner"] = .callable(Callable("joiner") { a in
            let sep = a.positional.first.map(Runtime.str) ?? ", "
            final class Box { var used = false }
            let box = Box()
            return .callable(Callable("joiner") { _ in
                if box.used { return .string(sep) }
                box.used = true
                return .string("")
            })
        })
        return g
    }

    static func strftime(_ format: String, _ date: Date) -> String {
        var t = time_t(date.timeIntervalSince1970)
        var tmv = tm()
        localtime_r(&t, &tmv)
        var buf = [Int8](repeating: 0, count: 512)
        let n = format.withCString { Foundation.strftime(&buf, buf.count, $0, &tmv) }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

struct RaisedByTemplate: Error {
    let message: String
}
