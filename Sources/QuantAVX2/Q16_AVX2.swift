#if arch(x86_64)  // the whole module is x86-64 only; QuantAVX2.kernels(for:) answers nil elsewhere
import _Builtin_intrinsics.intel
import CSIMD
import Quant

// Q4_K / Q5_K / Q6_K rows against Q16_K activations (`{ float d; int8 hi[256]; int8 lo[256]; int32 sums[16] }`,
// v = 256·hi + lo): each int8 plane goes through the same maddubs + madd steps as a Q8_K row, so the integer sums
// are exact; only the last float steps differ from the scalar reference (`Q16_K.dotQ4_K`, ...).

/// Σ_j m_j·(sums[2j] + sums[2j+1]) over the 8 mins (bytes of `m`) of a Q4_K / Q5_K block, as 8 int32 lanes.
@inline(__always)
func q16MinsTerm(_ m: UInt64, _ y: UnsafeRawPointer) -> V256i {
    // hadd pairs within 128-bit lanes: (p0, p1, p4, p5 | p2, p3, p6, p7) of the 8 pair sums p_j.
    let pairs = _mm256_hadd_epi32(ld256(y, Q16_K.sumsOffset), ld256(y, Q16_K.sumsOffset + 32))
    let mp = (m & 0xFFFF_0000_0000_FFFF) | ((m & 0x0000_0000_FFFF_0000) << 16) | ((m >> 16) & 0x0000_0000_FFFF_0000)
    let m32 = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(Int64(bitPattern: mp)))
    return _mm256_mullo_epi32(m32, pairs)
}

/// One Q4_K / Q5_K block (at `p`, `ts` bytes) · `nx` (1...4) Q16_K blocks `st` bytes apart from `y`, added to
/// `acc.j`: d_x·(d·S − dmin·M), S = 256·S_hi + S_lo with each plane's Σ_j sc_j·Σ q·plane in int32. S fits in int32:
/// a lane gathers 32 products |q·plane·sc| ≤ 31·127·63, so |S| ≤ 257·32·31·127·63 < 2^31. Each activation's sums
/// and float steps are its own, so its result does not depend on nx.
@inline(__always)
func kBlockQ16(_ p: UnsafeRawPointer, _ ts: Int, _ y: UnsafeRawPointer, _ st: Int, _ nx: Int, _ acc: inout Acc4,
               _ chunk: (UnsafeRawPointer, Int) -> (V256i, V256i)) {
    prefetchBlock(p, ts)
    let (sc, m) = kScalesMins(p + 4)
    let s8 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(Int64(bitPattern: sc)))
    let sc16 = _mm256_set_m128i(s8, s8)
    let z = _mm256_setzero_si256()
    var s0 = (z, z), s1 = s0, s2 = s0, s3 = s0
    for c in 0..<4 {
        let (ql, qh) = chunk(p, c)
        let sl = _mm256_shuffle_epi8(sc16, bcast16Shuffle(2 * c))
        let sh = _mm256_shuffle_epi8(sc16, bcast16Shuffle(2 * c + 1))
        @inline(__always) func plane(_ y: UnsafeRawPointer, _ o: Int) -> V256i {
            _mm256_add_epi32(_mm256_madd_epi16(sl, _mm256_maddubs_epi16(ql, ld256(y, o + 64 * c))),
                             _mm256_madd_epi16(sh, _mm256_maddubs_epi16(qh, ld256(y, o + 64 * c + 32))))
        }
        @inline(__always) func one(_ y: UnsafeRawPointer, _ s: inout (V256i, V256i)) {
            s.0 = _mm256_add_epi32(s.0, plane(y, Q16_K.hiOffset))
            s.1 = _mm256_add_epi32(s.1, plane(y, Q16_K.loOffset))
        }
        one(y, &s0)
        if nx > 1 { one(y + st, &s1) }
        if nx > 2 { one(y + 2 * st, &s2) }
        if nx > 3 { one(y + 3 * st, &s3) }
    }
    let d = h2f(p, 0), dmin = h2f(p, 2)
    @inline(__always) func fin(_ y: UnsafeRawPointer, _ s: (V256i, V256i), _ acc: inout V8f) {
        let dx = Q16_K.d(y)
        let si = _mm256_add_epi32(_mm256_slli_epi32(s.0, 8), s.1)
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dx * d), _mm256_cvtepi32_ps(si), acc)
        acc = _mm256_fnmadd_ps(_mm256_set1_ps(dx * dmin), _mm256_cvtepi32_ps(q16MinsTerm(m, y)), acc)
    }
    fin(y, s0, &acc.0)
    if nx > 1 { fin(y + st, s1, &acc.1) }
    if nx > 2 { fin(y + 2 * st, s2, &acc.2) }
    if nx > 3 { fin(y + 3 * st, s3, &acc.3) }
}

