// MoE routing and the combine of routed expert outputs.

// Chooses topK experts for each of n tokens, exactly as MoERouting.select: softmax or sigmoid scores, an optional
// selection bias, group-limited selection (groupScore 0: best score of the group, 1: sum of its best two), top-k
// best first (ties: the lower index), optional normalisation, scale. A warp per token (grid n, 32 threads): lane l
// takes experts l, l + 32, ...; maxima and the softmax's double sum are fixed warp reductions and every top-k
// round is a warp argmax, so a token's choice does not depend on the batch. (One thread per token, scanning all
// experts topK + 3 times through memory, took 76 µs a call for 128 experts on an H100: 45% of a decode step.)
// `work`: [n, 2·nExpert + groups].
__device__ __forceinline__ void kt_argmax_lane(float& v, int& i) {
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, v, o);
        int oi = __shfl_xor_sync(0xffffffffu, i, o);
        // Selectable (index ≥ 0) beats none; then the larger value; then the lower index.
        if (oi >= 0 && (i < 0 || ov > v || (ov == v && oi < i))) { v = ov; i = oi; }
    }
}
// Up to KT_MOE_LANE_MAX experts a lane (256 experts) are held in registers; more go through `work`.
#define KT_MOE_LANE_MAX 8
// Token t's choice by one warp (lane = its lane); `l2`: the logits are read through L2 (another block wrote them
// in this launch: router_f32_select).
__device__ __forceinline__ void kt_moe_select_token(int t, int lane, bool l2, const float* logits, int nExpert, int topK,
        int scoring, int normalize, float scale, const float* bias, int groups, int groupsUsed, int groupScore,
        float* work, int workStride, int* experts, float* weights) {
    const float* lgp = logits + (i64)t * nExpert;
    auto lg = [&](int e) { return l2 ? __ldcg(lgp + e) : lgp[e]; };
    float* scores = work + (i64)t * workStride;
    float* choice = scores + nExpert;
    float* groupBest = choice + nExpert;
    // Lane-held copies of scores and choices: expert lane + 32k is slot k (when nExpert ≤ 32 · KT_MOE_LANE_MAX).
    bool inRegs = nExpert <= 32 * KT_MOE_LANE_MAX;
    float sc[KT_MOE_LANE_MAX], ch[KT_MOE_LANE_MAX];
    if (scoring == 0) {
        float mx = -KT_INF;
        for (int e = lane; e < nExpert; e += 32) mx = fmaxf(mx, lg(e));
        mx = kt_warp_max(mx);
        double sum = 0.0;
        for (int e = lane; e < nExpert; e += 32) {
            float x = expf(lg(e) - mx);
            scores[e] = x;
            sum += (double)x;
        }
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        float inv = (float)(1.0 / sum);
        for (int e = lane; e < nExpert; e += 32) scores[e] *= inv;
    } else {
        for (int e = lane; e < nExpert; e += 32) scores[e] = 1.0f / (1.0f + expf(-lg(e)));
    }
    for (int e = lane; e < nExpert; e += 32) choice[e] = bias ? scores[e] + bias[e] : scores[e];
    __syncwarp();
    if (groups > 1 && groupsUsed < groups) {
        int per = nExpert / groups;
        for (int g = lane; g < groups; g += 32) {
            float best = -KT_INF, second = -KT_INF;
            for (int i = 0; i < per; i++) {
                float s = choice[g * per + i];
                if (s > best) { second = best; best = s; } else if (s > second) second = s;
            }
            groupBest[g] = groupScore == 0 ? best : best + second;
        }
        __syncwarp();
        if (lane == 0)
            for (int k = 0; k < groupsUsed; k++) {
                int bg = -1;
                for (int g = 0; g < groups; g++)
                    if (groupBest[g] != -KT_INF && (bg < 0 || groupBest[g] > groupBest[bg])) bg = g;
                if (bg >= 0) groupBest[bg] = -KT_INF;
            }
        __syncwarp();
        for (int e = lane; e < nExpert; e += 32)
            if (groupBest[e / per] != -KT_INF) choice[e] = -KT_INF;
        __syncwarp();
    }
    if (inRegs) {
#pragma unroll
        for (int k = 0; k < KT_MOE_LANE_MAX; k++) {
            int e = lane + 32 * k;
            sc[k] = e < nExpert ? scores[e] : 0.0f;
            ch[k] = e < nExpert ? choice[e] : -KT_INF;
        }
    }
    int* ex = experts + (i64)t * topK;
    float* wt = weights + (i64)t * topK;
    float sum = 0.0f;
    for (int j = 0; j < topK; j++) {
        // This lane's best selectable expert (ascending, strict >: the lower index on ties), then the warp's.
        float v = -KT_INF, s = 0.0f;
        int best = -1;
        if (inRegs) {
#pragma unroll
            for (int k = 0; k < KT_MOE_LANE_MAX; k++)
                if (ch[k] != -KT_INF && (best < 0 || ch[k] > v)) { v = ch[k]; best = lane + 32 * k; s = sc[k]; }
        } else {
            for (int e = lane; e < nExpert; e += 32) {
                float c = choice[e];
                if (c != -KT_INF && (best < 0 || c > v)) { v = c; best = e; }
            }
            if (best >= 0) s = scores[best];
        }
        kt_argmax_lane(v, best);
        if (best < 0) { best = 0; s = scores[0]; }  // fewer selectable experts than topK: not for valid routers
        // The winner's score from the lane that holds it.
        int owner = best & 31;
        s = __shfl_sync(0xffffffffu, s, owner);
        if (lane == 0) { ex[j] = best; wt[j] = s; }
        sum += s;
        if (lane == owner) {
            if (inRegs) {
#pragma unroll
                for (int k = 0; k < KT_MOE_LANE_MAX; k++)
                    if (lane + 32 * k == best) ch[k] = -KT_INF;
            } else {
                choice[best] = -KT_INF;
            }
        }
        __syncwarp();
    }
    if (normalize || (scale != 1.0f && scale != 0.0f)) {
        float inv = 1.0f / fmaxf(sum, 6.103515625e-5f);
        for (int j = lane; j < topK; j += 32) {
            float w = wt[j];
            if (normalize) w *= inv;
            if (scale != 1.0f && scale != 0.0f) w *= scale;
            wt[j] = w;
        }
    }
}
extern "C" __global__ void __launch_bounds__(32) moe_select(const float* logits, int n, int nExpert, int topK, int scoring,
                                      int normalize, float scale, const float* bias, int groups, int groupsUsed,
                                      int groupScore, float* work, int workStride, int* experts, float* weights) { KT_PDL_WAIT();
    if ((int)blockIdx.x >= n) return;
    kt_moe_select_token(blockIdx.x, threadIdx.x, false, logits, nExpert, topK, scoring, normalize, scale, bias, groups,
                        groupsUsed, groupScore, work, workStride, experts, weights);
}

