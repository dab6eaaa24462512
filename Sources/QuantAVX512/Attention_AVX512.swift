#if arch(x86_64)
import _Builtin_intrinsics.intel
import CSIMD
import Foundation

/// AVX-512 version of the attention inner loop (same contract as Backend's `ScalarAttention.attend` and
/// `Attention_AVX2.attend`): scores of 4 keys × up to 4 heads per pass (one load of each key chunk for all heads, the
/// 16 dot products reduced together), softmax with a 16-lane exp, then the output in 64-column blocks held in
/// registers for up to 4 heads while all value rows stream past (each element still sums its keys in order, one
/// fma each, as `Attention_AVX2`'s axpy loop does).
public enum Attention_AVX512 {
    public static func attend(q: UnsafePointer<Float>, g: Int, headDim: Int, k: UnsafePointer<Float>, kStride: Int,
                              v: UnsafePointer<Float>, vStride: Int, headDimV: Int, slots: UnsafePointer<Int32>,
                              count: Int, scale: Float, softcap: Float, scores: UnsafeMutablePointer<Float>,
                              out: UnsafeMutablePointer<Float>) {
        var h0 = 0
        while h0 < g {
            let nh = min(4, g - h0)
            switch nh {
            case 4: scoreHeads(q + h0 * headDim, 4, headDim, k, kStride, slots, count, scale, scores + h0 * count)
            case 3: scoreHeads(q + h0 * headDim, 3, headDim, k, kStride, slots, count, scale, scores + h0 * count)
            case 2: scoreHeads(q + h0 * headDim, 2, headDim, k, kStride, slots, count, scale, scores + h0 * count)
            default: scoreHeads(q + h0 * headDim, 1, headDim, k, kStride, slots, count, scale, scores + h0 * count)
            }
            h0 += nh
        }
        for h in 0..<g {
            let sc = scores + h * count
            if softcap > 0 { for j in 0..<count { sc[j] = softcap * tanhf(sc[j] / softcap) } }
            // The max is exact whatever the order; the scaling is one multiply per element.
            var vm = _mm512_set1_ps(-Float.infinity)
            var j = 0
            while j < count {
                let msk = count - j >= 16 ? UInt16.max : UInt16((1 << (count - j)) - 1)
                vm = _mm512_mask_max_ps(vm, msk, vm, ldzMasked(sc, j, msk))
                j += 16
            }
            let m = _mm512_reduce_max_ps(vm)
            let sum = expInPlace(sc, count, minus: m)
            let vinv = _mm512_set1_ps(1 / sum)
            j = 0
            while j < count {
                let msk = count - j >= 16 ? UInt16.max : UInt16((1 << (count - j)) - 1)
                _mm512_mask_storeu_ps(UnsafeMutableRawPointer(sc + j), msk, _mm512_mul_ps(ldzMasked(sc, j, msk), vinv))
                j += 16
            }
        }
        h0 = 0
        while h0 < g {
            let nh = min(4, g - h0)
            let o = out + h0 * headDimV, p = scores + h0 * count
            switch nh {
            case 4: weighValues(p, 4, count, v, vStride, headDimV, slots, o)
            case 3: weighValues(p, 3, count, v, vStride, headDimV, slots, o)
            case 2: weighValues(p, 2, count, v, vStride, headDimV, slots, o)
            default: weighValues(p, 1, count, v, vStride, headDimV, slots, o)
            }
            h0 += nh
        }
    }

    @inline(__always) static func ldz(_ p: UnsafePointer<Float>, _ i: Int) -> V16f {
        UnsafeRawPointer(p + i).loadUnaligned(as: V16f.self)
    }
    @inline(__always) static func ldzMasked(_ p: UnsafePointer<Float>, _ i: Int, _ m: UInt16) -> V16f {
        _mm512_maskz_loadu_ps(m, UnsafeRawPointer(p + i))
    }

