// Element-wise and row ops. Row kernels: one block per row; element kernels: a grid-stride loop.

// One row's RMS norm by the whole block: o = x / rms(x) · w (o may be x). Rows of whole, aligned float4s up to
// 8 per thread are held in registers (one read of x; kt_rms_norm_vec); others take the plain two-pass loop.
#define KT_NORM_VEC 8
// Threads of a row norm's block (every row norm kernel: the reduction order, hence the bits, depends on it); 16
// warps, so that a 4096-wide row's Q8_K blocks are quantized one a warp.
#define KT_NORM_THREADS 512
__device__ __forceinline__ bool kt_norm_vec_ok(int dim, const void* a, const void* b, const void* c) {
    return (dim & 3) == 0 && dim / 4 <= KT_NORM_VEC * (int)blockDim.x && (((size_t)a | (size_t)b | (size_t)c) & 15) == 0;
}
// The vector form with the row already in registers (float4 i = threadIdx.x + k · blockDim.x in v[k], zeros past
// the end); also writes o to `so` (shared memory) when given, for a step that reads it next.
// The weights as kt_rms_norm_vec takes them (loaded before the reduction, or before KT_PDL_WAIT, so that their
// latency overlaps it or the previous kernel's tail).
__device__ __forceinline__ void kt_norm_weights(const float* w, int dim, float4* wv) {
    int nv = dim / 4;
    for (int k = 0; k < KT_NORM_VEC; k++) {
        int i = threadIdx.x + k * blockDim.x;
        wv[k] = i < nv ? ((const float4*)w)[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
}
__device__ __forceinline__ void kt_rms_norm_vec(const float4* v, const float4* wv, float* o, int dim, float eps,
                                                float* scratch, float* so) {
    int nv = dim / 4;
    float ss = 0.0f;
    for (int k = 0; k < KT_NORM_VEC; k++)
        ss += v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z + v[k].w * v[k].w;
    ss = kt_block_sum(ss, scratch);
    float scale = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int k = 0; k < KT_NORM_VEC; k++) {
        int i = threadIdx.x + k * blockDim.x;
        if (i < nv) {
            float4 ww = wv[k];
            float4 r = make_float4(v[k].x * scale * ww.x, v[k].y * scale * ww.y, v[k].z * scale * ww.z, v[k].w * scale * ww.w);
            ((float4*)o)[i] = r;
            if (so) ((float4*)so)[i] = r;
        }
    }
}
__device__ __forceinline__ void kt_rms_norm_row(const float* xr, const float* w, float* o, int dim, float eps,
                                                float* scratch, float* so = nullptr) {
    if (kt_norm_vec_ok(dim, xr, w, o)) {
        int nv = dim / 4;
        float4 v[KT_NORM_VEC];
        for (int k = 0; k < KT_NORM_VEC; k++) {
            int i = threadIdx.x + k * blockDim.x;
            v[k] = i < nv ? ((const float4*)xr)[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
        float4 wv[KT_NORM_VEC];
        kt_norm_weights(w, dim, wv);
        kt_rms_norm_vec(v, wv, o, dim, eps, scratch, so);
        return;
    }
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
    ss = kt_block_sum(ss, scratch);
    float scale = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        o[i] = xr[i] * scale * w[i];
        if (so) so[i] = o[i];
    }
}

// The Q8_K form of a normed row (dim a multiple of 256), by the block's warps, from `src` (the row in shared
// memory when it fit there, else the output in global memory).
#define KT_NORM_SHARED 8192
__device__ __forceinline__ void kt_norm_quantize(const float* src, int dim, i64 row, i8* q, float* d, int* sums) {
    for (int b = threadIdx.x >> 5; b * 256 < dim; b += blockDim.x >> 5)
        kt_quantize_q8K_block(src + b * 256, q + row * dim + b * 256, d + row * (dim / 256) + b, sums + row * (dim / 16) + b * 16);
}

// out[r] = x[r] / rms(x[r]) · w for rows at stride `stride`; grid rows, KT_NORM_THREADS threads. In place when out == x.
extern "C" __global__ void __launch_bounds__(KT_NORM_THREADS) rms_norm(const float* x, const float* w, float* out, int dim,
                                                           i64 stride, float eps) { KT_PDL_WAIT();
    __shared__ float scratch[32];
    const float* xr = x + (i64)blockIdx.x * stride;
    float* o = out + (i64)blockIdx.x * stride;
    kt_rms_norm_row(xr, w, o, dim, eps, scratch);
}

// rms_norm of packed rows (stride = dim, dim a multiple of 256) that also writes the output's Q8_K quantization as
// quantize_q8_K would from it (the integer-dot matmul that reads the output next skips its own); grid rows, KT_NORM_THREADS threads.
extern "C" __global__ void __launch_bounds__(KT_NORM_THREADS) rms_norm_q8K(const float* x, const float* w, float* out, int dim,
                                                               float eps, i8* q, float* d, int* sums) { KT_PDL_WAIT();
    __shared__ float scratch[32];
    __shared__ __align__(16) float so[KT_NORM_SHARED];
    i64 row = blockIdx.x;
    const float* xr = x + row * dim;
    float* o = out + row * dim;
    bool shared = dim <= KT_NORM_SHARED;
    kt_rms_norm_row(xr, w, o, dim, eps, scratch, shared ? so : nullptr);
    __syncthreads();
    kt_norm_quantize(shared ? so : o, dim, row, q, d, sums);
}

// The routed experts' combine of element c of token row's output: s + Σ_j weights[row, j] · ys[row · topK + j][c]
// in choice order, fused multiply-adds (moe_combine's arithmetic; add_rms_norm_combine's from s = 0).
__device__ __forceinline__ float kt_moe_combine1(const float* ys, const float* cw, i64 row, int topK, i64 dim, i64 c,
                                                 float s) {
    for (int j = 0; j < topK; j++) s = __fmaf_rn(cw[row * topK + j], ys[(row * topK + j) * dim + c], s);
    return s;
}

// y += x, then out = rms_norm(y), for packed rows (one block per row): add_into's and rms_norm's bits. With q != null
// (dim a multiple of 256) also the Q8_K form of out, as rms_norm_q8K. The sum stays in registers for the norm and
// the normed row in shared memory for the quantization. With ys != null, x is first the routed experts' combine
// (moe_combine's store form of ys and cw, topK outputs a row; also written to x): the launch of moe_combine then
// add_rms_norm, with their bits, in one (add_rms_norm_combine; a kernel of its own, so that the plain form's code
// stays as it was: with the combine's branch and stores in it the plain form measured ~6% slower a decode step,
// H100, 2026-12-07). Grid rows, KT_NORM_THREADS threads.
template <bool COMBINE>
__device__ __forceinline__ void kt_add_rms_norm(float* x, float* y, const float* w, float* out, int dim, float eps, i8* q,
                                                float* d, int* sums, const float* ys, const float* cw, int topK) {
    /* KT_PDL_WAIT after the weights' loads */
    __shared__ float scratch[32];
    __shared__ __align__(16) float so[KT_NORM_SHARED];
    i64 row = blockIdx.x;
    float* xr = x + row * dim;
    float* yr = y + row * dim;
    float* o = out + row * dim;
    bool shared = q && dim <= KT_NORM_SHARED;
    if (kt_norm_vec_ok(dim, xr, yr, o) && (((size_t)w | (size_t)(COMBINE ? ys : nullptr)) & 15) == 0) {
        int nv = dim / 4;
        float4 wv[KT_NORM_VEC];
        kt_norm_weights(w, dim, wv);  // (weights: no other kernel writes them)
        KT_PDL_WAIT();
        float4 v[KT_NORM_VEC];
        for (int k = 0; k < KT_NORM_VEC; k++) {
            int i = threadIdx.x + k * blockDim.x;
            v[k] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (i < nv) {
                float4 a;
                if (COMBINE) {
                    a = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                    for (int j = 0; j < topK; j++) {
                        float c = cw[row * topK + j];
                        float4 e = ((const float4*)(ys + (row * topK + j) * dim))[i];
                        a = make_float4(__fmaf_rn(c, e.x, a.x), __fmaf_rn(c, e.y, a.y), __fmaf_rn(c, e.z, a.z),
                                        __fmaf_rn(c, e.w, a.w));
                    }
                    ((float4*)xr)[i] = a;
                } else {
                    a = ((const float4*)xr)[i];
                }
                float4 b = ((const float4*)yr)[i];
                v[k] = make_float4(b.x + a.x, b.y + a.y, b.z + a.z, b.w + a.w);
                ((float4*)yr)[i] = v[k];
            }
        }
        kt_rms_norm_vec(v, wv, o, dim, eps, scratch, shared ? so : nullptr);
    } else {
        KT_PDL_WAIT();
        if (COMBINE)
            for (int i = threadIdx.x; i < dim; i += blockDim.x) xr[i] = kt_moe_combine1(ys, cw, row, topK, dim, i, 0.0f);
        for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] += xr[i];
        __syncthreads();
        kt_rms_norm_row(yr, w, o, dim, eps, scratch, shared ? so : nullptr);
    }
    if (!q) return;
    __syncthreads();
    kt_norm_quantize(shared ? so : o, dim, row, q, d, sums);
}
extern "C" __global__ void __launch_bounds__(KT_NORM_THREADS) add_rms_norm(const float* x, float* y, const float* w,
        float* out, int dim, float eps, i8* q, float* d, int* sums) { /* KT_PDL_WAIT in kt_add_rms_norm */
    kt_add_rms_norm<false>((float*)x, y, w, out, dim, eps, q, d, sums, nullptr, nullptr, 0);
}
extern "C" __global__ void __launch_bounds__(KT_NORM_THREADS) add_rms_norm_combine(float* x, float* y, const float* w,
        float* out, int dim, float eps, i8* q, float* d, int* sums, const float* ys, const float* cw, int topK) {
    /* KT_PDL_WAIT in kt_add_rms_norm */
    kt_add_rms_norm<true>(x, y, w, out, dim, eps, q, d, sums, ys, cw, topK);
}

// out[i] = norm(x[indices[i]]); grid count, KT_NORM_THREADS threads.
extern "C" __global__ void __launch_bounds__(KT_NORM_THREADS) rms_norm_rows(const float* x, const int* indices, const float* w,
                                                                float* out, int dim, float eps) { KT_PDL_WAIT();
    __shared__ float scratch[32];
    const float* xr = x + (i64)indices[blockIdx.x] * dim;
    float* o = out + (i64)blockIdx.x * dim;
    kt_rms_norm_row(xr, w, o, dim, eps, scratch);
}

// Nothing but the dependency wait: a kernel boundary alone (KTRANSFORMERS_CUDA_EMPTY_AFTER, a measurement).
extern "C" __global__ void kt_empty() { KT_PDL_WAIT(); }

extern "C" __global__ void add_bias(const float* b, float* x, int width, i64 count) { KT_PDL_WAIT();
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < count; i += (i64)gridDim.x * blockDim.x)
        x[i] += b[i % width];
}

