#if arch(x86_64)  // the whole module is x86-64 only; QuantAVX2.kernels(for:) answers nil elsewhere
import _Builtin_intrinsics.intel
import CSIMD
import Quant

/// Q8_0 with AVX2: `{ half d; int8 qs[32] }`, 34 bytes per 32 elements. Also the activation format of the
/// 32-element blocks.
public enum Q8_0_AVX2 {
    static let bs = 32, ts = 34

    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        for b in 0..<(count / bs) {
            let p = src + b * ts
            store32(ld256(p, 2), h2f(p, 0), dst + b * bs)
        }
    }

    /// Bit-identical to `Q8_0.quantize` for finite input: d = amax/127, q = round-half-away(x/d).
    public static func quantize(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, _ count: Int) {
        let absMask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff))
        let signMask = _mm256_castsi256_ps(_mm256_set1_epi32(Int32(bitPattern: 0x8000_0000)))
        let one = _mm256_set1_ps(1), half = _mm256_set1_ps(0.5)
        for b in 0..<(count / bs) {
            let x = src + b * bs
            let y = dst + b * ts
            let v0 = ldF(x, 0), v1 = ldF(x, 8), v2 = ldF(x, 16), v3 = ldF(x, 24)
            let m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v0, absMask), _mm256_and_ps(v1, absMask)),
                                  _mm256_max_ps(_mm256_and_ps(v2, absMask), _mm256_and_ps(v3, absMask)))
            var m4 = _mm_max_ps(_mm256_castps256_ps128(m), csimd_extractf128_hi(m))
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4))
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4))
            let amax = _mm_cvtss_f32(m4)
            let d = amax / 127
            let id: Float = d != 0 ? 1 / d : 0
            y.storeBytes(of: csimd_f32_to_f16(d), as: UInt16.self)
            let vid = _mm256_set1_ps(id)
            @inline(__always) func q(_ v: V8f) -> V256i {
                let s = _mm256_mul_ps(v, vid)
                let t = csimd_trunc_ps(s)
                let frac = _mm256_and_ps(_mm256_sub_ps(s, t), absMask)
                let step = _mm256_or_ps(_mm256_and_ps(s, signMask), one)
                let r = _mm256_add_ps(t, _mm256_and_ps(csimd_cmpge_ps(frac, half), step))
                return _mm256_cvttps_epi32(r)
            }
            let a = _mm256_packs_epi32(q(v0), q(v1))
            let c = _mm256_packs_epi32(q(v2), q(v3))
            let packed = _mm256_packs_epi16(a, c)
            let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
            (y + 2).storeBytes(of: ordered, as: V256i.self)
        }
    }

    /// The one-row case of `dotF32Multi` (identical bits).
    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        var r: Float = 0
        dotF32Multi32(row, x, 0, 1, &r, count, ts) { ld256($0, 2) }
        return r
    }

    public static func dotF32Multi(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ xStride: Int, _ nx: Int,
                                   _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        forMultiGroups(nx) { j, n in
            dotF32Multi32(row, x + j * xStride, xStride, n, out + j, count, ts) { ld256($0, 2) }
        }
    }

    /// Row · Q8_0 activation (the one-row case of `vecDotMulti`, so both give identical bits).
    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        var r: Float = 0
        multi(row, xq, 0, 1, &r, count)
        return r
    }

    @inline(__always)
    static func multi(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ st: Int, _ nx: Int,
                      _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        multi32Signed(row, xq, st, nx, out, count, ts) { ld256($0, 2) }
    }

    public static func vecDotMulti(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ xqStride: Int, _ nx: Int,
                                   _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        forMultiGroups(nx) { j, n in multi(row, xq + j * xqStride, xqStride, n, out + j, count) }
    }

    public static var kernels: QuantKernels {
        QuantKernels(type: .q8_0, dequantize: dequantize, quantize: quantize, dotF32: dotF32, vecDotType: .q8_0,
                     vecDot: vecDot, vecDotMulti: vecDotMulti, dotF32Multi: dotF32Multi)
    }
}

#endif
