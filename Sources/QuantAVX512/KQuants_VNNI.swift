#if arch(x86_64)  // the whole module is x86-64 only; QuantAVX512.kernels(for:base:) answers nil elsewhere
import _Builtin_intrinsics.intel
import CSIMD
import Quant

// Q4_K / Q5_K / Q6_K against Q8_K activations (`{ float d; int8 qs[256]; int16 bsums[16] }`, 292 bytes) with
// VNNI: the scale multiply-add of each 32-lane step is one vpdpwssd (int16 pairs × int16 scales accumulated into
// int32) instead of madd + add. Same integer sums and float steps as QuantAVX2: bit-identical results.

@inline(__always) func q8kD(_ y: UnsafeRawPointer) -> Float { y.loadUnaligned(as: Float.self) }

/// The eight 6-bit scales (bytes of `.sc`) and mins (bytes of `.m`) of a Q4_K / Q5_K block from its 12 packed
/// bytes at `p`.
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

/// Shuffle mask broadcasting int16 element k of each 128-bit lane.
@inline(__always) func bcast16Shuffle(_ k: Int) -> V256i {
    let v = Int64((2 * k) | ((2 * k + 1) << 8)) * 0x0001_0001_0001_0001
    return V256i(v, v, v, v)
}

/// Σ_j mins[j]·(bsum[2j] + bsum[2j+1]) as 4 int32 lanes.
@inline(__always)
func minsDotBsums(_ m: UInt64, _ y: UnsafeRawPointer) -> V128i {
    let mins16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(Int64(bitPattern: m)))
    let pairs = _mm_hadd_epi16(ld128(y, 260), ld128(y, 276))
    return _mm_madd_epi16(mins16, pairs)
}

/// Row · Q8_K for Q4_K / Q5_K against `nx` (1...4) activation rows; `chunk(p, c)` the unsigned quants of
/// sub-blocks 2c and 2c+1.
@inline(__always)
func kMultiVNNI(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ st: Int, _ nx: Int,
                _ out: UnsafeMutablePointer<Float>, _ count: Int, _ ts: Int,
                _ chunk: (UnsafeRawPointer, Int) -> (V256i, V256i)) {
    var acc = zeroAcc4()
    for b in 0..<(count / 256) {
        let p = row + b * ts, y = xq + b * 292
        let (sc, m) = kScalesMins(p + 4)
        let s8 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(Int64(bitPattern: sc)))
        let sc16 = _mm256_set_m128i(s8, s8)
        // Two int32 accumulators per row (low / high nibble sub-blocks): vpdpwssd's accumulator is an input, so
        // one chain per row would serialize on its latency.
        let z = _mm256_setzero_si256()
        var s0 = (z, z), s1 = s0, s2 = s0, s3 = s0
        for c in 0..<4 {
            let (ql, qh) = chunk(p, c)
            let sl = _mm256_shuffle_epi8(sc16, bcast16Shuffle(2 * c))
            let sh = _mm256_shuffle_epi8(sc16, bcast16Shuffle(2 * c + 1))
            @inline(__always) func one(_ y: UnsafeRawPointer, _ s: inout (V256i, V256i)) {
                s.0 = csimd_dpwssd256(s.0, _mm256_maddubs_epi16(ql, ld256(y, 4 + 64 * c)), sl)
                s.1 = csimd_dpwssd256(s.1, _mm256_maddubs_epi16(qh, ld256(y, 36 + 64 * c)), sh)
            }
            one(y, &s0)
            if nx > 1 { one(y + st, &s1) }
            if nx > 2 { one(y + 2 * st, &s2) }
            if nx > 3 { one(y + 3 * st, &s3) }
        }
        let d = h2f(p, 0), dmin = h2f(p, 2)
        @inline(__always) func fin(_ y: UnsafeRawPointer, _ s2: (V256i, V256i), _ acc: inout V8f) {
            let s = _mm256_add_epi32(s2.0, s2.1)
            let dx = q8kD(y)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(dx * d), _mm256_cvtepi32_ps(s), acc)
            let mm = _mm256_zextps128_ps256(_mm_cvtepi32_ps(minsDotBsums(m, y)))
            acc = _mm256_fnmadd_ps(_mm256_set1_ps(dx * dmin), mm, acc)
        }
        fin(y, s0, &acc.0)
        if nx > 1 { fin(y + st, s1, &acc.1) }
        if nx > 2 { fin(y + 2 * st, s2, &acc.2) }
        if nx > 3 { fin(y + 3 * st, s3, &acc.3) }
    }
    storeRows(acc, nx, out)
}

