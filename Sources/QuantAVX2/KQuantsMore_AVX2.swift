#if arch(x86_64)  // the whole module is x86-64 only; QuantAVX2.kernels(for:) answers nil elsewhere
import _Builtin_intrinsics.intel
import CSIMD
import Quant

// MARK: - Q8_K

/// Q8_K with AVX2 (292 bytes per 256): `{ float d; int8 qs[256]; int16 bsums[16] }`. The activation format of the
/// K- and IQ-quants, and a weight format (paired with itself).
public enum Q8_K_AVX2 {
    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        for b in 0..<(count / 256) {
            let p = src + b * 292
            let d = q8kD(p)
            for c in 0..<8 { store32(ld256(p, 4 + 32 * c), d, dst + b * 256 + 32 * c) }
        }
    }

    /// Bit-identical to `Q8_K.quantize` for finite input: with `max` the first value of largest magnitude,
    /// iscale = −127/max, q = min(127, nearest_int(iscale·x)), d = 1/iscale, bsums the sums of 16.
    public static func quantize(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, _ count: Int) {
        let absMask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff))
        for b in 0..<(count / 256) {
            let x = src + b * 256
            let y = dst + b * 292
            var m = _mm256_setzero_ps()
            for i in 0..<32 { m = _mm256_max_ps(m, _mm256_and_ps(ldF(x, 8 * i), absMask)) }
            var m4 = _mm_max_ps(_mm256_castps256_ps128(m), csimd_extractf128_hi(m))
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4))
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4))
            let amax = _mm_cvtss_f32(m4)
            if amax == 0 {
                (y + 4).initializeMemory(as: UInt8.self, repeating: 0, count: 288)
                y.storeBytes(of: Float(0), as: Float.self)
                continue
            }
            // The first element of that magnitude (the scalar loop keeps the first strict maximum).
            let vam = _mm256_set1_ps(amax)
            var vmax: Float = 0
            for i in 0..<32 {
                let mask = _mm256_movemask_ps(csimd_cmpeq_ps(_mm256_and_ps(ldF(x, 8 * i), absMask), vam))
                if mask != 0 {
                    vmax = x[8 * i + Int(UInt32(mask).trailingZeroBitCount)]
                    break
                }
            }
            let iscale = -127 / vmax
            let vis = _mm256_set1_ps(iscale), top = _mm256_set1_epi32(127)
            let ones = splat8(1)
            var part0 = _mm256_setzero_si256(), part1 = _mm256_setzero_si256()
            var sums = (_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256())
            for c in 0..<8 {
                @inline(__always) func q(_ k: Int) -> V256i {
                    _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(ldF(x, 32 * c + 8 * k), vis)), top)
                }
                let a = _mm256_packs_epi32(q(0), q(1)), e = _mm256_packs_epi32(q(2), q(3))
                let packed = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(a, e), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
                (y + 4 + 32 * c).storeBytes(of: packed, as: V256i.self)
                // lanes 0..3: partial sums of group 2c, lanes 4..7: of group 2c+1
                let s32 = _mm256_madd_epi16(_mm256_maddubs_epi16(ones, packed), splat16(1))
                switch c & 3 {
                case 0: sums.0 = s32
                case 1: sums.1 = s32
                case 2: sums.2 = s32
                default:
                    sums.3 = s32
                    // [g(4k), g(4k+2)...] low lane, [g(4k+1), ...] high lane after two hadds
                    let h = _mm256_hadd_epi32(_mm256_hadd_epi32(sums.0, sums.1), _mm256_hadd_epi32(sums.2, sums.3))
                    if c == 3 { part0 = h } else { part1 = h }
                }
            }
            // part0: low lane g0 g2 g4 g6, high lane g1 g3 g5 g7; part1 the same for g8...g15.
            let p16 = _mm256_packs_epi32(part0, part1)   // low: g0 g2 g4 g6 g8 g10 g12 g14; high: odd groups
            let lo = lo128(p16), hi = hi128(p16)
            (y + 260).storeBytes(of: _mm_unpacklo_epi16(lo, hi), as: V128i.self)
            (y + 276).storeBytes(of: _mm_unpackhi_epi16(lo, hi), as: V128i.self)
            y.storeBytes(of: 1 / iscale, as: Float.self)
        }
    }

    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        var acc = _mm256_setzero_ps()
        for b in 0..<(count / 256) {
            let p = row + b * 292, xb = x + b * 256
            var t = _mm256_setzero_ps()
            for c in 0..<8 { t = _mm256_add_ps(t, dot32(ld256(p, 4 + 32 * c), xb + 32 * c)) }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(q8kD(p)), t, acc)
        }
        return hsum(acc)
    }

    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        var acc = _mm256_setzero_ps()
        for b in 0..<(count / 256) {
            let p = row + b * 292, y = xq + b * 292
            var s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256()
            for c in stride(from: 0, to: 8, by: 2) {
                s0 = _mm256_add_epi32(s0, sumPairs16(mulPairsSS(ld256(p, 4 + 32 * c), ld256(y, 4 + 32 * c))))
                s1 = _mm256_add_epi32(s1, sumPairs16(mulPairsSS(ld256(p, 36 + 32 * c), ld256(y, 36 + 32 * c))))
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(q8kD(p) * q8kD(y)), _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1)), acc)
        }
        return hsum(acc)
    }

    public static var kernels: QuantKernels {
        QuantKernels(type: .q8_K, dequantize: dequantize, quantize: quantize, dotF32: dotF32, vecDotType: .q8_K,
                     vecDot: vecDot, vecDotMulti: QuantKernels.referenceVecDotMulti(vecDot))
    }
}

