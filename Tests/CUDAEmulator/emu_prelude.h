// The CUDA C dialect our kernels use, for the host: prepended by the CUDA emulator (cuda_emu.cpp) to a kernel
// source before g++ compiles it. Each block's threads run as fibers on one OS thread; __syncthreads() and the warp
// shuffles switch fibers. Only what Sources/BackendCUDA/Kernels uses is here.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#define KT_EMULATOR 1
#include "emu_half.h"

struct emu_dim3 { unsigned x, y, z; };
struct emu_fiber_info { emu_dim3 tid; int linear; };
extern "C" {
extern emu_fiber_info* emu_current;
extern emu_dim3 emu_block_idx, emu_block_dim, emu_grid_dim;
extern void* emu_dynamic_shared;
void emu_barrier(int warpOnly);
uint64_t* emu_exchange_slots();
}
#define threadIdx (emu_current->tid)
#define blockIdx emu_block_idx
#define blockDim emu_block_dim
#define gridDim emu_grid_dim
#define __global__ __attribute__((used))
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __constant__ static const
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define KT_DYNAMIC_SHARED(type, name) type* name = (type*)emu_dynamic_shared

static inline void __syncthreads() { emu_barrier(0); }
static inline void __syncwarp(unsigned = 0xffffffffu) { emu_barrier(1); }

template <typename T> static inline T emu_shuffle(T v, int srcLane) {
    uint64_t* slots = emu_exchange_slots();
    int me = emu_current->linear;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    slots[me] = bits;
    emu_barrier(1);
    int src = (me & ~31) | (srcLane & 31);
    uint64_t got = slots[src];
    emu_barrier(1);
    T r;
    std::memcpy(&r, &got, sizeof(T));
    return r;
}
template <typename T> static inline T __shfl_xor_sync(unsigned, T v, int mask, int = 32) {
    return emu_shuffle(v, (emu_current->linear & 31) ^ mask);
}
template <typename T> static inline T __shfl_sync(unsigned, T v, int lane, int = 32) { return emu_shuffle(v, lane); }
template <typename T> static inline T __shfl_down_sync(unsigned, T v, unsigned d, int = 32) {
    int lane = emu_current->linear & 31;
    int src = lane + (int)d;
    T r = emu_shuffle(v, src < 32 ? src : lane);
    return r;
}
static inline float atomicAdd(float* p, float v) { float o = *p; *p = o + v; return o; }
static inline int atomicAdd(int* p, int v) { int o = *p; *p = o + v; return o; }
#define __expf(x) expf(x)
static inline float __fdividef(float a, float b) { return a / b; }
static inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
template <typename T> static inline T __ldg(const T* p) { return *p; }
template <typename T> static inline T __ldcg(const T* p) { return *p; }
static inline void __threadfence() {}  // (one host thread runs the grid: stores are visible in program order)
static inline float kt_bf16_to_float(uint16_t h) { uint32_t b = (uint32_t)h << 16; float f; std::memcpy(&f, &b, 4); return f; }

// Registration of each kernel (appended by the emulator after the source): a C entry that unpacks the driver's
// argument array into the kernel's parameters, and one that reports their sizes (for graph capture).
#include <utility>
#include <type_traits>
template <typename... A, std::size_t... I>
static inline void emu_invoke_impl(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*(std::remove_cv_t<std::remove_reference_t<A>>*)args[I]...);
}
template <typename... A> static inline void emu_invoke(void (*f)(A...), void** args) {
    emu_invoke_impl(f, args, std::index_sequence_for<A...>{});
}
template <typename... A> static inline int emu_arg_sizes(void (*)(A...), std::size_t* sizes) {
    std::size_t s[] = {sizeof(A)..., 0};
    for (std::size_t i = 0; i < sizeof...(A); i++) sizes[i] = s[i];
    return (int)sizeof...(A);
}
#define EMU_REGISTER(name) \
    extern "C" void emu_kernel_##name(void** args) { emu_invoke(&name, args); } \
    extern "C" int emu_argsizes_##name(std::size_t* sizes) { return emu_arg_sizes(&name, sizes); }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline int __float2int_rn(float x) { return (int)std::nearbyint(x); }