/// Prefetches every cache line of the `bytes` at `p` a page ahead: the expert matrices stream from DRAM in ~1 MB
/// regions at random places, where the hardware prefetchers restart at every 4 KB page. (A Swift loop: the same
/// loop as a C inline function measured ~8% slower in the Q16 kernels.)
@inline(__always)
func prefetchAhead(_ p: UnsafeRawPointer, _ bytes: Int) {
    var o = 0
    while o < bytes {
        csimd_prefetch(p + 4096 + o)
        o += 64
    }
}

/// Decodes a Q4_K / Q5_K block's unsigned quants for 512-bit kernels: sub-blocks 4k, 4k+1 (first register) and
/// 4k+2, 4k+3 (second), each register 64 elements in order.
typealias KPairDecode = (_ block: UnsafeRawPointer, _ k: Int) -> (V512i, V512i)

/// `chunk`-based pair decode (any Q4_K / Q5_K `chunk`).
@inline(__always)
func pairsFromChunks(_ p: UnsafeRawPointer, _ k: Int, _ chunk: (UnsafeRawPointer, Int) -> (V256i, V256i)) -> (V512i, V512i) {
    let (a0, a1) = chunk(p, 2 * k), (b0, b1) = chunk(p, 2 * k + 1)
    return (csimd_set_m256i(a1, a0), csimd_set_m256i(b1, b0))
}

/// Q4_K's pair decode from one 64-byte load: low nibbles hold sub-blocks 4k, 4k+2, high nibbles 4k+1, 4k+3;
/// two 128-bit-lane shuffles put them in order.
@inline(__always)
func q4KPairs(_ p: UnsafeRawPointer, _ k: Int) -> (V512i, V512i) {
    let m = _mm512_set1_epi8(0x0F)
    let z = ld512(p, 16 + 64 * k)
    let lo = _mm512_castsi512_ps(_mm512_and_si512(z, m))
    let hi = _mm512_castsi512_ps(_mm512_and_si512(_mm512_srli_epi16(z, 4), m))
    return (_mm512_castps_si512(csimd_shuffle_f32x4_lo(lo, hi)), _mm512_castps_si512(csimd_shuffle_f32x4_hi(lo, hi)))
}

/// A decoded Q4_K / Q5_K block for the 512-bit kernels: its 256 unsigned quants in four registers (sub-blocks
/// 0-1, 2-3, 4-5, 6-7, each in order), their int16 scales spread to match, d, dmin and the packed mins.
struct KDecoded {
    var q: (V512i, V512i, V512i, V512i)
    var s: (V512i, V512i, V512i, V512i)
    var d: Float, dmin: Float, m: UInt64

