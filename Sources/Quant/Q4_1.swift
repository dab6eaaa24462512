/// Q4_1 (ggml `block_q4_1`, 20 bytes per 32 elements): `{ half d; half m; uint8 qs[16] }`, x = d·q + m,
/// nibbles ordered as in Q4_0.
public enum Q4_1 {
    public static let blockSize = 32
    public static let typeSize = 20

    /// The 32 integer quants of the block at `p`.
    @inline(__always)
    static func decode(_ p: UnsafeRawPointer, _ q: UnsafeMutablePointer<Int8>) {
        decodeNibbles(p + 4, q, offset: 0)
    }

    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        Blocks32.ScaledWithMin.dequantize(src, dst, count, typeSize: typeSize, decode: decode)
    }

    /// ggml's `quantize_row_q4_1_ref`: d = (max − min)/15, m = min, q = min(15, trunc((x − min)/d + 0.5)).
    public static func quantize(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, _ count: Int) {
        for b in 0..<(count / blockSize) {
            let x = src + b * blockSize
            let y = dst + b * typeSize
            var vmin = Float.greatestFiniteMagnitude, vmax = -Float.greatestFiniteMagnitude
            for j in 0..<blockSize {
                if x[j] < vmin { vmin = x[j] }
                if x[j] > vmax { vmax = x[j] }
            }
            let d = (vmax - vmin) / 15
            let id: Float = d != 0 ? 1 / d : 0
            writeF16(y, 0, d)
            writeF16(y, 2, vmin)
            for j in 0..<16 {
                let q0 = UInt8(truncatingIfNeeded: min(15, Int8(truncatingIfNeeded: truncToInt((x[j] - vmin) * id + 0.5))))
                let q1 = UInt8(truncatingIfNeeded: min(15, Int8(truncatingIfNeeded:
                    truncToInt((x[j + 16] - vmin) * id + 0.5))))
                y.storeBytes(of: q0 | (q1 << 4), toByteOffset: 4 + j, as: UInt8.self)
            }
        }
    }

    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        Blocks32.ScaledWithMin.dotF32(row, x, count, typeSize: typeSize, decode: decode)
    }

    /// Row · Q8_0 activation (see `Blocks32.ScaledWithMin.vecDot`).
    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        Blocks32.ScaledWithMin.vecDot(row, xq, count, typeSize: typeSize, decode: decode)
    }

    public static let kernels = QuantKernels(type: .q4_1, dequantize: dequantize, quantize: quantize, dotF32: dotF32,
                                             vecDotType: .q8_0, vecDot: vecDot)
}
