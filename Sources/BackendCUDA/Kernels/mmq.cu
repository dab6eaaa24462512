// Prefill matmuls on the int8 tensor cores: K-quant rows · Q8_K-quantized inputs, tiles of 64 rows × 64 tokens, with
// the canonical arithmetic of the integer-dot matrix-vector kernels (matvec.cu): the group dot products come from
// mma.sync (exact integers), are scaled and summed per super-block as integers, and each super-block's part is added
// in order, so every output has the bits the matrix-vector kernel gives it (batch invariance across kernels).
//
// Block: 4 warps, warp (wm, wn) = (w % 2, w / 2) owns rows 32·wm .. +32 and tokens 32·wn .. +32 of the tile: 2 m16 ×
// 4 n8 mma tiles, 32 outputs a thread. Per super-block the block stages the 64 tokens' 256 int8 values (rows of 272
// bytes: the fragment loads hit distinct banks), their scales and per-group sums in shared memory; each warp reads
// its weight rows straight from global memory (each weight byte is read by one warp of a block per token tile).
// The k order inside a 32-group is permuted (lane t's "k = 4t..4t+3" are elements 8t..8t+3, its "k = 16 + 4t.." are
// 8t+4..8t+7), identically for weights and inputs, so both come in 8-byte loads; a dot product does not depend on it.

#define KT_MMQ_XSTRIDE 272

// Stages super-block sb of tokens t0 .. t0 + 63 (zeros past n): values, scale, sums of each 32-group.
__device__ __forceinline__ void kt_mmq_stage_q8K(const i8* xq, const float* xd, const int* xs, int cols, int n, int t0,
                                                 int sb, i8* sx, float* sd, int* ssum) {
    int tid = threadIdx.x, nsb = cols / 256;
    for (int c = tid; c < 64 * 16; c += 128) {
        int tok = c >> 4, part = c & 15;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (t0 + tok < n) v = *(const uint4*)(xq + (i64)(t0 + tok) * cols + sb * 256 + part * 16);
        *(uint4*)(sx + tok * KT_MMQ_XSTRIDE + part * 16) = v;
    }
    for (int c = tid; c < 64 * 8; c += 128) {
        int tok = c >> 3, g = c & 7, s = 0;
        if (t0 + tok < n) {
            const int* p = xs + (i64)(t0 + tok) * (cols / 16) + sb * 16 + 2 * g;
            s = p[0] + p[1];
        }
        ssum[tok * 8 + g] = s;
    }
    if (tid < 64) sd[tid] = t0 + tid < n ? xd[(i64)(t0 + tid) * nsb + sb] : 0.0f;
}

