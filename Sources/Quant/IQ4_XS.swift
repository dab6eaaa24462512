/// IQ4_XS (ggml `block_iq4_xs`, 136 bytes per 256 elements):
/// `{ half d; uint16 scales_h; uint8 scales_l[4]; uint8 qs[128] }`. Eight sub-blocks of 32 with 6-bit scales
/// (low 4 bits: nibble ib%2 of scales_l[ib/2]; high 2 bits: bits 2ib..2ib+1 of scales_h), stored +32. Sub-block ib
/// has 16 bytes at qs[16ib]: low nibbles are its elements 0..<16, high nibbles 16..<32, each an index into
/// `kvalues_iq4nl`; x = d·(ls − 32)·kvalues[q]. Read-only here.
public enum IQ4_XS {
    public static let blockSize = 256
    public static let typeSize = 136

    /// The signed 6-bit scale of sub-block ib (0..<8).
    @inline(__always)
    static func scale(_ p: UnsafeRawPointer, _ ib: Int) -> Int32 {
        let sh = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
        let sl = p.load(fromByteOffset: 4 + ib / 2, as: UInt8.self)
        return (Int32((sl >> UInt8(4 * (ib % 2))) & 0xF) | Int32((sh >> UInt16(2 * ib)) & 3) << 4) - 32
    }

    /// The 256 integer quants of the block at `p`, in element order.
    @inline(__always)
    static func decode(_ p: UnsafeRawPointer, _ q: UnsafeMutablePointer<Int8>) {
        let qs = (p + 8).assumingMemoryBound(to: UInt8.self)
        for ib in 0..<8 {
            for j in 0..<16 {
                let v = qs[16 * ib + j]
                q[32 * ib + j] = kvalueIQ4NL(v & 0x0F)
                q[32 * ib + 16 + j] = kvalueIQ4NL(v >> 4)
            }
        }
    }

    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        withQuantScratch { q in
            for b in 0..<(count / blockSize) {
                let p = src + b * typeSize
                let y = dst + b * blockSize
                let d = readF16(p, 0)
                decode(p, q)
                for k in 0..<8 {
                    scaleI8(q + 32 * k, d * Float(scale(p, k)), y + 32 * k, 32)
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
                let d = readF16(p, 0)
                decode(p, q)
                var sumQX: Float = 0
                for k in 0..<8 {
                    sumQX += Float(scale(p, k)) * dotI8F32(q + 32 * k, xb + 32 * k, 32)
                }
                s += d * sumQX
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
                let d = readF16(p, 0)
                decode(p, q)
                var sumi: Int32 = 0
                for k in 0..<8 {
                    sumi &+= scale(p, k) &* dotI8I8(q + 32 * k, y + Q8_K.qsOffset + 32 * k, 32)
                }
                s += Q8_K.d(y) * d * Float(sumi)
            }
            return s
        }
    }

    public static let kernels = QuantKernels(type: .iq4_xs, dequantize: dequantize, quantize: nil, dotF32: dotF32,
                                             vecDotType: .q8_K, vecDot: vecDot)
}
