// Matrix × activation kernels over GGUF blocks read in place, f32 activations. One warp per weight row; each lane
// decodes its 32-element groups (u = lane, lane + 32, ...) once and multiplies them with up to KT_MV_TOKENS token
// rows; a fixed warp reduction ends each dot product. Every (row, token) output is computed the same way whatever
// the batch, so a row of a batch has the bits it has alone (batch invariance, as the CPU backend).

#define KT_MV_WARPS 4
#define KT_MV_TOKENS 8

template <typename Dec>
__device__ __forceinline__ void kt_matvec_rows(const u8* W, i64 rowBytes, int rows, int cols, const float* x, i64 xStride,
                                               float* y, i64 yStride, int n, int t0) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int r = blockIdx.x * KT_MV_WARPS + warp;
    if (r >= rows) return;
    int nt = min(KT_MV_TOKENS, n - t0);
    const u8* row = W + (i64)r * rowBytes;
    float acc[KT_MV_TOKENS];
    for (int t = 0; t < KT_MV_TOKENS; t++) acc[t] = 0.0f;
    int units = (cols + 31) / 32;
    float v[32];
    for (int u = lane; u < units; u += 32) {
        Dec::unit(row, u, cols, v);
        int n32 = min(32, cols - u * 32);
        for (int t = 0; t < KT_MV_TOKENS; t++) {
            if (t < nt) {
                const float* xr = x + (i64)(t0 + t) * xStride + u * 32;
                float s = 0.0f;
                for (int i = 0; i < 32; i++) s += i < n32 ? v[i] * xr[i] : 0.0f;
                acc[t] += s;
            }
        }
    }
    for (int t = 0; t < KT_MV_TOKENS; t++) {
        if (t < nt) {
            float s = kt_warp_sum(acc[t]);
            if (lane == 0) y[(i64)(t0 + t) * yStride + r] = s;
        }
    }
}

// y[t, h·yHeadStride + r] = W_h[r] · x[t, h·xHeadStride ..] for t < n; grid (ceil(rows / 4), ceil(n / 8), heads).
// A plain matmul is heads = 1 with packed strides.
#define KT_MATVEC(name, Dec) \
extern "C" __global__ void __launch_bounds__(128) matvec_##name(const u8* W, i64 rowBytes, i64 matrixBytes, int rows, \
        int cols, const float* x, i64 xStride, i64 xHeadStride, float* y, i64 yStride, i64 yHeadStride, int n) { KT_PDL_WAIT(); \
    int h = blockIdx.z; \
    kt_matvec_rows<Dec>(W + (i64)h * matrixBytes, rowBytes, rows, cols, x + (i64)h * xHeadStride, xStride, \
                        y + (i64)h * yHeadStride, yStride, n, blockIdx.y * KT_MV_TOKENS); \
}
KT_FORMATS(KT_MATVEC)

// f32 weights (the MoE routers, float checkpoints): a block per (row, head) instead of a warp, each of its 256
// threads taking float4 columns threadIdx.x + 256k of the row for up to 8 tokens, then a fixed block reduction:
// at 128 rows (a router) the warp-per-row kernel kept one warp per SM and took 12 µs; this one keeps a row's whole
// width in flight. The arguments of matvec_f32 (rows, inputs and strides 16-byte aligned, cols % 4 == 0);
// grid (rows, ceil(n / 8), heads), 256 threads.
#define KT_MVW_WARPS 8
extern "C" __global__ void __launch_bounds__(32 * KT_MVW_WARPS) matvec_f32_wide(const u8* W, i64 rowBytes,
        i64 matrixBytes, int rows, int cols, const float* x, i64 xStride, i64 xHeadStride, float* y, i64 yStride,
        i64 yHeadStride, int n) { KT_PDL_WAIT();
    __shared__ float red[KT_MVW_WARPS][KT_MV_TOKENS];
    int r = blockIdx.x, h = blockIdx.z, t0 = blockIdx.y * KT_MV_TOKENS, nt = min(KT_MV_TOKENS, n - t0);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const float4* w = (const float4*)(W + (i64)h * matrixBytes + (i64)r * rowBytes);
    const float* xb = x + (i64)h * xHeadStride + (i64)t0 * xStride;
    float acc[KT_MV_TOKENS];
    for (int t = 0; t < KT_MV_TOKENS; t++) acc[t] = 0.0f;
    for (int c = threadIdx.x; c < cols / 4; c += 32 * KT_MVW_WARPS) {
        float4 a = w[c];
        for (int t = 0; t < KT_MV_TOKENS; t++) {
            if (t < nt) {
                float4 b = *(const float4*)(xb + (i64)t * xStride + 4 * c);
                acc[t] = __fmaf_rn(a.w, b.w, __fmaf_rn(a.z, b.z, __fmaf_rn(a.y, b.y, __fmaf_rn(a.x, b.x, acc[t]))));
            }
        }
    }
    for (int t = 0; t < KT_MV_TOKENS; t++) {
        if (t < nt) {
            float s = kt_warp_sum(acc[t]);
            if (lane == 0) red[warp][t] = s;
        }
    }
    __syncthreads();
    if (threadIdx.x < nt) {
        int t = threadIdx.x;
        float s = red[0][t];
        for (int k = 1; k < KT_MVW_WARPS; k++) s = __fadd_rn(s, red[k][t]);
        y[(i64)(t0 + t) * yStride + (i64)h * yHeadStride + r] = s;
    }
}

// Routed experts: pair p (token p / xDiv, its expert ids[p]) gets y[p, r] = W_ids[p][r] · x[p / xDiv];
// grid (ceil(rows / 4), pairs).
#define KT_MATVEC_EXPERTS(name, Dec) \
extern "C" __global__ void __launch_bounds__(128) matvec_experts_##name(const u8* W, i64 rowBytes, i64 matrixBytes, \
        int rows, int cols, const float* x, int xDiv, const int* ids, float* y) { KT_PDL_WAIT(); \
    int p = blockIdx.y; \
    int e = ids[p]; \
    kt_matvec_rows<Dec>(W + (i64)e * matrixBytes, rowBytes, rows, cols, x + (i64)(p / xDiv) * cols, 0, \
                        y + (i64)p * rows, 0, 1, 0); \
}
KT_FORMATS(KT_MATVEC_EXPERTS)

// out[t] = scale · table[tokens[t]]; grid n, 128 threads.
#define KT_EMBED(name, Dec) \
extern "C" __global__ void __launch_bounds__(128) embed_##name(const u8* W, i64 rowBytes, int cols, const int* tokens, \
        float* out, float scale) { KT_PDL_WAIT(); \
    int t = blockIdx.x; \
    const u8* row = W + (i64)tokens[t] * rowBytes; \
    float v[32]; \
    for (int u = threadIdx.x; u * 32 < cols; u += blockDim.x) { \
        Dec::unit(row, u, cols, v); \
        int n32 = min(32, cols - u * 32); \
        float* o = out + (i64)t * cols + u * 32; \
        for (int i = 0; i < n32; i++) o[i] = scale != 1.0f ? v[i] * scale : v[i]; \
    } \
}
KT_FORMATS(KT_EMBED)

// Decodes a whole matrix to f32 (load-time checks and conversions): grid rows, 128 threads.
#define KT_DEQUANT(name, Dec) \
extern "C" __global__ void __launch_bounds__(128) dequantize_##name(const u8* W, i64 rowBytes, int cols, float* out) { KT_PDL_WAIT(); \
    int r = blockIdx.x; \
    const u8* row = W + (i64)r * rowBytes; \
    float v[32]; \
    for (int u = threadIdx.x; u * 32 < cols; u += blockDim.x) { \
        Dec::unit(row, u, cols, v); \
        int n32 = min(32, cols - u * 32); \
        for (int i = 0; i < n32; i++) out[(i64)r * cols + u * 32 + i] = v[i]; \
    } \
}
KT_FORMATS(KT_DEQUANT)

// ---- Integer-dot kernels: K-quant rows · Q8_K-quantized inputs (quantize_q8_K) ----
//
// One canonical arithmetic per output, whatever kernel computes it, so that a row of a batch has the bits it has
// alone (batch invariance) while decode runs the matrix-vector kernels below and prefill the tensor-core tiles of
// mmq.cu: within a 256-element super-block everything is integer (exact in any order): I1 = Σ scale·(q·x) over its
// groups, I2 = Σ min·Σx (Q4_K); the super-block's part is one float expression of them (kt_part_*), with explicit
// rounding intrinsics so that no kernel contracts it differently; the output is the sum of the parts in super-block
// order, one at a time, from 0.

__device__ __forceinline__ float kt_part_q4_K(float xd, float d, float dmin, int i1, int i2) {
    return __fmul_rn(xd, __fsub_rn(__fmul_rn(d, (float)i1), __fmul_rn(dmin, (float)i2)));
}
__device__ __forceinline__ float kt_part_q6_K(float xd, float d, int i1) {
    return __fmul_rn(xd, __fmul_rn(d, (float)i1));
}
// Four packed 6-bit values (0..63) minus 32, as four int8.
__device__ __forceinline__ int kt_minus32(u32 v) { return (int)(((v | 0x80808080u) - 0x20202020u) ^ 0x80808080u); }
// Sum of an int over the 8 lanes of an aligned group.
__device__ __forceinline__ int kt_sum8(int v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    v += __shfl_xor_sync(0xffffffffu, v, 4);
    return v;
}
// Adds the parts of super-blocks base + 0..3 (held by lanes 0, 8, 16, 24; `count` of them exist) to acc in order.
__device__ __forceinline__ float kt_add_parts(float acc, float part, int count) {
    float p1 = __shfl_sync(0xffffffffu, part, 8), p2 = __shfl_sync(0xffffffffu, part, 16), p3 = __shfl_sync(0xffffffffu, part, 24);
    acc = __fadd_rn(acc, part);
    if (count > 1) acc = __fadd_rn(acc, p1);
    if (count > 2) acc = __fadd_rn(acc, p2);
    if (count > 3) acc = __fadd_rn(acc, p3);
    return acc;
}

