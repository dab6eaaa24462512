// MoE routing and the combine of routed expert outputs.

// Chooses topK experts for each of n tokens (one thread per token), exactly as MoERouting.select: softmax or
// sigmoid scores, an optional selection bias, group-limited selection (groupScore 0: best score of the group,
// 1: sum of its best two), top-k best first, optional normalisation, scale. `work`: [n, 2·nExpert + groups].
extern "C" __global__ void moe_select(const float* logits, int n, int nExpert, int topK, int scoring, int normalize,
                                      float scale, const float* bias, int groups, int groupsUsed, int groupScore,
                                      float* work, int workStride, int* experts, float* weights) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    const float* lg = logits + (i64)t * nExpert;
    float* scores = work + (i64)t * workStride;
    float* choice = scores + nExpert;
    float* groupBest = choice + nExpert;
    if (scoring == 0) {
        float mx = -KT_INF;
        for (int e = 0; e < nExpert; e++) mx = fmaxf(mx, lg[e]);
        double sum = 0.0;
        for (int e = 0; e < nExpert; e++) {
            float x = expf(lg[e] - mx);
            scores[e] = x;
            sum += (double)x;
        }
        float inv = (float)(1.0 / sum);
        for (int e = 0; e < nExpert; e++) scores[e] *= inv;
    } else {
        for (int e = 0; e < nExpert; e++) scores[e] = 1.0f / (1.0f + expf(-lg[e]));
    }
    for (int e = 0; e < nExpert; e++) choice[e] = bias ? scores[e] + bias[e] : scores[e];
    if (groups > 1 && groupsUsed < groups) {
        int per = nExpert / groups;
        for (int g = 0; g < groups; g++) {
            float best = -KT_INF, second = -KT_INF;
            for (int i = 0; i < per; i++) {
                float s = choice[g * per + i];
                if (s > best) { second = best; best = s; } else if (s > second) second = s;
            }
            groupBest[g] = groupScore == 0 ? best : best + second;
        }
        for (int k = 0; k < groupsUsed; k++) {
            int bg = -1;
            for (int g = 0; g < groups; g++)
                if (groupBest[g] != -KT_INF && (bg < 0 || groupBest[g] > groupBest[bg])) bg = g;
            if (bg >= 0) groupBest[bg] = -KT_INF;
        }
        for (int g = 0; g < groups; g++)
            if (groupBest[g] != -KT_INF)
                for (int i = 0; i < per; i++) choice[g * per + i] = -KT_INF;
    }
    int* ex = experts + (i64)t * topK;
    float* wt = weights + (i64)t * topK;
    float sum = 0.0f;
    for (int j = 0; j < topK; j++) {
        int best = -1;
        for (int e = 0; e < nExpert; e++)
            if (choice[e] != -KT_INF && (best < 0 || choice[e] > choice[best])) best = e;
        if (best < 0) best = 0;  // fewer selectable experts than topK: cannot happen for valid routers
        ex[j] = best;
        wt[j] = scores[best];
        sum += scores[best];
        choice[best] = -KT_INF;
    }
    if (normalize) {
        float inv = 1.0f / fmaxf(sum, 6.103515625e-5f);
        for (int j = 0; j < topK; j++) wt[j] *= inv;
    }
    if (scale != 1.0f && scale != 0.0f)
        for (int j = 0; j < topK; j++) wt[j] *= scale;
}

// out[t] += Σ_j weights[t, j] · y[t·topK + j], in choice order; grid-stride over n · dim.
extern "C" __global__ void moe_combine(const float* y, const float* weights, float* out, int n, int topK, int dim) {
    i64 total = (i64)n * dim;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        i64 t = i / dim, c = i % dim;
        float s = out[i];
        for (int j = 0; j < topK; j++) s += weights[t * topK + j] * y[(t * topK + j) * dim + c];
        out[i] = s;
    }
}
