#if arch(x86_64)  // the whole module is x86-64 only; QuantAVX2.kernels(for:) answers nil elsewhere
import _Builtin_intrinsics.intel
import CSIMD
import Quant

// Tiled matrix product of Q5_0 / Q4_0 against many Q8_0 activation rows, bit-identical to their AVX2 `vecDot`
// (`multi32Signed`).
//
// Each weight row is decoded once per call into unsigned bytes u = q + off (off = 16 / 8, so u < 32 and maddubs cannot
// saturate) and its scale; each activation row once per matmul into its bytes, scale and −off·Σ₄y per int32 lane.
// Then madd(maddubs(u, y), 1) − off·Σ₄y is exactly the int32 lane sum Σ₄ q·y the one-row kernel gets from |q| and
// sign(y, q), and each (row, token, block) costs maddubs, madd, add, conversion, the scale product d_w·d_x and one
// fma, in the one-row kernel's order. (Q8_0 is left out: q + 128 would saturate maddubs.)
//
// Layouts per block: weights (scratch) 64 bytes: u[32] | d_w × 8 f32; activations 96 bytes: y[32] | d_x × 8 f32 |
// −off·Σ₄y as 8 int32.

@inline(__always)
func tile32AVX2Kernels(ts: Int, off: UInt8, decode: @escaping @Sendable (UnsafeRawPointer) -> V256i) -> TileKernels {
    TileKernels(
        prepare: { xq, dst, count in
            let nb = count / 32
            let ones = splat8(1)
            for b in 0..<nb {
                let p = xq + b * 34, o = dst + b * 96
                let yv = ld256(p, 2)
                o.storeBytes(of: yv, as: V256i.self)
                o.storeBytes(of: _mm256_set1_ps(h2f(p, 0)), toByteOffset: 32, as: V8f.self)
                let s4 = sumPairs16(_mm256_maddubs_epi16(ones, yv))
                let c = _mm256_mullo_epi32(s4, _mm256_set1_epi32(-Int32(off)))
                o.storeBytes(of: c, toByteOffset: 64, as: V256i.self)
            }
        },
        preparedBytes: { count in count / 32 * 96 },
        scratchBytes: { nr, count in nr * (count / 32) * 64 },
        gemm: { w, rowBytes, nr, x, xStride, nx, y, yStride, count, scratch in
            let nb = count / 32, pw = nb * 64
            let o8 = splat8(off)
            for r in 0..<nr {
                let row = w + r * rowBytes, dst = scratch + r * pw
                for b in 0..<nb {
                    let p = row + b * ts
                    dst.storeBytes(of: _mm256_add_epi8(decode(p), o8), toByteOffset: 64 * b, as: V256i.self)
                    dst.storeBytes(of: _mm256_set1_ps(h2f(p, 0)), toByteOffset: 64 * b + 32, as: V8f.self)
                }
            }
            tile32AVX2Sweep(UnsafeRawPointer(scratch), pw, nr, x, xStride, nx, y, yStride, nb)
        })
}

/// Tokens in blocks of 15, 2 rows × 3 tokens per register tile (2 × 4 spills: AVX2 has 16 registers).
@inline(never)
func tile32AVX2Sweep(_ w: UnsafeRawPointer, _ pw: Int, _ nr: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nx: Int,
                     _ y: UnsafeMutablePointer<Float>, _ ys: Int, _ nb: Int) {
    var t0 = 0
    while t0 < nx {
        let t1 = min(nx, t0 + 15)
        var r = 0
        while r < nr {
            let nR = min(2, nr - r)
            var t = t0
            while t < t1 {
                let nT = min(3, t1 - t)
                let wr = w + r * pw, xt = x + t * xs, yt = y + t * ys + r
                switch (nR, nT) {
                case (2, 3): tile32AVX2_2x3(wr, pw, xt, xs, nb, yt, ys)
                case (2, 2): tile32AVX2_2x2(wr, pw, xt, xs, nb, yt, ys)
                case (2, _): tile32AVX2_2x1(wr, pw, xt, xs, nb, yt, ys)
                case (_, 3): tile32AVX2_1x3(wr, pw, xt, xs, nb, yt, ys)
                case (_, 2): tile32AVX2_1x2(wr, pw, xt, xs, nb, yt, ys)
                case (_, _): tile32AVX2_1x1(wr, pw, xt, xs, nb, yt, ys)
                }
                t += nT
            }
            r += nR
        }
        t0 = t1
    }
}

