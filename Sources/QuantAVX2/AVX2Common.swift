#if arch(x86_64)  // the whole module is x86-64 only; QuantAVX2.kernels(for:) answers nil elsewhere
// Shared AVX2 building blocks. This whole module is compiled for AVX2 + FMA + F16C: nothing in it may run
// before `KernelDispatch` has checked CPUID.

import _Builtin_intrinsics.intel
import CSIMD
import Quant

typealias V256i = __m256i   // SIMD4<Int64>
typealias V128i = __m128i   // SIMD2<Int64>
typealias V8f = __m256      // SIMD8<Float>

@inline(__always) func ld256(_ p: UnsafeRawPointer) -> V256i { p.loadUnaligned(as: V256i.self) }
@inline(__always) func ld256(_ p: UnsafeRawPointer, _ off: Int) -> V256i {
    p.loadUnaligned(fromByteOffset: off, as: V256i.self)
}
@inline(__always) func ld128(_ p: UnsafeRawPointer, _ off: Int = 0) -> V128i {
    p.loadUnaligned(fromByteOffset: off, as: V128i.self)
}
@inline(__always) func ldF(_ p: UnsafePointer<Float>, _ i: Int) -> V8f {
    UnsafeRawPointer(p + i).loadUnaligned(as: V8f.self)
}
@inline(__always) func stF(_ p: UnsafeMutablePointer<Float>, _ i: Int, _ v: V8f) {
    UnsafeMutableRawPointer(p + i).storeBytes(of: v, as: V8f.self)
}

/// The half at byte `off` of `p` as f32 (F16C; exact).
@inline(__always) func h2f(_ p: UnsafeRawPointer, _ off: Int) -> Float {
    csimd_f16_to_f32(p.loadUnaligned(fromByteOffset: off, as: UInt16.self))
}

@inline(__always) func hsum(_ v: V8f) -> Float { csimd_hsum_ps(v) }

/// Prefetches every cache line of the `bytes` at `p` a page ahead: for the K-quant kernels, whose weights stream
/// from DRAM in regions of ~1 MB at random places (MoE experts), where the hardware prefetchers restart at each
/// 4 KB page.
@inline(__always)
func prefetchBlock(_ p: UnsafeRawPointer, _ bytes: Int) {
    var o = 0
    while o < bytes {
        csimd_prefetch(p + 4096 + o)
        o += 64
    }
}


@inline(__always) func splat8(_ b: UInt8) -> V256i { _mm256_set1_epi8(CChar(bitPattern: b)) }
@inline(__always) func splat16(_ v: Int16) -> V256i { _mm256_set1_epi16(v) }

/// 32 nibbles of the 16 bytes at `p + off`: low nibbles in bytes 0..<16, high nibbles in 16..<32 (ggml order).
@inline(__always) func nibbles32(_ p: UnsafeRawPointer, _ off: Int) -> V256i {
    let t = ld128(p, off)
    let v = csimd_set_m128i(_mm_srli_epi16(t, 4), t)
    return _mm256_and_si256(v, splat8(0x0F))
}

/// Byte j is 0xFF where bit j of `bits` is set, else 0.
@inline(__always) func bytesFromBits(_ bits: UInt32) -> V256i {
    let t = _mm256_set1_epi32(Int32(bitPattern: bits))
    let shuf = V256i(0, 0x0101_0101_0101_0101, 0x0202_0202_0202_0202, 0x0303_0303_0303_0303)
    let b = _mm256_or_si256(_mm256_shuffle_epi8(t, shuf), _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe))
    return _mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1))
}

/// Σ of adjacent products of signed x and signed y, as 16 int16 (pairs). Exact when y has no −128
/// (activations from the Q8 quantizers never do): |x|·sign(y,x) on the unsigned×signed multiply.
@inline(__always) func mulPairsSS(_ x: V256i, _ y: V256i) -> V256i {
    _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

/// 16 int16 → 8 int32 sums of adjacent pairs.
@inline(__always) func sumPairs16(_ v: V256i) -> V256i { _mm256_madd_epi16(v, splat16(1)) }

/// Σ over 32 int8 lanes of y (as 8 int32 partial sums).
@inline(__always) func sumI8(_ y: V256i) -> V256i {
    sumPairs16(_mm256_maddubs_epi16(splat8(1), y))
}

/// int8 lanes 8k..<8k+8 of v as f32.
@inline(__always) func i8ToF(_ v: V256i, _ k: Int) -> V8f {
    let h: V128i = k < 2 ? _mm256_castsi256_si128(v) : csimd_extracti128_hi(v)
    let part: V128i = (k & 1) == 0 ? h : _mm_unpackhi_epi64(h, h)
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part))
}

