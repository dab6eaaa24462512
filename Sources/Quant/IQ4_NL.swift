/// IQ4_NL (ggml `block_iq4_nl`, 18 bytes per 32 elements): `{ half d; uint8 qs[16] }`, nibbles ordered as in
/// Q4_0, each an index into the non-linear grid `kvalues_iq4nl`; x = d·kvalues[q]. Read-only here.
public enum IQ4_NL {
    public static let blockSize = 32
    public static let typeSize = 18

    /// The 32 integer quants of the block at `p`.
    @inline(__always)
    static func decode(_ p: UnsafeRawPointer, _ q: UnsafeMutablePointer<Int8>) {
        let b = (p + 2).assumingMemoryBound(to: UInt8.self)
        for j in 0..<16 {
            q[j] = kvalueIQ4NL(b[j] & 0x0F)
            q[j + 16] = kvalueIQ4NL(b[j] >> 4)
        }
    }

    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        Blocks32.Scaled.dequantize(src, dst, count, typeSize: typeSize, decode: decode)
    }

    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        Blocks32.Scaled.dotF32(row, x, count, typeSize: typeSize, decode: decode)
    }

    /// Row · Q8_0 activation (see `Blocks32.Scaled.vecDot`).
    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        Blocks32.Scaled.vecDot(row, xq, count, typeSize: typeSize, decode: decode)
    }

    public static let kernels = QuantKernels(type: .iq4_nl, dequantize: dequantize, quantize: nil, dotF32: dotF32,
                                             vecDotType: .q8_0, vecDot: vecDot)
}
