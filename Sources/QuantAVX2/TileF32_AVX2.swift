#if arch(x86_64)  // the whole module is x86-64 only; QuantAVX2.kernels(for:) answers nil elsewhere
import _Builtin_intrinsics.intel
import CSIMD
import Quant

// Tiled matrix product of Q4_K / Q6_K weights against many f32 activation rows (the MLP down projection in prefill),
// bit-identical to their `dotF32` (`kDotF32Multi` / `Q6_K_AVX2.f32Multi`): each row's 32-weight groups are decoded
// once per call into f32 in scratch (the exact vectors `dotF32` builds), then register tiles of 2 rows × 3 tokens
// (Q4_K) or 1 × 3 (Q6_K, two accumulators each; larger tiles spill AVX2's 16 registers) run `dotF32`'s 8-lane chain
// on every (row, token) pair, the weights read from L1 instead of decoded again for every 4 tokens.
//
// Scratch per row and group: Q4_K 32 f32 (w = fmsub(q, d·sc, dmin·m)); Q6_K 48 f32 (q − 32, then d·sc of the two
// halves, 8 lanes each).

typealias Acc3 = (V8f, V8f, V8f)

/// Tokens in blocks of 2·`maxT`, tiles of up to `maxR` rows × `maxT` tokens; `micro(w, nR, x, nT, y)` with literal
/// sizes (the switch lists every combination so each is specialized).
@inline(__always)
func f32TileSweep(_ w: UnsafeRawPointer, _ pw: Int, _ nr: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nx: Int,
                  _ y: UnsafeMutablePointer<Float>, _ ys: Int, maxR: Int, maxT: Int,
                  _ micro: (_ w: UnsafeRawPointer, _ nR: Int, _ x: UnsafeRawPointer, _ nT: Int, _ y: UnsafeMutablePointer<Float>) -> Void) {
    var t0 = 0
    while t0 < nx {
        let t1 = min(nx, t0 + 2 * maxT)
        var r = 0
        while r < nr {
            let nR = min(maxR, nr - r)
            var t = t0
            while t < t1 {
                let nT = min(maxT, t1 - t)
                let wr = w + r * pw, xt = x + t * xs, yt = y + t * ys + r
                switch (nR, nT) {
                case (3, 3): micro(wr, 3, xt, 3, yt)
                case (3, 2): micro(wr, 3, xt, 2, yt)
                case (3, _): micro(wr, 3, xt, 1, yt)
                case (2, 3): micro(wr, 2, xt, 3, yt)
                case (2, 2): micro(wr, 2, xt, 2, yt)
                case (2, _): micro(wr, 2, xt, 1, yt)
                case (_, 3): micro(wr, 1, xt, 3, yt)
                case (_, 2): micro(wr, 1, xt, 2, yt)
                default: micro(wr, 1, xt, 1, yt)
                }
                t += nT
            }
            r += nR
        }
        t0 = t1
    }
}

@inline(__always) func ldFR(_ p: UnsafeRawPointer, _ off: Int) -> V8f { p.loadUnaligned(fromByteOffset: off, as: V8f.self) }
@inline(__always) func stFR(_ p: UnsafeMutableRawPointer, _ off: Int, _ v: V8f) { p.storeBytes(of: v, toByteOffset: off, as: V8f.self) }

public enum Q4_K_F32Tile_AVX2 {
    static let groupBytes = 128

    @inline(__always)
    static func pack(_ row: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer, _ count: Int) {
        for b in 0..<(count / 256) {
            let p = row + b * 144
            let (sc, m) = kScalesMins(p + 4)
            let dsc = _mm256_mul_ps(u8x8ToF(sc), _mm256_set1_ps(h2f(p, 0)))
            let dm = _mm256_mul_ps(u8x8ToF(m), _mm256_set1_ps(h2f(p, 2)))
            for c in 0..<4 {
                let (ql, qh) = Q4_K_AVX2.chunk(p, c)
                @inline(__always) func put(_ q: V256i, _ j: Int) {
                    let s = lane(dsc, j), mm = lane(dm, j)
                    let o = dst + (8 * b + j) * groupBytes
                    for k in 0..<4 { stFR(o, 32 * k, _mm256_fmsub_ps(i8ToF(q, k), s, mm)) }
                }
                put(ql, 2 * c)
                put(qh, 2 * c + 1)
            }
        }
    }