/// Σ_i q[i]·x[i] over 32 int8 lanes of q and 32 floats at x, as 8 lane sums.
@inline(__always) func dot32(_ q: V256i, _ x: UnsafePointer<Float>) -> V8f {
    var t = _mm256_mul_ps(i8ToF(q, 0), ldF(x, 0))
    t = _mm256_fmadd_ps(i8ToF(q, 1), ldF(x, 8), t)
    let u = _mm256_mul_ps(i8ToF(q, 2), ldF(x, 16))
    return _mm256_add_ps(t, _mm256_fmadd_ps(i8ToF(q, 3), ldF(x, 24), u))
}

/// y[i] = q[i]·d for 32 int8 lanes (mul, no fma: bit-identical to the scalar dequantizers).
@inline(__always) func store32(_ q: V256i, _ d: Float, _ y: UnsafeMutablePointer<Float>) {
    let vd = _mm256_set1_ps(d)
    for k in 0..<4 { stF(y, 8 * k, _mm256_mul_ps(i8ToF(q, k), vd)) }
}

/// y[i] = q[i]·d − m (two roundings, as the scalar code).
@inline(__always) func store32(_ q: V256i, _ d: Float, minus m: Float, _ y: UnsafeMutablePointer<Float>) {
    let vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m)
    for k in 0..<4 { stF(y, 8 * k, _mm256_sub_ps(_mm256_mul_ps(i8ToF(q, k), vd), vm)) }
}

/// y[i] = q[i]·d + m.
@inline(__always) func store32(_ q: V256i, _ d: Float, plus m: Float, _ y: UnsafeMutablePointer<Float>) {
    let vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m)
    for k in 0..<4 { stF(y, 8 * k, _mm256_add_ps(_mm256_mul_ps(i8ToF(q, k), vd), vm)) }
}

/// 16 int8 lanes (one 128-bit half) of q times d into y[0..<16].
@inline(__always) func store16(_ q: V128i, _ d: Float, _ y: UnsafeMutablePointer<Float>) {
    let vd = _mm256_set1_ps(d)
    stF(y, 0, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), vd))
    stF(y, 8, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(q, q))), vd))
}

@inline(__always) func store16(_ q: V128i, _ d: Float, minus m: Float, _ y: UnsafeMutablePointer<Float>) {
    let vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m)
    stF(y, 0, _mm256_sub_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), vd), vm))
    stF(y, 8, _mm256_sub_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(q, q))), vd), vm))
}

@inline(__always) func lo128(_ v: V256i) -> V128i { _mm256_castsi256_si128(v) }
@inline(__always) func hi128(_ v: V256i) -> V128i { csimd_extracti128_hi(v) }

/// Shuffle masks that broadcast int16 pair (2m, 2m+1) of a 16-byte vector of int8 scales: 8 bytes of scale 2m,
/// then 8 of scale 2m+1 (to be widened with cvtepi8_epi16: low lane scale 2m, high lane scale 2m+1).
@inline(__always) func scalePairShuffle(_ m: Int) -> V128i {
    let a = Int64(2 * m) * 0x0101_0101_0101_0101
    let b = Int64(2 * m + 1) * 0x0101_0101_0101_0101
    return V128i(a, b)
}

/// The int16 scale vector for sub-blocks 2m (low lane) and 2m+1 (high lane) out of 16 int8 scales.
@inline(__always) func scalePair(_ scales: V128i, _ m: Int) -> V256i {
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, scalePairShuffle(m)))
}

/// The IQ4_NL grid as a 16-byte table in both lanes.
@inline(__always) func iq4nlTable() -> V256i {
    let t = V128i(Int64(bitPattern: 0xF6EA_DDCF_BFAD_9881), Int64(bitPattern: 0x7159_4535_2619_0D01))
    return _mm256_set_m128i(t, t)
}

// MARK: - f32 dots against up to 4 rows (dotF32 is the nx = 1 case, so both give identical bits)

/// Four accumulators (one per f32 row); only the first `nx` are used.
typealias Acc4 = (V8f, V8f, V8f, V8f)

@inline(__always) func zeroAcc4() -> Acc4 {
    let z = _mm256_setzero_ps()
    return (z, z, z, z)
}

/// 32 decoded weights (8 lanes each), already scaled: the exact dequantized values.
typealias W32 = (V8f, V8f, V8f, V8f)