// Q4_K: a warp per row; per step the warp covers 4 super-blocks, 8 lanes each, every lane one 16-byte load of quants
// (the low and high nibbles of 16 elements of two groups), the block's 16-byte header shared by its 8 lanes: the row
// is read in whole coalesced segments. Up to 8 tokens per warp. Grid (ceil(rows / 4), ceil(n / 8)).
template <int NTOK>
__device__ __forceinline__ void kt_mv_q4_K(const u8* row, int cols, const i8* xq, const float* xd, const int* xs,
                                           float* y, int rows, int n, int t0) {
    int lane = threadIdx.x & 31;
    int nt = min(NTOK, n - t0);
    int nsb = cols / 256, part = lane & 7, p = part >> 1, l0 = 16 * (part & 1);
    float acc[NTOK];
    for (int t = 0; t < NTOK; t++) acc[t] = 0.0f;
    // Four steps (16 super-blocks) of the row are loaded before their arithmetic: a warp keeps 4 KiB in flight.
    for (int base0 = 0; base0 < nsb; base0 += 16) {
    uint4 heads[4], qss[4];
#pragma unroll
    for (int k = 0; k < 4; k++) {
        int sbk = min(base0 + 4 * k + (lane >> 3), nsb - 1);
        heads[k] = *(const uint4*)(row + (i64)sbk * 144);
        qss[k] = *(const uint4*)(row + (i64)sbk * 144 + 16 + 16 * part);
    }
    if (base0 == 0) KT_PDL_WAIT();  // the weights are in flight; the inputs come from the previous kernel
#pragma unroll
    for (int k = 0; k < 4; k++) {
        int base = base0 + 4 * k;
        if (base >= nsb) break;
        int sb = min(base + (lane >> 3), nsb - 1);  // lanes past the end redo the last block; their part is not added
        uint4 head = heads[k], qs = qss[k];
        const u8* hb = (const u8*)&head;
        float d = kt_f16(hb), dmin = kt_f16(hb + 2);
        int scLo, mLo, scHi, mHi;
        kt_scale_min_k4(2 * p, hb + 4, &scLo, &mLo);
        kt_scale_min_k4(2 * p + 1, hb + 4, &scHi, &mHi);
        int lo[4] = {(int)(qs.x & 0x0F0F0F0Fu), (int)(qs.y & 0x0F0F0F0Fu), (int)(qs.z & 0x0F0F0F0Fu), (int)(qs.w & 0x0F0F0F0Fu)};
        int hi[4] = {(int)((qs.x >> 4) & 0x0F0F0F0Fu), (int)((qs.y >> 4) & 0x0F0F0F0Fu),
                     (int)((qs.z >> 4) & 0x0F0F0F0Fu), (int)((qs.w >> 4) & 0x0F0F0F0Fu)};
        int eLo = sb * 256 + 64 * p + l0, eHi = eLo + 32;
        int count = min(4, nsb - base);
        for (int t = 0; t < NTOK; t++) {
            if (t < nt) {
                i64 tok = t0 + t;
                uint4 a = *(const uint4*)(xq + tok * cols + eLo);
                uint4 b = *(const uint4*)(xq + tok * cols + eHi);
                int sLo = __dp4a(lo[0], (int)a.x, 0);
                sLo = __dp4a(lo[1], (int)a.y, sLo);
                sLo = __dp4a(lo[2], (int)a.z, sLo);
                sLo = __dp4a(lo[3], (int)a.w, sLo);
                int sHi = __dp4a(hi[0], (int)b.x, 0);
                sHi = __dp4a(hi[1], (int)b.y, sHi);
                sHi = __dp4a(hi[2], (int)b.z, sHi);
                sHi = __dp4a(hi[3], (int)b.w, sHi);
                int bLo = xs[tok * (cols / 16) + eLo / 16], bHi = xs[tok * (cols / 16) + eHi / 16];
                int i1 = kt_sum8(scLo * sLo + scHi * sHi), i2 = kt_sum8(mLo * bLo + mHi * bHi);
                float pt = kt_part_q4_K(xd[tok * nsb + sb], d, dmin, i1, i2);
                acc[t] = kt_add_parts(acc[t], pt, count);
            }
        }
    }
    }
    if (lane == 0)
        for (int t = 0; t < nt; t++) y[(i64)t * rows] = acc[t];
}

// Q4_K, one token, with contiguous input loads (`KTRANSFORMERS_CUDA_MV1=2`, for measuring against kt_mv_q4_K; the
// same bits): per step the warp covers 2 super-blocks, a half-warp each, lane l16 of a half the 16 elements
// 16·l16 .. +16 of its block (group l16 / 2, half l16 % 2): one 16-byte load of quants and one of the Q8_K input,
// so a warp's input load is 512 contiguous bytes (kt_mv_q4_K's lanes read theirs 32 bytes apart, 2 per 16-byte
// weight load). I1, I2 are the same integers (exact in any order), the parts added in super-block order: the bits
// of kt_mv_q4_K. Four steps (8 super-blocks) are loaded before their arithmetic.
template <int NTOK>
__device__ __forceinline__ void kt_mv_q4_K_c(const u8* row, int cols, const i8* xq, const float* xd, const int* xs,
                                             float* y, int rows, int n, int t0) {
    static_assert(NTOK == 1, "one token");
    int lane = threadIdx.x & 31;
    int nsb = cols / 256, half16 = lane >> 4, l16 = lane & 15, j = l16 >> 1, sh = 4 * (j & 1);
    int qOff = 16 + 32 * (j >> 1) + 16 * (l16 & 1);
    i64 tok = t0;
    const i8* xt = xq + tok * cols;
    float acc = 0.0f;
    for (int base0 = 0; base0 < nsb; base0 += 8) {
        uint4 heads[4], qss[4], xs4[4];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            int sb = min(base0 + 2 * k + half16, nsb - 1);
            heads[k] = *(const uint4*)(row + (i64)sb * 144);
            qss[k] = *(const uint4*)(row + (i64)sb * 144 + qOff);
        }
        if (base0 == 0) KT_PDL_WAIT();  // the weights are in flight; the inputs come from the previous kernel
#pragma unroll
        for (int k = 0; k < 4; k++) {
            int sb = min(base0 + 2 * k + half16, nsb - 1);
            xs4[k] = *(const uint4*)(xt + (i64)sb * 256 + 16 * l16);
        }
#pragma unroll
        for (int k = 0; k < 4; k++) {
            int base = base0 + 2 * k;
            if (base >= nsb) break;
            int sb = min(base + half16, nsb - 1);
            uint4 h = heads[k], q = qss[k], a = xs4[k];
            int sc, m;
            kt_scale_min_k4_dyn(j, h, &sc, &m);
            int dot = __dp4a((int)((q.x >> sh) & 0x0F0F0F0Fu), (int)a.x, 0);
            dot = __dp4a((int)((q.y >> sh) & 0x0F0F0F0Fu), (int)a.y, dot);
            dot = __dp4a((int)((q.z >> sh) & 0x0F0F0F0Fu), (int)a.z, dot);
            dot = __dp4a((int)((q.w >> sh) & 0x0F0F0F0Fu), (int)a.w, dot);
            int i1 = sc * dot, i2 = m * xs[tok * (cols / 16) + sb * 16 + l16];
            for (int o = 1; o < 16; o <<= 1) {
                i1 += __shfl_xor_sync(0xffffffffu, i1, o);
                i2 += __shfl_xor_sync(0xffffffffu, i2, o);
            }
            float d = kt_half_to_float((u16)(h.x & 0xFFFFu)), dmin = kt_half_to_float((u16)(h.x >> 16));
            float pt = kt_part_q4_K(xd[tok * nsb + sb], d, dmin, i1, i2);
            float p0 = __shfl_sync(0xffffffffu, pt, 0), p1 = __shfl_sync(0xffffffffu, pt, 16);
            acc = __fadd_rn(acc, p0);
            if (base + 1 < nsb) acc = __fadd_rn(acc, p1);
        }
    }
    if (lane == 0) y[0] = acc;
}

// 8 bytes at a 2-byte aligned address (Q6_K blocks are 210 bytes).
__device__ __forceinline__ uint2 kt_load8_a2(const u8* p) {
    const u16* q = (const u16*)p;
    return make_uint2((u32)q[0] | ((u32)q[1] << 16), (u32)q[2] | ((u32)q[3] << 16));
}

