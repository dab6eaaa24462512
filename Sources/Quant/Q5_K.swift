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
        KScaleMin.dequantize(src, dst, count, typeSize: typeSize, decode: decode)
    }

    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        KScaleMin.dotF32(row, x, count, typeSize: typeSize, decode: decode)
    }

    /// Row · Q8_K activation (see `KScaleMin.vecDot`).
    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        KScaleMin.vecDot(row, xq, count, typeSize: typeSize, decode: decode)
    }

    public static let kernels = QuantKernels(type: .q5_K, dequantize: dequantize, quantize: nil, dotF32: dotF32,
                                             vecDotType: .q8_K, vecDot: vecDot,
                                             q16DotMulti: QuantKernels.referenceVecDotMulti(Q16_K.dotQ5_K))
}
