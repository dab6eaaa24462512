import Foundation

final class Scope {
    var vars: [String: V]
    let parent: Scope?
    init(parent: Scope?, vars: [String: V] = [:]) {
        self.parent = parent
        self.vars = vars
    }

    func lookup(_ name: String) -> V? {
        var s: Scope? = self
        while let c = s {
            if let v = c.vars[name] { return v }
            s = c.parent
        }
        return nil
    }
}

enum Flow { case normal, brk, cont }

/// Executes a parsed template.
final class Interpreter {
    var line = 0
    var callDepth = 0

    func fail(_ message: String) -> RuntimeFailure { RuntimeFailure(message: message) }

    // MARK: statements

    func exec(_ nodes: [Node], _ s: Scope, _ out: inout String) throws -> Flow {
        for node in nodes {
            switch node {
            case .text(let t):
                out += t
            case .output(let e, let ln):
                line = ln
                let v = try eval(e, s)
                switch v {
                case .string(let str): out += str
                case .undefined: break
                default: out += Runtime.str(v)
                }
            case .ifs(let branches, let otherwise, let ln):
                line = ln
                var done = false
                for (cond, body) in branches {
                    if Runtime.truthy(try eval(cond, s)) {
                        let f = try exec(body, s, &out)
                        if f != .normal { return f }
                        done = true
                        break
                    }
                }
                if !done, !otherwise.isEmpty {
                    let f = try exec(otherwise, s, &out)
                    if f != .normal { return f }
                }
            case .forLoop(let target, let iterExpr, let filter, let body, let otherwise, let recursive, let ln):
                line = ln
                let iterable = try eval(iterExpr, s)
                try runLoop(target: target, iterable: iterable, filter: filter, body: body, otherwise: otherwise,
                            recursive: recursive, depth: 1, scope: s, out: &out)
            case .set(let target, let e, let ln):
                line = ln
                try assign(target, try eval(e, s), s)
            case .setBlock(let target, let filters, let body, let ln):
                var buf = ""
                _ = try exec(body, Scope(parent: s), &buf)
                line = ln
                var v = V.string(buf)
                for (name, args) in filters { v = try applyFilter(name, v, try evalArgs(args, s)) }
                try assign(target, v, s)
            case .macro(let def, _):
                s.vars[def.name] = .callable(makeMacro(def, scope: s))
            case .callBlock(let callExpr, let params, let body, let ln):
                line = ln
                let caller = makeMacro(MacroDef(name: "caller", params: params, body: body), scope: s)
                guard case .call(let callee, let args) = callExpr else { break }
                let f = try eval(callee, s)
                var a = try evalArgs(args, s)
                a.kwargs.append(("caller", .callable(caller)))
                let v = try callValue(f, a)
                out += Runtime.str(v)
            case .filterBlock(let filters, let body, let ln):
                var buf = ""
                _ = try exec(body, s, &buf)
                line = ln
                var v = V.string(buf)
                for (name, args) in filters { v = try applyFilter(name, v, try evalArgs(args, s)) }
                out += Runtime.str(v)
            case .with(let assigns, let body, let ln):
                line = ln
                let inner = Scope(parent: s)
                for (t, e) in assigns { try assign(t, try eval(e, s), inner) }
                let f = try exec(body, inner, &out)
                if f != .normal { return f }
            case .breakLoop:
                return .brk
            case .continueLoop:
                return .cont
            case .generation(let body):
                let f = try exec(body, s, &out)
                if f != .normal { return f }
            }
        }
        return .normal
    }

    func runLoop(target: Target, iterable: V, filter: Expr?, body: [Node], otherwise: [Node], recursive: Bool,
                 depth: Int, scope s: Scope, out: inout String) throws {
        var items = try Runtime.iterate(iterable)
        if let filter {
            items = try items.filter { item in
                let fs = Scope(parent: s)
                try assign(target, item, fs)
                return Runtime.truthy(try eval(filter, fs))
            }
        }
        if items.isEmpty {
            _ = try exec(otherwise, s, &out)
            return
        }
        let state = LoopState(items: items, depth: depth)
        if recursive {
            state.recurse = { [unowned self] v in
                var buf = ""
                try self.runLoop(target: target, iterable: v, filter: filter, body: body, otherwise: [],
                                 recursive: true, depth: depth + 1, scope: s, out: &buf)
                return .string(buf)
            }
        }
        let loopValue = V.loop(state)
        for (k, item) in items.enumerated() {
            state.index = k
            let inner = Scope(parent: s)
            inner.vars["loop"] = loopValue
            try assign(target, item, inner)
            let f = try exec(body, inner, &out)
            if f == .brk { break }
        }
    }