// Q6_K: { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }. A warp per row, 4 super-blocks per step, 8 lanes each: lane
// part p takes half h = p / 4 and the 8 positions i0 = 8·(p % 4) .. +8 of each of the half's four 32-element rows r
// (elements 128h + 32r + i), i.e. 8 bytes of ql[64h + i0], of ql[64h + 32 + i0] and of qh[32h + i0]; the scale of
// those 8 elements is scales[8h + 2r + i0 / 16].
template <int NTOK>
__device__ __forceinline__ void kt_mv_q6_K(const u8* row, int cols, const i8* xq, const float* xd, const int* xs,
                                           float* y, int rows, int n, int t0) {
    int lane = threadIdx.x & 31;
    int nt = min(NTOK, n - t0);
    int nsb = cols / 256, part = lane & 7, h = part >> 2, i0 = 8 * (part & 3);
    float acc[NTOK];
    for (int t = 0; t < NTOK; t++) acc[t] = 0.0f;
    int sbNext = min(lane >> 3, nsb - 1);
    const u8* b0 = row + (i64)sbNext * 210;
    uint2 ql0n = kt_load8_a2(b0 + 64 * h + i0), ql1n = kt_load8_a2(b0 + 64 * h + 32 + i0), qhn = kt_load8_a2(b0 + 128 + 32 * h + i0);
    KT_PDL_WAIT();  // the weights are in flight; the inputs come from the previous kernel
    for (int base = 0; base < nsb; base += 4) {
        int sb = sbNext;
        const u8* blk = row + (i64)sb * 210;
        uint2 ql0 = ql0n, ql1 = ql1n, qh = qhn;
        if (base + 4 < nsb) {
            sbNext = min(base + 4 + (lane >> 3), nsb - 1);
            const u8* bn = row + (i64)sbNext * 210;
            ql0n = kt_load8_a2(bn + 64 * h + i0);
            ql1n = kt_load8_a2(bn + 64 * h + 32 + i0);
            qhn = kt_load8_a2(bn + 128 + 32 * h + i0);
        }
        const i8* sc = (const i8*)(blk + 192 + 8 * h + i0 / 16);
        float d = kt_f16(blk + 208);
        int v[8];  // rows r = 0..3, two words each
        for (int rr = 0; rr < 4; rr++) {
            uint2 l = (rr & 1) ? ql1 : ql0;
            int shift = 4 * (rr >> 1);
            v[2 * rr] = kt_minus32(((l.x >> shift) & 0x0F0F0F0Fu) | (((qh.x >> (2 * rr)) & 0x03030303u) << 4));
            v[2 * rr + 1] = kt_minus32(((l.y >> shift) & 0x0F0F0F0Fu) | (((qh.y >> (2 * rr)) & 0x03030303u) << 4));
        }
        int scale[4] = {sc[0], sc[2], sc[4], sc[6]};
        int count = min(4, nsb - base);
        for (int t = 0; t < NTOK; t++) {
            if (t < nt) {
                i64 tok = t0 + t;
                const i8* xb = xq + tok * cols + sb * 256 + 128 * h + i0;
                int i1 = 0;
                for (int rr = 0; rr < 4; rr++) {
                    uint2 a = *(const uint2*)(xb + 32 * rr);
                    i1 += scale[rr] * __dp4a(v[2 * rr + 1], (int)a.y, __dp4a(v[2 * rr], (int)a.x, 0));
                }
                i1 = kt_sum8(i1);
                float pt = kt_part_q6_K(xd[tok * nsb + sb], d, i1);
                acc[t] = kt_add_parts(acc[t], pt, count);
            }
        }
    }
    if (lane == 0)
        for (int t = 0; t < nt; t++) y[(i64)t * rows] = acc[t];
}

// The integer-dot matrix-vector kernels: row r of W (a warp each), y[t, r] for t < n; grid (ceil(rows / 4),
// ceil(n / 8)). The _3 forms run up to three matrices of one format and width on the same input in one launch
// (q/k/v, gate/up): rows of matrix 0, then 1, then 2, each output row computed as by the single form. The body
// writes y[t · rows] for its tokens t0 + t, with y at token t0's row r. The _1 forms are the same for n = 1 alone
// (batch-1 decode), compiled without the 8-token body: fewer registers, more warps in flight; the same bits.
#define KT_MV_INT_FORMS(name, body, suffix, NT) \
extern "C" __global__ void __launch_bounds__(128) matvec_##name##_q8##suffix(const u8* W, i64 rowBytes, int rows, \
        int cols, const i8* xq, const float* xd, const int* xs, float* y, int n) {  /* KT_PDL_WAIT in the body */ \
    int r = blockIdx.x * KT_MV_WARPS + (threadIdx.x >> 5), t0 = blockIdx.y * KT_MV_TOKENS; \
    if (r >= rows) return; \
    float* yr = y + (i64)t0 * rows + r; \
    if (NT == 1 || n == 1) body<1>(W + (i64)r * rowBytes, cols, xq, xd, xs, yr, rows, n, t0); \
    else body<NT>(W + (i64)r * rowBytes, cols, xq, xd, xs, yr, rows, n, t0); \
} \
extern "C" __global__ void __launch_bounds__(128) matvec_##name##_q8_3##suffix(const u8* W0, const u8* W1, \
        const u8* W2, i64 rowBytes, int rows0, int rows1, int rows2, int cols, const i8* xq, const float* xd, \
        const int* xs, float* y0, float* y1, float* y2, int n) {  /* KT_PDL_WAIT in the body */ \
    int r = blockIdx.x * KT_MV_WARPS + (threadIdx.x >> 5), t0 = blockIdx.y * KT_MV_TOKENS; \
    const u8* W = W0; \
    float* y = y0; \
    int rows = rows0; \
    if (r >= rows0) { r -= rows0; W = W1; y = y1; rows = rows1; \
        if (r >= rows1) { r -= rows1; W = W2; y = y2; rows = rows2; if (r >= rows2) return; } } \
    float* yr = y + (i64)t0 * rows + r; \
    if (NT == 1 || n == 1) body<1>(W + (i64)r * rowBytes, cols, xq, xd, xs, yr, rows, n, t0); \
    else body<NT>(W + (i64)r * rowBytes, cols, xq, xd, xs, yr, rows, n, t0); \
}
#define KT_MV_INT(name, body) \
KT_MV_INT_FORMS(name, body, , KT_MV_TOKENS) \
KT_MV_INT_FORMS(name, body, _1, 1) \
/* Routed experts: pair p (token p / xDiv, expert ids[p]) gets y[p, r] = W_ids[p][r] · x[p / xDiv]; grid (ceil(rows / 4), pairs, 1 or 2: z = 1 the second stack W1 into y1, same shape). */ \
extern "C" __global__ void __launch_bounds__(128) matvec_experts_##name##_q8(const u8* W, i64 rowBytes, i64 matrixBytes, \
        int rows, int cols, const i8* xq, const float* xd, const int* xs, int xDiv, const int* ids, float* y, \
        const u8* W1, float* y1) { KT_PDL_WAIT(); \
    int r = blockIdx.x * KT_MV_WARPS + (threadIdx.x >> 5), p = blockIdx.y, tq = p / xDiv; \
    if (r >= rows) return; \
    if (blockIdx.z == 1) { W = W1; y = y1; } \
    body<1>(W + (i64)ids[p] * matrixBytes + (i64)r * rowBytes, cols, xq, xd, xs, y + (i64)p * rows + r, rows, tq + 1, tq); \
}
KT_MV_INT(q4_K, kt_mv_q4_K)
KT_MV_INT_FORMS(q4_K, kt_mv_q4_K_c, _1c, 1)
KT_MV_INT(q6_K, kt_mv_q6_K)

// The persistent Q4_K ring of batch-1 decode (matvec_q4_K_q8_p[f] / _pr<N>, matvec_experts_q4_K_q8_pr<N>,
// matvec_q4_K_q16_p / _pk): the calling warp walks rows rBegin .. rEnd − 1 (rowPtr(r): the first byte of row r's
// walked super-blocks) as one stream of steps (4 super-blocks of a row, as kt_mv_q4_K: lane l takes super-block
// 4j + l / 8 of step j, offset(j) its byte offset, and 16 bytes of its quants), DEPTH steps of weights in flight:
// each slot is refilled with the step DEPTH ahead before its arithmetic, across row ends, so the memory never waits
// for the warp's arithmetic nor for a new block; the L2 is asked for the rows pf ahead (pfBytes each). It waits for
// the previous kernel (KT_PDL_WAIT) once the first loads are in flight, then calls inputs() (the caller's registers);
// step(j, head, quants) does step j of a row, rowDone(r) follows each row's last step. Rows of SPR steps known at
// compile time (SPR > 0, DEPTH a multiple of it): slot i always holds step i % SPR, so a caller can index registers
// by j; SPR = 0: spr steps a row at run time. The kernels' grids are sized so that every warp is resident with the
// same number of rows (the plain one-token kernels ran q/k/v in 1.66 waves at 1.0 TB/s on the H100).
template <int SPR, int DEPTH, class RowPtr, class Offset, class Inputs, class Step, class RowDone>
__device__ __forceinline__ void kt_q4_K_ring(int rBegin, int rEnd, int spr, i64 pfBytes, int pf, RowPtr rowPtr,
                                             Offset offset, Inputs inputs, Step step, RowDone rowDone) {
    constexpr int S = SPR > 0 ? SPR : 1;  // (no modulo by 0)
    int lane = threadIdx.x & 31, part = lane & 7;
    if (SPR > 0) spr = SPR;
    int steps = (rEnd - rBegin) * spr;
    int lRow = rBegin, lStep = 0;  // the next step to load
    const u8* lPtr = rowPtr(lRow);
    for (int r = rBegin + 1; r <= rBegin + pf && r < rEnd; r++) kt_prefetch_row(rowPtr(r), pfBytes, lane);
    uint4 hs[DEPTH], qs[DEPTH];
    auto load = [&](int slot) {
        int j = SPR > 0 ? slot % S : lStep;
        const u8* b = lPtr + offset(j);
        hs[slot] = *(const uint4*)b;
        qs[slot] = *(const uint4*)(b + 16 + 16 * part);
        if (SPR > 0 ? j == SPR - 1 : ++lStep == spr) {
            lStep = 0;
            if (++lRow < rEnd) lPtr = rowPtr(lRow);
            if (pf && lRow + pf < rEnd) kt_prefetch_row(rowPtr(lRow + pf), pfBytes, lane);
        }
    };
#pragma unroll
    for (int i = 0; i < DEPTH; i++)
        if (i < steps) load(i);
    KT_PDL_WAIT();  // the weights are in flight; the inputs come from the previous kernel
    inputs();
    int cRow = rBegin, cStep = 0;
    for (int s0 = 0; s0 < steps; s0 += DEPTH) {
#pragma unroll
        for (int i = 0; i < DEPTH; i++) {
            if (s0 + i < steps) {
                uint4 head = hs[i], q = qs[i];
                if (s0 + i + DEPTH < steps) load(i);
                int j = SPR > 0 ? i % S : cStep;
                step(j, head, q);
                if (SPR > 0 ? j == SPR - 1 : ++cStep == spr) {
                    cStep = 0;
                    rowDone(cRow++);
                }
            }
        }
    }
}
// Rows of cols columns at run time: step(base, sb, head, quants) with base = 4j and sb its lane's super-block clamped
// to the row (lanes whose base + l / 8 is past it add nothing).
template <int DEPTH, class RowPtr, class Step, class RowDone>
__device__ __forceinline__ void kt_q4_K_row_stream(int rBegin, int rEnd, int cols, i64 rowBytes, int pf, RowPtr rowPtr,
                                                   Step step, RowDone rowDone) {
    int lane = threadIdx.x & 31, nsb = cols / 256;
    auto offset = [&](int j) { return (i64)min(4 * j + (lane >> 3), nsb - 1) * 144; };
    auto stepAt = [&](int j, uint4 head, uint4 q) { step(4 * j, min(4 * j + (lane >> 3), nsb - 1), head, q); };
    kt_q4_K_ring<0, DEPTH>(rBegin, rEnd, (nsb + 3) / 4, rowBytes, pf, rowPtr, offset, [] {}, stepAt, rowDone);
}