// MARK: - Q5_K

/// Q5_K with AVX2 (176 bytes per 256): `{ half d; half dmin; uint8 scales[12]; uint8 qh[32]; uint8 qs[128] }`.
public enum Q5_K_AVX2 {
    @inline(__always)
    static func chunk(_ p: UnsafeRawPointer, _ c: Int) -> (V256i, V256i) {
        let mask = splat8(0x0F), one = splat8(1)
        let q4 = ld256(p, 48 + 32 * c), qh = ld256(p, 16)
        let hl = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, Int32(2 * c)), one), 4)
        let hh = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, Int32(2 * c + 1)), one), 4)
        return (_mm256_or_si256(_mm256_and_si256(q4, mask), hl),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4, 4), mask), hh))
    }

    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        for b in 0..<(count / 256) {
            let p = src + b * 176, y = dst + b * 256
            let d = h2f(p, 0), dmin = h2f(p, 2)
            let (sc, m) = kScalesMins(p + 4)
            for c in 0..<4 {
                let (ql, qh) = chunk(p, c)
                let j0 = 2 * c, j1 = 2 * c + 1
                store32(ql, d * Float(byteAt(sc, j0)), minus: dmin * Float(byteAt(m, j0)), y + 32 * j0)
                store32(qh, d * Float(byteAt(sc, j1)), minus: dmin * Float(byteAt(m, j1)), y + 32 * j1)
            }
        }
    }

    /// The one-row case of `dotF32Multi` (identical bits).
    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        var r: Float = 0
        kDotF32Multi(row, x, 0, 1, &r, count, 176, chunk)
        return r
    }

    public static func dotF32Multi(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ xStride: Int, _ nx: Int,
                                   _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        forMultiGroups(nx) { j, n in kDotF32Multi(row, x + j * xStride, xStride, n, out + j, count, 176, chunk) }
    }

    @inline(__always)
    static func multi(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ st: Int, _ nx: Int,
                      _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        kMulti(row, xq, st, nx, out, count, 176, chunk)
    }

    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        var r: Float = 0
        multi(row, xq, 0, 1, &r, count)
        return r
    }

    public static func vecDotMulti(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ xqStride: Int, _ nx: Int,
                                   _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        forMultiGroups(nx) { j, n in multi(row, xq + j * xqStride, xqStride, n, out + j, count) }
    }

    public static var kernels: QuantKernels {
        QuantKernels(type: .q5_K, dequantize: dequantize, quantize: nil, dotF32: dotF32, vecDotType: .q8_K,
                     vecDot: vecDot, vecDotMulti: vecDotMulti, dotF32Multi: dotF32Multi,
                     q16DotMulti: Q16_AVX2.q5K, q16DotRows: Q16_AVX2.q5KRows)
    }
}

