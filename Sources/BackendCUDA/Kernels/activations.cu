// The 8-bit rounding of matmul inputs (`MatmulPrecision.standard`), as the CPU backend's vec-dot formats do it,
// written back as floats (y = q · d) so every matrix kernel can take them: the GPU's results then carry the same
// activation rounding as the CPU's and as ggml's.

// Q8_0 (the vec-dot format of Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL): blocks of 32, d = max|x| / 127 stored as f16,
// q = round(x / d) (halves away from zero). Grid (n, cols / 32 / 4), 128 threads: a warp per block.
extern "C" __global__ void __launch_bounds__(128) round_q8_0(const float* x, float* y, int cols) { KT_PDL_WAIT();
    int lane = threadIdx.x & 31;
    int block = blockIdx.y * 4 + (threadIdx.x >> 5);
    if (block * 32 >= cols) return;
    i64 i = (i64)blockIdx.x * cols + block * 32 + lane;
    float v = x[i];
    float amax = kt_warp_max(fabsf(v));
    float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i] = roundf(v * id) * kt_round_to_half(d);
}

// The Q8_K scale search of one 256-block held by a warp (8 values per lane, element lane + 32k in v[k]): the largest
// magnitude and the index of its first occurrence, the same on every lane.
__device__ __forceinline__ void kt_q8K_max(const float* v, int lane, float* amaxOut, int* atOut) {
    float amax = 0.0f;
    int at = 1 << 30;
    for (int k = 0; k < 8; k++) {
        float a = fabsf(v[k]);
        int idx = lane + 32 * k;
        if (a > amax || (a == amax && a > 0.0f && idx < at)) { amax = a; at = idx; }
    }
    for (int m = 16; m > 0; m >>= 1) {
        float oa = __shfl_xor_sync(0xffffffffu, amax, m);
        int oi = __shfl_xor_sync(0xffffffffu, at, m);
        if (oa > amax || (oa == amax && oi < at)) { amax = oa; at = oi; }
    }
    *amaxOut = amax;
    *atOut = at;
}

// Q8_K (the vec-dot format of the K-quants and IQ4_XS): blocks of 256, the element of largest magnitude (the first
// one on ties) sets iscale = −127 / it, q = min(127, nearest-even(iscale · x)), d = 1 / iscale. Grid (n, cols / 256 / 4),
// 128 threads: a warp per block, 8 elements per lane.
extern "C" __global__ void __launch_bounds__(128) round_q8_K(const float* x, float* y, int cols) { KT_PDL_WAIT();
    int lane = threadIdx.x & 31;
    int block = blockIdx.y * 4 + (threadIdx.x >> 5);
    if (block * 256 >= cols) return;
    const float* xb = x + (i64)blockIdx.x * cols + block * 256;
    float* yb = y + (i64)blockIdx.x * cols + block * 256;
    float v[8];
    for (int k = 0; k < 8; k++) v[k] = xb[lane + 32 * k];
    float amax;
    int at;
    kt_q8K_max(v, lane, &amax, &at);
    if (amax == 0.0f) {
        for (int k = 0; k < 8; k++) yb[lane + 32 * k] = 0.0f;
        return;
    }
    float vmax = xb[at];
    float iscale = -127.0f / vmax;
    float d = 1.0f / iscale;
    for (int k = 0; k < 8; k++) {
        int q = min(127, __float2int_rn(iscale * v[k]));
        yb[lane + 32 * k] = (float)q * d;
    }
}

// The same Q8_K rounding as round_q8_K, kept as integers for the integer-dot matrix kernels: q (int8), the block's
// d, and the sum of each 16 q's, for the 256-block at xb by one warp.
__device__ __forceinline__ void kt_quantize_q8K_block(const float* xb, i8* qb, float* dOut, int* sumsOut) {
    int lane = threadIdx.x & 31;
    float v[8];
    for (int k = 0; k < 8; k++) v[k] = xb[lane + 32 * k];
    float amax;
    int at;
    kt_q8K_max(v, lane, &amax, &at);
    float iscale = amax == 0.0f ? 0.0f : -127.0f / xb[at];
    int qv[8];
    for (int k = 0; k < 8; k++) {
        qv[k] = amax == 0.0f ? 0 : min(127, __float2int_rn(iscale * v[k]));
        qb[lane + 32 * k] = (i8)qv[k];
    }
    if (lane == 0) *dOut = amax == 0.0f ? 0.0f : 1.0f / iscale;
    // Sums of 16: element lane + 32k belongs to sum (32k + lane) / 16 = 2k + lane / 16; reduce over the 16 lanes.
    for (int k = 0; k < 8; k++) {
        int s = qv[k];
        for (int m = 8; m > 0; m >>= 1) s += __shfl_xor_sync(0xffffffffu, s, m);
        if ((lane & 15) == 0) sumsOut[2 * k + lane / 16] = s;
    }
}

// q (int8 [n, cols]), d (float [n, cols / 256]), sums (int [n, cols / 16]). Grid (n, cols / 256 / 4), 128 threads.
extern "C" __global__ void __launch_bounds__(128) quantize_q8_K(const float* x, i8* q, float* d, int* sums, int cols) { KT_PDL_WAIT();
    int block = blockIdx.y * 4 + (threadIdx.x >> 5);
    if (block * 256 >= cols) return;
    i64 row = blockIdx.x;
    kt_quantize_q8K_block(x + row * cols + block * 256, q + row * cols + block * 256, d + row * (cols / 256) + block,
                          sums + row * (cols / 16) + block * 16);
}