    /// t = w₀x₀; t = fma(w₁, x₁, t); t = fma(w₂, x₂, t); acc += fma(w₃, x₃, t) per group (`fmaRows`).
    @inline(__always)
    static func micro(_ w: UnsafeRawPointer, _ pw: Int, _ nR: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nT: Int,
                      _ y: UnsafeMutablePointer<Float>, _ ys: Int, _ groups: Int) {
        let z = _mm256_setzero_ps()
        var a0: Acc3 = (z, z, z), a1 = a0, a2 = a0
        for g in 0..<groups {
            let wg = w + g * groupBytes
            @inline(__always) func tok(_ xg: UnsafeRawPointer, _ a: inout Acc3) {
                let x0 = ldFR(xg, 0), x1 = ldFR(xg, 32), x2 = ldFR(xg, 64), x3 = ldFR(xg, 96)
                @inline(__always) func one(_ wr: UnsafeRawPointer, _ acc: inout V8f) {
                    var t = _mm256_mul_ps(ldFR(wr, 0), x0)
                    t = _mm256_fmadd_ps(ldFR(wr, 32), x1, t)
                    t = _mm256_fmadd_ps(ldFR(wr, 64), x2, t)
                    acc = _mm256_add_ps(acc, _mm256_fmadd_ps(ldFR(wr, 96), x3, t))
                }
                one(wg, &a.0)
                if nR > 1 { one(wg + pw, &a.1) }
                if nR > 2 { one(wg + 2 * pw, &a.2) }
            }
            let xg = x + g * 128
            tok(xg, &a0)
            if nT > 1 { tok(xg + xs, &a1) }
            if nT > 2 { tok(xg + 2 * xs, &a2) }
        }
        @inline(__always) func fin(_ t: Int, _ a: Acc3) {
            y[t * ys] = hsum(a.0)
            if nR > 1 { y[t * ys + 1] = hsum(a.1) }
            if nR > 2 { y[t * ys + 2] = hsum(a.2) }
        }
        fin(0, a0)
        if nT > 1 { fin(1, a1) }
        if nT > 2 { fin(2, a2) }
    }

    @inline(never)
    static func sweep(_ w: UnsafeRawPointer, _ pw: Int, _ nr: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nx: Int,
                      _ y: UnsafeMutablePointer<Float>, _ ys: Int, _ count: Int) {
        let groups = count / 32
        f32TileSweep(w, pw, nr, x, xs, nx, y, ys, maxR: 2, maxT: 3) { wr, nR, xt, nT, yt in
            micro(wr, pw, nR, xt, xs, nT, yt, ys, groups)
        }
    }

    /// Tiled `Q4_K_AVX2.dotF32` (bit-identical).
    public static let tile = TileKernels(
        prepare: nil, preparedBytes: { $0 * 4 },
        scratchBytes: { nr, count in nr * (count / 32) * groupBytes },
        gemm: { w, rowBytes, nr, x, xStride, nx, y, yStride, count, scratch in
            let pw = (count / 32) * groupBytes
            for r in 0..<nr { pack(w + r * rowBytes, scratch + r * pw, count) }
            sweep(UnsafeRawPointer(scratch), pw, nr, x, xStride, nx, y, yStride, count)
        })
}

public enum Q6_K_F32Tile_AVX2 {
    static let groupBytes = 192