// MARK: - Q3_K

/// Q3_K with AVX2 (110 bytes per 256): `{ uint8 hmask[32]; uint8 qs[64]; uint8 scales[12]; half d }`.
public enum Q3_K_AVX2 {
    /// The 16 signed scales (sc − 32) as int8 lanes.
    @inline(__always)
    static func scales(_ p: UnsafeRawPointer) -> V128i {
        let u0 = p.loadUnaligned(fromByteOffset: 96, as: UInt32.self)
        let u1 = p.loadUnaligned(fromByteOffset: 100, as: UInt32.self)
        let u2 = p.loadUnaligned(fromByteOffset: 104, as: UInt32.self)
        let s0 = (u0 & 0x0f0f_0f0f) | ((u2 & 0x0303_0303) << 4)
        let s1 = (u1 & 0x0f0f_0f0f) | (((u2 >> 2) & 0x0303_0303) << 4)
        let s2 = ((u0 >> 4) & 0x0f0f_0f0f) | (((u2 >> 4) & 0x0303_0303) << 4)
        let s3 = ((u1 >> 4) & 0x0f0f_0f0f) | (((u2 >> 6) & 0x0303_0303) << 4)
        let v = V128i(Int64(bitPattern: UInt64(s0) | (UInt64(s1) << 32)), Int64(bitPattern: UInt64(s2) | (UInt64(s3) << 32)))
        return _mm_sub_epi8(v, _mm_set1_epi8(32))
    }

    /// Elements 128n + 32j ..< +32: the low two bits (0...3) and the 4 to subtract where the hmask bit is clear.
    @inline(__always)
    static func parts(_ p: UnsafeRawPointer, _ n: Int, _ j: Int) -> (low: V256i, sub: V256i) {
        let one = splat8(1)
        let low = _mm256_and_si256(_mm256_srli_epi16(ld256(p, 32 + 32 * n), Int32(2 * j)), splat8(3))
        let hbit = _mm256_and_si256(_mm256_srli_epi16(ld256(p, 0), Int32(4 * n + j)), one)
        return (low, _mm256_slli_epi16(_mm256_xor_si256(hbit, one), 2))
    }

    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        for b in 0..<(count / 256) {
            let p = src + b * 110, y = dst + b * 256
            let d = h2f(p, 108)
            let sc = scales(p)
            for n in 0..<2 {
                for j in 0..<4 {
                    let (low, sub) = parts(p, n, j)
                    let q = _mm256_sub_epi8(low, sub)
                    let k = 8 * n + 2 * j
                    let o = 128 * n + 32 * j
                    store16(lo128(q), d * Float(Int8(truncatingIfNeeded: lane8(sc, k))), y + o)
                    store16(hi128(q), d * Float(Int8(truncatingIfNeeded: lane8(sc, k + 1))), y + o + 16)
                }
            }
        }
    }

    @inline(__always) static func lane8(_ v: V128i, _ k: Int) -> UInt8 {
        UInt8(truncatingIfNeeded: UInt64(bitPattern: k < 8 ? v[0] : v[1]) >> UInt64(8 * (k & 7)))
    }

    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        var acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps()
        for b in 0..<(count / 256) {
            let p = row + b * 110, xb = x + b * 256
            let d = h2f(p, 108)
            let sc = scales(p)
            for n in 0..<2 {
                for j in 0..<4 {
                    let (low, sub) = parts(p, n, j)
                    let k = 8 * n + 2 * j
                    let (ta, tb) = dot16x2(_mm256_sub_epi8(low, sub), xb + 128 * n + 32 * j)
                    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d * Float(Int8(truncatingIfNeeded: lane8(sc, k)))), ta, acc0)
                    acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d * Float(Int8(truncatingIfNeeded: lane8(sc, k + 1)))), tb, acc1)
                }
            }
        }
        return hsum(_mm256_add_ps(acc0, acc1))
    }

    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        var acc = _mm256_setzero_ps()
        for b in 0..<(count / 256) {
            let p = row + b * 110, y = xq + b * 292
            let sc = scales(p)
            var s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256()
            for n in 0..<2 {
                for j in 0..<4 {
                    let (low, sub) = parts(p, n, j)
                    let y8 = ld256(y, 4 + 128 * n + 32 * j)
                    let pr = _mm256_sub_epi16(_mm256_maddubs_epi16(low, y8), _mm256_maddubs_epi16(sub, y8))
                    let t = _mm256_madd_epi16(pr, scalePair(sc, 4 * n + j))
                    if j & 1 == 0 { s0 = _mm256_add_epi32(s0, t) } else { s1 = _mm256_add_epi32(s1, t) }
                }
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(q8kD(y) * h2f(p, 108)), _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1)), acc)
        }
        return hsum(acc)
    }

    public static var kernels: QuantKernels {
        QuantKernels(type: .q3_K, dequantize: dequantize, quantize: nil, dotF32: dotF32, vecDotType: .q8_K,
                     vecDot: vecDot, vecDotMulti: QuantKernels.referenceVecDotMulti(vecDot))
    }
}

