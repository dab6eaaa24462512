/// Q4_K (ggml `block_q4_K`, 144 bytes per 256 elements): `{ half d; half dmin; uint8 scales[12]; uint8 qs[128] }`.
/// Eight sub-blocks of 32 with 6-bit scale sc and min m each (packed as in `scaleMinK4`). Elements 64c..<64c+32
/// are the low nibbles of qs[32c..<32c+32] (sub-block 2c), elements 64c+32..<64c+64 their high nibbles
/// (sub-block 2c+1); x = d·sc·q − dmin·m.
public enum Q4_K {
    public static let blockSize = 256
    public static let typeSize = 144

    /// The 256 quants of the block at `p`, in element order.
    @inline(__always)
    static func decode(_ p: UnsafeRawPointer, _ q: UnsafeMutablePointer<Int8>) {
        let qs = (p + 16).assumingMemoryBound(to: UInt8.self)
        for c in 0..<4 {
            for l in 0..<32 {
                let v = qs[32 * c + l]
                q[64 * c + l] = Int8(bitPattern: v & 0x0F)
                q[64 * c + 32 + l] = Int8(bitPattern: v >> 4)
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

    /// ggml's `quantize_row_q4_K_ref` (no importance weights): per sub-block of 32 a `make_qkx2_quants` fit with
    /// weights rms(x) + |x|, the scales and mins quantized to 6 bits against their maxima, then the quants
    /// recomputed from the stored (rounded) scales.
    public static func quantize(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, _ count: Int) {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 256 + 32) { lbuf in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 32 + 16) { fbuf in
                let L = lbuf.baseAddress!, laux = L + 256
                let weights = fbuf.baseAddress!, scales = weights + 32, mins = scales + 8
                for b in 0..<(count / blockSize) {
                    quantizeBlock(src + b * blockSize, dst + b * typeSize, L, laux, weights, scales, mins)
                }
            }
        }
    }

    static func quantizeBlock(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, _ L: UnsafeMutablePointer<UInt8>,
                              _ laux: UnsafeMutablePointer<UInt8>, _ weights: UnsafeMutablePointer<Float>,
                              _ scales: UnsafeMutablePointer<Float>, _ mins: UnsafeMutablePointer<Float>) {
        var maxScale: Float = 0, maxMin: Float = 0
        for j in 0..<8 {
            let xs = x + 32 * j
            var sumX2: Float = 0
            for l in 0..<32 { sumX2 += xs[l] * xs[l] }
            let avX = (sumX2 / 32).squareRoot()
            for l in 0..<32 { weights[l] = avX + abs(xs[l]) }
            let (scale, mn) = makeQKX2Quants(32, 15, xs, weights, L + 32 * j, laux, rmin: -1, rdelta: 0.1, nstep: 20)
            scales[j] = scale
            mins[j] = mn
            if scale > maxScale { maxScale = scale }
            if mn > maxMin { maxMin = mn }
        }
        let invScale: Float = maxScale > 0 ? 63 / maxScale : 0
        let invMin: Float = maxMin > 0 ? 63 / maxMin : 0
        let sc = (y + 4).assumingMemoryBound(to: UInt8.self)
        for j in 0..<8 {
            let ls = min(63, UInt8(truncatingIfNeeded: nearestInt(invScale * scales[j])))
            let lm = min(63, UInt8(truncatingIfNeeded: nearestInt(invMin * mins[j])))
            if j < 4 {
                sc[j] = ls
                sc[j + 4] = lm
            } else {
                sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
                sc[j - 4] |= (ls >> 4) << 6
                sc[j] |= (lm >> 4) << 6
            }
        }
        writeF16(y, 0, maxScale / 63)
        writeF16(y, 2, maxMin / 63)
        let dAll = readF16(y, 0), mAll = readF16(y, 2)
        for j in 0..<8 {
            let (s, m) = scaleMinK4(j, y + 4)
            let d = dAll * Float(s)
            if d == 0 { continue }
            let dm = mAll * Float(m)
            for i in 0..<32 {
                L[32 * j + i] = UInt8(truncatingIfNeeded: max(0, min(15, nearestInt((x[32 * j + i] + dm) / d))))
            }
        }
        let qs = (y + 16).assumingMemoryBound(to: UInt8.self)
        for c in 0..<4 {
            for l in 0..<32 { qs[32 * c + l] = L[64 * c + l] | (L[64 * c + l + 32] << 4) }
        }
    }

    public static let kernels = QuantKernels(type: .q4_K, dequantize: dequantize, quantize: quantize, dotF32: dotF32,
                                             vecDotType: .q8_K, vecDot: vecDot,
                                             q16DotMulti: QuantKernels.referenceVecDotMulti(Q16_K.dotQ4_K))
}
