/// Q8_K (ggml `block_q8_K`, 292 bytes per 256 elements): `{ float d; int8 qs[256]; int16 bsums[16] }`,
/// x = d·q; bsums[i] is the sum of qs[16i..<16i+16]. The activation format of the K-quants and IQ4_XS.
public enum Q8_K {
    public static let blockSize = 256
    public static let typeSize = 292
    static let qsOffset = 4
    static let bsumsOffset = 260

    @inline(__always)
    static func d(_ p: UnsafeRawPointer) -> Float { p.loadUnaligned(as: Float.self) }

    @inline(__always)
    static func bsum(_ p: UnsafeRawPointer, _ i: Int) -> Int32 {
        Int32(Int16(littleEndian: p.loadUnaligned(fromByteOffset: bsumsOffset + 2 * i, as: Int16.self)))
    }

    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        for b in 0..<(count / blockSize) {
            let p = src + b * typeSize
            scaleI8(p + qsOffset, d(p), dst + b * blockSize, blockSize)
        }
    }

    /// ggml's `quantize_row_q8_K_ref`: with `max` the signed value of largest magnitude, iscale = −127/max,
    /// q = min(127, nearest_int(iscale·x)), d = 1/iscale. An all-zero block gets d = 0, q = 0, bsums = 0.
    public static func quantize(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, _ count: Int) {
        for b in 0..<(count / blockSize) {
            let x = src + b * blockSize
            let y = dst + b * typeSize
            var amax: Float = 0, vmax: Float = 0
            for j in 0..<blockSize where abs(x[j]) > amax {
                amax = abs(x[j]); vmax = x[j]
            }
            if amax == 0 {
                (y + qsOffset).initializeMemory(as: UInt8.self, repeating: 0, count: typeSize - qsOffset)
                y.storeBytes(of: Float(0), as: Float.self)
                continue
            }
            let iscale = -127 / vmax
            for j in 0..<blockSize {
                let v = min(127, nearestInt(iscale * x[j]))
                y.storeBytes(of: Int8(truncatingIfNeeded: v), toByteOffset: qsOffset + j, as: Int8.self)
            }
            for g in 0..<16 {
                let s = Int16(truncatingIfNeeded: sumI8(y + qsOffset + 16 * g, 16))
                y.storeBytes(of: s.littleEndian, toByteOffset: bsumsOffset + 2 * g, as: Int16.self)
            }
            y.storeBytes(of: 1 / iscale, as: Float.self)
        }
    }

    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        var s: Float = 0
        for b in 0..<(count / blockSize) {
            let p = row + b * typeSize
            s += d(p) * dotI8F32(p + qsOffset, x + b * blockSize, blockSize)
        }
        return s
    }

    /// Q8_K · Q8_K (not a ggml pairing; here so Q8_K weights can run on the same path).
    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        var s: Float = 0
        for b in 0..<(count / blockSize) {
            let p = row + b * typeSize, q = xq + b * typeSize
            s += Float(dotI8I8(p + qsOffset, q + qsOffset, blockSize)) * (d(p) * d(q))
        }
        return s
    }

    public static let kernels = QuantKernels(type: .q8_K, dequantize: dequantize, quantize: quantize, dotF32: dotF32,
                                             vecDotType: .q8_K, vecDot: vecDot)
}