// y[t, r] for Q4_K rows; grid (ceil(rows / 64), ceil(n / 64)), 128 threads.
extern "C" __global__ void __launch_bounds__(128) mmq_q4_K(const u8* W, i64 rowBytes, int rows, int cols, const i8* xq,
        const float* xd, const int* xs, float* y, int n) {
    __shared__ __align__(16) i8 sx[64 * KT_MMQ_XSTRIDE];
    __shared__ float sd[64];
    __shared__ __align__(16) int ssum[64 * 8];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    int wm = warp & 1, wn = warp >> 1;
    int r0 = blockIdx.x * 64 + wm * 32, t0 = blockIdx.y * 64;
    int nsb = cols / 256;
    // This thread's rows: i = 2·mi + h is row r0 + 16·mi + g + 8·h (rows past the end read the last row, unwritten).
    const u8* rowp[4];
    for (int i = 0; i < 4; i++) rowp[i] = W + (i64)min(r0 + 16 * (i >> 1) + g + 8 * (i & 1), rows - 1) * rowBytes;
    float acc[2][4][4];
    for (int mi = 0; mi < 2; mi++)
        for (int ni = 0; ni < 4; ni++)
            for (int e = 0; e < 4; e++) acc[mi][ni][e] = 0.0f;
    for (int sb = 0; sb < nsb; sb++) {
        __syncthreads();
        kt_mmq_stage_q8K(xq, xd, xs, cols, n, t0, sb, sx, sd, ssum);
        __syncthreads();
        float d[4], dmin[4];
        u32 scw[4][2], mw[4][2];
        for (int i = 0; i < 4; i++) {
            uint4 head = *(const uint4*)(rowp[i] + (i64)sb * 144);
            const u8* hb = (const u8*)&head;
            d[i] = kt_f16(hb);
            dmin[i] = kt_f16(hb + 2);
            scw[i][0] = scw[i][1] = mw[i][0] = mw[i][1] = 0;
            for (int G = 0; G < 8; G++) {
                int sc, m;
                kt_scale_min_k4(G, hb + 4, &sc, &m);
                scw[i][G >> 2] |= (u32)sc << (8 * (G & 3));
                mw[i][G >> 2] |= (u32)m << (8 * (G & 3));
            }
        }
        int i1[2][4][4];
        for (int mi = 0; mi < 2; mi++)
            for (int ni = 0; ni < 4; ni++)
                for (int e = 0; e < 4; e++) i1[mi][ni][e] = 0;
        for (int p = 0; p < 4; p++) {
            uint2 q[4];
            for (int i = 0; i < 4; i++) q[i] = *(const uint2*)(rowp[i] + (i64)sb * 144 + 16 + 32 * p + 8 * t);
            for (int hi = 0; hi < 2; hi++) {
                int G = 2 * p + hi, sh = 4 * hi;
                u32 a[2][4];
                for (int mi = 0; mi < 2; mi++) {
                    a[mi][0] = (q[2 * mi].x >> sh) & 0x0F0F0F0Fu;
                    a[mi][1] = (q[2 * mi + 1].x >> sh) & 0x0F0F0F0Fu;
                    a[mi][2] = (q[2 * mi].y >> sh) & 0x0F0F0F0Fu;
                    a[mi][3] = (q[2 * mi + 1].y >> sh) & 0x0F0F0F0Fu;
                }
                for (int ni = 0; ni < 4; ni++) {
                    uint2 bb = *(const uint2*)(sx + (wn * 32 + ni * 8 + g) * KT_MMQ_XSTRIDE + G * 32 + 8 * t);
                    u32 b[2] = {bb.x, bb.y};
                    for (int mi = 0; mi < 2; mi++) {
                        int c[4] = {0, 0, 0, 0};
                        KT_MMA_K32(c, a[mi], b);
                        for (int e = 0; e < 4; e++) {
                            int sc = (int)((scw[2 * mi + (e >> 1)][G >> 2] >> (8 * (G & 3))) & 0xFF);
                            i1[mi][ni][e] += sc * c[e];
                        }
                    }
                }
            }
        }
        for (int ni = 0; ni < 4; ni++) {
            for (int j = 0; j < 2; j++) {
                int tl = wn * 32 + ni * 8 + 2 * t + j;
                int4 s0 = *(const int4*)(ssum + tl * 8), s1 = *(const int4*)(ssum + tl * 8 + 4);
                int s[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
                float xdt = sd[tl];
                for (int mi = 0; mi < 2; mi++) {
                    for (int h = 0; h < 2; h++) {
                        int i = 2 * mi + h, i2 = 0;
                        for (int G = 0; G < 8; G++) i2 += (int)((mw[i][G >> 2] >> (8 * (G & 3))) & 0xFF) * s[G];
                        int e = 2 * h + j;
                        acc[mi][ni][e] = __fadd_rn(acc[mi][ni][e], kt_part_q4_K(xdt, d[i], dmin[i], i1[mi][ni][e], i2));
                    }
                }
            }
        }
    }
    for (int mi = 0; mi < 2; mi++)
        for (int ni = 0; ni < 4; ni++)
            for (int e = 0; e < 4; e++) {
                int r = r0 + 16 * mi + g + 8 * (e >> 1), tok = t0 + wn * 32 + ni * 8 + 2 * t + (e & 1);
                if (r < rows && tok < n) y[(i64)tok * rows + r] = acc[mi][ni][e];
            }
}

// ---- f32-activation matmuls (`.f32Activations`: the MLP's down projection) on the tf32 tensor cores ----
//
// Exact enough for f32 semantics through 3×TF32: each value splits into hi = tf32(v) and lo = tf32(v − hi), and
// a·b ≈ lo·hi + hi·lo + hi·hi (relative error ~2^-22). One arithmetic for every token count, so each output has the
// same bits in any batch: a warp owns 16 rows × 8·NT tokens of one K split; each 32-group's products run as one mma
// chain from zero (lo·hi, hi·lo, hi·hi for k8-chunks 0..3: short chains keep the tensor cores' truncating
// accumulation small) and the groups are added to the output in order with rounding adds; splits (`splitSB`
// super-blocks each, fixed by the shape alone) are added in order by mmf_reduce. The k order inside a 32-group is
// permuted as in mmq_q4_K: in k8-chunk c lane t's slots t and t + 4 are elements 8t + 2c and 8t + 2c + 1, so a
// lane's 8 elements of a group come from one 8-byte load.

// The inputs split for 3×TF32: hi and lo arrays of tf32 bit patterns (as floats); grid-stride.
extern "C" __global__ void split_tf32(const float* x, float* hi, float* lo, i64 count) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < count; i += (i64)gridDim.x * blockDim.x) {
        float v = x[i];
        u32 h = kt_tf32(v);
        hi[i] = __uint_as_float(h);
        lo[i] = __uint_as_float(kt_tf32(v - __uint_as_float(h)));
    }
}

