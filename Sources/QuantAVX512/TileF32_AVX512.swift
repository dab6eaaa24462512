#if arch(x86_64)  // the whole module is x86-64 only; QuantAVX512.kernels(for:base:) answers nil elsewhere
import _Builtin_intrinsics.intel
import CSIMD
import Quant

// Tiled matrix product of Q4_K / Q6_K weights against many f32 activation rows (the MLP down projection in prefill),
// bit-identical to their `dotF32` (QuantAVX2's `kDotF32Multi` / `Q6_K_AVX2.f32Multi`).
//
// `dotF32` decodes each 32-weight group to four 8-lane f32 vectors and runs a fixed chain of 8-lane multiplies and
// fmas per group into one (Q4_K) or two (Q6_K) 8-lane accumulators. Here each row's groups are decoded once per
// call, into f32 in scratch, two rows interleaved per 64 bytes (row 2i in lanes 0..<8, row 2i+1 in lanes 8..<16), so
// one 512-bit operation runs that exact 8-lane step for two rows at once against the activations broadcast to both
// halves. A tile is 2 row pairs × 4 tokens.
//
// Scratch per row pair and 32-weight group:
//   Q4_K, 256 bytes: the four 8-lane chunks of w = fmsub(q, d·sc, dmin·m) (dotF32's weights, same rounding)
//   Q6_K, 384 bytes: the four chunks of q − 32 as f32 (exact), then the scales d·sc of lanes 0..<16 and 16..<32

@inline(__always) func ldF8(_ p: UnsafeRawPointer, _ off: Int) -> V8f { p.loadUnaligned(fromByteOffset: off, as: V8f.self) }

/// The 8 floats at `p + off` in both halves.
@inline(__always) func bcast8(_ p: UnsafeRawPointer, _ off: Int) -> V16f {
    _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(ldF8(p, off))))
}

/// int8 lanes 8k..<8k+8 of v as f32.
@inline(__always) func i8ToF(_ v: V256i, _ k: Int) -> V8f {
    let h: V128i = k < 2 ? _mm256_castsi256_si128(v) : csimd_extracti128_hi(v)
    let part: V128i = (k & 1) == 0 ? h : _mm_unpackhi_epi64(h, h)
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part))
}

/// Lane `j` of v in all 8 lanes.
@inline(__always) func lane(_ v: V8f, _ j: Int) -> V8f { _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(Int32(j))) }

/// The 8 bytes of `b` (unsigned) as f32 lanes.
@inline(__always) func u8x8ToF(_ b: UInt64) -> V8f {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(Int64(bitPattern: b))))
}

@inline(__always) func stF8(_ p: UnsafeMutableRawPointer, _ off: Int, _ v: V8f) {
    p.storeBytes(of: v, toByteOffset: off, as: V8f.self)
}

/// Row pairs of `gemm`'s scratch: rows 2i and 2i+1 interleaved, `groupBytes` per 32-weight group.
@inline(__always)
func f32TileKernels(groupBytes: Int, pack: @escaping @Sendable (_ row: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer, _ count: Int) -> Void,
                    sweep: @escaping @Sendable (_ w: UnsafeRawPointer, _ pw: Int, _ nr: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nx: Int,
                                                _ y: UnsafeMutablePointer<Float>, _ ys: Int, _ count: Int) -> Void) -> TileKernels {
    TileKernels(
        prepare: nil,
        preparedBytes: { count in count * 4 },
        scratchBytes: { nr, count in (nr + 1) / 2 * (count / 32) * groupBytes },
        gemm: { w, rowBytes, nr, x, xStride, nx, y, yStride, count, scratch in
            let pw = (count / 32) * groupBytes
            for r in 0..<nr { pack(w + r * rowBytes, scratch + (r / 2) * pw + (r & 1) * 32, count) }
            if nr & 1 == 1 {   // the missing half of the last pair: zeros (never stored)
                let last = scratch + (nr / 2) * pw + 32
                for g in 0..<(pw / 64) { stF8(last, 64 * g, _mm256_setzero_ps()) }
            }
            sweep(UnsafeRawPointer(scratch), pw, nr, x, xStride, nx, y, yStride, count)
        })
}

