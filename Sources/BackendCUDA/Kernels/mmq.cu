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
        const float* xd, const int* xs, float* y, int n) { KT_PDL_WAIT();
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

// Streaming form of mmq_q4_K (batched decode and prefill, 9 tokens and more): persistent warps, each owning 16-row
// tiles of up to three matrices (q/k/v, gate/up: rows of matrix 0, then 1, then 2, each padded to whole tiles)
// and 8·NT tokens (blockIdx.y), with its own ring of KT_MMQS_DEPTH shared-memory slots: a slot holds one
// super-block (144 bytes) of the tile's 16 rows, copied by cp.async KT_MMQS_DEPTH - 1 steps ahead, so the weights
// stream at the memory's rate with no block barrier; the inputs' fragments come from global memory (L1). Per
// super-block a warp runs the mma of each 32-group for each of its NT token tiles and adds the part as mmq_q4_K
// does: every output has the bits of mmq_q4_K and of the matrix-vector kernels. Grid (blocks, ceil(n / (8·NT))),
// 128 threads, 4 · KT_MMQS_DEPTH · 2304 bytes of dynamic shared memory.
#define KT_MMQS_DEPTH 6

typedef KtRowUnits<16> KtTiles16;  // (matvec.cu)

// A unit of the streaming tiles: 16 rows of a matrix (W, rows r0.., `rows` in all, output y) times the token
// positions t0 .. tEnd - 1 of a token group. Positions map to input rows (`token`) and output rows (`out`).
struct KtMmqsUnit {
    const u8* W;
    float* y;
    int r0, rows, t0, tEnd;
};
// Dense: up to three matrices (KtTiles16), tokens 8·NT·blockIdx.y.., positions = token rows.
template <int NT>
struct KtMmqsDense {
    KtTiles16 tl;
    int n;
    __device__ __forceinline__ int count() const { return tl.first[3]; }
    __device__ __forceinline__ KtMmqsUnit unit(int u) const {
        int m = tl.matrix(u);
        return {tl.W[m], tl.y[m], (u - tl.first[m]) * 16, tl.rows[m], (int)blockIdx.y * 8 * NT, n};
    }
    __device__ __forceinline__ i64 token(int pos) const { return pos; }
    __device__ __forceinline__ i64 out(int pos) const { return pos; }
};

template <int NT, class Map>
__device__ __forceinline__ void kt_mmq_stream_q4_K(const Map& map, i64 rowBytes, int cols, const i8* xq,
                                                   const float* xd, const int* xs) {
    KT_DYNAMIC_SHARED(u8, smem);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    u8* ring = smem + warp * (KT_MMQS_DEPTH * 16 * 144);
    int nsb = cols / 256, units = map.count(), stride = gridDim.x * 4;
    // The producer: unit pu (pw: its rows), super-block ps.
    int pu = blockIdx.x * 4 + warp, ps = 0;
    KtMmqsUnit pw = pu < units ? map.unit(pu) : KtMmqsUnit{};
    auto issue = [&](int s) {
        if (pu < units) {
            u8* dst = ring + s * (16 * 144);
            for (int j = lane; j < 16 * 9; j += 32) {
                int rr = j / 9, k = j % 9;
                const u8* src = pw.W + (i64)min(pw.r0 + rr, pw.rows - 1) * rowBytes + (i64)ps * 144 + 16 * k;
                kt_cp_async16(dst + rr * 144 + 16 * k, src);
            }
            if (++ps == nsb) {
                ps = 0;
                pu += stride;
                if (pu < units) pw = map.unit(pu);
            }
        }
        kt_cp_async_commit();
    };
    for (int s = 0; s < KT_MMQS_DEPTH - 1; s++) issue(s);
    int step = 0;
    for (int u = blockIdx.x * 4 + warp; u < units; u += stride) {
        KtMmqsUnit w = map.unit(u);
        // This lane's fragment rows (g of each token tile; positions past the group repeat its last, never written).
        const i8* xrow[NT];
        for (int j = 0; j < NT; j++) xrow[j] = xq + map.token(min(w.t0 + 8 * j + g, w.tEnd - 1)) * cols;
        float acc[NT][4];
        for (int j = 0; j < NT; j++)
            for (int e = 0; e < 4; e++) acc[j][e] = 0.0f;
        for (int sb = 0; sb < nsb; sb++, step++) {
            const u8* slot = kt_ring_step<KT_MMQS_DEPTH>(issue, ring, 16 * 144, step);
            // Rows g (A) and g + 8 (B) of the tile: scales, mins and d, dmin.
            uint4 hA = *(const uint4*)(slot + g * 144), hB = *(const uint4*)(slot + (g + 8) * 144);
            const u8* ha = (const u8*)&hA;
            const u8* hb = (const u8*)&hB;
            float dA = kt_f16(ha), mA = kt_f16(ha + 2), dB = kt_f16(hb), mB = kt_f16(hb + 2);
            int scA[8], mnA[8], scB[8], mnB[8];
            for (int G = 0; G < 8; G++) {
                kt_scale_min_k4(G, ha + 4, &scA[G], &mnA[G]);
                kt_scale_min_k4(G, hb + 4, &scB[G], &mnB[G]);
            }
            int i1[NT][4];
            for (int j = 0; j < NT; j++)
                for (int e = 0; e < 4; e++) i1[j][e] = 0;
            for (int p = 0; p < 4; p++) {
                uint2 qa = *(const uint2*)(slot + g * 144 + 16 + 32 * p + 8 * t);
                uint2 qb = *(const uint2*)(slot + (g + 8) * 144 + 16 + 32 * p + 8 * t);
                for (int hi = 0; hi < 2; hi++) {
                    int G = 2 * p + hi, sh = 4 * hi;
                    u32 a[4] = {(qa.x >> sh) & 0x0F0F0F0Fu, (qb.x >> sh) & 0x0F0F0F0Fu, (qa.y >> sh) & 0x0F0F0F0Fu,
                                (qb.y >> sh) & 0x0F0F0F0Fu};
                    for (int j = 0; j < NT; j++) {
                        uint2 bb = *(const uint2*)(xrow[j] + sb * 256 + G * 32 + 8 * t);
                        u32 b[2] = {bb.x, bb.y};
                        int c[4] = {0, 0, 0, 0};
                        KT_MMA_K32(c, a, b);
                        i1[j][0] += scA[G] * c[0];
                        i1[j][1] += scA[G] * c[1];
                        i1[j][2] += scB[G] * c[2];
                        i1[j][3] += scB[G] * c[3];
                    }
                }
            }
            __syncwarp();  // the slot is read: the next issue may refill it
            for (int j = 0; j < NT; j++) {
                for (int jj = 0; jj < 2; jj++) {
                    i64 tok = map.token(min(w.t0 + 8 * j + 2 * t + jj, w.tEnd - 1));
                    const int* sp = xs + tok * (cols / 16) + sb * 16;
                    int4 s0 = *(const int4*)sp, s1 = *(const int4*)(sp + 4), s2 = *(const int4*)(sp + 8), s3 = *(const int4*)(sp + 12);
                    int sg[8] = {s0.x + s0.y, s0.z + s0.w, s1.x + s1.y, s1.z + s1.w, s2.x + s2.y, s2.z + s2.w,
                                 s3.x + s3.y, s3.z + s3.w};
                    int i2A = 0, i2B = 0;
                    for (int G = 0; G < 8; G++) {
                        i2A += mnA[G] * sg[G];
                        i2B += mnB[G] * sg[G];
                    }
                    float xdt = xd[tok * nsb + sb];
                    acc[j][jj] = __fadd_rn(acc[j][jj], kt_part_q4_K(xdt, dA, mA, i1[j][jj], i2A));
                    acc[j][2 + jj] = __fadd_rn(acc[j][2 + jj], kt_part_q4_K(xdt, dB, mB, i1[j][2 + jj], i2B));
                }
            }
        }
        for (int j = 0; j < NT; j++)
            for (int e = 0; e < 4; e++) {
                int r = w.r0 + g + 8 * (e >> 1), pos = w.t0 + 8 * j + 2 * t + (e & 1);
                if (r < w.rows && pos < w.tEnd) w.y[map.out(pos) * w.rows + r] = acc[j][e];
            }
    }
    kt_cp_async_wait<0>();
}

#define KT_MMQ_STREAM(nt) \
extern "C" __global__ void __launch_bounds__(128) mmq_stream_q4_K_##nt(const u8* W0, const u8* W1, const u8* W2, \
        i64 rowBytes, int rows0, int rows1, int rows2, int cols, const i8* xq, const float* xd, const int* xs, \
        float* y0, float* y1, float* y2, int n) { KT_PDL_WAIT(); \
    KtMmqsDense<nt> map = {KtTiles16(W0, W1, W2, y0, y1, y2, rows0, rows1, rows2), n}; \
    kt_mmq_stream_q4_K<nt>(map, rowBytes, cols, xq, xd, xs); \
}
KT_MMQ_STREAM(4)
KT_MMQ_STREAM(8)

// Block-staged form of mmq_stream_q4_K (batched decode, up to 8·NT tokens): persistent blocks of KT_MMQB_WARPS
// warps walk units of TW consecutive 16-row tiles (KtTiles16: up to three matrices), a super-block per step, all
// warps in step. Per step the block copies with cp.async, KT_MMQB_DEPTH(NT) - 1 steps ahead, one stage of a
// ring: its tiles' weights (rows at a KT_MMQB_WROW-byte stride), and its token group's int8 inputs (rows of
// KT_MMQB_XROW bytes), per-16 sums (rows of KT_MMQB_SROW bytes) and scales. So the mma fragments come from shared
// memory without bank conflicts, and a token group's inputs are read from L2 once per block and step instead of
// by every warp through L1 (the streaming form's bottleneck: 8 lines a fragment load). One barrier a step. Each warp
// computes its tile and token tiles as kt_mmq_stream_q4_K does: every output has the bits of mmq_q4_K and of
// the matrix-vector kernels. Grid (blocks, ceil(n / (8·NT))), 32·KT_MMQB_WARPS threads,
// KT_MMQB_DEPTH(NT) · KtMmqbStage<NT, TW>::bytes of dynamic shared memory.
#define KT_MMQB_WARPS 8
#define KT_MMQB_DEPTH(nt) ((nt) == 1 ? 4 : 3)
#define KT_MMQB_WROW 160  // 144-byte super-blocks: 8-byte fragment loads of a half-warp hit distinct banks
#define KT_MMQB_XROW 288  // 256 values
#define KT_MMQB_SROW 80   // 16 sums
template <int NT, int TW = KT_MMQB_WARPS>
struct KtMmqbStage {
    static constexpr int tokens = 8 * NT;
    static constexpr int wBytes = TW * 16 * KT_MMQB_WROW;
    static constexpr int xBytes = tokens * KT_MMQB_XROW;
    static constexpr int sBytes = tokens * KT_MMQB_SROW;
    static constexpr int bytes = wBytes + xBytes + sBytes + tokens * 4;
};
// A block-staged kernel's copies of its unit's weights into a stage: TW tiles of 16 rows, each row's super-block
// of BLOCK bytes (when BLOCK is not a multiple of 16, the P aligned 16-byte pieces around it) at a WROW-byte
// stride. Piece c = threadIdx.x + 32·KT_MMQB_WARPS·k is row c / P of the stage, piece c % P; src[k] its row in the
// unit `aim` chose (plus the piece's offset where blocks are aligned), dst[k] its place in a stage (-1: none).
template <int TW, int P, int WROW, int BLOCK>
struct KtStageWeights {
    static constexpr int threads = 32 * KT_MMQB_WARPS, pieces = (TW * 16 * P + threads - 1) / threads;
    const u8* src[pieces];
    int dst[pieces];
    __device__ __forceinline__ KtStageWeights() {
#pragma unroll
        for (int k = 0; k < pieces; k++) {
            int c = threadIdx.x + threads * k;
            dst[k] = c < TW * 16 * P ? (c / P) * WROW + 16 * (c % P) : -1;
            src[k] = nullptr;
        }
    }
    // Points the pieces at unit u's rows (tiles past the last repeat it, rows past a matrix's end its last row).
    __device__ __forceinline__ void aim(const KtTiles16& tl, i64 rowBytes, int u) {
#pragma unroll
        for (int k = 0; k < pieces; k++) {
            int c = threadIdx.x + threads * k;
            if (dst[k] < 0) continue;
            int tile = min(u * TW + c / (16 * P), tl.first[3] - 1), rr = (c / P) % 16, r0, cnt;
            int m = tl.locate(tile, &r0, &cnt);
            src[k] = tl.W[m] + (i64)min(r0 + rr, tl.rows[m] - 1) * rowBytes + (BLOCK % 16 == 0 ? 16 * (c % P) : 0);
        }
    }
    // Copies super-block sb of those rows into stage st.
    __device__ __forceinline__ void copy(u8* st, int sb) const {
#pragma unroll
        for (int k = 0; k < pieces; k++) {
            if (dst[k] < 0) continue;
            const u8* b = src[k] + (i64)sb * BLOCK;
            if (BLOCK % 16 == 0) kt_cp_async16(st + dst[k], b);
            else kt_cp_async16(st + dst[k], (const u8*)((size_t)b & ~(size_t)15) + dst[k] % WROW);
        }
    }
};

// Stages super-block sb of the int8 inputs of tokens t0 .. t0 + tokens - 1 (past n: the last token again) as rows
// of XROW bytes at sx.
template <int XROW>
__device__ __forceinline__ void kt_stage_q8_values(u8* sx, const i8* xq, int cols, int t0, int n, int tokens, int sb) {
    for (int c = threadIdx.x; c < tokens * 16; c += blockDim.x) {
        int tok = c >> 4, part = c & 15;
        kt_cp_async16(sx + tok * XROW + part * 16, xq + (i64)min(t0 + tok, n - 1) * cols + sb * 256 + part * 16);
    }
}
// A block's share of `units` persistent units (blockIdx.x, + gridDim.x, ...).
__device__ __forceinline__ int kt_block_units(int units) {
    return (int)blockIdx.x < units ? (units - 1 - (int)blockIdx.x) / (int)gridDim.x + 1 : 0;
}

