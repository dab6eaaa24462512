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
        let kc = cache.k(layer), vc = cache.v(layer)
        for t in 0..<n {
            let s = Int(meta.slotMapping[t])
            (kc + s * kd).update(from: k + t * kd, count: kd)
            (vc + s * vd).update(from: v + t * vd, count: vd)
        }
    }

    /// Causal attention of `n` query tokens over their sequences' cached K/V (which must already hold this
    /// batch's own K/V). `q` is `// [n, nHead * headDim]`, `out` is `// [n, nHead * headDimV]`.
    /// Each (token, head) pair is one task; scores go to per-thread scratch of at least the context length.
    public func attention(q: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, n: Int, cache: KVCache, layer: Int,
                          meta: AttentionMetadata, params p: AttentionParams, scratch: ThreadScratch) {
        let kc = UnsafePointer(cache.k(layer)), vc = UnsafePointer(cache.v(layer))
        let kd = cache.kDims[layer], vd = cache.vDims[layer]
        let group = p.nHead / p.nKVHead
        parallelFor(n * p.nHead) { task, thread in
            let t = task / p.nHead, h = task % p.nHead
            let kvh = h / group
            let pos = Int(meta.positions[t])
            let seq = Int(meta.sequenceOfToken[t])
            let lo = p.window > 0 ? max(0, pos - p.window + 1) : 0
            let count = pos - lo + 1
            precondition(count <= scratch.floatsPerThread, "attention scratch too small for position \(pos)")
            let scores = scratch.buffer(thread)
            let qh = q + t * p.nHead * p.headDim + h * p.headDim
            var m = -Float.infinity
            for j in 0..<count {
                let slot = meta.slot(sequence: seq, position: lo + j)
                var s = dotProduct(qh, kc + slot * kd + kvh * p.headDim, p.headDim) * p.scale
                if p.softcap > 0 { s = p.softcap * tanhf(s / p.softcap) }
                scores[j] = s
                m = max(m, s)
            }
            var sum: Float = 0
            for j in 0..<count {
                let e = expf(scores[j] - m)
                scores[j] = e
                sum += e
            }
            let o = out + t * p.nHead * p.headDimV + h * p.headDimV
            o.update(repeating: 0, count: p.headDimV)
            let inv = 1 / sum
            for j in 0..<count {
                let slot = meta.slot(sequence: seq, position: lo + j)
                axpy(scores[j] * inv, vc + slot * vd + kvh * p.headDimV, o, p.headDimV)
            }
        }
    }
}
