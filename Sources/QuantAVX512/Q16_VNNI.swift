#if arch(x86_64)  // the whole module is x86-64 only; QuantAVX512.kernels(for:base:) answers nil elsewhere
import _Builtin_intrinsics.intel
import CSIMD
import Quant

// Q4_K / Q5_K / Q6_K rows against Q16_K activations with 512-bit registers: 64 weights per maddubs (two
// sub-blocks of Q4_K / Q5_K, four of Q6_K), both int8 planes of the activation against the same decoded weights.
// The integer sums are those of the AVX2 kernels (QuantAVX2/Q16_AVX2.swift); the float steps run on 16 lanes, so
// the results differ from AVX2's in the last bits (each kernel is its own nx = 1 case: batch-invariant).

/// pshufb control for 512-bit registers: 128-bit lane i broadcasts int16 element `w.i` of its lane.
@inline(__always) func laneWords(_ w0: Int, _ w1: Int, _ w2: Int, _ w3: Int) -> V512i {
    @inline(__always) func b(_ k: Int) -> Int64 { Int64((2 * k) | ((2 * k + 1) << 8)) * 0x0001_0001_0001_0001 }
    return _mm512_set_epi64(b(w3), b(w3), b(w2), b(w2), b(w1), b(w1), b(w0), b(w0))
}

/// The 8 mins (bytes of `m`) of a Q4_K / Q5_K block as int32 lanes in the order (0, 1, 4, 5, 2, 3, 6, 7), the
/// order of `q16MinsTerm`'s pair sums.
@inline(__always)
func q16Mins32(_ m: UInt64) -> V256i {
    let mp = (m & 0xFFFF_0000_0000_FFFF) | ((m & 0x0000_0000_FFFF_0000) << 16) | ((m >> 16) & 0x0000_0000_FFFF_0000)
    return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(Int64(bitPattern: mp)))
}

/// Σ_j m_j·(sums[2j] + sums[2j+1]) of a Q4_K / Q5_K block (`mins32` from `q16Mins32`) as 8 int32 lanes, in the
/// order (0, 1, 4, 5, 2, 3, 6, 7) of j (hadd works within 128-bit lanes).
@inline(__always)
func q16MinsTerm(_ mins32: V256i, _ y: UnsafeRawPointer) -> V256i {
    let pairs = _mm256_hadd_epi32(ld256(y, Q16_K.sumsOffset), ld256(y, Q16_K.sumsOffset + 32))
    return _mm256_mullo_epi32(mins32, pairs)
}

/// The sums of up to four 16-lane accumulators (zeros for the unused ones), each summed in the same order whatever
/// its neighbours hold: so a row · activation has the same bits in `kMultiQ16VNNI` (tokens) and `kRowsQ16VNNI`
/// (rows), alone or not.
@inline(__always)
func storeReduced4(_ acc: (V16f, V16f, V16f, V16f), _ n: Int, _ out: UnsafeMutablePointer<Float>) {
    @inline(__always) func fold(_ v: V16f) -> V8f { _mm256_add_ps(_mm512_castps512_ps256(v), csimd_extractf32x8_hi(v)) }
    let ab = _mm256_hadd_ps(fold(acc.0), fold(acc.1)), cd = _mm256_hadd_ps(fold(acc.2), fold(acc.3))
    let abcd = _mm256_hadd_ps(ab, cd)
    let r = _mm_add_ps(_mm256_castps256_ps128(abcd), csimd_extractf128_hi(abcd))
    if n == 4 {
        UnsafeMutableRawPointer(out).storeBytes(of: r, as: __m128.self)
    } else {
        withUnsafeBytes(of: r) { for i in 0..<n { out[i] = $0.load(fromByteOffset: 4 * i, as: Float.self) } }
    }
}

/// A decoded Q4_K / Q5_K block (`KDecoded`) against Q16_K activations.
struct KBlockQ16 {
    let k: KDecoded
    let mins32: V256i

    @inline(__always)
    init(_ p: UnsafeRawPointer, _ ts: Int, _ decode: KPairDecode) {
        k = KDecoded(p, ts, decode)
        mins32 = q16Mins32(k.m)
    }