/// Tokens in blocks of 8, 2 row pairs × `maxT` (3 or 4) tokens per register tile; `micro(w, nP, x, nT, y)` with
/// literal sizes.
@inline(__always)
func f32Sweep(_ w: UnsafeRawPointer, _ pw: Int, _ nr: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nx: Int,
              _ y: UnsafeMutablePointer<Float>, _ ys: Int, maxT: Int,
              _ micro: (_ w: UnsafeRawPointer, _ nP: Int, _ x: UnsafeRawPointer, _ nT: Int, _ y: UnsafeMutablePointer<Float>, _ nr: Int) -> Void) {
    let pairs = (nr + 1) / 2
    var t0 = 0
    while t0 < nx {
        let t1 = min(nx, t0 + 2 * maxT)
        var p = 0
        while p < pairs {
            let nP = min(2, pairs - p)
            let rows = min(4, nr - 2 * p)
            var t = t0
            while t < t1 {
                let nT = min(maxT, t1 - t)
                let wp = w + p * pw, xt = x + t * xs, yt = y + t * ys + 2 * p
                switch (nP, nT) {
                case (2, 4): micro(wp, 2, xt, 4, yt, rows)
                case (2, 3): micro(wp, 2, xt, 3, yt, rows)
                case (2, 2): micro(wp, 2, xt, 2, yt, rows)
                case (2, _): micro(wp, 2, xt, 1, yt, rows)
                case (_, 4): micro(wp, 1, xt, 4, yt, rows)
                case (_, 3): micro(wp, 1, xt, 3, yt, rows)
                case (_, 2): micro(wp, 1, xt, 2, yt, rows)
                default: micro(wp, 1, xt, 1, yt, rows)
                }
                t += nT
            }
            p += nP
        }
        t0 = t1
    }
}

typealias Z2 = (V16f, V16f)

/// Stores the two row halves of `acc` (`hsum` of each) for rows `r`, `r+1` of `rows`.
@inline(__always)
func storePair(_ acc: V16f, _ y: UnsafeMutablePointer<Float>, _ r: Int, _ rows: Int) {
    y[r] = hsum(_mm512_castps512_ps256(acc))
    if r + 1 < rows { y[r + 1] = hsum(csimd_extractf32x8_hi(acc)) }
}

// MARK: - Q4_K

public enum Q4_K_F32Tile {
    /// One row's weights as `kDotF32Multi` computes them, into its half of the interleaved pairs.
    @inline(__always)
    static func pack(_ row: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer, _ count: Int) {
        let mask = splat8(0x0F)
        for b in 0..<(count / 256) {
            let p = row + b * 144
            let (sc, m) = kScalesMins(p + 4)
            let dsc = _mm256_mul_ps(u8x8ToF(sc), _mm256_set1_ps(h2f(p, 0)))
            let dm = _mm256_mul_ps(u8x8ToF(m), _mm256_set1_ps(h2f(p, 2)))
            for c in 0..<4 {
                let q4 = ld256(p, 16 + 32 * c)
                @inline(__always) func put(_ q: V256i, _ j: Int) {
                    let s = lane(dsc, j), mm = lane(dm, j)
                    let o = dst + (8 * b + j) * 256
                    for k in 0..<4 { stF8(o, 64 * k, _mm256_fmsub_ps(i8ToF(q, k), s, mm)) }
                }
                put(_mm256_and_si256(q4, mask), 2 * c)
                put(_mm256_and_si256(_mm256_srli_epi16(q4, 4), mask), 2 * c + 1)
            }
        }
    }

