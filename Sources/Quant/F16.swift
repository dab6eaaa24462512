/// IEEE half precision: 2 bytes per element.
public enum F16 {
    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        var i = 0
        while i + 16 <= count {
            let h = src.loadUnaligned(fromByteOffset: 2 * i, as: SIMD16<UInt16>.self)
            UnsafeMutableRawPointer(dst + i).storeBytes(of: widen(h), as: SIMD16<Float>.self)
            i += 16
        }
        while i < count {
            dst[i] = readF16(src, 2 * i)
            i += 1
        }
    }

    /// Rounds to nearest, ties to even (ggml's `GGML_FP32_TO_FP16`, NumPy's `astype(float16)`).
    public static func quantize(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, _ count: Int) {
        for i in 0..<count { writeF16(dst, 2 * i, src[i]) }
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
            s += readF16(row, 2 * i) * x[i]
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
        SIMD16<Float>(unsafeBitCast(h, to: SIMD16<Float16>.self))
    }

    public static let kernels = QuantKernels(type: .f16, dequantize: dequantize, quantize: quantize, dotF32: dotF32,
                                             vecDotType: .f32, vecDot: vecDot)
}