// MARK: - Q2_K

/// Q2_K with AVX2 (84 bytes per 256): `{ uint8 scales[16]; uint8 qs[64]; half d; half dmin }`.
public enum Q2_K_AVX2 {
    @inline(__always)
    static func quants(_ p: UnsafeRawPointer, _ n: Int, _ j: Int) -> V256i {
        _mm256_and_si256(_mm256_srli_epi16(ld256(p, 16 + 32 * n), Int32(2 * j)), splat8(3))
    }

    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        for b in 0..<(count / 256) {
            let p = src + b * 84, y = dst + b * 256
            let d = h2f(p, 80), dmin = h2f(p, 82)
            let sc = p.assumingMemoryBound(to: UInt8.self)
            for n in 0..<2 {
                for j in 0..<4 {
                    let q = quants(p, n, j)
                    let k = 8 * n + 2 * j
                    let o = 128 * n + 32 * j
                    store16(lo128(q), d * Float(sc[k] & 0xF), minus: dmin * Float(sc[k] >> 4), y + o)
                    store16(hi128(q), d * Float(sc[k + 1] & 0xF), minus: dmin * Float(sc[k + 1] >> 4), y + o + 16)
                }
            }
        }
    }

    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        var acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), accm = _mm256_setzero_ps()
        for b in 0..<(count / 256) {
            let p = row + b * 84, xb = x + b * 256
            let d = h2f(p, 80), dmin = h2f(p, 82)
            let sc = p.assumingMemoryBound(to: UInt8.self)
            for n in 0..<2 {
                for j in 0..<4 {
                    let k = 8 * n + 2 * j
                    let xs = xb + 128 * n + 32 * j
                    let (ta, tb) = dot16x2(quants(p, n, j), xs)
                    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d * Float(sc[k] & 0xF)), ta, acc0)
                    acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d * Float(sc[k + 1] & 0xF)), tb, acc1)
                    accm = _mm256_fmadd_ps(_mm256_set1_ps(dmin * Float(sc[k] >> 4)), _mm256_add_ps(ldF(xs, 0), ldF(xs, 8)), accm)
                    accm = _mm256_fmadd_ps(_mm256_set1_ps(dmin * Float(sc[k + 1] >> 4)), _mm256_add_ps(ldF(xs, 16), ldF(xs, 24)), accm)
                }
            }
        }
        return hsum(_mm256_sub_ps(_mm256_add_ps(acc0, acc1), accm))
    }

    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        var acc = _mm256_setzero_ps()
        for b in 0..<(count / 256) {
            let p = row + b * 84, y = xq + b * 292
            let raw = ld128(p, 0)
            let sc = _mm_and_si128(raw, _mm_set1_epi8(0x0F))
            let mins = _mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0F))
            let summ = _mm256_madd_epi16(_mm256_cvtepu8_epi16(mins), ld256(y, 260))
            var s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256()
            for n in 0..<2 {
                for j in 0..<4 {
                    let pr = _mm256_maddubs_epi16(quants(p, n, j), ld256(y, 4 + 128 * n + 32 * j))
                    let t = _mm256_madd_epi16(pr, scalePair(sc, 4 * n + j))
                    if j & 1 == 0 { s0 = _mm256_add_epi32(s0, t) } else { s1 = _mm256_add_epi32(s1, t) }
                }
            }
            let dx = q8kD(y)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(dx * h2f(p, 80)), _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1)), acc)
            acc = _mm256_fnmadd_ps(_mm256_set1_ps(dx * h2f(p, 82)), _mm256_cvtepi32_ps(summ), acc)
        }
        return hsum(acc)
    }

    public static var kernels: QuantKernels {
        QuantKernels(type: .q2_K, dequantize: dequantize, quantize: nil, dotF32: dotF32, vecDotType: .q8_K,
                     vecDot: vecDot, vecDotMulti: QuantKernels.referenceVecDotMulti(vecDot))
    }
}