    /// acc += d_x·(d·S − dmin·M) for the Q16_K block at `y`: S = 256·S_hi + S_lo in int32 (a lane gathers 16
    /// products |q·plane·sc| ≤ 31·127·63 per plane, so |S| < 2^31).
    @inline(__always)
    func accumulate(_ y: UnsafeRawPointer, _ acc: inout V16f) {
        let h = Q16_K.hiOffset, l = Q16_K.loOffset
        // One accumulator per register pair and plane (vpdpwssd's accumulator is an input).
        let sh0 = _mm512_dpwssd_epi32(_mm512_madd_epi16(_mm512_maddubs_epi16(k.q.0, ld512(y, h)), k.s.0),
                                      _mm512_maddubs_epi16(k.q.2, ld512(y, h + 128)), k.s.2)
        let sh1 = _mm512_dpwssd_epi32(_mm512_madd_epi16(_mm512_maddubs_epi16(k.q.1, ld512(y, h + 64)), k.s.1),
                                      _mm512_maddubs_epi16(k.q.3, ld512(y, h + 192)), k.s.3)
        let sl0 = _mm512_dpwssd_epi32(_mm512_madd_epi16(_mm512_maddubs_epi16(k.q.0, ld512(y, l)), k.s.0),
                                      _mm512_maddubs_epi16(k.q.2, ld512(y, l + 128)), k.s.2)
        let sl1 = _mm512_dpwssd_epi32(_mm512_madd_epi16(_mm512_maddubs_epi16(k.q.1, ld512(y, l + 64)), k.s.1),
                                      _mm512_maddubs_epi16(k.q.3, ld512(y, l + 192)), k.s.3)
        let si = _mm512_add_epi32(_mm512_slli_epi32(_mm512_add_epi32(sh0, sh1), 8), _mm512_add_epi32(sl0, sl1))
        let dx = Q16_K.d(y)
        acc = _mm512_fmadd_ps(_mm512_set1_ps(dx * k.d), _mm512_cvtepi32_ps(si), acc)
        let mm = _mm512_zextps256_ps512(_mm256_cvtepi32_ps(q16MinsTerm(mins32, y)))
        acc = _mm512_fnmadd_ps(_mm512_set1_ps(dx * k.dmin), mm, acc)
    }
}

/// Row · Q16_K for Q4_K / Q5_K against `nx` (1...4) activation rows `st` bytes apart.
@inline(__always)
func kMultiQ16VNNI(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ st: Int, _ nx: Int,
                   _ out: UnsafeMutablePointer<Float>, _ count: Int, _ ts: Int, _ decode: KPairDecode) {
    let zf = _mm512_setzero_ps()
    var acc = (zf, zf, zf, zf)
    for b in 0..<(count / 256) {
        let y = xq + b * Q16_K.typeSize
        let k = KBlockQ16(row + b * ts, ts, decode)
        k.accumulate(y, &acc.0)
        if nx > 1 { k.accumulate(y + st, &acc.1) }
        if nx > 2 { k.accumulate(y + 2 * st, &acc.2) }
        if nx > 3 { k.accumulate(y + 3 * st, &acc.3) }
    }
    storeReduced4(acc, nx, out)
}

/// `nr` (1...4) Q4_K / Q5_K rows `rs` bytes apart · `nx` (1 or 2) Q16_K activation rows `st` bytes apart, into
/// `out[4j + i]`: the same steps per (row, block, activation) as `kMultiQ16VNNI`, so the same bits.
@inline(__always)
func kRowsQ16VNNI(_ row: UnsafeRawPointer, _ rs: Int, _ nr: Int, _ y0: UnsafeRawPointer, _ st: Int, _ nx: Int,
                  _ out: UnsafeMutablePointer<Float>, _ count: Int, _ ts: Int, _ decode: KPairDecode) {
    let zf = _mm512_setzero_ps()
    var acc = (zf, zf, zf, zf), acc2 = acc
    for b in 0..<(count / 256) {
        let y = y0 + b * Q16_K.typeSize, p = row + b * ts
        @inline(__always) func one(_ k: KBlockQ16, _ a: inout V16f, _ a2: inout V16f) {
            k.accumulate(y, &a)
            if nx > 1 { k.accumulate(y + st, &a2) }
        }
        one(KBlockQ16(p, ts, decode), &acc.0, &acc2.0)
        if nr > 1 { one(KBlockQ16(p + rs, ts, decode), &acc.1, &acc2.1) }
        if nr > 2 { one(KBlockQ16(p + 2 * rs, ts, decode), &acc.2, &acc2.2) }
        if nr > 3 { one(KBlockQ16(p + 3 * rs, ts, decode), &acc.3, &acc2.3) }
    }
    storeReduced4(acc, nr, out)
    if nx > 1 { storeReduced4(acc2, nr, out + 4) }
}

/// A decoded Q6_K block: per half, elements 0-63 and 64-127 as unsigned 6-bit quants with their scales spread.
struct Q6KBlockQ16 {
    var e: (V512i, V512i, V512i, V512i)
    var s: (V512i, V512i, V512i, V512i)
    var sc32: V512i
    var d: Float