// d, dmin and the scales and mins of groups 2p and 2p + 1 from a Q4_K super-block's 16-byte header.
__device__ __forceinline__ void kt_q4_K_head(uint4 head, int p, float* d, float* dmin, int* scLo, int* mLo, int* scHi,
                                             int* mHi) {
    const u8* hb = (const u8*)&head;
    *d = kt_f16(hb);
    *dmin = kt_f16(hb + 2);
    kt_scale_min_k4(2 * p, hb + 4, scLo, mLo);
    kt_scale_min_k4(2 * p + 1, hb + 4, scHi, mHi);
}

// Q4_K, one token, persistent, up to three matrices (rows of matrix 0, then 1, then 2): warp g takes the rows
// g·rpw .. g·rpw + rpw − 1 through kt_q4_K_row_stream. Exact form (matvec_q4_K_q8_p): per step and row the integers,
// part and order of additions of kt_mv_q4_K, the same bits. FAST (matvec_q4_K_q8_pf, default decode unless
// --batch-invariant): each lane adds its own part of each step in f32 and the warp sums once per row (no shuffles per
// step: the exact form was issue-bound, not memory-bound); its own bits.
#define KT_MVP_DEPTH 4
template <bool FAST>
__device__ __forceinline__ void kt_mvp_q4_K_q8(const u8* W0, const u8* W1, const u8* W2,
        i64 rowBytes, int rows0, int rows1, int rows2, int cols, const i8* xq, const float* xd, const int* xs,
        float* y0, float* y1, float* y2, int rpw, int pf) {
    int lane = threadIdx.x & 31;
    int rBegin = (blockIdx.x * 4 + (threadIdx.x >> 5)) * rpw, rEnd = min(rBegin + rpw, rows0 + rows1 + rows2);
    if (rBegin >= rEnd) return;
    int nsb = cols / 256, p = (lane & 7) >> 1, l0 = 16 * (lane & 1);
    auto rowPtr = [&](int r) -> const u8* {
        if (r < rows0) return W0 + (i64)r * rowBytes;
        r -= rows0;
        if (r < rows1) return W1 + (i64)r * rowBytes;
        return W2 + (i64)(r - rows1) * rowBytes;
    };
    float acc = 0.0f;
    auto step = [&](int base, int sb, uint4 head, uint4 q) {
        float d, dmin;
        int scLo, mLo, scHi, mHi;
        kt_q4_K_head(head, p, &d, &dmin, &scLo, &mLo, &scHi, &mHi);
        int eLo = sb * 256 + 64 * p + l0, eHi = eLo + 32;
        uint4 a = *(const uint4*)(xq + eLo);
        uint4 b = *(const uint4*)(xq + eHi);
        int sLo = __dp4a((int)(q.x & 0x0F0F0F0Fu), (int)a.x, 0);
        sLo = __dp4a((int)(q.y & 0x0F0F0F0Fu), (int)a.y, sLo);
        sLo = __dp4a((int)(q.z & 0x0F0F0F0Fu), (int)a.z, sLo);
        sLo = __dp4a((int)(q.w & 0x0F0F0F0Fu), (int)a.w, sLo);
        int sHi = __dp4a((int)((q.x >> 4) & 0x0F0F0F0Fu), (int)b.x, 0);
        sHi = __dp4a((int)((q.y >> 4) & 0x0F0F0F0Fu), (int)b.y, sHi);
        sHi = __dp4a((int)((q.z >> 4) & 0x0F0F0F0Fu), (int)b.z, sHi);
        sHi = __dp4a((int)((q.w >> 4) & 0x0F0F0F0Fu), (int)b.w, sHi);
        if (FAST) {
            int i1 = scLo * sLo + scHi * sHi, i2 = mLo * xs[eLo / 16] + mHi * xs[eHi / 16];
            float f = xd[sb] * (d * (float)i1 - dmin * (float)i2);
            acc += base + (lane >> 3) < nsb ? f : 0.0f;
        } else {
            int i1 = kt_sum8(scLo * sLo + scHi * sHi), i2 = kt_sum8(mLo * xs[eLo / 16] + mHi * xs[eHi / 16]);
            acc = kt_add_parts(acc, kt_part_q4_K(xd[sb], d, dmin, i1, i2), min(4, nsb - base));
        }
    };
    auto rowDone = [&](int r) {
        if (FAST) acc = kt_warp_sum(acc);
        if (lane == 0) {
            float* y = y0;
            if (r >= rows0) { r -= rows0; y = y1; if (r >= rows1) { r -= rows1; y = y2; } }
            y[r] = acc;
        }
        acc = 0.0f;
    };
    kt_q4_K_row_stream<KT_MVP_DEPTH>(rBegin, rEnd, cols, rowBytes, pf, rowPtr, step, rowDone);
}
#define KT_MVP_KERNEL(name, FAST) \
extern "C" __global__ void __launch_bounds__(128) name(const u8* W0, const u8* W1, const u8* W2, i64 rowBytes, \
        int rows0, int rows1, int rows2, int cols, const i8* xq, const float* xd, const int* xs, float* y0, float* y1, \
        float* y2, int rpw, int pf) { /* KT_PDL_WAIT in the body */ \
    kt_mvp_q4_K_q8<FAST>(W0, W1, W2, rowBytes, rows0, rows1, rows2, cols, xq, xd, xs, y0, y1, y2, rpw, pf); \
}
KT_MVP_KERNEL(matvec_q4_K_q8_p, false)
KT_MVP_KERNEL(matvec_q4_K_q8_pf, true)

// Q4_K, one token, persistent, the fast form with the inputs in registers (matvec_q4_K_q8_pr<SPR>, rows of
// SPR = ceil(cols / 1024) ≤ 4 steps; default for such rows where matvec_q4_K_q8_pf would run,
// `KTRANSFORMERS_CUDA_MVR=0` off): the rows as kt_q4_K_row_stream walks them (same lanes, steps and slots), but every
// slot of the ring holds the same step of its row (kt_q4_K_ring, SPR > 0), so a lane's 32 input bytes, its two
// 16-element sums and the block's scale of each step are loaded once, into registers, and every row reuses them: a
// step is its two weight loads and integer arithmetic (the pf form loads 2 × 16 bytes of inputs and three scalars a
// step and row, and was issue-bound). High nibbles are masked in place and taken as unsigned (16·q: dp4a.u32.s32, the
// 16 folded into the scale), the mins' sum is one dp2a of the packed 16-bit input sums, scales and mins come from the
// header's words by byte permutes. Lanes past the row's super-blocks have a zero input scale. Its own bits.
//
// Scales and mins of groups 2p and 2p + 1 of a Q4_K header held in registers: the words with the 6-bit values of
// this lane's half (hiGroups: groups 4 .. 7) for byte permutes (kt_q4_K_sel).
__device__ __forceinline__ void kt_q4_K_words(uint4 h, bool hiGroups, u32* sc, u32* mn) {
    *sc = hiGroups ? ((h.w & 0x0F0F0F0Fu) | ((h.y >> 2) & 0x30303030u)) : (h.y & 0x3F3F3F3Fu);
    *mn = hiGroups ? (((h.w >> 4) & 0x0F0F0F0Fu) | ((h.z >> 2) & 0x30303030u)) : (h.z & 0x3F3F3F3Fu);
}

