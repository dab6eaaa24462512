// Causal paged attention of a step's query rows (a mix of prefill chunks and decode tokens) over the paged K/V
// pool, through the scheduler's block tables. One block of 128 threads per (query token, head): the visible
// positions go in tiles of 128 (a key per thread for the scores), with a running max and sum (online softmax); for
// the values each warp takes a quarter of the tile's keys and each lane float4s of the value dimensions (up to 512),
// the warps' sums added at the end. GQA (query heads share a K/V head), sliding windows, tanh
// soft-capping, and MLA's value-in-key layout (V = the first headDimV floats of each K row). For long contexts
// the keys split (split-K, as flash-decoding): each block takes `splitKeys` of its token's keys and writes its
// running max, sum and unnormalized values, and attention_combine merges them. The split rule depends on the
// token's own position only, so a token has the same bits in any batch.

#define KT_ATT_THREADS 128
#define KT_ATT_MAX_HEAD 1024
#define KT_ATT_MAX_VDIMS 4

// One key's scaled (and soft-capped) score against a query in shared memory: the one arithmetic of both attention
// kernels (explicit roundings, so that no kernel contracts it differently).
__device__ __forceinline__ float kt_att_score(const float* qs, const float* kr, int headDim, bool vec4, float scale,
                                              float softcap) {
    float d = 0.0f;
    if (vec4) {
        const float4* k4 = (const float4*)kr;
        const float4* q4 = (const float4*)qs;
        for (int i = 0; i < headDim / 4; i++) {
            float4 a = q4[i], b = k4[i];
            float t = __fmaf_rn(a.w, b.w, __fmaf_rn(a.z, b.z, __fmaf_rn(a.y, b.y, __fmul_rn(a.x, b.x))));
            d = __fadd_rn(d, t);
        }
    } else {
        for (int i = 0; i < headDim; i++) d = __fmaf_rn(qs[i], kr[i], d);
    }
    float s = __fmul_rn(d, scale);
    if (softcap > 0.0f) s = __fmul_rn(softcap, tanhf(__fdiv_rn(s, softcap)));
    return s;
}
// The keys a block takes: its token's visible positions lo..pos (a sliding window's start), or with split-K
// (part != null) block z's share lo + z·splitKeys .. +splitKeys of them; false when that share is empty.
__device__ __forceinline__ bool kt_att_keys(int pos, int window, const float* part, int splitKeys, int* begin, int* end) {
    int lo = window > 0 ? max(0, pos - window + 1) : 0;
    *begin = lo;
    *end = pos;
    if (part) {
        *begin = lo + blockIdx.z * splitKeys;
        *end = min(pos, *begin + splitKeys - 1);
    }
    return *begin <= pos;
}
// Before KT_PDL_WAIT: the K and V rows of the block's first tile (keys begin .. begin + 127, through the block table,
// which the host writes) into L2, so that their reads from memory overlap the previous kernel's tail (KT_PREFETCH_L2;
// the row of the token's own position may be the previous kernel's output: only wasted bandwidth then).
__device__ __forceinline__ void kt_att_prefetch(const float* kh, const float* vh, int kStride, int vStride, int headDim,
                                                int headDimV, const int* table, int pageSize, int begin, int end) {
#if KT_ATT_PREFETCH
    int j = begin + threadIdx.x;
    if (j > end) return;
    i64 slot = (i64)table[j / pageSize] * pageSize + j % pageSize;
    if (((headDim | kStride) & 3) == 0 && ((size_t)kh & 15) == 0) KT_PREFETCH_L2(kh + slot * kStride, headDim * 4);
    if (((headDimV | vStride) & 3) == 0 && ((size_t)vh & 15) == 0) KT_PREFETCH_L2(vh + slot * vStride, headDimV * 4);
#endif
}

