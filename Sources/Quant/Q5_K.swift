/// Q5_K (ggml `block_q5_K`, 176 bytes per 256 elements):
/// `{ half d; half dmin; uint8 scales[12]; uint8 qh[32]; uint8 qs[128] }`. As Q4_K, plus a fifth bit: for chunk
/// c (elements 64c..<64c+64), element 64c + l takes bit 2c of qh[l] and element 64c + 32 + l bit 2c+1;
/// x = d·sc·q − dmin·m. Read-only here.
public enum Q5_K {
    public static let blockSize = 256
    public static let typeSize = 176

    /// The 256 quants of the block at `p`, in element order.
    @inline(__always)
    static func decode(_ p: UnsafeRawPointer, _ q: UnsafeMutablePointer<Int8>) {
        let qh = (p + 16).assumingMemoryBound(to: UInt8.self), qs = (p + 48).assumingMemoryBound(to: UInt8.self)
        for c in 0..<4 {
            for l in 0..<32 {
                let v = qs[32 * c + l], h = qh[l] >> UInt8(2 * c)
                q[64 * c + l] = Int8(bitPattern: (v & 0x0F) | ((h & 1) << 4))
                q[64 * c + 32 + l] = Int8(bitPattern: (v >> 4) | ((h & 2) << 3))
            }
        }
    }

    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        withQuantScratch { q in
            for b in 0..<(count / blockSize) {
                let p = src + b * typeSize
                let y = dst + b * blockSize
                let d = readF16(p, 0), dmin = readF16(p, 2)
                decode(p, q)
                for j in 0..<8 {
                    let (sc, m) = scaleMinK4(j, p + 4)
                    scaleI8(q + 32 * j, d * Float(sc), minus: dmin * Float(m), y + 32 * j, 32)
                }
            }
        }
    }

    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        withQuantScratch { q in
            var s: Float = 0
            for b in 0..<(count / blockSize) {
                let p = row + b * typeSize
                let xb = x + b * blockSize
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

    /// Row · Q8_K activation, as Q4_K.vecDot.
    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        withQuantScratch { q in
            var s: Float = 0
            for b in 0..<(count / blockSize) {
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

    public static let kernels = QuantKernels(type: .q5_K, dequantize: dequantize, quantize: nil, dotF32: dotF32,
                                             vecDotType: .q8_K, vecDot: vecDot)
}
