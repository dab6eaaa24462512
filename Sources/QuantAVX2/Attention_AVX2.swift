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
        // Scores: for each position, dot with every head of the group.
        for j in 0..<count {
            let kr = k + Int(slots[j]) * kStride
            for h in 0..<g {
                scores[h * count + j] = dot(q + h * headDim, kr, headDim) * scale
            }
        }
        for h in 0..<g {
            let sc = scores + h * count
            if softcap > 0 { for j in 0..<count { sc[j] = softcap * tanhf(sc[j] / softcap) } }
            var m = -Float.infinity
            for j in 0..<count { m = max(m, sc[j]) }
            let sum = expInPlace(sc, count, minus: m)
            let inv = 1 / sum
            for j in 0..<count { sc[j] *= inv }
        }
        // out[h] = Σ_j p[h][j] · V[j]
        out.update(repeating: 0, count: g * headDimV)
        for j in 0..<count {
            let vr = v + Int(slots[j]) * vStride
            for h in 0..<g {
                axpy(scores[h * count + j], vr, out + h * headDimV, headDimV)
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
