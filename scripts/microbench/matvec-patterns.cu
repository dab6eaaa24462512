// How fast can a batch-1 Q4_K matrix-vector product read its matrix on this GPU, and does the order in which the
// warps walk the rows matter? A standalone measurement (nvcc -O3 -arch=native; run by `device-check.sh patterns`),
// not part of the server: the matrices are random bytes laid out as Q4_K rows (144-byte super-blocks), the
// arithmetic is the kernels' own per-step code (kt_q4_K_q8_ints and two FMAs, from the backend's sources) against an
// input held in registers, so each pattern does the same work and only the order of the loads differs.
//
// Patterns (all persistent; a step = 4 super-blocks of a row: lane l loads super-block l / 8's 16-byte header and 16
// bytes of its quants):
//   read      every thread streams 16-byte loads, grid-stride (the ceiling for this access size)
//   ring      128-thread blocks, a warp walks its own contiguous range of rows of 4 steps (matvec_q4_K_q8_pr4)
//   ringI     the same, a warp walking rows w, w + W, w + 2W, ... (the warps' concurrent rows adjacent in memory)
//   split     a block of S = cols / 1024 warps walks rows b, b + B, ..., warp k taking step k of each row
//             (matvec_q4_K_q8_ps4, matvec_q4_K_q16_ps); at the occupancy limit and at half of it; `nc`: the weights
//             loaded past the L1 (ld.global.nc.L1::no_allocate)
//   split32   as split, a lane loading 32 bytes of quants a step (4 lanes a super-block, 8 super-blocks a warp step)
//   nomath    the loads of split / split32 alone (the payload xor-folded): the access pattern without the arithmetic
// dN: N steps (rows) in flight per warp. Each pattern runs over a matrix of the decode shapes (gate/up 28672 x 4096,
// q/k/v 6144 x 4096, down 4096 x 14336) cycling over enough copies to miss the L2, and over a long matrix (8x) where
// the launch ramp and tail no longer count. 14:45 on an H100 (first version): docs/performance.md.
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <cuda_runtime.h>
#include <cuda_fp16.h>

// The backend's kernel sources (as NVRTC compiles them, in this order): the per-step arithmetic below is theirs.
#include "../../Sources/BackendCUDA/Kernels/common.cuh"
#include "../../Sources/BackendCUDA/Kernels/quant.cuh"
#include "../../Sources/BackendCUDA/Kernels/matvec.cu"

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e)); exit(1); } } while (0)

// One step of matvec_q4_K_q8_pr<N> / _ps<N>: the kernels' integer parts and their two FMAs.
__device__ __forceinline__ float stepMath(uint4 h, uint4 q, const KtQ8KStepInput& in, KtQ4KLane l, float acc) {
    float d, dmin;
    kt_q4_K_d(h, &d, &dmin);
    int i1, i2;
    kt_q4_K_q8_ints(h, q, in, l, &i1, &i2);
    acc = fmaf(in.xd16 * d, (float)i1, acc);
    return fmaf(-in.xd * dmin, (float)i2, acc);
}

__global__ void readAll(const uint4* w, long n16, float* out) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x, stride = (long)gridDim.x * blockDim.x;
    u32 x = 0;
    for (; i + 3 * stride < n16; i += 4 * stride) {
        uint4 a = w[i], b = w[i + stride], c = w[i + 2 * stride], d = w[i + 3 * stride];
        x ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w ^ c.x ^ c.y ^ c.z ^ c.w ^ d.x ^ d.y ^ d.z ^ d.w;
    }
    for (; i < n16; i += stride) { uint4 a = w[i]; x ^= a.x ^ a.y ^ a.z ^ a.w; }
    if (x == 0x12345678u) out[0] = 1.0f;
}

