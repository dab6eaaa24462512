// Shared definitions of the CUDA backend's kernels (compiled at run time by NVRTC, with the other files of this
// folder after it; see CUDAKernels.swift). Tensors are f32 activations and i32 metadata; weights are GGUF blocks,
// read in place. Every kernel is `extern "C"` so the backend finds it by name.
typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;

#ifndef KT_EMULATOR
__device__ __forceinline__ float kt_half_to_float(u16 h) {
    float f;
    asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ float kt_bf16_to_float(u16 h) { return __uint_as_float(((u32)h) << 16); }
#define KT_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) unsigned char kt_smem_raw[]; type* name = (type*)kt_smem_raw
// NVRTC includes no math.h: no INFINITY macro.
#define KT_INF __int_as_float(0x7f800000)
#else
#define KT_INF INFINITY
#endif

// Programmatic dependent launch (sm_90+; the backend's `dependentLaunches`): a kernel may start while the kernel
// before it on the stream still runs. Every kernel calls KT_PDL_WAIT() before it touches memory another kernel
// writes or reads (activations, caches, scratch: everything but the weights): it waits until the previous kernel has
// finished and its writes are visible, then lets the next kernel launch (its blocks then wait in turn), so at most
// one kernel ahead is resident. Without the launch attribute (older GPUs, copies between, the emulator) both are
// no-ops.
#if !defined(KT_EMULATOR) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define KT_PDL_WAIT() do { asm volatile("griddepcontrol.wait;" ::: "memory"); \
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); } while (0)
#else
#define KT_PDL_WAIT() do { } while (0)
#endif

// An L2 prefetch of `bytes` (a multiple of 16) at the 16-byte aligned p: it reads nothing into the block, so a kernel
// may issue it before KT_PDL_WAIT, even on memory the previous kernel writes (L2 is the coherent level: a line fetched
// early is then only wasted bandwidth). KT_ATT_PREFETCH (the backend sets it: KTRANSFORMERS_CUDA_PREFETCH=0 gives 0)
// turns the attention kernels' use of it on.
#ifndef KT_ATT_PREFETCH
#define KT_ATT_PREFETCH 1
#endif
#if !defined(KT_EMULATOR) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define KT_PREFETCH_L2(p, bytes) asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" :: "l"(p), "r"((u32)(bytes)) : "memory")
#elif !defined(KT_EMULATOR)
#define KT_PREFETCH_L2(p, bytes) do { for (int kt_o = 0; kt_o < (int)(bytes); kt_o += 128) \
    asm volatile("prefetch.global.L2 [%0];" :: "l"((const char*)(p) + kt_o)); } while (0)
#else
#define KT_PREFETCH_L2(p, bytes) do { (void)(p); } while (0)
#endif

// dp4a with a's bytes unsigned and b's signed (dp4a.u32.s32): a Q4_K word's high nibbles masked in place (16·q)
// against signed 8-bit inputs, without shifting them down first.
__device__ __forceinline__ int kt_dp4a_us(u32 a, int b, int c) {
#ifndef KT_EMULATOR
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
#else
    for (int i = 0; i < 4; i++) c += (int)((a >> (8 * i)) & 0xFFu) * (int)(signed char)((u32)b >> (8 * i));
    return c;
#endif
}

// Asks the L2 to fetch a row's bytes (its 128-byte lines spread over the warp's lanes; no registers, nothing waits
// for it): the batch-1 persistent kernels run a few rows ahead of their loads so that more of the weight stream is
// in flight than their registers hold (`KTRANSFORMERS_CUDA_PF`).
__device__ __forceinline__ void kt_prefetch_row(const u8* row, i64 bytes, int lane) {
#ifndef KT_EMULATOR
    for (i64 o = 128 * lane; o < bytes; o += 4096) asm volatile("prefetch.global.L2 [%0];" ::"l"(row + o));
#endif
}

__device__ __forceinline__ u16 kt_load16(const u8* p) { return (u16)(p[0] | (p[1] << 8)); }
__device__ __forceinline__ float kt_f16(const u8* p) { return kt_half_to_float(kt_load16(p)); }

__device__ __forceinline__ float kt_warp_sum(float v) {
    for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
    return v;
}
__device__ __forceinline__ float kt_warp_max(float v) {
    for (int m = 16; m > 0; m >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, m));
    return v;
}
// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result. `scratch` holds 32
// floats; the block must call it uniformly.
__device__ __forceinline__ float kt_block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = kt_warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float s = lane < warps ? scratch[lane] : 0.0f;
    return kt_warp_sum(s);
}
__device__ __forceinline__ float kt_block_max(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = kt_warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float s = lane < warps ? scratch[lane] : -KT_INF;
    return kt_warp_max(s);
}