// The same choice by a block of KT_SEL_THREADS threads (up to KT_SEL_THREADS · KT_SEL_PER experts, groups up to
// KT_SEL_THREADS): thread i holds experts i + KT_SEL_THREADS·k; scores and choices go to shared memory and each
// expert's rank (how many selectable experts beat it: a larger choice, or an equal one at a lower index) is counted
// by its thread, so the top-k comes in one pass instead of topK dependent warp argmaxes (7.6 µs a call for 128
// experts on an H100, most of it the serial rounds and the round trips through `work`). The ranks give the
// argmax rounds' order exactly (ties: the lower index first); group selection is ranked the same way. The softmax's
// sum is a fixed block reduction (in double).
#define KT_SEL_THREADS 256
#define KT_SEL_PER 4
__device__ __forceinline__ void kt_moe_select_block(int t, bool l2, const float* logits, int nExpert, int topK,
        int scoring, int normalize, float scale, const float* bias, int groups, int groupsUsed, int groupScore,
        int* experts, float* weights) {
    __shared__ float sc[KT_SEL_THREADS * KT_SEL_PER], ch[KT_SEL_THREADS * KT_SEL_PER], gb[KT_SEL_THREADS];
    __shared__ float red[KT_SEL_THREADS / 32];
    __shared__ double redd[KT_SEL_THREADS / 32];
    __shared__ int selectable;
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const float* lgp = logits + (i64)t * nExpert;
    float v[KT_SEL_PER];
#pragma unroll
    for (int k = 0; k < KT_SEL_PER; k++) {
        int e = tid + KT_SEL_THREADS * k;
        v[k] = e < nExpert ? (l2 ? __ldcg(lgp + e) : lgp[e]) : -KT_INF;
    }
    if (tid == 0) selectable = 0;
    if (scoring == 0) {
        float mx = -KT_INF;
#pragma unroll
        for (int k = 0; k < KT_SEL_PER; k++) mx = fmaxf(mx, v[k]);
        mx = kt_warp_max(mx);
        if (lane == 0) red[warp] = mx;
        __syncthreads();
        mx = red[0];
        for (int w = 1; w < KT_SEL_THREADS / 32; w++) mx = fmaxf(mx, red[w]);
        double sum = 0.0;
#pragma unroll
        for (int k = 0; k < KT_SEL_PER; k++) {
            int e = tid + KT_SEL_THREADS * k;
            v[k] = e < nExpert ? expf(v[k] - mx) : 0.0f;
            sum += (double)v[k];
        }
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        if (lane == 0) redd[warp] = sum;
        __syncthreads();
        sum = redd[0];
        for (int w = 1; w < KT_SEL_THREADS / 32; w++) sum += redd[w];
        float inv = (float)(1.0 / sum);
#pragma unroll
        for (int k = 0; k < KT_SEL_PER; k++) v[k] *= inv;
    } else {
#pragma unroll
        for (int k = 0; k < KT_SEL_PER; k++) v[k] = 1.0f / (1.0f + expf(-v[k]));
    }
#pragma unroll
    for (int k = 0; k < KT_SEL_PER; k++) {
        int e = tid + KT_SEL_THREADS * k;
        if (e < nExpert) {
            sc[e] = v[k];
            ch[e] = bias ? v[k] + bias[e] : v[k];
        }
    }
    __syncthreads();
    if (groups > 1 && groupsUsed < groups) {
        int per = nExpert / groups;
        if (tid < groups) {
            float best = -KT_INF, second = -KT_INF;
            for (int i = 0; i < per; i++) {
                float c = ch[tid * per + i];
                if (c > best) { second = best; best = c; } else if (c > second) second = c;
            }
            gb[tid] = groupScore == 0 ? best : best + second;
        }
        __syncthreads();
        // A group stays when fewer than groupsUsed groups rank above it (the argmax rounds' choice).
        bool keep = false;
        if (tid < groups && gb[tid] != -KT_INF) {
            float g = gb[tid];
            int rank = 0;
            for (int h = 0; h < groups; h++) {
                float o = gb[h];
                rank += o != -KT_INF && (o > g || (o == g && h < tid));
            }
            keep = rank < groupsUsed;
        }
        __syncthreads();
        if (tid < groups) gb[tid] = keep ? 1.0f : 0.0f;
        __syncthreads();
#pragma unroll
        for (int k = 0; k < KT_SEL_PER; k++) {
            int e = tid + KT_SEL_THREADS * k;
            if (e < nExpert && gb[e / per] == 0.0f) ch[e] = -KT_INF;
        }
        __syncthreads();
    }
    int* ex = experts + (i64)t * topK;
    float* wt = weights + (i64)t * topK;
#pragma unroll
    for (int k = 0; k < KT_SEL_PER; k++) {
        int e = tid + KT_SEL_THREADS * k;
        if (e >= nExpert) break;
        float c = ch[e];
        if (c == -KT_INF) continue;
        int rank = 0;
        for (int f = 0; f < nExpert; f++) {
            float o = ch[f];
            rank += o != -KT_INF && (o > c || (o == c && f < e));
        }
        if (rank < topK) {
            ex[rank] = e;
            wt[rank] = sc[e];
            atomicAdd(&selectable, 1);
        }
    }
    __syncthreads();
    if (tid == 0) {
        // Fewer selectable experts than topK (not for valid routers): expert 0 fills the rest, as the warp form.
        for (int j = selectable; j < topK; j++) { ex[j] = 0; wt[j] = sc[0]; }
        if (normalize || (scale != 1.0f && scale != 0.0f)) {
            float sum = 0.0f;
            for (int j = 0; j < topK; j++) sum += wt[j];
            float inv = 1.0f / fmaxf(sum, 6.103515625e-5f);
            for (int j = 0; j < topK; j++) {
                float w = wt[j];
                if (normalize) w *= inv;
                if (scale != 1.0f && scale != 0.0f) w *= scale;
                wt[j] = w;
            }
        }
    }
    __syncthreads();  // (the shared arrays are reused for the next token)
}
// Grid n, KT_SEL_THREADS threads; nExpert ≤ KT_SEL_THREADS · KT_SEL_PER, groups ≤ KT_SEL_THREADS.
extern "C" __global__ void __launch_bounds__(KT_SEL_THREADS) moe_select_block(const float* logits, int n, int nExpert,
        int topK, int scoring, int normalize, float scale, const float* bias, int groups, int groupsUsed,
        int groupScore, float* work, int workStride, int* experts, float* weights) { KT_PDL_WAIT();
    if ((int)blockIdx.x >= n) return;
    kt_moe_select_block(blockIdx.x, false, logits, nExpert, topK, scoring, normalize, scale, bias, groups, groupsUsed,
                        groupScore, experts, weights);
}