// A lane's place in a Q4_K step (groups 2p and 2p + 1 of its super-block, p = (lane & 7) / 2): which header words
// hold its 6-bit scales and mins (kt_q4_K_words) and the byte permutes that pick them.
struct KtQ4KLane {
    bool hiGroups;
    u32 selLo, selHi, selPair;
};
__device__ __forceinline__ KtQ4KLane kt_q4_K_lane(int lane) {
    int p = (lane & 7) >> 1;
    u32 k = 2 * (p & 1);
    return {p >= 2, 0x4440u + k, 0x4441u + k, 0x4400u + ((k + 1) << 4) + k};
}
// A lane's Q8_K inputs of one step, held in registers: its 16 + 16 values (groups 2p, 2p + 1), their 16-element sums
// packed for one dp2a, the block's scale (zero for lanes past the row's super-blocks) and its 16th.
struct KtQ8KStepInput {
    uint4 a, b;
    int xsPair;
    float xd, xd16;
};
__device__ __forceinline__ KtQ8KStepInput kt_q8_K_step_input(const i8* xq, const float* xd, const int* xs, int sb,
                                                              bool inRow, int lane) {
    int eLo = sb * 256 + 64 * ((lane & 7) >> 1) + 16 * (lane & 1);
    KtQ8KStepInput in;
    in.a = *(const uint4*)(xq + eLo);
    in.b = *(const uint4*)(xq + eLo + 32);
    in.xsPair = (xs[eLo / 16] & 0xFFFF) | (xs[eLo / 16 + 2] << 16);
    in.xd = inRow ? xd[sb] : 0.0f;
    in.xd16 = in.xd * 0.0625f;
    return in;
}
// One register-input step's integers (exact): I1 = 16 × Σ scale·(q·x) over the lane's two groups (high nibbles masked
// in place, taken unsigned: dp4a.u32.s32, the 16 folded into xd16) and I2 = Σ min·(Σx).
__device__ __forceinline__ void kt_q4_K_q8_ints(uint4 h, uint4 q, const KtQ8KStepInput& in, KtQ4KLane l, int* i1,
                                                int* i2) {
    u32 sc, mn;
    kt_q4_K_words(h, l.hiGroups, &sc, &mn);
    int sLo = __dp4a((int)(q.x & 0x0F0F0F0Fu), (int)in.a.x, 0);
    sLo = __dp4a((int)(q.y & 0x0F0F0F0Fu), (int)in.a.y, sLo);
    sLo = __dp4a((int)(q.z & 0x0F0F0F0Fu), (int)in.a.z, sLo);
    sLo = __dp4a((int)(q.w & 0x0F0F0F0Fu), (int)in.a.w, sLo);
    int sHi = kt_dp4a_us(q.x & 0xF0F0F0F0u, (int)in.b.x, 0);  // 16 × the high nibbles' sum
    sHi = kt_dp4a_us(q.y & 0xF0F0F0F0u, (int)in.b.y, sHi);
    sHi = kt_dp4a_us(q.z & 0xF0F0F0F0u, (int)in.b.z, sHi);
    sHi = kt_dp4a_us(q.w & 0xF0F0F0F0u, (int)in.b.w, sHi);
    *i1 = 16 * (int)__byte_perm(sc, 0, l.selLo) * sLo + (int)__byte_perm(sc, 0, l.selHi) * sHi;
    *i2 = __dp2a_lo(in.xsPair, (int)__byte_perm(mn, 0, l.selPair), 0);
}
// The f16 d and dmin of a Q4_K header.
__device__ __forceinline__ void kt_q4_K_d(uint4 h, float* d, float* dmin) {
    *d = kt_half_to_float((u16)(h.x & 0xFFFFu));
    *dmin = kt_half_to_float((u16)(h.x >> 16));
}

// Rows rBegin .. rEnd − 1 of nsb super-blocks (SPR = ceil(nsb / 4) steps) against one Q8_K input held in registers:
// rowPtr(r) the row's bytes, store(r, v) its result (on lane 0).
template <int SPR, int DEPTH, class RowPtr, class Store>
__device__ __forceinline__ void kt_mvpr_rows(int rBegin, int rEnd, int nsb, i64 rowBytes, int pf, const i8* xq,
                                             const float* xd, const int* xs, RowPtr rowPtr, Store store) {
    int lane = threadIdx.x & 31, g8 = lane >> 3;
    auto offset = [&](int j) { return min(4 * j + g8, nsb - 1) * 144; };  // (clamped to the row)
    KtQ8KStepInput in[SPR];
    auto inputs = [&]() {
#pragma unroll
        for (int j = 0; j < SPR; j++) in[j] = kt_q8_K_step_input(xq, xd, xs, min(4 * j + g8, nsb - 1), 4 * j + g8 < nsb, lane);
    };
    KtQ4KLane l = kt_q4_K_lane(lane);
    float acc = 0.0f;
    auto step = [&](int j, uint4 h, uint4 q) {
        float d, dmin;
        kt_q4_K_d(h, &d, &dmin);
        int i1, i2;
        kt_q4_K_q8_ints(h, q, in[j], l, &i1, &i2);
        acc = fmaf(in[j].xd16 * d, (float)i1, acc);
        acc = fmaf(-in[j].xd * dmin, (float)i2, acc);
    };
    auto rowDone = [&](int r) {
        float v = kt_warp_sum(acc);
        if (lane == 0) store(r, v);
        acc = 0.0f;
    };
    kt_q4_K_ring<SPR, DEPTH>(rBegin, rEnd, SPR, rowBytes, pf, rowPtr, offset, inputs, step, rowDone);
}

template <int SPR, int DEPTH>
__device__ __forceinline__ void kt_mvpr_q4_K_q8(const u8* W0, const u8* W1, const u8* W2, i64 rowBytes, int rows0,
        int rows1, int rows2, int cols, const i8* xq, const float* xd, const int* xs, float* y0, float* y1, float* y2,
        int rpw, int pf) {
    int rBegin = (blockIdx.x * 4 + (threadIdx.x >> 5)) * rpw, rEnd = min(rBegin + rpw, rows0 + rows1 + rows2);
    if (rBegin >= rEnd) return;
    auto rowPtr = [&](int r) -> const u8* {
        if (r < rows0) return W0 + (i64)r * rowBytes;
        r -= rows0;
        if (r < rows1) return W1 + (i64)r * rowBytes;
        return W2 + (i64)(r - rows1) * rowBytes;
    };
    auto store = [&](int r, float v) {
        float* y = y0;
        if (r >= rows0) { r -= rows0; y = y1; if (r >= rows1) { r -= rows1; y = y2; } }
        y[r] = v;
    };
    kt_mvpr_rows<SPR, DEPTH>(rBegin, rEnd, cols / 256, rowBytes, pf, xq, xd, xs, rowPtr, store);
}
#define KT_MVPR_KERNEL(SPR, DEPTH) \
extern "C" __global__ void __launch_bounds__(128) matvec_q4_K_q8_pr##SPR(const u8* W0, const u8* W1, const u8* W2, \
        i64 rowBytes, int rows0, int rows1, int rows2, int cols, const i8* xq, const float* xd, const int* xs, \
        float* y0, float* y1, float* y2, int rpw, int pf) { /* KT_PDL_WAIT in the body */ \
    kt_mvpr_q4_K_q8<SPR, DEPTH>(W0, W1, W2, rowBytes, rows0, rows1, rows2, cols, xq, xd, xs, y0, y1, y2, rpw, pf); \
}
// 4 steps in flight (6 for rows of 3). 8 (more registers, 12 warps an SM instead of 16) measured no faster on the
// H100: Llama-3-8B tg128 268.5 against 265.9 t/s, Qwen3-30B-A3B 309.7 against 310.4.
KT_MVPR_KERNEL(1, 4)
KT_MVPR_KERNEL(2, 4)
KT_MVPR_KERNEL(3, 6)
KT_MVPR_KERNEL(4, 4)