// ring / ringI: warp-per-row rings (SPR steps a row, DEPTH steps in flight across rows).
template <int SPR, int DEPTH, bool INTERLEAVED>
__global__ void __launch_bounds__(128) ringRows(const u8* W, long rowBytes, int rows, int rpw, const i8* xq,
                                                const float* xd, const int* xs, float* y) {
    int lane = threadIdx.x & 31, warp = blockIdx.x * 4 + (threadIdx.x >> 5), warps = gridDim.x * 4;
    int nRows = INTERLEAVED ? (warp < rows ? (rows - 1 - warp) / warps + 1 : 0) : max(0, min(rpw, rows - warp * rpw));
    if (nRows == 0) return;
    auto rowOf = [&](int i) { return INTERLEAVED ? warp + i * warps : warp * rpw + i; };
    KtQ8KStepInput in[SPR];
#pragma unroll
    for (int j = 0; j < SPR; j++) in[j] = kt_q8_K_step_input(xq, xd, xs, 4 * j + (lane >> 3), true, lane);
    KtQ4KLane l = kt_q4_K_lane(lane);
    int steps = nRows * SPR;
    uint4 hs[DEPTH], qs[DEPTH];
    int lIdx = 0;
    const u8* lPtr = W + (long)rowOf(0) * rowBytes;
    auto load = [&](int slot) {
        int j = slot % SPR;
        const u8* p = lPtr + (4 * j + (lane >> 3)) * 144;
        hs[slot] = *(const uint4*)p;
        qs[slot] = *(const uint4*)(p + 16 + 16 * (lane & 7));
        if (j == SPR - 1 && ++lIdx < nRows) lPtr = W + (long)rowOf(lIdx) * rowBytes;
    };
#pragma unroll
    for (int i = 0; i < DEPTH; i++) if (i < steps) load(i);
    float acc = 0.0f;
    int cIdx = 0;
    for (int s0 = 0; s0 < steps; s0 += DEPTH) {
#pragma unroll
        for (int i = 0; i < DEPTH; i++) {
            if (s0 + i < steps) {
                uint4 h = hs[i], q = qs[i];
                if (s0 + i + DEPTH < steps) load(i);
                int j = i % SPR;
                acc = stepMath(h, q, in[j], l, acc);
                if (j == SPR - 1) {
                    float v = kt_warp_sum(acc);
                    if (lane == 0) y[rowOf(cIdx)] = v;
                    cIdx++;
                    acc = 0.0f;
                }
            }
        }
    }
}

// split: block b walks rows b, b + B, ...; warp k of the block takes step k of each row (S = blockDim / 32 steps a
// row: 4 for 4096 columns, 14 for 14336), DEPTH rows in flight; the S partial sums of a row meet in shared memory
// every DEPTH rows. NC: the weights loaded with ld.global.nc.L1::no_allocate (streamed past the L1).
template <bool NC>
__device__ __forceinline__ uint4 load16(const u8* p) {
    if (!NC) return *(const uint4*)p;
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}
// After each DEPTH rows of the split patterns: the S warps' partial sums of each row added in shared memory.
template <int DEPTH>
__device__ __forceinline__ void splitRowSums(float (*part)[DEPTH], int S, int r0, int nRows, float* y) {
    __syncthreads();
    if (threadIdx.x < DEPTH && r0 + threadIdx.x < nRows) {
        float v = part[0][threadIdx.x];
        for (int k = 1; k < S; k++) v += part[k][threadIdx.x];
        y[blockIdx.x + (long)(r0 + threadIdx.x) * gridDim.x] = v;
    }
    __syncthreads();
}
// NOMATH: the loads alone (the payload xor-folded), to separate the access pattern's cost from the arithmetic's.
template <int DEPTH, bool NC = false, bool NOMATH = false>
__global__ void __launch_bounds__(1024, 1) splitRows(const u8* W, long rowBytes, int rows, const i8* xq,
                                                     const float* xd, const int* xs, float* y) {
    __shared__ float part[32][DEPTH];
    int lane = threadIdx.x & 31, wk = threadIdx.x >> 5, S = blockDim.x >> 5;
    int nRows = blockIdx.x < rows ? (rows - 1 - blockIdx.x) / gridDim.x + 1 : 0;
    if (nRows == 0) return;
    KtQ8KStepInput in = kt_q8_K_step_input(xq, xd, xs, 4 * wk + (lane >> 3), true, lane);
    KtQ4KLane l = kt_q4_K_lane(lane);
    const u8* base = W + (4 * wk + (lane >> 3)) * 144;
    uint4 hs[DEPTH], qs[DEPTH];
    auto load = [&](int slot, int i) {
        const u8* p = base + (long)(blockIdx.x + (long)i * gridDim.x) * rowBytes;
        hs[slot] = load16<NC>(p);
        qs[slot] = load16<NC>(p + 16 + 16 * (lane & 7));
    };
#pragma unroll
    for (int i = 0; i < DEPTH; i++) if (i < nRows) load(i, i);
    for (int r0 = 0; r0 < nRows; r0 += DEPTH) {
#pragma unroll
        for (int i = 0; i < DEPTH; i++) {
            if (r0 + i < nRows) {
                uint4 h = hs[i], q = qs[i];
                if (r0 + i + DEPTH < nRows) load(i, r0 + i + DEPTH);
                float v = NOMATH ? (float)(h.x ^ q.x ^ q.y ^ q.z ^ q.w) : stepMath(h, q, in, l, 0.0f);
                v = kt_warp_sum(v);
                if (lane == 0) part[wk][i] = v;
            }
        }
        splitRowSums<DEPTH>(part, S, r0, nRows, y);
    }
}

