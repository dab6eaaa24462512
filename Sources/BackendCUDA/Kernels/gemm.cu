// The operands of prefill's half-precision GEMMs (cuBLAS, CUBLAS.swift): weights decoded from their GGUF blocks to
// f16 rows, activations scaled per row by a power of two into f16 range, and the product scaled back.

// out[r, c] = f16(W[r, c]) for rows [0, rows) of `cols` (a multiple of 32): one thread per 32-element group,
// consecutive threads along a row; grid-stride over rows · cols / 32 groups.
#define KT_DEQUANT_F16(name, Dec) \
extern "C" __global__ void __launch_bounds__(256) dequant_f16_##name(const u8* W, i64 rowBytes, int rows, int cols, \
                                                                     u16* out) { KT_PDL_WAIT(); \
    i64 units = (i64)cols / 32, total = (i64)rows * units; \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) { \
        i64 r = i / units; \
        int u = (int)(i - r * units); \
        float v[32]; \
        Dec::unit(W + r * rowBytes, u, cols, v); \
        u32 packed[16]; \
        for (int j = 0; j < 16; j++) \
            packed[j] = (u32)kt_float_to_half(v[2 * j]) | ((u32)kt_float_to_half(v[2 * j + 1]) << 16); \
        uint4* o = (uint4*)(out + r * cols + (i64)u * 32); \
        for (int j = 0; j < 4; j++) o[j] = make_uint4(packed[4 * j], packed[4 * j + 1], packed[4 * j + 2], packed[4 * j + 3]); \
    } \
}
KT_FORMATS(KT_DEQUANT_F16)

// Q4_K's own form (the generic one loads its 32 bytes of nibbles one byte at a time): the group's bytes as two
// 16-byte loads (blocks of 144 bytes keep them aligned), the same arithmetic as DecQ4_K.
extern "C" __global__ void __launch_bounds__(256) dequant_f16_q4_K_vec(const u8* W, i64 rowBytes, int rows, int cols,
                                                                      u16* out) { KT_PDL_WAIT();
    i64 units = (i64)cols / 32, total = (i64)rows * units;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        i64 r = i / units;
        int u = (int)(i - r * units);
        const u8* b = W + r * rowBytes + (u >> 3) * 144;
        int s = u & 7, sc, m;
        kt_scale_min_k4(s, b + 4, &sc, &m);
        float d = kt_f16(b) * (float)sc, mn = kt_f16(b + 2) * (float)m;
        const uint4* q = (const uint4*)(b + 16 + 32 * (s >> 1));
        uint4 w[2] = {q[0], q[1]};
        const u32* words = (const u32*)w;
        int shift = 4 * (s & 1);
        u32 packed[16];
        for (int j = 0; j < 8; j++) {
            u32 x = words[j] >> shift;
            float v0 = d * (float)(x & 15) - mn, v1 = d * (float)((x >> 8) & 15) - mn;
            float v2 = d * (float)((x >> 16) & 15) - mn, v3 = d * (float)((x >> 24) & 15) - mn;
            packed[2 * j] = (u32)kt_float_to_half(v0) | ((u32)kt_float_to_half(v1) << 16);
            packed[2 * j + 1] = (u32)kt_float_to_half(v2) | ((u32)kt_float_to_half(v3) << 16);
        }
        uint4* o = (uint4*)(out + r * cols + (i64)u * 32);
        for (int j = 0; j < 4; j++) o[j] = make_uint4(packed[4 * j], packed[4 * j + 1], packed[4 * j + 2], packed[4 * j + 3]);
    }
}

// Row t of x (`cols` floats, a multiple of 4) as f16 times 2^e and inv[t] = 2^-e to undo it on the product: e = 0
// when the row's largest magnitude m is in [2^-10, 2^15) (f16 holds it with full relative precision and reaches
// 65504), else the power of two that brings m to [2^14, 2^15) (exact). One block of 256 threads per row.
extern "C" __global__ void __launch_bounds__(256) to_f16_scaled(const float* x, u16* out, float* inv, int cols) { KT_PDL_WAIT();
    __shared__ float scratch[32];
    const float4* xr = (const float4*)(x + (i64)blockIdx.x * cols);
    int c4 = cols / 4;
    float m = 0.0f;
    for (int i = threadIdx.x; i < c4; i += blockDim.x) {
        float4 v = xr[i];
        m = fmaxf(m, fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w))));
    }
    m = kt_block_max(m, scratch);
    // m = f · 2^k with f in [0.5, 1).
    int k = 15;
    if (m > 0.0f && m < KT_INF) frexpf(m, &k);
    k = max(-100, k);  // rows of subnormals: keep 2^(15 - k) finite
    int e = (m >= ldexpf(1.0f, -10) && m < 32768.0f) ? 0 : 15 - k;
    float s = ldexpf(1.0f, e);
    if (threadIdx.x == 0) inv[blockIdx.x] = ldexpf(1.0f, -e);
    uint2* o = (uint2*)(out + (i64)blockIdx.x * cols);
    for (int i = threadIdx.x; i < c4; i += blockDim.x) {
        float4 v = xr[i];
        o[i] = make_uint2((u32)kt_float_to_half(v.x * s) | ((u32)kt_float_to_half(v.y * s) << 16),
                          (u32)kt_float_to_half(v.z * s) | ((u32)kt_float_to_half(v.w * s) << 16));
    }
}

// y[t, c] *= inv[t] for n rows of `cols` (packed); rows whose scale is 1 are not touched.
extern "C" __global__ void __launch_bounds__(256) scale_rows(float* y, const float* inv, int cols, i64 count) { KT_PDL_WAIT();
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (i64)gridDim.x * blockDim.x) {
        float s = inv[i / cols];
        if (s != 1.0f) y[i] *= s;
    }
}