// Q4_K, one token, the rows split across a block's warps (matvec_q4_K_q8_ps<SPR>, SPR = ceil(cols / 1024) of 1, 2
// or 4 steps; default where matvec_q4_K_q8_pr<SPR> would run, `KTRANSFORMERS_CUDA_MVS=0` off). A block of 4 warps
// takes G = 4 / SPR rows at a time, warp k step k % SPR of row k / SPR (lanes and arithmetic of kt_mvpr_rows, its
// one step of inputs in registers); block b takes row groups b, b + B, b + 2B, ... (B the grid's blocks), so the rows
// the GPU reads at once are adjacent in memory, and with one step of inputs a thread needs at most 64 registers:
// at least 8 blocks (32 warps) an SM, twice the warps of the ring (10 blocks at the default one row in flight). Each
// warp keeps DEPTH rows' steps in flight (KT_MVPS_DEPTH, below); every DEPTH row groups the SPR partial sums of a row
// meet in shared memory and are added in step order (its own bits, fixed: not under --batch-invariant). The nvcc measurement (scripts/microbench/matvec-patterns.cu, H100, 28672 x 4096):
// 28.6 µs (2.31 TB/s) against 35.7 µs for the ring at its 16 warps an SM.
// Rows 0 .. total − 1 of nsb super-blocks: rowPtr(r) the row's bytes, store(r, v) its result.
// pf > 0: thread k < G of the block also asks the L2 for row k of the row group pf groups past the one its loads
// reach (one cp.async.bulk.prefetch.L2 of the whole row: more of the weight stream in flight than the registers
// hold, without registers; `KTRANSFORMERS_CUDA_MVS_PF`). Only the memory traffic changes, never a result.
template <int SPR, int DEPTH, class RowPtr, class Store>
__device__ __forceinline__ void kt_mvps_rows(int total, int nsb, const i8* xq, const float* xd, const int* xs,
                                             RowPtr rowPtr, Store store, int pf, bool waited) {
    constexpr int G = 4 / SPR;
    __shared__ float part[4][DEPTH];
    int lane = threadIdx.x & 31, wk = threadIdx.x >> 5, j = wk % SPR, g8 = lane >> 3;
    int groups = (total + G - 1) / G;
    int nG = (int)blockIdx.x < groups ? (groups - 1 - (int)blockIdx.x) / (int)gridDim.x + 1 : 0;
    if (nG == 0) return;
    int sb = min(4 * j + g8, nsb - 1);
    auto rowOf = [&](int i) { return min(((int)blockIdx.x + i * (int)gridDim.x) * G + wk / SPR, total - 1); };
    uint4 hs[DEPTH], qs[DEPTH];
    auto load = [&](int slot, int i) {
        const u8* b = rowPtr(rowOf(i)) + sb * 144;
        hs[slot] = *(const uint4*)b;
        qs[slot] = *(const uint4*)(b + 16 + 16 * (lane & 7));
    };
    auto prefetch = [&](int i) {  // row group i's rows into the L2
        if (i < nG && (int)threadIdx.x < G) {
            int r = ((int)blockIdx.x + i * (int)gridDim.x) * G + (int)threadIdx.x;
            const u8* p = rowPtr(min(r, total - 1));
            if (r < total && ((size_t)p & 15) == 0) KT_PREFETCH_L2(p, nsb * 144);
        }
    };
#pragma unroll
    for (int i = 0; i < DEPTH; i++)
        if (i < nG) load(i, i);
    for (int k = 0; k < pf; k++) prefetch(DEPTH + k);
    if (!waited) KT_PDL_WAIT();  // the weights are in flight; the inputs come from the previous kernel
    KtQ8KStepInput in = kt_q8_K_step_input(xq, xd, xs, sb, 4 * j + g8 < nsb, lane);
    KtQ4KLane l = kt_q4_K_lane(lane);
    for (int i0 = 0; i0 < nG; i0 += DEPTH) {
#pragma unroll
        for (int i = 0; i < DEPTH; i++) {
            if (i0 + i < nG) {
                uint4 h = hs[i], q = qs[i];
                if (i0 + i + DEPTH < nG) load(i, i0 + i + DEPTH);
                if (pf > 0) prefetch(i0 + i + DEPTH + pf);
                float d, dmin;
                kt_q4_K_d(h, &d, &dmin);
                int i1, i2;
                kt_q4_K_q8_ints(h, q, in, l, &i1, &i2);
                float v = kt_warp_sum(fmaf(-in.xd * dmin, (float)i2, (in.xd16 * d) * (float)i1));
                if (SPR == 1) {
                    int r = ((int)blockIdx.x + (i0 + i) * (int)gridDim.x) * G + wk;
                    if (lane == 0 && r < total) store(r, v);
                } else if (lane == 0) {
                    part[wk][i] = v;
                }
            }
        }
        if (SPR > 1) {
            __syncthreads();
            int t = threadIdx.x;
            if (t < G * DEPTH) {
                int i = t / G, row = t % G;  // slot i, row `row` of the group
                int r = ((int)blockIdx.x + (i0 + i) * (int)gridDim.x) * G + row;
                if (i0 + i < nG && r < total) {
                    float v = part[row * SPR][i];
#pragma unroll
                    for (int s = 1; s < SPR; s++) v += part[row * SPR + s][i];
                    store(r, v);
                }
            }
            __syncthreads();
        }
    }
}
template <int SPR, int DEPTH>
__device__ __forceinline__ void kt_mvps_q4_K_q8(const u8* W0, const u8* W1, const u8* W2, i64 rowBytes, int rows0,
        int rows1, int rows2, int cols, const i8* xq, const float* xd, const int* xs, float* y0, float* y1, float* y2, int pf) {
    auto rowPtr = [&](int r) -> const u8* {
        if (r < rows0) return W0 + (i64)r * rowBytes;
        r -= rows0;
        if (r < rows1) return W1 + (i64)r * rowBytes;
        return W2 + (i64)(r - rows1) * rowBytes;
    };
    auto store = [&](int r, float v) {
        float* y = y0;
        if (r >= rows0) { r -= rows0; y = y1; if (r >= rows1) { r -= rows1; y = y2; } }
        y[r] = v;
    };
    kt_mvps_rows<SPR, DEPTH>(rows0 + rows1 + rows2, cols / 256, xq, xd, xs, rowPtr, store, pf, false);
}
#define KT_MVPS_KERNEL(SPR, DEPTH) \
extern "C" __global__ void __launch_bounds__(128, 8) matvec_q4_K_q8_ps##SPR(const u8* W0, const u8* W1, const u8* W2, \
        i64 rowBytes, int rows0, int rows1, int rows2, int cols, const i8* xq, const float* xd, const int* xs, \
        float* y0, float* y1, float* y2, int rpw, int pf) { \
    /* KT_PDL_WAIT in the body; rpw unused, pf: row groups prefetched ahead (kt_mvps_rows) */ \
    kt_mvps_q4_K_q8<SPR, DEPTH>(W0, W1, W2, rowBytes, rows0, rows1, rows2, cols, xq, xd, xs, y0, y1, y2, pf); \
}
// Rows in flight a warp: KT_MVPS_DEPTH (the backend sets it with KTRANSFORMERS_CUDA_MVS_DEPTH; default 1). The nvcc
// measurement (matvec-patterns.cu, H100, 2026-12-07): 2 rows fit 36 warps an SM and read 28672 x 4096 in 25.8 µs
// (2.56 TB/s), 4 rows 32 warps in 27.9 µs (2.37 TB/s); 6144 x 4096 in 8.2 against 9.2 µs. In the model (Llama-3-8B
// tg128, H100): 1 row 396.4 t/s, 2 rows 372.0 and 368.3, 4 rows 373.9. Each row's sum is the same either way.
#ifndef KT_MVPS_DEPTH
#define KT_MVPS_DEPTH 1
#endif
KT_MVPS_KERNEL(1, KT_MVPS_DEPTH)
KT_MVPS_KERNEL(2, KT_MVPS_DEPTH)
KT_MVPS_KERNEL(4, KT_MVPS_DEPTH)

