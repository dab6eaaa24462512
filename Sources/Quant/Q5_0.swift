/// Q5_0 (ggml `block_q5_0`, 22 bytes per 32 elements): `{ half d; uint8 qh[4]; uint8 qs[16] }`.
/// The low 4 bits are nibbles as in Q4_0, bit j of the little-endian u32 qh is bit 4 of element j;
/// x = d·(q − 16).
public enum Q5_0 {
    public static let blockSize = 32
    public static let typeSize = 22

    /// The 32 integer quants of the block at `p`.
    @inline(__always)
    static func decode(_ p: UnsafeRawPointer, _ q: UnsafeMutablePointer<Int8>) {
        decodeQ5(p + 6, UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 2, as: UInt32.self)), q, offset: 16)
    }

    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        Blocks32.Scaled.dequantize(src, dst, count, typeSize: typeSize, decode: decode)
    }

    /// ggml's `quantize_row_q5_0_ref`: d = −(signed value of largest magnitude)/16,
    /// q = min(31, trunc(x/d + 16.5)).
    public static func quantize(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, _ count: Int) {
        for b in 0..<(count / blockSize) {
            let x = src + b * blockSize
            let y = dst + b * typeSize
            var amax: Float = 0, vmax: Float = 0
            for j in 0..<blockSize where amax < abs(x[j]) {
                amax = abs(x[j]); vmax = x[j]
            }
            let d = vmax / -16
            let id: Float = d != 0 ? 1 / d : 0
            writeF16(y, 0, d)
            var qh: UInt32 = 0
            for j in 0..<16 {
                let q0 = UInt8(truncatingIfNeeded: min(31, Int8(truncatingIfNeeded: truncToInt(x[j] * id + 16.5))))
                let q1 = UInt8(truncatingIfNeeded: min(31, Int8(truncatingIfNeeded: truncToInt(x[j + 16] * id + 16.5))))
                y.storeBytes(of: (q0 & 0x0F) | ((q1 & 0x0F) << 4), toByteOffset: 6 + j, as: UInt8.self)
                qh |= UInt32((q0 & 0x10) >> 4) << j
                qh |= UInt32((q1 & 0x10) >> 4) << (j + 16)
            }
            y.storeBytes(of: qh.littleEndian, toByteOffset: 2, as: UInt32.self)
        }
    }

    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        Blocks32.Scaled.dotF32(row, x, count, typeSize: typeSize, decode: decode)
    }

    /// Row · Q8_0 activation (see `Blocks32.Scaled.vecDot`).
    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        Blocks32.Scaled.vecDot(row, xq, count, typeSize: typeSize, decode: decode)
    }

    public static let kernels = QuantKernels(type: .q5_0, dequantize: dequantize, quantize: quantize, dotF32: dotF32,
                                             vecDotType: .q8_0, vecDot: vecDot)
}