    func assign(_ target: Target, _ v: V, _ s: Scope) throws {
        switch target {
        case .name(let n):
            s.vars[n] = v
        case .tuple(let ts):
            let items = try Runtime.iterate(v)
            guard items.count == ts.count else {
                if items.count > ts.count { throw fail("too many values to unpack (expected \(ts.count))") }
                throw fail("not enough values to unpack (expected \(ts.count), got \(items.count))")
            }
            for (t, x) in zip(ts, items) { try assign(t, x, s) }
        case .attr(let objExpr, let attr):
            let obj = try eval(objExpr, s)
            guard case .namespace(let ns) = obj else {
                throw fail("cannot assign attribute on non-namespace object")
            }
            ns.attrs[attr] = v
        }
    }

    func makeMacro(_ def: MacroDef, scope defScope: Scope) -> Callable {
        Callable(def.name) { [unowned self] args in
            let s = Scope(parent: defScope)
            var extra: [V] = []
            for (k, a) in args.positional.enumerated() {
                if k < def.params.count { s.vars[def.params[k].0] = a } else { extra.append(a) }
            }
            var extraKw = Dict()
            for (k, a) in args.kwargs {
                if k == "caller" { s.vars["caller"] = a; continue }
                if def.params.contains(where: { $0.0 == k }) { s.vars[k] = a } else { extraKw[k] = a }
            }
            for (p, def) in def.params where s.vars[p] == nil {
                if let def { s.vars[p] = try self.eval(def, s) } else { s.vars[p] = .undefined(.hint("parameter '\(p)' was not provided")) }
            }
            s.vars["varargs"] = .array(extra)
            s.vars["kwargs"] = .dict(extraKw)
            self.callDepth += 1
            defer { self.callDepth -= 1 }
            if self.callDepth > 200 { throw RuntimeFailure(message: "maximum recursion depth exceeded in macro '\(def.name)'") }
            var buf = ""
            let saved = self.line
            _ = try self.exec(def.body, s, &buf)
            self.line = saved
            return .string(buf)
        }
    }

    // MARK: expressions

    func evalArgs(_ args: [Arg], _ s: Scope) throws -> CallArgs {
        var out = CallArgs()
        for a in args {
            let v = try eval(a.value, s)
            if a.star == 1 {
                out.positional.append(contentsOf: try Runtime.iterate(v))
            } else if a.star == 2 {
                if case .dict(let d) = v { for k in d.keys { out.kwargs.append((k.text, d.map[k]!)) } }
            } else if let n = a.name {
                out.kwargs.append((n, v))
            } else {
                out.positional.append(v)
            }
        }
        return out
    }

