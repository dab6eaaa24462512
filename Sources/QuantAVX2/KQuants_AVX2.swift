#if arch(x86_64)  // the whole module is x86-64 only; QuantAVX2.kernels(for:) answers nil elsewhere
import _Builtin_intrinsics.intel
import CSIMD
import Quant

// The 256-element K-quants (and Q8_K as a weight format), paired with Q8_K activations:
// `{ float d; int8 qs[256]; int16 bsums[16] }`, 292 bytes.

@inline(__always) func q8kD(_ y: UnsafeRawPointer) -> Float { y.loadUnaligned(as: Float.self) }

/// The eight 6-bit scales (bytes of `.sc`) and mins (bytes of `.m`) of a Q4_K / Q5_K block from its 12 packed
/// bytes at `p` (ggml's `get_scale_min_k4` for all j at once).
@inline(__always)
func kScalesMins(_ p: UnsafeRawPointer) -> (sc: UInt64, m: UInt64) {
    let u0 = p.loadUnaligned(as: UInt32.self)
    let u1 = p.loadUnaligned(fromByteOffset: 4, as: UInt32.self)
    let u2 = p.loadUnaligned(fromByteOffset: 8, as: UInt32.self)
    let sLo = u0 & 0x3f3f_3f3f
    let sHi = (u2 & 0x0f0f_0f0f) | (((u0 >> 6) & 0x0303_0303) << 4)
    let mLo = u1 & 0x3f3f_3f3f
    let mHi = ((u2 >> 4) & 0x0f0f_0f0f) | (((u1 >> 6) & 0x0303_0303) << 4)
    return (UInt64(sLo) | (UInt64(sHi) << 32), UInt64(mLo) | (UInt64(mHi) << 32))
}

@inline(__always) func byteAt(_ v: UInt64, _ j: Int) -> UInt8 { UInt8(truncatingIfNeeded: v >> UInt64(8 * j)) }

/// Shuffle mask broadcasting int16 element k of each 128-bit lane.
@inline(__always) func bcast16Shuffle(_ k: Int) -> V256i {
    let v = Int64((2 * k) | ((2 * k + 1) << 8)) * 0x0001_0001_0001_0001
    return V256i(v, v, v, v)
}

/// Σ_j mins[j]·(bsum[2j] + bsum[2j+1]) as 4 int32 lanes, mins the 8 bytes of `m`.
@inline(__always)
func minsDotBsums(_ m: UInt64, _ y: UnsafeRawPointer) -> V128i {
    let mins16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(Int64(bitPattern: m)))
    let pairs = _mm_hadd_epi16(ld128(y, 260), ld128(y, 276))
    return _mm_madd_epi16(mins16, pairs)
}

@inline(__always) func sum32F(_ x: UnsafePointer<Float>) -> V8f {
    _mm256_add_ps(_mm256_add_ps(ldF(x, 0), ldF(x, 8)), _mm256_add_ps(ldF(x, 16), ldF(x, 24)))
}

/// Splits 32 int8 lanes into the Σ q·x of lanes 0..<16 and of lanes 16..<32.
@inline(__always)
func dot16x2(_ q: V256i, _ x: UnsafePointer<Float>) -> (V8f, V8f) {
    let a = _mm256_fmadd_ps(i8ToF(q, 1), ldF(x, 8), _mm256_mul_ps(i8ToF(q, 0), ldF(x, 0)))
    let b = _mm256_fmadd_ps(i8ToF(q, 3), ldF(x, 24), _mm256_mul_ps(i8ToF(q, 2), ldF(x, 16)))
    return (a, b)
}

