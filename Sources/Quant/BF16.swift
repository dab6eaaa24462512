/// bfloat16: the top half of an f32, 2 bytes per element.
public enum BF16 {
    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        var i = 0
        while i + 16 <= count {
            let h = src.loadUnaligned(fromByteOffset: 2 * i, as: SIMD16<UInt16>.self)
            UnsafeMutableRawPointer(dst + i).storeBytes(of: widen(h), as: SIMD16<Float>.self)
            i += 16
        }
        while i < count {
            dst[i] = Float(bitPattern: UInt32(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) << 16)
            i += 1
        }
    }

    /// ggml's `ggml_compute_fp32_to_bf16`: NaN stays a (quiet) NaN, everything else rounds to nearest even.
    public static func quantize(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, _ count: Int) {
        for i in 0..<count {
            dst.storeBytes(of: fromF32(src[i]), toByteOffset: 2 * i, as: UInt16.self)
        }
    }

    @inline(__always)
    static func fromF32(_ f: Float) -> UInt16 {
        let u = f.bitPattern
        if u & 0x7fff_ffff > 0x7f80_0000 {
            return UInt16(truncatingIfNeeded: (u >> 16) | 64)
        }
        return UInt16(truncatingIfNeeded: (u &+ (0x7fff &+ ((u >> 16) & 1))) >> 16)
    }

    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        var acc = SIMD16<Float>()
        var i = 0
        while i + 16 <= count {
            acc += widen(row.loadUnaligned(fromByteOffset: 2 * i, as: SIMD16<UInt16>.self)) * loadX16(x, i)
            i += 16
        }
        var s = acc.sum()
        while i < count {
            s += Float(bitPattern: UInt32(row.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) << 16) * x[i]
            i += 1
        }
        return s
    }

    /// The activation is f32 (`vecDotType == .f32`), so this is `dotF32`.
    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        dotF32(row, xq.assumingMemoryBound(to: Float.self), count)
    }

    @inline(__always)
    static func widen(_ h: SIMD16<UInt16>) -> SIMD16<Float> {
        unsafeBitCast(SIMD16<UInt32>(truncatingIfNeeded: h) &<< 16, to: SIMD16<Float>.self)
    }

    public static let kernels = QuantKernels(type: .bf16, dequantize: dequantize, quantize: quantize, dotF32: dotF32,
                                             vecDotType: .f32, vecDot: vecDot)
}