// `tile32AVX2Micro` specialized for every tile size.
@inline(never) func tile32AVX2_2x3(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { tile32AVX2Micro(w, pw, 2, x, xs, 3, nb, y, ys) }
@inline(never) func tile32AVX2_2x2(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { tile32AVX2Micro(w, pw, 2, x, xs, 2, nb, y, ys) }
@inline(never) func tile32AVX2_2x1(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { tile32AVX2Micro(w, pw, 2, x, xs, 1, nb, y, ys) }
@inline(never) func tile32AVX2_1x3(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { tile32AVX2Micro(w, pw, 1, x, xs, 3, nb, y, ys) }
@inline(never) func tile32AVX2_1x2(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { tile32AVX2Micro(w, pw, 1, x, xs, 2, nb, y, ys) }
@inline(never) func tile32AVX2_1x1(_ w: UnsafeRawPointer, _ pw: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) { tile32AVX2Micro(w, pw, 1, x, xs, 1, nb, y, ys) }

/// `nR` (1...2) packed rows × `nT` (1...3) prepared activation rows, constants after inlining.
@inline(__always)
func tile32AVX2Micro(_ w: UnsafeRawPointer, _ pw: Int, _ nR: Int, _ x: UnsafeRawPointer, _ xs: Int, _ nT: Int,
                     _ nb: Int, _ y: UnsafeMutablePointer<Float>, _ ys: Int) {
    let z = _mm256_setzero_ps()
    var a0 = (z, z), a1 = a0, a2 = a0, a3 = a0
    let ones16 = splat16(1)
    for b in 0..<nb {
        let wb = w + b * 64
        let u0 = ld256(wb, 0), d0 = wb.loadUnaligned(fromByteOffset: 32, as: V8f.self)
        let u1 = nR > 1 ? ld256(wb, pw) : _mm256_setzero_si256()
        let d1 = nR > 1 ? wb.loadUnaligned(fromByteOffset: pw + 32, as: V8f.self) : z
        @inline(__always) func tok(_ xb: UnsafeRawPointer, _ a: inout (V8f, V8f)) {
            let yv = ld256(xb, 0), dx = xb.loadUnaligned(fromByteOffset: 32, as: V8f.self), nc = ld256(xb, 64)
            @inline(__always) func one(_ u: V256i, _ d: V8f, _ acc: inout V8f) {
                let s = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(u, yv), ones16), nc)
                acc = _mm256_fmadd_ps(_mm256_mul_ps(d, dx), _mm256_cvtepi32_ps(s), acc)
            }
            one(u0, d0, &a.0)
            if nR > 1 { one(u1, d1, &a.1) }
        }
        let xb = x + b * 96
        tok(xb, &a0)
        if nT > 1 { tok(xb + xs, &a1) }
        if nT > 2 { tok(xb + 2 * xs, &a2) }
        if nT > 3 { tok(xb + 3 * xs, &a3) }
    }
    @inline(__always) func fin(_ t: Int, _ a: (V8f, V8f)) {
        y[t * ys] = hsum(a.0)
        if nR > 1 { y[t * ys + 1] = hsum(a.1) }
    }
    fin(0, a0)
    if nT > 1 { fin(1, a1) }
    if nT > 2 { fin(2, a2) }
    if nT > 3 { fin(3, a3) }
}

extension Q5_0_AVX2 {
    /// Tiled `vecDot` (bit-identical).
    public static let tile = tile32AVX2Kernels(ts: 22, off: 16, decode: { decode($0) })
}
extension Q4_0_AVX2 {
    /// Tiled `vecDot` (bit-identical).
    public static let tile = tile32AVX2Kernels(ts: 18, off: 8, decode: { decode($0) })
}

#endif