// The router's f32 matvec and the top-k choice in one launch (steps of at most KT_MV_TOKENS tokens; decode): the
// blocks of matvec_f32_wide (grid rows, 256 threads) each write their logit; the last block to finish (`counter`,
// which it resets) runs moe_select_block for each token on the logits, read through L2. The bits of the two
// kernels, one launch fewer per MoE layer (ComputeBackend.routeTopK). nExpert ≤ KT_SEL_THREADS · KT_SEL_PER.
extern "C" __global__ void __launch_bounds__(32 * KT_MVW_WARPS) router_f32_select(const u8* W, i64 rowBytes, int rows,
        int cols, const float* x, float* logits, int n, int topK, int scoring, int normalize, float scale,
        const float* bias, int groups, int groupsUsed, int groupScore, float* work, int workStride, int* experts,
        float* weights, int* counter) {
    kt_matvec_f32_wide_row(W, rowBytes, 0, rows, cols, x, cols, 0, logits, rows, 0, n);  // (waits for the inputs)
    __shared__ int last;
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        last = atomicAdd(counter, 1) == (int)gridDim.x - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int t = 0; t < n; t++)
        kt_moe_select_block(t, true, logits, rows, topK, scoring, normalize, scale, bias, groups, groupsUsed, groupScore,
                            experts, weights);
    if (threadIdx.x == 0) *counter = 0;
}

// out[t] += Σ_j weights[t, j] · y[t·topK + j], in choice order; grid-stride over n · dim.
extern "C" __global__ void moe_combine(const float* y, const float* weights, float* out, int n, int topK, int dim,
                                       int store) { KT_PDL_WAIT();
    i64 total = (i64)n * dim;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        i64 t = i / dim, c = i % dim;
        float s = store ? 0.0f : out[i];  // store: out = the sum (what zeroing out first would give)
        for (int j = 0; j < topK; j++) s += weights[t * topK + j] * y[(t * topK + j) * dim + c];
        out[i] = s;
    }
}