extern "C" __global__ void add_into(const float* x, float* y, i64 count) { KT_PDL_WAIT();
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < count; i += (i64)gridDim.x * blockDim.x) y[i] += x[i];
}

// Tensor parallelism's all-reduce on one rank: x[i] = a0[i] + a1[i] + ... + a(n-1)[i], the ranks' partial sums in
// rank order (one of them is x itself, read before it is written), so every rank gets the same bits.
extern "C" __global__ void sum_ranks(float* x, const float* a0, const float* a1, const float* a2, const float* a3,
                                     const float* a4, const float* a5, const float* a6, const float* a7, int n, i64 count) {
    KT_PDL_WAIT();
    const float* a[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < count; i += (i64)gridDim.x * blockDim.x) {
        float s = a[0][i];
        for (int r = 1; r < n; r++) s += a[r][i];
        x[i] = s;
    }
}

extern "C" __global__ void fill(float* x, i64 count, float value) { KT_PDL_WAIT();
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < count; i += (i64)gridDim.x * blockDim.x) x[i] = value;
}

extern "C" __global__ void softcap(float* x, i64 count, float cap) { KT_PDL_WAIT();
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < count; i += (i64)gridDim.x * blockDim.x)
        x[i] = cap * tanhf(x[i] / cap);
}