    @inline(__always)
    init(_ p: UnsafeRawPointer) {
        prefetchAhead(p, 210)
        let m4 = _mm512_set1_epi8(0x0F), m2 = _mm512_set1_epi8(0x03), m30 = _mm512_set1_epi8(0x30)
        @inline(__always) func half(_ h: Int) -> (V512i, V512i, V512i, V512i) {
            let ql = ld512(p, 64 * h), qh = ld256(p, 128 + 32 * h)
            let qhz = csimd_set_m256i(_mm256_srli_epi16(qh, 2), qh)
            // Elements 128h ..< +64 (low nibbles, qh bits 0-1 / 2-3) and 128h + 64 ..< +64 (high nibbles, bits 4-5 / 6-7).
            let e01 = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_slli_epi16(_mm512_and_si512(qhz, m2), 4))
            let e23 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4), _mm512_and_si512(qhz, m30))
            let s8 = _mm_cvtepi8_epi16(_mm_loadl_epi64(UnsafeRawPointer(p + 192 + 8 * h).assumingMemoryBound(to: V128i.self)))
            let scH = _mm512_broadcast_i32x4(s8)
            return (e01, e23, _mm512_shuffle_epi8(scH, laneWords(0, 1, 2, 3)), _mm512_shuffle_epi8(scH, laneWords(4, 5, 6, 7)))
        }
        let h0 = half(0), h1 = half(1)
        e = (h0.0, h0.1, h1.0, h1.1)
        s = (h0.2, h0.3, h1.2, h1.3)
        sc32 = _mm512_cvtepi8_epi32(ld128(p, 192))
        d = h2f(p, 208)
    }

    /// acc += d_x·d·(256·S_hi + S_lo − 32·C), C = Σ_j scales_j·sums_j (the q − 32 offset); the planes are converted
    /// separately (256·S_hi can pass 2^31).
    @inline(__always)
    func accumulate(_ y: UnsafeRawPointer, _ acc: inout V16f) {
        @inline(__always) func plane(_ o: Int) -> V512i {
            let a = _mm512_dpwssd_epi32(_mm512_madd_epi16(_mm512_maddubs_epi16(e.0, ld512(y, o)), s.0),
                                        _mm512_maddubs_epi16(e.2, ld512(y, o + 128)), s.2)
            let b = _mm512_dpwssd_epi32(_mm512_madd_epi16(_mm512_maddubs_epi16(e.1, ld512(y, o + 64)), s.1),
                                        _mm512_maddubs_epi16(e.3, ld512(y, o + 192)), s.3)
            return _mm512_add_epi32(a, b)
        }
        let dd = Q16_K.d(y) * d
        let c = _mm512_mullo_epi32(sc32, ld512(y, Q16_K.sumsOffset))
        acc = _mm512_fmadd_ps(_mm512_set1_ps(256 * dd), _mm512_cvtepi32_ps(plane(Q16_K.hiOffset)), acc)
        acc = _mm512_fmadd_ps(_mm512_set1_ps(dd), _mm512_cvtepi32_ps(plane(Q16_K.loOffset)), acc)
        acc = _mm512_fmadd_ps(_mm512_set1_ps(-32 * dd), _mm512_cvtepi32_ps(c), acc)
    }
}

@inline(__always)
func q6KMultiQ16VNNI(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ st: Int, _ nx: Int,
                     _ out: UnsafeMutablePointer<Float>, _ count: Int) {
    let zf = _mm512_setzero_ps()
    var acc = (zf, zf, zf, zf)
    for b in 0..<(count / 256) {
        let y = xq + b * Q16_K.typeSize
        let k = Q6KBlockQ16(row + b * 210)
        k.accumulate(y, &acc.0)
        if nx > 1 { k.accumulate(y + st, &acc.1) }
        if nx > 2 { k.accumulate(y + 2 * st, &acc.2) }
        if nx > 3 { k.accumulate(y + 3 * st, &acc.3) }
    }
    storeReduced4(acc, nx, out)
}

