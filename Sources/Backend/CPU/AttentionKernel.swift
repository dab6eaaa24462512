import Foundation

/// The inner loop of attention for one token and one K/V head: `g` query heads (a GQA group) against
/// `count` cached positions given by their slots. Scores stay in caller scratch (`// [g, count]`), never a full
/// matrix. The scalar version is the reference; `KernelDispatch.attention` picks an AVX2 one where available.
public typealias AttentionKernel = @Sendable (_ args: AttentionKernelArgs) -> Void

public struct AttentionKernelArgs {
    /// `// [g, headDim]` the group's query heads (contiguous).
    public var q: UnsafePointer<Float>
    public var g: Int
    public var headDim: Int
    /// Base of this K/V head's keys: key of slot s is `k + s * kStride`.
    public var k: UnsafePointer<Float>
    public var kStride: Int
    public var v: UnsafePointer<Float>
    public var vStride: Int
    public var headDimV: Int
    /// `// [count]` slots of the visible positions, oldest first.
    public var slots: UnsafePointer<Int32>
    public var count: Int
    public var scale: Float
    public var softcap: Float
    /// `// [g, count]` scratch.
    public var scores: UnsafeMutablePointer<Float>
    /// `// [g, headDimV]` result (overwritten).
    public var out: UnsafeMutablePointer<Float>

    public init(q: UnsafePointer<Float>, g: Int, headDim: Int, k: UnsafePointer<Float>, kStride: Int,
                v: UnsafePointer<Float>, vStride: Int, headDimV: Int, slots: UnsafePointer<Int32>, count: Int,
                scale: Float, softcap: Float, scores: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>) {
        self.q = q
        self.g = g
        self.headDim = headDim
        self.k = k
        self.kStride = kStride
        self.v = v
        self.vStride = vStride
        self.headDimV = headDimV
        self.slots = slots
        self.count = count
        self.scale = scale
        self.softcap = softcap
        self.scores = scores
        self.out = out
    }
}

public enum ScalarAttention {
    public static func attend(_ a: AttentionKernelArgs) {
        for h in 0..<a.g {
            let qh = a.q + h * a.headDim
            let sc = a.scores + h * a.count
            var m = -Float.infinity
            for j in 0..<a.count {
                var s = dotProduct(qh, a.k + Int(a.slots[j]) * a.kStride, a.headDim) * a.scale
                if a.softcap > 0 { s = a.softcap * tanhf(s / a.softcap) }
                sc[j] = s
                m = max(m, s)
            }
            var sum: Float = 0
            for j in 0..<a.count {
                let e = expf(sc[j] - m)
                sc[j] = e
                sum += e
            }
            let o = a.out + h * a.headDimV
            o.update(repeating: 0, count: a.headDimV)
            let inv = 1 / sum
            for j in 0..<a.count {
                axpy(sc[j] * inv, a.v + Int(a.slots[j]) * a.vStride, o, a.headDimV)
            }
        }
    }
}