// Whether value v at index i beats bv at bi for argmax_rows: the larger value, the lower index among equal ones; a
// NaN never, unless at index 0 (the host's greedy scan starts from element 0 and nothing compares above a NaN).
// A strict total order over a row's elements, so any reduction order gives the same index.
__device__ __forceinline__ bool kt_argmax_beats(float v, int i, float bv, int bi) {
    if (bi == 0 && bv != bv) return false;
    if (i == 0 && v != v) return true;
    if (v != v) return false;
    return v > bv || (v == bv && i < bi);
}
__device__ __forceinline__ void kt_argmax_warp(float* bv, int* bi) {
    for (int m = 16; m > 0; m >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, *bv, m);
        int oi = __shfl_xor_sync(0xffffffffu, *bi, m);
        if (kt_argmax_beats(ov, oi, *bv, *bi)) { *bv = ov; *bi = oi; }
    }
}
// out[r] = the index of row r's largest value (kt_argmax_beats' order); a block a row (blockDim a multiple of 32).
extern "C" __global__ void __launch_bounds__(1024) argmax_rows(const float* x, int cols, int* out) { KT_PDL_WAIT();
    __shared__ float sv[32];
    __shared__ int si[32];
    const float* row = x + (i64)blockIdx.x * cols;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    float bv = -KT_INF;
    int bi = 0x7fffffff;
    if ((cols & 3) == 0 && ((size_t)row & 15) == 0) {
        // Four values a load, four loads in flight (the order of the comparisons does not matter: a total order).
        const float4* r4 = (const float4*)row;
        int n4 = cols >> 2;
#pragma unroll 4
        for (int k = threadIdx.x; k < n4; k += blockDim.x) {
            float4 v = r4[k];
            int i = 4 * k;
            if (kt_argmax_beats(v.x, i, bv, bi)) { bv = v.x; bi = i; }
            if (kt_argmax_beats(v.y, i + 1, bv, bi)) { bv = v.y; bi = i + 1; }
            if (kt_argmax_beats(v.z, i + 2, bv, bi)) { bv = v.z; bi = i + 2; }
            if (kt_argmax_beats(v.w, i + 3, bv, bi)) { bv = v.w; bi = i + 3; }
        }
    } else {
        for (int i = threadIdx.x; i < cols; i += blockDim.x) {
            float v = row[i];
            if (kt_argmax_beats(v, i, bv, bi)) { bv = v; bi = i; }
        }
    }
    kt_argmax_warp(&bv, &bi);
    if (lane == 0) { sv[warp] = bv; si[warp] = bi; }
    __syncthreads();
    if (warp == 0) {
        bv = lane < warps ? sv[lane] : -KT_INF;
        bi = lane < warps ? si[lane] : 0x7fffffff;
        kt_argmax_warp(&bv, &bi);
        if (lane == 0) out[blockIdx.x] = bi;
    }
}