#ifndef KT_EMULATOR
// Asynchronous 16-byte copies global -> shared (cp.async, sm_80+): issued by each thread, grouped by commit, waited
// for with at most N groups still in flight (the emulator copies at once).
__device__ __forceinline__ void kt_cp_async16(void* smem, const void* g) {
    u32 a;
    asm("{ .reg .u64 s; cvta.to.shared.u64 s, %1; cvt.u32.u64 %0, s; }" : "=r"(a) : "l"(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(a), "l"(g) : "memory");
}
// 4 and 8 bytes (cp.async.ca: copies under 16 bytes may not bypass L1): scalars such as a token's super-block
// scale, and pieces of rows staged at strides that are not multiples of 16 bytes.
__device__ __forceinline__ void kt_cp_async4(void* smem, const void* g) {
    u32 a;
    asm("{ .reg .u64 s; cvta.to.shared.u64 s, %1; cvt.u32.u64 %0, s; }" : "=r"(a) : "l"(smem));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(a), "l"(g) : "memory");
}
__device__ __forceinline__ void kt_cp_async8(void* smem, const void* g) {
    u32 a;
    asm("{ .reg .u64 s; cvta.to.shared.u64 s, %1; cvt.u32.u64 %0, s; }" : "=r"(a) : "l"(smem));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(a), "l"(g) : "memory");
}
__device__ __forceinline__ void kt_cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void kt_cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }
#endif

// One step of a warp's ring of D shared-memory slots (the streaming kernels): refills the slot of step + D - 1
// (`issue(slot)`, which commits a copy group), waits for step's copies and makes them visible to the whole warp;
// returns step's slot. The caller __syncwarp()s after reading it, before the next step refills it.
template <int D, class Issue>
__device__ __forceinline__ const u8* kt_ring_step(Issue& issue, const u8* ring, int slotBytes, int step) {
    issue((step + D - 1) % D);
    kt_cp_async_wait<D - 1>();
    __syncwarp();
    return ring + (step % D) * slotBytes;
}

#ifndef KT_EMULATOR
// Warp-wide int8 tensor-core products, C += A·B (s32 accumulate): m16n8k32 with a[4], b[2]; m16n8k16 with a[2],
// b[1]. Fragment layouts as in the PTX ISA (see the emulator's emu_mma_s8 for them spelled out).
#define KT_MMA_K32(c, a, b) \
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};" \
                 : "+r"((c)[0]), "+r"((c)[1]), "+r"((c)[2]), "+r"((c)[3]) \
                 : "r"((a)[0]), "r"((a)[1]), "r"((a)[2]), "r"((a)[3]), "r"((b)[0]), "r"((b)[1]))
// The same m16n8k32 with unsigned B (u8, 0..255): the low bytes of 16-bit inputs (mmq16_block_q4_K).
#define KT_MMA_K32_U8B(c, a, b) \
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.u8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};" \
                 : "+r"((c)[0]), "+r"((c)[1]), "+r"((c)[2]), "+r"((c)[3]) \
                 : "r"((a)[0]), "r"((a)[1]), "r"((a)[2]), "r"((a)[3]), "r"((b)[0]), "r"((b)[1]))
#define KT_MMA_K16(c, a, b) \
    asm("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};" \
                 : "+r"((c)[0]), "+r"((c)[1]), "+r"((c)[2]), "+r"((c)[3]) \
                 : "r"((a)[0]), "r"((a)[1]), "r"((b)[0]))
// m16n8k8 tf32 (f32 accumulate): a[4], b[2] tf32 bit patterns, c[4] floats; layouts as for the int8 forms with
// k 0..7 (a[0] row g, k t; a[1] row g + 8; a[2] row g, k t + 4; a[3] row g + 8, k t + 4; b[0] k t, b[1] k t + 4).
#define KT_MMA_TF32(c, a, b) \
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};" \
                 : "+f"((c)[0]), "+f"((c)[1]), "+f"((c)[2]), "+f"((c)[3]) \
                 : "r"((a)[0]), "r"((a)[1]), "r"((a)[2]), "r"((a)[3]), "r"((b)[0]), "r"((b)[1]))
// m16n8k16 f16 (f32 accumulate): a[4], b[2] hold two f16 each (a[0] row g, k 2t, 2t + 1; a[1] row g + 8; a[2] row g,
// k 2t + 8, 2t + 9; a[3] row g + 8, k 2t + 8, 2t + 9; b[0] k 2t, 2t + 1, column g; b[1] k 2t + 8, 2t + 9), c[4] floats.
#define KT_MMA_F16(c, a, b) \
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};" \
                 : "+f"((c)[0]), "+f"((c)[1]), "+f"((c)[2]), "+f"((c)[3]) \
                 : "r"((a)[0]), "r"((a)[1]), "r"((a)[2]), "r"((a)[3]), "r"((b)[0]), "r"((b)[1]))
// f32 -> tf32 (round to nearest, ties away), as a bit pattern.
__device__ __forceinline__ u32 kt_tf32(float f) {
    u32 r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(f));
    return r;
}
// float -> f16 bits, rounding to nearest even.
__device__ __forceinline__ u16 kt_float_to_half(float f) {
    u16 h;
    asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(h) : "f"(f));
    return h;
}
// float -> f16 -> float, rounding to nearest even (the f16 scale of a Q8_0 block).
__device__ __forceinline__ float kt_round_to_half(float f) { return kt_half_to_float(kt_float_to_half(f)); }
#endif