// split32: as split, but a lane loads 32 bytes of quants a step (two 16-byte loads) and 4 lanes share a super-block,
// so a warp's step is 8 super-blocks (2048 columns) and a 4096-wide row takes 2 warps: fewer load instructions and
// header loads per byte. The arithmetic is stepMath twice (the same work per byte as split; the lane-to-weights map
// of a real kernel would differ). NOMATH as splitRows'.
template <int DEPTH, bool NOMATH = false>
__global__ void __launch_bounds__(1024, 1) split32Rows(const u8* W, long rowBytes, int rows, const i8* xq,
                                                       const float* xd, const int* xs, float* y) {
    __shared__ float part[32][DEPTH];
    int lane = threadIdx.x & 31, wk = threadIdx.x >> 5, S = blockDim.x >> 5;
    int nRows = blockIdx.x < rows ? (rows - 1 - blockIdx.x) / gridDim.x + 1 : 0;
    if (nRows == 0) return;
    KtQ8KStepInput in = kt_q8_K_step_input(xq, xd, xs, 8 * wk + (lane >> 2), true, lane);
    KtQ4KLane l = kt_q4_K_lane(lane);
    const u8* base = W + (8 * wk + (lane >> 2)) * 144;
    uint4 hs[DEPTH], qa[DEPTH], qb[DEPTH];
    auto load = [&](int slot, int i) {
        const u8* p = base + (long)(blockIdx.x + (long)i * gridDim.x) * rowBytes;
        hs[slot] = *(const uint4*)p;
        qa[slot] = *(const uint4*)(p + 16 + 32 * (lane & 3));
        qb[slot] = *(const uint4*)(p + 32 + 32 * (lane & 3));
    };
#pragma unroll
    for (int i = 0; i < DEPTH; i++) if (i < nRows) load(i, i);
    for (int r0 = 0; r0 < nRows; r0 += DEPTH) {
#pragma unroll
        for (int i = 0; i < DEPTH; i++) {
            if (r0 + i < nRows) {
                uint4 h = hs[i], a = qa[i], b = qb[i];
                if (r0 + i + DEPTH < nRows) load(i, r0 + i + DEPTH);
                float v;
                if (NOMATH) v = (float)(h.x ^ a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w);
                else v = stepMath(h, b, in, l, stepMath(h, a, in, l, 0.0f));
                v = kt_warp_sum(v);
                if (lane == 0) part[wk][i] = v;
            }
        }
        splitRowSums<DEPTH>(part, S, r0, nRows, y);
    }
}
// (split with the loads alone: splitRows<DEPTH, false, true>.)

struct Shape { const char* name; int rows, cols; };