// The A fragments (hi and lo) of k8-chunk ch of a group for rows g (w*a) and g + 8 (w*b).
__device__ __forceinline__ void kt_mmf_frag(const float* wa, const float* wb, int ch, u32* aHi, u32* aLo) {
    float av[4] = {wa[2 * ch], wb[2 * ch], wa[2 * ch + 1], wb[2 * ch + 1]};
    for (int i = 0; i < 4; i++) {
        aHi[i] = kt_tf32(av[i]);
        aLo[i] = kt_tf32(av[i] - __uint_as_float(aHi[i]));
    }
}

// Rows 16·tile .. +16 (per warp), tokens 8·NT·blockIdx.y .. , super-blocks split·splitSB .. +splitSB. Warps of a
// block take consecutive (tile, split) pairs: w = blockIdx.x·4 + warp, tile = w % tiles, split = w / tiles. Writes
// y directly when there is one split, else part[split][token][row]. The group loop is unrolled so that the groups'
// independent mma chains overlap.
template <int NT>
__device__ __forceinline__ void kt_mmf_q4_K(const u8* W, i64 rowBytes, int rows, int cols, const float* xhi,
                                            const float* xlo, float* out, int n, int splitSB) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    int tiles = (rows + 15) / 16, nsb = cols / 256, splits = (nsb + splitSB - 1) / splitSB;
    int w = blockIdx.x * 4 + warp;
    if (w >= tiles * splits) return;
    int tile = w % tiles, split = w / tiles;
    int sb0 = split * splitSB, sb1 = min(nsb, sb0 + splitSB);
    int t0 = blockIdx.y * 8 * NT;
    const u8* rowA = W + (i64)min(tile * 16 + g, rows - 1) * rowBytes;
    const u8* rowB = W + (i64)min(tile * 16 + g + 8, rows - 1) * rowBytes;
    float acc[NT][4];
    for (int j = 0; j < NT; j++)
        for (int e = 0; e < 4; e++) acc[j][e] = 0.0f;
    // Super-block loads one ahead: headers and the lane's 8 bytes of each of the 4 quant rows, both weight rows.
    uint4 hAn = *(const uint4*)(rowA + (i64)sb0 * 144), hBn = *(const uint4*)(rowB + (i64)sb0 * 144);
    uint2 qan[4], qbn[4];
    for (int p = 0; p < 4; p++) {
        qan[p] = *(const uint2*)(rowA + (i64)sb0 * 144 + 16 + 32 * p + 8 * t);
        qbn[p] = *(const uint2*)(rowB + (i64)sb0 * 144 + 16 + 32 * p + 8 * t);
    }
    for (int sb = sb0; sb < sb1; sb++) {
        uint4 hA = hAn, hB = hBn;
        uint2 qa[4], qb[4];
        for (int p = 0; p < 4; p++) { qa[p] = qan[p]; qb[p] = qbn[p]; }
        if (sb + 1 < sb1) {
            hAn = *(const uint4*)(rowA + (i64)(sb + 1) * 144);
            hBn = *(const uint4*)(rowB + (i64)(sb + 1) * 144);
            for (int p = 0; p < 4; p++) {
                qan[p] = *(const uint2*)(rowA + (i64)(sb + 1) * 144 + 16 + 32 * p + 8 * t);
                qbn[p] = *(const uint2*)(rowB + (i64)(sb + 1) * 144 + 16 + 32 * p + 8 * t);
            }
        }
        const u8* ha = (const u8*)&hA;
        const u8* hb = (const u8*)&hB;
        float dA = kt_f16(ha), mA = kt_f16(ha + 2), dB = kt_f16(hb), mB = kt_f16(hb + 2);
        // This lane's 8 weights of group G (elements 8t..8t+7), rows g and g + 8.
        auto weights = [&](int G, float* wa, float* wb) {
            int p = G >> 1, sh = 4 * (G & 1), scA, mnA, scB, mnB;
            kt_scale_min_k4(G, ha + 4, &scA, &mnA);
            kt_scale_min_k4(G, hb + 4, &scB, &mnB);
            float da = dA * (float)scA, ma = mA * (float)mnA, db = dB * (float)scB, mb = mB * (float)mnB;
            for (int j = 0; j < 8; j++) {
                u32 wordA = j < 4 ? qa[p].x : qa[p].y, wordB = j < 4 ? qb[p].x : qb[p].y;
                wa[j] = da * (float)((wordA >> (8 * (j & 3) + sh)) & 15) - ma;
                wb[j] = db * (float)((wordB >> (8 * (j & 3) + sh)) & 15) - mb;
            }
        };
        {
#pragma unroll
            for (int G = 0; G < 8; G++) {
                float wa[8], wb[8];
                weights(G, wa, wb);
                float c[NT][4];
                for (int j = 0; j < NT; j++)
                    for (int e = 0; e < 4; e++) c[j][e] = 0.0f;
                for (int ch = 0; ch < 4; ch++) {
                    u32 aHi[4], aLo[4];
                    kt_mmf_frag(wa, wb, ch, aHi, aLo);
                    for (int j = 0; j < NT; j++) {
                        int tok = min(t0 + 8 * j + g, n - 1);
                        i64 at = (i64)tok * cols + (i64)sb * 256 + G * 32 + 8 * t + 2 * ch;
                        float2 h2 = *(const float2*)(xhi + at), l2 = *(const float2*)(xlo + at);
                        u32 bHi[2] = {__float_as_uint(h2.x), __float_as_uint(h2.y)};
                        u32 bLo[2] = {__float_as_uint(l2.x), __float_as_uint(l2.y)};
                        KT_MMA_TF32(c[j], aLo, bHi);
                        KT_MMA_TF32(c[j], aHi, bLo);
                        KT_MMA_TF32(c[j], aHi, bHi);
                    }
                }
                for (int j = 0; j < NT; j++)
                    for (int e = 0; e < 4; e++) acc[j][e] = __fadd_rn(acc[j][e], c[j][e]);
            }
        }
    }
    for (int j = 0; j < NT; j++)
        for (int e = 0; e < 4; e++) {
            int r = tile * 16 + g + 8 * (e >> 1), tok = t0 + 8 * j + 2 * t + (e & 1);
            if (r < rows && tok < n) {
                if (splits == 1) out[(i64)tok * rows + r] = acc[j][e];
                else out[((i64)split * n + tok) * rows + r] = acc[j][e];
            }
        }
}

// Grid (ceil(tiles · splits / 4), ceil(n / (8·NT))), 128 threads.
extern "C" __global__ void __launch_bounds__(128) mmf_q4_K_1(const u8* W, i64 rowBytes, int rows, int cols,
        const float* xhi, const float* xlo, float* out, int n, int splitSB) {
    kt_mmf_q4_K<1>(W, rowBytes, rows, cols, xhi, xlo, out, n, splitSB);
}
extern "C" __global__ void __launch_bounds__(128) mmf_q4_K_4(const u8* W, i64 rowBytes, int rows, int cols,
        const float* xhi, const float* xlo, float* out, int n, int splitSB) {
    kt_mmf_q4_K<4>(W, rowBytes, rows, cols, xhi, xlo, out, n, splitSB);
}

// y[t, r] = Σ_s part[s][t][r] in split order; grid-stride over n · rows.
extern "C" __global__ void mmf_reduce(const float* part, float* y, int splits, int n, int rows) {
    i64 total = (i64)n * rows;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int k = 0; k < splits; k++) s = __fadd_rn(s, part[(i64)k * total + i]);
        y[i] = s;
    }
}
