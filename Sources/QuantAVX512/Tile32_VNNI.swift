#if arch(x86_64)  // the whole module is x86-64 only; QuantAVX512.kernels(for:base:) answers nil elsewhere
import _Builtin_intrinsics.intel
import CSIMD
import Quant

// Tiled matrix product of the signed 32-element formats (Q8_0, Q5_0, Q4_0) against many Q8_0 activation rows,
// bit-identical to their 512-bit `vecDot` (`multi32VNNI512`).
//
// Each weight row is decoded once per call into unsigned bytes u = q + off (off = 128 / 16 / 8) and a scale vector,
// two blocks per 64-byte slot; each activation row once per matmul into its bytes, scale vector and the correction
// −off·Σ₄y (per int32 lane), so that vpdpbusd(−off·Σ₄y, u, y) is exactly the int32 lane sum Σ₄ q·y the one-row
// kernel gets from |q| and sign(y, q). A 4 × 4 register tile then costs per block pair and (row, token) one
// vpdpbusd, one conversion, one multiply (the scales d_w·d_x, the same product) and one fma, in the one-row
// kernel's order.
//
// Layouts (per pair p of blocks 2p, 2p+1; a last odd block gets a slot of its own, upper half zero):
//   weights (scratch), 128 bytes: u[64] | d_w as 16 f32 (8 of each block)
//   activations, 192 bytes:       y[64] | d_x as 16 f32 | −off·Σ₄y as 16 int32

typealias V512 = __m512i

@inline(__always) func ld512(_ p: UnsafeRawPointer, _ off: Int = 0) -> V512 {
    p.loadUnaligned(fromByteOffset: off, as: V512.self)
}
@inline(__always) func ld512f(_ p: UnsafeRawPointer, _ off: Int = 0) -> V16f {
    p.loadUnaligned(fromByteOffset: off, as: V16f.self)
}

/// The tile kernels of a 32-element format: `off` added to the decoded signed quants makes them unsigned,
/// `shift` = log2(off).
@inline(__always)
func tile32Kernels(ts: Int, off: UInt8, shift: UInt32, decode: @escaping @Sendable (UnsafeRawPointer) -> V256i) -> TileKernels {
    TileKernels(
        prepare: { xq, dst, count in prepare32(xq, dst, count, shift) },
        preparedBytes: { count in (count / 32 + 1) / 2 * 192 },
        scratchBytes: { nr, count in nr * ((count / 32 + 1) / 2) * 128 },
        gemm: { w, rowBytes, nr, x, xStride, nx, y, yStride, count, scratch in
            let nb = count / 32, slots = (nb + 1) / 2
            let pw = slots * 128
            for r in 0..<nr { pack32(w + r * rowBytes, scratch + r * pw, nb, ts, off, decode) }
            tile32Sweep(UnsafeRawPointer(scratch), pw, nr, x, xStride, nx, y, yStride, nb)
        })
}

/// One Q8_0 activation row → the prepared layout.
@inline(__always)
func prepare32(_ xq: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer, _ count: Int, _ shift: UInt32) {
    let nb = count / 32
    let ones = _mm512_set1_epi8(1), zero = _mm512_setzero_si512()
    var b = 0
    while b < nb {
        let p = xq + b * 34
        let two = b + 1 < nb
        let yv = csimd_set_m256i(two ? ld256(p, 36) : _mm256_setzero_si256(), ld256(p, 2))
        let d0 = h2f(p, 0), d1: Float = two ? h2f(p, 34) : 0
        let o = dst + (b / 2) * 192
        o.storeBytes(of: yv, as: V512.self)
        (o + 64).storeBytes(of: csimd_set_m256(_mm256_set1_ps(d1), _mm256_set1_ps(d0)), as: V16f.self)
        let s4 = _mm512_dpbusd_epi32(zero, ones, yv)
        (o + 128).storeBytes(of: _mm512_sub_epi32(zero, _mm512_slli_epi32(s4, shift)), as: V512.self)
        b += 2
    }
}

