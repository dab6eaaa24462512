/// Q3_K (ggml `block_q3_K`, 110 bytes per 256 elements): `{ uint8 hmask[32]; uint8 qs[64]; uint8 scales[12]; half d }`.
/// Sixteen sub-blocks of 16 with 6-bit scales (low 4 bits: nibble j%8 of scales[0..<8], low nibbles first;
/// high 2 bits: bits 2(j/4).. of scales[8 + j%4]), stored +32. Element 128n + 32j + l (j < 4, l < 32) has low
/// bits 2j..2j+1 of qs[32n + l] and loses 4 when bit 4n+j of hmask[l] is clear; sub-block 8n + 2j + l/16;
/// x = d·(sc − 32)·q. Read-only here.
public enum Q3_K {
    public static let blockSize = 256
    public static let typeSize = 110

    /// The signed 6-bit scale of sub-block j (0..<16) from the 12 packed bytes.
    @inline(__always)
    static func scale(_ s: UnsafePointer<UInt8>, _ j: Int) -> Int32 {
        let low = j < 8 ? s[j] & 0xF : s[j - 8] >> 4
        let high = (s[8 + j % 4] >> UInt8(2 * (j / 4))) & 3
        return Int32(low | (high << 4)) - 32
    }

    /// The 256 integer quants of the block at `p`, in element order.
    @inline(__always)
    static func decode(_ p: UnsafeRawPointer, _ q: UnsafeMutablePointer<Int8>) {
        let hm = p.assumingMemoryBound(to: UInt8.self), qs = hm + 32
        for n in 0..<2 {
            for j in 0..<4 {
                let mask = UInt8(1) << UInt8(4 * n + j)
                for l in 0..<32 {
                    let low = Int8(bitPattern: (qs[32 * n + l] >> UInt8(2 * j)) & 3)
                    q[128 * n + 32 * j + l] = low &- (hm[l] & mask != 0 ? 0 : 4)
                }
            }
        }
    }

    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        withQuantScratch { q in
            for b in 0..<(count / blockSize) {
                let p = src + b * typeSize
                let y = dst + b * blockSize
                let d = readF16(p, 108), sc = (p + 96).assumingMemoryBound(to: UInt8.self)
                decode(p, q)
                for k in 0..<16 {
                    scaleI8(q + 16 * k, d * Float(scale(sc, k)), y + 16 * k, 16)
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
                let d = readF16(p, 108), sc = (p + 96).assumingMemoryBound(to: UInt8.self)
                decode(p, q)
                var sumQX: Float = 0
                for k in 0..<16 {
                    sumQX += Float(scale(sc, k)) * dotI8F32(q + 16 * k, xb + 16 * k, 16)
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
                let d = readF16(p, 108), sc = (p + 96).assumingMemoryBound(to: UInt8.self)
                decode(p, q)
                var sumi: Int32 = 0
                for k in 0..<16 {
                    sumi &+= scale(sc, k) &* dotI8I8(q + 16 * k, y + Q8_K.qsOffset + 16 * k, 16)
                }
                s += Q8_K.d(y) * d * Float(sumi)
            }
            return s
        }
    }

    public static let kernels = QuantKernels(type: .q3_K, dequantize: dequantize, quantize: nil, dotF32: dotF32,
                                             vecDotType: .q8_K, vecDot: vecDot)
}
