#if arch(x86_64)  // the whole module is x86-64 only; QuantAVX2.kernels(for:) answers nil elsewhere
import _Builtin_intrinsics.intel
import CSIMD
import Quant

/// Σ row[i]·x[i] with `load(i)` giving 8 f32 weights starting at element i, and `one(i)` a single one.
@inline(__always)
func dotFloats(_ x: UnsafePointer<Float>, _ count: Int, _ load: (Int) -> V8f, _ one: (Int) -> Float) -> Float {
    var a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0
    var i = 0
    while i + 32 <= count {
        a0 = _mm256_fmadd_ps(load(i), ldF(x, i), a0)
        a1 = _mm256_fmadd_ps(load(i + 8), ldF(x, i + 8), a1)
        a2 = _mm256_fmadd_ps(load(i + 16), ldF(x, i + 16), a2)
        a3 = _mm256_fmadd_ps(load(i + 24), ldF(x, i + 24), a3)
        i += 32
    }
    while i + 8 <= count {
        a0 = _mm256_fmadd_ps(load(i), ldF(x, i), a0)
        i += 8
    }
    var s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)))
    while i < count {
        s += one(i) * x[i]
        i += 1
    }
    return s
}

/// IEEE half with F16C.
public enum F16_AVX2 {
    @inline(__always) static func load8(_ p: UnsafeRawPointer, _ i: Int) -> V8f { _mm256_cvtph_ps(ld128(p, 2 * i)) }

    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        var i = 0
        while i + 8 <= count {
            stF(dst, i, load8(src, i))
            i += 8
        }
        while i < count {
            dst[i] = h2f(src, 2 * i)
            i += 1
        }
    }

    /// Round to nearest even, as `F16.quantize`.
    public static func quantize(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, _ count: Int) {
        var i = 0
        while i + 8 <= count {
            (dst + 2 * i).storeBytes(of: csimd_cvtps_ph(ldF(src, i)), as: V128i.self)
            i += 8
        }
        while i < count {
            dst.storeBytes(of: csimd_f32_to_f16(src[i]), toByteOffset: 2 * i, as: UInt16.self)
            i += 1
        }
    }

    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        dotFloats(x, count, { load8(row, $0) }, { h2f(row, 2 * $0) })
    }

    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        dotF32(row, xq.assumingMemoryBound(to: Float.self), count)
    }

    public static var kernels: QuantKernels {
        QuantKernels(type: .f16, dequantize: dequantize, quantize: quantize, dotF32: dotF32, vecDotType: .f32,
                     vecDot: vecDot, vecDotMulti: QuantKernels.referenceVecDotMulti(vecDot))
    }
}

/// bfloat16.
public enum BF16_AVX2 {
    @inline(__always) static func load8(_ p: UnsafeRawPointer, _ i: Int) -> V8f {
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(ld128(p, 2 * i)), 16))
    }
    @inline(__always) static func one(_ p: UnsafeRawPointer, _ i: Int) -> Float {
        Float(bitPattern: UInt32(p.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) << 16)
    }

    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        var i = 0
        while i + 8 <= count {
            stF(dst, i, load8(src, i))
            i += 8
        }
        while i < count {
            dst[i] = one(src, i)
            i += 1
        }
    }

    /// As `BF16.quantize`: NaN stays a quiet NaN, the rest rounds to nearest even.
    public static func quantize(_ src: UnsafePointer<Float>, _ dst: UnsafeMutableRawPointer, _ count: Int) {
        var i = 0
        let absMask = _mm256_set1_epi32(0x7fff_ffff), inf = _mm256_set1_epi32(0x7f80_0000)
        let bias = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1), quiet = _mm256_set1_epi32(64)
        @inline(__always) func cvt(_ k: Int) -> V256i {
            let u = _mm256_castps_si256(ldF(src, k))
            let isNaN = _mm256_cmpgt_epi32(_mm256_and_si256(u, absMask), inf)
            let hi = _mm256_srli_epi32(u, 16)
            let r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(bias, _mm256_and_si256(hi, one))), 16)
            return _mm256_blendv_epi8(r, _mm256_or_si256(hi, quiet), isNaN)
        }
        while i + 16 <= count {
            let packed = csimd_permute4x64_0213(_mm256_packus_epi32(cvt(i), cvt(i + 8)))
            (dst + 2 * i).storeBytes(of: packed, as: V256i.self)
            i += 16
        }
        if i < count { BF16.quantize(src + i, dst + 2 * i, count - i) }
    }

    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        dotFloats(x, count, { load8(row, $0) }, { one(row, $0) })
    }

    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        dotF32(row, xq.assumingMemoryBound(to: Float.self), count)
    }

    public static var kernels: QuantKernels {
        QuantKernels(type: .bf16, dequantize: dequantize, quantize: quantize, dotF32: dotF32, vecDotType: .f32,
                     vecDot: vecDot, vecDotMulti: QuantKernels.referenceVecDotMulti(vecDot))
    }
}

/// Plain f32.
public enum F32_AVX2 {
    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        let w = row.assumingMemoryBound(to: Float.self)
        return dotFloats(x, count, { UnsafeRawPointer(w + $0).loadUnaligned(as: V8f.self) },
                         { row.loadUnaligned(fromByteOffset: 4 * $0, as: Float.self) })
    }

    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        dotF32(row, xq.assumingMemoryBound(to: Float.self), count)
    }

    public static var kernels: QuantKernels {
        QuantKernels(type: .f32, dequantize: F32.dequantize, quantize: F32.quantize, dotF32: dotF32, vecDotType: .f32,
                     vecDot: vecDot, vecDotMulti: QuantKernels.referenceVecDotMulti(vecDot))
    }
}

#endif