// Batch-1 q/k/v projection with the step's RoPE and K/V store in its epilogue (matvec_q4_K_q8_ps<SPR>_rope; the
// backend's `ropeInProjection`, for attention without per-head norms): the rows of matvec_q4_K_q8_ps<SPR> (the same
// per-row sums, so the same bits), taken a rotation pair at a time. Pair P of q (qHeads heads of headDim rows), then
// k (kHeads heads), then v (rows 2P', 2P' + 1): in a head, pair j < dims / 2 is rope's (j, j + dims / 2) (NeoX) or
// (2j, 2j + 1), rotated by the table's j-th cos/sin at positions[0]; the rest of the head pairs its remaining rows in
// order, unrotated. Block b takes pairs b, b + B, ..., their two rows one after the other (G = 4 / SPR rows an
// iteration; pairs never straddle an iteration but at G = 1). Thread 0 adds each row's SPR partial sums in step order
// (as the plain kernel), rotates the pair with rope_store_kv's arithmetic and writes q, k (and the cache row of slot
// slots[0]) and v (and its cache row).
__device__ __forceinline__ void kt_qkv_pair_rows(int P, int qRows, int kRows, int headDim, int dims, int neox,
                                                 int* a, int* b, int* rot) {
    int half = headDim / 2;
    if (P * 2 >= qRows + kRows) {  // v: rows in order
        *a = 2 * P;
        *b = 2 * P + 1;
        *rot = -1;
        return;
    }
    int h = P / half, j = P % half, base = h * headDim;
    if (j < dims / 2) {
        *a = base + (neox ? j : 2 * j);
        *b = base + (neox ? j + dims / 2 : 2 * j + 1);
        *rot = j;
    } else {
        *a = base + dims + 2 * (j - dims / 2);
        *b = *a + 1;
        *rot = -1;
    }
}
template <int SPR>
__device__ __forceinline__ void kt_mvps_rope(const u8* Wq, const u8* Wk, const u8* Wv, i64 rowBytes, int qRows,
        int kRows, int vRows, int cols, const i8* xq, const float* xd, const int* xs, float* q, float* k, float* v,
        int headDim, const float* table, int dims, int neox, const int* positions, const int* slots, float* kc,
        float* vc) {
    constexpr int G = 4 / SPR;
    __shared__ float part[2][4];  // by iteration parity: one barrier an iteration
    int lane = threadIdx.x & 31, wk = threadIdx.x >> 5, j = wk % SPR, g8 = lane >> 3, nsb = cols / 256;
    int pairs = (qRows + kRows + vRows) / 2;
    int nP = (int)blockIdx.x < pairs ? (pairs - 1 - (int)blockIdx.x) / (int)gridDim.x + 1 : 0;
    if (nP == 0) return;
    int nRows = 2 * nP, sb = min(4 * j + g8, nsb - 1);
    // The block's row m: member m & 1 of pair blockIdx.x + (m >> 1) · gridDim.x.
    auto rowOf = [&](int m) {
        int a, b, rot;
        kt_qkv_pair_rows((int)blockIdx.x + (m >> 1) * (int)gridDim.x, qRows, kRows, headDim, dims, neox, &a, &b, &rot);
        return (m & 1) ? b : a;
    };
    auto rowPtr = [&](int r) -> const u8* {
        if (r < qRows) return Wq + (i64)r * rowBytes;
        r -= qRows;
        if (r < kRows) return Wk + (i64)r * rowBytes;
        return Wv + (i64)(r - kRows) * rowBytes;
    };
    int m = wk / SPR;  // this warp's row of the iteration
    uint4 h = make_uint4(0, 0, 0, 0), qw = make_uint4(0, 0, 0, 0);
    auto load = [&](int mm) {
        const u8* b = rowPtr(rowOf(mm)) + sb * 144;
        h = *(const uint4*)b;
        qw = *(const uint4*)(b + 16 + 16 * (lane & 7));
    };
    if (m < nRows) load(m);
    KT_PDL_WAIT();  // the weights are in flight; the inputs, positions and slots come before
    KtQ8KStepInput in = kt_q8_K_step_input(xq, xd, xs, sb, 4 * j + g8 < nsb, lane);
    KtQ4KLane l = kt_q4_K_lane(lane);
    const float* cs = nullptr;
    i64 slot = 0;
    if (threadIdx.x == 0) {
        cs = table + (i64)positions[0] * dims;
        slot = slots[0];
    }
    float first = 0.0f;  // thread 0: the pair's first row (G = 1)
    float rc[2], rs[2];  // thread 0: the cos/sin of the iteration's pairs, asked for before the row sums
    for (int m0 = 0, it = 0; m0 < nRows; m0 += G, it++) {
        if (threadIdx.x == 0 && (m0 & 1) == 0) {  // (m0 is odd only at G = 1, the pair's second row)
#pragma unroll
            for (int p = 0; p < (G + 1) / 2; p++) {
                int mr = m0 + 2 * p, a, b, r;
                if (mr < nRows) {
                    kt_qkv_pair_rows((int)blockIdx.x + (mr >> 1) * (int)gridDim.x, qRows, kRows, headDim, dims, neox, &a,
                                     &b, &r);
                    bool rotated = r >= 0 && a < qRows + kRows;
                    rc[p] = rotated ? cs[2 * r] : 1.0f;
                    rs[p] = rotated ? cs[2 * r + 1] : 0.0f;
                }
            }
        }
        int mm = m0 + m;
        if (mm < nRows) {
            uint4 hh = h, qq = qw;
            if (mm + G < nRows) load(mm + G);
            float d, dmin;
            kt_q4_K_d(hh, &d, &dmin);
            int i1, i2;
            kt_q4_K_q8_ints(hh, qq, in, l, &i1, &i2);
            float s = kt_warp_sum(fmaf(-in.xd * dmin, (float)i2, (in.xd16 * d) * (float)i1));
            if (lane == 0) part[it & 1][wk] = s;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            for (int g = 0; g < G && m0 + g < nRows; g++) {
                float sum = part[it & 1][g * SPR];
#pragma unroll
                for (int t = 1; t < SPR; t++) sum += part[it & 1][g * SPR + t];
                int mr = m0 + g;
                if ((mr & 1) == 0) { first = sum; continue; }
                int a, b, r;
                kt_qkv_pair_rows((int)blockIdx.x + (mr >> 1) * (int)gridDim.x, qRows, kRows, headDim, dims, neox, &a, &b, &r);
                float va = first, vb = sum;
                if (r >= 0 && a < qRows + kRows) {
                    float c = rc[G > 1 ? g / 2 : 0], sn = rs[G > 1 ? g / 2 : 0];
                    va = __fsub_rn(__fmul_rn(first, c), __fmul_rn(sum, sn));
                    vb = __fadd_rn(__fmul_rn(first, sn), __fmul_rn(sum, c));
                }
                if (a < qRows) {
                    q[a] = va;
                    q[b] = vb;
                } else if (a < qRows + kRows) {
                    a -= qRows;
                    b -= qRows;
                    k[a] = va;
                    k[b] = vb;
                    kc[slot * kRows + a] = va;
                    kc[slot * kRows + b] = vb;
                } else {
                    a -= qRows + kRows;
                    b -= qRows + kRows;
                    v[a] = va;
                    v[b] = vb;
                    vc[slot * vRows + a] = va;
                    vc[slot * vRows + b] = vb;
                }
            }
        }
    }
}
#define KT_MVPS_ROPE_KERNEL(SPR) \
extern "C" __global__ void __launch_bounds__(128, 10) matvec_q4_K_q8_ps##SPR##_rope(const u8* Wq, const u8* Wk, \
        const u8* Wv, i64 rowBytes, int qRows, int kRows, int vRows, int cols, const i8* xq, const float* xd, \
        const int* xs, float* q, float* k, float* v, int headDim, const float* table, int dims, int neox, \
        const int* positions, const int* slots, float* kc, float* vc) { /* KT_PDL_WAIT in the body */ \
    kt_mvps_rope<SPR>(Wq, Wk, Wv, rowBytes, qRows, kRows, vRows, cols, xq, xd, xs, q, k, v, headDim, table, dims, \
                      neox, positions, slots, kc, vc); \
}
KT_MVPS_ROPE_KERNEL(1)
KT_MVPS_ROPE_KERNEL(2)
KT_MVPS_ROPE_KERNEL(4)
// Row r of a token's routed-expert gate and up rows (gate rows of pair 0, 1, ..., then up; `half` = pairs · rows):
// expert ids[pair]'s row of stack G or U.
__device__ __forceinline__ const u8* kt_expert_pair_row(const u8* G, const u8* U, int half, int rows, const int* ids,
                                                        i64 matrixBytes, i64 rowBytes, int r) {
    const u8* W = r < half ? G : U;
    r = r < half ? r : r - half;
    int pair = r / rows;
    return W + (i64)ids[pair] * matrixBytes + (i64)(r - pair * rows) * rowBytes;
}
// Routed experts' gate and up at one token, split the same way (the default; `KTRANSFORMERS_CUDA_MVS_EXPERTS=0` off):
// the rows of both stacks for every pair of the token (gate of pair 0, 1, ..., then up), as
// matvec_experts_q4_K_q8_pr<N> orders them. The ids come from the previous kernel, so it waits before its loads.
// At least 10 blocks an SM (46 registers: the prefetch's code alone took them from 44 to 52, 9 blocks).
#define KT_MVPS_EXPERTS_KERNEL(SPR, DEPTH) \
extern "C" __global__ void __launch_bounds__(128, 10) matvec_experts_q4_K_q8_ps##SPR(const u8* G, const u8* U, \
        i64 rowBytes, i64 matrixBytes, int rows, int cols, const i8* xq, const float* xd, const int* xs, \
        const int* ids, int pairs, float* y0, float* y1, int pf) { KT_PDL_WAIT(); \
    int half = pairs * rows; \
    auto rowPtr = [&](int r) { return kt_expert_pair_row(G, U, half, rows, ids, matrixBytes, rowBytes, r); }; \
    auto store = [&](int r, float v) { if (r < half) y0[r] = v; else y1[r - half] = v; }; \
    kt_mvps_rows<SPR, DEPTH>(2 * half, cols / 256, xq, xd, xs, rowPtr, store, pf, true); \
}
KT_MVPS_EXPERTS_KERNEL(1, KT_MVPS_DEPTH)
KT_MVPS_EXPERTS_KERNEL(2, KT_MVPS_DEPTH)
KT_MVPS_EXPERTS_KERNEL(4, KT_MVPS_DEPTH)

// Routed experts' gate and up at one token on the same ring (`KTRANSFORMERS_CUDA_MVR_EXPERTS=1`; not yet timed on a
// GPU): the rows of both stacks for every pair of the token (gate of pair 0, 1, ..., then up), expert ids[pair]'s
// matrix, all against the token's one Q8_K input in registers; y0 / y1 [pairs · rows]. The ids come from the
// previous kernel, so it waits before its first loads.
#define KT_MVPR_EXPERTS_KERNEL(SPR, DEPTH) \
extern "C" __global__ void __launch_bounds__(128) matvec_experts_q4_K_q8_pr##SPR(const u8* G, const u8* U, \
        i64 rowBytes, i64 matrixBytes, int rows, int cols, const i8* xq, const float* xd, const int* xs, \
        const int* ids, int pairs, float* y0, float* y1, int rpw, int pf) { KT_PDL_WAIT(); \
    int rBegin = (blockIdx.x * 4 + (threadIdx.x >> 5)) * rpw, half = pairs * rows, rEnd = min(rBegin + rpw, 2 * half); \
    if (rBegin >= rEnd) return; \
    auto rowPtr = [&](int r) { return kt_expert_pair_row(G, U, half, rows, ids, matrixBytes, rowBytes, r); }; \
    auto store = [&](int r, float v) { if (r < half) y0[r] = v; else y1[r - half] = v; }; \
    kt_mvpr_rows<SPR, DEPTH>(rBegin, rEnd, cols / 256, rowBytes, pf, xq, xd, xs, rowPtr, store); \
}
KT_MVPR_EXPERTS_KERNEL(1, 4)
KT_MVPR_EXPERTS_KERNEL(2, 4)
KT_MVPR_EXPERTS_KERNEL(3, 6)
KT_MVPR_EXPERTS_KERNEL(4, 4)

