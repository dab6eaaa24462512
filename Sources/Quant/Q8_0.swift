/// Q8_0 (ggml `block_q8_0`, 34 bytes per 32 elements): `{ half d; int8 qs[32] }`, x = d·q.
/// Also the activation format `vecDot` of the 32-element blocks takes.
public enum Q8_0 {
    public static let blockSize = 32
    public static let typeSize = 34

    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        for b in 0..<(count / blockSize) {
            let p = src + b * typeSize
            scaleI8(p + 2, readF16(p, 0), dst + b * blockSize, blockSize)
        }
    }

    /// ggml's `quantize_row_q8_0_ref`: d = amax/127, q = round-half-away(x/d).
    public static func quantize(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, _ count: Int) {
        for b in 0..<(count / blockSize) {
            let x = src + b * blockSize
            let y = dst + b * typeSize
            var amax: Float = 0
            for j in 0..<blockSize { amax = max(amax, abs(x[j])) }
            let d = amax / 127
            let id: Float = d != 0 ? 1 / d : 0
            writeF16(y, 0, d)
            for j in 0..<blockSize {
                y.storeBytes(of: Int8(truncatingIfNeeded: truncToInt((x[j] * id).rounded())), toByteOffset: 2 + j,
                             as: Int8.self)
            }
        }
    }

    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        var s: Float = 0
        for b in 0..<(count / blockSize) {
            let p = row + b * typeSize
            s += readF16(p, 0) * dotI8F32(p + 2, x + b * blockSize, blockSize)
        }
        return s
    }

    /// Row · Q8_0 activation: Σ_blocks d_w·d_x·Σ q_w·q_x, the integer sum exact.
    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        var s: Float = 0
        for b in 0..<(count / blockSize) {
            let p = row + b * typeSize, y = xq + b * typeSize
            s += Float(dotI8I8(p + 2, y + 2, blockSize)) * (readF16(p, 0) * readF16(y, 0))
        }
        return s
    }

    public static let kernels = QuantKernels(type: .q8_0, dequantize: dequantize, quantize: quantize, dotF32: dotF32,
                                             vecDotType: .q8_0, vecDot: vecDot)
}
