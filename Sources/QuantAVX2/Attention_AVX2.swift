#if arch(x86_64)
import _Builtin_intrinsics.intel
import CSIMD
import Foundation

/// AVX2 + FMA version of the attention inner loop (same contract as Backend's `ScalarAttention.attend`, with
/// plain pointers so this module needs no Backend types): scores of all `g` heads are computed while each
/// key row is in registers/L1, softmax with a vectorised exp, then one pass over V for all heads.
public enum Attention_AVX2 {
    public static func attend(q: UnsafePointer<Float>, g: Int, headDim: Int, k: UnsafePointer<Float>, kStride: Int,
                              v: UnsafePointer<Float>, vStride: Int, headDimV: Int, slots: UnsafePointer<Int32>,
                              count: Int, scale: Float, softcap: Float, scores: UnsafeMutablePointer<Float>,
                              out: UnsafeMutablePointer<Float>) {
        // Scores: for each position, dot with every head of the group (up to 4 heads per pass over the key row).
        for j in 0..<count {
            let kr = k + Int(slots[j]) * kStride
            var h = 0
            while h + 4 <= g {
                let d = dot4(q + h * headDim, headDim, kr, headDim)
                scores[h * count + j] = d.0 * scale
                scores[(h + 1) * count + j] = d.1 * scale
                scores[(h + 2) * count + j] = d.2 * scale
                scores[(h + 3) * count + j] = d.3 * scale
                h += 4
            }
            while h < g {
                scores[h * count + j] = dot(q + h * headDim, kr, headDim) * scale
                h += 1
            }
        }
        for h in 0..<g {
            let sc = scores + h * count
            if softcap > 0 { for j in 0..<count { sc[j] = softcap * tanhf(sc[j] / softcap) } }
            // The max is exact whatever the order; the scaling is one multiply per element.
            var vm = _mm256_set1_ps(-Float.infinity)
            var j = 0
            while j + 8 <= count {
                vm = _mm256_max_ps(vm, ldF(sc, j))
                j += 8
            }
            var m = -Float.infinity
            withUnsafeBytes(of: vm) { b in
                for l in 0..<8 { m = max(m, b.load(fromByteOffset: 4 * l, as: Float.self)) }
            }
            while j < count { m = max(m, sc[j]); j += 1 }
            let sum = expInPlace(sc, count, minus: m)
            let inv = 1 / sum
            let vinv = _mm256_set1_ps(inv)
            j = 0
            while j + 8 <= count {
                stF(sc, j, _mm256_mul_ps(ldF(sc, j), vinv))
                j += 8
            }
            while j < count { sc[j] *= inv; j += 1 }
        }
        // out[h] = Σ_j p[h][j] · V[j]: each element sums its positions in order, one fma each (as `axpy` would), in
        // 16-column blocks of up to 4 heads kept in registers while the value rows stream past.
        var h0 = 0
        while h0 + 4 <= g {
            weighValues4(scores + h0 * count, count, v, vStride, headDimV, slots, out + h0 * headDimV)
            h0 += 4
        }
        if h0 < g {
            out.advanced(by: h0 * headDimV).update(repeating: 0, count: (g - h0) * headDimV)
            for j in 0..<count {
                let vr = v + Int(slots[j]) * vStride
                for h in h0..<g {
                    axpy(scores[h * count + j], vr, out + h * headDimV, headDimV)
                }
            }
        }
    }

    /// `dot` of 4 query rows (`qs` floats apart) with one key row: each the exact steps of `dot`.
    @inline(__always)
    static func dot4(_ q: UnsafePointer<Float>, _ qs: Int, _ b: UnsafePointer<Float>, _ n: Int) -> (Float, Float, Float, Float) {
        var i = 0
        let z = _mm256_setzero_ps()
        var a0 = z, a1 = z, b0 = z, b1 = z, c0 = z, c1 = z, e0 = z, e1 = z
        let q1 = q + qs, q2 = q + 2 * qs, q3 = q + 3 * qs
        while i + 16 <= n {
            let k0 = ldF(b, i), k1 = ldF(b, i + 8)
            a0 = _mm256_fmadd_ps(ldF(q, i), k0, a0)
            a1 = _mm256_fmadd_ps(ldF(q, i + 8), k1, a1)
            b0 = _mm256_fmadd_ps(ldF(q1, i), k0, b0)
            b1 = _mm256_fmadd_ps(ldF(q1, i + 8), k1, b1)
            c0 = _mm256_fmadd_ps(ldF(q2, i), k0, c0)
            c1 = _mm256_fmadd_ps(ldF(q2, i + 8), k1, c1)
            e0 = _mm256_fmadd_ps(ldF(q3, i), k0, e0)
            e1 = _mm256_fmadd_ps(ldF(q3, i + 8), k1, e1)
            i += 16
        }
        if i + 8 <= n {
            let k0 = ldF(b, i)
            a0 = _mm256_fmadd_ps(ldF(q, i), k0, a0)
            b0 = _mm256_fmadd_ps(ldF(q1, i), k0, b0)
            c0 = _mm256_fmadd_ps(ldF(q2, i), k0, c0)
            e0 = _mm256_fmadd_ps(ldF(q3, i), k0, e0)
            i += 8
        }
        var s = (hsum(_mm256_add_ps(a0, a1)), hsum(_mm256_add_ps(b0, b1)), hsum(_mm256_add_ps(c0, c1)),
                 hsum(_mm256_add_ps(e0, e1)))
        while i < n {
            s.0 += q[i] * b[i]
            s.1 += q1[i] * b[i]
            s.2 += q2[i] * b[i]
            s.3 += q3[i] * b[i]
            i += 1
        }
        return s
    }

