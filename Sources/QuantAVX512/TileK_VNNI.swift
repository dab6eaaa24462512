#if arch(x86_64)  // the whole module is x86-64 only; QuantAVX512.kernels(for:base:) answers nil elsewhere
import _Builtin_intrinsics.intel
import CSIMD
import Quant

// Tiled matrix product of Q4_K weights against many Q8_K activation rows, bit-identical to its `vecDot`
// (QuantAVX2's `kMulti`, whose integer lane sums and float steps `Q4_K_VNNI` shares).
//
// Per 256-block, `kMulti` builds 8 int32 lanes s = Σ_j sc_j·(Σ over lane l's 4 bytes of q·y) with maddubs + madd on
// each 32-weight sub-block, then acc = fma(d_x·d, s, acc) and acc = fnma(d_x·dmin, Σ_j m_j·bsums_j, acc). Here two
// sub-blocks share one 512-bit maddubs + vpdpwssd (sub-block 2c in lanes 0..<8, 2c+1 in 8..<16), and the block's
// lanes are folded back to 8 (exact integers, so the same s) before the same float steps. Each weight row is
// decoded once per call (nibbles to bytes, scales to int16 vectors), each activation row once per matmul.
//
// Weights (scratch), 640 bytes per block: u[256] (sub-block j at 32j) | 4 × 64 bytes of int16 scales (sc_2c × 16,
// sc_2c+1 × 16) | d × 8 f32 | dmin × 8 f32 | mins as 8 int16 | pad.
// Activations, 320 bytes per block: y[256] | d_x × 8 f32 | pairwise bsums as 8 int16 (`minsDotBsums`'s hadd) | pad.

enum Q4_K_Tile {
    static let wb = 640, xb = 320

    static func pack(_ row: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer, _ nb: Int) {
        let mask = splat8(0x0F)
        for b in 0..<nb {
            let p = row + b * 144, o = dst + b * wb
            for c in 0..<4 {
                let q4 = ld256(p, 16 + 32 * c)
                o.storeBytes(of: _mm256_and_si256(q4, mask), toByteOffset: 64 * c, as: V256i.self)
                o.storeBytes(of: _mm256_and_si256(_mm256_srli_epi16(q4, 4), mask), toByteOffset: 64 * c + 32, as: V256i.self)
            }
            let (sc, m) = kScalesMins(p + 4)
            for j in 0..<8 {
                let v = _mm256_set1_epi16(Int16(truncatingIfNeeded: (sc >> UInt64(8 * j)) & 0xFF))
                o.storeBytes(of: v, toByteOffset: 256 + 32 * j, as: V256i.self)
            }
            o.storeBytes(of: _mm256_set1_ps(h2f(p, 0)), toByteOffset: 512, as: V8f.self)
            o.storeBytes(of: _mm256_set1_ps(h2f(p, 2)), toByteOffset: 544, as: V8f.self)
            o.storeBytes(of: _mm_cvtepu8_epi16(_mm_cvtsi64_si128(Int64(bitPattern: m))), toByteOffset: 576, as: V128i.self)
        }
    }

    static func prepare(_ xq: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer, _ count: Int) {
        for b in 0..<(count / 256) {
            let y = xq + b * 292, o = dst + b * xb
            o.copyMemory(from: y + 4, byteCount: 256)
            o.storeBytes(of: _mm256_set1_ps(q8kD(y)), toByteOffset: 256, as: V8f.self)
            o.storeBytes(of: _mm_hadd_epi16(ld128(y, 260), ld128(y, 276)), toByteOffset: 288, as: V128i.self)
        }
    }

