// Causal paged attention of a step's query rows (a mix of prefill chunks and decode tokens) over the paged K/V
// pool, through the scheduler's block tables. One block of 128 threads per (query token, head): the visible
// positions go in tiles of 128 (a key per thread), with a running max and sum (online softmax), and each thread
// owns up to 4 of the head's value dimensions. GQA (query heads share a K/V head), sliding windows, tanh
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
// A tile's values into one value dimension's accumulator: a·corr + Σ p[jj]·v[slot jj], in key order.
__device__ __forceinline__ float kt_att_values(float a, float corr, const float* p, const int* slots, int count,
                                               const float* vh, int vStride, int dIdx) {
    a = __fmul_rn(a, corr);
#pragma unroll 8
    for (int jj = 0; jj < count; jj++) a = __fmaf_rn(p[jj], vh[(i64)slots[jj] * vStride + dIdx], a);
    return a;
}

extern "C" __global__ void __launch_bounds__(KT_ATT_THREADS) attention(
        const float* q, float* out, const float* kc, const float* vc, int kStride, int vStride, int vHeadStride,
        int nHead, int nKVHead, int headDim, int headDimV, float scale, int window, float softcap,
        const int* positions, const int* seqOfToken, const int* blockTables, int blockTableStride, int pageSize,
        float* part, int splitKeys) {
    __shared__ __align__(16) float qs[KT_ATT_MAX_HEAD];
    __shared__ float p[KT_ATT_THREADS];
    __shared__ int slots[KT_ATT_THREADS];
    __shared__ float scratch[32];
    int t = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
    int kvh = h / (nHead / nKVHead);
    const float* qh = q + ((i64)t * nHead + h) * headDim;
    for (int i = tid; i < headDim; i += KT_ATT_THREADS) qs[i] = qh[i];
    int pos = positions[t], seq = seqOfToken[t], begin, end;
    if (!kt_att_keys(pos, window, part, splitKeys, &begin, &end)) return;
    const int* table = blockTables + (i64)seq * blockTableStride;
    const float* kh = kc + (i64)kvh * headDim;
    const float* vh = vc + (i64)kvh * vHeadStride;
    float acc[KT_ATT_MAX_VDIMS];
    for (int i = 0; i < KT_ATT_MAX_VDIMS; i++) acc[i] = 0.0f;
    float m = -KT_INF, l = 0.0f;
    // K rows as float4s when every row and head starts 16-byte aligned.
    bool vec4 = (headDim & 3) == 0 && (kStride & 3) == 0 && ((size_t)kc & 15) == 0;
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
        float mNew = fmaxf(m, tileMax);
        float e = j <= end ? expf(s - mNew) : 0.0f;
        p[tid] = e;
        slots[tid] = slot;
        float tileSum = kt_block_sum(e, scratch);  // (its barriers also publish p and slots)
        float corr = expf(m - mNew);
        l = __fmaf_rn(l, corr, tileSum);
        int count = min(KT_ATT_THREADS, end - start + 1);
        for (int k = 0; k < KT_ATT_MAX_VDIMS; k++) {
            int dIdx = tid + k * KT_ATT_THREADS;
            if (dIdx >= headDimV) break;
            acc[k] = kt_att_values(acc[k], corr, p, slots, count, vh, vStride, dIdx);
        }
        m = mNew;
        __syncthreads();
    }
    if (part) {
        float* pp = part + (((i64)t * nHead + h) * gridDim.z + blockIdx.z) * (headDimV + 2);
        if (tid == 0) { pp[0] = m; pp[1] = l; }
        for (int k = 0; k < KT_ATT_MAX_VDIMS; k++) {
            int dIdx = tid + k * KT_ATT_THREADS;
            if (dIdx < headDimV) pp[2 + dIdx] = acc[k];
        }
        return;
    }
    float inv = 1.0f / l;
    float* o = out + ((i64)t * nHead + h) * headDimV;
    for (int k = 0; k < KT_ATT_MAX_VDIMS; k++) {
        int dIdx = tid + k * KT_ATT_THREADS;
        if (dIdx < headDimV) o[dIdx] = acc[k] * inv;
    }
}