/// One weight row → the packed layout.
@inline(__always)
func pack32(_ row: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer, _ nb: Int, _ ts: Int, _ off: UInt8,
            _ decode: (UnsafeRawPointer) -> V256i) {
    let o8 = splat8(off)
    var b = 0
    while b < nb {
        let p = row + b * ts
        let two = b + 1 < nb
        let lo = _mm256_add_epi8(decode(p), o8)
        let hi = two ? _mm256_add_epi8(decode(p + ts), o8) : _mm256_setzero_si256()
        let o = dst + (b / 2) * 128
        o.storeBytes(of: csimd_set_m256i(hi, lo), as: V512.self)
        let d1: Float = two ? h2f(p, ts) : 0
        (o + 64).storeBytes(of: csimd_set_m256(_mm256_set1_ps(d1), _mm256_set1_ps(h2f(p, 0))), as: V16f.self)
        b += 2
    }
}

/// All (row, token) pairs of `nr` packed rows × `nx` prepared activation rows: tokens in blocks of 16 (kept in L1
/// while the row tiles pass over them), 4 × 4 register tiles.
@inline(never)
func tile32Sweep(_ w: UnsafeRawPointer, _ pw: Int, _ nr: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nx: Int,
                 _ y: UnsafeMutablePointer<Float>, _ ys: Int, _ nb: Int) {
    var t0 = 0
    while t0 < nx {
        let t1 = min(nx, t0 + 16)
        var r = 0
        while r < nr {
            let nR = min(4, nr - r)
            var t = t0
            while t < t1 {
                let nT = min(4, t1 - t)
                let wr = w + r * pw, xt = x + t * xs, yt = y + t * ys + r
                switch (nR, nT) {
                case (4, 4): micro32_4x4(wr, pw, xt, xs, nb, yt, ys)
                case (4, 3): micro32_4x3(wr, pw, xt, xs, nb, yt, ys)
                case (4, 2): micro32_4x2(wr, pw, xt, xs, nb, yt, ys)
                case (4, _): micro32_4x1(wr, pw, xt, xs, nb, yt, ys)
                case (3, 4): micro32_3x4(wr, pw, xt, xs, nb, yt, ys)
                case (3, 3): micro32_3x3(wr, pw, xt, xs, nb, yt, ys)
                case (3, 2): micro32_3x2(wr, pw, xt, xs, nb, yt, ys)
                case (3, _): micro32_3x1(wr, pw, xt, xs, nb, yt, ys)
                case (2, 4): micro32_2x4(wr, pw, xt, xs, nb, yt, ys)
                case (2, 3): micro32_2x3(wr, pw, xt, xs, nb, yt, ys)
                case (2, 2): micro32_2x2(wr, pw, xt, xs, nb, yt, ys)
                case (2, _): micro32_2x1(wr, pw, xt, xs, nb, yt, ys)
                case (_, 4): micro32_1x4(wr, pw, xt, xs, nb, yt, ys)
                case (_, 3): micro32_1x3(wr, pw, xt, xs, nb, yt, ys)
                case (_, 2): micro32_1x2(wr, pw, xt, xs, nb, yt, ys)
                case (_, _): micro32_1x1(wr, pw, xt, xs, nb, yt, ys)
                }
                t += nT
            }
            r += nR
        }
        t0 = t1
    }
}