/// Row · Q16_K for Q4_K / Q5_K against `nx` (1...4) activation rows.
@inline(__always)
func kMultiQ16(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ st: Int, _ nx: Int,
               _ out: UnsafeMutablePointer<Float>, _ count: Int, _ ts: Int,
               _ chunk: (UnsafeRawPointer, Int) -> (V256i, V256i)) {
    var acc = zeroAcc4()
    for b in 0..<(count / 256) { kBlockQ16(row + b * ts, ts, xq + b * Q16_K.typeSize, st, nx, &acc, chunk) }
    storeRows(acc, nx, out)
}

/// `nr` (1...4) Q4_K / Q5_K rows `rs` bytes apart · one Q16_K row: each row with `kMultiQ16`'s steps (its bits).
@inline(__always)
func kRowsQ16(_ row: UnsafeRawPointer, _ rs: Int, _ nr: Int, _ y0: UnsafeRawPointer,
              _ out: UnsafeMutablePointer<Float>, _ count: Int, _ ts: Int,
              _ chunk: (UnsafeRawPointer, Int) -> (V256i, V256i)) {
    var a0 = zeroAcc4(), a1 = a0, a2 = a0, a3 = a0
    for b in 0..<(count / 256) {
        let p = row + b * ts, y = y0 + b * Q16_K.typeSize
        kBlockQ16(p, ts, y, 0, 1, &a0, chunk)
        if nr > 1 { kBlockQ16(p + rs, ts, y, 0, 1, &a1, chunk) }
        if nr > 2 { kBlockQ16(p + 2 * rs, ts, y, 0, 1, &a2, chunk) }
        if nr > 3 { kBlockQ16(p + 3 * rs, ts, y, 0, 1, &a3, chunk) }
    }
    out[0] = hsum(a0.0)
    if nr > 1 { out[1] = hsum(a1.0) }
    if nr > 2 { out[2] = hsum(a2.0) }
    if nr > 3 { out[3] = hsum(a3.0) }
}