// MARK: - IQ4_XS

/// IQ4_XS with AVX2 (136 bytes per 256): `{ half d; uint16 scales_h; uint8 scales_l[4]; uint8 qs[128] }`.
public enum IQ4_XS_AVX2 {
    @inline(__always)
    static func scale(_ p: UnsafeRawPointer, _ ib: Int) -> Int32 {
        let sh = UInt32(p.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
        let sl = UInt32(p.load(fromByteOffset: 4 + ib / 2, as: UInt8.self))
        return Int32((sl >> UInt32(4 * (ib % 2))) & 0xF | ((sh >> UInt32(2 * ib)) & 3) << 4) - 32
    }

    /// The 32 grid values of sub-block ib.
    @inline(__always)
    static func sub(_ p: UnsafeRawPointer, _ ib: Int) -> V256i {
        _mm256_shuffle_epi8(iq4nlTable(), nibbles32(p, 8 + 16 * ib))
    }

    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        for b in 0..<(count / 256) {
            let p = src + b * 136
            let d = h2f(p, 0)
            for ib in 0..<8 { store32(sub(p, ib), d * Float(scale(p, ib)), dst + b * 256 + 32 * ib) }
        }
    }

    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        var acc = _mm256_setzero_ps()
        for b in 0..<(count / 256) {
            let p = row + b * 136
            let d = h2f(p, 0)
            for ib in 0..<8 {
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d * Float(scale(p, ib))), dot32(sub(p, ib), x + b * 256 + 32 * ib), acc)
            }
        }
        return hsum(acc)
    }

    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        var acc = _mm256_setzero_ps()
        for b in 0..<(count / 256) {
            let p = row + b * 136, y = xq + b * 292
            var s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256()
            for ib in stride(from: 0, to: 8, by: 2) {
                let pa = mulPairsSS(sub(p, ib), ld256(y, 4 + 32 * ib))
                let pb = mulPairsSS(sub(p, ib + 1), ld256(y, 36 + 32 * ib))
                s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(pa, splat16(Int16(truncatingIfNeeded: scale(p, ib)))))
                s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(pb, splat16(Int16(truncatingIfNeeded: scale(p, ib + 1)))))
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(q8kD(y) * h2f(p, 0)), _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1)), acc)
        }
        return hsum(acc)
    }

    public static var kernels: QuantKernels {
        QuantKernels(type: .iq4_xs, dequantize: dequantize, quantize: nil, dotF32: dotF32, vecDotType: .q8_K,
                     vecDot: vecDot, vecDotMulti: QuantKernels.referenceVecDotMulti(vecDot))
    }
}

#endif
