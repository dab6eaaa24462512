/// Q6_K (ggml `block_q6_K`, 210 bytes per 256 elements): `{ uint8 ql[128]; uint8 qh[64]; int8 scales[16]; half d }`.
/// Sixteen sub-blocks of 16 with an int8 scale each; x = d·scales[e/16]·(q − 32) with q 6 bits. In each half of
/// 128 elements (ql += 64, qh += 32), for l in 0..<32: element l takes the low nibble of ql[l] and bits 0-1 of
/// qh[l], element l+32 the low nibble of ql[l+32] and bits 2-3, element l+64 the high nibble of ql[l] and bits
/// 4-5, element l+96 the high nibble of ql[l+32] and bits 6-7.
public enum Q6_K {
    public static let blockSize = 256
    public static let typeSize = 210

    /// The 256 signed quants (q − 32) of the block at `p`, in element order.
    @inline(__always)
    static func decode(_ p: UnsafeRawPointer, _ q: UnsafeMutablePointer<Int8>) {
        let ql = p.assumingMemoryBound(to: UInt8.self), qh = ql + 128
        for h in 0..<2 {
            for l in 0..<32 {
                let a = ql[64 * h + l], b = ql[64 * h + l + 32], hb = qh[32 * h + l]
                q[128 * h + l] = Int8(bitPattern: (a & 0x0F) | ((hb & 0x03) << 4)) &- 32
                q[128 * h + l + 32] = Int8(bitPattern: (b & 0x0F) | ((hb & 0x0C) << 2)) &- 32
                q[128 * h + l + 64] = Int8(bitPattern: (a >> 4) | (hb & 0x30)) &- 32
                q[128 * h + l + 96] = Int8(bitPattern: (b >> 4) | ((hb & 0xC0) >> 2)) &- 32
            }
        }
    }

    @inline(__always)
    static func scale(_ p: UnsafeRawPointer, _ i: Int) -> Int8 {
        p.load(fromByteOffset: 192 + i, as: Int8.self)
    }

    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        withQuantScratch { q in
            for b in 0..<(count / blockSize) {
                let p = src + b * typeSize
                let y = dst + b * blockSize
                let d = readF16(p, 208)
                decode(p, q)
                for j in 0..<16 { scaleI8(q + 16 * j, d * Float(scale(p, j)), y + 16 * j, 16) }
            }
        }
    }

    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        withQuantScratch { q in
            var s: Float = 0
            for b in 0..<(count / blockSize) {
                let p = row + b * typeSize
                let xb = x + b * blockSize
                decode(p, q)
                var sumQX: Float = 0
                for j in 0..<16 { sumQX += Float(scale(p, j)) * dotI8F32(q + 16 * j, xb + 16 * j, 16) }
                s += readF16(p, 208) * sumQX
            }
            return s
        }
    }

    /// Row · Q8_K activation: d·d_x·Σ_j scales[j]·Σ q·q_x, the inner sums exact integers.
    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        withQuantScratch { q in
            var s: Float = 0
            for b in 0..<(count / blockSize) {
                let p = row + b * typeSize
                let y = xq + b * Q8_K.typeSize
                decode(p, q)
                var sumi: Int32 = 0
                for j in 0..<16 {
                    sumi &+= Int32(scale(p, j)) &* dotI8I8(q + 16 * j, y + Q8_K.qsOffset + 16 * j, 16)
                }
                s += Q8_K.d(y) * readF16(p, 208) * Float(sumi)
            }
            return s
        }
    }

    /// ggml's `quantize_row_q6_K_ref`: per sub-block of 16 a `make_qx_quants(16, 32, rmse_type 1)` fit, the 16
    /// scales quantized to int8 against the one of largest magnitude (iscale = −128/that), then the quants
    /// recomputed from the stored scales.
    public static func quantize(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, _ count: Int) {
        withUnsafeTemporaryAllocation(of: Int8.self, capacity: 256) { lbuf in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 16) { sbuf in
                for b in 0..<(count / blockSize) {
                    quantizeBlock(src + b * blockSize, dst + b * typeSize, lbuf.baseAddress!, sbuf.baseAddress!)
                }
            }
        }
    }

    static func quantizeBlock(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer, _ L: UnsafeMutablePointer<Int8>,
                              _ scales: UnsafeMutablePointer<Float>) {
        var maxScale: Float = 0, maxAbsScale: Float = 0
        for ib in 0..<16 {
            let scale = makeQXQuants(16, 32, x + 16 * ib, L + 16 * ib)
            scales[ib] = scale
            if abs(scale) > maxAbsScale {
                maxAbsScale = abs(scale)
                maxScale = scale
            }
        }
        if maxAbsScale < 1e-15 {
            y.initializeMemory(as: UInt8.self, repeating: 0, count: typeSize)
            return
        }
        let iscale = -128 / maxScale
        writeF16(y, 208, 1 / iscale)
        for ib in 0..<16 {
            y.storeBytes(of: Int8(truncatingIfNeeded: min(127, nearestInt(iscale * scales[ib]))), toByteOffset: 192 + ib,
                         as: Int8.self)
        }
        let dAll = readF16(y, 208)
        for j in 0..<16 {
            let d = dAll * Float(scale(y, j))
            if d == 0 { continue }
            for i in 0..<16 {
                L[16 * j + i] = Int8(truncatingIfNeeded: max(-32, min(31, nearestInt(x[16 * j + i] / d))) + 32)
            }
        }
        let ql = y.assumingMemoryBound(to: UInt8.self), qh = ql + 128
        for h in 0..<2 {
            let Lh = L + 128 * h
            for l in 0..<32 {
                let q1 = UInt8(bitPattern: Lh[l]), q2 = UInt8(bitPattern: Lh[l + 32])
                let q3 = UInt8(bitPattern: Lh[l + 64]), q4 = UInt8(bitPattern: Lh[l + 96])
                ql[64 * h + l] = (q1 & 0xF) | ((q3 & 0xF) << 4)
                ql[64 * h + l + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4)
                qh[32 * h + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
            }
        }
    }

    public static let kernels = QuantKernels(type: .q6_K, dequantize: dequantize, quantize: quantize, dotF32: dotF32,
                                             vecDotType: .q8_K, vecDot: vecDot,
                                             q16DotMulti: QuantKernels.referenceVecDotMulti(Q16_K.dotQ6_K))
}
