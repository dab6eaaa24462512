/// The vocabulary as a byte trie, built once per tokenizer: the allowed-token mask of a grammar state is one
/// walk of the trie that prunes every subtree whose prefix the grammar rejects.
public final class TokenTrie: Sendable {
    /// Per node: its children are edges `childStart[n] ..< childStart[n] + childCount[n]`.
    private let childStart: [Int32]
    private let childCount: [UInt16]
    private let edgeByte: [UInt8]
    private let edgeTarget: [Int32]
    /// Per node: the tokens whose bytes end here are `ends[endStart[n] ..< endStart[n + 1]]`.
    private let endStart: [Int32]
    private let ends: [Int32]
    /// Each token's bytes (empty: never allowed by a grammar, e.g. control tokens).
    public let tokenBytes: [[UInt8]]
    public var vocabSize: Int { tokenBytes.count }
    public var nodeCount: Int { childStart.count }

    /// `bytes[i]` is token i's text; empty entries are left out of the trie.
    public init(tokenBytes bytes: [[UInt8]]) {
        tokenBytes = bytes
        let order = bytes.indices.filter { !bytes[$0].isEmpty }.sorted { bytes[$0].lexicographicallyPrecedes(bytes[$1]) }
        // Build by walking the sorted tokens with a stack of the current path's nodes.
        var children: [[(UInt8, Int32)]] = [[]]
        var tokensAt: [[Int32]] = [[]]
        var path: [Int32] = [0]          // path[d] = node at depth d of the previous token
        var prev: [UInt8] = []
        for id in order {
            let b = bytes[id]
            var common = 0
            while common < b.count && common < prev.count && b[common] == prev[common] { common += 1 }
            path.removeLast(path.count - common - 1)
            for d in common..<b.count {
                let node = Int32(children.count)
                children.append([])
                tokensAt.append([])
                children[Int(path[d])].append((b[d], node))
                path.append(node)
            }
            tokensAt[Int(path[b.count])].append(Int32(id))
            prev = b
        }
        var cs: [Int32] = [], cc: [UInt16] = [], eb: [UInt8] = [], et: [Int32] = [], es: [Int32] = [], e: [Int32] = []
        cs.reserveCapacity(children.count)
        for n in 0..<children.count {
            cs.append(Int32(eb.count))
            cc.append(UInt16(children[n].count))
            for (byte, t) in children[n] { eb.append(byte); et.append(t) }
            es.append(Int32(e.count))
            e += tokensAt[n]
        }
        es.append(Int32(e.count))
        childStart = cs; childCount = cc; edgeByte = eb; edgeTarget = et; endStart = es; ends = e
    }

    /// Calls `allow` for every token whose bytes the matcher accepts from `state`.
    public func forEachAllowed(_ matcher: GrammarMatcher, from state: Int32, _ allow: (Int32) -> Void) {
        guard state >= 0 else { return }
        var stack: [(Int32, Int32)] = [(0, state)]
        while let (node, s) = stack.popLast() {
            let start = Int(childStart[Int(node)])
            for e in start..<start + Int(childCount[Int(node)]) {
                let s2 = matcher.next(s, edgeByte[e])
                guard s2 >= 0 else { continue }
                let child = Int(edgeTarget[e])
                for i in Int(endStart[child])..<Int(endStart[child + 1]) { allow(ends[i]) }
                if childCount[child] > 0 { stack.append((Int32(child), s2)) }
            }
        }
    }
}