// A tile's values, split by keys across the block's 4 warps: warp w takes the tile's keys 32w .. 32w + 31 (in key
// order) and lane l value dimensions 4c .. 4c + 3 of chunks c = l + 32k (a float4 of a V row a lane: a warp reads
// 512 contiguous bytes a key, and a thread has 32 keys' loads to keep in flight instead of 128): a = a·corr +
// Σ p[jj]·v[slot jj]. kt_att_gather sums the warps' accumulators in warp order. (vec4: V rows 16-byte aligned;
// else the same arithmetic from scalar loads.)
__device__ __forceinline__ float4 kt_att_v4(const float* row, int c, int headDimV, bool vec4) {
    if (vec4) return *(const float4*)(row + c);
    return make_float4(row[c], c + 1 < headDimV ? row[c + 1] : 0.0f, c + 2 < headDimV ? row[c + 2] : 0.0f,
                       c + 3 < headDimV ? row[c + 3] : 0.0f);
}
__device__ __forceinline__ void kt_att_fma4(float4* a, float p, float4 v) {
    a->x = __fmaf_rn(p, v.x, a->x);
    a->y = __fmaf_rn(p, v.y, a->y);
    a->z = __fmaf_rn(p, v.z, a->z);
    a->w = __fmaf_rn(p, v.w, a->w);
}
__device__ __forceinline__ void kt_att_scale4(float4* a, float corr) {
    a->x = __fmul_rn(a->x, corr);
    a->y = __fmul_rn(a->y, corr);
    a->z = __fmul_rn(a->z, corr);
    a->w = __fmul_rn(a->w, corr);
}
__device__ __forceinline__ void kt_att_values(float4* a, float corr, const float* p, const int* slots, int count,
                                              const float* vh, int vStride, int headDimV, bool vec4) {
    int lane = threadIdx.x & 31, j0 = (threadIdx.x >> 5) * 32, j1 = min(count, j0 + 32);
    for (int k = 0; k < KT_ATT_MAX_VDIMS; k++) kt_att_scale4(&a[k], corr);
    if (headDimV <= 128) {
        int c = 4 * lane;
        if (c >= headDimV) return;
#pragma unroll 8
        for (int jj = j0; jj < j1; jj++) kt_att_fma4(&a[0], p[jj], kt_att_v4(vh + (i64)slots[jj] * vStride, c, headDimV, vec4));
        return;
    }
#pragma unroll 4
    for (int jj = j0; jj < j1; jj++) {
        const float* row = vh + (i64)slots[jj] * vStride;
        float pj = p[jj];
        for (int k = 0; k < KT_ATT_MAX_VDIMS; k++) {
            int c = 4 * (lane + 32 * k);
            if (c < headDimV) kt_att_fma4(&a[k], pj, kt_att_v4(row, c, headDimV, vec4));
        }
    }
}
// The 4 warps' accumulators of one head summed in warp order, ((w0 + w1) + w2) + w3, into the value dimensions
// tid + 128k (out[k]); red: 4 × 512 floats of shared memory. Ends with a barrier (red is free again).
__device__ __forceinline__ void kt_att_gather(const float4* a, int headDimV, float* red, float* out) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int k = 0; k < KT_ATT_MAX_VDIMS; k++) {
        int c = 4 * (lane + 32 * k);
        if (c < headDimV) *(float4*)(red + warp * 512 + c) = a[k];
    }
    __syncthreads();
    for (int k = 0; k < KT_ATT_MAX_VDIMS; k++) {
        int d = threadIdx.x + k * KT_ATT_THREADS;
        out[k] = d < headDimV ? __fadd_rn(__fadd_rn(__fadd_rn(red[d], red[512 + d]), red[1024 + d]), red[1536 + d]) : 0.0f;
    }
    __syncthreads();
}
// Whether V rows can be read as float4s: every row and head starts 16-byte aligned.
__device__ __forceinline__ bool kt_att_vec4v(const float* vh, int vStride, int headDimV) {
    return (headDimV & 3) == 0 && (vStride & 3) == 0 && ((size_t)vh & 15) == 0;
}