/// Row · Q16_K for Q6_K: d_x·d·(256·S_hi + S_lo − 32·C) per block, S_* = Σ_j scales_j·Σ q·plane with the unsigned
/// 6-bit q, C = Σ_j scales_j·sums_j (the q − 32 offset). The planes are converted separately (256·S_hi can pass
/// 2^31 here).
@inline(__always)
func q6KMultiQ16(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ st: Int, _ nx: Int,
                 _ out: UnsafeMutablePointer<Float>, _ count: Int) {
    var acc = zeroAcc4()
    for b in 0..<(count / 256) {
        let p = row + b * 210, y = xq + b * Q16_K.typeSize
        prefetchBlock(p, 210)
        let z = _mm256_setzero_si256()
        var s0 = (z, z), s1 = s0, s2 = s0, s3 = s0
        for h in 0..<2 {
            let s8 = _mm_cvtepi8_epi16(_mm_loadl_epi64(UnsafeRawPointer(p + 192 + 8 * h).assumingMemoryBound(to: V128i.self)))
            let sc16 = _mm256_set_m128i(s8, s8)
            for k in 0..<4 {
                let q = Q6_K_AVX2.decode(p, h, k)
                // Elements 128h + 32k ..< +16 use scale 8h + 2k, the next 16 scale 8h + 2k + 1: one per 128-bit lane.
                let sv = _mm256_shuffle_epi8(sc16, _mm256_set_m128i(lane16Shuffle(2 * k + 1), lane16Shuffle(2 * k)))
                let o = 128 * h + 32 * k
                @inline(__always) func one(_ y: UnsafeRawPointer, _ s: inout (V256i, V256i)) {
                    s.0 = _mm256_add_epi32(s.0, _mm256_madd_epi16(sv, _mm256_maddubs_epi16(q, ld256(y, Q16_K.hiOffset + o))))
                    s.1 = _mm256_add_epi32(s.1, _mm256_madd_epi16(sv, _mm256_maddubs_epi16(q, ld256(y, Q16_K.loOffset + o))))
                }
                one(y, &s0)
                if nx > 1 { one(y + st, &s1) }
                if nx > 2 { one(y + 2 * st, &s2) }
                if nx > 3 { one(y + 3 * st, &s3) }
            }
        }
        let d = h2f(p, 208)
        let scA = _mm256_cvtepi8_epi32(_mm_loadl_epi64(UnsafeRawPointer(p + 192).assumingMemoryBound(to: V128i.self)))
        let scB = _mm256_cvtepi8_epi32(_mm_loadl_epi64(UnsafeRawPointer(p + 200).assumingMemoryBound(to: V128i.self)))
        @inline(__always) func fin(_ y: UnsafeRawPointer, _ s: (V256i, V256i), _ acc: inout V8f) {
            let dd = Q16_K.d(y) * d
            let c = _mm256_add_epi32(_mm256_mullo_epi32(scA, ld256(y, Q16_K.sumsOffset)),
                                     _mm256_mullo_epi32(scB, ld256(y, Q16_K.sumsOffset + 32)))
            acc = _mm256_fmadd_ps(_mm256_set1_ps(256 * dd), _mm256_cvtepi32_ps(s.0), acc)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(s.1), acc)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(-32 * dd), _mm256_cvtepi32_ps(c), acc)
        }
        fin(y, s0, &acc.0)
        if nx > 1 { fin(y + st, s1, &acc.1) }
        if nx > 2 { fin(y + 2 * st, s2, &acc.2) }
        if nx > 3 { fin(y + 3 * st, s3, &acc.3) }
    }
    storeRows(acc, nx, out)
}

/// Shuffle mask (one 128-bit lane) broadcasting int16 element k.
@inline(__always) func lane16Shuffle(_ k: Int) -> V128i {
    let v = Int64((2 * k) | ((2 * k + 1) << 8)) * 0x0001_0001_0001_0001
    return V128i(v, v)
}

/// The Q16_K entries of the AVX2 kernel tables, and its quantizer.
public enum Q16_AVX2 {
    public static func q4K(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ xqStride: Int, _ nx: Int,
                           _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        forMultiGroups(nx) { j, n in kMultiQ16(row, xq + j * xqStride, xqStride, n, out + j, count, 144, Q4_K_AVX2.chunk) }
    }
    public static func q5K(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ xqStride: Int, _ nx: Int,
                           _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        forMultiGroups(nx) { j, n in kMultiQ16(row, xq + j * xqStride, xqStride, n, out + j, count, 176, Q5_K_AVX2.chunk) }
    }
    public static func q6K(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ xqStride: Int, _ nx: Int,
                           _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        forMultiGroups(nx) { j, n in q6KMultiQ16(row, xq + j * xqStride, xqStride, n, out + j, count) }
    }
    /// `q16DotRows` of Q4_K for one activation row (two go through `q4K`: the rows kernel's registers do not
    /// stretch to two here).
    public static func q4KRows(_ rows: UnsafeRawPointer, _ rowStride: Int, _ nr: Int, _ xq: UnsafeRawPointer,
                               _ xqStride: Int, _ nx: Int, _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        rowsOrTokens(rows, rowStride, nr, xq, xqStride, nx, out, count, q4K) { r, n, y, o in
            kRowsQ16(r, rowStride, n, y, o, count, 144, Q4_K_AVX2.chunk)
        }
    }
    public static func q5KRows(_ rows: UnsafeRawPointer, _ rowStride: Int, _ nr: Int, _ xq: UnsafeRawPointer,
                               _ xqStride: Int, _ nx: Int, _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        rowsOrTokens(rows, rowStride, nr, xq, xqStride, nx, out, count, q5K) { r, n, y, o in
            kRowsQ16(r, rowStride, n, y, o, count, 176, Q5_K_AVX2.chunk)
        }
    }

