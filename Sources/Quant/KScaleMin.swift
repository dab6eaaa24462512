/// The scalar kernels shared by the "scale and min" K-quants (Q4_K, Q5_K): blocks of 256 elements in 8 groups of
/// 32, `{ half d; half dmin; uint8 scales[12]; ... }` with 6-bit scale/min pairs, x = d·sc·q − dmin·m. The formats
/// differ only in how a block's 256 quants are decoded (`decode`).
enum KScaleMin {
    typealias Decode = (_ block: UnsafeRawPointer, _ q: UnsafeMutablePointer<Int8>) -> Void

    @inline(__always)
    static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int, typeSize: Int,
                           decode: Decode) {
        withQuantScratch { q in
            for b in 0..<(count / 256) {
                let p = src + b * typeSize
                let y = dst + b * 256
                let d = readF16(p, 0), dmin = readF16(p, 2)
                decode(p, q)
                for j in 0..<8 {
                    let (sc, m) = scaleMinK4(j, p + 4)
                    scaleI8(q + 32 * j, d * Float(sc), minus: dmin * Float(m), y + 32 * j, 32)
                }
            }
        }
    }

    @inline(__always)
    static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int, typeSize: Int,
                       decode: Decode) -> Float {
        withQuantScratch { q in
            var s: Float = 0
            for b in 0..<(count / 256) {
                let p = row + b * typeSize
                let xb = x + b * 256
                decode(p, q)
                var sumQX: Float = 0, sumMX: Float = 0
                for j in 0..<8 {
                    let (sc, m) = scaleMinK4(j, p + 4)
                    sumQX += Float(sc) * dotI8F32(q + 32 * j, xb + 32 * j, 32)
                    sumMX += Float(m) * sumF32(xb + 32 * j, 32)
                }
                s += readF16(p, 0) * sumQX - readF16(p, 2) * sumMX
            }
            return s
        }
    }

    /// Row · Q8_K activation: d_x·(d·Σ_j sc_j·Σ q·q_x − dmin·Σ_j m_j·Σ q_x), the inner sums exact integers
    /// (Σ q_x from the Q8_K block's bsums).
    @inline(__always)
    static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int, typeSize: Int,
                       decode: Decode) -> Float {
        withQuantScratch { q in
            var s: Float = 0
            for b in 0..<(count / 256) {
                let p = row + b * typeSize
                let y = xq + b * Q8_K.typeSize
                decode(p, q)
                var sumi: Int32 = 0, summ: Int32 = 0
                for j in 0..<8 {
                    let (sc, m) = scaleMinK4(j, p + 4)
                    sumi &+= Int32(sc) &* dotI8I8(q + 32 * j, y + Q8_K.qsOffset + 32 * j, 32)
                    summ &+= Int32(m) &* (Q8_K.bsum(y, 2 * j) &+ Q8_K.bsum(y, 2 * j + 1))
                }
                s += Q8_K.d(y) * (readF16(p, 0) * Float(sumi) - readF16(p, 2) * Float(summ))
            }
            return s
        }
    }
}