// TW tiles a unit (8, 4 or 2): warp w computes tile w % TW for the NJ = NT·TW/8 token tiles of group w / TW, so that
// a small matrix (an output projection of 256 tiles) still spreads over every multiprocessor.
template <int NT, int DEPTH, int TW>
__device__ __forceinline__ void kt_mmq_block_q4_K(const KtTiles16& tl, i64 rowBytes, int cols, const i8* xq,
                                                  const float* xd, const int* xs, int n) {
    typedef KtMmqbStage<NT, TW> L;
    constexpr int NJ = NT * TW / KT_MMQB_WARPS;
    KT_DYNAMIC_SHARED(u8, smem);
    const int threads = 32 * KT_MMQB_WARPS;
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    int nsb = cols / 256, tiles = tl.first[3];
    int t0 = blockIdx.y * L::tokens, myUnits = kt_block_units((tiles + TW - 1) / TW), steps = myUnits * nsb;
    // The producer: step pStep (unit pStep / nsb of this block, super-block pStep % nsb). (The step loop is
    // written out in each block-staged kernel: as a shared driver of lambdas it spilled registers here.)
    KtStageWeights<TW, 9, KT_MMQB_WROW, 144> wts;
    int pStep = 0;
    auto issue = [&](int s) {
        if (pStep < steps) {
            int ui = pStep / nsb, sb = pStep - ui * nsb;
            if (sb == 0) wts.aim(tl, rowBytes, blockIdx.x + ui * gridDim.x);
            u8* st = smem + s * L::bytes;
            wts.copy(st, sb);
            // Inputs of the token group (tokens past n repeat the last; their outputs are not written).
            u8* sx = st + L::wBytes;
            kt_stage_q8_values<KT_MMQB_XROW>(sx, xq, cols, t0, n, L::tokens, sb);
            u8* ss = sx + L::xBytes;
            for (int c = tid; c < L::tokens * 4; c += threads) {
                int tok = c >> 2, part = c & 3;
                kt_cp_async16(ss + tok * KT_MMQB_SROW + part * 16,
                              xs + (i64)min(t0 + tok, n - 1) * (cols / 16) + sb * 16 + part * 4);
            }
            float* sd = (float*)(ss + L::sBytes);
            if (tid < L::tokens) kt_cp_async4(sd + tid, xd + (i64)min(t0 + tid, n - 1) * nsb + sb);
            pStep++;
        }
        kt_cp_async_commit();
    };
    for (int s = 0; s < DEPTH - 1; s++) issue(s);
    int step = 0;
    for (int ui = 0; ui < myUnits; ui++) {
        int wt = warp % TW, j0 = (warp / TW) * NJ;
        int tile = (blockIdx.x + ui * gridDim.x) * TW + wt, r0 = 0, cnt = 0, m = 0;
        if (tile < tiles) m = tl.locate(tile, &r0, &cnt);
        float acc[NJ][4];
        for (int j = 0; j < NJ; j++)
            for (int e = 0; e < 4; e++) acc[j][e] = 0.0f;
        for (int sb = 0; sb < nsb; sb++, step++) {
            kt_cp_async_wait<DEPTH - 2>();
            __syncthreads();  // this step's stage is in; every warp is done with the previous one, refilled next
            issue((step + DEPTH - 1) % DEPTH);
            const u8* st = smem + (step % DEPTH) * L::bytes;
            const u8* wrow = st + wt * 16 * KT_MMQB_WROW;
            const u8* sx = st + L::wBytes;
            const int* ss = (const int*)(sx + L::xBytes);
            const float* sd = (const float*)((const u8*)ss + L::sBytes);
            // Rows g (A) and g + 8 (B) of the tile: scales and mins (bytes of two words each), d, dmin.
            uint4 hA = *(const uint4*)(wrow + g * KT_MMQB_WROW), hB = *(const uint4*)(wrow + (g + 8) * KT_MMQB_WROW);
            float dA = kt_half_to_float((u16)(hA.x & 0xFFFFu)), mA = kt_half_to_float((u16)(hA.x >> 16));
            float dB = kt_half_to_float((u16)(hB.x & 0xFFFFu)), mB = kt_half_to_float((u16)(hB.x >> 16));
            u32 scA[2] = {0, 0}, mnA[2] = {0, 0}, scB[2] = {0, 0}, mnB[2] = {0, 0};
#pragma unroll
            for (int G = 0; G < 8; G++) {
                int sa, ma, sb_, mb;
                kt_scale_min_k4_regs(G, hA, &sa, &ma);
                kt_scale_min_k4_regs(G, hB, &sb_, &mb);
                scA[G >> 2] |= (u32)sa << (8 * (G & 3));
                mnA[G >> 2] |= (u32)ma << (8 * (G & 3));
                scB[G >> 2] |= (u32)sb_ << (8 * (G & 3));
                mnB[G >> 2] |= (u32)mb << (8 * (G & 3));
            }
            int i1[NJ][4];
            for (int j = 0; j < NJ; j++)
                for (int e = 0; e < 4; e++) i1[j][e] = 0;
#pragma unroll
            for (int p = 0; p < 4; p++) {
                uint2 qa = *(const uint2*)(wrow + g * KT_MMQB_WROW + 16 + 32 * p + 8 * t);
                uint2 qb = *(const uint2*)(wrow + (g + 8) * KT_MMQB_WROW + 16 + 32 * p + 8 * t);
#pragma unroll
                for (int hi = 0; hi < 2; hi++) {
                    int G = 2 * p + hi, sh = 4 * hi;
                    int sa = (int)((scA[G >> 2] >> (8 * (G & 3))) & 0xFF), sbv = (int)((scB[G >> 2] >> (8 * (G & 3))) & 0xFF);
                    u32 a[4] = {(qa.x >> sh) & 0x0F0F0F0Fu, (qb.x >> sh) & 0x0F0F0F0Fu, (qa.y >> sh) & 0x0F0F0F0Fu,
                                (qb.y >> sh) & 0x0F0F0F0Fu};
#pragma unroll
                    for (int j = 0; j < NJ; j++) {
                        uint2 bb = *(const uint2*)(sx + (8 * (j0 + j) + g) * KT_MMQB_XROW + G * 32 + 8 * t);
                        u32 b[2] = {bb.x, bb.y};
                        int c[4] = {0, 0, 0, 0};
                        KT_MMA_K32(c, a, b);
                        i1[j][0] += sa * c[0];
                        i1[j][1] += sa * c[1];
                        i1[j][2] += sbv * c[2];
                        i1[j][3] += sbv * c[3];
                    }
                }
            }
#pragma unroll
            for (int j = 0; j < NJ; j++) {
#pragma unroll
                for (int jj = 0; jj < 2; jj++) {
                    int tk = 8 * (j0 + j) + 2 * t + jj;
                    const int* sp = ss + tk * (KT_MMQB_SROW / 4);
                    int4 s0 = *(const int4*)sp, s1 = *(const int4*)(sp + 4), s2 = *(const int4*)(sp + 8), s3 = *(const int4*)(sp + 12);
                    int sg[8] = {s0.x + s0.y, s0.z + s0.w, s1.x + s1.y, s1.z + s1.w, s2.x + s2.y, s2.z + s2.w,
                                 s3.x + s3.y, s3.z + s3.w};
                    int i2A = 0, i2B = 0;
#pragma unroll
                    for (int G = 0; G < 8; G++) {
                        i2A += (int)((mnA[G >> 2] >> (8 * (G & 3))) & 0xFF) * sg[G];
                        i2B += (int)((mnB[G >> 2] >> (8 * (G & 3))) & 0xFF) * sg[G];
                    }
                    float xdt = sd[tk];
                    acc[j][jj] = __fadd_rn(acc[j][jj], kt_part_q4_K(xdt, dA, mA, i1[j][jj], i2A));
                    acc[j][2 + jj] = __fadd_rn(acc[j][2 + jj], kt_part_q4_K(xdt, dB, mB, i1[j][2 + jj], i2B));
                }
            }
        }
        if (tile < tiles) {
            float* y = tl.y[m];
            int rows = tl.rows[m];
            for (int j = 0; j < NJ; j++)
                for (int e = 0; e < 4; e++) {
                    int r = r0 + g + 8 * (e >> 1), tok = t0 + 8 * (j0 + j) + 2 * t + (e & 1);
                    if (r < rows && tok < n) y[(i64)tok * rows + r] = acc[j][e];
                }
        }
    }
    kt_cp_async_wait<0>();
}

// mmq_block_q4_K_<NT>_<TW>: 8·NT tokens a block, TW tiles a unit.
#define KT_MMQ_BLOCK(nt, tw) \
extern "C" __global__ void __launch_bounds__(32 * KT_MMQB_WARPS, 2) mmq_block_q4_K_##nt##_##tw(const u8* W0, \
        const u8* W1, const u8* W2, i64 rowBytes, int rows0, int rows1, int rows2, int cols, const i8* xq, \
        const float* xd, const int* xs, float* y0, float* y1, float* y2, int n) { KT_PDL_WAIT(); \
    KtTiles16 tl(W0, W1, W2, y0, y1, y2, rows0, rows1, rows2); \
    kt_mmq_block_q4_K<nt, KT_MMQB_DEPTH(nt), tw>(tl, rowBytes, cols, xq, xd, xs, n); \
}
KT_MMQ_BLOCK(1, 8)
KT_MMQ_BLOCK(2, 8)
KT_MMQ_BLOCK(2, 4)
KT_MMQ_BLOCK(4, 8)
KT_MMQ_BLOCK(4, 4)
KT_MMQ_BLOCK(4, 2)

// ---- Routed experts by expert (prefill): tiles over each expert's pairs ----
//
// moe_group sorts the step's (token, expert) pairs by expert on the device: counts, offsets, the pairs' order
// (within an expert in no fixed order: every output row is computed alone, so the order changes no bits) and the
// token groups of `groupTokens` pairs per expert. The grouped tiles then read each chosen expert's weights once
// per group of its pairs instead of once per pair.
// meta: [0, E] each expert's first position in `order` (and the total), [E + 1, 2E + 1] each expert's first token
// group (and the total). One block, 1024 threads, 2E ints of dynamic shared memory.
extern "C" __global__ void __launch_bounds__(1024) moe_group(const int* ids, int pairs, int nExpert, int groupTokens,
                                                             int* meta, int* order) { KT_PDL_WAIT();
    KT_DYNAMIC_SHARED(int, cnt);
    int* cursor = cnt + nExpert;
    for (int e = threadIdx.x; e < nExpert; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < pairs; i += blockDim.x) atomicAdd(&cnt[ids[i]], 1);
    __syncthreads();
    if (threadIdx.x == 0) {
        int off = 0, grp = 0;
        for (int e = 0; e < nExpert; e++) {
            meta[e] = off;
            meta[nExpert + 1 + e] = grp;
            cursor[e] = off;
            off += cnt[e];
            grp += (cnt[e] + groupTokens - 1) / groupTokens;
        }
        meta[nExpert] = off;
        meta[2 * nExpert + 1] = grp;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < pairs; i += blockDim.x) order[atomicAdd(&cursor[ids[i]], 1)] = i;
}

// The expert whose token groups hold group k: the last e with gstart[e] <= k (experts without pairs have the
// next one's start, so the last such is the one with groups).
__device__ __forceinline__ int kt_group_expert(const int* gstart, int nExpert, int k) {
    int lo = 0, hi = nExpert - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (gstart[mid] <= k) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// Grouped: stacks m < nMat (gate, up) of E experts; unit u = (m, token group gi, row tile rt), row tiles innermost
// (the warps of a block share a group's input rows); positions index `order`, pair q = order[pos] has input row
// q / xDiv and output row q.
template <int NT>
struct KtMmqsGrouped {
    const u8* W[2];
    float* y[2];
    const int* meta;
    const int* order;
    i64 matrixBytes;
    int nMat, nExpert, rows, xDiv;
    __device__ __forceinline__ int tiles() const { return (rows + 15) / 16; }
    __device__ __forceinline__ int groups() const { return meta[2 * nExpert + 1]; }
    __device__ __forceinline__ int count() const { return nMat * groups() * tiles(); }
    __device__ __forceinline__ KtMmqsUnit unit(int u) const {
        int per = groups() * tiles(), m = u / per, rem = u - m * per, gi = rem / tiles(), rt = rem - gi * tiles();
        const int* gstart = meta + nExpert + 1;
        int e = kt_group_expert(gstart, nExpert, gi), t0 = meta[e] + (gi - gstart[e]) * 8 * NT;
        return {W[m] + (i64)e * matrixBytes, y[m], rt * 16, rows, t0, meta[e + 1]};
    }
    __device__ __forceinline__ i64 token(int pos) const { return order[pos] / xDiv; }
    __device__ __forceinline__ i64 out(int pos) const { return order[pos]; }
};

#define KT_MMQ_GROUPED(nt) \
extern "C" __global__ void __launch_bounds__(128) mmq_grouped_q4_K_##nt(const u8* W0, const u8* W1, i64 rowBytes, \
        i64 matrixBytes, int rows, int cols, int nExpert, const int* meta, const int* order, int xDiv, const i8* xq, \
        const float* xd, const int* xs, float* y0, float* y1) { KT_PDL_WAIT(); \
    KtMmqsGrouped<nt> map = {{W0, W1}, {y0, y1}, meta, order, matrixBytes, W1 ? 2 : 1, nExpert, rows, xDiv}; \
    kt_mmq_stream_q4_K<nt>(map, rowBytes, cols, xq, xd, xs); \
}
KT_MMQ_GROUPED(4)

// The same for Q6_K rows (the output matrix of batched decode): 210-byte super-blocks are not 16-byte aligned, so
// a slot row holds the 224 aligned bytes around one (its offset in them is the block address mod 16, per row).
// Each 16-element sub-group (its own scale) is one m16n8k16 mma, lane t's k = 4t..4t + 3 its elements
// 16·sub + 4t..+3; the part is kt_part_q6_K of the exact integer sum, as kt_mv_q6_K's. Grid as mmq_stream_q4_K,
// 4 · KT_MMQS_DEPTH · 3584 bytes of dynamic shared memory.
__device__ __forceinline__ u32 kt_load4_a2(const u8* p) {
    const u16* q = (const u16*)p;
    return (u32)q[0] | ((u32)q[1] << 16);
}

template <int NT>
__device__ __forceinline__ void kt_mmq_stream_q6_K(const KtTiles16& tl, i64 rowBytes, int cols, const i8* xq,
                                                   const float* xd, int n) {
    KT_DYNAMIC_SHARED(u8, smem);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    u8* ring = smem + warp * (KT_MMQS_DEPTH * 16 * 224);
    int nsb = cols / 256, units = tl.first[3], stride = gridDim.x * 4, t0 = blockIdx.y * 8 * NT;
    int pu = blockIdx.x * 4 + warp, ps = 0;
    auto issue = [&](int s) {
        if (pu < units) {
            int m = tl.matrix(pu), r0 = (pu - tl.first[m]) * 16, rows = tl.rows[m];
            u8* dst = ring + s * (16 * 224);
            for (int j = lane; j < 16 * 14; j += 32) {
                int rr = j / 14, k = j % 14;
                const u8* blk = tl.W[m] + (i64)min(r0 + rr, rows - 1) * rowBytes + (i64)ps * 210;
                const u8* base = (const u8*)((size_t)blk & ~(size_t)15);
                kt_cp_async16(dst + rr * 224 + 16 * k, base + 16 * k);
            }
            if (++ps == nsb) { ps = 0; pu += stride; }
        }
        kt_cp_async_commit();
    };
    for (int s = 0; s < KT_MMQS_DEPTH - 1; s++) issue(s);
    const i8* xrow[NT];
    for (int j = 0; j < NT; j++) xrow[j] = xq + (i64)min(t0 + 8 * j + g, n - 1) * cols;
    int step = 0;
    for (int u = blockIdx.x * 4 + warp; u < units; u += stride) {
        int m = tl.matrix(u), r0 = (u - tl.first[m]) * 16, rows = tl.rows[m];
        const u8* rowA = tl.W[m] + (i64)min(r0 + g, rows - 1) * rowBytes;
        const u8* rowB = tl.W[m] + (i64)min(r0 + g + 8, rows - 1) * rowBytes;
        float acc[NT][4];
        for (int j = 0; j < NT; j++)
            for (int e = 0; e < 4; e++) acc[j][e] = 0.0f;
        for (int sb = 0; sb < nsb; sb++, step++) {
            const u8* slot = kt_ring_step<KT_MMQS_DEPTH>(issue, ring, 16 * 224, step);
            const u8* ba = slot + g * 224 + ((size_t)(rowA + (i64)sb * 210) & 15);
            const u8* bb = slot + (g + 8) * 224 + ((size_t)(rowB + (i64)sb * 210) & 15);
            float dA = kt_f16(ba + 208), dB = kt_f16(bb + 208);
            int i1[NT][4];
            for (int j = 0; j < NT; j++)
                for (int e = 0; e < 4; e++) i1[j][e] = 0;
            for (int G = 0; G < 8; G++) {
                int h = G >> 2, r = G & 3, shL = 4 * (r >> 1), shH = 2 * r;
                for (int sub = 0; sub < 2; sub++) {
                    int i = 16 * sub + 4 * t, ql = 64 * h + 32 * (r & 1) + i, qh = 128 + 32 * h + i;
                    u32 a[2] = {(u32)kt_minus32(((kt_load4_a2(ba + ql) >> shL) & 0x0F0F0F0Fu) |
                                                (((kt_load4_a2(ba + qh) >> shH) & 0x03030303u) << 4)),
                                (u32)kt_minus32(((kt_load4_a2(bb + ql) >> shL) & 0x0F0F0F0Fu) |
                                                (((kt_load4_a2(bb + qh) >> shH) & 0x03030303u) << 4))};
                    int scA = ((const i8*)(ba + 192))[2 * G + sub], scB = ((const i8*)(bb + 192))[2 * G + sub];
                    for (int j = 0; j < NT; j++) {
                        u32 b[1] = {*(const u32*)(xrow[j] + sb * 256 + G * 32 + i)};
                        int c[4] = {0, 0, 0, 0};
                        KT_MMA_K16(c, a, b);
                        i1[j][0] += scA * c[0];
                        i1[j][1] += scA * c[1];
                        i1[j][2] += scB * c[2];
                        i1[j][3] += scB * c[3];
                    }
                }
            }
            __syncwarp();  // the slot is read: the next issue may refill it
            for (int j = 0; j < NT; j++)
                for (int jj = 0; jj < 2; jj++) {
                    int tok = min(t0 + 8 * j + 2 * t + jj, n - 1);
                    float xdt = xd[(i64)tok * nsb + sb];
                    acc[j][jj] = __fadd_rn(acc[j][jj], kt_part_q6_K(xdt, dA, i1[j][jj]));
                    acc[j][2 + jj] = __fadd_rn(acc[j][2 + jj], kt_part_q6_K(xdt, dB, i1[j][2 + jj]));
                }
        }
        float* y = tl.y[m];
        for (int j = 0; j < NT; j++)
            for (int e = 0; e < 4; e++) {
                int r = r0 + g + 8 * (e >> 1), tok = t0 + 8 * j + 2 * t + (e & 1);
                if (r < rows && tok < n) y[(i64)tok * rows + r] = acc[j][e];
            }
    }
    kt_cp_async_wait<0>();
}