    /// `nP` row pairs × `nT` tokens: per group t = w₀x₀; t = fma(w₁, x₁, t); … ; acc += t (`fmaRows`).
    @inline(__always)
    static func micro(_ w: UnsafeRawPointer, _ pw: Int, _ nP: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nT: Int,
                      _ y: UnsafeMutablePointer<Float>, _ ys: Int, _ rows: Int, _ groups: Int) {
        let z = _mm512_setzero_ps()
        var a0: Z2 = (z, z), a1 = a0, a2 = a0, a3 = a0
        for g in 0..<groups {
            let wg = w + g * 256
            let w00 = ld512f(wg, 0), w01 = ld512f(wg, 64), w02 = ld512f(wg, 128), w03 = ld512f(wg, 192)
            let w10 = nP > 1 ? ld512f(wg, pw) : z, w11 = nP > 1 ? ld512f(wg, pw + 64) : z
            let w12 = nP > 1 ? ld512f(wg, pw + 128) : z, w13 = nP > 1 ? ld512f(wg, pw + 192) : z
            @inline(__always) func tok(_ xg: UnsafeRawPointer, _ a: inout Z2) {
                let x0 = bcast8(xg, 0), x1 = bcast8(xg, 32), x2 = bcast8(xg, 64), x3 = bcast8(xg, 96)
                var t = _mm512_mul_ps(w00, x0)
                t = _mm512_fmadd_ps(w01, x1, t)
                t = _mm512_fmadd_ps(w02, x2, t)
                a.0 = _mm512_add_ps(a.0, _mm512_fmadd_ps(w03, x3, t))
                if nP > 1 {
                    var u = _mm512_mul_ps(w10, x0)
                    u = _mm512_fmadd_ps(w11, x1, u)
                    u = _mm512_fmadd_ps(w12, x2, u)
                    a.1 = _mm512_add_ps(a.1, _mm512_fmadd_ps(w13, x3, u))
                }
            }
            let xg = x + g * 128
            tok(xg, &a0)
            if nT > 1 { tok(xg + xs, &a1) }
            if nT > 2 { tok(xg + 2 * xs, &a2) }
            if nT > 3 { tok(xg + 3 * xs, &a3) }
        }
        @inline(__always) func fin(_ t: Int, _ a: Z2) {
            storePair(a.0, y + t * ys, 0, rows)
            if nP > 1 { storePair(a.1, y + t * ys, 2, rows) }
        }
        fin(0, a0)
        if nT > 1 { fin(1, a1) }
        if nT > 2 { fin(2, a2) }
        if nT > 3 { fin(3, a3) }
    }

    @inline(never)
    static func sweep(_ w: UnsafeRawPointer, _ pw: Int, _ nr: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nx: Int,
                      _ y: UnsafeMutablePointer<Float>, _ ys: Int, _ count: Int) {
        let groups = count / 32
        f32Sweep(w, pw, nr, x, xs, nx, y, ys, maxT: 4) { wp, nP, xt, nT, yt, rows in
            micro(wp, pw, nP, xt, xs, nT, yt, ys, rows, groups)
        }
    }

    /// Tiled `dotF32` of QuantAVX2's Q4_K (bit-identical).
    public static let tile = f32TileKernels(groupBytes: 256, pack: { pack($0, $1, $2) },
                                            sweep: { sweep($0, $1, $2, $3, $4, $5, $6, $7, $8) })
}

// MARK: - Q6_K

public enum Q6_K_F32Tile {
    /// One row's q − 32 (as f32) and scales d·sc, as `Q6_K_AVX2.f32Multi` uses them.
    @inline(__always)
    static func pack(_ row: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer, _ count: Int) {
        for b in 0..<(count / 256) {
            let p = row + b * 210
            let d = h2f(p, 208)
            for h in 0..<2 {
                for k in 0..<4 {
                    let q = _mm256_sub_epi8(Q6_K_VNNI.decode(p, h, k), splat8(32))
                    let s = 8 * h + 2 * k
                    let o = dst + (8 * b + 4 * h + k) * 384
                    for c in 0..<4 { stF8(o, 64 * c, i8ToF(q, c)) }
                    stF8(o, 256, _mm256_set1_ps(d * Float(p.load(fromByteOffset: 192 + s, as: Int8.self))))
                    stF8(o, 320, _mm256_set1_ps(d * Float(p.load(fromByteOffset: 193 + s, as: Int8.self))))
                }
            }
        }
    }