/// Row · Q8_K for Q4_K / Q5_K against `nx` (constant after inlining, 1...4) activation rows:
/// d_x·(d·Σ_j sc_j·Σ q·q_x − dmin·Σ_j m_j·Σ q_x), the integer sums exact. `chunk(p, c)` gives the unsigned
/// quants of sub-blocks 2c and 2c+1.
@inline(__always)
func kMulti(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ st: Int, _ nx: Int,
            _ out: UnsafeMutablePointer<Float>, _ count: Int, _ ts: Int,
            _ chunk: (UnsafeRawPointer, Int) -> (V256i, V256i)) {
    var acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0
    for b in 0..<(count / 256) {
        let p = row + b * ts, y = xq + b * 292
        prefetchBlock(p, ts)
        let (sc, m) = kScalesMins(p + 4)
        let s8 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(Int64(bitPattern: sc)))
        let sc16 = _mm256_set_m128i(s8, s8)
        var s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0
        for c in 0..<4 {
            let (ql, qh) = chunk(p, c)
            let sl = _mm256_shuffle_epi8(sc16, bcast16Shuffle(2 * c))
            let sh = _mm256_shuffle_epi8(sc16, bcast16Shuffle(2 * c + 1))
            @inline(__always) func one(_ y: UnsafeRawPointer, _ s: inout V256i) {
                let pl = _mm256_madd_epi16(sl, _mm256_maddubs_epi16(ql, ld256(y, 4 + 64 * c)))
                let ph = _mm256_madd_epi16(sh, _mm256_maddubs_epi16(qh, ld256(y, 36 + 64 * c)))
                s = _mm256_add_epi32(s, _mm256_add_epi32(pl, ph))
            }
            one(y, &s0)
            if nx > 1 { one(y + st, &s1) }
            if nx > 2 { one(y + 2 * st, &s2) }
            if nx > 3 { one(y + 3 * st, &s3) }
        }
        let d = h2f(p, 0), dmin = h2f(p, 2)
        @inline(__always) func fin(_ y: UnsafeRawPointer, _ s: V256i, _ acc: inout V8f) {
            let dx = q8kD(y)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(dx * d), _mm256_cvtepi32_ps(s), acc)
            let mm = _mm256_zextps128_ps256(_mm_cvtepi32_ps(minsDotBsums(m, y)))
            acc = _mm256_fnmadd_ps(_mm256_set1_ps(dx * dmin), mm, acc)
        }
        fin(y, s0, &acc0)
        if nx > 1 { fin(y + st, s1, &acc1) }
        if nx > 2 { fin(y + 2 * st, s2, &acc2) }
        if nx > 3 { fin(y + 3 * st, s3, &acc3) }
    }
    out[0] = hsum(acc0)
    if nx > 1 { out[1] = hsum(acc1) }
    if nx > 2 { out[2] = hsum(acc2) }
    if nx > 3 { out[3] = hsum(acc3) }
}

/// Row · `nx` f32 rows for Q4_K / Q5_K: w = d·sc_j·q − dmin·m_j (q·d·sc is exact, so w is the scalar dequantized
/// value), `chunk(p, c)` the unsigned quants of sub-blocks 2c and 2c+1.
@inline(__always)
func kDotF32Multi(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ xs: Int, _ nx: Int,
                  _ out: UnsafeMutablePointer<Float>, _ count: Int, _ ts: Int,
                  _ chunk: (UnsafeRawPointer, Int) -> (V256i, V256i)) {
    var acc = zeroAcc4()
    for b in 0..<(count / 256) {
        let p = row + b * ts, xb = x + 256 * b
        csimd_prefetch(p + 1024)  // weights stream from DRAM in decode
        let (sc, m) = kScalesMins(p + 4)
        let dsc = _mm256_mul_ps(u8x8ToF(sc), _mm256_set1_ps(h2f(p, 0)))
        let dm = _mm256_mul_ps(u8x8ToF(m), _mm256_set1_ps(h2f(p, 2)))
        for c in 0..<4 {
            let (ql, qh) = chunk(p, c)
            @inline(__always) func w(_ q: V256i, _ j: Int) -> W32 {
                let s = lane(dsc, j), mm = lane(dm, j)
                return (_mm256_fmsub_ps(i8ToF(q, 0), s, mm), _mm256_fmsub_ps(i8ToF(q, 1), s, mm),
                        _mm256_fmsub_ps(i8ToF(q, 2), s, mm), _mm256_fmsub_ps(i8ToF(q, 3), s, mm))
            }
            fmaRows(w(ql, 2 * c), xb + 64 * c, xs, nx, &acc)
            fmaRows(w(qh, 2 * c + 1), xb + 64 * c + 32, xs, nx, &acc)
        }
    }
    storeRows(acc, nx, out)
}

// MARK: - Q4_K