// ---- Streaming integer-dot matrix-vector kernels (decode) ----
//
// The same row bodies (kt_mv_q4_K, kt_mv_q6_K) with the rows in shared memory: persistent blocks of 8 warps walk
// chunks of 8 consecutive rows (contiguous bytes; chunk c goes to block c % gridDim.x) and copy each chunk into a
// ring of KT_MVS_STAGES shared-memory stages with cp.async, KT_MVS_STAGES - 1 chunks ahead of the one its warps
// compute (a warp a row). So a block keeps ~3 chunks of weight bytes in flight while its warps do the arithmetic,
// instead of each warp waiting for its row's bytes and then computing with none in flight: the kernel streams the
// matrix at close to the memory's bandwidth. Every output has the bits of matvec_<fmt>_q8 (same body, same order).
// Up to three matrices of one format and width (q/k/v, gate/up), as the _q8_3 form; rowBytes a multiple of 16.
// Grid (blocks, ceil(n / 8)), 256 threads, KT_MVS_STAGES · 8 · rowBytes bytes of dynamic shared memory.
#define KT_MVS_STAGES 4
#define KT_MVS_ROWS 8

// Units of R consecutive rows of up to three matrices (rows of matrix 0, then 1, then 2, each padded to whole
// units): the streaming matvec's chunks (R = 8) and the streaming tiles' row tiles (R = 16, mmq.cu).
template <int R>
struct KtRowUnits {
    const u8* W[3];
    float* y[3];
    int rows[3];
    int first[4];  // first unit of each matrix, and the total
    __device__ __forceinline__ KtRowUnits(const u8* W0, const u8* W1, const u8* W2, float* y0, float* y1, float* y2,
                                          int rows0, int rows1, int rows2) {
        W[0] = W0; W[1] = W1; W[2] = W2;
        y[0] = y0; y[1] = y1; y[2] = y2;
        rows[0] = rows0; rows[1] = rows1; rows[2] = rows2;
        first[0] = 0;
        for (int m = 0; m < 3; m++) first[m + 1] = first[m] + (rows[m] + R - 1) / R;
    }
    __device__ __forceinline__ int matrix(int u) const { return u < first[1] ? 0 : (u < first[2] ? 1 : 2); }
    // Unit u's matrix, its first row and its row count.
    __device__ __forceinline__ int locate(int u, int* r0, int* count) const {
        int m = matrix(u);
        *r0 = (u - first[m]) * R;
        *count = min(R, rows[m] - *r0);
        return m;
    }
};
typedef KtRowUnits<KT_MVS_ROWS> KtMvsChunks;

// Issues the copy of chunk c (if it exists) into dst: bytes 16 · k by thread k mod blockDim.
__device__ __forceinline__ void kt_mvs_issue(const KtMvsChunks& ch, i64 rowBytes, int c, u8* dst) {
    if (c >= ch.first[3]) return;
    int r0, count;
    int m = ch.locate(c, &r0, &count);
    const u8* src = ch.W[m] + (i64)r0 * rowBytes;
    i64 bytes = (i64)count * rowBytes;
    for (i64 o = (i64)threadIdx.x * 16; o < bytes; o += (i64)blockDim.x * 16) kt_cp_async16(dst + o, src + o);
}

#define KT_MV_STREAM(name, body) \
extern "C" __global__ void __launch_bounds__(256) matvec_stream_##name##_q8(const u8* W0, const u8* W1, const u8* W2, \
        i64 rowBytes, int rows0, int rows1, int rows2, int cols, const i8* xq, const float* xd, const int* xs, \
        float* y0, float* y1, float* y2, int n) { KT_PDL_WAIT(); \
    KT_DYNAMIC_SHARED(u8, stages); \
    KtMvsChunks ch(W0, W1, W2, y0, y1, y2, rows0, rows1, rows2); \
    int warp = threadIdx.x >> 5, t0 = blockIdx.y * KT_MV_TOKENS; \
    i64 stageBytes = (i64)KT_MVS_ROWS * rowBytes; \
    for (int s = 0; s < KT_MVS_STAGES - 1; s++) { \
        kt_mvs_issue(ch, rowBytes, blockIdx.x + s * gridDim.x, stages + s * stageBytes); \
        kt_cp_async_commit(); \
    } \
    for (int i = 0;; i++) { \
        int c = blockIdx.x + i * gridDim.x; \
        if (c >= ch.first[3]) break; \
        int ahead = i + KT_MVS_STAGES - 1; \
        kt_mvs_issue(ch, rowBytes, blockIdx.x + ahead * gridDim.x, stages + (ahead % KT_MVS_STAGES) * stageBytes); \
        kt_cp_async_commit(); \
        kt_cp_async_wait<KT_MVS_STAGES - 1>(); \
        __syncthreads(); \
        int r0, count; \
        int m = ch.locate(c, &r0, &count); \
        if (warp < count) { \
            int rows = ch.rows[m]; \
            float* yr = ch.y[m] + (i64)t0 * rows + r0 + warp; \
            const u8* row = stages + (i % KT_MVS_STAGES) * stageBytes + (i64)warp * rowBytes; \
            if (n == 1) body<1>(row, cols, xq, xd, xs, yr, rows, n, t0); \
            else body<KT_MV_TOKENS>(row, cols, xq, xd, xs, yr, rows, n, t0); \
        } \
        __syncthreads(); \
    } \
    kt_cp_async_wait<0>(); \
}
KT_MV_STREAM(q4_K, kt_mv_q4_K)
KT_MV_STREAM(q6_K, kt_mv_q6_K)

// Routed experts, streaming (decode): the row chunks of every (token, expert) pair p of one or two stacks (gate,
// up: the same ids and input) through the same ring; pair p's rows of stack m are expert ids[p]'s, its input
// token p / xDiv, its output y_m[p, ..]. Each output has the bits of matvec_experts_<fmt>_q8. Grid (blocks),
// 256 threads, KT_MVS_STAGES · 8 · rowBytes bytes of dynamic shared memory.
struct KtMvsExpertChunks {
    const u8* W[2];
    float* y[2];
    const int* ids;
    i64 rowBytes, matrixBytes;
    int rows, perPair, perMatrix, total;
    __device__ __forceinline__ KtMvsExpertChunks(const u8* W0, const u8* W1, float* y0, float* y1, const int* ids_,
                                                 i64 rowBytes_, i64 matrixBytes_, int rows_, int pairs) {
        W[0] = W0; W[1] = W1; y[0] = y0; y[1] = y1; ids = ids_;
        rowBytes = rowBytes_; matrixBytes = matrixBytes_; rows = rows_;
        perPair = (rows + KT_MVS_ROWS - 1) / KT_MVS_ROWS;
        perMatrix = pairs * perPair;
        total = perMatrix * (W1 ? 2 : 1);
    }
    // Chunk c's stack, pair, first row and row count.
    __device__ __forceinline__ void locate(int c, int* m, int* p, int* r0, int* count) const {
        *m = c / perMatrix;
        int rem = c - *m * perMatrix;
        *p = rem / perPair;
        *r0 = (rem - *p * perPair) * KT_MVS_ROWS;
        *count = min(KT_MVS_ROWS, rows - *r0);
    }
};

__device__ __forceinline__ void kt_mvs_issue_experts(const KtMvsExpertChunks& ch, int c, u8* dst) {
    if (c >= ch.total) return;
    int m, p, r0, count;
    ch.locate(c, &m, &p, &r0, &count);
    const u8* src = ch.W[m] + (i64)ch.ids[p] * ch.matrixBytes + (i64)r0 * ch.rowBytes;
    i64 bytes = (i64)count * ch.rowBytes;
    for (i64 o = (i64)threadIdx.x * 16; o < bytes; o += (i64)blockDim.x * 16) kt_cp_async16(dst + o, src + o);
}

#define KT_MV_STREAM_EXPERTS(name, body) \
extern "C" __global__ void __launch_bounds__(256) matvec_stream_experts_##name##_q8(const u8* W0, const u8* W1, \
        i64 rowBytes, i64 matrixBytes, int rows, int cols, const i8* xq, const float* xd, const int* xs, int xDiv, \
        const int* ids, float* y0, float* y1, int pairs) { KT_PDL_WAIT(); \
    KT_DYNAMIC_SHARED(u8, stages); \
    KtMvsExpertChunks ch(W0, W1, y0, y1, ids, rowBytes, matrixBytes, rows, pairs); \
    int warp = threadIdx.x >> 5; \
    i64 stageBytes = (i64)KT_MVS_ROWS * rowBytes; \
    for (int s = 0; s < KT_MVS_STAGES - 1; s++) { \
        kt_mvs_issue_experts(ch, blockIdx.x + s * gridDim.x, stages + s * stageBytes); \
        kt_cp_async_commit(); \
    } \
    for (int i = 0;; i++) { \
        int c = blockIdx.x + i * gridDim.x; \
        if (c >= ch.total) break; \
        int ahead = i + KT_MVS_STAGES - 1; \
        kt_mvs_issue_experts(ch, blockIdx.x + ahead * gridDim.x, stages + (ahead % KT_MVS_STAGES) * stageBytes); \
        kt_cp_async_commit(); \
        kt_cp_async_wait<KT_MVS_STAGES - 1>(); \
        __syncthreads(); \
        int m, p, r0, count; \
        ch.locate(c, &m, &p, &r0, &count); \
        if (warp < count) { \
            int tq = p / xDiv; \
            const u8* row = stages + (i % KT_MVS_STAGES) * stageBytes + (i64)warp * rowBytes; \
            body<1>(row, cols, xq, xd, xs, ch.y[m] + (i64)p * rows + r0 + warp, rows, tq + 1, tq); \
        } \
        __syncthreads(); \
    } \
    kt_cp_async_wait<0>(); \
}
KT_MV_STREAM_EXPERTS(q4_K, kt_mv_q4_K)
KT_MV_STREAM_EXPERTS(q6_K, kt_mv_q6_K)
