#if arch(x86_64)  // the whole module is x86-64 only; QuantAVX512.kernels(for:base:) answers nil elsewhere
import _Builtin_intrinsics.intel
import CSIMD
import Quant

// Q4_K / Q5_K / Q6_K rows against Q16_K activations with 512-bit registers: 64 weights per maddubs (two
// sub-blocks of Q4_K / Q5_K, four of Q6_K), both int8 planes of the activation against the same decoded weights.
// The integer sums are those of the AVX2 kernels (QuantAVX2/Q16_AVX2.swift); the float steps run on 16 lanes, so
// the results differ from AVX2's in the last bits (each kernel is its own nx = 1 case: batch-invariant).

/// Prefetch distance: a page ahead, every cache line (see QuantAVX2's `q16Prefetch`).
@inline(__always)
func prefetchAhead(_ p: UnsafeRawPointer, _ bytes: Int) {
    var o = 0
    while o < bytes {
        csimd_prefetch(p + 4096 + o)
        o += 64
    }
}

/// pshufb control for 512-bit registers: 128-bit lane i broadcasts int16 element `w.i` of its lane.
@inline(__always) func laneWords(_ w0: Int, _ w1: Int, _ w2: Int, _ w3: Int) -> V512i {
    @inline(__always) func b(_ k: Int) -> Int64 { Int64((2 * k) | ((2 * k + 1) << 8)) * 0x0001_0001_0001_0001 }
    return _mm512_set_epi64(b(w3), b(w3), b(w2), b(w2), b(w1), b(w1), b(w0), b(w0))
}

/// Σ_j m_j·(sums[2j] + sums[2j+1]) of a Q4_K / Q5_K block (mins the bytes of `m`) as 8 int32 lanes, in the
/// order (0, 1, 4, 5, 2, 3, 6, 7) of j (hadd works within 128-bit lanes).
@inline(__always)
func q16MinsTerm(_ m: UInt64, _ y: UnsafeRawPointer) -> V256i {
    let pairs = _mm256_hadd_epi32(ld256(y, Q16_K.sumsOffset), ld256(y, Q16_K.sumsOffset + 32))
    let mp = (m & 0xFFFF_0000_0000_FFFF) | ((m & 0x0000_0000_FFFF_0000) << 16) | ((m >> 16) & 0x0000_0000_FFFF_0000)
    return _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(Int64(bitPattern: mp))), pairs)
}