/// Q4_K with AVX2 (144 bytes per 256): `{ half d; half dmin; uint8 scales[12]; uint8 qs[128] }`.
public enum Q4_K_AVX2 {
    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        let mask = splat8(0x0F)
        for b in 0..<(count / 256) {
            let p = src + b * 144, y = dst + b * 256
            let d = h2f(p, 0), dmin = h2f(p, 2)
            let (sc, m) = kScalesMins(p + 4)
            for c in 0..<4 {
                let q4 = ld256(p, 16 + 32 * c)
                let j0 = 2 * c, j1 = 2 * c + 1
                store32(_mm256_and_si256(q4, mask), d * Float(byteAt(sc, j0)), minus: dmin * Float(byteAt(m, j0)),
                        y + 32 * j0)
                store32(_mm256_and_si256(_mm256_srli_epi16(q4, 4), mask), d * Float(byteAt(sc, j1)),
                        minus: dmin * Float(byteAt(m, j1)), y + 32 * j1)
            }
        }
    }

    /// The one-row case of `dotF32Multi` (identical bits).
    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        var r: Float = 0
        kDotF32Multi(row, x, 0, 1, &r, count, 144, chunk)
        return r
    }

    public static func dotF32Multi(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ xStride: Int, _ nx: Int,
                                   _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        forMultiGroups(nx) { j, n in kDotF32Multi(row, x + j * xStride, xStride, n, out + j, count, 144, chunk) }
    }

    /// Row · Q8_K activation (the one-row case of `vecDotMulti`, so both give identical bits).
    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        var r: Float = 0
        multi(row, xq, 0, 1, &r, count)
        return r
    }

    @inline(__always)
    static func chunk(_ p: UnsafeRawPointer, _ c: Int) -> (V256i, V256i) {
        let mask = splat8(0x0F)
        let q4 = ld256(p, 16 + 32 * c)
        return (_mm256_and_si256(q4, mask), _mm256_and_si256(_mm256_srli_epi16(q4, 4), mask))
    }

    @inline(__always)
    static func multi(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ st: Int, _ nx: Int,
                      _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        kMulti(row, xq, st, nx, out, count, 144, chunk)
    }

    public static func vecDotMulti(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ xqStride: Int, _ nx: Int,
                                   _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        forMultiGroups(nx) { j, n in multi(row, xq + j * xqStride, xqStride, n, out + j, count) }
    }

    public static var kernels: QuantKernels {
        QuantKernels(type: .q4_K, dequantize: dequantize, quantize: Q4_K.quantize, dotF32: dotF32,
                     vecDotType: .q8_K, vecDot: vecDot, vecDotMulti: vecDotMulti, dotF32Multi: dotF32Multi,
                     dotF32Tile: Q4_K_F32Tile_AVX2.tile,
                     q16DotMulti: Q16_AVX2.q4K, q16DotRows: Q16_AVX2.q4KRows)
    }
}

// MARK: - Q6_K

