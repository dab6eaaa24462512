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

#endif