#define KT_MMQ_STREAM_Q6K(nt) \
extern "C" __global__ void __launch_bounds__(128) mmq_stream_q6_K_##nt(const u8* W0, const u8* W1, const u8* W2, \
        i64 rowBytes, int rows0, int rows1, int rows2, int cols, const i8* xq, const float* xd, const int*, \
        float* y0, float* y1, float* y2, int n) { KT_PDL_WAIT(); \
    KtTiles16 tl(W0, W1, W2, y0, y1, y2, rows0, rows1, rows2); \
    kt_mmq_stream_q6_K<nt>(tl, rowBytes, cols, xq, xd, n); \
}
KT_MMQ_STREAM_Q6K(4)
KT_MMQ_STREAM_Q6K(8)

// The same for Q6_K rows (the output matrix of batched decode): a stage row holds the 224 aligned bytes around a
// row's 210-byte super-block (at a KT_MMQB6_WROW-byte stride: the 4-byte fragment loads of a warp hit distinct
// banks), the inputs rows of KT_MMQB6_XROW bytes, and their scales; the arithmetic is kt_mmq_stream_q6_K's (a
// m16n8k16 mma per 16-element sub-group, the part kt_part_q6_K of the exact integer sum): the bits of the
// matrix-vector kernel. Grid as mmq_block_q4_K, KT_MMQB6_DEPTH · KtMmqb6Stage<NT>::bytes of dynamic shared memory.
#define KT_MMQB6_DEPTH 2
#define KT_MMQB6_WROW 240
#define KT_MMQB6_XROW 272
template <int NT>
struct KtMmqb6Stage {
    static constexpr int tokens = 8 * NT;
    static constexpr int wBytes = KT_MMQB_WARPS * 16 * KT_MMQB6_WROW;
    static constexpr int xBytes = tokens * KT_MMQB6_XROW;
    static constexpr int bytes = wBytes + xBytes + tokens * 4;
};

template <int NT, int DEPTH>
__device__ __forceinline__ void kt_mmq_block_q6_K(const KtTiles16& tl, i64 rowBytes, int cols, const i8* xq,
                                                  const float* xd, int n) {
    typedef KtMmqb6Stage<NT> L;
    KT_DYNAMIC_SHARED(u8, smem);
    const int threads = 32 * KT_MMQB_WARPS;
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    int nsb = cols / 256, tiles = tl.first[3];
    int t0 = blockIdx.y * L::tokens, myUnits = kt_block_units((tiles + KT_MMQB_WARPS - 1) / KT_MMQB_WARPS);
    int steps = myUnits * nsb;
    // The producer, as kt_mmq_block_q4_K's (the 14 aligned pieces around each row's block).
    KtStageWeights<KT_MMQB_WARPS, 14, KT_MMQB6_WROW, 210> wts;
    int pStep = 0;
    auto issue = [&](int s) {
        if (pStep < steps) {
            int ui = pStep / nsb, sb = pStep - ui * nsb;
            if (sb == 0) wts.aim(tl, rowBytes, blockIdx.x + ui * gridDim.x);
            u8* st = smem + s * L::bytes;
            wts.copy(st, sb);
            u8* sx = st + L::wBytes;
            kt_stage_q8_values<KT_MMQB6_XROW>(sx, xq, cols, t0, n, L::tokens, sb);
            float* sd = (float*)(sx + L::xBytes);
            if (tid < L::tokens) kt_cp_async4(sd + tid, xd + (i64)min(t0 + tid, n - 1) * nsb + sb);
            pStep++;
        }
        kt_cp_async_commit();
    };
    for (int s = 0; s < DEPTH - 1; s++) issue(s);
    int step = 0;
    for (int ui = 0; ui < myUnits; ui++) {
        int tile = (blockIdx.x + ui * gridDim.x) * KT_MMQB_WARPS + warp, r0 = 0, cnt = 0, m = 0;
        if (tile < tiles) m = tl.locate(tile, &r0, &cnt);
        int tc = min(tile, tiles - 1), r0c, cntc;
        int mc = tl.locate(tc, &r0c, &cntc);
        // This lane's rows in global memory (their blocks' offsets in the aligned stage rows).
        const u8* gA = tl.W[mc] + (i64)min(r0c + g, tl.rows[mc] - 1) * rowBytes;
        const u8* gB = tl.W[mc] + (i64)min(r0c + g + 8, tl.rows[mc] - 1) * rowBytes;
        float acc[NT][4];
        for (int j = 0; j < NT; j++)
            for (int e = 0; e < 4; e++) acc[j][e] = 0.0f;
        for (int sb = 0; sb < nsb; sb++, step++) {
            kt_cp_async_wait<DEPTH - 2>();
            __syncthreads();
            issue((step + DEPTH - 1) % DEPTH);
            const u8* st = smem + (step % DEPTH) * L::bytes;
            const u8* ba = st + (warp * 16 + g) * KT_MMQB6_WROW + ((size_t)(gA + (i64)sb * 210) & 15);
            const u8* bb = st + (warp * 16 + g + 8) * KT_MMQB6_WROW + ((size_t)(gB + (i64)sb * 210) & 15);
            const u8* sx = st + L::wBytes;
            const float* sd = (const float*)(sx + L::xBytes);
            float dA = kt_f16(ba + 208), dB = kt_f16(bb + 208);
            int i1[NT][4];
            for (int j = 0; j < NT; j++)
                for (int e = 0; e < 4; e++) i1[j][e] = 0;
#pragma unroll
            for (int G = 0; G < 8; G++) {
                int h = G >> 2, r = G & 3, shL = 4 * (r >> 1), shH = 2 * r;
#pragma unroll
                for (int sub = 0; sub < 2; sub++) {
                    int i = 16 * sub + 4 * t, ql = 64 * h + 32 * (r & 1) + i, qh = 128 + 32 * h + i;
                    u32 a[2] = {(u32)kt_minus32(((kt_load4_a2(ba + ql) >> shL) & 0x0F0F0F0Fu) |
                                                (((kt_load4_a2(ba + qh) >> shH) & 0x03030303u) << 4)),
                                (u32)kt_minus32(((kt_load4_a2(bb + ql) >> shL) & 0x0F0F0F0Fu) |
                                                (((kt_load4_a2(bb + qh) >> shH) & 0x03030303u) << 4))};
                    int scA = ((const i8*)(ba + 192))[2 * G + sub], scB = ((const i8*)(bb + 192))[2 * G + sub];
#pragma unroll
                    for (int j = 0; j < NT; j++) {
                        u32 b[1] = {*(const u32*)(sx + (8 * j + g) * KT_MMQB6_XROW + G * 32 + i)};
                        int c[4] = {0, 0, 0, 0};
                        KT_MMA_K16(c, a, b);
                        i1[j][0] += scA * c[0];
                        i1[j][1] += scA * c[1];
                        i1[j][2] += scB * c[2];
                        i1[j][3] += scB * c[3];
                    }
                }
            }
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int jj = 0; jj < 2; jj++) {
                    float xdt = sd[8 * j + 2 * t + jj];
                    acc[j][jj] = __fadd_rn(acc[j][jj], kt_part_q6_K(xdt, dA, i1[j][jj]));
                    acc[j][2 + jj] = __fadd_rn(acc[j][2 + jj], kt_part_q6_K(xdt, dB, i1[j][2 + jj]));
                }
        }
        if (tile < tiles) {
            float* y = tl.y[m];
            int rows = tl.rows[m];
            for (int j = 0; j < NT; j++)
                for (int e = 0; e < 4; e++) {
                    int r = r0 + g + 8 * (e >> 1), tok = t0 + 8 * j + 2 * t + (e & 1);
                    if (r < rows && tok < n) y[(i64)tok * rows + r] = acc[j][e];
                }
        }
    }
    kt_cp_async_wait<0>();
}

#define KT_MMQ_BLOCK_Q6K(nt) \
extern "C" __global__ void __launch_bounds__(32 * KT_MMQB_WARPS, 2) mmq_block_q6_K_##nt(const u8* W0, const u8* W1, \
        const u8* W2, i64 rowBytes, int rows0, int rows1, int rows2, int cols, const i8* xq, const float* xd, \
        const int*, float* y0, float* y1, float* y2, int n) { KT_PDL_WAIT(); \
    KtTiles16 tl(W0, W1, W2, y0, y1, y2, rows0, rows1, rows2); \
    kt_mmq_block_q6_K<nt, KT_MMQB6_DEPTH>(tl, rowBytes, cols, xq, xd, n); \
}
KT_MMQ_BLOCK_Q6K(1)
KT_MMQ_BLOCK_Q6K(2)
KT_MMQ_BLOCK_Q6K(4)

// ---- f32-activation matmuls (`.f32Activations`: the MLP's down projection) on the tf32 tensor cores ----
//
// f32 semantics on the tf32 tensor cores: within a 32-group a Q4_K weight is d1·q − m1 (q 0..15, d1 = d·scale,
// m1 = dmin·min), so the group's dot product is d1·Σq·x − m1·Σx. The 4-bit q are exact tf32 values; each input
// splits into hi = tf32(x) and lo = tf32(x − hi), so Σq·x = Σq·lo + Σq·hi comes from one mma chain from zero per
// group (relative error ~2^-22; short chains keep the tensor cores' truncating accumulation small); Σx of each group
// is summed once by split_tf32 (a fixed butterfly). The group results are added to the output in order with rounding adds, and the K
// splits (`splitSB` super-blocks each, fixed by the shape alone) in order by mmf_reduce: every token count gives
// each output the same bits (batch invariance). The k order inside a group is permuted as in mmq_q4_K: in
// k8-chunk c lane t's slots t and t + 4 are elements 8t + 2c and 8t + 2c + 1 (one 8-byte load of quants a lane).

// The inputs split for it: hi and lo tf32 bit patterns (as floats) and each 32-group's sum (a warp per group, lane k
// element k, summed by the fixed butterfly of kt_warp_sum). Grid-stride over the n · cols / 32 groups, 128 threads.
__device__ __forceinline__ void kt_split_tf32_lane(float v, float* hi, float* lo, float* sums, i64 gi, int lane) {
    u32 h = kt_tf32(v);
    hi[gi * 32 + lane] = __uint_as_float(h);
    lo[gi * 32 + lane] = __uint_as_float(kt_tf32(v - __uint_as_float(h)));
    float s = kt_warp_sum(v);
    if (lane == 0) sums[gi] = s;
}

extern "C" __global__ void split_tf32(const float* x, float* hi, float* lo, float* sums, i64 groups) { KT_PDL_WAIT();
    int lane = threadIdx.x & 31;
    i64 warps = (i64)gridDim.x * (blockDim.x >> 5);
    for (i64 gi = blockIdx.x * (i64)(blockDim.x >> 5) + (threadIdx.x >> 5); gi < groups; gi += warps)
        kt_split_tf32_lane(x[gi * 32 + lane], hi, lo, sums, gi, lane);
}

// g = silu(g)·u (gated_silu's arithmetic) and g split as split_tf32 splits it, in one pass: a warp per 32-group.
extern "C" __global__ void gated_silu_split(float* g, const float* u, float* hi, float* lo, float* sums, i64 groups) { KT_PDL_WAIT();
    int lane = threadIdx.x & 31;
    i64 warps = (i64)gridDim.x * (blockDim.x >> 5);
    for (i64 gi = blockIdx.x * (i64)(blockDim.x >> 5) + (threadIdx.x >> 5); gi < groups; gi += warps) {
        i64 i = gi * 32 + lane;
        float x = g[i];
        float v = x / (1.0f + expf(-x)) * u[i];
        g[i] = v;
        kt_split_tf32_lane(v, hi, lo, sums, gi, lane);
    }
}

// q (byte j of w, 0..255) as an exact float: the byte under the exponent of 2^23, minus 2^23.
__device__ __forceinline__ u32 kt_byte_float(u32 w, int j) {
    return __float_as_uint(__uint_as_float(__byte_perm(w, 0x4B000000u, 0x7650u + j)) - 8388608.0f);
}

// A token position's input row: itself, or order[pos] (routed experts grouped by expert).
__device__ __forceinline__ int kt_pos_row(const int* order, int pos) { return order ? order[pos] : pos; }

// One format's part of the split-tf32 matmul: `add<NT>` adds super-block sb of weight rows rowA (this lane's row g)
// and rowB (g + 8) times tokens t0 .. tEnd into acc, in the format's fixed order.
struct KtMmfQ4K {
    template <int NT>
    __device__ __forceinline__ static void add(const u8* rowA, const u8* rowB, int sb, int cols, const float* xhi,
                                               const float* xlo, const float* xsum, int t0, int tEnd, int g, int t,
                                               float (*acc)[4], const int* order = nullptr) {
        addFrom<NT>(rowA, rowB, sb, xhi, xlo, xsum, cols, (i64)sb * 256, cols / 32, sb * 8, t0, tEnd, g, t, acc, order);
    }
    // The same with the inputs of super-block sb at token row stride xStride from element xOff (their group sums
    // at stride sStride from sOff): the global tensors, or a block staged in shared memory (mmf_tile_q4_K).
    template <int NT>
    __device__ __forceinline__ static void addFrom(const u8* rowA, const u8* rowB, int sb, const float* xhi,
                                                   const float* xlo, const float* xsum, int xStride, i64 xOff,
                                                   int sStride, int sOff, int t0, int tEnd, int g, int t,
                                                   float (*acc)[4], const int* order) {
        compute<NT>(load(rowA, rowB, sb, t), xhi, xlo, xsum, xStride, xOff, sStride, sOff, t0, tEnd, g, t, acc, order);
    }
    // Super-block sb's bytes of rows g (A) and g + 8 (B) that lane t uses: the headers and its 8 bytes of each
    // 32-byte quant row.
    struct Regs {
        uint4 hA, hB;
        uint2 qa[4], qb[4];
    };
    __device__ __forceinline__ static Regs load(const u8* rowA, const u8* rowB, int sb, int t) {
        Regs r;
        r.hA = *(const uint4*)(rowA + (i64)sb * 144);
        r.hB = *(const uint4*)(rowB + (i64)sb * 144);
        for (int p = 0; p < 4; p++) {
            r.qa[p] = *(const uint2*)(rowA + (i64)sb * 144 + 16 + 32 * p + 8 * t);
            r.qb[p] = *(const uint2*)(rowB + (i64)sb * 144 + 16 + 32 * p + 8 * t);
        }
        return r;
    }
    // ONE: a single token (t0 = 0, tEnd = 1): only its column's outputs (e = 0, 2) are added up.
    template <int NT, bool ONE = false>
    __device__ __forceinline__ static void compute(const Regs& r, const float* xhi, const float* xlo, const float* xsum,
                                                   int xStride, i64 xOff, int sStride, int sOff, int t0, int tEnd,
                                                   int g, int t, float (*acc)[4], const int* order) {
        const uint2* qa = r.qa;
        const uint2* qb = r.qb;
        const u8* ha = (const u8*)&r.hA;
        const u8* hb = (const u8*)&r.hB;
        float dA = kt_f16(ha), mA = kt_f16(ha + 2), dB = kt_f16(hb), mB = kt_f16(hb + 2);
#pragma unroll
        for (int G = 0; G < 8; G++) {
            int p = G >> 1, sh = 4 * (G & 1), scA, mnA, scB, mnB;
            kt_scale_min_k4(G, ha + 4, &scA, &mnA);
            kt_scale_min_k4(G, hb + 4, &scB, &mnB);
            // Rows g (a) and g + 8 (b): the lane's 8 nibbles of the group, bytes 0..3 in x and 4..7 in y.
            u32 ax = (qa[p].x >> sh) & 0x0F0F0F0Fu, ay = (qa[p].y >> sh) & 0x0F0F0F0Fu;
            u32 bx = (qb[p].x >> sh) & 0x0F0F0F0Fu, by = (qb[p].y >> sh) & 0x0F0F0F0Fu;
            float c[NT][4];
            for (int j = 0; j < NT; j++)
                for (int e = 0; e < 4; e++) c[j][e] = 0.0f;
            for (int ch = 0; ch < 4; ch++) {
                u32 wA = ch < 2 ? ax : ay, wB = ch < 2 ? bx : by;
                int j0 = (2 * ch) & 3;
                u32 a[4] = {kt_byte_float(wA, j0), kt_byte_float(wB, j0), kt_byte_float(wA, j0 + 1), kt_byte_float(wB, j0 + 1)};
                for (int j = 0; j < NT; j++) {
                    int tok = kt_pos_row(order, min(t0 + 8 * j + g, tEnd - 1));
                    i64 at = (i64)tok * xStride + xOff + G * 32 + 8 * t + 2 * ch;
                    float2 h2 = *(const float2*)(xhi + at), l2 = *(const float2*)(xlo + at);
                    u32 bHi[2] = {__float_as_uint(h2.x), __float_as_uint(h2.y)};
                    u32 bLo[2] = {__float_as_uint(l2.x), __float_as_uint(l2.y)};
                    KT_MMA_TF32(c[j], a, bLo);
                    KT_MMA_TF32(c[j], a, bHi);
                }
            }
            float d1a = dA * (float)scA, m1a = mA * (float)mnA, d1b = dB * (float)scB, m1b = mB * (float)mnB;
            for (int j = 0; j < NT; j++) {
                for (int e = 0; e < 4; e += ONE ? 2 : 1) {
                    int tok = kt_pos_row(order, min(t0 + 8 * j + 2 * t + (e & 1), tEnd - 1));
                    float sx = xsum[(i64)tok * sStride + sOff + G];
                    float d1 = e < 2 ? d1a : d1b, m1 = e < 2 ? m1a : m1b;
                    float part = __fsub_rn(__fmul_rn(d1, c[j][e]), __fmul_rn(m1, sx));
                    acc[j][e] = __fadd_rn(acc[j][e], part);
                }
            }
        }
    }
};