// dst[r, 0..<width] = src[r, 0..<width] at their strides; grid-stride over rows · width.
extern "C" __global__ void copy_rows(const float* src, i64 srcStride, float* dst, i64 dstStride, int rows, int width) { KT_PDL_WAIT();
    i64 total = (i64)rows * width;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        i64 r = i / width, c = i % width;
        dst[r * dstStride + c] = src[r * srcStride + c];
    }
}

// g = silu(g) · u
extern "C" __global__ void gated_silu(float* g, const float* u, i64 count) { KT_PDL_WAIT();
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < count; i += (i64)gridDim.x * blockDim.x) {
        float x = g[i];
        g[i] = x / (1.0f + expf(-x)) * u[i];
    }
}

// g = gelu_tanh(g) · u
extern "C" __global__ void gated_gelu(float* g, const float* u, i64 count) { KT_PDL_WAIT();
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < count; i += (i64)gridDim.x * blockDim.x) {
        float x = g[i];
        float t = tanhf(0.7978845608f * (x + 0.044715f * x * x * x));
        g[i] = 0.5f * x * (1.0f + t) * u[i];
    }
}

// out[t] *= sigmoid(gate · x[t]); grid n, 256 threads.
extern "C" __global__ void __launch_bounds__(256) sigmoid_gate(float* out, const float* gate, const float* x, int width) { KT_PDL_WAIT();
    __shared__ float scratch[32];
    const float* xr = x + (i64)blockIdx.x * width;
    float s = 0.0f;
    for (int i = threadIdx.x; i < width; i += blockDim.x) s += gate[i] * xr[i];
    s = kt_block_sum(s, scratch);
    float g = 1.0f / (1.0f + expf(-s));
    float* o = out + (i64)blockIdx.x * width;
    for (int i = threadIdx.x; i < width; i += blockDim.x) o[i] *= g;
}