int main(int argc, char** argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 50;
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    int sms = prop.multiProcessorCount;
    printf("# %s, %d SMs, L2 %d MB\n", prop.name, sms, prop.l2CacheSize >> 20);
    Shape shapes[] = {{"gate/up 28672x4096", 28672, 4096}, {"qkv 6144x4096", 6144, 4096},
                      {"down 4096x14336", 4096, 14336}, {"long 229376x4096", 229376, 4096}};
    i8* xq;  // a Q8_K input of 64 super-blocks (values, scales, 16-element sums)
    float *xd, *y, *out;
    int* xs;
    CK(cudaMalloc(&xq, 64 * 256));
    CK(cudaMemset(xq, 1, 64 * 256));
    CK(cudaMalloc(&xd, 64 * sizeof(float)));
    CK(cudaMemset(xd, 0, 64 * sizeof(float)));
    CK(cudaMalloc(&xs, 64 * 16 * sizeof(int)));
    CK(cudaMemset(xs, 0, 64 * 16 * sizeof(int)));
    CK(cudaMalloc(&y, 229376 * sizeof(float)));
    CK(cudaMalloc(&out, 16));
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    for (auto& s : shapes) {
        long rowBytes = s.cols / 256 * 144, bytes = rowBytes * s.rows;
        int copies = (int)((400L << 20) / bytes) + 1;
        if (copies < 2) copies = 2;
        std::vector<u8*> mats(copies);
        for (auto& m : mats) {
            CK(cudaMalloc(&m, bytes));
            std::vector<u8> host(bytes);
            unsigned long long z = 88172645463325252ull + (unsigned long long)(size_t)&m;
            for (long i = 0; i + 8 <= bytes; i += 8) {
                z ^= z << 13; z ^= z >> 7; z ^= z << 17;
                memcpy(&host[i], &z, 8);
            }
            for (long i = 0; i < bytes; i += 144) { host[i + 1] = 0x3c; host[i + 3] = 0x2c; }  // sane f16 d, dmin
            CK(cudaMemcpy(m, host.data(), bytes, cudaMemcpyHostToDevice));
        }
        auto time = [&](const char* label, auto launch) {
            for (int i = 0; i < 3; i++) launch(mats[i % copies]);
            CK(cudaDeviceSynchronize());
            cudaEventRecord(e0);
            for (int i = 0; i < reps; i++) launch(mats[i % copies]);
            cudaEventRecord(e1);
            CK(cudaEventSynchronize(e1));
            CK(cudaGetLastError());
            float ms;
            cudaEventElapsedTime(&ms, e0, e1);
            double us = ms * 1000.0 / reps;
            printf("%-22s %-28s %8.1f us  %7.0f GB/s\n", s.name, label, us, bytes / us / 1000.0);
        };
        char label[64];
        for (int bps : {8, 16}) {
            snprintf(label, sizeof label, "read %dx256", bps);
            time(label, [&](u8* m) { readAll<<<sms * bps, 256>>>((const uint4*)m, bytes / 16, out); });
        }
        int S = s.cols / 1024;  // warps a row in the split pattern
        if (S <= 4) {
            for (int wpsm : {16, 24, 32}) {
                int blocks = sms * wpsm / 4, warps = blocks * 4, rpw = (s.rows + warps - 1) / warps;
                snprintf(label, sizeof label, "ring d4 %dw/SM", wpsm);
                time(label, [&](u8* m) { ringRows<4, 4, false><<<blocks, 128>>>(m, rowBytes, s.rows, rpw, xq, xd, xs, y); });
                snprintf(label, sizeof label, "ringI d4 %dw/SM", wpsm);
                time(label, [&](u8* m) { ringRows<4, 4, true><<<blocks, 128>>>(m, rowBytes, s.rows, rpw, xq, xd, xs, y); });
            }
        }
        // The split pattern: as many blocks as fit (the occupancy API), or a fixed number of warps an SM.
        auto splitW = [&](const char* name, auto kernel, int warps) {
            int perSM = 0;
            CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSM, kernel, 32 * warps, 0));
            for (int bpsm : {perSM, perSM / 2}) {
                if (bpsm < 1) continue;
                int blocks = sms * bpsm;
                snprintf(label, sizeof label, "%s %dw/SM", name, bpsm * warps);
                time(label, [&](u8* m) { kernel<<<blocks, 32 * warps>>>(m, rowBytes, s.rows, xq, xd, xs, y); });
            }
        };
        auto split = [&](const char* name, auto kernel) { splitW(name, kernel, S); };
        split("split d2", splitRows<2>);
        split("split d3", splitRows<3>);
        split("split d4", splitRows<4>);
        split("split d6", splitRows<6>);
        split("split d4 nc", splitRows<4, true>);
        split("split d4 nomath", splitRows<4, false, true>);
        if (s.cols % 2048 == 0) {
            int S2 = s.cols / 2048;
            splitW("split32 d2", split32Rows<2>, S2);
            splitW("split32 d3", split32Rows<3>, S2);
            splitW("split32 d4", split32Rows<4>, S2);
            splitW("split32 d3 nomath", split32Rows<3, true>, S2);
        }
        for (auto m : mats) cudaFree(m);
    }
    return 0;
}