    /// out[h] = Σ_j p[h][j]·V[j] for 4 heads (`p` rows `count` apart, `out` rows `dv` apart).
    @inline(__always)
    static func weighValues4(_ p: UnsafePointer<Float>, _ count: Int, _ v: UnsafePointer<Float>, _ vs: Int, _ dv: Int,
                             _ slots: UnsafePointer<Int32>, _ out: UnsafeMutablePointer<Float>) {
        let p1 = p + count, p2 = p + 2 * count, p3 = p + 3 * count
        var c0 = 0
        while c0 + 16 <= dv {
            let z = _mm256_setzero_ps()
            var a0 = z, a1 = z, b0 = z, b1 = z, c0v = z, c1v = z, e0 = z, e1 = z
            for j in 0..<count {
                let vr = v + Int(slots[j]) * vs + c0
                let v0 = ldF(vr, 0), v1 = ldF(vr, 8)
                let s0 = _mm256_set1_ps(p[j]), s1 = _mm256_set1_ps(p1[j])
                let s2 = _mm256_set1_ps(p2[j]), s3 = _mm256_set1_ps(p3[j])
                a0 = _mm256_fmadd_ps(s0, v0, a0)
                a1 = _mm256_fmadd_ps(s0, v1, a1)
                b0 = _mm256_fmadd_ps(s1, v0, b0)
                b1 = _mm256_fmadd_ps(s1, v1, b1)
                c0v = _mm256_fmadd_ps(s2, v0, c0v)
                c1v = _mm256_fmadd_ps(s2, v1, c1v)
                e0 = _mm256_fmadd_ps(s3, v0, e0)
                e1 = _mm256_fmadd_ps(s3, v1, e1)
            }
            stF(out, c0, a0)
            stF(out, c0 + 8, a1)
            stF(out, dv + c0, b0)
            stF(out, dv + c0 + 8, b1)
            stF(out, 2 * dv + c0, c0v)
            stF(out, 2 * dv + c0 + 8, c1v)
            stF(out, 3 * dv + c0, e0)
            stF(out, 3 * dv + c0 + 8, e1)
            c0 += 16
        }
        if c0 < dv {   // the last < 16 columns: the plain loop
            for h in 0..<4 { (out + h * dv + c0).update(repeating: 0, count: dv - c0) }
            for j in 0..<count {
                let vr = v + Int(slots[j]) * vs + c0
                for h in 0..<4 { axpy(p[h * count + j], vr, out + h * dv + c0, dv - c0) }
            }
        }
    }

    @inline(__always)
    static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        var i = 0
        var s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps()
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(ldF(a, i), ldF(b, i), s0)
            s1 = _mm256_fmadd_ps(ldF(a, i + 8), ldF(b, i + 8), s1)
            i += 16
        }
        if i + 8 <= n {
            s0 = _mm256_fmadd_ps(ldF(a, i), ldF(b, i), s0)
            i += 8
        }
        var s = hsum(_mm256_add_ps(s0, s1))
        while i < n {
            s += a[i] * b[i]
            i += 1
        }
        return s
    }

    @inline(__always)
    static func axpy(_ c: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
        var i = 0
        let vc = _mm256_set1_ps(c)
        while i + 8 <= n {
            stF(y, i, _mm256_fmadd_ps(vc, ldF(x, i), ldF(y, i)))
            i += 8
        }
        while i < n {
            y[i] += c * x[i]
            i += 1
        }
    }

    /// x[i] = exp(x[i] - m) in place; returns the sum.
    static func expInPlace(_ x: UnsafeMutablePointer<Float>, _ n: Int, minus m: Float) -> Float {
        var i = 0
        var acc = _mm256_setzero_ps()
        let vm = _mm256_set1_ps(m)
        while i + 8 <= n {
            let e = exp8(_mm256_sub_ps(ldF(x, i), vm))
            stF(x, i, e)
            acc = _mm256_add_ps(acc, e)
            i += 8
        }
        var s = hsum(acc)
        while i < n {
            x[i] = expf(x[i] - m)
            s += x[i]
            i += 1
        }
        return s
    }

    /// e^x, 8 lanes, ~2 ulp (Cephes-style range reduction and polynomial), inputs <= 0 here.
    @inline(__always)
    static func exp8(_ x0: V8f) -> V8f {
        let x = _mm256_max_ps(x0, _mm256_set1_ps(-87.3))
        let n = csimd_round_nearest_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.442_695_04)))
        var r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_375), x)
        r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r)
        var p = _mm256_set1_ps(1.987_569_15e-4)
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.398_199_95e-3))
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.333_451_9e-3))
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166_579_6e-2))
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.166_666_66))
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5))
        p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1)))
        let bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23)
        return _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
    }
}
#endif
