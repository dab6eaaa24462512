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
extern "C" __global__ void __launch_bounds__(32) moe_select(const float* logits, int n, int nExpert, int topK, int scoring,
                                      int normalize, float scale, const float* bias, int groups, int groupsUsed,
                                      int groupScore, float* work, int workStride, int* experts, float* weights) { KT_PDL_WAIT();
    int t = blockIdx.x, lane = threadIdx.x;
    if (t >= n) return;
    const float* lg = logits + (i64)t * nExpert;
    float* scores = work + (i64)t * workStride;
    float* choice = scores + nExpert;
    float* groupBest = choice + nExpert;
    // Lane-held copies of scores and choices: expert lane + 32k is slot k (when nExpert ≤ 32 · KT_MOE_LANE_MAX).
    bool inRegs = nExpert <= 32 * KT_MOE_LANE_MAX;
    float sc[KT_MOE_LANE_MAX], ch[KT_MOE_LANE_MAX];
    if (inRegs && !(groups > 1 && groupsUsed < groups)) {
        // No group limit: scores and choices straight into the lane's registers (the same operations in the same
        // order as through `work` below, so the same bits), without the round trip through memory.
        float lgv[KT_MOE_LANE_MAX];
#pragma unroll
        for (int k = 0; k < KT_MOE_LANE_MAX; k++) {
            lgv[k] = lane + 32 * k < nExpert ? lg[lane + 32 * k] : 0.0f;
            sc[k] = 0.0f;
        }
        if (scoring == 0) {
            float mx = -KT_INF;
#pragma unroll
            for (int k = 0; k < KT_MOE_LANE_MAX; k++)
                if (lane + 32 * k < nExpert) mx = fmaxf(mx, lgv[k]);
            mx = kt_warp_max(mx);
            double sum = 0.0;
#pragma unroll
            for (int k = 0; k < KT_MOE_LANE_MAX; k++)
                if (lane + 32 * k < nExpert) {
                    sc[k] = expf(lgv[k] - mx);
                    sum += (double)sc[k];
                }
            for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
            float inv = (float)(1.0 / sum);
#pragma unroll
            for (int k = 0; k < KT_MOE_LANE_MAX; k++) sc[k] *= inv;
        } else {
#pragma unroll
            for (int k = 0; k < KT_MOE_LANE_MAX; k++) sc[k] = 1.0f / (1.0f + expf(-lgv[k]));
        }
#pragma unroll
        for (int k = 0; k < KT_MOE_LANE_MAX; k++) {
            int e = lane + 32 * k;
            if (e >= nExpert) { sc[k] = 0.0f; ch[k] = -KT_INF; continue; }
            ch[k] = bias ? sc[k] + bias[e] : sc[k];
        }
    } else {
    if (scoring == 0) {
        float mx = -KT_INF;
        for (int e = lane; e < nExpert; e += 32) mx = fmaxf(mx, lg[e]);
        mx = kt_warp_max(mx);
        double sum = 0.0;
        for (int e = lane; e < nExpert; e += 32) {
            float x = expf(lg[e] - mx);
            scores[e] = x;
            sum += (double)x;
        }
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        float inv = (float)(1.0 / sum);
        for (int e = lane; e < nExpert; e += 32) scores[e] *= inv;
    } else {
        for (int e = lane; e < nExpert; e += 32) scores[e] = 1.0f / (1.0f + expf(-lg[e]));
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
        if (best < 0) { best = 0; s = inRegs ? sc[0] : scores[0]; }  // fewer selectable experts than topK: not for valid routers
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

// out[t] += Σ_j weights[t, j] · y[t·topK + j], in choice order (kt_moe_combine1, as add_rms_norm_combine);
// grid-stride over n · dim.
extern "C" __global__ void moe_combine(const float* y, const float* weights, float* out, int n, int topK, int dim,
                                       int store) { KT_PDL_WAIT();
    i64 total = (i64)n * dim;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        i64 t = i / dim, c = i % dim;
        // store: out = the sum (what zeroing out first would give)
        out[i] = kt_moe_combine1(y, weights, t, topK, dim, c, store ? 0.0f : out[i]);
    }
}
