/// The paged key/value pool: for every layer, `numPages * pageSize` slots of K (`kDim` floats) and V
/// (`vDim` floats). Which slots belong to which sequence is decided elsewhere (the engine's page allocator,
/// integers only); the model writes K/V at `slotMapping` and reads them through block tables.
/// `// k[layer]: [numPages * pageSize, kDim]`, `// v[layer]: [numPages * pageSize, vDim]`
public final class KVCache: @unchecked Sendable {
    public let pageSize: Int
    public let numPages: Int
    public let kDims: [Int]
    public let vDims: [Int]
    private let kBufs: [UnsafeMutablePointer<Float>]
    private let vBufs: [UnsafeMutablePointer<Float>]

    public var numSlots: Int { numPages * pageSize }

    /// Bytes one token takes over all layers.
    public static func bytesPerToken(kDims: [Int], vDims: [Int]) -> Int {
        (kDims.reduce(0, +) + vDims.reduce(0, +)) * MemoryLayout<Float>.size
    }

    public init(pageSize: Int, numPages: Int, kDims: [Int], vDims: [Int]) {
        precondition(pageSize > 0 && numPages > 0 && kDims.count == vDims.count)
        self.pageSize = pageSize
        self.numPages = numPages
        self.kDims = kDims
        self.vDims = vDims
        let slots = pageSize * numPages
        kBufs = kDims.map { d in
            let p = UnsafeMutablePointer<Float>.allocate(capacity: max(1, slots * d))
            p.initialize(repeating: 0, count: max(1, slots * d))
            return p
        }
        vBufs = vDims.map { d in
            let p = UnsafeMutablePointer<Float>.allocate(capacity: max(1, slots * d))
            p.initialize(repeating: 0, count: max(1, slots * d))
            return p
        }
    }

    deinit {
        kBufs.forEach { $0.deallocate() }
        vBufs.forEach { $0.deallocate() }
    }

    @inline(__always) public func k(_ layer: Int) -> UnsafeMutablePointer<Float> { kBufs[layer] }
    @inline(__always) public func v(_ layer: Int) -> UnsafeMutablePointer<Float> { vBufs[layer] }
}

/// Where each token of a batch lives in the KV pool. Built once per step by the caller and shared by all layers.
public struct AttentionMetadata {
    /// `// [nTokens]` absolute position of each token in its sequence.
    public var positions: UnsafePointer<Int32>
    /// `// [nTokens]` KV slot each token's K/V is written to.
    public var slotMapping: UnsafePointer<Int32>
    /// `// [nTokens]` index of each token's sequence in `blockTables`.
    public var sequenceOfToken: UnsafePointer<Int32>
    /// `// [nSequences, blockTableStride]` physical page of each logical page.
    public var blockTables: UnsafePointer<Int32>
    public var blockTableStride: Int
    public var pageSize: Int

    public init(positions: UnsafePointer<Int32>, slotMapping: UnsafePointer<Int32>, sequenceOfToken: UnsafePointer<Int32>,
                blockTables: UnsafePointer<Int32>, blockTableStride: Int, pageSize: Int) {
        self.positions = positions
        self.slotMapping = slotMapping
        self.sequenceOfToken = sequenceOfToken
        self.blockTables = blockTables
        self.blockTableStride = blockTableStride
        self.pageSize = pageSize
    }

    /// Slot of position `pos` in sequence `seq`.
    @inline(__always)
    public func slot(sequence seq: Int, position pos: Int) -> Int {
        Int(blockTables[seq * blockTableStride + pos / pageSize]) * pageSize + pos % pageSize
    }
}