@inline(__always)
func q6KRowsQ16VNNI(_ row: UnsafeRawPointer, _ rs: Int, _ nr: Int, _ y0: UnsafeRawPointer, _ st: Int, _ nx: Int,
                    _ out: UnsafeMutablePointer<Float>, _ count: Int) {
    let zf = _mm512_setzero_ps()
    var acc = (zf, zf, zf, zf), acc2 = acc
    for b in 0..<(count / 256) {
        let y = y0 + b * Q16_K.typeSize, p = row + b * 210
        @inline(__always) func one(_ k: Q6KBlockQ16, _ a: inout V16f, _ a2: inout V16f) {
            k.accumulate(y, &a)
            if nx > 1 { k.accumulate(y + st, &a2) }
        }
        one(Q6KBlockQ16(p), &acc.0, &acc2.0)
        if nr > 1 { one(Q6KBlockQ16(p + rs), &acc.1, &acc2.1) }
        if nr > 2 { one(Q6KBlockQ16(p + 2 * rs), &acc.2, &acc2.2) }
        if nr > 3 { one(Q6KBlockQ16(p + 3 * rs), &acc.3, &acc2.3) }
    }
    storeReduced4(acc, nr, out)
    if nx > 1 { storeReduced4(acc2, nr, out + 4) }
}

/// Calls `body(n)` with n a literal 1...4 (so the kernels specialize).
@inline(__always)
func withLiteral4(_ n: Int, _ body: (Int) -> Void) {
    switch n {
    case 1: body(1)
    case 2: body(2)
    case 3: body(3)
    default: body(4)
    }
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
    /// `q16DotRows` of Q4_K (one or two activation rows: separately compiled, so each keeps its registers).
    public static func q4KRows(_ rows: UnsafeRawPointer, _ rowStride: Int, _ nr: Int, _ xq: UnsafeRawPointer,
                               _ xqStride: Int, _ nx: Int, _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        if nx == 1 { q4KRows1(rows, rowStride, nr, xq, out, count) } else { q4KRows2(rows, rowStride, nr, xq, xqStride, out, count) }
    }
    @inline(never) static func q4KRows1(_ rows: UnsafeRawPointer, _ rs: Int, _ nr: Int, _ xq: UnsafeRawPointer,
                                        _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        withLiteral4(nr) { n in kRowsQ16VNNI(rows, rs, n, xq, 0, 1, out, count, 144, q4KPairs) }
    }
    @inline(never) static func q4KRows2(_ rows: UnsafeRawPointer, _ rs: Int, _ nr: Int, _ xq: UnsafeRawPointer,
                                        _ st: Int, _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        withLiteral4(nr) { n in kRowsQ16VNNI(rows, rs, n, xq, st, 2, out, count, 144, q4KPairs) }
    }

    public static func q5KRows(_ rows: UnsafeRawPointer, _ rowStride: Int, _ nr: Int, _ xq: UnsafeRawPointer,
                               _ xqStride: Int, _ nx: Int, _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        if nx == 1 { q5KRows1(rows, rowStride, nr, xq, out, count) } else { q5KRows2(rows, rowStride, nr, xq, xqStride, out, count) }
    }
    @inline(never) static func q5KRows1(_ rows: UnsafeRawPointer, _ rs: Int, _ nr: Int, _ xq: UnsafeRawPointer,
                                        _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        withLiteral4(nr) { n in kRowsQ16VNNI(rows, rs, n, xq, 0, 1, out, count, 176, { pairsFromChunks($0, $1, Q5_K_VNNI.chunk) }) }
    }
    @inline(never) static func q5KRows2(_ rows: UnsafeRawPointer, _ rs: Int, _ nr: Int, _ xq: UnsafeRawPointer,
                                        _ st: Int, _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        withLiteral4(nr) { n in kRowsQ16VNNI(rows, rs, n, xq, st, 2, out, count, 176, { pairsFromChunks($0, $1, Q5_K_VNNI.chunk) }) }
    }

    public static func q6KRows(_ rows: UnsafeRawPointer, _ rowStride: Int, _ nr: Int, _ xq: UnsafeRawPointer,
                               _ xqStride: Int, _ nx: Int, _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        if nx == 1 { q6KRows1(rows, rowStride, nr, xq, out, count) } else { q6KRows2(rows, rowStride, nr, xq, xqStride, out, count) }
    }
    @inline(never) static func q6KRows1(_ rows: UnsafeRawPointer, _ rs: Int, _ nr: Int, _ xq: UnsafeRawPointer,
                                        _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        withLiteral4(nr) { n in q6KRowsQ16VNNI(rows, rs, n, xq, 0, 1, out, count) }
    }
    @inline(never) static func q6KRows2(_ rows: UnsafeRawPointer, _ rs: Int, _ nr: Int, _ xq: UnsafeRawPointer,
                                        _ st: Int, _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        withLiteral4(nr) { n in q6KRowsQ16VNNI(rows, rs, n, xq, st, 2, out, count) }
    }
}
#endif
