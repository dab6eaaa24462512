/// Plain IEEE single precision: one element per "block", 4 bytes.
public enum F32 {
    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: 4 * count)
    }

    public static func quantize(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, _ count: Int) {
        dst.copyMemory(from: src, byteCount: 4 * count)
    }

    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        dotF32Raw(row, x, count)
    }

    /// The activation is f32 too, so this is `dotF32`.
    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        dotF32Raw(row, xq.assumingMemoryBound(to: Float.self), count)
    }

    public static let kernels = QuantKernels(type: .f32, dequantize: dequantize, quantize: quantize, dotF32: dotF32,
                                             vecDotType: .f32, vecDot: vecDot)
}