    /// `nR` (1...2) rows × `nT` (1...4) tokens.
    @inline(__always)
    static func micro(_ w: UnsafeRawPointer, _ pw: Int, _ nR: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nT: Int,
                      _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) {
        let zf = _mm256_setzero_ps()
        var f0 = (zf, zf), f1 = f0, f2 = f0, f3 = f0
        for b in 0..<nb {
            let w0 = w + b * wb, w1 = w0 + pw, xb0 = x + b * xb
            let zi = _mm512_setzero_si512()
            var s0 = (zi, zi), s1 = s0, s2 = s0, s3 = s0
            for c in 0..<4 {
                let u0 = ld512(w0, 64 * c), c0 = ld512(w0, 256 + 64 * c)
                let u1 = nR > 1 ? ld512(w1, 64 * c) : zi, c1 = nR > 1 ? ld512(w1, 256 + 64 * c) : zi
                @inline(__always) func tok(_ xt: UnsafeRawPointer, _ s: inout (V512, V512)) {
                    let yv = ld512(xt, 64 * c)
                    s.0 = _mm512_dpwssd_epi32(s.0, _mm512_maddubs_epi16(u0, yv), c0)
                    if nR > 1 { s.1 = _mm512_dpwssd_epi32(s.1, _mm512_maddubs_epi16(u1, yv), c1) }
                }
                tok(xb0, &s0)
                if nT > 1 { tok(xb0 + xs, &s1) }
                if nT > 2 { tok(xb0 + 2 * xs, &s2) }
                if nT > 3 { tok(xb0 + 3 * xs, &s3) }
            }
            @inline(__always) func fin(_ xt: UnsafeRawPointer, _ s: (V512, V512), _ f: inout (V8f, V8f)) {
                let dx = xt.loadUnaligned(fromByteOffset: 256, as: V8f.self)
                let pairs = ld128(xt, 288)
                @inline(__always) func one(_ wr: UnsafeRawPointer, _ s: V512, _ acc: inout V8f) {
                    let s8 = _mm256_add_epi32(_mm512_castsi512_si256(s), csimd_extracti64x4_hi(s))
                    acc = _mm256_fmadd_ps(_mm256_mul_ps(dx, wr.loadUnaligned(fromByteOffset: 512, as: V8f.self)),
                                          _mm256_cvtepi32_ps(s8), acc)
                    let mm = _mm256_zextps128_ps256(_mm_cvtepi32_ps(_mm_madd_epi16(ld128(wr, 576), pairs)))
                    acc = _mm256_fnmadd_ps(_mm256_mul_ps(dx, wr.loadUnaligned(fromByteOffset: 544, as: V8f.self)), mm, acc)
                }
                one(w0, s.0, &f.0)
                if nR > 1 { one(w1, s.1, &f.1) }
            }
            fin(xb0, s0, &f0)
            if nT > 1 { fin(xb0 + xs, s1, &f1) }
            if nT > 2 { fin(xb0 + 2 * xs, s2, &f2) }
            if nT > 3 { fin(xb0 + 3 * xs, s3, &f3) }
        }
        @inline(__always) func out(_ t: Int, _ f: (V8f, V8f)) {
            y[t * ys] = hsum(f.0)
            if nR > 1 { y[t * ys + 1] = hsum(f.1) }
        }
        out(0, f0)
        if nT > 1 { out(1, f1) }
        if nT > 2 { out(2, f2) }
        if nT > 3 { out(3, f3) }
    }

    @inline(never) static func m24(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { micro(w, pw, 2, x, xs, 4, nb, y, ys) }
    @inline(never) static func m23(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { micro(w, pw, 2, x, xs, 3, nb, y, ys) }
    @inline(never) static func m22(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { micro(w, pw, 2, x, xs, 2, nb, y, ys) }
    @inline(never) static func m21(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { micro(w, pw, 2, x, xs, 1, nb, y, ys) }
    @inline(never) static func m14(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { micro(w, pw, 1, x, xs, 4, nb, y, ys) }
    @inline(never) static func m13(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { micro(w, pw, 1, x, xs, 3, nb, y, ys) }
    @inline(never) static func m12(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { micro(w, pw, 1, x, xs, 2, nb, y, ys) }
    @inline(never) static func m11(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { micro(w, pw, 1, x, xs, 1, nb, y, ys) }

    /// Tokens in blocks of 8, 2 rows × 4 tokens per register tile.
    static func sweep(_ w: UnsafeRawPointer, _ pw: Int, _ nr: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nx: Int,
                      _ y: UnsafeMutablePointer<Float>, _ ys: Int, _ nb: Int) {
        var t0 = 0
        while t0 < nx {
            let t1 = min(nx, t0 + 8)
            var r = 0
            while r < nr {
                let nR = min(2, nr - r)
                var t = t0
                while t < t1 {
                    let nT = min(4, t1 - t)
                    let wr = w + r * pw, xt = x + t * xs, yt = y + t * ys + r
                    switch (nR, nT) {
                    case (2, 4): m24(wr, pw, xt, xs, nb, yt, ys)
                    case (2, 3): m23(wr, pw, xt, xs, nb, yt, ys)
                    case (2, 2): m22(wr, pw, xt, xs, nb, yt, ys)
                    case (2, _): m21(wr, pw, xt, xs, nb, yt, ys)
                    case (_, 4): m14(wr, pw, xt, xs, nb, yt, ys)
                    case (_, 3): m13(wr, pw, xt, xs, nb, yt, ys)
                    case (_, 2): m12(wr, pw, xt, xs, nb, yt, ys)
                    case (_, _): m11(wr, pw, xt, xs, nb, yt, ys)
                    }
                    t += nT
                }
                r += nR
            }
            t0 = t1
        }
    }
}

extension Q4_K_VNNI {
    /// Tiled `vecDot` (bit-identical). From 9 token rows: against the 512-bit multi-row kernel, 8 rows were faster
    /// untiled (a Qwen3-MoE-shaped model, 2048 columns, 8 different sequences decoding: 348 → 400 t/s) and Gemma 3
    /// 270M's 8-sequence decode no slower (326 → 330 t/s); prefill (64 rows) is unchanged.
    public static let tile = TileKernels(
        prepare: { Q4_K_Tile.prepare($0, $1, $2) },
        preparedBytes: { count in count / 256 * Q4_K_Tile.xb },
        scratchBytes: { nr, count in nr * (count / 256) * Q4_K_Tile.wb },
        minRows: 9,
        gemm: { w, rowBytes, nr, x, xStride, nx, y, yStride, count, scratch in
            let nb = count / 256, pw = nb * Q4_K_Tile.wb
            for r in 0..<nr { Q4_K_Tile.pack(w + r * rowBytes, scratch + r * pw, nb) }
            Q4_K_Tile.sweep(UnsafeRawPointer(scratch), pw, nr, x, xStride, nx, y, yStride, nb)
        })
}

#endif