// Rotates head h of row t in place by the position positions[t] (table: [positions, dims] cos/sin pairs), after
// an RMS norm of the head's `headStride` elements by `norm` when given; grid (rows, heads), 128 threads.
// One head vector v (headStride floats) normed (when `norm`) and rotated by position pos, by the whole block;
// kt_rope_heads2 does two vectors of the same position at once (attention_decode's q and k: their loads in flight
// together), each with kt_rope_head's arithmetic (explicit roundings: the same bits whichever does it).
__device__ __forceinline__ void kt_rope_heads2(float* v0, const float* n0, float* v1, const float* n1, int headStride,
                                               const float* table, int dims, int neox, int pos, float eps, float* scratch) {
    bool norm0 = n0 != nullptr, norm1 = v1 != nullptr && n1 != nullptr;
    if (norm0 || norm1) {
        float s0 = 0.0f, s1 = 0.0f;
        for (int i = threadIdx.x; i < headStride; i += blockDim.x) {
            if (norm0) s0 = __fmaf_rn(v0[i], v0[i], s0);
            if (norm1) s1 = __fmaf_rn(v1[i], v1[i], s1);
        }
        if (norm0) s0 = kt_block_sum(s0, scratch);
        if (norm1) s1 = kt_block_sum(s1, scratch);
        float c0 = 1.0f / sqrtf(s0 / (float)headStride + eps), c1 = 1.0f / sqrtf(s1 / (float)headStride + eps);
        for (int i = threadIdx.x; i < headStride; i += blockDim.x) {
            if (norm0) v0[i] = __fmul_rn(__fmul_rn(v0[i], c0), n0[i]);
            if (norm1) v1[i] = __fmul_rn(__fmul_rn(v1[i], c1), n1[i]);
        }
        __syncthreads();
    }
    const float* cs = table + (i64)pos * dims;
    int half = dims / 2;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float c = cs[2 * i], s = cs[2 * i + 1];
        int ia = neox ? i : 2 * i, ib = neox ? i + half : 2 * i + 1;
        float a = v0[ia], b = v0[ib];
        v0[ia] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
        v0[ib] = __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c));
        if (v1) {
            a = v1[ia];
            b = v1[ib];
            v1[ia] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
            v1[ib] = __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c));
        }
    }
}
__device__ __forceinline__ void kt_rope_head(float* v, int headStride, const float* table, int dims, int neox, int pos,
                                             const float* norm, float eps, float* scratch) {
    kt_rope_heads2(v, norm, nullptr, nullptr, headStride, table, dims, neox, pos, eps, scratch);
}

extern "C" __global__ void __launch_bounds__(128) rope(float* x, i64 rowStride, int headStride, const float* table,
                                                       int dims, int neox, const int* positions, const float* norm,
                                                       float eps) { KT_PDL_WAIT();
    __shared__ float scratch[32];
    kt_rope_head(x + (i64)blockIdx.x * rowStride + (i64)blockIdx.y * headStride, headStride, table, dims, neox,
                 positions[blockIdx.x], norm, eps, scratch);
}