// Q6_K rows: { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }, element e = 128h + 32r + i has the 6-bit q from
// ql[64h + 32(r & 1) + i] (nibble r / 2) and qh[32h + i] (bits 2r), weight d·scale[e / 16]·(q − 32). The q − 32 are
// exact tf32 values; each 16-element sub-group's Σ(q − 32)·x is one mma chain from zero (its k8-chunks lie inside
// it: chunk c of a 32-group holds elements 16·(c / 2) + 8·(c % 2) + 2t, +1 in lane t's slots t, t + 4), and
// d·scale·Σ is added to the output in sub-group order.
struct KtMmfQ6K {
    template <int NT>
    __device__ __forceinline__ static void add(const u8* rowA, const u8* rowB, int sb, int cols, const float* xhi,
                                               const float* xlo, const float*, int t0, int tEnd, int g, int t,
                                               float (*acc)[4], const int* order = nullptr) {
        const u8* ba = rowA + (i64)sb * 210;
        const u8* bb = rowB + (i64)sb * 210;
        float dA = kt_f16(ba + 208), dB = kt_f16(bb + 208);
#pragma unroll
        for (int G = 0; G < 8; G++) {
            int h = G >> 2, r = G & 3, qlOff = 64 * h + 32 * (r & 1), qhOff = 128 + 32 * h;
            int shL = 4 * (r >> 1), shH = 2 * r;
            for (int sub = 0; sub < 2; sub++) {
                float c[NT][4];
                for (int j = 0; j < NT; j++)
                    for (int e = 0; e < 4; e++) c[j][e] = 0.0f;
                for (int half = 0; half < 2; half++) {
                    int i = 16 * sub + 8 * half + 2 * t;  // this lane's two elements of the chunk
                    u32 la = *(const u16*)(ba + qlOff + i), ha = *(const u16*)(ba + qhOff + i);
                    u32 lb = *(const u16*)(bb + qlOff + i), hb = *(const u16*)(bb + qhOff + i);
                    u32 a[4];
                    for (int k = 0; k < 2; k++) {
                        int qa = (int)(((la >> (8 * k + shL)) & 15) | (((ha >> (8 * k + shH)) & 3) << 4)) - 32;
                        int qb = (int)(((lb >> (8 * k + shL)) & 15) | (((hb >> (8 * k + shH)) & 3) << 4)) - 32;
                        a[2 * k] = __float_as_uint((float)qa);
                        a[2 * k + 1] = __float_as_uint((float)qb);
                    }
                    for (int j = 0; j < NT; j++) {
                        int tok = kt_pos_row(order, min(t0 + 8 * j + g, tEnd - 1));
                        i64 at = (i64)tok * cols + (i64)sb * 256 + G * 32 + i;
                        float2 h2 = *(const float2*)(xhi + at), l2 = *(const float2*)(xlo + at);
                        u32 bHi[2] = {__float_as_uint(h2.x), __float_as_uint(h2.y)};
                        u32 bLo[2] = {__float_as_uint(l2.x), __float_as_uint(l2.y)};
                        KT_MMA_TF32(c[j], a, bLo);
                        KT_MMA_TF32(c[j], a, bHi);
                    }
                }
                int js = 2 * G + sub;
                float da = __fmul_rn(dA, (float)((const i8*)(ba + 192))[js]);
                float db = __fmul_rn(dB, (float)((const i8*)(bb + 192))[js]);
                for (int j = 0; j < NT; j++)
                    for (int e = 0; e < 4; e++)
                        acc[j][e] = __fadd_rn(acc[j][e], __fmul_rn(e < 2 ? da : db, c[j][e]));
            }
        }
    }
};

// Rows 16·tile .. +16 (per warp), tokens t0 .. min(t0 + 8·NT, tEnd), super-blocks split·splitSB .. +splitSB. Warps of a
// block take consecutive (tile, split) pairs: w = blockIdx.x·4 + warp, tile = w % tiles, split = w / tiles. Writes
// y directly when there is one split, else part[split][token][row].
template <class F, int NT>
__device__ __forceinline__ void kt_mmf(const u8* W, i64 rowBytes, int rows, int cols, const float* xhi,
                                       const float* xlo, const float* xsum, float* out, int n, int splitSB, int t0,
                                       int tEnd) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    int tiles = (rows + 15) / 16, nsb = cols / 256, splits = (nsb + splitSB - 1) / splitSB;
    int w = blockIdx.x * 4 + warp;
    if (w >= tiles * splits) return;
    int tile = w % tiles, split = w / tiles;
    int sb0 = split * splitSB, sb1 = min(nsb, sb0 + splitSB);
    const u8* rowA = W + (i64)min(tile * 16 + g, rows - 1) * rowBytes;
    const u8* rowB = W + (i64)min(tile * 16 + g + 8, rows - 1) * rowBytes;
    float acc[NT][4];
    for (int j = 0; j < NT; j++)
        for (int e = 0; e < 4; e++) acc[j][e] = 0.0f;
    for (int sb = sb0; sb < sb1; sb++) F::template add<NT>(rowA, rowB, sb, cols, xhi, xlo, xsum, t0, tEnd, g, t, acc);
    for (int j = 0; j < NT; j++)
        for (int e = 0; e < 4; e++) {
            int r = tile * 16 + g + 8 * (e >> 1), tok = t0 + 8 * j + 2 * t + (e & 1);
            if (r < rows && tok < tEnd) {
                if (splits == 1) out[(i64)tok * rows + r] = acc[j][e];
                else out[((i64)split * n + tok) * rows + r] = acc[j][e];
            }
        }
}

// mmf_q4_K_1 for one token (batch-1 decode), with its arithmetic (the bits of kt_mmf<KtMmfQ4K, 1> at n = 1):
// persistent warps walk the (tile, split) items of mmf_q4_K_1 (item w + k · all warps), loading each super-block's
// weights while the one before computes (across items too), so a warp always has a load in flight and the grid
// is one wave. With several K splits the warp that finishes a tile's last split (counters[tile], zero between
// launches) adds the tile's split results in order into y, as mmf_reduce would: no reduction launch. Grid
// (resident blocks), 128 threads; the arguments of mmf_q4_K_1 (n = 1; `out` the splits' results) and y, counters.
extern "C" __global__ void __launch_bounds__(128) mmf_q4_K_one(const u8* W, i64 rowBytes, int rows, int cols,
        const float* xhi, const float* xlo, const float* xsum, float* out, int n, int splitSB, float* y,
        int* counters) { KT_PDL_WAIT();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    int tiles = (rows + 15) / 16, nsb = cols / 256, splits = (nsb + splitSB - 1) / splitSB, items = tiles * splits;
    int stride = gridDim.x * 4;
    int w = blockIdx.x * 4 + warp;
    if (w >= items) return;
    // Item v's rows g and g + 8 and its first and end super-blocks.
    auto rowsOf = [&](int v, const u8** a, const u8** b, int* s0, int* s1) {
        int tile = v % tiles, split = v / tiles;
        *a = W + (i64)min(tile * 16 + g, rows - 1) * rowBytes;
        *b = W + (i64)min(tile * 16 + g + 8, rows - 1) * rowBytes;
        *s0 = split * splitSB;
        *s1 = min(nsb, *s0 + splitSB);
    };
    const u8 *rowA, *rowB;
    int sb0, sb1;
    rowsOf(w, &rowA, &rowB, &sb0, &sb1);
    KtMmfQ4K::Regs cur = KtMmfQ4K::load(rowA, rowB, sb0, t);
    for (;;) {
        float acc[1][4] = {{0.0f, 0.0f, 0.0f, 0.0f}};
        int wn = w + stride;
        const u8 *nA = rowA, *nB = rowB;
        int n0 = 0, n1 = 0;
        if (wn < items) rowsOf(wn, &nA, &nB, &n0, &n1);
        for (int sb = sb0; sb < sb1; sb++) {
            KtMmfQ4K::Regs next = cur;
            if (sb + 1 < sb1) next = KtMmfQ4K::load(rowA, rowB, sb + 1, t);
            else if (wn < items) next = KtMmfQ4K::load(nA, nB, n0, t);
            KtMmfQ4K::compute<1, true>(cur, xhi, xlo, xsum, cols, (i64)sb * 256, cols / 32, sb * 8, 0, 1, g, t, acc, nullptr);
            cur = next;
        }
        int tile = w % tiles, split = w / tiles;
        if (t == 0) {
            for (int e = 0; e < 4; e += 2) {
                int r = tile * 16 + g + 8 * (e >> 1);
                if (r < rows) {
                    if (splits == 1) y[r] = acc[0][e];
                    else out[(i64)split * rows + r] = acc[0][e];
                }
            }
        }
        if (splits > 1) {
            // Publish this split, count it; the tile's last split sums them all in split order (mmf_reduce's bits).
            __threadfence();
            __syncwarp();
            int last = 0;
            if (lane == 0) last = atomicAdd(counters + tile, 1) == splits - 1;
            if (__shfl_sync(0xffffffffu, last, 0)) {
                __threadfence();
                int r = tile * 16 + lane;
                if (lane < 16 && r < rows) {
                    // (unrolled by four: four loads in flight before their adds, not one load per add)
                    float sum = 0.0f;
#pragma unroll 4
                    for (int k = 0; k < splits; k++) sum = __fadd_rn(sum, __ldcg(out + (i64)k * rows + r));
                    y[r] = sum;
                }
                if (lane == 0) counters[tile] = 0;
            }
        }
        if (wn >= items) break;
        w = wn; rowA = nA; rowB = nB; sb0 = n0; sb1 = n1;
    }
}

// Batch-1 `.f32Activations` on the FP32 cores (the default at one token; `--batch-invariant` keeps mmf_q4_K_one,
// whose tf32 bits every token count shares): the tensor-core form computes 8 token columns to use one and was
// latency-bound at 0.9 TB/s. Here R = 2 rows a warp, as kt_mv_q4_K: per step the warp covers 4 super-blocks, 8
// lanes each, every lane one 16-byte load of each row's quants (the low and high nibbles of 16 elements of groups
// 2p and 2p + 1), so the lane's 32 f32 inputs serve both rows; the loads of the next step are in flight while one
// computes. Per half group: Σq·x in f32 FMAs (q exact through kt_byte_float), d·sc·Σq·x; the group's −dmin·m·Σx
// once, by the lane with its first half, from split_tf32's group sums; a fixed warp sum per row.
template <int R>
__device__ __forceinline__ void kt_mv_q4_K_f32(const u8* const* rowp, int cols, const float* x, const float* xsum,
                                               float* acc) {
    int lane = threadIdx.x & 31;
    int nsb = cols / 256, part = lane & 7, p = part >> 1, half = part & 1, l0 = 16 * half;
    uint4 hd[R], qs[R];
    auto load = [&](int base, uint4* h, uint4* q) {
        int sb = min(base + (lane >> 3), nsb - 1);
        for (int i = 0; i < R; i++) {
            h[i] = *(const uint4*)(rowp[i] + (i64)sb * 144);
            q[i] = *(const uint4*)(rowp[i] + (i64)sb * 144 + 16 + 16 * part);
        }
    };
    load(0, hd, qs);
    KT_PDL_WAIT();  // the weights are in flight; the inputs come from the previous kernel
    for (int base = 0; base < nsb; base += 4) {
        uint4 hn[R], qn[R];
        if (base + 4 < nsb) load(base + 4, hn, qn);
        int sb = base + (lane >> 3);
        if (sb < nsb) {
            int eLo = sb * 256 + 64 * p + l0, eHi = eLo + 32;
            const float4* xa = (const float4*)(x + eLo);
            const float4* xb = (const float4*)(x + eHi);
            float4 a[4], b[4];
            for (int w = 0; w < 4; w++) { a[w] = xa[w]; b[w] = xb[w]; }
            float sxLo = half == 0 ? xsum[eLo / 32] : 0.0f, sxHi = half == 0 ? xsum[eHi / 32] : 0.0f;
            for (int i = 0; i < R; i++) {
                const u8* hb = (const u8*)&hd[i];
                float d = kt_f16(hb), dmin = kt_f16(hb + 2);
                int scLo, mLo, scHi, mHi;
                kt_scale_min_k4(2 * p, hb + 4, &scLo, &mLo);
                kt_scale_min_k4(2 * p + 1, hb + 4, &scHi, &mHi);
                u32 q4[4] = {qs[i].x, qs[i].y, qs[i].z, qs[i].w};
                float sLo = 0.0f, sHi = 0.0f;
                for (int w = 0; w < 4; w++) {
                    u32 lo = q4[w] & 0x0F0F0F0Fu, hi = (q4[w] >> 4) & 0x0F0F0F0Fu;
                    sLo = __fmaf_rn(__uint_as_float(kt_byte_float(lo, 0)), a[w].x, sLo);
                    sLo = __fmaf_rn(__uint_as_float(kt_byte_float(lo, 1)), a[w].y, sLo);
                    sLo = __fmaf_rn(__uint_as_float(kt_byte_float(lo, 2)), a[w].z, sLo);
                    sLo = __fmaf_rn(__uint_as_float(kt_byte_float(lo, 3)), a[w].w, sLo);
                    sHi = __fmaf_rn(__uint_as_float(kt_byte_float(hi, 0)), b[w].x, sHi);
                    sHi = __fmaf_rn(__uint_as_float(kt_byte_float(hi, 1)), b[w].y, sHi);
                    sHi = __fmaf_rn(__uint_as_float(kt_byte_float(hi, 2)), b[w].z, sHi);
                    sHi = __fmaf_rn(__uint_as_float(kt_byte_float(hi, 3)), b[w].w, sHi);
                }
                float pt = __fmul_rn(d, __fmaf_rn((float)scLo, sLo, __fmul_rn((float)scHi, sHi)));
                float mn = __fmul_rn(dmin, __fmaf_rn((float)mLo, sxLo, __fmul_rn((float)mHi, sxHi)));
                acc[i] = __fadd_rn(acc[i], __fsub_rn(pt, mn));
            }
        }
        if (base + 4 < nsb)
            for (int i = 0; i < R; i++) { hd[i] = hn[i]; qs[i] = qn[i]; }
    }
    for (int i = 0; i < R; i++) acc[i] = kt_warp_sum(acc[i]);
}

