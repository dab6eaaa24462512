/// Recursive-descent parser following jinja2's grammar and operator precedence.
struct Parser {
    var toks: [Token]
    var i = 0
    let lexer: Lexer
    let lineStarts: [Int]

    init(source: String) throws {
        var lx = Lexer(source)
        toks = try lx.tokenize()
        lexer = lx
        var starts = [0]
        for (k, c) in lx.src.enumerated() where c == 0x0A { starts.append(k + 1) }
        lineStarts = starts
    }

    func line(of offset: Int) -> Int {
        var lo = 0, hi = lineStarts.count - 1
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if lineStarts[mid] <= offset { lo = mid } else { hi = mid - 1 }
        }
        return lo + 1
    }

    var cur: Token { toks[i] }
    func peek(_ k: Int = 1) -> Token { toks[min(i + k, toks.count - 1)] }
    mutating func advance() { if i < toks.count - 1 { i += 1 } }

    func fail(_ message: String, _ tok: Token? = nil) -> ChatTemplateError {
        lexer.error(message, at: (tok ?? cur).offset)
    }

    func describe(_ t: Token) -> String {
        switch t.kind {
        case .eof: return "end of template"
        case .varEnd: return "end of print statement '}}'"
        case .blockEnd: return "end of statement block '%}'"
        case .varBegin: return "'{{'"
        case .blockBegin: return "'{%'"
        case .data: return "template data"
        case .string: return "string"
        case .int, .float: return "number '\(t.text)'"
        case .name: return "'\(t.text)'"
        case .op: return "'\(t.text)'"
        }
    }

    func isOp(_ s: String) -> Bool { cur.kind == .op && cur.text == s }
    func isName(_ s: String) -> Bool { cur.kind == .name && cur.text == s }

    mutating func expectOp(_ s: String) throws {
        guard isOp(s) else { throw fail("expected '\(s)', got \(describe(cur))") }
        advance()
    }

    mutating func expectName() throws -> String {
        guard cur.kind == .name else { throw fail("expected a name, got \(describe(cur))") }
        let t = cur.text
        advance()
        return t
    }

    mutating func expectBlockEnd() throws {
        guard cur.kind == .blockEnd else { throw fail("expected end of statement block '%}', got \(describe(cur))") }
        advance()
    }

    // MARK: - Statements

    mutating func parseTemplate() throws -> [Node] {
        let (nodes, _) = try parseNodes(until: [])
        return nodes
    }

    /// Parses nodes until a block tag named in `endTags`; returns the nodes and that tag's name (the cursor is
    /// then just after the tag's name).
    mutating func parseNodes(until endTags: Set<String>, opener: (String, Token)? = nil) throws -> ([Node], String?) {
        var nodes: [Node] = []
        while true {
            let tok = cur
            switch tok.kind {
            case .data:
                nodes.append(.text(tok.text))
                advance()
            case .varBegin:
                advance()
                let e = try parseTuple()
                guard cur.kind == .varEnd else { throw fail("expected end of print statement '}}', got \(describe(cur))") }
                advance()
                nodes.append(.output(e, line: line(of: tok.offset)))
            case .blockBegin:
                advance()
                guard cur.kind == .name else { throw fail("expected a tag name, got \(describe(cur))") }
                let name = cur.text
                if endTags.contains(name) {
                    advance()
                    return (nodes, name)
                }
                nodes.append(try parseStatement(begin: tok))
            case .eof:
                if endTags.isEmpty { return (nodes, nil) }
                let expected = endTags.sorted().map { "'\($0)'" }.joined(separator: " or ")
                if let (tag, t) = opener {
                    throw fail("unexpected end of template: the '\(tag)' tag opened here was never closed (expected \(expected))", t)
                }
                throw fail("unexpected end of template, expected \(expected)")
            default:
                throw fail("unexpected \(describe(tok))")
            }
        }
    }

    mutating func parseStatement(begin: Token) throws -> Node {
        let nameTok = cur
        let name = cur.text
        let ln = line(of: begin.offset)
        advance()
        switch name {
        case "for":
            let target = try parseAssignTarget(extraEnd: ["in"])
            guard isName("in") else { throw fail("expected 'in', got \(describe(cur))") }
            advance()
            let iter = try parseTuple(withCondexpr: false, extraEnd: ["recursive"])
            var filter: Expr? = nil
            if isName("if") {
                advance()
                filter = try parseExpression()
            }
            var recursive = false
            if isName("recursive") { recursive = true; advance() }
            try expectBlockEnd()
            let (body, tag) = try parseNodes(until: ["endfor", "else"], opener: ("for", nameTok))
            var otherwise: [Node] = []
            if tag == "else" {
                try expectBlockEnd()
                (otherwise, _) = try parseNodes(until: ["endfor"], opener: ("for", nameTok))
            }
            try expectBlockEnd()
            return .forLoop(target: target, iter: iter, filter: filter, body: body, otherwise: otherwise,
                            recursive: recursive, line: ln)
        case "if":
            var branches: [(Expr, [Node])] = []
            var cond = try parseTuple(withCondexpr: false)
            var otherwise: [Node] = []
            while true {
                try expectBlockEnd()
                let (body, tag) = try parseNodes(until: ["elif", "else", "endif"], opener: ("if", nameTok))
                branches.append((cond, body))
                if tag == "elif" {
                    cond = try parseTuple(withCondexpr: false)
                    continue
                }
                if tag == "else" {
                    try expectBlockEnd()
                    (otherwise, _) = try parseNodes(until: ["endif"], opener: ("if", nameTok))
                }
                try expectBlockEnd()
                break
            }
            return .ifs(branches, otherwise: otherwise, line: ln)
        case "set":
            let target = try parseAssignTarget(withNamespace: true)
            if isOp("=") {
                advance()
                let e = try parseTuple()
                try expectBlockEnd()
                return .set(target, e, line: ln)
            }
            let filters = try parseFilterChain()
            try expectBlockEnd()
            let (body, _) = try parseNodes(until: ["endset"], opener: ("set", nameTok))
            try expectBlockEnd()
            return .setBlock(target, filters: filters, body: body, line: ln)
        case "macro":
            let mname = try expectName()
            let params = try parseSignature()
            try expectBlockEnd()
            let (body, _) = try parseNodes(until: ["endmacro"], opener: ("macro", nameTok))
            if cur.kind == .name { advance() }  // {% endmacro name %}
            try expectBlockEnd()
            return .macro(MacroDef(name: mname, params: params, body: body), line: ln)
        case "call":
            var params: [(String, Expr?)] = []
            if isOp("(") { params = try parseSignature() }
            let call = try parseExpression()
            guard case .call = call else { throw fail("expected a call expression after 'call'", nameTok) }
            try expectBlockEnd()
            let (body, _) = try parseNodes(until: ["endcall"], opener: ("call", nameTok))
            try expectBlockEnd()
            return .callBlock(call: call, callerParams: params, body: body, line: ln)
        case "filter":
            var filters: [(String, [Arg])] = []
            filters.append(try parseFilterCall())
            filters.append(contentsOf: try parseFilterChain())
            try expectBlockEnd()
            let (body, _) = try parseNodes(until: ["endfilter"], opener: ("filter", nameTok))
            try expectBlockEnd()
            return .filterBlock(filters: filters, body: body, line: ln)
        case "with":
            var assigns: [(Target, Expr)] = []
            while cur.kind != .blockEnd {
                if !assigns.isEmpty { try expectOp(",") }
                let t = try parseAssignTarget()
                try expectOp("=")
                assigns.append((t, try parseExpression()))
            }
            try expectBlockEnd()
            let (body, _) = try parseNodes(until: ["endwith"], opener: ("with", nameTok))
            try expectBlockEnd()
            return .with(assignments: assigns, body: body, line: ln)
        case "break":
            try expectBlockEnd()
            return .breakLoop(line: ln)
        case "continue":
            try expectBlockEnd()
            return .continueLoop(line: ln)
        case "generation":
            // transformers' AssistantTracker extension: renders its body unchanged.
            try expectBlockEnd()
            let (body, _) = try parseNodes(until: ["endgeneration"], opener: ("generation", nameTok))
            try expectBlockEnd()
            return .generation(body: body)
        case "include", "extends", "import", "from", "block":
            throw fail("the '\(name)' tag is not supported: chat templates are rendered without a template loader", nameTok)
        case "endfor", "endif", "endset", "endmacro", "endcall", "endfilter", "endwith", "endgeneration", "else", "elif":
            throw fail("unexpected '\(name)': no open block expects it here", nameTok)
        default:
            throw fail("unknown tag '\(name)'", nameTok)
        }
    }

    mutating func parseSignature() throws -> [(String, Expr?)] {
        try expectOp("(")
        var params: [(String, Expr?)] = []
        while !isOp(")") {
            if !params.isEmpty { try expectOp(",") }
            if isOp(")") { break }
            let p = try expectName()
            var def: Expr? = nil
            if isOp("=") { advance(); def = try parseExpression() }
            params.append((p, def))
        }
        advance()
        return params
    }

    mutating func parseFilterChain() throws -> [(String, [Arg])] {
        var out: [(String, [Arg])] = []
        while isOp("|") {
            advance()
            out.append(try parseFilterCall())
        }
        return out
    }

    mutating func parseFilterCall() throws -> (String, [Arg]) {
        let nameTok = cur
        var name = try expectName()
        while isOp("."), peek().kind == .name { advance(); name += "." + cur.text; advance() }
        if !Builtins.filterNames.contains(name) { throw fail("No filter named '\(name)'.", nameTok) }
        var args: [Arg] = []
        if isOp("(") { args = try parseCallArgs() }
        return (name, args)
    }

    mutating func parseAssignTarget(withNamespace: Bool = false, extraEnd: Set<String> = []) throws -> Target {
        if withNamespace, cur.kind == .name, peek().kind == .op, peek().text == ".", peek(2).kind == .name {
            let ns = cur.text
            advance(); advance()
            let attr = cur.text
            advance()
            return .attr(.name(ns), attr)
        }
        var items: [Target] = []
        var isTuple = false
        while true {
            if !items.isEmpty { try expectOp(",") }
            if cur.kind == .blockEnd || isOp(")") || isOp("=") || (cur.kind == .name && extraEnd.contains(cur.text)) {
                break
            }
            if isOp("(") {
                advance()
                items.append(try parseAssignTarget(extraEnd: extraEnd))
                try expectOp(")")
            } else {
                guard cur.kind == .name else { throw fail("expected a name to assign to, got \(describe(cur))") }
                let n = cur.text
                if ["true", "false", "none", "True", "False", "None"].contains(n) {
                    throw fail("can't assign to '\(n)'")
                }
                items.append(.name(n))
                advance()
            }
            if isOp(",") { isTuple = true } else { break }
        }
        if items.isEmpty { throw fail("expected an assignment target, got \(describe(cur))") }
        return isTuple ? .tuple(items) : items[0]
    }

    // MARK: - Expressions

    func isTupleEnd(_ extraEnd: Set<String>) -> Bool {
        switch cur.kind {
        case .varEnd, .blockEnd, .eof: return true
        case .op: return cur.text == ")"
        case .name: return extraEnd.contains(cur.text)
        default: return false
        }
    }

    mutating func parseTuple(withCondexpr: Bool = true, extraEnd: Set<String> = [], explicitParens: Bool = false) throws -> Expr {
        var args: [Expr] = []
        var isTuple = false
        while true {
            if !args.isEmpty { try expectOp(",") }
            if isTupleEnd(extraEnd) { break }
            args.append(withCondexpr ? try parseExpression() : try parseOr())
            if isOp(",") { isTuple = true } else { break }
        }
        if !isTuple {
            if let a = args.first { return a }
            if !explicitParens { throw fail("expected an expression, got \(describe(cur))") }
        }
        return .tuple(args)
    }

    mutating func parseExpression() throws -> Expr {
        var e = try parseOr()
        while isName("if") {
            advance()
            let test = try parseOr()
            var other: Expr? = nil
            if isName("else") {
                advance()
                other = try parseExpression()
            }
            e = .cond(then: e, test: test, otherwise: other)
        }
        return e
    }

    mutating func parseOr() throws -> Expr {
        var e = try parseAnd()
        while isName("or") { advance(); e = .or(e, try parseAnd()) }
        return e
    }

    mutating func parseAnd() throws -> Expr {
        var e = try parseNot()
        while isName("and") { advance(); e = .and(e, try parseNot()) }
        return e
    }

    mutating func parseNot() throws -> Expr {
        if isName("not") { advance(); return .not(try parseNot()) }
        return try parseCompare()
    }

    mutating func parseCompare() throws -> Expr {
        let first = try parseMath1()
        var ops: [(CmpOp, Expr)] = []
        while true {
            if cur.kind == .op {
                let op: CmpOp?
                switch cur.text {
                case "==": op = .eq
                case "!=": op = .ne
                case "<": op = .lt
                case "<=": op = .le
                case ">": op = .gt
                case ">=": op = .ge
                default: op = nil
                }
                if let op { advance(); ops.append((op, try parseMath1())); continue }
            }
            if isName("in") { advance(); ops.append((.in, try parseMath1())); continue }
            if isName("not"), peek().kind == .name, peek().text == "in" {
                advance(); advance()
                ops.append((.notIn, try parseMath1()))
                continue
            }
            break
        }
        return ops.isEmpty ? first : .compare(first, ops)
    }

    mutating func parseMath1() throws -> Expr {
        var e = try parseConcat()
        while cur.kind == .op, cur.text == "+" || cur.text == "-" {
            let op: BinOp = cur.text == "+" ? .add : .sub
            advance()
            e = .binary(op, e, try parseConcat())
        }
        return e
    }

    mutating func parseConcat() throws -> Expr {
        var e = try parseMath2()
        while isOp("~") { advance(); e = .binary(.concat, e, try parseMath2()) }
        return e
    }

    mutating func parseMath2() throws -> Expr {
        var e = try parsePow()
        while cur.kind == .op {
            let op: BinOp
            switch cur.text {
            case "*": op = .mul
            case "/": op = .div
            case "//": op = .floordiv
            case "%": op = .mod
            default: return e
            }
            advance()
            e = .binary(op, e, try parsePow())
        }
        return e
    }

    mutating func parsePow() throws -> Expr {
        var e = try parseUnary()
        while isOp("**") { advance(); e = .binary(.pow, e, try parseUnary()) }
        return e
    }

    mutating func parseUnary(withFilter: Bool = true) throws -> Expr {
        var e: Expr
        if isOp("-") {
            advance(); e = .neg(try parseUnary(withFilter: false))
        } else if isOp("+") {
            advance(); e = .pos(try parseUnary(withFilter: false))
        } else {
            e = try parsePrimary()
        }
        e = try parsePostfix(e)
        if withFilter { e = try parseFilterExpr(e) }
        return e
    }

    mutating func parsePrimary() throws -> Expr {
        let t = cur
        switch t.kind {
        case .name:
            advance()
            switch t.text {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .name(t.text)
            }
        case .string:
            var s = t.text
            advance()
            while cur.kind == .string { s += cur.text; advance() }
            return .literal(.string(s))
        case .int:
            advance()
            guard let v = Int(t.text) else { throw fail("integer literal too large", t) }
            return .literal(.int(v))
        case .float:
            advance()
            return .literal(.double(Double(t.text) ?? 0))
        case .op:
            switch t.text {
            case "(":
                advance()
                let e = try parseTuple(explicitParens: true)
                try expectOp(")")
                return e
            case "[":
                advance()
                var items: [Expr] = []
                while !isOp("]") {
                    if !items.isEmpty { try expectOp(",") }
                    if isOp("]") { break }
                    items.append(try parseExpression())
                }
                advance()
                return .list(items)
            case "{":
                advance()
                var items: [(Expr, Expr)] = []
                while !isOp("}") {
                    if !items.isEmpty { try expectOp(",") }
                    if isOp("}") { break }
                    let k = try parseExpression()
                    try expectOp(":")
                    items.append((k, try parseExpression()))
                }
                advance()
                return .dict(items)
            default: break
            }
        default: break
        }
        throw fail("unexpected \(describe(t))")
    }

    mutating func parsePostfix(_ start: Expr) throws -> Expr {
        var e = start
        while true {
            if isOp(".") {
                advance()
                if cur.kind == .name {
                    e = .getattr(e, cur.text); advance()
                } else if cur.kind == .int, let v = Int(cur.text) {
                    e = .getitem(e, .literal(.int(v))); advance()
                } else {
                    throw fail("expected an attribute name after '.', got \(describe(cur))")
                }
            } else if isOp("[") {
                advance()
                var subs: [Expr] = []
                while !isOp("]") {
                    if !subs.isEmpty { try expectOp(","); if isOp("]") { break } }
                    subs.append(try parseSubscribed())
                }
                advance()
                if subs.isEmpty { throw fail("expected a subscript") }
                if subs.count == 1, case .slice(_, let a, let b, let c) = subs[0] {
                    e = .slice(e, a, b, c)
                } else if subs.count == 1 {
                    e = .getitem(e, subs[0])
                } else {
                    e = .getitem(e, .tuple(subs))
                }
            } else if isOp("(") {
                e = .call(e, try parseCallArgs())
            } else {
                return e
            }
        }
    }

    /// One subscript: an expression or a slice (returned as `.slice(.literal(.none), start, stop, step)`).
    mutating func parseSubscribed() throws -> Expr {
        var parts: [Expr?] = []
        if isOp(":") {
            advance()
            parts = [nil]
        } else {
            let e = try parseExpression()
            if !isOp(":") { return e }
            advance()
            parts = [e]
        }
        if isOp("]") || isOp(",") {
            parts.append(nil)
        } else if isOp(":") {
            parts.append(nil)
        } else {
            parts.append(try parseExpression())
        }
        if isOp(":") {
            advance()
            if isOp("]") || isOp(",") { parts.append(nil) } else { parts.append(try parseExpression()) }
        } else {
            parts.append(nil)
        }
        return .slice(.literal(.none), parts[0], parts[1], parts[2])
    }

    mutating func parseCallArgs() throws -> [Arg] {
        try expectOp("(")
        var args: [Arg] = []
        while !isOp(")") {
            if !args.isEmpty { try expectOp(","); if isOp(")") { break } }
            if isOp("*") {
                advance(); args.append(Arg(name: nil, value: try parseExpression(), star: 1))
            } else if isOp("**") {
                advance(); args.append(Arg(name: nil, value: try parseExpression(), star: 2))
            } else if cur.kind == .name, peek().kind == .op, peek().text == "=" {
                let k = cur.text
                advance(); advance()
                args.append(Arg(name: k, value: try parseExpression()))
            } else {
                if args.contains(where: { $0.name != nil }) { throw fail("positional argument follows keyword argument") }
                args.append(Arg(name: nil, value: try parseExpression()))
            }
        }
        advance()
        return args
    }

    mutating func parseFilterExpr(_ start: Expr) throws -> Expr {
        var e = start
        while true {
            if isOp("|") {
                advance()
                let (name, args) = try parseFilterCall()
                e = .filter(e, name, args)
            } else if isName("is") {
                advance()
                var negated = false
                if isName("not") { negated = true; advance() }
                let nameTok = cur
                var name = try expectName()
                while isOp("."), peek().kind == .name { advance(); name += "." + cur.text; advance() }
                if !Builtins.testNames.contains(name) { throw fail("No test named '\(name)'.", nameTok) }
                var args: [Arg] = []
                if isOp("(") {
                    args = try parseCallArgs()
                } else if [.name, .string, .int, .float].contains(cur.kind) || isOp("[") || isOp("{") {
                    if cur.kind == .name && ["else", "or", "and"].contains(cur.text) {
                        // no argument
                    } else {
                        if isName("is") { throw fail("you cannot chain multiple tests with 'is'") }
                        var a = try parsePrimary()
                        a = try parsePostfix(a)
                        args = [Arg(name: nil, value: a)]
                    }
                }
                e = .test(e, name, args, negated: negated)
            } else if isOp("(") {
                e = .call(e, try parseCallArgs())
            } else {
                return e
            }
        }
    }
}
