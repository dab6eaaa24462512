/// Q4_0 (ggml `block_q4_0`, 18 bytes per 32 elements): `{ half d; uint8 qs[16] }`.
/// Element j < 16 is the low nibble of qs[j], element j+16 its high nibble; x = d·(q − 8).
public enum Q4_0 {
    public static let blockSize = 32
    public static let typeSize = 18

    /// The 32 integer quants of the block at `p`.
    @inline(__always)
    static func decode(_ p: UnsafeRawPointer, _ q: UnsafeMutablePointer<Int8>) {
        decodeNibbles(p + 2, q, offset: 8)
    }

    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        Blocks32.Scaled.dequantize(src, dst, count, typeSize: typeSize, decode: decode)
    }

    /// ggml's `quantize_row_q4_0_ref`: d = −(signed value of largest magnitude)/8, q = min(15, trunc(x/d + 8.5)).
    public static func quantize(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, _ count: Int) {
        for b in 0..<(count / blockSize) {
            let x = src + b * blockSize
            let y = dst + b * typeSize
            var amax: Float = 0, vmax: Float = 0
            for j in 0..<blockSize where amax < abs(x[j]) {
                amax = abs(x[j]); vmax = x[j]
            }
            let d = vmax / -8
            let id: Float = d != 0 ? 1 / d : 0
            writeF16(y, 0, d)
            for j in 0..<16 {
                let q0 = UInt8(truncatingIfNeeded: min(15, Int8(truncatingIfNeeded: truncToInt(x[j] * id + 8.5))))
                let q1 = UInt8(truncatingIfNeeded: min(15, Int8(truncatingIfNeeded: truncToInt(x[j + 16] * id + 8.5))))
                y.storeBytes(of: q0 | (q1 << 4), toByteOffset: 2 + j, as: UInt8.self)
            }
        }
    }

    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        Blocks32.Scaled.dotF32(row, x, count, typeSize: typeSize, decode: decode)
    }

    /// Row · Q8_0 activation (see `Blocks32.Scaled.vecDot`).
    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        Blocks32.Scaled.vecDot(row, xq, count, typeSize: typeSize, decode: decode)
    }

    public static let kernels = QuantKernels(type: .q4_0, dequantize: dequantize, quantize: quantize, dotF32: dotF32,
                                             vecDotType: .q8_0, vecDot: vecDot)
}