// y[r] = W[r] · x for one token, 2 rows a warp; x the f32 input and xsum its 32-group sums (split_tf32's);
// grid ceil(rows / 8), 128 threads. Rows 16-byte aligned (rowBytes % 16 == 0), cols % 256 == 0. The _lb forms
// are the same code held to 64 registers (8 blocks an SM instead of 5: measured against each other).
#define KT_MV_F32_ONE(suffix, BOUNDS) \
extern "C" __global__ void __launch_bounds__ BOUNDS matvec_q4_K_f32_1##suffix(const u8* W, i64 rowBytes, int rows, \
        int cols, const float* x, const float* xsum, float* y) { /* KT_PDL_WAIT in the body */ \
    int r0 = (blockIdx.x * 4 + (threadIdx.x >> 5)) * 2; \
    if (r0 >= rows) return; \
    const u8* rowp[2] = {W + (i64)r0 * rowBytes, W + (i64)min(r0 + 1, rows - 1) * rowBytes}; \
    float acc[2] = {0.0f, 0.0f}; \
    kt_mv_q4_K_f32<2>(rowp, cols, x, xsum, acc); \
    if ((threadIdx.x & 31) == 0) { \
        y[r0] = acc[0]; \
        if (r0 + 1 < rows) y[r0 + 1] = acc[1]; \
    } \
} \
/* Routed experts at one token: pair p's input row p (x, xsum) times expert ids[p]'s rows into y[p, ..]; */ \
/* grid (ceil(rows / 8), pairs), 128 threads. */ \
extern "C" __global__ void __launch_bounds__ BOUNDS matvec_experts_q4_K_f32_1##suffix(const u8* W, i64 rowBytes, \
        i64 matrixBytes, int rows, int cols, const float* x, const float* xsum, const int* ids, float* y) { KT_PDL_WAIT(); \
    int p = blockIdx.y; \
    int r0 = (blockIdx.x * 4 + (threadIdx.x >> 5)) * 2; \
    if (r0 >= rows) return; \
    const u8* M = W + (i64)ids[p] * matrixBytes; \
    const u8* rowp[2] = {M + (i64)r0 * rowBytes, M + (i64)min(r0 + 1, rows - 1) * rowBytes}; \
    float acc[2] = {0.0f, 0.0f}; \
    kt_mv_q4_K_f32<2>(rowp, cols, x + (i64)p * cols, xsum + (i64)p * (cols / 32), acc); \
    if ((threadIdx.x & 31) == 0) { \
        y[(i64)p * rows + r0] = acc[0]; \
        if (r0 + 1 < rows) y[(i64)p * rows + r0 + 1] = acc[1]; \
    } \
}
KT_MV_F32_ONE(, (128))
KT_MV_F32_ONE(_lb, (128, 8))
// The routed experts' form with 4 rows a warp (the default; `KTRANSFORMERS_CUDA_F32_ONE_ROWS=2` the form above): their
// rows are often one step (768 columns for Qwen3-30B-A3B), so a warp's inputs (3 KB) outweighed its two rows' weights
// (864 bytes); each row's arithmetic is that of the 2-row form (same bits). Grid (ceil(rows / 16), pairs), 128 threads.
extern "C" __global__ void __launch_bounds__(128) matvec_experts_q4_K_f32_r4(const u8* W, i64 rowBytes,
        i64 matrixBytes, int rows, int cols, const float* x, const float* xsum, const int* ids, float* y) { KT_PDL_WAIT();
    int p = blockIdx.y;
    int r0 = (blockIdx.x * 4 + (threadIdx.x >> 5)) * 4;
    if (r0 >= rows) return;
    const u8* M = W + (i64)ids[p] * matrixBytes;
    const u8* rowp[4];
    for (int i = 0; i < 4; i++) rowp[i] = M + (i64)min(r0 + i, rows - 1) * rowBytes;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    kt_mv_q4_K_f32<4>(rowp, cols, x + (i64)p * cols, xsum + (i64)p * (cols / 32), acc);
    if ((threadIdx.x & 31) == 0)
        for (int i = 0; i < 4; i++)
            if (r0 + i < rows) y[(i64)p * rows + r0 + i] = acc[i];
}

// The same down projection at one token with the experts' weighted sum in one launch (no moe_combine after it): warp
// j of a block takes pair j (expert ids[j], input row j) for the block's 4 rows with matvec_experts_q4_K_f32_r4's
// arithmetic, and the block's first threads add the pairs' rows in choice order as moe_combine adds them:
// out[r] = (store ? 0 : out[r]) + Σ_j weights[j]·y_j[r]. Grid ceil(rows / 4), 32·topK threads (topK ≤ 8). The _lb
// form is held to 128 registers (2 blocks of 8 warps an SM instead of 1, some spills): measured against each other.
#define KT_MV_F32_COMBINE(suffix, BOUNDS) \
extern "C" __global__ void __launch_bounds__ BOUNDS matvec_experts_q4_K_f32_combine##suffix(const u8* W, i64 rowBytes, \
        i64 matrixBytes, int rows, int cols, const float* x, const float* xsum, const int* ids, const float* weights, \
        float* out, int store) { KT_PDL_WAIT(); \
    __shared__ float ys[8][4]; \
    int p = threadIdx.x >> 5, topK = blockDim.x >> 5, r0 = blockIdx.x * 4; \
    const u8* M = W + (i64)ids[p] * matrixBytes; \
    const u8* rowp[4]; \
    for (int i = 0; i < 4; i++) rowp[i] = M + (i64)min(r0 + i, rows - 1) * rowBytes; \
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f}; \
    kt_mv_q4_K_f32<4>(rowp, cols, x + (i64)p * cols, xsum + (i64)p * (cols / 32), acc); \
    if ((threadIdx.x & 31) == 0) \
        for (int i = 0; i < 4; i++) ys[p][i] = acc[i]; \
    __syncthreads(); \
    int r = r0 + threadIdx.x; \
    if (threadIdx.x < 4 && r < rows) { \
        float s = store ? 0.0f : out[r]; \
        for (int j = 0; j < topK; j++) s = __fmaf_rn(weights[j], ys[j][threadIdx.x], s); \
        out[r] = s; \
    } \
}
KT_MV_F32_COMBINE(, (256))
KT_MV_F32_COMBINE(_lb, (256, 2))

// A coalesced, K-split form of the same product (`KTRANSFORMERS_CUDA_F32_ONE=2`, for measuring against the one
// above; its own bits). Nsight Compute on matvec_q4_K_f32_1 (4096 × 14336, H100): 0.78 waves (512 blocks), L1 at
// 72% with 89% hits, DRAM at 34%: each lane's float4 inputs lie 64 bytes apart, so a warp's input load touches 32
// sectors for 16 bytes each, and two rows a warp leave too few warps. Here lane l takes elements 4l .. 4l + 3 of
// each 128-element chunk (a warp's float4 input load is 512 contiguous bytes; its weights one 4-byte word of
// quants a row), 4 chunks a step; the WARPS warps of a block split the row's steps (warp w: steps w, w + WARPS,
// ...) and add their sums in warp order through shared memory; 2 rows a block. Per chunk: Σq·x over the lane's 4
// elements in f32 FMAs, times d·sc; the group's −dmin·m·Σx by its first lane (split_tf32's group sums).
template <int WARPS>
__device__ __forceinline__ void kt_mv_q4_K_f32c(const u8* const* rowp, int cols, const float* x, const float* xsum,
                                                float* y0, float* y1) {
    __shared__ float red[WARPS][2];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int chunks = cols / 128, steps = (chunks + 3) / 4;
    int sub = lane & 7, half = (lane >> 3) & 1, hiHalf = lane >> 4;  // word of 8, nibble, which 16 lanes
    float acc[2] = {0.0f, 0.0f};
    for (int st = warp; st < steps; st += WARPS) {
        float4 xv[4];
        u32 q[2][4];
        uint4 hd[2][4];
        for (int k = 0; k < 4; k++) {
            int c = min(4 * st + k, chunks - 1), sb = c >> 1, h = c & 1, p = 2 * h + hiHalf;
            xv[k] = *(const float4*)(x + (i64)c * 128 + 4 * lane);
            for (int r = 0; r < 2; r++) {
                hd[r][k] = *(const uint4*)(rowp[r] + (i64)sb * 144);
                q[r][k] = *(const u32*)(rowp[r] + (i64)sb * 144 + 16 + 32 * p + 4 * sub);
            }
        }
        for (int k = 0; k < 4; k++) {
            int c = 4 * st + k;
            if (c >= chunks) break;
            int j = 4 * (c & 1) + (lane >> 3);  // the lane's group in its super-block
            float sx = sub == 0 ? xsum[(i64)c * 4 + (lane >> 3)] : 0.0f;
            for (int r = 0; r < 2; r++) {
                u32 w = (q[r][k] >> (4 * half)) & 0x0F0F0F0Fu;
                float s = __fmul_rn(__uint_as_float(kt_byte_float(w, 0)), xv[k].x);
                s = __fmaf_rn(__uint_as_float(kt_byte_float(w, 1)), xv[k].y, s);
                s = __fmaf_rn(__uint_as_float(kt_byte_float(w, 2)), xv[k].z, s);
                s = __fmaf_rn(__uint_as_float(kt_byte_float(w, 3)), xv[k].w, s);
                int sc, m;
                kt_scale_min_k4_dyn(j, hd[r][k], &sc, &m);
                float d = kt_half_to_float((u16)(hd[r][k].x & 0xFFFFu)), dmin = kt_half_to_float((u16)(hd[r][k].x >> 16));
                float part = __fmul_rn(__fmul_rn(d, (float)sc), s);
                if (sub == 0) part = __fsub_rn(part, __fmul_rn(__fmul_rn(dmin, (float)m), sx));
                acc[r] = __fadd_rn(acc[r], part);
            }
        }
    }
    for (int r = 0; r < 2; r++) {
        float v = kt_warp_sum(acc[r]);
        if (lane == 0) red[warp][r] = v;
    }
    __syncthreads();
    if (threadIdx.x < 2) {
        float v = red[0][threadIdx.x];
        for (int w = 1; w < WARPS; w++) v = __fadd_rn(v, red[w][threadIdx.x]);
        float* yr = threadIdx.x == 0 ? y0 : y1;
        if (yr) *yr = v;
    }
}
// Grid ceil(rows / 2), 256 threads (8 warps over K); rows 16-byte aligned, cols % 256 == 0.
extern "C" __global__ void __launch_bounds__(256) matvec_q4_K_f32_1c(const u8* W, i64 rowBytes, int rows, int cols,
        const float* x, const float* xsum, float* y) { KT_PDL_WAIT();
    int r0 = 2 * blockIdx.x;
    const u8* rowp[2] = {W + (i64)r0 * rowBytes, W + (i64)min(r0 + 1, rows - 1) * rowBytes};
    kt_mv_q4_K_f32c<8>(rowp, cols, x, xsum, y + r0, r0 + 1 < rows ? y + r0 + 1 : nullptr);
}
// Routed experts at one token (2 warps over K: expert rows are short); grid (ceil(rows / 2), pairs), 64 threads.
extern "C" __global__ void __launch_bounds__(64) matvec_experts_q4_K_f32_1c(const u8* W, i64 rowBytes, i64 matrixBytes,
        int rows, int cols, const float* x, const float* xsum, const int* ids, float* y) { KT_PDL_WAIT();
    int p = blockIdx.y, r0 = 2 * blockIdx.x;
    const u8* M = W + (i64)ids[p] * matrixBytes;
    const u8* rowp[2] = {M + (i64)r0 * rowBytes, M + (i64)min(r0 + 1, rows - 1) * rowBytes};
    float* yp = y + (i64)p * rows;
    kt_mv_q4_K_f32c<2>(rowp, cols, x + (i64)p * cols, xsum + (i64)p * (cols / 32), yp + r0,
                       r0 + 1 < rows ? yp + r0 + 1 : nullptr);
}

// The kernels of a format: mmf_<name>_1 / _4 (8 or 32 tokens a warp; grid (ceil(tiles · splits / 4),
// ceil(n / (8·NT))), 128 threads) and mmf_experts_<name> (routed experts' down projection: pair p's input row p
// times expert ids[p]'s rows into out[p, ..], or part[split][p][row] reduced by mmf_reduce with n = pairs; grid
// (ceil(tiles · splits / 4), pairs)).
#define KT_MMF_KERNELS(name, F) \
extern "C" __global__ void __launch_bounds__(128) mmf_##name##_1(const u8* W, i64 rowBytes, int rows, int cols, \
        const float* xhi, const float* xlo, const float* xsum, float* out, int n, int splitSB) { KT_PDL_WAIT(); \
    kt_mmf<F, 1>(W, rowBytes, rows, cols, xhi, xlo, xsum, out, n, splitSB, blockIdx.y * 8, n); \
} \
extern "C" __global__ void __launch_bounds__(128) mmf_##name##_4(const u8* W, i64 rowBytes, int rows, int cols, \
        const float* xhi, const float* xlo, const float* xsum, float* out, int n, int splitSB) { KT_PDL_WAIT(); \
    kt_mmf<F, 4>(W, rowBytes, rows, cols, xhi, xlo, xsum, out, n, splitSB, blockIdx.y * 32, n); \
} \
extern "C" __global__ void __launch_bounds__(128) mmf_experts_##name(const u8* W, i64 rowBytes, i64 matrixBytes, \
        int rows, int cols, const float* xhi, const float* xlo, const float* xsum, const int* ids, float* out, \
        int pairs, int splitSB) { KT_PDL_WAIT(); \
    int p = blockIdx.y; \
    kt_mmf<F, 1>(W + (i64)ids[p] * matrixBytes, rowBytes, rows, cols, xhi, xlo, xsum, out, pairs, splitSB, p, p + 1); \
}
KT_MMF_KERNELS(q4_K, KtMmfQ4K)
KT_MMF_KERNELS(q6_K, KtMmfQ6K)

// Block-tiled form of mmf_q4_K_4 (prefill): the 4 warps of a block take 64 consecutive rows (16 each) and the same
// 32 tokens and split, and per super-block the block stages those tokens' inputs (hi, lo and group sums) in shared
// memory once for all 4 warps (the other kernels read them from L2 once per warp: at prefill those reads, not the
// tensor cores, set the time). Each warp then runs KtMmfQ4K::add on the staged block as on global memory: every
// output has the bits of mmf_q4_K_1 / _4. Grid (ceil(rows / 64) · splits, ceil(n / 32)), 128 threads,
// (64 · KT_MMFT_STRIDE + 32 · KT_MMFT_STRIDE / 32) · 4 bytes of dynamic shared memory.
#define KT_MMFT_STRIDE 260  // floats per staged token row (256 + 4: fewer bank conflicts for the fragment loads)
extern "C" __global__ void __launch_bounds__(128) mmf_tile_q4_K(const u8* W, i64 rowBytes, int rows, int cols,
        const float* xhi, const float* xlo, const float* xsum, float* out, int n, int splitSB) { KT_PDL_WAIT();
    KT_DYNAMIC_SHARED(float, sHi);  // [32][KT_MMFT_STRIDE] hi, then as much lo, then [32][KT_MMFT_STRIDE / 32] sums
    float* sLo = sHi + 32 * KT_MMFT_STRIDE;
    float* sSum = sLo + 32 * KT_MMFT_STRIDE;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    int nsb = cols / 256, splits = (nsb + splitSB - 1) / splitSB, blocks64 = (rows + 63) / 64;
    int rb = blockIdx.x % blocks64, split = blockIdx.x / blocks64;
    int sb0 = split * splitSB, sb1 = min(nsb, sb0 + splitSB), t0 = blockIdx.y * 32, valid = min(32, n - t0);
    int r0 = rb * 64 + warp * 16;
    const u8* rowA = W + (i64)min(r0 + g, rows - 1) * rowBytes;
    const u8* rowB = W + (i64)min(r0 + g + 8, rows - 1) * rowBytes;
    float acc[4][4];
    for (int j = 0; j < 4; j++)
        for (int e = 0; e < 4; e++) acc[j][e] = 0.0f;
    for (int sb = sb0; sb < sb1; sb++) {
        __syncthreads();
        // 32 tokens × 256 values of hi and lo (float4 each), and 32 × 8 group sums; tokens past n repeat the last.
        for (int i = threadIdx.x; i < 32 * 64; i += 128) {
            int tk = i >> 6, c = (i & 63) * 4;
            i64 at = (i64)(t0 + min(tk, valid - 1)) * cols + (i64)sb * 256 + c;
            *(float4*)(sHi + tk * KT_MMFT_STRIDE + c) = *(const float4*)(xhi + at);
            *(float4*)(sLo + tk * KT_MMFT_STRIDE + c) = *(const float4*)(xlo + at);
        }
        for (int i = threadIdx.x; i < 32 * 8; i += 128) {
            int tk = i >> 3, G = i & 7;
            sSum[tk * (KT_MMFT_STRIDE / 32) + G] = xsum[(i64)(t0 + min(tk, valid - 1)) * (cols / 32) + sb * 8 + G];
        }
        __syncthreads();
        // The staged block as a 1-super-block "matrix" of row stride KT_MMFT_STRIDE: super-block 0, tokens 0..valid.
        KtMmfQ4K::addFrom<4>(rowA, rowB, sb, sHi, sLo, sSum, KT_MMFT_STRIDE, 0, KT_MMFT_STRIDE / 32, 0, 0, valid, g, t,
                             acc, nullptr);
    }
    for (int j = 0; j < 4; j++)
        for (int e = 0; e < 4; e++) {
            int r = r0 + g + 8 * (e >> 1), tok = t0 + 8 * j + 2 * t + (e & 1);
            if (r < rows && tok < n) {
                if (splits == 1) out[(i64)tok * rows + r] = acc[j][e];
                else out[((i64)split * n + tok) * rows + r] = acc[j][e];
            }
        }
}