// `micro32` specialized for every tile size (Swift does not always inline it into the sweep's switch).
@inline(never) func micro32_1x1(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { micro32(w, pw, 1, x, xs, 1, nb, y, ys) }
@inline(never) func micro32_1x2(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { micro32(w, pw, 1, x, xs, 2, nb, y, ys) }
@inline(never) func micro32_1x3(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { micro32(w, pw, 1, x, xs, 3, nb, y, ys) }
@inline(never) func micro32_1x4(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { micro32(w, pw, 1, x, xs, 4, nb, y, ys) }
@inline(never) func micro32_2x1(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { micro32(w, pw, 2, x, xs, 1, nb, y, ys) }
@inline(never) func micro32_2x2(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { micro32(w, pw, 2, x, xs, 2, nb, y, ys) }
@inline(never) func micro32_2x3(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { micro32(w, pw, 2, x, xs, 3, nb, y, ys) }
@inline(never) func micro32_2x4(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { micro32(w, pw, 2, x, xs, 4, nb, y, ys) }
@inline(never) func micro32_3x1(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { micro32(w, pw, 3, x, xs, 1, nb, y, ys) }
@inline(never) func micro32_3x2(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { micro32(w, pw, 3, x, xs, 2, nb, y, ys) }
@inline(never) func micro32_3x3(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { micro32(w, pw, 3, x, xs, 3, nb, y, ys) }
@inline(never) func micro32_3x4(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { micro32(w, pw, 3, x, xs, 4, nb, y, ys) }
@inline(never) func micro32_4x1(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { micro32(w, pw, 4, x, xs, 1, nb, y, ys) }
@inline(never) func micro32_4x2(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { micro32(w, pw, 4, x, xs, 2, nb, y, ys) }
@inline(never) func micro32_4x3(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { micro32(w, pw, 4, x, xs, 3, nb, y, ys) }
@inline(never) func micro32_4x4(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { micro32(w, pw, 4, x, xs, 4, nb, y, ys) }

typealias Z4 = (V16f, V16f, V16f, V16f)

/// `nR` (1...4) packed rows × `nT` (1...4) prepared activation rows, both constants after inlining:
/// y[t·ys + r] = Σ over block pairs of (d_w·d_x)·Σ₄q·y into 16 lanes, folded to 8 and summed as `hsum`, plus the
/// odd last block as the 256-bit kernel sums it (`multi32VNNI512`'s steps exactly).
@inline(__always)
func micro32(_ w: UnsafeRawPointer, _ pw: Int, _ nR: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nT: Int, _ nb: Int,
             _ y: UnsafeMutablePointer<Float>, _ ys: Int) {
    let zf = _mm512_setzero_ps(), zi = _mm512_setzero_si512()
    var a0: Z4 = (zf, zf, zf, zf), a1 = a0, a2 = a0, a3 = a0
    let np = nb / 2
    for p in 0..<np {
        let wp = w + p * 128
        let u0 = ld512(wp), d0 = ld512f(wp, 64)
        let u1 = nR > 1 ? ld512(wp, pw) : zi, d1 = nR > 1 ? ld512f(wp, pw + 64) : zf
        let u2 = nR > 2 ? ld512(wp, 2 * pw) : zi, d2 = nR > 2 ? ld512f(wp, 2 * pw + 64) : zf
        let u3 = nR > 3 ? ld512(wp, 3 * pw) : zi, d3 = nR > 3 ? ld512f(wp, 3 * pw + 64) : zf
        @inline(__always) func tok(_ xb: UnsafeRawPointer, _ a: inout Z4) {
            let yv = ld512(xb), xd = ld512f(xb, 64), nc = ld512(xb, 128)
            @inline(__always) func one(_ u: V512, _ d: V16f, _ acc: inout V16f) {
                acc = _mm512_fmadd_ps(_mm512_mul_ps(d, xd), _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(nc, u, yv)), acc)
            }
            one(u0, d0, &a.0)
            if nR > 1 { one(u1, d1, &a.1) }
            if nR > 2 { one(u2, d2, &a.2) }
            if nR > 3 { one(u3, d3, &a.3) }
        }
        let xb = x + p * 192
        tok(xb, &a0)
        if nT > 1 { tok(xb + xs, &a1) }
        if nT > 2 { tok(xb + 2 * xs, &a2) }
        if nT > 3 { tok(xb + 3 * xs, &a3) }
    }
    let odd = nb & 1 == 1
    if nR == 4 && nT == 4 {
        // All 16 results at once, each summed exactly as `fin` below sums it (see `hsum16`).
        var tails = (zf, zf, zf, zf)
        if odd {
            withUnsafeMutableBytes(of: &tails) { tb in
                let tf = tb.baseAddress!.assumingMemoryBound(to: Float.self)
                for r in 0..<4 {
                    for t in 0..<4 {
                        let wp = w + r * pw + np * 128, xp = x + t * xs + np * 192
                        let s = csimd_dpbusd256(ld256(xp, 128), ld256(wp, 0), ld256(xp, 0))
                        let sc = _mm256_mul_ps(wp.loadUnaligned(fromByteOffset: 64, as: V8f.self),
                                               xp.loadUnaligned(fromByteOffset: 64, as: V8f.self))
                        tf[4 * r + t] = hsum(_mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(s), _mm256_setzero_ps()))
                    }
                }
            }
        }
        let res = _mm512_add_ps(hsum16((a0.0, a1.0, a2.0, a3.0), (a0.1, a1.1, a2.1, a3.1),
                                       (a0.2, a1.2, a2.2, a3.2), (a0.3, a1.3, a2.3, a3.3)), tails.0)
        withUnsafeBytes(of: res) { rb in
            let f = rb.baseAddress!.assumingMemoryBound(to: Float.self)
            for r in 0..<4 {
                for t in 0..<4 { y[t * ys + r] = f[4 * r + t] }
            }
        }
        return
    }
    @inline(__always) func fin(_ t: Int, _ a: Z4) {
        let xb = x + t * xs
        @inline(__always) func one(_ r: Int, _ acc: V16f) {
            var tail: Float = 0
            if odd {
                let wp = w + r * pw + np * 128, xp = xb + np * 192
                let s = csimd_dpbusd256(ld256(xp, 128), ld256(wp, 0), ld256(xp, 0))
                let sc = _mm256_mul_ps(wp.loadUnaligned(fromByteOffset: 64, as: V8f.self),
                                       xp.loadUnaligned(fromByteOffset: 64, as: V8f.self))
                tail = hsum(_mm256_fmadd_ps(sc, _mm256_cvtepi32_ps(s), _mm256_setzero_ps()))
            }
            y[t * ys + r] = hsum(_mm256_add_ps(_mm512_castps512_ps256(acc), csimd_extractf32x8_hi(acc))) + tail
        }
        one(0, a.0)
        if nR > 1 { one(1, a.1) }
        if nR > 2 { one(2, a.2) }
        if nR > 3 { one(3, a.3) }
    }
    fin(0, a0)
    if nT > 1 { fin(1, a1) }
    if nT > 2 { fin(2, a2) }
    if nT > 3 { fin(3, a3) }
}

/// Lane 4i + j: `hsum` of the 512-bit `v_i.j` folded to 256 bits (lanes k + k+8), with exactly the additions of
/// `hsum(fold(v))` (k + k+4, then k + k+2, then 0 + 1), 16 vectors at once.
@inline(__always)
func hsum16(_ v0: Z4, _ v1: Z4, _ v2: Z4, _ v3: Z4) -> V16f {
    // Inputs in order u[4m + k] = v_k.m, so that the result's lane 4k + m is u[4m + k]'s sum.
    @inline(__always) func l1(_ a: V16f, _ b: V16f) -> V16f {     // [fold a | fold b]
        _mm512_add_ps(csimd_shuffle_f32x4_lo(a, b), csimd_shuffle_f32x4_hi(a, b))
    }
    @inline(__always) func l2(_ c: V16f, _ d: V16f) -> V16f {     // chunks: c.lo c+4 sums, then d's
        _mm512_add_ps(csimd_shuffle_f32x4_even(c, d), csimd_shuffle_f32x4_odd(c, d))
    }
    @inline(__always) func l3(_ e: V16f, _ f: V16f) -> V16f {     // per chunk [e0+e2, e1+e3, f0+f2, f1+f3]
        _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(e), _mm512_castps_pd(f))),
                      _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(e), _mm512_castps_pd(f))))
    }
    @inline(__always) func l4(_ g: V16f, _ h: V16f) -> V16f {     // per chunk [g0+g1, g2+g3, h0+h1, h2+h3]
        _mm512_add_ps(csimd_shuffle_ps_even(g, h), csimd_shuffle_ps_odd(g, h))
    }
    // u[0..<16] = v0.0 v1.0 v2.0 v3.0 | v0.1 ... (m = index within each tuple).
    let q0 = l2(l1(v0.0, v1.0), l1(v2.0, v3.0))   // chunks: S(u0) S(u1) S(u2) S(u3)
    let q1 = l2(l1(v0.1, v1.1), l1(v2.1, v3.1))   // S(u4) ... S(u7)
    let q2 = l2(l1(v0.2, v1.2), l1(v2.2, v3.2))
    let q3 = l2(l1(v0.3, v1.3), l1(v2.3, v3.3))
    // chunk k of l3(q0, q1): [T(u_k), T(u_{4+k})]; of l3(q2, q3): [T(u_{8+k}), T(u_{12+k})]
    return l4(l3(q0, q1), l3(q2, q3))              // chunk k: u_k, u_{4+k}, u_{8+k}, u_{12+k}
}

extension Q8_0_VNNI {
    /// Tiled `vecDot512` (bit-identical).
    public static let tile = tile32Kernels(ts: 34, off: 128, shift: 7, decode: { ld256($0, 2) })
}
extension Q5_0_VNNI {
    /// Tiled `vecDot512` (bit-identical).
    public static let tile = tile32Kernels(ts: 22, off: 16, shift: 4, decode: { decode($0) })
}
extension Q4_0_VNNI {
    /// Tiled `vecDot512` (bit-identical).
    public static let tile = tile32Kernels(ts: 18, off: 8, shift: 3, decode: { decode($0) })
}

#endif
