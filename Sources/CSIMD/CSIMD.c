#include "CSIMD.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static uint64_t csimd_xgetbv0(void) {
    uint32_t lo, hi;
    // xgetbv with ecx = 0, spelled as bytes so no -mxsave is needed.
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

uint32_t csimd_cpu_features(void) {
    unsigned a, b, c, d;
    unsigned maxLeaf = __get_cpuid_max(0, 0);
    if (maxLeaf < 1) return 0;
    __cpuid(1, a, b, c, d);
    unsigned ecx1 = c;
    int osxsave = (ecx1 >> 27) & 1;
    uint64_t xcr0 = osxsave ? csimd_xgetbv0() : 0;
    int ymmOS = (xcr0 & 0x6) == 0x6;            // SSE + AVX state
    int zmmOS = ymmOS && (xcr0 & 0xE0) == 0xE0; // opmask, ZMM_Hi256, Hi16_ZMM
    uint32_t f = 0;
    int avx = ymmOS && ((ecx1 >> 28) & 1);
    if (avx) f |= CSIMD_AVX;
    if (avx && ((ecx1 >> 12) & 1)) f |= CSIMD_FMA;
    if (avx && ((ecx1 >> 29) & 1)) f |= CSIMD_F16C;
    if (maxLeaf >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        unsigned maxSub = a, ebx7 = b, ecx7 = c;
        if (avx && ((ebx7 >> 5) & 1)) f |= CSIMD_AVX2;
        if ((ebx7 >> 8) & 1) f |= CSIMD_BMI2;
        if (zmmOS && ((ebx7 >> 16) & 1)) {
            f |= CSIMD_AVX512F;
            if ((ebx7 >> 30) & 1) f |= CSIMD_AVX512BW;
            if ((ebx7 >> 31) & 1) f |= CSIMD_AVX512VL;
            if ((ecx7 >> 11) & 1) f |= CSIMD_AVX512VNNI;
        }
        if (maxSub >= 1) {
            __cpuid_count(7, 1, a, b, c, d);
            if (avx && ((a >> 4) & 1)) f |= CSIMD_AVXVNNI;
        }
    }
    return f;
}

#else

uint32_t csimd_cpu_features(void) { return 0; }

#endif
