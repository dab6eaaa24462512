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