    @inline(__always)
    init(_ p: UnsafeRawPointer, _ ts: Int, _ decode: KPairDecode) {
        prefetchAhead(p, ts)
        let (sc, m) = kScalesMins(p + 4)
        let scB = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(Int64(bitPattern: sc))))
        let (a0, b0) = decode(p, 0), (a1, b1) = decode(p, 1)
        q = (a0, b0, a1, b1)
        s = (_mm512_shuffle_epi8(scB, laneWords(0, 0, 1, 1)), _mm512_shuffle_epi8(scB, laneWords(2, 2, 3, 3)),
             _mm512_shuffle_epi8(scB, laneWords(4, 4, 5, 5)), _mm512_shuffle_epi8(scB, laneWords(6, 6, 7, 7)))
        d = h2f(p, 0); dmin = h2f(p, 2); self.m = m
    }

    /// Σ_j sc_j·Σ q·x of the 64-byte int8 vectors at `y + o`, `+ 64`, `+ 128`, `+ 192` (the block's 256 activations
    /// in order) as 16 int32 lanes: lane k + 8 covers the bytes lane k covers in the other 256-bit half.
    @inline(__always)
    func dot(_ y: UnsafeRawPointer, _ o: Int) -> V512i {
        // Two independent product chains (vpdpwssd's accumulator is an input).
        let a = _mm512_dpwssd_epi32(_mm512_madd_epi16(_mm512_maddubs_epi16(q.0, ld512(y, o)), s.0),
                                    _mm512_maddubs_epi16(q.2, ld512(y, o + 128)), s.2)
        let b = _mm512_dpwssd_epi32(_mm512_madd_epi16(_mm512_maddubs_epi16(q.1, ld512(y, o + 64)), s.1),
                                    _mm512_maddubs_epi16(q.3, ld512(y, o + 192)), s.3)
        return _mm512_add_epi32(a, b)
    }

    /// `dot` of two activation planes at once (their four product chains interleaved).
    @inline(__always)
    func dot2(_ y: UnsafeRawPointer, _ o1: Int, _ o2: Int) -> (V512i, V512i) {
        let a1 = _mm512_dpwssd_epi32(_mm512_madd_epi16(_mm512_maddubs_epi16(q.0, ld512(y, o1)), s.0),
                                     _mm512_maddubs_epi16(q.2, ld512(y, o1 + 128)), s.2)
        let b1 = _mm512_dpwssd_epi32(_mm512_madd_epi16(_mm512_maddubs_epi16(q.1, ld512(y, o1 + 64)), s.1),
                                     _mm512_maddubs_epi16(q.3, ld512(y, o1 + 192)), s.3)
        let a2 = _mm512_dpwssd_epi32(_mm512_madd_epi16(_mm512_maddubs_epi16(q.0, ld512(y, o2)), s.0),
                                     _mm512_maddubs_epi16(q.2, ld512(y, o2 + 128)), s.2)
        let b2 = _mm512_dpwssd_epi32(_mm512_madd_epi16(_mm512_maddubs_epi16(q.1, ld512(y, o2 + 64)), s.1),
                                     _mm512_maddubs_epi16(q.3, ld512(y, o2 + 192)), s.3)
        return (_mm512_add_epi32(a1, b1), _mm512_add_epi32(a2, b2))
    }
}

/// A decoded Q4_K / Q5_K block against Q8_K activations.
struct KBlockQ8 {
    let k: KDecoded
    let mins16: V128i

    @inline(__always)
    init(_ p: UnsafeRawPointer, _ ts: Int, _ decode: KPairDecode) {
        k = KDecoded(p, ts, decode)
        mins16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(Int64(bitPattern: k.m)))
    }

    /// acc += d_x·(d·S − dmin·M) for the Q8_K block at `y`, exactly as the 256-bit kernels: int32 lane k + 8 of the
    /// 512-bit sums covers the bytes lane k covers in the other 256-bit half, so folding the halves (an exact
    /// integer add) gives the 256-bit kernels' lanes, and the float steps are theirs.
    @inline(__always)
    func accumulate(_ y: UnsafeRawPointer, _ acc: inout V8f) {
        let s16 = k.dot(y, 4)
        let si = _mm256_add_epi32(_mm512_castsi512_si256(s16), csimd_extracti64x4_hi(s16))
        let dx = q8kD(y)
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dx * k.d), _mm256_cvtepi32_ps(si), acc)
        let pairs = _mm_hadd_epi16(ld128(y, 260), ld128(y, 276))
        let mm = _mm256_zextps128_ps256(_mm_cvtepi32_ps(_mm_madd_epi16(mins16, pairs)))
        acc = _mm256_fnmadd_ps(_mm256_set1_ps(dx * k.dmin), mm, acc)
    }
}

