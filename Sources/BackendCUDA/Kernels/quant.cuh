// Decoders of the GGUF block formats: `unit(row, u, cols, v)` writes the 32 values of the u-th group of 32
// elements of a row into v (elements past `cols` as 0: only float rows can end mid-group). Every block format's
// block is a whole number of such groups, so the matrix kernels split rows into groups for all formats alike.
// Arithmetic as Quant's reference dequantizers (x = d·q, or d·sc·q − dmin·m).

__constant__ float kt_iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

struct DecF32 {
    __device__ static void unit(const u8* row, int u, int cols, float* v) {
        const float* r = (const float*)row + u * 32;
        int n = min(32, cols - u * 32);
        for (int i = 0; i < 32; i++) v[i] = i < n ? r[i] : 0.0f;
    }
};
struct DecF16 {
    __device__ static void unit(const u8* row, int u, int cols, float* v) {
        const u16* r = (const u16*)row + u * 32;
        int n = min(32, cols - u * 32);
        for (int i = 0; i < 32; i++) v[i] = i < n ? kt_half_to_float(r[i]) : 0.0f;
    }
};
struct DecBF16 {
    __device__ static void unit(const u8* row, int u, int cols, float* v) {
        const u16* r = (const u16*)row + u * 32;
        int n = min(32, cols - u * 32);
        for (int i = 0; i < 32; i++) v[i] = i < n ? kt_bf16_to_float(r[i]) : 0.0f;
    }
};
// Q4_0: { f16 d; u8 qs[16] }, x_j = d·((qs[j] & 15) − 8), x_{j+16} = d·((qs[j] >> 4) − 8).
struct DecQ4_0 {
    __device__ static void unit(const u8* row, int u, int, float* v) {
        const u8* b = row + u * 18;
        float d = kt_f16(b);
        for (int j = 0; j < 16; j++) {
            int q = b[2 + j];
            v[j] = (float)((q & 15) - 8) * d;
            v[j + 16] = (float)((q >> 4) - 8) * d;
        }
    }
};
// Q4_1: { f16 d, m; u8 qs[16] }, x = d·q + m.
struct DecQ4_1 {
    __device__ static void unit(const u8* row, int u, int, float* v) {
        const u8* b = row + u * 20;
        float d = kt_f16(b), m = kt_f16(b + 2);
        for (int j = 0; j < 16; j++) {
            int q = b[4 + j];
            v[j] = (float)(q & 15) * d + m;
            v[j + 16] = (float)(q >> 4) * d + m;
        }
    }
};
// Q5_0: { f16 d; u8 qh[4]; u8 qs[16] }, 5th bit of element j is bit j of qh; x = d·(q − 16).
struct DecQ5_0 {
    __device__ static void unit(const u8* row, int u, int, float* v) {
        const u8* b = row + u * 22;
        float d = kt_f16(b);
        u32 qh = (u32)b[2] | ((u32)b[3] << 8) | ((u32)b[4] << 16) | ((u32)b[5] << 24);
        for (int j = 0; j < 16; j++) {
            int q = b[6 + j];
            int lo = (q & 15) | (((qh >> j) & 1) << 4), hi = (q >> 4) | (((qh >> (j + 16)) & 1) << 4);
            v[j] = (float)(lo - 16) * d;
            v[j + 16] = (float)(hi - 16) * d;
        }
    }
};
// Q5_1: { f16 d, m; u8 qh[4]; u8 qs[16] }, x = d·q + m.
struct DecQ5_1 {
    __device__ static void unit(const u8* row, int u, int, float* v) {
        const u8* b = row + u * 24;
        float d = kt_f16(b), m = kt_f16(b + 2);
        u32 qh = (u32)b[4] | ((u32)b[5] << 8) | ((u32)b[6] << 16) | ((u32)b[7] << 24);
        for (int j = 0; j < 16; j++) {
            int q = b[8 + j];
            int lo = (q & 15) | (((qh >> j) & 1) << 4), hi = (q >> 4) | (((qh >> (j + 16)) & 1) << 4);
            v[j] = (float)lo * d + m;
            v[j + 16] = (float)hi * d + m;
        }
    }
};
// Q8_0: { f16 d; i8 qs[32] }.
struct DecQ8_0 {
    __device__ static void unit(const u8* row, int u, int, float* v) {
        const u8* b = row + u * 34;
        float d = kt_f16(b);
        for (int j = 0; j < 32; j++) v[j] = (float)(i8)b[2 + j] * d;
    }
};
// IQ4_NL: { f16 d; u8 qs[16] }, x = d·kvalues[nibble].
struct DecIQ4_NL {
    __device__ static void unit(const u8* row, int u, int, float* v) {
        const u8* b = row + u * 18;
        float d = kt_f16(b);
        for (int j = 0; j < 16; j++) {
            int q = b[2 + j];
            v[j] = d * kt_iq4nl_values[q & 15];
            v[j + 16] = d * kt_iq4nl_values[q >> 4];
        }
    }
};
// IQ4_XS: 256 elements { f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128] }; group ib (0..7) has the 6-bit
// scale ls = low nibble of scales_l[ib/2] (by ib parity) | 2 bits of scales_h << 4; x = d·(ls − 32)·kvalues[q].
struct DecIQ4_XS {
    __device__ static void unit(const u8* row, int u, int, float* v) {
        const u8* b = row + (u >> 3) * 136;
        int ib = u & 7;
        float d = kt_f16(b);
        int sh = kt_load16(b + 2);
        int ls = ((b[4 + ib / 2] >> (4 * (ib & 1))) & 15) | (((sh >> (2 * ib)) & 3) << 4);
        float dl = d * (float)(ls - 32);
        const u8* q = b + 8 + 16 * ib;
        for (int j = 0; j < 16; j++) {
            v[j] = dl * kt_iq4nl_values[q[j] & 15];
            v[j + 16] = dl * kt_iq4nl_values[q[j] >> 4];
        }
    }
};
// Q2_K: 256 elements { u8 scales[16]; u8 qs[64]; f16 d, dmin }. Group s (0..7): half h = s/4 (qs + 32h), 2-bit
// field j = s%4 (shift 2j); its first 16 elements use scales[8h + 2j], the next 16 scales[8h + 2j + 1];
// x = d·(sc & 15)·q − dmin·(sc >> 4).
struct DecQ2_K {
    __device__ static void unit(const u8* row, int u, int, float* v) {
        const u8* b = row + (u >> 3) * 84;
        int s = u & 7, h = s >> 2, j = s & 3;
        float d = kt_f16(b + 80), dmin = kt_f16(b + 82);
        const u8* q = b + 16 + 32 * h;
        for (int half = 0; half < 2; half++) {
            int sc = b[8 * h + 2 * j + half];
            float dl = d * (float)(sc & 15), ml = dmin * (float)(sc >> 4);
            for (int l = 0; l < 16; l++) v[16 * half + l] = dl * (float)((q[16 * half + l] >> (2 * j)) & 3) - ml;
        }
    }
};
// The 6-bit scale and min of group s of a Q4_K / Q5_K block (`scales` is 12 bytes).
__device__ __forceinline__ void kt_scale_min_k4(int s, const u8* q, int* sc, int* m) {
    if (s < 4) {
        *sc = q[s] & 63;
        *m = q[s + 4] & 63;
    } else {
        *sc = (q[s + 4] & 15) | ((q[s - 4] >> 6) << 4);
        *m = (q[s + 4] >> 4) | ((q[s] >> 6) << 4);
    }
}
// The same for a runtime s from the header in registers (words y, z, w): shifts of the words by 8·(s % 4), no
// local copy to index (kt_scale_min_k4 on a register-held header makes the compiler store it to local memory).
__device__ __forceinline__ void kt_scale_min_k4_dyn(int s, uint4 h, int* sc, int* m) {
    int sh = 8 * (s & 3);
    u32 a = (h.y >> sh) & 0xFFu, b = (h.z >> sh) & 0xFFu, c = (h.w >> sh) & 0xFFu;
    if (s < 4) { *sc = (int)(a & 63u); *m = (int)(b & 63u); }
    else { *sc = (int)((c & 15u) | ((a >> 6) << 4)); *m = (int)((c >> 4) | ((b >> 6) << 4)); }
}
// The same from a block's 16-byte header held in registers (words y, z, w are the 12 scale bytes), with no local
// copy to index: s a compile-time constant, so it is a few bit-field extractions.
__device__ __forceinline__ void kt_scale_min_k4_regs(int s, uint4 h, int* sc, int* m) {
    u32 w[3] = {h.y, h.z, h.w};
#define KT_SB(i) ((int)((w[(i) >> 2] >> (8 * ((i) & 3))) & 0xFFu))
    if (s < 4) {
        *sc = KT_SB(s) & 63;
        *m = KT_SB(s + 4) & 63;
    } else {
        *sc = (KT_SB(s + 4) & 15) | ((KT_SB(s - 4) >> 6) << 4);
        *m = (KT_SB(s + 4) >> 4) | ((KT_SB(s) >> 6) << 4);
    }
#undef KT_SB
}
// Q4_K: { f16 d, dmin; u8 scales[12]; u8 qs[128] }; group s uses qs[32(s/2) ..] low (s even) or high nibbles.
struct DecQ4_K {
    __device__ static void unit(const u8* row, int u, int, float* v) {
        const u8* b = row + (u >> 3) * 144;
        int s = u & 7, sc, m;
        kt_scale_min_k4(s, b + 4, &sc, &m);
        float d = kt_f16(b) * (float)sc, mn = kt_f16(b + 2) * (float)m;
        const u8* q = b + 16 + 32 * (s >> 1);
        int shift = 4 * (s & 1);
        for (int l = 0; l < 32; l++) v[l] = d * (float)((q[l] >> shift) & 15) - mn;
    }
};
// Q5_K: { f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] }; the 5th bit of element l of group s is bit s of qh[l].
struct DecQ5_K {
    __device__ static void unit(const u8* row, int u, int, float* v) {
        const u8* b = row + (u >> 3) * 176;
        int s = u & 7, sc, m;
        kt_scale_min_k4(s, b + 4, &sc, &m);
        float d = kt_f16(b) * (float)sc, mn = kt_f16(b + 2) * (float)m;
        const u8* qh = b + 16;
        const u8* q = b + 48 + 32 * (s >> 1);
        int shift = 4 * (s & 1);
        for (int l = 0; l < 32; l++) {
            int x = ((q[l] >> shift) & 15) | (((qh[l] >> s) & 1) << 4);
            v[l] = d * (float)x - mn;
        }
    }
};
// Q6_K: { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }. Group s: half h = s/4, r = s%4: low 4 bits from
// ql[64h + 32(r&1) + l] (shift 4(r>>1)), high 2 bits from qh[32h + l] >> 2r; scale scales[8h + l/16 + 2r];
// x = d·sc·(q − 32).
struct DecQ6_K {
    __device__ static void unit(const u8* row, int u, int, float* v) {
        const u8* b = row + (u >> 3) * 210;
        int s = u & 7, h = s >> 2, r = s & 3;
        float d = kt_f16(b + 208);
        const u8* ql = b + 64 * h + 32 * (r & 1);
        const u8* qh = b + 128 + 32 * h;
        const i8* sc = (const i8*)(b + 192 + 8 * h + 2 * r);
        int shift = 4 * (r >> 1);
        for (int l = 0; l < 32; l++) {
            int q = ((ql[l] >> shift) & 15) | (((qh[l] >> (2 * r)) & 3) << 4);
            v[l] = d * (float)sc[l / 16] * (float)(q - 32);
        }
    }
};

// X(name, decoder) for every format with a decoder here; the backend converts the others at load.
#define KT_FORMATS(X) \
    X(f32, DecF32) X(f16, DecF16) X(bf16, DecBF16) X(q4_0, DecQ4_0) X(q4_1, DecQ4_1) X(q5_0, DecQ5_0) \
    X(q5_1, DecQ5_1) X(q8_0, DecQ8_0) X(iq4_nl, DecIQ4_NL) X(iq4_xs, DecIQ4_XS) X(q2_K, DecQ2_K) \
    X(q4_K, DecQ4_K) X(q5_K, DecQ5_K) X(q6_K, DecQ6_K)
