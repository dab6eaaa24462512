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
        int cols, const float* x, i64 xStride, i64 xHeadStride, float* y, i64 yStride, i64 yHeadStride, int n) { \
    int h = blockIdx.z; \
    kt_matvec_rows<Dec>(W + (i64)h * matrixBytes, rowBytes, rows, cols, x + (i64)h * xHeadStride, xStride, \
                        y + (i64)h * yHeadStride, yStride, n, blockIdx.y * KT_MV_TOKENS); \
}
KT_FORMATS(KT_MATVEC)

// Routed experts: pair p (token p / xDiv, its expert ids[p]) gets y[p, r] = W_ids[p][r] · x[p / xDiv];
// grid (ceil(rows / 4), pairs).
#define KT_MATVEC_EXPERTS(name, Dec) \
extern "C" __global__ void __launch_bounds__(128) matvec_experts_##name(const u8* W, i64 rowBytes, i64 matrixBytes, \
        int rows, int cols, const float* x, int xDiv, const int* ids, float* y) { \
    int p = blockIdx.y; \
    int e = ids[p]; \
    kt_matvec_rows<Dec>(W + (i64)e * matrixBytes, rowBytes, rows, cols, x + (i64)(p / xDiv) * cols, 0, \
                        y + (i64)p * rows, 0, 1, 0); \
}
KT_FORMATS(KT_MATVEC_EXPERTS)

// out[t] = scale · table[tokens[t]]; grid n, 128 threads.
#define KT_EMBED(name, Dec) \
extern "C" __global__ void __launch_bounds__(128) embed_##name(const u8* W, i64 rowBytes, int cols, const int* tokens, \
        float* out, float scale) { \
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
extern "C" __global__ void __launch_bounds__(128) dequantize_##name(const u8* W, i64 rowBytes, int cols, float* out) { \
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

// Q4_K rows · Q8_K-quantized inputs (quantize_q8_K) with integer dot products, for `.standard` matmuls. A warp per
// row; per step the warp covers 4 super-blocks, 8 lanes each, every lane one 16-byte load of quants (the low
// and high nibbles of 16 elements of two groups), the block's 16-byte header shared by its 8 lanes: the row is
// read in whole coalesced segments. Up to 8 tokens per warp, each with its own fixed reduction (batch
// invariance).
extern "C" __global__ void __launch_bounds__(128) matvec_q4_K_q8(const u8* W, i64 rowBytes, int rows, int cols,
        const i8* xq, const float* xd, const int* xs, float* y, int n) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int r = blockIdx.x * KT_MV_WARPS + warp;
    if (r >= rows) return;
    int t0 = blockIdx.y * KT_MV_TOKENS, nt = min(KT_MV_TOKENS, n - t0);
    const u8* row = W + (i64)r * rowBytes;
    int nsb = cols / 256, part = lane & 7, p = part >> 1, l0 = 16 * (part & 1);
    float acc[KT_MV_TOKENS];
    for (int t = 0; t < KT_MV_TOKENS; t++) acc[t] = 0.0f;
    for (int base = 0; base < nsb; base += 4) {
        int sb = base + (lane >> 3);
        if (sb < nsb) {
            const u8* blk = row + (i64)sb * 144;
            uint4 head = *(const uint4*)blk;
            uint4 qs = *(const uint4*)(blk + 16 + 16 * part);
            const u8* hb = (const u8*)&head;
            float d = kt_f16(hb), dmin = kt_f16(hb + 2);
            int scLo, mLo, scHi, mHi;
            kt_scale_min_k4(2 * p, hb + 4, &scLo, &mLo);
            kt_scale_min_k4(2 * p + 1, hb + 4, &scHi, &mHi);
            int lo[4] = {(int)(qs.x & 0x0F0F0F0Fu), (int)(qs.y & 0x0F0F0F0Fu), (int)(qs.z & 0x0F0F0F0Fu), (int)(qs.w & 0x0F0F0F0Fu)};
            int hi[4] = {(int)((qs.x >> 4) & 0x0F0F0F0Fu), (int)((qs.y >> 4) & 0x0F0F0F0Fu),
                         (int)((qs.z >> 4) & 0x0F0F0F0Fu), (int)((qs.w >> 4) & 0x0F0F0F0Fu)};
            int eLo = sb * 256 + 64 * p + l0, eHi = eLo + 32;
            for (int t = 0; t < KT_MV_TOKENS; t++) {
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
                    float part_ = d * ((float)scLo * (float)sLo + (float)scHi * (float)sHi)
                                - dmin * ((float)mLo * (float)bLo + (float)mHi * (float)bHi);
                    acc[t] += xd[tok * nsb + sb] * part_;
                }
            }
        }
    }
    for (int t = 0; t < KT_MV_TOKENS; t++) {
        if (t < nt) {
            float s = kt_warp_sum(acc[t]);
            if (lane == 0) y[(i64)(t0 + t) * rows + r] = s;
        }
    }
}