    func eval(_ e: Expr, _ s: Scope) throws -> V {
        switch e {
        case .literal(let v):
            return v
        case .name(let n):
            if let v = s.lookup(n) { return v }
            return .undefined(.name(n))
        case .getattr(let objExpr, let name):
            return try getattr(try eval(objExpr, s), name)
        case .getitem(let objExpr, let keyExpr):
            return try getitem(try eval(objExpr, s), try eval(keyExpr, s))
        case .slice(let objExpr, let a, let b, let c):
            let obj = try eval(objExpr, s)
            return try slice(obj, a.map { try eval($0, s) }, b.map { try eval($0, s) }, c.map { try eval($0, s) })
        case .call(let callee, let args):
            if case .getattr(let objExpr, let name) = callee {
                let obj = try eval(objExpr, s)
                let a = try evalArgs(args, s)
                if let r = try Builtins.callMethod(obj, name, a, self) { return r }
                return try callValue(try getattr(obj, name), a)
            }
            let f = try eval(callee, s)
            return try callValue(f, try evalArgs(args, s))
        case .filter(let inner, let name, let args):
            return try applyFilter(name, try eval(inner, s), try evalArgs(args, s))
        case .test(let inner, let name, let args, let negated):
            let r = try Builtins.test(name, try eval(inner, s), try evalArgs(args, s), self)
            return .bool(negated ? !r : r)
        case .not(let x):
            return .bool(!Runtime.truthy(try eval(x, s)))
        case .neg(let x):
            let v = try eval(x, s)
            switch v {
            case .int(let i): return .int(-i)
            case .double(let d): return .double(-d)
            case .bool(let b): return .int(b ? -1 : 0)
            case .undefined(let u): throw fail(u.message)
            default: throw fail("bad operand type for unary -: '\(Runtime.typeName(v))'")
            }
        case .pos(let x):
            let v = try eval(x, s)
            switch v {
            case .int, .double: return v
            case .bool(let b): return .int(b ? 1 : 0)
            case .undefined(let u): throw fail(u.message)
            default: throw fail("bad operand type for unary +: '\(Runtime.typeName(v))'")
            }
        case .and(let a, let b):
            let x = try eval(a, s)
            return Runtime.truthy(x) ? try eval(b, s) : x
        case .or(let a, let b):
            let x = try eval(a, s)
            return Runtime.truthy(x) ? x : try eval(b, s)
        case .binary(let op, let a, let b):
            return try binary(op, try eval(a, s), try eval(b, s))
        case .compare(let first, let ops):
            var left = try eval(first, s)
            for (op, rexpr) in ops {
                let right = try eval(rexpr, s)
                let ok: Bool
                switch op {
                case .eq: ok = Runtime.eq(left, right)
                case .ne: ok = !Runtime.eq(left, right)
                case .lt: ok = try Runtime.compare(left, right, op: "<") < 0
                case .le: ok = try Runtime.compare(left, right, op: "<=") <= 0
                case .gt: ok = try Runtime.compare(left, right, op: ">") > 0
                case .ge: ok = try Runtime.compare(left, right, op: ">=") >= 0
                case .in: ok = try Runtime.contains(right, left)
                case .notIn: ok = try !Runtime.contains(right, left)
                }
                if !ok { return .bool(false) }
                left = right
            }
            return .bool(true)
        case .cond(let then, let test, let otherwise):
            if Runtime.truthy(try eval(test, s)) { return try eval(then, s) }
            if let otherwise { return try eval(otherwise, s) }
            return .undefined(.hint("the inline if-expression on line \(line) evaluated to false and no else section was defined."))
        case .list(let items):
            return .array(try items.map { try eval($0, s) })
        case .tuple(let items):
            return .array(try items.map { try eval($0, s) })
        case .dict(let pairs):
            var d = Dict(minimumCapacity: pairs.count)
            for (k, v) in pairs {
                let key = try eval(k, s)
                d[DictKey(key)] = try eval(v, s)
            }
            return .dict(d)
        }
    }

    func callValue(_ f: V, _ args: CallArgs) throws -> V {
        switch f {
        case .callable(let c):
            return try c.fn(args)
        case .loop(let l):
            guard let r = l.recurse else { throw fail("Tried to call non recursive loop. Maybe you forgot the 'recursive' modifier.") }
            guard let first = args.positional.first else { throw fail("loop() takes one argument") }
            return try r(first)
        case .undefined(let u):
            throw fail(u.message)
        default:
            throw fail("'\(Runtime.typeName(f))' object is not callable")
        }
    }

    func applyFilter(_ name: String, _ v: V, _ args: CallArgs) throws -> V {
        try Builtins.filter(name, v, args, self)
    }

    // MARK: attribute / item access