/// `kMultiVNNI` with 512-bit registers, bit-identical to it (and so to AVX2's `kMulti`; see `KBlockQ8`).
/// Prefetches every cache line a page ahead (expert matrices stream from DRAM in ~1 MB regions, where the
/// hardware prefetchers restart at each 4 KB page).
@inline(__always)
func kMultiVNNI512(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ st: Int, _ nx: Int,
                   _ out: UnsafeMutablePointer<Float>, _ count: Int, _ ts: Int, _ decode: KPairDecode) {
    var acc = zeroAcc4()
    for b in 0..<(count / 256) {
        let y = xq + b * 292
        let k = KBlockQ8(row + b * ts, ts, decode)
        k.accumulate(y, &acc.0)
        if nx > 1 { k.accumulate(y + st, &acc.1) }
        if nx > 2 { k.accumulate(y + 2 * st, &acc.2) }
        if nx > 3 { k.accumulate(y + 3 * st, &acc.3) }
    }
    storeRows(acc, nx, out)
}

/// Q4_K with VNNI (144 bytes per 256): `{ half d; half dmin; uint8 scales[12]; uint8 qs[128] }`.
public enum Q4_K_VNNI {
    @inline(__always)
    static func chunk(_ p: UnsafeRawPointer, _ c: Int) -> (V256i, V256i) {
        let mask = splat8(0x0F)
        let q4 = ld256(p, 16 + 32 * c)
        return (_mm256_and_si256(q4, mask), _mm256_and_si256(_mm256_srli_epi16(q4, 4), mask))
    }
    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        var r: Float = 0
        kMultiVNNI(row, xq, 0, 1, &r, count, 144, chunk)
        return r
    }
    public static func vecDotMulti(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ xqStride: Int, _ nx: Int,
                                   _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        forMultiGroups(nx) { j, n in kMultiVNNI(row, xq + j * xqStride, xqStride, n, out + j, count, 144, chunk) }
    }
    /// 512-bit: the same bits as `vecDot` / `vecDotMulti` (and AVX2's).
    public static func vecDot512(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        var r: Float = 0
        kMultiVNNI512(row, xq, 0, 1, &r, count, 144, q4KPairs)
        return r
    }
    public static func vecDotMulti512(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ xqStride: Int, _ nx: Int,
                                      _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        forMultiGroups(nx) { j, n in kMultiVNNI512(row, xq + j * xqStride, xqStride, n, out + j, count, 144, q4KPairs) }
    }
}

/// Q5_K with VNNI (176 bytes per 256): `{ half d; half dmin; uint8 scales[12]; uint8 qh[32]; uint8 qs[128] }`.
public enum Q5_K_VNNI {
    @inline(__always)
    static func chunk(_ p: UnsafeRawPointer, _ c: Int) -> (V256i, V256i) {
        let mask = splat8(0x0F), one = splat8(1)
        let q4 = ld256(p, 48 + 32 * c), qh = ld256(p, 16)
        let hl = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, Int32(2 * c)), one), 4)
        let hh = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, Int32(2 * c + 1)), one), 4)
        return (_mm256_or_si256(_mm256_and_si256(q4, mask), hl),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4, 4), mask), hh))
    }
    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        var r: Float = 0
        kMultiVNNI(row, xq, 0, 1, &r, count, 176, chunk)
        return r
    }
    public static func vecDotMulti(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ xqStride: Int, _ nx: Int,
                                   _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        forMultiGroups(nx) { j, n in kMultiVNNI(row, xq + j * xqStride, xqStride, n, out + j, count, 176, chunk) }
    }
    /// 512-bit: the same bits as `vecDot` / `vecDotMulti` (and AVX2's).
    public static func vecDot512(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        var r: Float = 0
        kMultiVNNI512(row, xq, 0, 1, &r, count, 176, { pairsFromChunks($0, $1, chunk) })
        return r
    }
    public static func vecDotMulti512(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ xqStride: Int, _ nx: Int,
                                      _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        forMultiGroups(nx) { j, n in kMultiVNNI512(row, xq + j * xqStride, xqStride, n, out + j, count, 176, { pairsFromChunks($0, $1, chunk) }) }
    }
}