// Block-staged form of mmf_stream_q4_K_1 / _4 (batched decode, 8·NT tokens a block, NT = 1 or 4): persistent blocks of KT_MMFB_WARPS
// warps walk units of KT_MMFB_WARPS consecutive 16-row tiles of one K split, a super-block per step, all warps in
// step. Per step the block copies with cp.async, KT_MMFB_DEPTH(NT) - 1 steps ahead, a stage of a ring: its tiles'
// weights (rows at a KT_MMQB_WROW-byte stride) and its 8·NT tokens' hi and lo inputs (rows of KT_MMFB_XROW floats: the 64-bit fragment
// loads of a half-warp hit distinct banks) and group sums. The streaming form read every fragment from L1, each
// load touching 8 lines: at 32 tokens those loads set its time (~0.15 TB/s of weights). Warp w computes tile
// KT_MMFB_WARPS·unit + w with KtMmfQ4K's arithmetic on the staged block: every output has the bits of mmf_q4_K_1 /
// _4 (the K splits' results reduced by mmf_reduce: summing them in the kernel, by each tile's last split as
// mmf_q4_K_one does, was measured slower at 32 tokens on an H100, 115.6 against 87.6 µs a call). Grid (blocks,
// ceil(n / (8·NT))), 32·KT_MMFB_WARPS threads, KT_MMFB_DEPTH(NT) · KtMmfbStage<NT>::bytes of dynamic shared memory;
// the arguments of mmf_q4_K_4.
#define KT_MMFB_WARPS 8
#define KT_MMFB_DEPTH(nt) ((nt) == 1 ? 4 : 2)
#define KT_MMFB_XROW 258
template <int NT>
struct KtMmfbStage {
    static constexpr int tokens = 8 * NT;
    static constexpr int wBytes = KT_MMFB_WARPS * 16 * KT_MMQB_WROW;
    static constexpr int xBytes = tokens * KT_MMFB_XROW * 4;
    static constexpr int sBytes = tokens * 8 * 4;
    static constexpr int bytes = wBytes + 2 * xBytes + sBytes;
};
#define KT_MMFB_PIECES ((KT_MMFB_WARPS * 16 * 9 + 32 * KT_MMFB_WARPS - 1) / (32 * KT_MMFB_WARPS))

template <int NT, int DEPTH>
__device__ __forceinline__ void kt_mmf_block_q4_K(const u8* W, i64 rowBytes, int rows, int cols, const float* xhi,
                                                  const float* xlo, const float* xsum, float* out, int n, int splitSB) {
    typedef KtMmfbStage<NT> L;
    KT_DYNAMIC_SHARED(u8, smem);
    const int threads = 32 * KT_MMFB_WARPS;
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    int nsb = cols / 256, splits = (nsb + splitSB - 1) / splitSB, tiles = (rows + 15) / 16;
    int tileUnits = (tiles + KT_MMFB_WARPS - 1) / KT_MMFB_WARPS, units = tileUnits * splits;
    int t0 = blockIdx.y * L::tokens, valid = min(L::tokens, n - t0);
    // The producer: unit pu of this block (pu < units), super-block ps of its split; this thread's weight pieces
    // (piece c = tid + threads·k: row c / 9 of the stage, bytes 16·(c % 9) of its block) in unit pu.
    int pu = blockIdx.x, ps = 0, pEnd = 0;
    const u8* wsrc[KT_MMFB_PIECES];
    int wdst[KT_MMFB_PIECES];
#pragma unroll
    for (int k = 0; k < KT_MMFB_PIECES; k++) {
        int c = tid + threads * k;
        wdst[k] = c < KT_MMFB_WARPS * 16 * 9 ? (c / 9) * KT_MMQB_WROW + 16 * (c % 9) : -1;
        wsrc[k] = nullptr;
    }
    auto startUnit = [&]() {
        if (pu >= units) return;
        int split = pu / tileUnits, tu = pu - split * tileUnits;
        ps = split * splitSB;
        pEnd = min(nsb, ps + splitSB);
#pragma unroll
        for (int k = 0; k < KT_MMFB_PIECES; k++) {
            int c = tid + threads * k;
            if (wdst[k] < 0) continue;
            int tile = min(tu * KT_MMFB_WARPS + c / 144, tiles - 1);
            wsrc[k] = W + (i64)min(tile * 16 + (c / 9) % 16, rows - 1) * rowBytes + 16 * (c % 9);
        }
    };
    startUnit();
    auto issue = [&](int s) {
        if (pu < units) {
            u8* st = smem + s * L::bytes;
#pragma unroll
            for (int k = 0; k < KT_MMFB_PIECES; k++)
                if (wdst[k] >= 0) kt_cp_async16(st + wdst[k], wsrc[k] + (i64)ps * 144);
            float* sHi = (float*)(st + L::wBytes);
            float* sLo = sHi + L::tokens * KT_MMFB_XROW;
            float* sSum = sLo + L::tokens * KT_MMFB_XROW;
            // 8-byte pieces of the tokens' hi and lo rows (tokens past n repeat the last; their outputs are unwritten).
            for (int c = tid; c < L::tokens * 128; c += threads) {
                int tk = c >> 7, e = 2 * (c & 127);
                i64 at = (i64)(t0 + min(tk, valid - 1)) * cols + (i64)ps * 256 + e;
                kt_cp_async8(sHi + tk * KT_MMFB_XROW + e, xhi + at);
                kt_cp_async8(sLo + tk * KT_MMFB_XROW + e, xlo + at);
            }
            if (tid < 2 * L::tokens) {
                int tk = tid >> 1, h = tid & 1;
                kt_cp_async16(sSum + tk * 8 + 4 * h, xsum + (i64)(t0 + min(tk, valid - 1)) * (cols / 32) + ps * 8 + 4 * h);
            }
            if (++ps == pEnd) {
                pu += gridDim.x;
                startUnit();
            }
        }
        kt_cp_async_commit();
    };
    for (int s = 0; s < DEPTH - 1; s++) issue(s);
    int step = 0;
    for (int u = blockIdx.x; u < units; u += gridDim.x) {
        int split = u / tileUnits, tu = u - split * tileUnits, tile = tu * KT_MMFB_WARPS + warp;
        int sb0 = split * splitSB, sb1 = min(nsb, sb0 + splitSB);
        float acc[NT][4];
        for (int j = 0; j < NT; j++)
            for (int e = 0; e < 4; e++) acc[j][e] = 0.0f;
        for (int sb = sb0; sb < sb1; sb++, step++) {
            kt_cp_async_wait<DEPTH - 2>();
            __syncthreads();  // this step's stage is in; every warp is done with the previous one, refilled next
            issue((step + DEPTH - 1) % DEPTH);
            const u8* st = smem + (step % DEPTH) * L::bytes;
            const float* sHi = (const float*)(st + L::wBytes);
            const float* sLo = sHi + L::tokens * KT_MMFB_XROW;
            const float* sSum = sLo + L::tokens * KT_MMFB_XROW;
            // The staged rows as rows whose super-block sb is in the stage.
            const u8* rA = st + (warp * 16 + g) * KT_MMQB_WROW - (i64)sb * 144;
            const u8* rB = st + (warp * 16 + g + 8) * KT_MMQB_WROW - (i64)sb * 144;
            KtMmfQ4K::compute<NT>(KtMmfQ4K::load(rA, rB, sb, t), sHi, sLo, sSum, KT_MMFB_XROW, 0, 8, 0, 0, valid, g, t,
                                 acc, nullptr);
        }
        for (int j = 0; j < NT; j++)
            for (int e = 0; e < 4; e++) {
                int r = tile * 16 + g + 8 * (e >> 1), tok = t0 + 8 * j + 2 * t + (e & 1);
                if (tile < tiles && r < rows && tok < n) {
                    if (splits == 1) out[(i64)tok * rows + r] = acc[j][e];
                    else out[((i64)split * n + tok) * rows + r] = acc[j][e];
                }
            }
    }
    kt_cp_async_wait<0>();
}
#define KT_MMF_BLOCK(nt) \
extern "C" __global__ void __launch_bounds__(32 * KT_MMFB_WARPS, 1) mmf_block_q4_K_##nt(const u8* W, i64 rowBytes, \
        int rows, int cols, const float* xhi, const float* xlo, const float* xsum, float* out, int n, int splitSB) { KT_PDL_WAIT(); \
    kt_mmf_block_q4_K<nt, KT_MMFB_DEPTH(nt)>(W, rowBytes, rows, cols, xhi, xlo, xsum, out, n, splitSB); \
}
KT_MMF_BLOCK(1)
KT_MMF_BLOCK(4)

// y[t, r] = Σ_s part[s][t][r] in split order; grid-stride over n · rows.
extern "C" __global__ void mmf_reduce(const float* part, float* y, int splits, int n, int rows) { KT_PDL_WAIT();
    i64 total = (i64)n * rows;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int k = 0; k < splits; k++) s = __fadd_rn(s, part[(i64)k * total + i]);
        y[i] = s;
    }
}

// Streaming forms of mmf_<fmt>_1 / _4 (Q4_K, Q6_K; decode and batched decode: 8 or 32 tokens a warp): persistent
// warps, each with its own ring of KT_MMFS_DEPTH shared-memory slots; a slot holds one super-block of the warp's 16
// rows (KtSlot*), copied by cp.async KT_MMFS_DEPTH - 1 steps ahead of the one the warp computes, so the weight bytes stay in
// flight during the arithmetic. A warp takes the (tile, split) units w, w + all warps, ... and runs KtMmfQ4K::add on
// each super-block in order from its slot: every output has the bits of mmf_q4_K_1 and _4. Grid (blocks,
// ceil(n / (8·NT))), 128 threads, 4 · KT_MMFS_DEPTH · 2304 bytes of dynamic shared memory.
#define KT_MMFS_DEPTH 8

// A warp's units: (tile, split) of one matrix (dense), (pair, tile, split) with `ids` (routed experts, one pair a
// unit: pair p's rows are expert ids[p]'s, its input and output row p), or (token group, tile, split) with `meta`
// and `order` (routed experts grouped by expert, as moe_group sorts them: positions index `order`).
struct KtMmfsUnit {
    const u8* W;
    int tile, split, t0, tEnd;
};
struct KtMmfsUnits {
    const u8* W;
    const int* ids;
    const int* meta;
    const int* order;
    i64 matrixBytes;
    int tiles, splits, splitSB, nsb, nExpert, groupTokens, pairs, t0Block, n;
    __device__ __forceinline__ int per() const { return tiles * splits; }
    __device__ __forceinline__ int count() const {
        return meta ? meta[2 * nExpert + 1] * per() : (ids ? pairs * per() : per());
    }
    __device__ __forceinline__ KtMmfsUnit unit(int u) const {
        int k = u / per(), rem = u - k * per(), tile = rem % tiles, split = rem / tiles;
        if (meta) {
            const int* gstart = meta + nExpert + 1;
            int e = kt_group_expert(gstart, nExpert, k);
            return {W + (i64)e * matrixBytes, tile, split, meta[e] + (k - gstart[e]) * groupTokens, meta[e + 1]};
        }
        if (ids) return {W + (i64)ids[k] * matrixBytes, tile, split, k, k + 1};
        return {W, tile, split, t0Block, n};
    }
    __device__ __forceinline__ int sb0(const KtMmfsUnit& w) const { return w.split * splitSB; }
    __device__ __forceinline__ int sb1(const KtMmfsUnit& w) const { return min(nsb, sb0(w) + splitSB); }
};

// A format's super-block in a slot: Q4_K's 144 bytes are 16-byte aligned (9 pieces); Q6_K's 210 are not, so a slot
// row holds the 224 aligned bytes around the block (14 pieces) and the block starts at its address mod 16.
struct KtSlotQ4K {
    static constexpr int block = 144, slot = 144, pieces = 9;
    typedef KtMmfQ4K F;
};
struct KtSlotQ6K {
    static constexpr int block = 210, slot = 224, pieces = 14;
    typedef KtMmfQ6K F;
};

template <class S, int NT>
__device__ __forceinline__ void kt_mmf_stream(const KtMmfsUnits& U, i64 rowBytes, int rows, int cols,
        const float* xhi, const float* xlo, const float* xsum, float* out) {
    KT_DYNAMIC_SHARED(u8, smem);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    u8* ring = smem + warp * (KT_MMFS_DEPTH * 16 * S::slot);
    int stride = gridDim.x * 4, units = U.count();
    // The producer: unit pu (pw), super-block ps.
    int pu = blockIdx.x * 4 + warp;
    KtMmfsUnit pw = pu < units ? U.unit(pu) : KtMmfsUnit{};
    int ps = pu < units ? U.sb0(pw) : 0;
    auto issue = [&](int s) {
        if (pu < units) {
            u8* dst = ring + s * (16 * S::slot);
            int r0 = pw.tile * 16;
            for (int j = lane; j < 16 * S::pieces; j += 32) {
                int rr = j / S::pieces, k = j % S::pieces;
                const u8* blk = pw.W + (i64)min(r0 + rr, rows - 1) * rowBytes + (i64)ps * S::block;
                kt_cp_async16(dst + rr * S::slot + 16 * k, (const u8*)((size_t)blk & ~(size_t)15) + 16 * k);
            }
            if (++ps == U.sb1(pw)) {
                pu += stride;
                if (pu < units) { pw = U.unit(pu); ps = U.sb0(pw); }
            }
        }
        kt_cp_async_commit();
    };
    for (int s = 0; s < KT_MMFS_DEPTH - 1; s++) issue(s);
    int step = 0;
    for (int u = blockIdx.x * 4 + warp; u < units; u += stride) {
        KtMmfsUnit w = U.unit(u);
        int sb0 = U.sb0(w), sb1 = U.sb1(w);
        // This lane's rows (g, g + 8 of the tile) in global memory: their blocks' offsets in the slot rows.
        const u8* gA = w.W + (i64)min(w.tile * 16 + g, rows - 1) * rowBytes;
        const u8* gB = w.W + (i64)min(w.tile * 16 + g + 8, rows - 1) * rowBytes;
        float acc[NT][4];
        for (int j = 0; j < NT; j++)
            for (int e = 0; e < 4; e++) acc[j][e] = 0.0f;
        for (int sb = sb0; sb < sb1; sb++, step++) {
            const u8* slot = kt_ring_step<KT_MMFS_DEPTH>(issue, ring, 16 * S::slot, step);
            // Row pointers such that row + sb · block is the block in the slot.
            const u8* rA = slot + g * S::slot + ((size_t)(gA + (i64)sb * S::block) & 15) - (i64)sb * S::block;
            const u8* rB = slot + (g + 8) * S::slot + ((size_t)(gB + (i64)sb * S::block) & 15) - (i64)sb * S::block;
            S::F::template add<NT>(rA, rB, sb, cols, xhi, xlo, xsum, w.t0, w.tEnd, g, t, acc, U.order);
            __syncwarp();
        }
        for (int j = 0; j < NT; j++)
            for (int e = 0; e < 4; e++) {
                int r = w.tile * 16 + g + 8 * (e >> 1), pos = w.t0 + 8 * j + 2 * t + (e & 1);
                if (r < rows && pos < w.tEnd) {
                    i64 tok = kt_pos_row(U.order, pos);
                    if (U.splits == 1) out[tok * rows + r] = acc[j][e];
                    else out[((i64)w.split * U.n + tok) * rows + r] = acc[j][e];
                }
            }
    }
    kt_cp_async_wait<0>();
}