    func getattr(_ obj: V, _ name: String) throws -> V {
        switch obj {
        case .dict(let d):
            if Builtins.dictMethods.contains(name) { return .callable(Builtins.boundMethod(obj, name, self)) }
            if let v = d[name] { return v }
            if name.hasPrefix("_") || Builtins.unsafeDictMethods.contains(name) {
                return .undefined(.hint("access to attribute '\(name)' of 'dict' object is unsafe."))
            }
            return .undefined(.attr(owner: "'dict object'", name: name))
        case .namespace(let n):
            if let v = n.attrs[name] { return v }
            return .undefined(.attr(owner: Runtime.ownerRepr(obj), name: name))
        case .loop(let l):
            return try Builtins.loopAttr(l, name, self)
        case .undefined(let u):
            throw fail(u.message)
        case .string:
            if Builtins.stringMethods.contains(name) { return .callable(Builtins.boundMethod(obj, name, self)) }
            return .undefined(.attr(owner: "'str object'", name: name))
        case .array:
            if Builtins.listMethods.contains(name) { return .callable(Builtins.boundMethod(obj, name, self)) }
            if Builtins.unsafeListMethods.contains(name) {
                return .undefined(.hint("access to attribute '\(name)' of 'list' object is unsafe."))
            }
            return .undefined(.attr(owner: "'list object'", name: name))
        default:
            return .undefined(.attr(owner: Runtime.ownerRepr(obj), name: name))
        }
    }

    func getitem(_ obj: V, _ key: V) throws -> V {
        switch obj {
        case .array(let a):
            if let i = Runtime.intLike(key) {
                let j = i < 0 ? i + a.count : i
                if j >= 0 && j < a.count { return a[j] }
                return .undefined(.element(owner: "list object", index: String(i)))
            }
            if case .string(let k) = key { return try getattr(obj, k) }
            if case .undefined(let u) = key { throw fail(u.message) }
            throw fail("list indices must be integers or slices, not \(Runtime.typeName(key))")
        case .dict(let d):
            if case .string(let k) = key {
                if let v = d[k] { return v }
                if Builtins.dictMethods.contains(k) { return .callable(Builtins.boundMethod(obj, k, self)) }
                return .undefined(.attr(owner: "'dict object'", name: k))
            }
            if let i = Runtime.intLike(key) {
                if let v = d[DictKey.int(i)] { return v }
                return .undefined(.element(owner: "dict object", index: String(i)))
            }
            if case .undefined = key { return .undefined(.element(owner: "dict object", index: "Undefined")) }
            return .undefined(.element(owner: "dict object", index: Runtime.repr(key)))
        case .string(let s):
            if let i = Runtime.intLike(key) {
                let scalars = Array(s.unicodeScalars)
                let j = i < 0 ? i + scalars.count : i
                if j >= 0 && j < scalars.count { return .string(String(scalars[j])) }
                return .undefined(.element(owner: "str object", index: String(i)))
            }
            if case .string(let k) = key { return try getattr(obj, k) }
            throw fail("string indices must be integers, not '\(Runtime.typeName(key))'")
        case .namespace, .loop:
            if case .string(let k) = key { return try getattr(obj, k) }
            return .undefined(.element(owner: Runtime.ownerReprPlain(obj), index: Runtime.repr(key)))
        case .undefined(let u):
            throw fail(u.message)
        default:
            if case .string(let k) = key { return .undefined(.attr(owner: Runtime.ownerRepr(obj), name: k)) }
            return .undefined(.element(owner: Runtime.ownerReprPlain(obj), index: Runtime.repr(key)))
        }
    }

    func sliceIndices(count n: Int, _ a: V?, _ b: V?, _ c: V?) throws -> [Int] {
        func toInt(_ v: V?) throws -> Int? {
            guard let v else { return nil }
            switch v {
            case .none: return nil
            case .int(let i): return i
            case .bool(let b): return b ? 1 : 0
            default: throw fail("slice indices must be integers or None")
            }
        }
        let step = try toInt(c) ?? 1
        if step == 0 { throw fail("slice step cannot be zero") }
        var start = try toInt(a)
        var stop = try toInt(b)
        var out: [Int] = []
        if step > 0 {
            var s0 = start ?? 0
            var e0 = stop ?? n
            if s0 < 0 { s0 = max(0, s0 + n) }
            if e0 < 0 { e0 = max(0, e0 + n) }
            s0 = min(s0, n); e0 = min(e0, n)
            var i = s0
            while i < e0 { out.append(i); i += step }
        } else {
            if let s = start { start = s < 0 ? s + n : min(s, n - 1) } else { start = n - 1 }
            if let e = stop { stop = e < 0 ? e + n : e } else { stop = -1 }
            var i = start!
            let e0 = max(stop!, -1)
            if i >= n { i = n - 1 }
            while i > e0 { if i >= 0 { out.append(i) }; i += step }
        }
        return out
    }