    /// sc[h·count + j] = (q_h · k_j)·scale for `nh` (1...4, constant after inlining) heads, 4 keys at a time.
    @inline(__always)
    static func scoreHeads(_ q: UnsafePointer<Float>, _ nh: Int, _ d: Int, _ k: UnsafePointer<Float>, _ ks: Int,
                           _ slots: UnsafePointer<Int32>, _ count: Int, _ scale: Float,
                           _ sc: UnsafeMutablePointer<Float>) {
        let tailMask = UInt16((1 << (d % 16)) - 1)
        let full = d - d % 16
        var j = 0
        let z = _mm512_setzero_ps()
        while j < count {
            let nk = min(4, count - j)
            let k0 = k + Int(slots[j]) * ks
            let k1 = nk > 1 ? k + Int(slots[j + 1]) * ks : k0
            let k2 = nk > 2 ? k + Int(slots[j + 2]) * ks : k0
            let k3 = nk > 3 ? k + Int(slots[j + 3]) * ks : k0
            // acc[h][key]
            var a: (V16f, V16f, V16f, V16f) = (z, z, z, z)
            var b = a, c = a, e = a
            @inline(__always) func step(_ kv: (V16f, V16f, V16f, V16f), _ qv: V16f, _ acc: inout (V16f, V16f, V16f, V16f)) {
                acc.0 = _mm512_fmadd_ps(qv, kv.0, acc.0)
                acc.1 = _mm512_fmadd_ps(qv, kv.1, acc.1)
                acc.2 = _mm512_fmadd_ps(qv, kv.2, acc.2)
                acc.3 = _mm512_fmadd_ps(qv, kv.3, acc.3)
            }
            var i = 0
            while i < full {
                let kv = (ldz(k0, i), ldz(k1, i), ldz(k2, i), ldz(k3, i))
                step(kv, ldz(q, i), &a)
                if nh > 1 { step(kv, ldz(q + d, i), &b) }
                if nh > 2 { step(kv, ldz(q + 2 * d, i), &c) }
                if nh > 3 { step(kv, ldz(q + 3 * d, i), &e) }
                i += 16
            }
            if tailMask != 0 {
                let kv = (ldzMasked(k0, i, tailMask), ldzMasked(k1, i, tailMask), ldzMasked(k2, i, tailMask),
                          ldzMasked(k3, i, tailMask))
                step(kv, ldzMasked(q, i, tailMask), &a)
                if nh > 1 { step(kv, ldzMasked(q + d, i, tailMask), &b) }
                if nh > 2 { step(kv, ldzMasked(q + 2 * d, i, tailMask), &c) }
                if nh > 3 { step(kv, ldzMasked(q + 3 * d, i, tailMask), &e) }
            }
            // Lane 4h + key of `s` is Σ acc[h][key].
            let s = _mm512_mul_ps(reduce16(a, b, c, e), _mm512_set1_ps(scale))
            withUnsafeBytes(of: s) { sb in
                let f = sb.baseAddress!.assumingMemoryBound(to: Float.self)
                for h in 0..<nh {
                    for key in 0..<nk { sc[h * count + j + key] = f[4 * h + key] }
                }
            }
            j += nk
        }
    }

