#ifndef CSIMD_H
#define CSIMD_H

// CPU feature detection (safe on any CPU; "no features" off x86-64) and `static inline` wrappers for the x86
// intrinsics that take an immediate operand (C macros, which Swift cannot import). The wrappers exist only when
// the importing module is compiled for AVX2 (`-Xcc -mavx2 -Xcc -mfma -Xcc -mf16c`); other importers see just the
// feature query.

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Bits of `csimd_cpu_features()`. A bit is set only when the CPU has the feature AND the OS saves the
/// register state it needs (XCR0), so code using it may run.
enum {
    CSIMD_AVX2        = 1u << 0,
    CSIMD_FMA         = 1u << 1,
    CSIMD_F16C        = 1u << 2,
    CSIMD_AVX512F     = 1u << 3,
    CSIMD_AVX512BW    = 1u << 4,
    CSIMD_AVX512VL    = 1u << 5,
    CSIMD_AVX512VNNI  = 1u << 6,
    CSIMD_AVXVNNI     = 1u << 7,
    CSIMD_BMI2        = 1u << 8,
    CSIMD_AVX         = 1u << 9,
};

/// The CSIMD_* bits of this CPU (computed with cpuid/xgetbv on each call; cheap, but cache it).
/// Always 0 on non-x86 targets.
uint32_t csimd_cpu_features(void);

/// The CPUs this process may run on (its affinity mask), ascending, at most `max`; -1 where unknown.
int csimd_allowed_cpus(int *out, int max);
/// Pins a thread (a pthread_t) to one CPU; 0 on success.
int csimd_pin_thread(unsigned long thread, int cpu);

#if (defined(__x86_64__) || defined(__i386__)) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#define CSIMD_INLINE static inline __attribute__((always_inline))

CSIMD_INLINE __m128i csimd_extracti128_hi(__m256i a) { return _mm256_extracti128_si256(a, 1); }
CSIMD_INLINE __m128 csimd_extractf128_hi(__m256 a) { return _mm256_extractf128_ps(a, 1); }
CSIMD_INLINE __m256i csimd_set_m128i(__m128i hi, __m128i lo) {
    return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}
/// 64-bit lane permute (0, 2, 1, 3): undoes the lane interleave of the 256-bit pack instructions.
CSIMD_INLINE __m256i csimd_permute4x64_0213(__m256i a) { return _mm256_permute4x64_epi64(a, 0xD8); }
/// Broadcast the low / high 128 bits to both halves.
CSIMD_INLINE __m256i csimd_permute2x128_lo(__m256i a) { return _mm256_permute2x128_si256(a, a, 0x00); }
CSIMD_INLINE __m256i csimd_permute2x128_hi(__m256i a) { return _mm256_permute2x128_si256(a, a, 0x11); }
/// Horizontal helpers.
CSIMD_INLINE float csimd_hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
CSIMD_INLINE int32_t csimd_hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}
/// Rounding (the imm8 of _mm256_round_ps): toward zero, no exceptions.
CSIMD_INLINE __m256 csimd_trunc_ps(__m256 a) { return _mm256_round_ps(a, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC); }
/// Round to nearest even, no exceptions.
CSIMD_INLINE __m256 csimd_round_nearest_ps(__m256 a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
/// a >= b (ordered, quiet) as an all-ones lane mask.
CSIMD_INLINE __m256 csimd_cmpge_ps(__m256 a, __m256 b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
/// a == b (ordered, quiet) as an all-ones lane mask.
CSIMD_INLINE __m256 csimd_cmpeq_ps(__m256 a, __m256 b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
/// f32 → f16, round to nearest even (F16C).
CSIMD_INLINE __m128i csimd_cvtps_ph(__m256 a) { return _mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT); }
CSIMD_INLINE uint16_t csimd_f32_to_f16(float f) {
    return (uint16_t)_mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(f), _MM_FROUND_TO_NEAREST_INT), 0);
}
/// Half → single (exact). The empty asm keeps the zero-extending vmovd: without it LLVM turns the conversion into
/// a vpinsrw into whatever register is free (often the accumulator), a false dependency that serialized the
/// dot-product loops (~3x slower).
CSIMD_INLINE float csimd_f16_to_f32(uint16_t h) {
    __m128i v = _mm_cvtsi32_si128(h);
    __asm__("" : "+x"(v));
    return _mm_cvtss_f32(_mm_cvtph_ps(v));
}
/// In-lane 32-bit shuffles.
CSIMD_INLINE __m256i csimd_shuffle_epi32_1032(__m256i a) { return _mm256_shuffle_epi32(a, 0x4E); }
CSIMD_INLINE __m256i csimd_shuffle_epi32_2301(__m256i a) { return _mm256_shuffle_epi32(a, 0xB1); }
/// Byte shifts of each 128-bit lane.
CSIMD_INLINE __m256i csimd_bsrli_8(__m256i a) { return _mm256_bsrli_epi128(a, 8); }
/// Prefetch into all cache levels.
CSIMD_INLINE void csimd_prefetch(const void *p) { _mm_prefetch((const char *)p, _MM_HINT_T0); }
CSIMD_INLINE void csimd_pause(void) { __builtin_ia32_pause(); }