/// Q6_K with VNNI (210 bytes per 256): `{ uint8 ql[128]; uint8 qh[64]; int8 scales[16]; half d }`.
public enum Q6_K_VNNI {
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

    /// The int16 scale vector for sub-blocks 2m (low lane) and 2m+1 (high lane) out of 16 int8 scales.
    @inline(__always)
    static func scalePair(_ scales: V128i, _ m: Int) -> V256i {
        let a = Int64(2 * m) * 0x0101_0101_0101_0101, b = Int64(2 * m + 1) * 0x0101_0101_0101_0101
        return _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, V128i(a, b)))
    }

    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        var r: Float = 0
        multi(row, xq, 0, 1, &r, count)
        return r
    }

    @inline(__always)
    static func multi(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ st: Int, _ nx: Int,
                      _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        var acc = zeroAcc4()
        for b in 0..<(count / 256) {
            let p = row + b * 210, y = xq + b * 292
            prefetchAhead(p, 210)
            let sc = ld128(p, 192)
            // Two int32 accumulators per row (even / odd k), so the vpdpwssd chains overlap.
            let z = _mm256_setzero_si256()
            var s0 = (z, z), s1 = s0, s2 = s0, s3 = s0
            for h in 0..<2 {
                for k in 0..<4 {
                    let q = decode(p, h, k)
                    let spair = scalePair(sc, 4 * h + k)
                    let off = 4 + 128 * h + 32 * k
                    @inline(__always) func one(_ y: UnsafeRawPointer, _ s: inout (V256i, V256i)) {
                        if k & 1 == 0 {
                            s.0 = csimd_dpwssd256(s.0, _mm256_maddubs_epi16(q, ld256(y, off)), spair)
                        } else {
                            s.1 = csimd_dpwssd256(s.1, _mm256_maddubs_epi16(q, ld256(y, off)), spair)
                        }
                    }
                    one(y, &s0)
                    if nx > 1 { one(y + st, &s1) }
                    if nx > 2 { one(y + 2 * st, &s2) }
                    if nx > 3 { one(y + 3 * st, &s3) }
                }
            }
            let d = h2f(p, 208)
            let sc16 = _mm256_cvtepi8_epi16(sc)
            @inline(__always) func fin(_ y: UnsafeRawPointer, _ s2: (V256i, V256i), _ acc: inout V8f) {
                let s = _mm256_add_epi32(s2.0, s2.1)
                // 32·Σ_s scale_s·bsum_s: the −32 offset of the quants, taken out once per block.
                let off = _mm256_slli_epi32(_mm256_madd_epi16(sc16, ld256(y, 260)), 5)
                acc = _mm256_fmadd_ps(_mm256_set1_ps(q8kD(y) * d), _mm256_cvtepi32_ps(_mm256_sub_epi32(s, off)), acc)
            }
            fin(y, s0, &acc.0)
            if nx > 1 { fin(y + st, s1, &acc.1) }
            if nx > 2 { fin(y + 2 * st, s2, &acc.2) }
            if nx > 3 { fin(y + 3 * st, s3, &acc.3) }
        }
        storeRows(acc, nx, out)
    }

    public static func vecDotMulti(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ xqStride: Int, _ nx: Int,
                                   _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        forMultiGroups(nx) { j, n in multi(row, xq + j * xqStride, xqStride, n, out + j, count) }
    }
}

#endif