/// acc_j += Σ_k w_k · x_j[8k ..< 8k+8] for the `nx` (constant after inlining) rows x_j = x + j·xs. Each row's
/// operations do not depend on nx, so a row's result is the same whatever the group size.
@inline(__always)
func fmaRows(_ w: W32, _ x: UnsafePointer<Float>, _ xs: Int, _ nx: Int, _ acc: inout Acc4) {
    @inline(__always) func one(_ x: UnsafePointer<Float>) -> V8f {
        var t = _mm256_mul_ps(w.0, ldF(x, 0))
        t = _mm256_fmadd_ps(w.1, ldF(x, 8), t)
        t = _mm256_fmadd_ps(w.2, ldF(x, 16), t)
        return _mm256_fmadd_ps(w.3, ldF(x, 24), t)
    }
    acc.0 = _mm256_add_ps(acc.0, one(x))
    if nx > 1 { acc.1 = _mm256_add_ps(acc.1, one(x + xs)) }
    if nx > 2 { acc.2 = _mm256_add_ps(acc.2, one(x + 2 * xs)) }
    if nx > 3 { acc.3 = _mm256_add_ps(acc.3, one(x + 3 * xs)) }
}

@inline(__always)
func storeRows(_ acc: Acc4, _ nx: Int, _ out: UnsafeMutablePointer<Float>) {
    out[0] = hsum(acc.0)
    if nx > 1 { out[1] = hsum(acc.1) }
    if nx > 2 { out[2] = hsum(acc.2) }
    if nx > 3 { out[3] = hsum(acc.3) }
}

/// Lane `j` of v in all 8 lanes.
@inline(__always) func lane(_ v: V8f, _ j: Int) -> V8f {
    _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(Int32(j)))
}

/// The 8 bytes of `b` (unsigned) as f32 lanes.
@inline(__always) func u8x8ToF(_ b: UInt64) -> V8f {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(Int64(bitPattern: b))))
}

/// Σ q·x over 32 int8 lanes already converted to f32 (`dot32`'s tree), for `nx` rows: t_j.
@inline(__always)
func dotRows32(_ q: W32, _ x: UnsafePointer<Float>, _ xs: Int, _ nx: Int, _ scale: V8f, _ acc: inout Acc4) {
    @inline(__always) func one(_ x: UnsafePointer<Float>) -> V8f {
        let t = _mm256_fmadd_ps(q.1, ldF(x, 8), _mm256_mul_ps(q.0, ldF(x, 0)))
        let u = _mm256_fmadd_ps(q.3, ldF(x, 24), _mm256_mul_ps(q.2, ldF(x, 16)))
        return _mm256_add_ps(t, u)
    }
    acc.0 = _mm256_fmadd_ps(scale, one(x), acc.0)
    if nx > 1 { acc.1 = _mm256_fmadd_ps(scale, one(x + xs), acc.1) }
    if nx > 2 { acc.2 = _mm256_fmadd_ps(scale, one(x + 2 * xs), acc.2) }
    if nx > 3 { acc.3 = _mm256_fmadd_ps(scale, one(x + 3 * xs), acc.3) }
}

@inline(__always) func i8x32ToF(_ q: V256i) -> W32 { (i8ToF(q, 0), i8ToF(q, 1), i8ToF(q, 2), i8ToF(q, 3)) }

/// Row · `nx` f32 rows for the 32-element formats without a min: Σ_blocks d·Σ q·x, even and odd blocks in two
/// accumulators per row (for Q8_0 the exact steps of the former single-row kernel).
@inline(__always)
func dotF32Multi32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ xs: Int, _ nx: Int,
                   _ out: UnsafeMutablePointer<Float>, _ count: Int, _ ts: Int,
                   _ decode: (UnsafeRawPointer) -> V256i) {
    var a = zeroAcc4(), c = zeroAcc4()
    let nb = count / 32
    var b = 0
    while b + 2 <= nb {
        let p = row + b * ts
        dotRows32(i8x32ToF(decode(p)), x + 32 * b, xs, nx, _mm256_set1_ps(h2f(p, 0)), &a)
        dotRows32(i8x32ToF(decode(p + ts)), x + 32 * b + 32, xs, nx, _mm256_set1_ps(h2f(p, ts)), &c)
        b += 2
    }
    if b < nb {
        let p = row + b * ts
        dotRows32(i8x32ToF(decode(p)), x + 32 * b, xs, nx, _mm256_set1_ps(h2f(p, 0)), &a)
    }
    a.0 = _mm256_add_ps(a.0, c.0)
    a.1 = _mm256_add_ps(a.1, c.1)
    a.2 = _mm256_add_ps(a.2, c.2)
    a.3 = _mm256_add_ps(a.3, c.3)
    storeRows(a, nx, out)
}

#endif