    func slice(_ obj: V, _ a: V?, _ b: V?, _ c: V?) throws -> V {
        switch obj {
        case .array(let arr):
            return .array(try sliceIndices(count: arr.count, a, b, c).map { arr[$0] })
        case .string(let s):
            let sc = Array(s.unicodeScalars)
            var out = String.UnicodeScalarView()
            for i in try sliceIndices(count: sc.count, a, b, c) { out.append(sc[i]) }
            return .string(String(out))
        case .undefined(let u):
            throw fail(u.message)
        default:
            throw fail("'\(Runtime.typeName(obj))' object is not subscriptable")
        }
    }

    // MARK: operators

    func binary(_ op: BinOp, _ a: V, _ b: V) throws -> V {
        if op == .concat { return .string(Runtime.str(a) + Runtime.str(b)) }
        if case .undefined(let u) = a { throw fail(u.message) }
        if case .undefined(let u) = b { throw fail(u.message) }
        let sym: String
        switch op {
        case .add: sym = "+"
        case .sub: sym = "-"
        case .mul: sym = "*"
        case .div: sym = "/"
        case .floordiv: sym = "//"
        case .mod: sym = "%"
        case .pow: sym = "**"
        case .concat: sym = "~"
        }
        func typeError() -> RuntimeFailure {
            fail("unsupported operand type(s) for \(sym): '\(Runtime.typeName(a))' and '\(Runtime.typeName(b))'")
        }
        switch op {
        case .add:
            switch (a, b) {
            case (.string(let x), .string(let y)): return .string(x + y)
            case (.array(let x), .array(let y)): return .array(x + y)
            case (.string, _): throw fail("can only concatenate str (not \"\(Runtime.typeName(b))\") to str")
            case (.array, _): throw fail("can only concatenate list (not \"\(Runtime.typeName(b))\") to list")
            default: break
            }
        case .mul:
            if case .string(let x) = a, let n = Runtime.intLike(b) { return .string(String(repeating: x, count: max(0, n))) }
            if case .string(let x) = b, let n = Runtime.intLike(a) { return .string(String(repeating: x, count: max(0, n))) }
            if case .array(let x) = a, let n = Runtime.intLike(b) { return .array(Array([[V]](repeating: x, count: max(0, n)).joined())) }
        case .mod:
            if case .string(let fmt) = a { return .string(try Builtins.percentFormat(fmt, b)) }
        default: break
        }
        if let x = Runtime.intLike(a), let y = Runtime.intLike(b) {
            switch op {
            case .add: return .int(x &+ y)
            case .sub: return .int(x &- y)
            case .mul: return .int(x &* y)
            case .div:
                if y == 0 { throw fail("division by zero") }
                return .double(Double(x) / Double(y))
            case .floordiv:
                if y == 0 { throw fail("integer division or modulo by zero") }
                var q = x / y
                if (x % y != 0) && ((x < 0) != (y < 0)) { q -= 1 }
                return .int(q)
            case .mod:
                if y == 0 { throw fail("integer division or modulo by zero") }
                var r = x % y
                if r != 0 && ((r < 0) != (y < 0)) { r += y }
                return .int(r)
            case .pow:
                if y < 0 { return .double(pow(Double(x), Double(y))) }
                var r = 1
                for _ in 0..<y { r = r &* x }
                return .int(r)
            case .concat: break
            }
        }
        if let x = Runtime.number(a), let y = Runtime.number(b) {
            switch op {
            case .add: return .double(x + y)
            case .sub: return .double(x - y)
            case .mul: return .double(x * y)
            case .div:
                if y == 0 { throw fail("float division by zero") }
                return .double(x / y)
            case .floordiv:
                if y == 0 { throw fail("float floor division by zero") }
                return .double((x / y).rounded(.down))
            case .mod:
                if y == 0 { throw fail("float modulo") }
                var r = fmod(x, y)
                if r != 0 && ((r < 0) != (y < 0)) { r += y }
                return .double(r)
            case .pow: return .double(pow(x, y))
            case .concat: break
            }
        }
        throw typeError()
    }
}
