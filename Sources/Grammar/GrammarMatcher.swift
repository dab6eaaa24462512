/// Runs a `Grammar` over bytes: a nondeterministic pushdown recogniser whose state is the set of parse stacks
/// still alive (llama.cpp's GBNF algorithm), made cheap by interning.
///
/// A stack is a linked list in an arena, hash-consed so equal stacks share one id; a state is an interned sorted
/// set of stack ids; transitions `(state, byte) → state` are memoised. Walking a token's bytes is then a few
/// table look-ups, and the vocabulary-wide mask (a walk of the token trie, `TokenTrie.allowed`) reuses the
/// transitions every other token already computed.
///
/// Not thread-safe: one matcher per sequence, used by the engine thread.
public final class GrammarMatcher {
    public let grammar: Grammar
    /// The dead state (no stack survives).
    public static let dead: Int32 = -1
    /// The empty stack: the whole input matched the root rule.
    static let accepted: Int32 = -1

    // Stack arena: a stack is (position of its next element, parent stack).
    private var nodePos: [Int32] = []
    private var nodeParent: [Int32] = []
    private var nodeIndex: [UInt64: Int32] = [:]
    // Interned states.
    private var states: [[Int32]] = []
    private var stateIndex: [[Int32]: Int32] = [:]
    private var accepting: [Bool] = []
    private var memo: [UInt64: Int32] = [:]

    /// The state after the bytes accepted so far.
    public private(set) var current: Int32 = 0
    /// The state before any byte.
    public private(set) var initial: Int32 = 0

    private var worklist: [Int32] = []
    private var visited: Set<Int32> = []
    private var out: Set<Int32> = []

    public init(grammar: Grammar) {
        self.grammar = grammar
        out.removeAll()
        visited.removeAll()
        for alt in grammar.alternatives[Int(grammar.root)] {
            expand(stack(alt, GrammarMatcher.accepted))
        }
        initial = internState()
        current = initial
    }

    // MARK: - Queries

    /// Whether the input so far is a complete sentence of the grammar.
    public var isAccepting: Bool { current >= 0 && accepting[Int(current)] }

    /// Whether the input is complete and nothing can follow it.
    public var isComplete: Bool { current >= 0 && states[Int(current)] == [GrammarMatcher.accepted] }

    public func isAccepting(_ state: Int32) -> Bool { state >= 0 && accepting[Int(state)] }

    /// The state after `byte` from `state` (`dead` when the byte cannot come next).
    @inline(__always)
    public func next(_ state: Int32, _ byte: UInt8) -> Int32 {
        guard state >= 0 else { return GrammarMatcher.dead }
        let key = UInt64(UInt32(state)) << 8 | UInt64(byte)
        if let s = memo[key] { return s }
        let s = computeNext(state, byte)
        memo[key] = s
        return s
    }

    /// The state after `bytes` from `state`.
    public func walk(_ state: Int32, _ bytes: some Sequence<UInt8>) -> Int32 {
        var s = state
        for b in bytes {
            s = next(s, b)
            if s < 0 { return GrammarMatcher.dead }
        }
        return s
    }

    /// Whether `bytes` can come next.
    public func accepts(_ bytes: some Sequence<UInt8>) -> Bool { walk(current, bytes) >= 0 }

    /// Consumes `bytes`; returns false (and stays put) when they cannot come next.
    @discardableResult
    public func advance(_ bytes: some Sequence<UInt8>) -> Bool {
        let s = walk(current, bytes)
        guard s >= 0 else { return false }
        current = s
        return true
    }

    /// Back to the state before any input.
    public func reset() { current = initial }

    /// Memory in use, in table entries (the memo is dropped when it grows past a bound).
    public var tableSize: Int { memo.count + nodePos.count + states.count }

    // MARK: - Internals

    private func stack(_ pos: Int32, _ parent: Int32) -> Int32 {
        let key = UInt64(UInt32(pos)) << 32 | UInt64(UInt32(bitPattern: parent))
        if let id = nodeIndex[key] { return id }
        let id = Int32(nodePos.count)
        nodePos.append(pos)
        nodeParent.append(parent)
        nodeIndex[key] = id
        return id
    }

    /// Adds to `out` every stack reachable from `start` without consuming a byte whose top is a byte class (or
    /// the accepted stack).
    private func expand(_ start: Int32) {
        worklist.append(start)
        while let s = worklist.popLast() {
            guard visited.insert(s).inserted else { continue }
            if s == GrammarMatcher.accepted {
                out.insert(s)
                continue
            }
            let pos = Int(nodePos[Int(s)])
            switch grammar.elements[pos] {
            case .bytes:
                out.insert(s)
            case .end:
                worklist.append(nodeParent[Int(s)])
            case .ref(let r):
                let parent = nodeParent[Int(s)]
                // A reference that ends its alternative returns straight to the parent (no growth on recursion).
                let cont = grammar.elements[pos + 1] == .end ? parent : stack(Int32(pos + 1), parent)
                for alt in grammar.alternatives[Int(r)] { worklist.append(stack(alt, cont)) }
            }
        }
    }

    private func internState() -> Int32 {
        let sorted = out.sorted()
        out.removeAll(keepingCapacity: true)
        visited.removeAll(keepingCapacity: true)
        if sorted.isEmpty { return GrammarMatcher.dead }
        if let id = stateIndex[sorted] { return id }
        let id = Int32(states.count)
        states.append(sorted)
        accepting.append(sorted.first == GrammarMatcher.accepted)
        stateIndex[sorted] = id
        return id
    }

    private func computeNext(_ state: Int32, _ byte: UInt8) -> Int32 {
        if memo.count > 4_000_000 { memo.removeAll(keepingCapacity: true) }
        for s in states[Int(state)] where s != GrammarMatcher.accepted {
            let pos = Int(nodePos[Int(s)])
            if case .bytes(let set) = grammar.elements[pos], set.contains(byte) {
                visited.removeAll(keepingCapacity: true)
                expand(stack(Int32(pos + 1), nodeParent[Int(s)]))
            }
        }
        visited.removeAll(keepingCapacity: true)
        return internState()
    }
}