#endif

// AVX-512 (F+BW+VL) + AVX512-VNNI wrappers, for modules compiled with
// `-mavx512f -mavx512bw -mavx512vl -mavx512vnni` (QuantAVX512); the 256-bit VNNI forms are macros in clang's headers.
#if defined(CSIMD_INLINE) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
/// s + Σ of the 4 adjacent products of unsigned bytes of a and signed bytes of b, per int32 lane (vpdpbusd ymm).
CSIMD_INLINE __m256i csimd_dpbusd256(__m256i s, __m256i a, __m256i b) { return _mm256_dpbusd_epi32(s, a, b); }
/// s + Σ of the 2 adjacent products of int16 lanes of a and b, per int32 lane (vpdpwssd ymm).
CSIMD_INLINE __m256i csimd_dpwssd256(__m256i s, __m256i a, __m256i b) { return _mm256_dpwssd_epi32(s, a, b); }
/// The 512-bit vector [lo, hi].
CSIMD_INLINE __m512i csimd_set_m256i(__m256i hi, __m256i lo) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}
CSIMD_INLINE __m512 csimd_set_m256(__m256 hi, __m256 lo) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1));
}
CSIMD_INLINE __m256 csimd_extractf32x8_hi(__m512 a) {
    return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
}
CSIMD_INLINE __m256i csimd_extracti64x4_hi(__m512i a) { return _mm512_extracti64x4_epi64(a, 1); }
/// 128-bit chunks (a0, a2, b0, b2) and (a1, a3, b1, b3) (vshuff32x4): with an add, the pairwise sums of chunks.
CSIMD_INLINE __m512 csimd_shuffle_f32x4_even(__m512 a, __m512 b) { return _mm512_shuffle_f32x4(a, b, 0x88); }
CSIMD_INLINE __m512 csimd_shuffle_f32x4_odd(__m512 a, __m512 b) { return _mm512_shuffle_f32x4(a, b, 0xDD); }
/// Per 128-bit chunk (a0, a2, b0, b2) and (a1, a3, b1, b3) (vshufps).
CSIMD_INLINE __m512 csimd_shuffle_ps_even(__m512 a, __m512 b) { return _mm512_shuffle_ps(a, b, 0x88); }
CSIMD_INLINE __m512 csimd_shuffle_ps_odd(__m512 a, __m512 b) { return _mm512_shuffle_ps(a, b, 0xDD); }
/// 256-bit halves (a.lo, b.lo) and (a.hi, b.hi).
CSIMD_INLINE __m512 csimd_shuffle_f32x4_lo(__m512 a, __m512 b) { return _mm512_shuffle_f32x4(a, b, 0x44); }
CSIMD_INLINE __m512 csimd_shuffle_f32x4_hi(__m512 a, __m512 b) { return _mm512_shuffle_f32x4(a, b, 0xEE); }
/// Round to nearest even, no exceptions (16 lanes).
CSIMD_INLINE __m512 csimd_round_nearest_ps512(__m512 a) {
    return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
#endif

#ifdef __cplusplus
}
#endif
#endif
