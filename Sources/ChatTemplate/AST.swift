/// Parsed template: statements and expressions.
indirect enum Expr: Sendable {
    case literal(V)
    case name(String)
    case list([Expr])
    case tuple([Expr])
    case dict([(Expr, Expr)])
    case getattr(Expr, String)
    case getitem(Expr, Expr)
    case slice(Expr, Expr?, Expr?, Expr?)
    case call(Expr, [Arg])
    case filter(Expr, String, [Arg])
    case test(Expr, String, [Arg], negated: Bool)
    case not(Expr)
    case neg(Expr)
    case pos(Expr)
    case binary(BinOp, Expr, Expr)
    case and(Expr, Expr)
    case or(Expr, Expr)
    case compare(Expr, [(CmpOp, Expr)])
    case cond(then: Expr, test: Expr, otherwise: Expr?)
}

enum BinOp: Sendable { case add, sub, mul, div, floordiv, mod, pow, concat }
enum CmpOp: Sendable { case eq, ne, lt, le, gt, ge, `in`, notIn }

struct Arg: Sendable {
    var name: String?  // keyword argument name, nil for positional
    var value: Expr
    var star: Int = 0  // 1 for *args, 2 for **kwargs
}

/// An assignment target: a name, a tuple of targets, or `ns.attr`.
indirect enum Target: Sendable {
    case name(String)
    case tuple([Target])
    case attr(Expr, String)
}

struct MacroDef: Sendable {
    var name: String
    var params: [(String, Expr?)]
    var body: [Node]
}

indirect enum Node: Sendable {
    case text(String)
    case output(Expr, line: Int)
    case ifs([(Expr, [Node])], otherwise: [Node], line: Int)
    case forLoop(target: Target, iter: Expr, filter: Expr?, body: [Node], otherwise: [Node], recursive: Bool, line: Int)
    case set(Target, Expr, line: Int)
    case setBlock(Target, filters: [(String, [Arg])], body: [Node], line: Int)
    case macro(MacroDef, line: Int)
    case callBlock(call: Expr, callerParams: [(String, Expr?)], body: [Node], line: Int)
    case filterBlock(filters: [(String, [Arg])], body: [Node], line: Int)
    case with(assignments: [(Target, Expr)], body: [Node], line: Int)
    case breakLoop(line: Int)
    case continueLoop(line: Int)
    case generation(body: [Node])
}
