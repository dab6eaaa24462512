/// Q2_K (ggml `block_q2_K`, 84 bytes per 256 elements): `{ uint8 scales[16]; uint8 qs[64]; half d; half dmin }`.
/// Sixteen sub-blocks of 16; scales[j] holds a 4-bit scale (low nibble) and a 4-bit min (high nibble).
/// Element 128n + 32j + l (j < 4, l < 32) is bits 2j..2j+1 of qs[32n + l], in sub-block 8n + 2j + l/16;
/// x = d·sc·q − dmin·m. Read-only here.
public enum Q2_K {
    public static let blockSize = 256
    public static let typeSize = 84

    /// The 256 integer quants of the block at `p`, in element order.
    @inline(__always)
    static func decode(_ p: UnsafeRawPointer, _ q: UnsafeMutablePointer<Int8>) {
        let qs = (p + 16).assumingMemoryBound(to: UInt8.self)
        for n in 0..<2 {
            for j in 0..<4 {
                for l in 0..<32 {
                    q[128 * n + 32 * j + l] = Int8(bitPattern: (qs[32 * n + l] >> UInt8(2 * j)) & 3)
                }
            }
        }
    }

    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        withQuantScratch { q in
            for b in 0..<(count / blockSize) {
                let p = src + b * typeSize
                let y = dst + b * blockSize
                let d = readF16(p, 80), dmin = readF16(p, 82), sc = p.assumingMemoryBound(to: UInt8.self)
                decode(p, q)
                for k in 0..<16 {
                    scaleI8(q + 16 * k, d * Float(sc[k] & 0xF), minus: dmin * Float(sc[k] >> 4), y + 16 * k, 16)
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
                let d = readF16(p, 80), dmin = readF16(p, 82), sc = p.assumingMemoryBound(to: UInt8.self)
                decode(p, q)
                var sumQX: Float = 0, sumMX: Float = 0
                for k in 0..<16 {
                    sumQX += Float(sc[k] & 0xF) * dotI8F32(q + 16 * k, xb + 16 * k, 16)
                    sumMX += Float(sc[k] >> 4) * sumF32(xb + 16 * k, 16)
                }
                s += d * sumQX - dmin * sumMX
            }
            return s
        }
    }

    /// Row · Q8_K activation, the inner sums exact integers.
    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        withQuantScratch { q in
            var s: Float = 0
            for b in 0..<(count / blockSize) {
                let p = row + b * typeSize
                let y = xq + b * Q8_K.typeSize
                let d = readF16(p, 80), dmin = readF16(p, 82), sc = p.assumingMemoryBound(to: UInt8.self)
                decode(p, q)
                var sumi: Int32 = 0, summ: Int32 = 0
                for k in 0..<16 {
                    sumi &+= Int32(sc[k] & 0xF) &* dotI8I8(q + 16 * k, y + Q8_K.qsOffset + 16 * k, 16)
                    summ &+= Int32(sc[k] >> 4) &* Q8_K.bsum(y, k)
                }
                s += Q8_K.d(y) * (d * Float(sumi) - dmin * Float(summ))
            }
            return s
        }
    }

    public static let kernels = QuantKernels(type: .q2_K, dequantize: dequantize, quantize: nil, dotF32: dotF32,
                                             vecDotType: .q8_K, vecDot: vecDot)
}