/// Row · Q16_K for Q4_K / Q5_K against `nx` (1...4) rows: d_x·(d·S − dmin·M) per block, S = 256·S_hi + S_lo in
/// int32 (a lane gathers 16 products |q·plane·sc| ≤ 31·127·63 per plane, so |S| < 2^31).
@inline(__always)
func kMultiQ16VNNI(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ st: Int, _ nx: Int,
                   _ out: UnsafeMutablePointer<Float>, _ count: Int, _ ts: Int, _ decode: KPairDecode) {
    let zf = _mm512_setzero_ps()
    var acc = (zf, zf, zf, zf)
    for b in 0..<(count / 256) {
        let p = row + b * ts, y = xq + b * Q16_K.typeSize
        prefetchAhead(p, ts)
        let (sc, m) = kScalesMins(p + 4)
        let scB = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(Int64(bitPattern: sc))))
        // Per row, per plane, one accumulator per register of a pair (vpdpwssd's accumulator is an input).
        let z = _mm512_setzero_si512()
        var s0 = (z, z, z, z), s1 = s0, s2 = s0, s3 = s0
        for k in 0..<2 {
            let (qa, qb) = decode(p, k)
            let sa = _mm512_shuffle_epi8(scB, laneWords(4 * k, 4 * k, 4 * k + 1, 4 * k + 1))
            let sb = _mm512_shuffle_epi8(scB, laneWords(4 * k + 2, 4 * k + 2, 4 * k + 3, 4 * k + 3))
            @inline(__always) func one(_ y: UnsafeRawPointer, _ s: inout (V512i, V512i, V512i, V512i)) {
                let h = Q16_K.hiOffset + 128 * k, l = Q16_K.loOffset + 128 * k
                s.0 = _mm512_dpwssd_epi32(s.0, _mm512_maddubs_epi16(qa, ld512(y, h)), sa)
                s.1 = _mm512_dpwssd_epi32(s.1, _mm512_maddubs_epi16(qb, ld512(y, h + 64)), sb)
                s.2 = _mm512_dpwssd_epi32(s.2, _mm512_maddubs_epi16(qa, ld512(y, l)), sa)
                s.3 = _mm512_dpwssd_epi32(s.3, _mm512_maddubs_epi16(qb, ld512(y, l + 64)), sb)
            }
            one(y, &s0)
            if nx > 1 { one(y + st, &s1) }
            if nx > 2 { one(y + 2 * st, &s2) }
            if nx > 3 { one(y + 3 * st, &s3) }
        }
        let d = h2f(p, 0), dmin = h2f(p, 2)
        @inline(__always) func fin(_ y: UnsafeRawPointer, _ s: (V512i, V512i, V512i, V512i), _ acc: inout V16f) {
            let dx = Q16_K.d(y)
            let si = _mm512_add_epi32(_mm512_slli_epi32(_mm512_add_epi32(s.0, s.1), 8), _mm512_add_epi32(s.2, s.3))
            acc = _mm512_fmadd_ps(_mm512_set1_ps(dx * d), _mm512_cvtepi32_ps(si), acc)
            let mm = _mm512_zextps256_ps512(_mm256_cvtepi32_ps(q16MinsTerm(m, y)))
            acc = _mm512_fnmadd_ps(_mm512_set1_ps(dx * dmin), mm, acc)
        }
        fin(y, s0, &acc.0)
        if nx > 1 { fin(y + st, s1, &acc.1) }
        if nx > 2 { fin(y + 2 * st, s2, &acc.2) }
        if nx > 3 { fin(y + 3 * st, s3, &acc.3) }
    }
    out[0] = _mm512_reduce_add_ps(acc.0)
    if nx > 1 { out[1] = _mm512_reduce_add_ps(acc.1) }
    if nx > 2 { out[2] = _mm512_reduce_add_ps(acc.2) }
    if nx > 3 { out[3] = _mm512_reduce_add_ps(acc.3) }
}

