import Backend

/// One step's worth of work for the model: tokens of one or more sequences, each with its own position, and
/// where their K/V live in the paged pool. A prefill chunk and a decode token are the same thing here: tokens
/// whose K/V get written, attending to everything their sequence has cached up to their position.
public struct ForwardBatch: Sendable {
    /// `// [nTokens]`
    public var tokens: [Int32] = []
    /// `// [nTokens]` position of each token in its sequence.
    public var positions: [Int32] = []
    /// `// [nTokens]` index into `blockTables` of each token's sequence.
    public var sequenceOfToken: [Int32] = []
    /// `// [nTokens]` KV slot each token is written to (`blockTable[pos / pageSize] * pageSize + pos % pageSize`).
    public var slotMapping: [Int32] = []
    /// `// [nSequences][maxPages]` flattened with stride `blockTableStride`.
    public var blockTables: [Int32] = []
    public var blockTableStride = 0
    /// Token indices whose logits are returned, in order.
    public var logitsIndices: [Int32] = []
    public let pageSize: Int

    public init(pageSize: Int) { self.pageSize = pageSize }

    public var count: Int { tokens.count }

    /// Empties the batch, keeping its storage (the engine reuses one batch every step).
    public mutating func removeAll() {
        tokens.removeAll(keepingCapacity: true)
        positions.removeAll(keepingCapacity: true)
        sequenceOfToken.removeAll(keepingCapacity: true)
        slotMapping.removeAll(keepingCapacity: true)
        blockTables.removeAll(keepingCapacity: true)
        blockTableStride = 0
        logitsIndices.removeAll(keepingCapacity: true)
    }

    /// Adds `tokens` of one sequence, at positions `start...`, with the sequence's block table (which must
    /// already cover every position written). `wantLogits` selects which of these tokens' logits to return.
    public mutating func addSequence<C: Collection<Int32>>(tokens newTokens: C, startPosition start: Int,
                                                           blockTable: [Int32], logits wantLogits: LogitsSelection = .last) {
        if blockTableStride < blockTable.count {
            // Re-stride the existing tables to the new width (rare: only when a longer table arrives).
            let nSeq = blockTableStride == 0 ? 0 : blockTables.count / blockTableStride
            var wider = [Int32](repeating: -1, count: nSeq * blockTable.count)
            for s in 0..<nSeq {
                for j in 0..<blockTableStride { wider[s * blockTable.count + j] = blockTables[s * blockTableStride + j] }
            }
            blockTables = wider
            blockTableStride = blockTable.count
        }
        let seqIndex = blockTableStride == 0 ? 0 : blockTables.count / blockTableStride
        blockTables.append(contentsOf: blockTable)
        for _ in blockTable.count..<blockTableStride { blockTables.append(-1) }
        let n = newTokens.count
        for (i, t) in newTokens.enumerated() {
            let pos = start + i
            let index = Int32(tokens.count)
            tokens.append(t)
            positions.append(Int32(pos))
            sequenceOfToken.append(Int32(seqIndex))
            slotMapping.append(blockTable[pos / pageSize] * Int32(pageSize) + Int32(pos % pageSize))
            switch wantLogits {
            case .all: logitsIndices.append(index)
            case .last: if i == n - 1 { logitsIndices.append(index) }
            case .none: break
            }
        }
    }

    public enum LogitsSelection: Sendable { case all, last, none }
}