#define KT_MMF_STREAM(name, S, nt) \
extern "C" __global__ void __launch_bounds__(128) mmf_stream_##name##_##nt(const u8* W, i64 rowBytes, int rows, int cols, \
        const float* xhi, const float* xlo, const float* xsum, float* out, int n, int splitSB) { KT_PDL_WAIT(); \
    int nsb = cols / 256; \
    KtMmfsUnits U = {W, nullptr, nullptr, nullptr, 0, (rows + 15) / 16, (nsb + splitSB - 1) / splitSB, splitSB, nsb, \
                     0, 0, 0, (int)blockIdx.y * 8 * nt, n}; \
    kt_mmf_stream<S, nt>(U, rowBytes, rows, cols, xhi, xlo, xsum, out); \
}
KT_MMF_STREAM(q4_K, KtSlotQ4K, 1)
KT_MMF_STREAM(q4_K, KtSlotQ4K, 4)
KT_MMF_STREAM(q6_K, KtSlotQ6K, 1)
KT_MMF_STREAM(q6_K, KtSlotQ6K, 4)
// Routed experts' down projection, streaming (decode): pair p's input row p times expert ids[p]'s rows into
// out[p, ..] (or part[split][p][row], reduced by mmf_reduce with n = pairs); the bits of mmf_experts_q4_K.
// Grid (blocks), 128 threads, shared memory as mmf_stream_q4_K_1.
extern "C" __global__ void __launch_bounds__(128) mmf_stream_experts_q4_K(const u8* W, i64 rowBytes, i64 matrixBytes,
        int rows, int cols, const float* xhi, const float* xlo, const float* xsum, const int* ids, float* out,
        int pairs, int splitSB) { KT_PDL_WAIT();
    int nsb = cols / 256;
    KtMmfsUnits U = {W, ids, nullptr, nullptr, matrixBytes, (rows + 15) / 16, (nsb + splitSB - 1) / splitSB, splitSB,
                     nsb, 0, 0, pairs, 0, pairs};
    kt_mmf_stream<KtSlotQ4K, 1>(U, rowBytes, rows, cols, xhi, xlo, xsum, out);
}
// The same grouped by expert (prefill): moe_group's meta and order, token groups of 32 pairs (NT = 4).
extern "C" __global__ void __launch_bounds__(128) mmf_grouped_q4_K(const u8* W, i64 rowBytes, i64 matrixBytes,
        int rows, int cols, int nExpert, const int* meta, const int* order, const float* xhi, const float* xlo,
        const float* xsum, float* out, int pairs, int splitSB) { KT_PDL_WAIT();
    int nsb = cols / 256;
    KtMmfsUnits U = {W, nullptr, meta, order, matrixBytes, (rows + 15) / 16, (nsb + splitSB - 1) / splitSB, splitSB,
                     nsb, nExpert, 32, pairs, 0, pairs};
    kt_mmf_stream<KtSlotQ4K, 4>(U, rowBytes, rows, cols, xhi, xlo, xsum, out);
}

// ---- Batch-1 `.f32Activations` with 16-bit integer inputs (default decode; not under --batch-invariant) ----
//
// The FP32-core form above reads 128 bytes of f32 inputs from L1 for every 16 bytes of weights a lane streams, so
// the L1, not the memory, set its speed (4096 × 14336 in 30.6 µs on the H100: 1.1 TB/s). Here the input is
// "Q16_K": per 256-block an f32 scale s = max|x| / 32767, q = nearest(x / s) as int16 (error ≤ s / 2, ~1.5e-5 of
// the block's largest value: far below the weights' 4-bit rounding), and the sums of each 16 q's for Q4_K's mins;
// the products are __dp2a (two int16 × two 4-bit weights a lane step), the matrix streamed as matvec_q4_K_q8_p
// streams it (persistent warps, 4 steps of weights in flight). Layout of E values at `q`: int16[E], then (16-byte
// aligned) float scales[E / 256], then (aligned) int sums[E / 16].

// One 256-block's Q16_K form from the warp's 8 values a lane (elements 8·lane .. 8·lane + 7).
__device__ __forceinline__ void kt_q16_block(const float* v, short* q, float* scale, int* sums, int lane) {
    float amax = 0.0f;
    for (int i = 0; i < 8; i++) amax = fmaxf(amax, fabsf(v[i]));
    amax = kt_warp_max(amax);
    float inv = amax > 0.0f ? 32767.0f / amax : 0.0f;
    int x[8], s = 0;
    for (int i = 0; i < 8; i++) {
        x[i] = max(-32767, min(32767, __float2int_rn(v[i] * inv)));
        s += x[i];
    }
    uint4 packed = make_uint4((u32)(x[0] & 0xFFFF) | ((u32)x[1] << 16), (u32)(x[2] & 0xFFFF) | ((u32)x[3] << 16),
                              (u32)(x[4] & 0xFFFF) | ((u32)x[5] << 16), (u32)(x[6] & 0xFFFF) | ((u32)x[7] << 16));
    *(uint4*)(q + 8 * lane) = packed;
    s += __shfl_xor_sync(0xffffffffu, s, 1);
    if ((lane & 1) == 0) sums[lane >> 1] = s;
    if (lane == 0) *scale = amax / 32767.0f;
}

// x [blocks · 256] → Q16_K. A warp per block, 4 warps a block of threads.
extern "C" __global__ void __launch_bounds__(128) quantize_q16_K(const float* x, short* q, float* scale, int* sums,
                                                                 i64 blocks) { KT_PDL_WAIT();
    int lane = threadIdx.x & 31;
    i64 b = (i64)blockIdx.x * 4 + (threadIdx.x >> 5);
    if (b >= blocks) return;
    const float4* p = (const float4*)(x + b * 256 + 8 * lane);
    float4 a = p[0], c = p[1];
    float v[8] = {a.x, a.y, a.z, a.w, c.x, c.y, c.z, c.w};
    kt_q16_block(v, q + b * 256, scale + b, sums + b * 16, lane);
}

// g = silu(g)·u (gated_silu's arithmetic), and its Q16_K form: SwiGLU before a batch-1 down projection.
extern "C" __global__ void __launch_bounds__(128) gated_silu_q16(float* g, const float* u, short* q, float* scale,
                                                                 int* sums, i64 blocks) { KT_PDL_WAIT();
    int lane = threadIdx.x & 31;
    i64 b = (i64)blockIdx.x * 4 + (threadIdx.x >> 5);
    if (b >= blocks) return;
    float4* gp = (float4*)(g + b * 256 + 8 * lane);
    const float4* up = (const float4*)(u + b * 256 + 8 * lane);
    float4 g0 = gp[0], g1 = gp[1], u0 = up[0], u1 = up[1];
    float x[8] = {g0.x, g0.y, g0.z, g0.w, g1.x, g1.y, g1.z, g1.w};
    float w[8] = {u0.x, u0.y, u0.z, u0.w, u1.x, u1.y, u1.z, u1.w};
    float v[8];
    for (int i = 0; i < 8; i++) v[i] = x[i] / (1.0f + expf(-x[i])) * w[i];
    gp[0] = make_float4(v[0], v[1], v[2], v[3]);
    gp[1] = make_float4(v[4], v[5], v[6], v[7]);
    kt_q16_block(v, q + b * 256, scale + b, sums + b * 16, lane);
}

