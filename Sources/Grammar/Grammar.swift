/// A context-free grammar over bytes, the form every output constraint compiles to (JSON schemas, tool-call
/// formats). Rules are lists of alternatives; an alternative is a sequence of byte classes and rule references.
///
/// Stored flat, as llama.cpp's GBNF engine does: `elements` holds every alternative back to back, each ending
/// with `.end`; a position in the grammar is an index into `elements`. `GrammarMatcher` runs it.
public struct Grammar: Sendable {
    public enum Element: Sendable, Equatable {
        /// One byte from the set.
        case bytes(ByteSet)
        /// Any alternative of the rule.
        case ref(Int32)
        /// End of an alternative.
        case end
    }

    public let elements: [Element]
    /// For each rule, the positions where its alternatives start.
    public let alternatives: [[Int32]]
    public let ruleNames: [String]
    public let root: Int32

    public var ruleCount: Int { alternatives.count }
}

/// A set of bytes (256 bits).
public struct ByteSet: Hashable, Sendable {
    var w0: UInt64 = 0, w1: UInt64 = 0, w2: UInt64 = 0, w3: UInt64 = 0

    public init() {}

    public init(_ bytes: some Sequence<UInt8>) {
        for b in bytes { insert(b) }
    }

    public init(range: ClosedRange<UInt8>) {
        for b in range { insert(b) }
    }

    public static let all: ByteSet = { var s = ByteSet(); s.w0 = ~0; s.w1 = ~0; s.w2 = ~0; s.w3 = ~0; return s }()

    @inline(__always)
    public func contains(_ b: UInt8) -> Bool {
        let bit = UInt64(1) << UInt64(b & 63)
        switch b >> 6 {
        case 0: return w0 & bit != 0
        case 1: return w1 & bit != 0
        case 2: return w2 & bit != 0
        default: return w3 & bit != 0
        }
    }

    public mutating func insert(_ b: UInt8) {
        let bit = UInt64(1) << UInt64(b & 63)
        switch b >> 6 {
        case 0: w0 |= bit
        case 1: w1 |= bit
        case 2: w2 |= bit
        default: w3 |= bit
        }
    }

    public mutating func insert(range: ClosedRange<UInt8>) {
        for b in range { insert(b) }
    }

    public func union(_ o: ByteSet) -> ByteSet {
        var s = self
        s.w0 |= o.w0; s.w1 |= o.w1; s.w2 |= o.w2; s.w3 |= o.w3
        return s
    }

    public var inverted: ByteSet {
        var s = self
        s.w0 = ~w0; s.w1 = ~w1; s.w2 = ~w2; s.w3 = ~w3
        return s
    }

    public var isEmpty: Bool { w0 | w1 | w2 | w3 == 0 }
}

/// Builds a `Grammar` from named rules. Repetition and options become helper rules (right-recursive, so the
/// matcher's stacks do not grow with the number of repetitions).
public final class GrammarBuilder {
    public enum Symbol: Hashable {
        case literal([UInt8])
        case bytes(ByteSet)
        case rule(Int32)

        public static func text(_ s: String) -> Symbol { .literal(Array(s.utf8)) }
    }

    private var names: [String] = []
    private var definitions: [[[Symbol]]?] = []
    /// Helper rules by content, so equal repetitions share one rule.
    private var helperCache: [String: Int32] = [:]
    private var keyed: [String: Int32] = [:]

    public init() {}

    /// A new rule to be defined later (for recursion).
    public func declare(_ name: String) -> Int32 {
        names.append(name)
        definitions.append(nil)
        return Int32(names.count - 1)
    }

    public func define(_ rule: Int32, _ alternatives: [[Symbol]]) {
        definitions[Int(rule)] = alternatives
    }

    public func add(_ name: String, _ alternatives: [[Symbol]]) -> Int32 {
        let r = declare(name)
        define(r, alternatives)
        return r
    }

    /// The rule registered under `key`, made by `make` the first time (shared sub-grammars: JSON strings, values).
    public func shared(_ key: String, _ make: (GrammarBuilder) -> Int32) -> Int32 {
        if let r = keyed[key] { return r }
        let r = make(self)
        keyed[key] = r
        return r
    }

    /// `seq` or nothing.
    public func optional(_ seq: [Symbol]) -> Symbol {
        helper("opt", [seq, []])
    }

    /// `seq` repeated zero or more times.
    public func star(_ seq: [Symbol]) -> Symbol {
        let key = "star:\(seq)"
        if let r = helperCache[key] { return .rule(r) }
        let r = declare("star")
        define(r, [seq + [.rule(r)], []])
        helperCache[key] = r
        return .rule(r)
    }

    /// `seq` repeated `min` to `max` times (`max` nil: unbounded).
    public func repeated(_ seq: [Symbol], min: Int, max: Int?) -> [Symbol] {
        var out: [Symbol] = []
        for _ in 0..<min { out += seq }
        guard let max else { return out + [star(seq)] }
        let extra = max - min
        guard extra > 0 else { return out }
        // opt_k ::= seq opt_{k-1} | ε, nested from the inside out.
        var tail: Symbol? = nil
        for _ in 0..<extra {
            tail = helper("rep", [seq + (tail.map { [$0] } ?? []), []])
        }
        return out + [tail!]
    }

    private func helper(_ name: String, _ alts: [[Symbol]]) -> Symbol {
        let key = "\(name):\(alts)"
        if let r = helperCache[key] { return .rule(r) }
        let r = add(name, alts)
        helperCache[key] = r
        return .rule(r)
    }

    public struct UndefinedRule: Error, CustomStringConvertible {
        public let name: String
        public var description: String { "grammar rule '\(name)' is used but never defined" }
    }

    public func build(root: Int32) throws -> Grammar {
        var elements: [Grammar.Element] = []
        var alternatives: [[Int32]] = []
        for (i, def) in definitions.enumerated() {
            guard let def else { throw UndefinedRule(name: names[i]) }
            var starts: [Int32] = []
            for alt in def {
                starts.append(Int32(elements.count))
                for s in alt {
                    switch s {
                    case .literal(let bytes): for b in bytes { elements.append(.bytes(ByteSet([b]))) }
                    case .bytes(let set): elements.append(.bytes(set))
                    case .rule(let r): elements.append(.ref(r))
                    }
                }
                elements.append(.end)
            }
            alternatives.append(starts)
        }
        return Grammar(elements: elements, alternatives: alternatives, ruleNames: names, root: root)
    }
}