// rope of q's qHeads and k's kHeads head vectors (packed rows) and the store of k and v rows into the cache, in
// one launch with the bits of rope, rope, store_kv: grid (n, qHeads + kHeads + 1), 128 threads; block y < qHeads
// rotates a q head, the next kHeads rotate a k head and write it to its cache slot, the last copies the v row.
// The positions, the slots (host-written before the step) and the cos/sin table (constant) are read before
// KT_PDL_WAIT, so that only the head's own loads follow the previous kernel: with dims / 2 ≤ the block's threads,
// thread i's pair (c, s) of the table is in registers by then (kt_rope_head_pre: kt_rope_head's arithmetic).
__device__ __forceinline__ void kt_rope_head_pre(float* v, int headStride, int dims, int neox, float c, float s,
                                                 const float* norm, float eps, float* scratch) {
    if (norm) {
        float ss = 0.0f;
        for (int i = threadIdx.x; i < headStride; i += blockDim.x) ss = __fmaf_rn(v[i], v[i], ss);
        ss = kt_block_sum(ss, scratch);
        float cn = 1.0f / sqrtf(ss / (float)headStride + eps);
        for (int i = threadIdx.x; i < headStride; i += blockDim.x) v[i] = __fmul_rn(__fmul_rn(v[i], cn), norm[i]);
        __syncthreads();
    }
    int half = dims / 2, i = threadIdx.x;
    if (i < half) {
        int ia = neox ? i : 2 * i, ib = neox ? i + half : 2 * i + 1;
        float a = v[ia], b = v[ib];
        v[ia] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
        v[ib] = __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c));
    }
}
extern "C" __global__ void __launch_bounds__(128) rope_store_kv(float* q, int qHeads, const float* qNorm, float* k,
        int kHeads, const float* kNorm, const float* v, int vDim, int headDim, const float* table, int dims, int neox,
        const int* positions, float eps, const int* slots, float* kc, float* vc) {
    __shared__ float scratch[32];
    int t = blockIdx.x, y = blockIdx.y, pos = positions[t];
    bool pre = dims / 2 <= (int)blockDim.x;
    float c = 0.0f, sn = 0.0f;
    if (pre && (int)threadIdx.x < dims / 2 && y < qHeads + kHeads) {
        c = table[(i64)pos * dims + 2 * threadIdx.x];
        sn = table[(i64)pos * dims + 2 * threadIdx.x + 1];
    }
    i64 s = y >= qHeads ? slots[t] : 0;
    KT_PDL_WAIT();
    if (y < qHeads) {
        float* qh = q + ((i64)t * qHeads + y) * headDim;
        if (pre) kt_rope_head_pre(qh, headDim, dims, neox, c, sn, qNorm, eps, scratch);
        else kt_rope_head(qh, headDim, table, dims, neox, pos, qNorm, eps, scratch);
        return;
    }
    y -= qHeads;
    if (y < kHeads) {
        float* kh = k + ((i64)t * kHeads + y) * headDim;
        if (pre) kt_rope_head_pre(kh, headDim, dims, neox, c, sn, kNorm, eps, scratch);
        else kt_rope_head(kh, headDim, table, dims, neox, pos, kNorm, eps, scratch);
        __syncthreads();
        float* dst = kc + s * ((i64)kHeads * headDim) + (i64)y * headDim;
        for (int i = threadIdx.x; i < headDim; i += blockDim.x) dst[i] = kh[i];
        return;
    }
    for (int i = threadIdx.x; i < vDim; i += blockDim.x) vc[s * vDim + i] = v[(i64)t * vDim + i];
}

// Writes row t of k ([n, kDim]) and v ([n, vDim]) to slot slots[t] of the layer's pools; grid n, 128 threads.
extern "C" __global__ void __launch_bounds__(128) store_kv(const float* k, const float* v, int kDim, int vDim,
                                                           const int* slots, float* kc, float* vc) { KT_PDL_WAIT();
    int t = blockIdx.x;
    i64 s = slots[t];
    for (int i = threadIdx.x; i < kDim; i += blockDim.x) kc[s * kDim + i] = k[(i64)t * kDim + i];
    for (int i = threadIdx.x; i < vDim; i += blockDim.x) vc[s * vDim + i] = v[(i64)t * vDim + i];
}