// y[R] for the rows R = 0 .. pairs · rows − 1 (pair R / rows, its row R % rows: expert ids[pair]'s matrix, or the one
// matrix when ids is null) times pair R / rows's Q16_K input; warp g takes rows g·rpw .. +rpw, as matvec_q4_K_q8_p.
// Per lane and step: I1 = Σ scale·(Σ q·x), I2 = Σ min·(Σ x) over its 16 + 16 elements (exact in int32), the part
// s·(d·I1 − dmin·I2) added to the lane's sum; the warp's sum per row.
// Steps of weights in flight a warp: 8 (rows of 14336 inputs leave only ~16 warps an SM; 4 steps left them at 0.9 TB/s).
// One lane's step of a Q4_K row against Q16_K inputs: the sums of its 16 low-nibble weights times a0/a1 (16 int16)
// and of its 16 high-nibble weights times b0/b1, by dp2a (exact in int32).
__device__ __forceinline__ void kt_q16_dots(uint4 q, uint4 a0, uint4 a1, uint4 b0, uint4 b1, int* sLo, int* sHi) {
    u32 w[4] = {q.x, q.y, q.z, q.w};
    u32 xa[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
    u32 xb[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
    int lo = 0, hi = 0;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        int l = (int)(w[k] & 0x0F0F0F0Fu), h = (int)((w[k] >> 4) & 0x0F0F0F0Fu);
        lo = __dp2a_lo((int)xa[2 * k], l, lo);
        lo = __dp2a_hi((int)xa[2 * k + 1], l, lo);
        hi = __dp2a_lo((int)xb[2 * k], h, hi);
        hi = __dp2a_hi((int)xb[2 * k + 1], h, hi);
    }
    *sLo = lo;
    *sHi = hi;
}
// A lane's Q16_K inputs of one step in registers (matvec_q4_K_q16_pk / _ps): its 16 + 16 int16 values (groups 2p,
// 2p + 1), their 16-element sums, the block's scale (zero for lanes past the row's super-blocks).
struct KtQ16StepInput {
    uint4 a0, a1, b0, b1;
    int mLo, mHi;
    float scale;
};
__device__ __forceinline__ KtQ16StepInput kt_q16_step_input(const short* xq, const float* xscale, const int* xsums,
                                                             int sb, bool inRow, int lane) {
    int eLo = sb * 256 + 64 * ((lane & 7) >> 1) + 16 * (lane & 1);
    KtQ16StepInput in;
    in.a0 = *(const uint4*)(xq + eLo);
    in.a1 = *(const uint4*)(xq + eLo + 8);
    in.b0 = *(const uint4*)(xq + eLo + 32);
    in.b1 = *(const uint4*)(xq + eLo + 40);
    in.mLo = xsums[eLo / 16];
    in.mHi = xsums[eLo / 16 + 2];
    in.scale = inRow ? xscale[sb] : 0.0f;
    return in;
}
// One Q16_K step's integers (exact): I1 = Σ scale·(q·x), I2 = Σ min·(Σx) over the lane's two groups.
__device__ __forceinline__ void kt_q4_K_q16_ints(uint4 h, uint4 q, const KtQ16StepInput& in, KtQ4KLane l, int* i1,
                                                 int* i2) {
    u32 sc, mn;
    kt_q4_K_words(h, l.hiGroups, &sc, &mn);
    int sLo, sHi;
    kt_q16_dots(q, in.a0, in.a1, in.b0, in.b1, &sLo, &sHi);
    *i1 = (int)__byte_perm(sc, 0, l.selLo) * sLo + (int)__byte_perm(sc, 0, l.selHi) * sHi;
    *i2 = (int)__byte_perm(mn, 0, l.selLo) * in.mLo + (int)__byte_perm(mn, 0, l.selHi) * in.mHi;
}
#define KT_MVP16_DEPTH 8
extern "C" __global__ void __launch_bounds__(128) matvec_q4_K_q16_p(const u8* W, i64 rowBytes, i64 matrixBytes,
        int rows, int cols, const short* xq, const float* xscale, const int* xsums, const int* ids, int pairs, float* y,
        int rpw, int pf) {
    int lane = threadIdx.x & 31;
    int rBegin = (blockIdx.x * 4 + (threadIdx.x >> 5)) * rpw, rEnd = min(rBegin + rpw, pairs * rows);
    if (rBegin >= rEnd) return;
    if (ids) KT_PDL_WAIT();  // the expert ids come from the previous kernels
    int nsb = cols / 256, p = (lane & 7) >> 1, l0 = 16 * (lane & 1);
    auto rowPtr = [&](int R) -> const u8* {
        int pair = R / rows;
        return W + (ids ? (i64)ids[pair] * matrixBytes : 0) + (i64)(R - pair * rows) * rowBytes;
    };
    int cPair = rBegin / rows;  // the pair of the row being computed
    float acc = 0.0f;
    auto step = [&](int base, int sb, uint4 head, uint4 q) {
        float d, dmin;
        int scLo, mLo, scHi, mHi;
        kt_q4_K_head(head, p, &d, &dmin, &scLo, &mLo, &scHi, &mHi);
        const short* xr = xq + (i64)cPair * cols;
        int eLo = sb * 256 + 64 * p + l0, eHi = eLo + 32;
        uint4 a0 = *(const uint4*)(xr + eLo), a1 = *(const uint4*)(xr + eLo + 8);
        uint4 b0 = *(const uint4*)(xr + eHi), b1 = *(const uint4*)(xr + eHi + 8);
        int sLo, sHi;
        kt_q16_dots(q, a0, a1, b0, b1, &sLo, &sHi);
        // Each lane adds its own part (no shuffles per step); the warp sums once per row.
        const int* sums = xsums + (i64)cPair * (cols / 16);
        int i1 = scLo * sLo + scHi * sHi, i2 = mLo * sums[eLo / 16] + mHi * sums[eHi / 16];
        float f = xscale[(i64)cPair * nsb + sb] * (d * (float)i1 - dmin * (float)i2);
        acc += base + (lane >> 3) < nsb ? f : 0.0f;
    };
    auto rowDone = [&](int r) {
        acc = kt_warp_sum(acc);
        if (lane == 0) y[r] = acc;
        acc = 0.0f;
        cPair = (r + 1) / rows;
    };
    kt_q4_K_row_stream<KT_MVP16_DEPTH>(rBegin, rEnd, cols, rowBytes, pf, rowPtr, step, rowDone);
}

// Batch-1 down projection of rows longer than 4096 columns, split into slices of 2048 columns (8 super-blocks: 2
// steps), each slice's Q16_K inputs held in registers (the q16_p form reloads 64 bytes of inputs a lane every step
// and row: 4096 × 14336 at 1.0 TB/s). Grid (units of 4 warps, slices): warp u of slice s takes rows u·rpw .. +rpw of
// its slice through kt_q4_K_ring (4 steps in flight) and stores its rows' partial sums at
// partial[s · rows + r]; the last warp of a row range to finish (counters[u], after a fence) adds the slices' partials
// in slice order into y and sets the counter back to 0 for the next launch: one launch, the same bits whichever warp
// finishes last. Lanes past the slice's super-blocks have a zero input scale. Its own bits (not batch-invariant).
#define KT_MVPK_SLICE 8
extern "C" __global__ void __launch_bounds__(128) matvec_q4_K_q16_pk(const u8* W, i64 rowBytes, int rows, int cols,
        const short* xq, const float* xscale, const int* xsums, float* partial, int* counters, float* y, int rpw,
        int pf) { /* KT_PDL_WAIT in kt_q4_K_ring */
    int lane = threadIdx.x & 31, g8 = lane >> 3;
    int unit = blockIdx.x * 4 + (threadIdx.x >> 5), slice = blockIdx.y, slices = gridDim.y;
    int rBegin = unit * rpw, rEnd = min(rBegin + rpw, rows);
    if (rBegin >= rEnd) return;
    int sb0 = slice * KT_MVPK_SLICE, nsl = min(KT_MVPK_SLICE, cols / 256 - sb0);
    auto rowPtr = [&](int r) -> const u8* { return W + (i64)r * rowBytes + sb0 * 144; };
    auto offset = [&](int j) { return min(4 * j + g8, nsl - 1) * 144; };
    KtQ16StepInput in[2];
    auto inputs = [&]() {
#pragma unroll
        for (int j = 0; j < 2; j++)
            in[j] = kt_q16_step_input(xq, xscale, xsums, sb0 + min(4 * j + g8, nsl - 1), 4 * j + g8 < nsl, lane);
    };
    KtQ4KLane l = kt_q4_K_lane(lane);
    float acc = 0.0f;
    auto step = [&](int j, uint4 h, uint4 q) {
        float d, dmin;
        kt_q4_K_d(h, &d, &dmin);
        int i1, i2;
        kt_q4_K_q16_ints(h, q, in[j], l, &i1, &i2);
        acc = fmaf(in[j].scale * d, (float)i1, acc);
        acc = fmaf(-in[j].scale * dmin, (float)i2, acc);
    };
    auto rowDone = [&](int r) {
        float v = kt_warp_sum(acc);
        if (lane == 0) partial[(i64)slice * rows + r] = v;
        acc = 0.0f;
    };
    kt_q4_K_ring<2, 4>(rBegin, rEnd, 2, (i64)nsl * 144, pf, rowPtr, offset, inputs, step, rowDone);
    __threadfence();  // this warp's partials are visible before its count
    int last = 0;
    if (lane == 0) last = atomicAdd(&counters[unit], 1) == slices - 1;
    if (!__shfl_sync(0xffffffffu, last, 0)) return;
    __threadfence();
    for (int r = rBegin + lane; r < rEnd; r += 32) {
        float v = 0.0f;
        for (int s = 0; s < slices; s++) v += __ldcg(&partial[(i64)s * rows + r]);
        y[r] = v;
    }
    if (lane == 0) counters[unit] = 0;
}

// Batch-1 down projection, the rows split across a block's warps (matvec_q4_K_q16_ps; default for dense rows of 5
// to 32 steps of 1024 columns where matvec_q4_K_q16_pk would run, `KTRANSFORMERS_CUDA_MVS=0` off): a block of
// S = ceil(nsb / 4) warps takes one row at a time, warp k its step k (lanes, Q16_K inputs in registers and arithmetic
// of matvec_q4_K_q16_pk's steps); block b takes rows b, b + B, ... (B the grid's blocks), so the rows the GPU reads
// at once are adjacent; at most 64 registers a thread (one step of inputs). Each warp keeps DEPTH rows' steps in
// flight; every DEPTH rows the S partial sums of each row meet in shared memory and are added in step order (its own
// bits, fixed; not under --batch-invariant). No scratch, no counters.
// Rows in flight a warp: as the Q8_K forms' KT_MVPS_DEPTH (default 1; matvec-patterns.cu, H100: 4096 x 14336 in
// 14.8 µs with 2 rows, 16.8 with 4, both at 28 warps an SM).
#define KT_MVPS16_DEPTH KT_MVPS_DEPTH
// Registers a thread: by default the compiler's choice (54 at one row in flight: 2 blocks of 14 warps an SM for
// 14336 columns); KT_Q16PS_MAXREG caps them (KTRANSFORMERS_CUDA_Q16PS_MAXREG; 48 fits 3 such blocks, a measurement).
#ifdef KT_Q16PS_MAXREG
#define KT_Q16PS_BOUNDS __maxnreg__(KT_Q16PS_MAXREG)
#else
#define KT_Q16PS_BOUNDS __launch_bounds__(1024, 1)
#endif
extern "C" __global__ void KT_Q16PS_BOUNDS matvec_q4_K_q16_ps(const u8* W, i64 rowBytes, int rows, int cols,
        const short* xq, const float* xscale, const int* xsums, float* y) {
    constexpr int DEPTH = KT_MVPS16_DEPTH;
    __shared__ float part[32][DEPTH];
    int lane = threadIdx.x & 31, wk = threadIdx.x >> 5, S = blockDim.x >> 5, g8 = lane >> 3;
    int nsb = cols / 256;
    int nR = (int)blockIdx.x < rows ? (rows - 1 - (int)blockIdx.x) / (int)gridDim.x + 1 : 0;
    if (nR == 0) return;
    int sb = min(4 * wk + g8, nsb - 1);
    const u8* base = W + (i64)sb * 144;
    uint4 hs[DEPTH], qs[DEPTH];
    auto load = [&](int slot, int i) {
        const u8* b = base + (i64)((int)blockIdx.x + i * (int)gridDim.x) * rowBytes;
        hs[slot] = *(const uint4*)b;
        qs[slot] = *(const uint4*)(b + 16 + 16 * (lane & 7));
    };
#pragma unroll
    for (int i = 0; i < DEPTH; i++)
        if (i < nR) load(i, i);
    KT_PDL_WAIT();  // the weights are in flight; the inputs come from the previous kernel
    KtQ16StepInput in = kt_q16_step_input(xq, xscale, xsums, sb, 4 * wk + g8 < nsb, lane);
    KtQ4KLane l = kt_q4_K_lane(lane);
    for (int i0 = 0; i0 < nR; i0 += DEPTH) {
#pragma unroll
        for (int i = 0; i < DEPTH; i++) {
            if (i0 + i < nR) {
                uint4 h = hs[i], q = qs[i];
                if (i0 + i + DEPTH < nR) load(i, i0 + i + DEPTH);
                float d, dmin;
                kt_q4_K_d(h, &d, &dmin);
                int i1, i2;
                kt_q4_K_q16_ints(h, q, in, l, &i1, &i2);
                float v = kt_warp_sum(fmaf(-in.scale * dmin, (float)i2, (in.scale * d) * (float)i1));
                if (lane == 0) part[wk][i] = v;
            }
        }
        __syncthreads();
        int t = threadIdx.x;
        if (t < DEPTH && i0 + t < nR) {
            float v = part[0][t];
            for (int s = 1; s < S; s++) v += part[s][t];
            y[(int)blockIdx.x + (i0 + t) * (int)gridDim.x] = v;
        }
        __syncthreads();
    }
}

// ---- Batched `.f32Activations` with Q16_K inputs on the int8 tensor cores (2 to 32 tokens; not under
// --batch-invariant) ----
//
// The block-staged split-tf32 tiles (mmf_block_q4_K) run 8 tf32 mma a 32-group and token tile and stage 8 bytes of
// inputs an element: at 32 tokens the MLP's down projection read its weights at 0.37 TB/s (an H100, 2026-12-05).
// Here the inputs are the batch-1 down projection's Q16_K form, per token (quantize_q16_K or gated_silu_q16 over all
// the step's tokens): each int16 v = 256·hi + lo (hi = v >> 8, signed; lo = v & 255, unsigned), so a 32-group's
// Σq·v = 256·Σq·hi + Σq·lo comes from two int8 mma (s8·s8 and s8·u8, exact): 2 bytes of inputs staged an element.
// Per super-block, row and token: I1 = Σ_G scale_G·Σq·v is exact in int32 per pair of groups (|Σq·v| ≤ 15·32767·32,
// · 63, twice: < 2^31) and summed in float over the 4 pairs; I2 = Σ_G min_G·Σv (the per-16 sums) is exact; the part
// s·(d·I1 − dmin·I2) is added in super-block order, the K splits (`splitSB` super-blocks each) by mmf_reduce. Its
// own bits (16-bit inputs, like the batch-1 form; not those of the tf32 tiles): batch-invariant mode keeps those.
// Blocks, units, stages and the weights' staging are mmf_block_q4_K's: persistent blocks of KT_MMFB_WARPS warps walk
// units of KT_MMFB_WARPS 16-row tiles of one K split; per step a stage holds the tiles' super-block (rows at a
// KT_MMQB_WROW-byte stride) and the 8·NT tokens' int16 values (rows of KT_MMQ16_XROW bytes: ≡ 64 mod 128, so the
// 16-byte fragment loads of each quarter-warp, two token rows, hit distinct banks), per-16 sums and scales.
// Grid (blocks, ceil(n / (8·NT))), 32·KT_MMFB_WARPS threads, KT_MMQ16_DEPTH · KtMmq16Stage<NT>::bytes of dynamic
// shared memory; the arguments of mmf_block_q4_K with the Q16_K parts for the inputs.
#define KT_MMQ16_DEPTH 4
#define KT_MMQ16_XROW 576  // 512 bytes of values
template <int NT>
struct KtMmq16Stage {
    static constexpr int tokens = 8 * NT;
    static constexpr int wBytes = KT_MMFB_WARPS * 16 * KT_MMQB_WROW;
    static constexpr int xBytes = tokens * KT_MMQ16_XROW;
    static constexpr int sBytes = tokens * KT_MMQB_SROW;
    static constexpr int bytes = wBytes + xBytes + sBytes + tokens * 4;
};
template <int NT, int DEPTH>
__device__ __forceinline__ void kt_mmq16_block_q4_K(const u8* W, i64 rowBytes, int rows, int cols, const short* xq,
                                                    const float* xd, const int* xs, float* out, int n, int splitSB) {
    typedef KtMmq16Stage<NT> L;
    KT_DYNAMIC_SHARED(u8, smem);
    const int threads = 32 * KT_MMFB_WARPS;
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    int nsb = cols / 256, splits = (nsb + splitSB - 1) / splitSB, tiles = (rows + 15) / 16;
    int tileUnits = (tiles + KT_MMFB_WARPS - 1) / KT_MMFB_WARPS, units = tileUnits * splits;
    int t0 = blockIdx.y * L::tokens, valid = min(L::tokens, n - t0);
    // The producer: unit pu of this block (pu < units), super-block ps of its split (mmf_block_q4_K's).
    int pu = blockIdx.x, ps = 0, pEnd = 0;
    const u8* wsrc[KT_MMFB_PIECES];
    int wdst[KT_MMFB_PIECES];
#pragma unroll
    for (int k = 0; k < KT_MMFB_PIECES; k++) {
        int c = tid + threads * k;
        wdst[k] = c < KT_MMFB_WARPS * 16 * 9 ? (c / 9) * KT_MMQB_WROW + 16 * (c % 9) : -1;
        wsrc[k] = nullptr;
    }
    auto startUnit = [&]() {
        if (pu >= units) return;
        int split = pu / tileUnits, tu = pu - split * tileUnits;
        ps = split * splitSB;
        pEnd = min(nsb, ps + splitSB);
#pragma unroll
        for (int k = 0; k < KT_MMFB_PIECES; k++) {
            int c = tid + threads * k;
            if (wdst[k] < 0) continue;
            int tile = min(tu * KT_MMFB_WARPS + c / 144, tiles - 1);
            wsrc[k] = W + (i64)min(tile * 16 + (c / 9) % 16, rows - 1) * rowBytes + 16 * (c % 9);
        }
    };
    startUnit();
    auto issue = [&](int s) {
        if (pu < units) {
            u8* st = smem + s * L::bytes;
#pragma unroll
            for (int k = 0; k < KT_MMFB_PIECES; k++)
                if (wdst[k] >= 0) kt_cp_async16(st + wdst[k], wsrc[k] + (i64)ps * 144);
            // The tokens' values, sums and scales (tokens past n repeat the last; their outputs are not written).
            u8* sx = st + L::wBytes;
            for (int c = tid; c < L::tokens * 32; c += threads) {
                int tk = c >> 5, part = c & 31;
                kt_cp_async16(sx + tk * KT_MMQ16_XROW + 16 * part,
                              xq + (i64)(t0 + min(tk, valid - 1)) * cols + (i64)ps * 256 + 8 * part);
            }
            u8* ss = sx + L::xBytes;
            if (tid < L::tokens * 4) {
                int tk = tid >> 2, part = tid & 3;
                kt_cp_async16(ss + tk * KT_MMQB_SROW + 16 * part,
                              xs + (i64)(t0 + min(tk, valid - 1)) * (cols / 16) + ps * 16 + 4 * part);
            }
            float* sd = (float*)(ss + L::sBytes);
            if (tid < L::tokens) kt_cp_async4(sd + tid, xd + (i64)(t0 + min(tid, valid - 1)) * nsb + ps);
            if (++ps == pEnd) {
                pu += gridDim.x;
                startUnit();
            }
        }
        kt_cp_async_commit();
    };
    for (int s = 0; s < DEPTH - 1; s++) issue(s);
    int step = 0;
    for (int u = blockIdx.x; u < units; u += gridDim.x) {
        int split = u / tileUnits, tu = u - split * tileUnits, tile = tu * KT_MMFB_WARPS + warp;
        int sb0 = split * splitSB, sb1 = min(nsb, sb0 + splitSB);
        float acc[NT][4];
        for (int j = 0; j < NT; j++)
            for (int e = 0; e < 4; e++) acc[j][e] = 0.0f;
        for (int sb = sb0; sb < sb1; sb++, step++) {
            kt_cp_async_wait<DEPTH - 2>();
            __syncthreads();  // this step's stage is in; every warp is done with the previous one, refilled next
            issue((step + DEPTH - 1) % DEPTH);
            const u8* st = smem + (step % DEPTH) * L::bytes;
            const u8* wrow = st + warp * 16 * KT_MMQB_WROW;
            const u8* sx = st + L::wBytes;
            const int* ss = (const int*)(sx + L::xBytes);
            const float* sd = (const float*)((const u8*)ss + L::sBytes);
            // Rows g (A) and g + 8 (B) of the tile: scales and mins (bytes of two words each), d, dmin.
            uint4 hA = *(const uint4*)(wrow + g * KT_MMQB_WROW), hB = *(const uint4*)(wrow + (g + 8) * KT_MMQB_WROW);
            float dA = kt_half_to_float((u16)(hA.x & 0xFFFFu)), mA = kt_half_to_float((u16)(hA.x >> 16));
            float dB = kt_half_to_float((u16)(hB.x & 0xFFFFu)), mB = kt_half_to_float((u16)(hB.x >> 16));
            u32 scA[2] = {0, 0}, mnA[2] = {0, 0}, scB[2] = {0, 0}, mnB[2] = {0, 0};
#pragma unroll
            for (int G = 0; G < 8; G++) {
                int sa, ma, sb_, mb;
                kt_scale_min_k4_regs(G, hA, &sa, &ma);
                kt_scale_min_k4_regs(G, hB, &sb_, &mb);
                scA[G >> 2] |= (u32)sa << (8 * (G & 3));
                mnA[G >> 2] |= (u32)ma << (8 * (G & 3));
                scB[G >> 2] |= (u32)sb_ << (8 * (G & 3));
                mnB[G >> 2] |= (u32)mb << (8 * (G & 3));
            }
            float f1[NT][4];
            for (int j = 0; j < NT; j++)
                for (int e = 0; e < 4; e++) f1[j][e] = 0.0f;
#pragma unroll
            for (int p = 0; p < 4; p++) {
                uint2 qa = *(const uint2*)(wrow + g * KT_MMQB_WROW + 16 + 32 * p + 8 * t);
                uint2 qb = *(const uint2*)(wrow + (g + 8) * KT_MMQB_WROW + 16 + 32 * p + 8 * t);
                int i1[NT][4];
                for (int j = 0; j < NT; j++)
                    for (int e = 0; e < 4; e++) i1[j][e] = 0;
#pragma unroll
                for (int hi = 0; hi < 2; hi++) {
                    int G = 2 * p + hi, sh = 4 * hi;
                    int sa = (int)((scA[G >> 2] >> (8 * (G & 3))) & 0xFF), sbv = (int)((scB[G >> 2] >> (8 * (G & 3))) & 0xFF);
                    u32 a[4] = {(qa.x >> sh) & 0x0F0F0F0Fu, (qb.x >> sh) & 0x0F0F0F0Fu, (qa.y >> sh) & 0x0F0F0F0Fu,
                                (qb.y >> sh) & 0x0F0F0F0Fu};
#pragma unroll
                    for (int j = 0; j < NT; j++) {
                        // Elements 8t .. 8t + 7 of group G (the permuted k order of the weights' fragments).
                        uint4 v = *(const uint4*)(sx + (8 * j + g) * KT_MMQ16_XROW + 64 * G + 16 * t);
                        u32 bh[2] = {__byte_perm(v.x, v.y, 0x7531), __byte_perm(v.z, v.w, 0x7531)};
                        u32 bl[2] = {__byte_perm(v.x, v.y, 0x6420), __byte_perm(v.z, v.w, 0x6420)};
                        int ch[4] = {0, 0, 0, 0}, cl[4] = {0, 0, 0, 0};
                        KT_MMA_K32(ch, a, bh);
                        KT_MMA_K32_U8B(cl, a, bl);
                        i1[j][0] += sa * (256 * ch[0] + cl[0]);
                        i1[j][1] += sa * (256 * ch[1] + cl[1]);
                        i1[j][2] += sbv * (256 * ch[2] + cl[2]);
                        i1[j][3] += sbv * (256 * ch[3] + cl[3]);
                    }
                }
                for (int j = 0; j < NT; j++)
                    for (int e = 0; e < 4; e++) f1[j][e] += (float)i1[j][e];
            }
#pragma unroll
            for (int j = 0; j < NT; j++) {
#pragma unroll
                for (int jj = 0; jj < 2; jj++) {
                    int tk = 8 * j + 2 * t + jj;
                    const int* sp = ss + tk * (KT_MMQB_SROW / 4);
                    int4 s0 = *(const int4*)sp, s1 = *(const int4*)(sp + 4), s2 = *(const int4*)(sp + 8), s3 = *(const int4*)(sp + 12);
                    int sg[8] = {s0.x + s0.y, s0.z + s0.w, s1.x + s1.y, s1.z + s1.w, s2.x + s2.y, s2.z + s2.w,
                                 s3.x + s3.y, s3.z + s3.w};
                    int i2A = 0, i2B = 0;
#pragma unroll
                    for (int G = 0; G < 8; G++) {
                        i2A += (int)((mnA[G >> 2] >> (8 * (G & 3))) & 0xFF) * sg[G];
                        i2B += (int)((mnB[G >> 2] >> (8 * (G & 3))) & 0xFF) * sg[G];
                    }
                    float s = sd[tk];
                    acc[j][jj] += s * (dA * f1[j][jj] - mA * (float)i2A);
                    acc[j][2 + jj] += s * (dB * f1[j][2 + jj] - mB * (float)i2B);
                }
            }
        }
        for (int j = 0; j < NT; j++)
            for (int e = 0; e < 4; e++) {
                int r = tile * 16 + g + 8 * (e >> 1), tok = t0 + 8 * j + 2 * t + (e & 1);
                if (tile < tiles && r < rows && tok < n) {
                    if (splits == 1) out[(i64)tok * rows + r] = acc[j][e];
                    else out[((i64)split * n + tok) * rows + r] = acc[j][e];
                }
            }
    }
    kt_cp_async_wait<0>();
}
#define KT_MMQ16_BLOCK(nt) \
extern "C" __global__ void __launch_bounds__(32 * KT_MMFB_WARPS, 1) mmq16_block_q4_K_##nt(const u8* W, i64 rowBytes, \
        int rows, int cols, const short* xq, const float* xd, const int* xs, float* out, int n, int splitSB) { KT_PDL_WAIT(); \
    kt_mmq16_block_q4_K<nt, KT_MMQ16_DEPTH>(W, rowBytes, rows, cols, xq, xd, xs, out, n, splitSB); \
}
KT_MMQ16_BLOCK(1)
KT_MMQ16_BLOCK(4)