// The same for the G query heads of one K/V head (GQA) in one block: each key row and value is read once for the G
// heads (the per-head kernel reads them G times: at prefill that traffic sets its time), and each head's arithmetic
// is the per-head kernel's (kt_att_score, the same block reductions, kt_att_values, in the same order): the same
// bits. Grid (n, nKVHead, splits), 128 threads; head dims up to 256, value dims up to 128 (one a thread).
template <int G>
__device__ __forceinline__ void kt_attention_gqa(
        const float* q, float* out, const float* kc, const float* vc, int kStride, int vStride, int vHeadStride,
        int nHead, int headDim, int headDimV, float scale, int window, float softcap, const int* positions,
        const int* seqOfToken, const int* blockTables, int blockTableStride, int pageSize, float* part, int splitKeys) {
    __shared__ __align__(16) float qs[G][256];
    __shared__ float p[G][KT_ATT_THREADS];
    __shared__ int slots[KT_ATT_THREADS];
    __shared__ float scratch[32];
    int t = blockIdx.x, kvh = blockIdx.y, tid = threadIdx.x, h0 = kvh * G;
    for (int h = 0; h < G; h++) {
        const float* qh = q + ((i64)t * nHead + h0 + h) * headDim;
        for (int i = tid; i < headDim; i += KT_ATT_THREADS) qs[h][i] = qh[i];
    }
    int pos = positions[t], seq = seqOfToken[t], begin, end;
    if (!kt_att_keys(pos, window, part, splitKeys, &begin, &end)) return;
    const int* table = blockTables + (i64)seq * blockTableStride;
    const float* kh = kc + (i64)kvh * headDim;
    const float* vh = vc + (i64)kvh * vHeadStride;
    float acc[G], m[G], l[G];
    for (int h = 0; h < G; h++) { acc[h] = 0.0f; m[h] = -KT_INF; l[h] = 0.0f; }
    bool vec4 = (headDim & 3) == 0 && (kStride & 3) == 0 && ((size_t)kc & 15) == 0;
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
        float corr[G];
        for (int h = 0; h < G; h++) {
            float tileMax = kt_block_max(s[h], scratch);
            float mNew = fmaxf(m[h], tileMax);
            float e = j <= end ? expf(s[h] - mNew) : 0.0f;
            p[h][tid] = e;
            float tileSum = kt_block_sum(e, scratch);  // (its barriers also publish p and slots)
            corr[h] = expf(m[h] - mNew);
            l[h] = __fmaf_rn(l[h], corr[h], tileSum);
            m[h] = mNew;
        }
        int count = min(KT_ATT_THREADS, end - start + 1);
        if (tid < headDimV)
            for (int h = 0; h < G; h++) acc[h] = kt_att_values(acc[h], corr[h], p[h], slots, count, vh, vStride, tid);
        __syncthreads();
    }
    for (int h = 0; h < G; h++) {
        if (part) {
            float* pp = part + (((i64)t * nHead + h0 + h) * gridDim.z + blockIdx.z) * (headDimV + 2);
            if (tid == 0) { pp[0] = m[h]; pp[1] = l[h]; }
            if (tid < headDimV) pp[2 + tid] = acc[h];
        } else if (tid < headDimV) {
            out[((i64)t * nHead + h0 + h) * headDimV + tid] = acc[h] * (1.0f / l[h]);
        }
    }
}
#define KT_ATT_GQA(g) \
extern "C" __global__ void __launch_bounds__(KT_ATT_THREADS) attention_gqa##g( \
        const float* q, float* out, const float* kc, const float* vc, int kStride, int vStride, int vHeadStride, \
        int nHead, int headDim, int headDimV, float scale, int window, float softcap, const int* positions, \
        const int* seqOfToken, const int* blockTables, int blockTableStride, int pageSize, float* part, int splitKeys) { \
    kt_attention_gqa<g>(q, out, kc, vc, kStride, vStride, vHeadStride, nHead, headDim, headDimV, scale, window, softcap, \
                        positions, seqOfToken, blockTables, blockTableStride, pageSize, part, splitKeys); \
}
KT_ATT_GQA(2)
KT_ATT_GQA(4)
KT_ATT_GQA(8)

// The splits of a split-K attention combined in split order: M = max m_s, L = Σ l_s·e^(m_s − M), o = Σ acc_s·e^(m_s − M) / L
// (one split gives the unsplit kernel's bits). Grid (n, nHead), 128 threads; `splits` is the grid's z of the
// attention launch.
extern "C" __global__ void __launch_bounds__(KT_ATT_THREADS) attention_combine(const float* part, float* out, int nHead,
        int headDimV, int splits, int splitKeys, int window, const int* positions) {
    int t = blockIdx.x, h = blockIdx.y, tid = threadIdx.x;
    int pos = positions[t], lo = window > 0 ? max(0, pos - window + 1) : 0;
    int count = (pos - lo) / splitKeys + 1;
    const float* pp = part + ((i64)t * nHead + h) * splits * (headDimV + 2);
    float M = -KT_INF;
    for (int s = 0; s < count; s++) M = fmaxf(M, pp[s * (headDimV + 2)]);
    float L = 0.0f;
    for (int s = 0; s < count; s++) L += pp[s * (headDimV + 2) + 1] * expf(pp[s * (headDimV + 2)] - M);
    float inv = 1.0f / L;
    float* o = out + ((i64)t * nHead + h) * headDimV;
    for (int d = tid; d < headDimV; d += KT_ATT_THREADS) {
        float a = 0.0f;
        for (int s = 0; s < count; s++) a += pp[s * (headDimV + 2) + 2 + d] * expf(pp[s * (headDimV + 2)] - M);
        o[d] = a * inv;
    }
}
