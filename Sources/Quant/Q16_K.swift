/// Q16_K: the 16-bit activation format of the K-quants' precise dot products (580 bytes per 256 elements):
/// `{ float d; int8 hi[256]; int8 lo[256]; int32 sums[16] }`, x ≈ d·v with v = 256·hi + lo an int16
/// (|v| ≤ 32639), and sums[i] = Σ v over elements 16i..<16i+16.
///
/// Not a ggml type: it exists for the MoE expert down projection, whose input (SiLU(gate)·up) would lose accuracy
/// as 8-bit Q8_K (see docs/architecture.md). Its error is ~1/32639 of a block's largest value, ~250x smaller than
/// Q8_K's, yet the SIMD kernels still multiply bytes: each plane is an int8 vector for `maddubs`, so a row · Q16_K
/// costs about 1.3x a row · Q8_K, not the ~3x of dequantizing to f32.
public enum Q16_K {
    public static let blockSize = 256
    public static let typeSize = 580
    public static let hiOffset = 4
    public static let loOffset = 260
    public static let sumsOffset = 516
    /// Largest |v|: 127·256 + 127, so that hi stays in int8.
    public static let maxValue: Float = 32639

    public static func byteCount(elements: Int) -> Int { elements / blockSize * typeSize }

    @inline(__always)
    public static func d(_ p: UnsafeRawPointer) -> Float { p.loadUnaligned(as: Float.self) }

    /// Element i of the block at `p` as its int16 value v.
    @inline(__always)
    static func value(_ p: UnsafeRawPointer, _ i: Int) -> Int32 {
        256 * Int32(p.load(fromByteOffset: hiOffset + i, as: Int8.self)) + Int32(p.load(fromByteOffset: loOffset + i, as: Int8.self))
    }

    @inline(__always)
    static func sum(_ p: UnsafeRawPointer, _ i: Int) -> Int32 {
        p.loadUnaligned(fromByteOffset: sumsOffset + 4 * i, as: Int32.self)
    }

    /// d = max|x| / 32639, v = nearest integer of x/d (ties to even); an all-zero block gets d = 0.
    public static func quantize(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, _ count: Int) {
        for b in 0..<(count / blockSize) {
            let x = src + b * blockSize, y = dst + b * typeSize
            var amax: Float = 0
            for i in 0..<blockSize { amax = max(amax, abs(x[i])) }
            let d = amax / maxValue, id: Float = amax > 0 ? maxValue / amax : 0
            y.storeBytes(of: d, as: Float.self)
            for g in 0..<16 {
                var s: Int32 = 0
                for i in 16 * g..<16 * g + 16 {
                    let v = Int32(min(maxValue, max(-maxValue, (x[i] * id).rounded(.toNearestOrEven))))
                    store(v, i, y)
                    s += v
                }
                y.storeBytes(of: s, toByteOffset: sumsOffset + 4 * g, as: Int32.self)
            }
        }
    }

    /// Writes v as its two planes.
    @inline(__always)
    public static func store(_ v: Int32, _ i: Int, _ y: UnsafeMutableRawPointer) {
        let lo = Int8(truncatingIfNeeded: v)
        y.storeBytes(of: Int8(truncatingIfNeeded: (v - Int32(lo)) >> 8), toByteOffset: hiOffset + i, as: Int8.self)
        y.storeBytes(of: lo, toByteOffset: loOffset + i, as: Int8.self)
    }

    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        for b in 0..<(count / blockSize) {
            let p = src + b * typeSize
            let d = d(p)
            for i in 0..<blockSize { dst[b * blockSize + i] = d * Float(value(p, i)) }
        }
    }

    // MARK: - Scalar reference dot products (row · Q16_K)

    /// Q4_K / Q5_K: d_x·(d·Σ_j sc_j·Σ q·v − dmin·Σ_j m_j·Σ v), integer inner sums.
    @inline(__always)
    static func dotScaleMin(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int, typeSize: Int,
                            decode: KScaleMin.Decode) -> Float {
        withQuantScratch { q in
            var s: Float = 0
            for b in 0..<(count / 256) {
                let p = row + b * typeSize, y = xq + b * Q16_K.typeSize
                decode(p, q)
                var sumi: Int64 = 0, summ: Int64 = 0
                for j in 0..<8 {
                    let (sc, m) = scaleMinK4(j, p + 4)
                    var dot: Int64 = 0
                    for i in 32 * j..<32 * j + 32 { dot += Int64(q[i]) * Int64(value(y, i)) }
                    sumi += Int64(sc) * dot
                    summ += Int64(m) * Int64(sum(y, 2 * j) + sum(y, 2 * j + 1))
                }
                s += d(y) * (readF16(p, 0) * Float(sumi) - readF16(p, 2) * Float(summ))
            }
            return s
        }
    }

    public static func dotQ4_K(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        dotScaleMin(row, xq, count, typeSize: Q4_K.typeSize, decode: Q4_K.decode)
    }

    public static func dotQ5_K(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        dotScaleMin(row, xq, count, typeSize: Q5_K.typeSize, decode: Q5_K.decode)
    }

    /// Q6_K: d_x·d·Σ_j scales_j·Σ (q − 32)·v over its 16 groups of 16.
    public static func dotQ6_K(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        withQuantScratch { q in
            var s: Float = 0
            for b in 0..<(count / 256) {
                let p = row + b * Q6_K.typeSize, y = xq + b * Q16_K.typeSize
                Q6_K.decode(p, q)
                var sumi: Int64 = 0
                for j in 0..<16 {
                    var dot: Int64 = 0
                    for i in 16 * j..<16 * j + 16 { dot += Int64(q[i]) * Int64(value(y, i)) }
                    sumi += Int64(Q6_K.scale(p, j)) * dot
                }
                s += d(y) * readF16(p, 208) * Float(sumi)
            }
            return s
        }
    }
}