/// Row · Q16_K for Q6_K: d_x·d·(256·S_hi + S_lo − 32·C) per block with the unsigned 6-bit q and
/// C = Σ_j scales_j·sums_j; the planes are converted separately (256·S_hi can pass 2^31).
@inline(__always)
func q6KMultiQ16VNNI(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ st: Int, _ nx: Int,
                     _ out: UnsafeMutablePointer<Float>, _ count: Int) {
    let zf = _mm512_setzero_ps()
    var acc = (zf, zf, zf, zf)
    let m4 = _mm512_set1_epi8(0x0F), m2 = _mm512_set1_epi8(0x03), m30 = _mm512_set1_epi8(0x30)
    let pick01 = laneWords(0, 1, 2, 3), pick23 = laneWords(4, 5, 6, 7)
    for b in 0..<(count / 256) {
        let p = row + b * 210, y = xq + b * Q16_K.typeSize
        prefetchAhead(p, 210)
        let z = _mm512_setzero_si512()
        var s0 = (z, z), s1 = s0, s2 = s0, s3 = s0
        for h in 0..<2 {
            let ql = ld512(p, 64 * h), qh = ld256(p, 128 + 32 * h)
            let qhz = csimd_set_m256i(_mm256_srli_epi16(qh, 2), qh)
            // Elements 128h ..< +64 (low nibbles, qh bits 0-1 / 2-3) and 128h + 64 ..< +64 (high nibbles, bits 4-5 / 6-7).
            let e01 = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_slli_epi16(_mm512_and_si512(qhz, m2), 4))
            let e23 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4), _mm512_and_si512(qhz, m30))
            let s8 = _mm_cvtepi8_epi16(_mm_loadl_epi64(UnsafeRawPointer(p + 192 + 8 * h).assumingMemoryBound(to: V128i.self)))
            let scH = _mm512_broadcast_i32x4(s8)
            let sv01 = _mm512_shuffle_epi8(scH, pick01), sv23 = _mm512_shuffle_epi8(scH, pick23)
            @inline(__always) func plane(_ y: UnsafeRawPointer, _ o: Int) -> V512i {
                _mm512_add_epi32(_mm512_madd_epi16(sv01, _mm512_maddubs_epi16(e01, ld512(y, o + 128 * h))),
                                 _mm512_madd_epi16(sv23, _mm512_maddubs_epi16(e23, ld512(y, o + 128 * h + 64))))
            }
            @inline(__always) func one(_ y: UnsafeRawPointer, _ s: inout (V512i, V512i)) {
                s.0 = _mm512_add_epi32(s.0, plane(y, Q16_K.hiOffset))
                s.1 = _mm512_add_epi32(s.1, plane(y, Q16_K.loOffset))
            }
            one(y, &s0)
            if nx > 1 { one(y + st, &s1) }
            if nx > 2 { one(y + 2 * st, &s2) }
            if nx > 3 { one(y + 3 * st, &s3) }
        }
        let d = h2f(p, 208)
        let sc32 = _mm512_cvtepi8_epi32(ld128(p, 192))
        @inline(__always) func fin(_ y: UnsafeRawPointer, _ s: (V512i, V512i), _ acc: inout V16f) {
            let dd = Q16_K.d(y) * d
            let c = _mm512_mullo_epi32(sc32, ld512(y, Q16_K.sumsOffset))
            acc = _mm512_fmadd_ps(_mm512_set1_ps(256 * dd), _mm512_cvtepi32_ps(s.0), acc)
            acc = _mm512_fmadd_ps(_mm512_set1_ps(dd), _mm512_cvtepi32_ps(s.1), acc)
            acc = _mm512_fmadd_ps(_mm512_set1_ps(-32 * dd), _mm512_cvtepi32_ps(c), acc)
        }
        fin(y, s0, &acc.0)
        if nx > 1 { fin(y + st, s1, &acc.1) }
        if nx > 2 { fin(y + 2 * st, s2, &acc.2) }
        if nx > 3 { fin(y + 3 * st, s3, &acc.3) }
    }
    out[0] = _mm512_reduce_add_ps(acc.0)
    if nx > 1 { out[1] = _mm512_reduce_add_ps(acc.1) }
    if nx > 2 { out[2] = _mm512_reduce_add_ps(acc.2) }
    if nx > 3 { out[3] = _mm512_reduce_add_ps(acc.3) }
}

/// The Q16_K entries of the AVX-512 kernel tables.
public enum Q16_VNNI {
    public static func q4K(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ xqStride: Int, _ nx: Int,
                           _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        forMultiGroups(nx) { j, n in kMultiQ16VNNI(row, xq + j * xqStride, xqStride, n, out + j, count, 144, q4KPairs) }
    }
    public static func q5K(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ xqStride: Int, _ nx: Int,
                           _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        forMultiGroups(nx) { j, n in kMultiQ16VNNI(row, xq + j * xqStride, xqStride, n, out + j, count, 176, { pairsFromChunks($0, $1, Q5_K_VNNI.chunk) }) }
    }
    public static func q6K(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ xqStride: Int, _ nx: Int,
                           _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        forMultiGroups(nx) { j, n in q6KMultiQ16VNNI(row, xq + j * xqStride, xqStride, n, out + j, count) }
    }
}
#endif