    /// One activation row: `rowsKernel(rows, nr, xq, out)` with nr a literal; two: `multi` per row (same bits).
    @inline(__always)
    static func rowsOrTokens(_ rows: UnsafeRawPointer, _ rs: Int, _ nr: Int, _ xq: UnsafeRawPointer, _ st: Int,
                             _ nx: Int, _ out: UnsafeMutablePointer<Float>, _ count: Int,
                             _ multi: QuantKernels.VecDotMulti,
                             _ rowsKernel: (UnsafeRawPointer, Int, UnsafeRawPointer, UnsafeMutablePointer<Float>) -> Void) {
        if nx == 1 {
            switch nr {
            case 1: rowsKernel(rows, 1, xq, out)
            case 2: rowsKernel(rows, 2, xq, out)
            case 3: rowsKernel(rows, 3, xq, out)
            default: rowsKernel(rows, 4, xq, out)
            }
            return
        }
        var two: (Float, Float) = (0, 0)
        for i in 0..<nr {
            withUnsafeMutableBytes(of: &two) { multi(rows + i * rs, xq, st, 2, $0.baseAddress!.assumingMemoryBound(to: Float.self), count) }
            out[i] = two.0
            out[4 + i] = two.1
        }
    }

    /// `Q16_K.quantize` with AVX2: the same d, v and sums (rounding to nearest even, as the scalar code).
    public static func quantize(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, _ count: Int) {
        let absMask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF))
        for b in 0..<(count / 256) {
            let x = src + 256 * b, y = dst + Q16_K.typeSize * b
            var mx = _mm256_setzero_ps()
            for i in stride(from: 0, to: 256, by: 8) { mx = _mm256_max_ps(mx, _mm256_and_ps(ldF(x, i), absMask)) }
            let amax = hmax(mx)
            let d = amax / Q16_K.maxValue, id: Float = amax > 0 ? Q16_K.maxValue / amax : 0
            y.storeBytes(of: d, as: Float.self)
            let vid = _mm256_set1_ps(id), lim = _mm256_set1_ps(Q16_K.maxValue), nlim = _mm256_set1_ps(-Q16_K.maxValue)
            for g in 0..<16 {
                @inline(__always) func v8(_ i: Int) -> V256i {
                    let t = _mm256_min_ps(lim, _mm256_max_ps(nlim, _mm256_mul_ps(ldF(x, i), vid)))
                    return _mm256_cvtps_epi32(csimd_round_nearest_ps(t))  // ties to even, as the scalar code
                }
                let a = v8(16 * g), c = v8(16 * g + 8)
                // lo = sign-extended low byte, hi = (v − lo) >> 8; packs keep values (both fit in int8).
                let loA = _mm256_srai_epi32(_mm256_slli_epi32(a, 24), 24), loC = _mm256_srai_epi32(_mm256_slli_epi32(c, 24), 24)
                let hiA = _mm256_srai_epi32(_mm256_sub_epi32(a, loA), 8), hiC = _mm256_srai_epi32(_mm256_sub_epi32(c, loC), 8)
                storeI8x16(hiA, hiC, y + Q16_K.hiOffset + 16 * g)
                storeI8x16(loA, loC, y + Q16_K.loOffset + 16 * g)
                y.storeBytes(of: hsumI32(_mm256_add_epi32(a, c)), toByteOffset: Q16_K.sumsOffset + 4 * g, as: Int32.self)
            }
        }
    }

    /// 16 int32 lanes (each in int8 range) stored as 16 bytes in order.
    @inline(__always)
    static func storeI8x16(_ a: V256i, _ c: V256i, _ dst: UnsafeMutableRawPointer) {
        let w = _mm256_packs_epi32(a, c)                  // a0-3 c0-3 | a4-7 c4-7 (int16)
        let w2 = csimd_permute4x64_0213(w)       // a0-3 a4-7 c0-3 c4-7
        let bytes = _mm_packs_epi16(_mm256_castsi256_si128(w2), csimd_extracti128_hi(w2))
        dst.storeBytes(of: bytes, as: V128i.self)
    }

    @inline(__always) static func hmax(_ v: V8f) -> Float {
        var m = _mm_max_ps(_mm256_castps256_ps128(v), csimd_extractf128_hi(v))
        m = _mm_max_ps(m, _mm_movehl_ps(m, m))
        m = _mm_max_ss(m, _mm_movehdup_ps(m))
        return _mm_cvtss_f32(m)
    }

    @inline(__always) static func hsumI32(_ v: V256i) -> Int32 { csimd_hsum_epi32(v) }
}
#endif