static inline float kt_round_to_half(float f) { return kt_half_to_float(kt_float_to_half(f)); }
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) int4 { int x, y, z, w; };
static inline int __dp4a(int a, int b, int c) {
    for (int i = 0; i < 4; i++) c += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
    return c;
}
// dp2a: two signed 16-bit halves of a times two signed bytes of b (bytes 0, 1: lo; 2, 3: hi), plus c.
static inline int __dp2a_lo(int a, int b, int c) {
    return c + (int)(int16_t)(a & 0xFFFF) * (int)(int8_t)b + (int)(int16_t)((unsigned)a >> 16) * (int)(int8_t)(b >> 8);
}
static inline int __dp2a_hi(int a, int b, int c) {
    return c + (int)(int16_t)(a & 0xFFFF) * (int)(int8_t)(b >> 16) + (int)(int16_t)((unsigned)a >> 16) * (int)(int8_t)(b >> 24);
}
struct alignas(8) uint2 { unsigned x, y; };
static inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }
// Rounding intrinsics: g++ -O1 for x86-64 has no FMA to contract into, so plain operations round the same way.
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
// mma.sync m16n8k32 / m16n8k16 (s8 · s8 → s32) for one warp: every lane publishes its fragments, each lane computes
// its four C elements from the PTX fragment layouts (A row-major 16×K: a[0] row g, k 4t..4t+3; a[1] row g + 8;
// for K = 32 a[2], a[3] the same at k + 16. B K×8: b[0] k 4t..4t+3 (b[1] k + 16), column g. C: c[0], c[1] row g,
// columns 2t, 2t + 1; c[2], c[3] row g + 8), with g = lane / 4, t = lane % 4.
static inline void emu_mma_s8(int* c, const unsigned* a, const unsigned* b, int K, bool unsignedB = false) {
    static unsigned buf[1024][6];
    int me = emu_current->linear, base = me & ~31, lane = me & 31;
    for (int i = 0; i < 4; i++) buf[me][i] = i < (K == 32 ? 4 : 2) ? a[i] : 0;
    buf[me][4] = b[0];
    buf[me][5] = K == 32 ? b[1] : 0;
    emu_barrier(1);
    int g = lane >> 2, t = lane & 3;
    for (int e = 0; e < 4; e++) {
        int R = g + (e >= 2 ? 8 : 0), N = 2 * t + (e & 1), s = 0;
        for (int k = 0; k < K; k++) {
            int la = base + (R % 8) * 4 + (k % 16) / 4, ra = (R >= 8 ? 1 : 0) + (k >= 16 ? 2 : 0);
            int lb = base + N * 4 + (k % 16) / 4, rb = 4 + (k >= 16 ? 1 : 0);
            int av = (int8_t)(buf[la][ra] >> (8 * (k % 4))), bv = unsignedB ? (int)(uint8_t)(buf[lb][rb] >> (8 * (k % 4)))
                                          : (int)(int8_t)(buf[lb][rb] >> (8 * (k % 4)));
            s += av * bv;
        }
        c[e] += s;
    }
    emu_barrier(1);
}
// cp.async: the copy happens at once (a kernel waits for it before it reads the data, after a __syncthreads).
static inline void kt_cp_async16(void* smem, const void* g) { std::memcpy(smem, g, 16); }
static inline void kt_cp_async4(void* smem, const void* g) { std::memcpy(smem, g, 4); }
static inline void kt_cp_async8(void* smem, const void* g) { std::memcpy(smem, g, 8); }
static inline void kt_cp_async_commit() {}
template <int N> static inline void kt_cp_async_wait() {}
#define KT_MMA_K32(c, a, b) emu_mma_s8(c, a, b, 32)
#define KT_MMA_K16(c, a, b) emu_mma_s8(c, a, b, 16)
#define KT_MMA_K32_U8B(c, a, b) emu_mma_s8(c, a, b, 32, true)
static inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
static inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
struct alignas(8) float2 { float x, y; };
// f32 -> tf32 (cvt.rna: round to nearest, ties away from zero), as a bit pattern.
static inline unsigned kt_tf32(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7f800000u) == 0x7f800000u) return u;
    return (u + 0x1000u) & 0xffffe000u;
}
// A float-accumulating mma.sync m16n8kK for one warp: every lane publishes its fragments (a[4], b[2]: each register
// K/8 operands), then computes its four C elements (layouts in the comment of emu_mma_s8: a[0] row g, a[1] row g + 8,
// a[2], a[3] the same K/2 further; b[0] column g, b[1] K/2 further; operand k of a half sits in lane 4·row + (k mod
// K/2) / (K/8), part (k mod K/8) of the register), with `operand(word, part)` decoding one operand.
template <int K, class Operand>
static inline void emu_mma_float(float* c, const unsigned* a, const unsigned* b, Operand operand) {
    static unsigned buf[1024][6];
    int me = emu_current->linear, base = me & ~31, lane = me & 31;
    for (int i = 0; i < 4; i++) buf[me][i] = a[i];
    buf[me][4] = b[0];
    buf[me][5] = b[1];
    emu_barrier(1);
    const int per = K / 8, half = K / 2;
    int g = lane >> 2, t = lane & 3;
    for (int e = 0; e < 4; e++) {
        int R = g + (e >= 2 ? 8 : 0), N = 2 * t + (e & 1);
        float s = c[e];
        for (int k = 0; k < K; k++) {
            int q = (k % half) / per, part = k % per, hi = k >= half ? 1 : 0;
            unsigned wa = buf[base + (R % 8) * 4 + q][(R >= 8 ? 1 : 0) + 2 * hi], wb = buf[base + N * 4 + q][4 + hi];
            s += operand(wa, part) * operand(wb, part);
        }
        c[e] = s;
    }
    emu_barrier(1);
}
// m16n8k8 tf32 → f32 (one operand a register).
static inline void emu_mma_tf32(float* c, const unsigned* a, const unsigned* b) {
    emu_mma_float<8>(c, a, b, [](unsigned w, int) { return __uint_as_float(w); });
}
#define KT_MMA_TF32(c, a, b) emu_mma_tf32(c, a, b)
struct alignas(16) float4 { float x, y, z, w; };
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
// PRMT: byte i of the result is byte (selector nibble i) of the 8 bytes {x, y} (x bytes 0..3, y bytes 4..7).
static inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    unsigned long long v = ((unsigned long long)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; i++) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}
// m16n8k16 f16 · f16 → f32 (two operands a register, the first in the low half; layouts in common.cuh's KT_MMA_F16).
static inline void emu_mma_f16(float* c, const unsigned* a, const unsigned* b) {
    emu_mma_float<16>(c, a, b, [](unsigned w, int part) { return kt_half_to_float((uint16_t)(w >> (16 * part))); });
}
#define KT_MMA_F16(c, a, b) emu_mma_f16(c, a, b)