    /// `nP` row pairs × `nT` tokens: a = fma(sa, fma(q₁, x₁, q₀x₀), a); c = fma(sb, fma(q₃, x₃, q₂x₂), c); result
    /// hsum(a + c).
    @inline(__always)
    static func micro(_ w: UnsafeRawPointer, _ pw: Int, _ nP: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nT: Int,
                      _ y: UnsafeMutablePointer<Float>, _ ys: Int, _ rows: Int, _ groups: Int) {
        let z = _mm512_setzero_ps()
        var a0: Z2 = (z, z), a1 = a0, a2 = a0, a3 = a0
        var c0: Z2 = (z, z), c1 = c0, c2 = c0, c3 = c0
        for g in 0..<groups {
            let wg = w + g * 384
            let q00 = ld512f(wg, 0), q01 = ld512f(wg, 64), q02 = ld512f(wg, 128), q03 = ld512f(wg, 192)
            let q10 = nP > 1 ? ld512f(wg, pw) : z, q11 = nP > 1 ? ld512f(wg, pw + 64) : z
            let q12 = nP > 1 ? ld512f(wg, pw + 128) : z, q13 = nP > 1 ? ld512f(wg, pw + 192) : z
            @inline(__always) func tok(_ xg: UnsafeRawPointer, _ a: inout Z2, _ c: inout Z2) {
                let x0 = bcast8(xg, 0), x1 = bcast8(xg, 32), x2 = bcast8(xg, 64), x3 = bcast8(xg, 96)
                a.0 = _mm512_fmadd_ps(ld512f(wg, 256), _mm512_fmadd_ps(q01, x1, _mm512_mul_ps(q00, x0)), a.0)
                c.0 = _mm512_fmadd_ps(ld512f(wg, 320), _mm512_fmadd_ps(q03, x3, _mm512_mul_ps(q02, x2)), c.0)
                if nP > 1 {
                    a.1 = _mm512_fmadd_ps(ld512f(wg, pw + 256), _mm512_fmadd_ps(q11, x1, _mm512_mul_ps(q10, x0)), a.1)
                    c.1 = _mm512_fmadd_ps(ld512f(wg, pw + 320), _mm512_fmadd_ps(q13, x3, _mm512_mul_ps(q12, x2)), c.1)
                }
            }
            let xg = x + g * 128
            tok(xg, &a0, &c0)
            if nT > 1 { tok(xg + xs, &a1, &c1) }
            if nT > 2 { tok(xg + 2 * xs, &a2, &c2) }
            if nT > 3 { tok(xg + 3 * xs, &a3, &c3) }
        }
        @inline(__always) func fin(_ t: Int, _ a: Z2, _ c: Z2) {
            storePair(_mm512_add_ps(a.0, c.0), y + t * ys, 0, rows)
            if nP > 1 { storePair(_mm512_add_ps(a.1, c.1), y + t * ys, 2, rows) }
        }
        fin(0, a0, c0)
        if nT > 1 { fin(1, a1, c1) }
        if nT > 2 { fin(2, a2, c2) }
        if nT > 3 { fin(3, a3, c3) }
    }

    @inline(never)
    static func sweep(_ w: UnsafeRawPointer, _ pw: Int, _ nr: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nx: Int,
                      _ y: UnsafeMutablePointer<Float>, _ ys: Int, _ count: Int) {
        let groups = count / 32
        // 3 tokens: 4 with two accumulators each spills registers.
        f32Sweep(w, pw, nr, x, xs, nx, y, ys, maxT: 3) { wp, nP, xt, nT, yt, rows in
            micro(wp, pw, nP, xt, xs, nT, yt, ys, rows, groups)
        }
    }

    /// Tiled `dotF32` of QuantAVX2's Q6_K (bit-identical).
    public static let tile = f32TileKernels(groupBytes: 384, pack: { pack($0, $1, $2) },
                                            sweep: { sweep($0, $1, $2, $3, $4, $5, $6, $7, $8) })
}

#endif