/// Q6_K with AVX2 (210 bytes per 256): `{ uint8 ql[128]; uint8 qh[64]; int8 scales[16]; half d }`.
public enum Q6_K_AVX2 {
    /// The unsigned 6-bit quants (0..<64) of elements 128h + 32k ..< +32.
    @inline(__always)
    static func decode(_ p: UnsafeRawPointer, _ h: Int, _ k: Int) -> V256i {
        let mask = splat8(0x0F)
        let qh = ld256(p, 128 + 32 * h)
        let ql = ld256(p, 64 * h + 32 * (k & 1))
        let low = k < 2 ? _mm256_and_si256(ql, mask) : _mm256_and_si256(_mm256_srli_epi16(ql, 4), mask)
        let high: V256i
        switch k {
        case 0: high = _mm256_slli_epi16(_mm256_and_si256(qh, splat8(0x03)), 4)
        case 1: high = _mm256_slli_epi16(_mm256_and_si256(qh, splat8(0x0C)), 2)
        case 2: high = _mm256_and_si256(qh, splat8(0x30))
        default: high = _mm256_srli_epi16(_mm256_and_si256(qh, splat8(0xC0)), 2)
        }
        return _mm256_or_si256(low, high)
    }

    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        for b in 0..<(count / 256) {
            let p = src + b * 210, y = dst + b * 256
            let d = h2f(p, 208)
            for h in 0..<2 {
                for k in 0..<4 {
                    let q = _mm256_sub_epi8(decode(p, h, k), splat8(32))
                    let s = 8 * h + 2 * k
                    let o = 128 * h + 32 * k
                    store16(lo128(q), d * Float(p.load(fromByteOffset: 192 + s, as: Int8.self)), y + o)
                    store16(hi128(q), d * Float(p.load(fromByteOffset: 193 + s, as: Int8.self)), y + o + 16)
                }
            }
        }
    }

    /// The one-row case of `dotF32Multi` (identical bits).
    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        var r: Float = 0
        f32Multi(row, x, 0, 1, &r, count)
        return r
    }

    /// d·scale_s·Σ q·x per 16 lanes (the steps of the former single-row kernel), against `nx` f32 rows.
    @inline(__always)
    static func f32Multi(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ xs: Int, _ nx: Int,
                         _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        var acc = zeroAcc4(), acc2 = zeroAcc4()
        for b in 0..<(count / 256) {
            let p = row + b * 210, xb = x + b * 256
            csimd_prefetch(p + 1024)  // weights stream from DRAM in decode
            let d = h2f(p, 208)
            for h in 0..<2 {
                for k in 0..<4 {
                    let q = _mm256_sub_epi8(decode(p, h, k), splat8(32))
                    let s = 8 * h + 2 * k
                    let sa = _mm256_set1_ps(d * Float(p.load(fromByteOffset: 192 + s, as: Int8.self)))
                    let sb = _mm256_set1_ps(d * Float(p.load(fromByteOffset: 193 + s, as: Int8.self)))
                    let qf = i8x32ToF(q)
                    let xk = xb + 128 * h + 32 * k
                    @inline(__always) func one(_ x: UnsafePointer<Float>, _ a: inout V8f, _ c: inout V8f) {
                        a = _mm256_fmadd_ps(sa, _mm256_fmadd_ps(qf.1, ldF(x, 8), _mm256_mul_ps(qf.0, ldF(x, 0))), a)
                        c = _mm256_fmadd_ps(sb, _mm256_fmadd_ps(qf.3, ldF(x, 24), _mm256_mul_ps(qf.2, ldF(x, 16))), c)
                    }
                    one(xk, &acc.0, &acc2.0)
                    if nx > 1 { one(xk + xs, &acc.1, &acc2.1) }
                    if nx > 2 { one(xk + 2 * xs, &acc.2, &acc2.2) }
                    if nx > 3 { one(xk + 3 * xs, &acc.3, &acc2.3) }
                }
            }
        }
        acc.0 = _mm256_add_ps(acc.0, acc2.0)
        acc.1 = _mm256_add_ps(acc.1, acc2.1)
        acc.2 = _mm256_add_ps(acc.2, acc2.2)
        acc.3 = _mm256_add_ps(acc.3, acc2.3)
        storeRows(acc, nx, out)
    }

    public static func dotF32Multi(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ xStride: Int, _ nx: Int,
                                   _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        forMultiGroups(nx) { j, n in f32Multi(row, x + j * xStride, xStride, n, out + j, count) }
    }

    /// 32·Σ_s scale_s·bsum_s as 8 int32 lanes (the −32 offset of the quants, taken out once per block).
    @inline(__always)
    static func offsetSum(_ sc: V128i, _ y: UnsafeRawPointer) -> V256i {
        _mm256_slli_epi32(_mm256_madd_epi16(_mm256_cvtepi8_epi16(sc), ld256(y, 260)), 5)
    }

    /// Row · Q8_K activation (the one-row case of `vecDotMulti`, so both give identical bits).
    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        var r: Float = 0
        multi(row, xq, 0, 1, &r, count)
        return r
    }

    @inline(__always)
    static func multi(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ st: Int, _ nx: Int,
                      _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        var acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0
        for b in 0..<(count / 256) {
            let p = row + b * 210, y = xq + b * 292
            csimd_prefetch(p + 1024)  // weights stream from DRAM in decode
            let sc = ld128(p, 192)
            var s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0
            for h in 0..<2 {
                for k in 0..<4 {
                    let q = decode(p, h, k)
                    let spair = scalePair(sc, 4 * h + k)
                    let off = 4 + 128 * h + 32 * k
                    @inline(__always) func one(_ y: UnsafeRawPointer, _ s: inout V256i) {
                        s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(q, ld256(y, off)), spair))
                    }
                    one(y, &s0)
                    if nx > 1 { one(y + st, &s1) }
                    if nx > 2 { one(y + 2 * st, &s2) }
                    if nx > 3 { one(y + 3 * st, &s3) }
                }
            }
            let d = h2f(p, 208)
            @inline(__always) func fin(_ y: UnsafeRawPointer, _ s: V256i, _ acc: inout V8f) {
                let sumi = _mm256_sub_epi32(s, offsetSum(sc, y))
                acc = _mm256_fmadd_ps(_mm256_set1_ps(q8kD(y) * d), _mm256_cvtepi32_ps(sumi), acc)
            }
            fin(y, s0, &acc0)
            if nx > 1 { fin(y + st, s1, &acc1) }
            if nx > 2 { fin(y + 2 * st, s2, &acc2) }
            if nx > 3 { fin(y + 3 * st, s3, &acc3) }
        }
        out[0] = hsum(acc0)
        if nx > 1 { out[1] = hsum(acc1) }
        if nx > 2 { out[2] = hsum(acc2) }
        if nx > 3 { out[3] = hsum(acc3) }
    }

    public static func vecDotMulti(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ xqStride: Int, _ nx: Int,
                                   _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        forMultiGroups(nx) { j, n in multi(row, xq + j * xqStride, xqStride, n, out + j, count) }
    }

    public static var kernels: QuantKernels {
        QuantKernels(type: .q6_K, dequantize: dequantize, quantize: Q6_K.quantize, dotF32: dotF32,
                     vecDotType: .q8_K, vecDot: vecDot, vecDotMulti: vecDotMulti, dotF32Multi: dotF32Multi,
                     dotF32Tile: Q6_K_F32Tile_AVX2.tile,
                     q16DotMulti: Q16_AVX2.q6K)
    }
}

#endif