// One head's keys begin..end (of a token's sequence, through its block table) against the query qs (shared memory):
// the running max m, sum l and unnormalized values acc (value dimension tid + k·128) in key order: tiles of 128 keys,
// a key per thread (kt_att_score), the block's max and sum, then kt_att_values and, at the end, kt_att_gather. The
// arithmetic of the per-head kernels (attention, attention_decode) and, per head, of attention_gqa<G>.
__device__ __forceinline__ void kt_att_head(const float* qs, const float* kh, const float* vh, int kStride, int vStride,
        int headDim, int headDimV, float scale, float softcap, const int* table, int pageSize, int begin, int end,
        bool vec4, float* p, int* slots, float* scratch, float* red, float* m, float* l, float* acc) {
    int tid = threadIdx.x;
    float4 a[KT_ATT_MAX_VDIMS];
    for (int i = 0; i < KT_ATT_MAX_VDIMS; i++) a[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    bool vec4v = kt_att_vec4v(vh, vStride, headDimV);
    *m = -KT_INF;
    *l = 0.0f;
    __syncthreads();
    for (int start = begin; start <= end; start += KT_ATT_THREADS) {
        int j = start + tid;
        float s = -KT_INF;
        int slot = 0;
        if (j <= end) {
            slot = table[j / pageSize] * pageSize + j % pageSize;
            s = kt_att_score(qs, kh + (i64)slot * kStride, headDim, vec4, scale, softcap);
        }
        float tileMax = kt_block_max(s, scratch);
        float mNew = fmaxf(*m, tileMax);
        float e = j <= end ? expf(s - mNew) : 0.0f;
        p[tid] = e;
        slots[tid] = slot;
        float tileSum = kt_block_sum(e, scratch);  // (its barriers also publish p and slots)
        float corr = expf(*m - mNew);
        *l = __fmaf_rn(*l, corr, tileSum);
        kt_att_values(a, corr, p, slots, min(KT_ATT_THREADS, end - start + 1), vh, vStride, headDimV, vec4v);
        *m = mNew;
        __syncthreads();
    }
    kt_att_gather(a, headDimV, red, acc);
}
// A split's running max, sum and unnormalized values into its slot of the partials ([token][head][split][2 + dV]).
__device__ __forceinline__ void kt_att_write_part(float* part, int t, int h, int nHead, int headDimV, float m, float l,
                                                  const float* acc) {
    float* pp = part + (((i64)t * nHead + h) * gridDim.z + blockIdx.z) * (headDimV + 2);
    if (threadIdx.x == 0) { pp[0] = m; pp[1] = l; }
    for (int k = 0; k < KT_ATT_MAX_VDIMS; k++) {
        int dIdx = threadIdx.x + k * KT_ATT_THREADS;
        if (dIdx < headDimV) pp[2 + dIdx] = acc[k];
    }
}

extern "C" __global__ void __launch_bounds__(KT_ATT_THREADS) attention(
        const float* q, float* out, const float* kc, const float* vc, int kStride, int vStride, int vHeadStride,
        int nHead, int nKVHead, int headDim, int headDimV, float scale, int window, float softcap,
        const int* positions, const int* seqOfToken, const int* blockTables, int blockTableStride, int pageSize,
        float* part, int splitKeys) { /* KT_PDL_WAIT after the prefetch */
    __shared__ __align__(16) float qs[KT_ATT_MAX_HEAD];
    __shared__ float p[KT_ATT_THREADS];
    __shared__ int slots[KT_ATT_THREADS];
    __shared__ float scratch[32];
    __shared__ __align__(16) float red[4 * 512];
    int t = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
    int kvh = h / (nHead / nKVHead);
    int pos = positions[t], seq = seqOfToken[t], begin, end;
    if (!kt_att_keys(pos, window, part, splitKeys, &begin, &end)) return;
    kt_att_prefetch(kc + (i64)kvh * headDim, vc + (i64)kvh * vHeadStride, kStride, vStride, headDim, headDimV,
                    blockTables + (i64)seq * blockTableStride, pageSize, begin, end);
    KT_PDL_WAIT();
    const float* qh = q + ((i64)t * nHead + h) * headDim;
    for (int i = tid; i < headDim; i += KT_ATT_THREADS) qs[i] = qh[i];
    // K rows as float4s when every row and head starts 16-byte aligned.
    bool vec4 = (headDim & 3) == 0 && (kStride & 3) == 0 && ((size_t)kc & 15) == 0;
    float m, l, acc[KT_ATT_MAX_VDIMS];
    kt_att_head(qs, kc + (i64)kvh * headDim, vc + (i64)kvh * vHeadStride, kStride, vStride, headDim, headDimV, scale,
                softcap, blockTables + (i64)seq * blockTableStride, pageSize, begin, end, vec4, p, slots, scratch, red, &m, &l, acc);
    if (part) return kt_att_write_part(part, t, h, nHead, headDimV, m, l, acc);
    float inv = 1.0f / l;
    float* o = out + ((i64)t * nHead + h) * headDimV;
    for (int k = 0; k < KT_ATT_MAX_VDIMS; k++) {
        int dIdx = tid + k * KT_ATT_THREADS;
        if (dIdx < headDimV) o[dIdx] = acc[k] * inv;
    }
}

// The same for G query heads of one K/V head (GQA) in one block: each key row and value is read once for the G
// heads (the per-head kernel reads them G times: at prefill that traffic sets its time), and each head's arithmetic
// is the per-head kernel's (kt_att_score, the same block reductions, kt_att_values, in the same order): the same
// bits. Block y takes query heads y·G .. y·G + G − 1, of K/V head y·G / groupSize (G divides groupSize, the query
// heads per K/V head). Without splits and with `q8` (G · headDimV a multiple of 256), the block also writes its
// G · headDimV outputs' Q8_K form, as quantize_q8_K would (one kernel instead of attention + attention_combine_q8K,
// or attention + quantize_q8_K, before the output projection's integer-dot matmul). Grid (n, nHead / G, splits),
// 128 threads; head dims up to 256, value dims up to 128 (a float4 a lane).
template <int G>
__device__ __forceinline__ void kt_attention_gqa(
        const float* q, float* out, const float* kc, const float* vc, int kStride, int vStride, int vHeadStride,
        int nHead, int headDim, int headDimV, float scale, int window, float softcap, const int* positions,
        const int* seqOfToken, const int* blockTables, int blockTableStride, int pageSize, float* part, int splitKeys,
        int groupSize, i8* q8, float* q8d, int* q8s) {
    __shared__ __align__(16) float qs[G][256];
    __shared__ float p[G][KT_ATT_THREADS];
    __shared__ int slots[KT_ATT_THREADS];
    __shared__ float scratch[32];
    __shared__ __align__(16) float red[4 * 512];
    __shared__ __align__(16) float so[G * 128];  // the outputs for their Q8_K form
    int t = blockIdx.x, tid = threadIdx.x, h0 = blockIdx.y * G, kvh = h0 / groupSize;
    int pos = positions[t], seq = seqOfToken[t], begin, end;
    if (!kt_att_keys(pos, window, part, splitKeys, &begin, &end)) return;
    const int* table = blockTables + (i64)seq * blockTableStride;
    const float* kh = kc + (i64)kvh * headDim;
    const float* vh = vc + (i64)kvh * vHeadStride;
    kt_att_prefetch(kh, vh, kStride, vStride, headDim, headDimV, table, pageSize, begin, end);
    KT_PDL_WAIT();
    for (int h = 0; h < G; h++) {
        const float* qh = q + ((i64)t * nHead + h0 + h) * headDim;
        for (int i = tid; i < headDim; i += KT_ATT_THREADS) qs[h][i] = qh[i];
    }
    float4 a[G];
    float m[G], l[G];
    for (int h = 0; h < G; h++) { a[h] = make_float4(0.0f, 0.0f, 0.0f, 0.0f); m[h] = -KT_INF; l[h] = 0.0f; }
    bool vec4 = (headDim & 3) == 0 && (kStride & 3) == 0 && ((size_t)kc & 15) == 0;
    bool vec4v = kt_att_vec4v(vh, vStride, headDimV);
    int lane = tid & 31, j0 = (tid >> 5) * 32, c = 4 * lane;
    __syncthreads();
    for (int start = begin; start <= end; start += KT_ATT_THREADS) {
        int j = start + tid, slot = 0;
        float s[G];
        for (int h = 0; h < G; h++) s[h] = -KT_INF;
        if (j <= end) {
            slot = table[j / pageSize] * pageSize + j % pageSize;
            const float* kr = kh + (i64)slot * kStride;
            for (int h = 0; h < G; h++) s[h] = kt_att_score(qs[h], kr, headDim, vec4, scale, softcap);
        }
        slots[tid] = slot;
#pragma unroll
        for (int h = 0; h < G; h++) {
            float tileMax = kt_block_max(s[h], scratch);
            float mNew = fmaxf(m[h], tileMax);
            float e = j <= end ? expf(s[h] - mNew) : 0.0f;
            p[h][tid] = e;
            float tileSum = kt_block_sum(e, scratch);  // (its barriers also publish p and slots)
            float corr = expf(m[h] - mNew);
            l[h] = __fmaf_rn(l[h], corr, tileSum);
            m[h] = mNew;
            kt_att_scale4(&a[h], corr);
        }
        // kt_att_values for the G heads: each V row read once.
        int j1 = min(min(KT_ATT_THREADS, end - start + 1), j0 + 32);
        if (c < headDimV) {
#pragma unroll 4
            for (int jj = j0; jj < j1; jj++) {
                float4 v = kt_att_v4(vh + (i64)slots[jj] * vStride, c, headDimV, vec4v);
#pragma unroll
                for (int h = 0; h < G; h++) kt_att_fma4(&a[h], p[h][jj], v);
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int h = 0; h < G; h++) {
        float acc[KT_ATT_MAX_VDIMS];
        float4 ah[KT_ATT_MAX_VDIMS] = {a[h], make_float4(0.0f, 0.0f, 0.0f, 0.0f), make_float4(0.0f, 0.0f, 0.0f, 0.0f),
                                       make_float4(0.0f, 0.0f, 0.0f, 0.0f)};
        kt_att_gather(ah, headDimV, red, acc);
        if (part) {
            float* pp = part + (((i64)t * nHead + h0 + h) * gridDim.z + blockIdx.z) * (headDimV + 2);
            if (tid == 0) { pp[0] = m[h]; pp[1] = l[h]; }
            if (tid < headDimV) pp[2 + tid] = acc[0];
        } else if (tid < headDimV) {
            float o = acc[0] * (1.0f / l[h]);
            out[((i64)t * nHead + h0 + h) * headDimV + tid] = o;
            if (q8) so[h * headDimV + tid] = o;
        }
    }
    if (part || !q8) return;
    __syncthreads();
    // The block's G · headDimV outputs as Q8_K blocks of 256, one a warp.
    int width = nHead * headDimV, e0 = h0 * headDimV;
    for (int b = tid >> 5; b * 256 < G * headDimV; b += KT_ATT_THREADS / 32)
        kt_quantize_q8K_block(so + b * 256, q8 + (i64)t * width + e0 + b * 256, q8d + (i64)t * (width / 256) + e0 / 256 + b,
                              q8s + (i64)t * (width / 16) + e0 / 16 + b * 16);
}
#define KT_ATT_GQA(g) \
extern "C" __global__ void __launch_bounds__(KT_ATT_THREADS) attention_gqa##g( \
        const float* q, float* out, const float* kc, const float* vc, int kStride, int vStride, int vHeadStride, \
        int nHead, int headDim, int headDimV, float scale, int window, float softcap, const int* positions, \
        const int* seqOfToken, const int* blockTables, int blockTableStride, int pageSize, float* part, int splitKeys, \
        int groupSize, i8* q8, float* q8d, int* q8s) { \
    /* KT_PDL_WAIT in kt_attention_gqa, after its prefetch */ \
    kt_attention_gqa<g>(q, out, kc, vc, kStride, vStride, vHeadStride, nHead, headDim, headDimV, scale, window, softcap, \
                        positions, seqOfToken, blockTables, blockTableStride, pageSize, part, splitKeys, groupSize, q8, \
                        q8d, q8s); \
}
KT_ATT_GQA(2)
KT_ATT_GQA(4)
KT_ATT_GQA(8)

// The splits of a split-K attention combined in split order: M = max m_s, L = Σ l_s·e^(m_s − M), o = Σ acc_s·e^(m_s − M) / L
// (one split gives the unsplit kernel's bits). kt_att_combine_scale gives M and 1 / L of the token's splits (pp:
// its head's first split), kt_att_combine_value value dimension d; every thread computes them the same way. (Loads
// through the L2: attention_decode's last block reads partials that other blocks wrote during the same launch.)
__device__ __forceinline__ int kt_att_combine_count(int pos, int window, int splitKeys) {
    int lo = window > 0 ? max(0, pos - window + 1) : 0;
    return (pos - lo) / splitKeys + 1;
}
__device__ __forceinline__ void kt_att_combine_scale(const float* pp, int stride, int count, float* M, float* inv) {
    float m = -KT_INF;
    for (int s = 0; s < count; s++) m = fmaxf(m, __ldcg(pp + s * stride));
    float L = 0.0f;
    for (int s = 0; s < count; s++) L += __ldcg(pp + s * stride + 1) * expf(__ldcg(pp + s * stride) - m);
    *M = m;
    *inv = 1.0f / L;
}
__device__ __forceinline__ float kt_att_combine_value(const float* pp, int stride, int count, float M, float inv, int d) {
    float a = 0.0f;
    for (int s = 0; s < count; s++) a += __ldcg(pp + s * stride + 2 + d) * expf(__ldcg(pp + s * stride) - M);
    return a * inv;
}

// Grid (n, nHead), 128 threads; `splits` is the grid's z of the attention launch.
extern "C" __global__ void __launch_bounds__(KT_ATT_THREADS) attention_combine(const float* part, float* out, int nHead,
        int headDimV, int splits, int splitKeys, int window, const int* positions) { KT_PDL_WAIT();
    int t = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
    int count = kt_att_combine_count(positions[t], window, splitKeys), stride = headDimV + 2;
    const float* pp = part + ((i64)t * nHead + h) * splits * stride;
    float M, inv;
    kt_att_combine_scale(pp, stride, count, &M, &inv);
    float* o = out + ((i64)t * nHead + h) * headDimV;
    for (int d = tid; d < headDimV; d += KT_ATT_THREADS) o[d] = kt_att_combine_value(pp, stride, count, M, inv, d);
}

// attention_combine of 256 output values at a time (256 / headDimV heads; headDimV divides 256 and the row width
// nHead · headDimV is a multiple of it), also writing their Q8_K form as quantize_q8_K would (the output
// projection's integer-dot matmul then skips its own launch). Grid (n, nHead · headDimV / 256), 256 threads.
extern "C" __global__ void __launch_bounds__(256) attention_combine_q8K(const float* part, float* out, int nHead,
        int headDimV, int splits, int splitKeys, int window, const int* positions, i8* q, float* qd, int* qsums) { KT_PDL_WAIT();
    __shared__ __align__(16) float so[256];
    int t = blockIdx.x, e = blockIdx.y * 256 + threadIdx.x, h = e / headDimV, width = nHead * headDimV;
    int count = kt_att_combine_count(positions[t], window, splitKeys), stride = headDimV + 2;
    const float* pp = part + ((i64)t * nHead + h) * splits * stride;
    float M, inv;
    kt_att_combine_scale(pp, stride, count, &M, &inv);
    float v = kt_att_combine_value(pp, stride, count, M, inv, e % headDimV);
    out[(i64)t * width + e] = v;
    so[threadIdx.x] = v;
    __syncthreads();
    if (threadIdx.x < 32)
        kt_quantize_q8K_block(so, q + (i64)t * width + blockIdx.y * 256, qd + (i64)t * (width / 256) + blockIdx.y,
                              qsums + (i64)t * (width / 16) + blockIdx.y * 16);
}

// A decode step's attention in one launch, where every token is the only one of its sequence in the step: the work of
// rope_store_kv, attention (split-K) and attention_combine / _q8K, with their arithmetic. Block (t, h, z) norms and
// rotates its q head in shared memory (kt_rope_heads2, kt_rope_head's arithmetic, which rope_store_kv applies in
// place); the block whose key share holds the token's own position also rotates its K/V head's k (loaded with q) and writes the k and v rows to the token's cache slot
// (every query head of the group writes the same values) before its keys; it then writes its share's partials and
// counts them in `counters` (per token and group of `groupHeads` heads, zero before the launch): the group's last
// block combines the shares in split order, writes the output (and, with `q8`, the Q8_K form of its 256 values:
// groupHeads · headDimV = 256) and sets the counter back to zero. With `part` null (the reserved context fits one
// share) each block writes its head's output as the attention kernel does, no partials, no counters. Grid (n, nHead,
// splits), 128 threads.
extern "C" __global__ void __launch_bounds__(KT_ATT_THREADS) attention_decode(
        const float* q, const float* qNorm, const float* k, const float* kNorm, const float* v, float* out, float* kc,
        float* vc, int nHead, int nKVHead, int headDim, int headDimV, float scale, int window, float softcap,
        const float* ropeTable, int ropeDims, int neox, float eps, const int* positions, const int* slotMapping,
        const int* seqOfToken, const int* blockTables, int blockTableStride, int pageSize, float* part, int splitKeys,
        int* counters, int groupHeads, i8* q8, float* q8d, int* q8sums) { /* KT_PDL_WAIT after the prefetch */
    __shared__ __align__(16) float qs[KT_ATT_MAX_HEAD];
    __shared__ __align__(16) float ks[KT_ATT_MAX_HEAD];
    __shared__ float p[KT_ATT_THREADS];
    __shared__ int slots[KT_ATT_THREADS];
    __shared__ float scratch[32];
    __shared__ __align__(16) float red[4 * 512];
    __shared__ int last;
    int t = blockIdx.x, h = blockIdx.y, tid = threadIdx.x, kvh = h / (nHead / nKVHead);
    int kStride = nKVHead * headDim, vStride = nKVHead * headDimV;
    int pos = positions[t], seq = seqOfToken[t], begin, end;
    if (!kt_att_keys(pos, window, part, splitKeys, &begin, &end)) return;
    kt_att_prefetch(kc + (i64)kvh * headDim, vc + (i64)kvh * headDimV, kStride, vStride, headDim, headDimV,
                    blockTables + (i64)seq * blockTableStride, pageSize, begin, end);
    KT_PDL_WAIT();
    // q, and in the block whose keys end at the token's own position k, loaded together, normed and rotated together.
    bool own = end == pos;
    const float* qh = q + ((i64)t * nHead + h) * headDim;
    const float* kh = k + ((i64)t * nKVHead + kvh) * headDim;
    for (int i = tid; i < headDim; i += KT_ATT_THREADS) {
        qs[i] = qh[i];
        if (own) ks[i] = kh[i];
    }
    __syncthreads();
    kt_rope_heads2(qs, qNorm, own ? ks : nullptr, kNorm, headDim, ropeTable, ropeDims, neox, pos, eps, scratch);
    if (own) {
        __syncthreads();
        i64 s = slotMapping[t];
        for (int i = tid; i < headDim; i += KT_ATT_THREADS) kc[s * kStride + (i64)kvh * headDim + i] = ks[i];
        const float* vh = v + (i64)t * vStride + (i64)kvh * headDimV;
        for (int i = tid; i < headDimV; i += KT_ATT_THREADS) vc[s * vStride + (i64)kvh * headDimV + i] = vh[i];
        // (kt_att_head's first barrier makes these rows visible to the block's threads before they read them)
    }
    bool vec4 = (headDim & 3) == 0 && (kStride & 3) == 0 && ((size_t)kc & 15) == 0;
    float m, l, acc[KT_ATT_MAX_VDIMS];
    kt_att_head(qs, kc + (i64)kvh * headDim, vc + (i64)kvh * headDimV, kStride, vStride, headDim, headDimV, scale,
                softcap, blockTables + (i64)seq * blockTableStride, pageSize, begin, end, vec4, p, slots, scratch, red, &m, &l, acc);
    if (!part) {
        // One share (the reserved context fits one split): the plain kernel's output, nothing to combine.
        float inv = 1.0f / l;
        float* o = out + ((i64)t * nHead + h) * headDimV;
        for (int kk = 0; kk < KT_ATT_MAX_VDIMS; kk++) {
            int dIdx = tid + kk * KT_ATT_THREADS;
            if (dIdx < headDimV) o[dIdx] = acc[kk] * inv;
        }
        return;
    }
    kt_att_write_part(part, t, h, nHead, headDimV, m, l, acc);
    // Publish this share, count it; the group's last share combines.
    __threadfence();
    __syncthreads();
    // (at most the grid's splits: a position past the reserved context must not leave a counter short of its count)
    int groups = nHead / groupHeads, group = h / groupHeads;
    int count = min(kt_att_combine_count(pos, window, splitKeys), (int)gridDim.z);
    int* counter = counters + (i64)t * groups + group;
    if (tid == 0) last = atomicAdd(counter, 1) == count * groupHeads - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    int stride = headDimV + 2, width = nHead * headDimV;
    float M, inv;
    if (q8) {
        // The 256 values of attention_combine_q8K's block (qs, no longer needed, holds them for the quantization).
        for (int e = tid; e < 256; e += KT_ATT_THREADS) {
            int hh = group * groupHeads + e / headDimV;
            const float* pp = part + ((i64)t * nHead + hh) * gridDim.z * stride;
            kt_att_combine_scale(pp, stride, count, &M, &inv);
            float val = kt_att_combine_value(pp, stride, count, M, inv, e % headDimV);
            out[(i64)t * width + group * 256 + e] = val;
            qs[e] = val;
        }
        __syncthreads();
        if (tid < 32)
            kt_quantize_q8K_block(qs, q8 + (i64)t * width + group * 256, q8d + (i64)t * (width / 256) + group,
                                  q8sums + (i64)t * (width / 16) + group * 16);
    } else {
        for (int hh = group * groupHeads; hh < (group + 1) * groupHeads; hh++) {
            const float* pp = part + ((i64)t * nHead + hh) * gridDim.z * stride;
            kt_att_combine_scale(pp, stride, count, &M, &inv);
            float* o = out + ((i64)t * nHead + hh) * headDimV;
            for (int d = tid; d < headDimV; d += KT_ATT_THREADS) o[d] = kt_att_combine_value(pp, stride, count, M, inv, d);
        }
    }
    if (tid == 0) *counter = 0;
}

// Prefill attention on the f16 tensor cores (flash attention: mma.sync m16n8k16, f32 accumulation), for steps of many
// tokens (the backend's flash threshold): a block takes 64 query rows, T = 64 / G consecutive tokens × the G query
// heads of one K/V head (row r: token r / G, head r % G), and walks the keys of their sequence in tiles of 64, read
// once from the paged f32 cache as f16 (K row-major, V transposed) for all 64 rows; each warp holds 16 rows' scores
// and outputs in registers (online softmax). The tokens of a block may belong to several sequences: each run of one
// sequence's tokens walks that sequence's keys, the other rows masked. Head dims multiples of 16 up to 128. Q is
// scaled before its f16 rounding; K, V and the probabilities are rounded to f16: not the bits of the f32 kernels.
#define KT_FA_ROWS 64
#define KT_FA_KEYS 64
#define KT_FA_QS (128 + 8)
#define KT_FA_VS (KT_FA_KEYS + 8)
__device__ __forceinline__ u32 kt_pack_half2(float a, float b) {
    return (u32)kt_float_to_half(a) | ((u32)kt_float_to_half(b) << 16);
}
extern "C" __global__ void __launch_bounds__(128) attention_flash(
        const float* q, float* out, const float* kc, const float* vc, int kStride, int vStride, int vHeadStride,
        int nHead, int nKVHead, int headDim, int headDimV, float scale, int window, float softcap,
        const int* positions, const int* seqOfToken, const int* blockTables, int blockTableStride, int pageSize, int n) { KT_PDL_WAIT();
    KT_DYNAMIC_SHARED(u16, sm);
    u16* Qs = sm;                          // [64 rows][KT_FA_QS]
    u16* Ks = Qs + KT_FA_ROWS * KT_FA_QS;  // [64 keys][KT_FA_QS]
    u16* Vt = Ks + KT_FA_KEYS * KT_FA_QS;  // [128 value dims][KT_FA_VS]
    __shared__ int slotOf[KT_FA_KEYS];
    int G = nHead / nKVHead, T = KT_FA_ROWS / G;
    int kvh = blockIdx.y, t0 = blockIdx.x * T;
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, gq = lane >> 2, tq = lane & 3;
    // Q tile, scaled, as f16 (rows past the step's tokens zero).
    int q4 = headDim / 4;
    for (int i = tid; i < KT_FA_ROWS * q4; i += blockDim.x) {
        int r = i / q4, c = (i - r * q4) * 4, tok = t0 + r / G;
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (tok < n) v = *(const float4*)(q + ((i64)tok * nHead + kvh * G + r % G) * headDim + c);
        *(uint2*)(Qs + r * KT_FA_QS + c) = make_uint2(kt_pack_half2(v.x * scale, v.y * scale), kt_pack_half2(v.z * scale, v.w * scale));
    }
    // This thread's two rows (fragment rows gq and gq + 8 of its warp's 16).
    int rA = 16 * warp + gq, rB = rA + 8;
    int tokA = t0 + rA / G, tokB = t0 + rB / G;
    int posA = tokA < n ? positions[tokA] : -1, posB = tokB < n ? positions[tokB] : -1;
    int loA = window > 0 ? max(0, posA - window + 1) : 0, loB = window > 0 ? max(0, posB - window + 1) : 0;
    int nc = headDim / 16, nd = headDimV / 8;
    float o[16][4];
    for (int d = 0; d < 16; d++) for (int e = 0; e < 4; e++) o[d][e] = 0.0f;
    float mA = -KT_INF, mB = -KT_INF, lA = 0.0f, lB = 0.0f;
    __syncthreads();
    u32 qa[8][4];
    for (int c = 0; c < 8; c++) {
        if (c < nc) {
            const u16* base = Qs + (16 * warp + gq) * KT_FA_QS + 16 * c + 2 * tq;
            qa[c][0] = *(const u32*)base;
            qa[c][1] = *(const u32*)(base + 8 * KT_FA_QS);
            qa[c][2] = *(const u32*)(base + 8);
            qa[c][3] = *(const u32*)(base + 8 * KT_FA_QS + 8);
        }
    }
    // Runs of one sequence among the block's tokens.
    int i0 = 0;
    while (i0 < T && t0 + i0 < n) {
        int seq = seqOfToken[t0 + i0], i1 = i0, hi = -1, lo = 0x7fffffff;
        while (i1 < T && t0 + i1 < n && seqOfToken[t0 + i1] == seq) {
            int p = positions[t0 + i1];
            hi = max(hi, p);
            lo = min(lo, window > 0 ? max(0, p - window + 1) : 0);
            i1++;
        }
        bool inA = rA / G >= i0 && rA / G < i1, inB = rB / G >= i0 && rB / G < i1;
        const int* table = blockTables + (i64)seq * blockTableStride;
        // Tiles at multiples of 64 keys: a row's keys fall in the same tiles whatever rows share its block (a tile
        // a row sees none of changes nothing for it), so its result does not depend on its neighbours.
        for (int kb = lo & ~(KT_FA_KEYS - 1); kb <= hi; kb += KT_FA_KEYS) {
            __syncthreads();  // the previous tile's readers are done
            if (tid < KT_FA_KEYS) {
                int j = kb + tid;
                slotOf[tid] = j <= hi && j >= lo ? table[j / pageSize] * pageSize + j % pageSize : -1;
            }
            __syncthreads();
            for (int i = tid; i < KT_FA_KEYS * q4; i += blockDim.x) {
                int kk = i / q4, c = (i - kk * q4) * 4, slot = slotOf[kk];
                float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (slot >= 0) v = *(const float4*)(kc + (i64)slot * kStride + (i64)kvh * headDim + c);
                *(uint2*)(Ks + kk * KT_FA_QS + c) = make_uint2(kt_pack_half2(v.x, v.y), kt_pack_half2(v.z, v.w));
            }
            int v4 = headDimV / 4;
            for (int i = tid; i < KT_FA_KEYS * v4; i += blockDim.x) {
                int kk = i % KT_FA_KEYS, c = (i / KT_FA_KEYS) * 4, slot = slotOf[kk];
                float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (slot >= 0) v = *(const float4*)(vc + (i64)slot * vStride + (i64)kvh * vHeadStride + c);
                Vt[(c + 0) * KT_FA_VS + kk] = kt_float_to_half(v.x);
                Vt[(c + 1) * KT_FA_VS + kk] = kt_float_to_half(v.y);
                Vt[(c + 2) * KT_FA_VS + kk] = kt_float_to_half(v.z);
                Vt[(c + 3) * KT_FA_VS + kk] = kt_float_to_half(v.w);
            }
            __syncthreads();
            // Scores of 8 key tiles of 8.
            float s[8][4];
            for (int jt = 0; jt < 8; jt++) {
                for (int e = 0; e < 4; e++) s[jt][e] = 0.0f;
                for (int c = 0; c < 8; c++) {
                    if (c < nc) {
                        const u16* kb16 = Ks + (8 * jt + gq) * KT_FA_QS + 16 * c + 2 * tq;
                        u32 b[2] = {*(const u32*)kb16, *(const u32*)(kb16 + 8)};
                        KT_MMA_F16(s[jt], qa[c], b);
                    }
                }
            }
            float tmA = -KT_INF, tmB = -KT_INF;
            for (int jt = 0; jt < 8; jt++) {
                for (int e = 0; e < 4; e++) {
                    int j = kb + 8 * jt + 2 * tq + (e & 1);
                    float v = s[jt][e];
                    if (softcap > 0.0f) v = softcap * tanhf(v / softcap);
                    bool ok = e < 2 ? (inA && j <= posA && j >= loA) : (inB && j <= posB && j >= loB);
                    v = ok ? v : -KT_INF;
                    s[jt][e] = v;
                    if (e < 2) tmA = fmaxf(tmA, v); else tmB = fmaxf(tmB, v);
                }
            }
            for (int m = 1; m < 4; m <<= 1) {
                tmA = fmaxf(tmA, __shfl_xor_sync(0xffffffffu, tmA, m));
                tmB = fmaxf(tmB, __shfl_xor_sync(0xffffffffu, tmB, m));
            }
            float nA = fmaxf(mA, tmA), nB = fmaxf(mB, tmB);
            float cA = nA == -KT_INF ? 1.0f : expf(mA - nA), cB = nB == -KT_INF ? 1.0f : expf(mB - nB);
            float sumA = 0.0f, sumB = 0.0f;
            for (int jt = 0; jt < 8; jt++) {
                for (int e = 0; e < 4; e++) {
                    float mm = e < 2 ? nA : nB;
                    float p = s[jt][e] == -KT_INF ? 0.0f : expf(s[jt][e] - mm);
                    s[jt][e] = p;
                    if (e < 2) sumA += p; else sumB += p;
                }
            }
            for (int m = 1; m < 4; m <<= 1) {
                sumA += __shfl_xor_sync(0xffffffffu, sumA, m);
                sumB += __shfl_xor_sync(0xffffffffu, sumB, m);
            }
            lA = lA * cA + sumA;
            lB = lB * cB + sumB;
            mA = nA;
            mB = nB;
            for (int d = 0; d < 16; d++) { o[d][0] *= cA; o[d][1] *= cA; o[d][2] *= cB; o[d][3] *= cB; }
            // O += P · V: P's accumulator fragments are the A fragments of k-chunks of 16 keys.
            for (int kc2 = 0; kc2 < 4; kc2++) {
                u32 a[4] = {kt_pack_half2(s[2 * kc2][0], s[2 * kc2][1]), kt_pack_half2(s[2 * kc2][2], s[2 * kc2][3]),
                            kt_pack_half2(s[2 * kc2 + 1][0], s[2 * kc2 + 1][1]), kt_pack_half2(s[2 * kc2 + 1][2], s[2 * kc2 + 1][3])};
                for (int d = 0; d < 16; d++) {
                    if (d < nd) {
                        const u16* vb = Vt + (8 * d + gq) * KT_FA_VS + 16 * kc2 + 2 * tq;
                        u32 b[2] = {*(const u32*)vb, *(const u32*)(vb + 8)};
                        KT_MMA_F16(o[d], a, b);
                    }
                }
            }
        }
        i0 = i1;
    }
    for (int d = 0; d < 16; d++) {
        if (d >= nd) break;
        int col = 8 * d + 2 * tq;
        if (tokA < n) {
            float* oa = out + ((i64)tokA * nHead + kvh * G + rA % G) * headDimV + col;
            oa[0] = o[d][0] / lA;
            oa[1] = o[d][1] / lA;
        }
        if (tokB < n) {
            float* ob = out + ((i64)tokB * nHead + kvh * G + rB % G) * headDimV + col;
            ob[0] = o[d][2] / lB;
            ob[1] = o[d][3] / lB;
        }
    }
}