    @inline(__always)
    static func pack(_ row: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer, _ count: Int) {
        for b in 0..<(count / 256) {
            let p = row + b * 210
            let d = h2f(p, 208)
            for h in 0..<2 {
                for k in 0..<4 {
                    let q = _mm256_sub_epi8(Q6_K_AVX2.decode(p, h, k), splat8(32))
                    let s = 8 * h + 2 * k
                    let o = dst + (8 * b + 4 * h + k) * groupBytes
                    for c in 0..<4 { stFR(o, 32 * c, i8ToF(q, c)) }
                    stFR(o, 128, _mm256_set1_ps(d * Float(p.load(fromByteOffset: 192 + s, as: Int8.self))))
                    stFR(o, 160, _mm256_set1_ps(d * Float(p.load(fromByteOffset: 193 + s, as: Int8.self))))
                }
            }
        }
    }

    /// a = fma(sa, fma(q₁, x₁, q₀x₀), a); c = fma(sb, fma(q₃, x₃, q₂x₂), c); result hsum(a + c) (`f32Multi`).
    @inline(__always)
    static func micro(_ w: UnsafeRawPointer, _ pw: Int, _ nR: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nT: Int,
                      _ y: UnsafeMutablePointer<Float>, _ ys: Int, _ groups: Int) {
        let z = _mm256_setzero_ps()
        var a0 = (z, z), a1 = a0, a2 = a0, c0 = a0, c1 = a0, c2 = a0
        for g in 0..<groups {
            let wg = w + g * groupBytes
            @inline(__always) func tok(_ xg: UnsafeRawPointer, _ a: inout (V8f, V8f), _ c: inout (V8f, V8f)) {
                let x0 = ldFR(xg, 0), x1 = ldFR(xg, 32), x2 = ldFR(xg, 64), x3 = ldFR(xg, 96)
                @inline(__always) func one(_ wr: UnsafeRawPointer, _ a: inout V8f, _ c: inout V8f) {
                    a = _mm256_fmadd_ps(ldFR(wr, 128), _mm256_fmadd_ps(ldFR(wr, 32), x1, _mm256_mul_ps(ldFR(wr, 0), x0)), a)
                    c = _mm256_fmadd_ps(ldFR(wr, 160), _mm256_fmadd_ps(ldFR(wr, 96), x3, _mm256_mul_ps(ldFR(wr, 64), x2)), c)
                }
                one(wg, &a.0, &c.0)
                if nR > 1 { one(wg + pw, &a.1, &c.1) }
            }
            let xg = x + g * 128
            tok(xg, &a0, &c0)
            if nT > 1 { tok(xg + xs, &a1, &c1) }
            if nT > 2 { tok(xg + 2 * xs, &a2, &c2) }
        }
        @inline(__always) func fin(_ t: Int, _ a: (V8f, V8f), _ c: (V8f, V8f)) {
            y[t * ys] = hsum(_mm256_add_ps(a.0, c.0))
            if nR > 1 { y[t * ys + 1] = hsum(_mm256_add_ps(a.1, c.1)) }
        }
        fin(0, a0, c0)
        if nT > 1 { fin(1, a1, c1) }
        if nT > 2 { fin(2, a2, c2) }
    }

    @inline(never)
    static func sweep(_ w: UnsafeRawPointer, _ pw: Int, _ nr: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nx: Int,
                      _ y: UnsafeMutablePointer<Float>, _ ys: Int, _ count: Int) {
        let groups = count / 32
        f32TileSweep(w, pw, nr, x, xs, nx, y, ys, maxR: 1, maxT: 3) { wr, nR, xt, nT, yt in
            micro(wr, pw, nR, xt, xs, nT, yt, ys, groups)
        }
    }

    /// Tiled `Q6_K_AVX2.dotF32` (bit-identical).
    public static let tile = TileKernels(
        prepare: nil, preparedBytes: { $0 * 4 },
        scratchBytes: { nr, count in nr * (count / 32) * groupBytes },
        gemm: { w, rowBytes, nr, x, xStride, nx, y, yStride, count, scratch in
            let pw = (count / 32) * groupBytes
            for r in 0..<nr { pack(w + r * rowBytes, scratch + r * pw, count) }
            sweep(UnsafeRawPointer(scratch), pw, nr, x, xStride, nx, y, yStride, count)
        })
}

#endif
