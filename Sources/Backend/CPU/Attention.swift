import Foundation

/// Shape and masking of one attention layer.
public struct AttentionParams: Sendable {
    public var nHead: Int
    public var nKVHead: Int
    public var headDim: Int       // of Q and K
    public var headDimV: Int
    public var scale: Float
    /// Sliding window: a token at position p sees positions > p - window; 0 means unlimited.
    public var window: Int
    /// tanh soft-capping of the scores (Gemma 2); 0 means none.
    public var softcap: Float
    /// V is not cached on its own: each head's value is the first `headDimV` floats of its K row (MLA with
    /// the up-projections absorbed: K = [latent | rope part], V = latent; the layer's V width may be 0).
    public var valueInKey: Bool = false

    public init(nHead: Int, nKVHead: Int, headDim: Int, headDimV: Int? = nil, scale: Float, window: Int = 0, softcap: Float = 0) {
        self.nHead = nHead
        self.nKVHead = nKVHead
        self.headDim = headDim
        self.headDimV = headDimV ?? headDim
        self.scale = scale
        self.window = window
        self.softcap = softcap
    }
}

extension ThreadPool {
    /// Writes `k`/`v` rows of `n` tokens into the pool at `meta.slotMapping`.
    /// `k` is `// [n, kDim]`, `v` is `// [n, vDim]`.
    public func storeKV(_ k: UnsafePointer<Float>, _ v: UnsafePointer<Float>, n: Int, cache: KVCache, layer: Int,
                        meta: AttentionMetadata) {
        let kd = cache.kDims[layer], vd = cache.vDims[layer]
        let kc = cache.k(layer).hostFloats, vc = cache.v(layer).hostFloats
        for t in 0..<n {
            let s = Int(meta.slotMapping[t])
            (kc + s * kd).update(from: k + t * kd, count: kd)
            (vc + s * vd).update(from: v + t * vd, count: vd)
        }
    }

    /// Causal attention of `n` query tokens over their sequences' cached K/V (which must already hold this
    /// batch's own K/V). `q` is `// [n, nHead * headDim]`, `out` is `// [n, nHead * headDimV]`.
    /// Each (token, K/V head) pair is one task: the group of query heads sharing that K/V head is scored
    /// together (`KernelDispatch.attention`), so each key row is read once per group. Per-thread scratch holds
    /// the scores (`// [group, count]`) and the slots of the visible positions: at least
    /// `(nHead / nKVHead + 1) * contextLength` floats.
    public func attention(q: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, n: Int, cache: KVCache, layer: Int,
                          meta: AttentionMetadata, params p: AttentionParams, scratch: ThreadScratch) {
        let kc = UnsafePointer(cache.k(layer).hostFloats)
        let vc = p.valueInKey ? kc : UnsafePointer(cache.v(layer).hostFloats)
        let kd = cache.kDims[layer], vd = p.valueInKey ? kd : cache.vDims[layer]
        let vHeadStride = p.valueInKey ? p.headDim : p.headDimV
        let group = p.nHead / p.nKVHead
        let kernel = KernelDispatch.attention
        // Few (token, K/V head) pairs (decode with one K/V head, as Gemma 3 270M has) would leave threads idle:
        // then each query head is its own task. Same arithmetic per head either way, so the same bits.
        let perHead = group > 1 && n * p.nKVHead < 2 * threadCount
        let g = perHead ? 1 : group
        let headsPerToken = perHead ? p.nHead : p.nKVHead
        parallelFor(n * headsPerToken) { task, thread in
            let t = task / headsPerToken, unit = task % headsPerToken
            let kvh = perHead ? unit / group : unit
            let firstHead = perHead ? unit : unit * group
            let pos = Int(meta.positions[t])
            let seq = Int(meta.sequenceOfToken[t])
            let lo = p.window > 0 ? max(0, pos - p.window + 1) : 0
            let count = pos - lo + 1
            precondition((g + 1) * count <= scratch.floatsPerThread, "attention scratch too small for position \(pos)")
            let buf = scratch.buffer(thread)
            let slots = UnsafeMutableRawPointer(buf + g * count).bindMemory(to: Int32.self, capacity: count)
            for j in 0..<count { slots[j] = Int32(meta.slot(sequence: seq, position: lo + j)) }
            kernel(AttentionKernelArgs(
                q: q + t * p.nHead * p.headDim + firstHead * p.headDim, g: g, headDim: p.headDim,
                k: kc + kvh * p.headDim, kStride: kd, v: vc + kvh * vHeadStride, vStride: vd, headDimV: p.headDimV,
                slots: slots, count: count, scale: p.scale, softcap: p.softcap, scores: buf,
                out: out + t * p.nHead * p.headDimV + firstHead * p.headDimV))
            UnsafeMutableRawPointer(slots).bindMemory(to: Float.self, capacity: count)
        }
    }
}

/// `BatchMetadata` as host pointers, for the CPU kernels.
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

    /// The host view of `meta` (its tensors must be in host memory).
    public init(_ meta: BatchMetadata) {
        self.init(positions: meta.positions.hostInt32, slotMapping: meta.slotMapping.hostInt32,
                  sequenceOfToken: meta.sequenceOfToken.hostInt32, blockTables: meta.blockTables.hostInt32,
                  blockTableStride: meta.blockTableStride, pageSize: meta.pageSize)
    }

    /// Slot of position `pos` in sequence `seq`.
    @inline(__always)
    public func slot(sequence seq: Int, position pos: Int) -> Int {
        Int(blockTables[seq * blockTableStride + pos / pageSize]) * pageSize + pos % pageSize
    }
}