    /// The 16 horizontal sums of a.0...a.3, b.0...b.3, c…, e… in lanes 0...15 (lane 4h + key).
    @inline(__always)
    static func reduce16(_ a: (V16f, V16f, V16f, V16f), _ b: (V16f, V16f, V16f, V16f), _ c: (V16f, V16f, V16f, V16f),
                         _ e: (V16f, V16f, V16f, V16f)) -> V16f {
        // Per 128-bit chunk: [x0 y0 x1 y1] + [x2 y2 x3 y3] → [x02 y02 x13 y13].
        @inline(__always) func p1(_ x: V16f, _ y: V16f) -> V16f {
            _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y))
        }
        // [x02 y02 | x13 y13] pairs of 64 bits: lo → [x02 y02 u02 w02], hi → [x13 y13 u13 w13]; sum → 4 sources.
        @inline(__always) func p2(_ xy: V16f, _ uw: V16f) -> V16f {
            let lo = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(xy), _mm512_castps_pd(uw)))
            let hi = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(xy), _mm512_castps_pd(uw)))
            return _mm512_add_ps(lo, hi)
        }
        // Chunks c0..c3 of X and Y: [X0 X2 Y0 Y2] + [X1 X3 Y1 Y3].
        @inline(__always) func p3(_ x: V16f, _ y: V16f) -> V16f {
            _mm512_add_ps(csimd_shuffle_f32x4_even(x, y), csimd_shuffle_f32x4_odd(x, y))
        }
        let qa = p2(p1(a.0, a.1), p1(a.2, a.3))   // each chunk: partial sums of a.0 a.1 a.2 a.3
        let qb = p2(p1(b.0, b.1), p1(b.2, b.3))
        let qc = p2(p1(c.0, c.1), p1(c.2, c.3))
        let qe = p2(p1(e.0, e.1), p1(e.2, e.3))
        let ab = p3(qa, qb)   // chunks: a(c0+c1), a(c2+c3), b(c0+c1), b(c2+c3)
        let ce = p3(qc, qe)
        return p3(ab, ce)     // chunks: a, b, c, e
    }

    /// out[h] = Σ_j p[h][j]·V[j] for `nh` (1...4) heads, in 64-column blocks kept in registers.
    @inline(__always)
    static func weighValues(_ p: UnsafePointer<Float>, _ nh: Int, _ count: Int, _ v: UnsafePointer<Float>, _ vs: Int,
                            _ dv: Int, _ slots: UnsafePointer<Int32>, _ out: UnsafeMutablePointer<Float>) {
        let z = _mm512_setzero_ps()
        var c0 = 0
        while c0 < dv {
            let w = min(64, dv - c0)
            // Masks of the 4 column vectors of this block.
            @inline(__always) func mask(_ i: Int) -> UInt16 {
                let n = max(0, min(16, w - 16 * i))
                return n == 16 ? 0xFFFF : UInt16((1 << n) - 1)
            }
            let m0 = mask(0), m1 = mask(1), m2 = mask(2), m3 = mask(3)
            var a: (V16f, V16f, V16f, V16f) = (z, z, z, z)
            var b = a, c = a, e = a
            if w == 64 {
                for j in 0..<count {
                    let vr = v + Int(slots[j]) * vs + c0
                    let vv = (ldz(vr, 0), ldz(vr, 16), ldz(vr, 32), ldz(vr, 48))
                    @inline(__always) func one(_ pj: Float, _ acc: inout (V16f, V16f, V16f, V16f)) {
                        let s = _mm512_set1_ps(pj)
                        acc.0 = _mm512_fmadd_ps(s, vv.0, acc.0)
                        acc.1 = _mm512_fmadd_ps(s, vv.1, acc.1)
                        acc.2 = _mm512_fmadd_ps(s, vv.2, acc.2)
                        acc.3 = _mm512_fmadd_ps(s, vv.3, acc.3)
                    }
                    one(p[j], &a)
                    if nh > 1 { one(p[count + j], &b) }
                    if nh > 2 { one(p[2 * count + j], &c) }
                    if nh > 3 { one(p[3 * count + j], &e) }
                }
            } else {
                for j in 0..<count {
                    let vr = v + Int(slots[j]) * vs + c0
                    let vv = (ldzMasked(vr, 0, m0), ldzMasked(vr, 16, m1), ldzMasked(vr, 32, m2), ldzMasked(vr, 48, m3))
                    @inline(__always) func one(_ pj: Float, _ acc: inout (V16f, V16f, V16f, V16f)) {
                        let s = _mm512_set1_ps(pj)
                        acc.0 = _mm512_fmadd_ps(s, vv.0, acc.0)
                        acc.1 = _mm512_fmadd_ps(s, vv.1, acc.1)
                        acc.2 = _mm512_fmadd_ps(s, vv.2, acc.2)
                        acc.3 = _mm512_fmadd_ps(s, vv.3, acc.3)
                    }
                    one(p[j], &a)
                    if nh > 1 { one(p[count + j], &b) }
                    if nh > 2 { one(p[2 * count + j], &c) }
                    if nh > 3 { one(p[3 * count + j], &e) }
                }
            }
            @inline(__always) func put(_ o: UnsafeMutablePointer<Float>, _ acc: (V16f, V16f, V16f, V16f)) {
                let r = UnsafeMutableRawPointer(o + c0)
                _mm512_mask_storeu_ps(r, m0, acc.0)
                _mm512_mask_storeu_ps(r + 64, m1, acc.1)
                _mm512_mask_storeu_ps(r + 128, m2, acc.2)
                _mm512_mask_storeu_ps(r + 192, m3, acc.3)
            }
            put(out, a)
            if nh > 1 { put(out + dv, b) }
            if nh > 2 { put(out + 2 * dv, c) }
            if nh > 3 { put(out + 3 * dv, e) }
            c0 += 64
        }
    }

    /// x[i] = exp(x[i] − m) in place; returns the sum.
    static func expInPlace(_ x: UnsafeMutablePointer<Float>, _ n: Int, minus m: Float) -> Float {
        var i = 0
        var acc = _mm512_setzero_ps()
        let vm = _mm512_set1_ps(m)
        while i < n {
            let k = min(16, n - i)
            let msk = k == 16 ? UInt16.max : UInt16((1 << k) - 1)
            let e = exp16(_mm512_sub_ps(ldzMasked(x, i, msk), vm))
            _mm512_mask_storeu_ps(UnsafeMutableRawPointer(x + i), msk, e)
            acc = _mm512_mask_add_ps(acc, msk, acc, e)
            i += 16
        }
        return _mm512_reduce_add_ps(acc)
    }

    /// e^x, 16 lanes, ~2 ulp (Cephes-style range reduction and polynomial, `Attention_AVX2.exp8`'s steps), x ≤ 0.
    @inline(__always)
    static func exp16(_ x0: V16f) -> V16f {
        let x = _mm512_max_ps(x0, _mm512_set1_ps(-87.3))
        let n = csimd_round_nearest_ps512(_mm512_mul_ps(x, _mm512_set1_ps(1.442_695_04)))
        var r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_375), x)
        r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r)
        var p = _mm512_set1_ps(1.987_569_15e-4)
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.398_199_95e-3))
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.333_451_9e-3))
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.166_579_6e-2))
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.166_666_66))
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5))
        p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1)))
        let bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23)
        return _mm512_mul_ps(p, _mm512_castsi512_ps(bits))
    }
}
#endif
