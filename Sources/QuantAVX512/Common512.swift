#if arch(x86_64)  // the whole module is x86-64 only; QuantAVX512.kernels(for:base:) answers nil elsewhere
// Shared building blocks of the AVX-512 + VNNI kernels. This module is compiled for AVX-512 F/BW/VL + VNNI (and
// AVX2/FMA/F16C): nothing in it may run before `KernelDispatch` has checked CPUID.

import _Builtin_intrinsics.intel
import CSIMD
import Quant

typealias V256i = __m256i
typealias V128i = __m128i
typealias V8f = __m256
typealias V512i = __m512i
typealias V16f = __m512

@inline(__always) func ld256(_ p: UnsafeRawPointer, _ off: Int) -> V256i {
    p.loadUnaligned(fromByteOffset: off, as: V256i.self)
}
@inline(__always) func ld128(_ p: UnsafeRawPointer, _ off: Int = 0) -> V128i {
    p.loadUnaligned(fromByteOffset: off, as: V128i.self)
}
/// The half at byte `off` of `p` as f32 (F16C; exact).
@inline(__always) func h2f(_ p: UnsafeRawPointer, _ off: Int) -> Float {
    csimd_f16_to_f32(p.loadUnaligned(fromByteOffset: off, as: UInt16.self))
}
@inline(__always) func hsum(_ v: V8f) -> Float { csimd_hsum_ps(v) }
@inline(__always) func splat8(_ b: UInt8) -> V256i { _mm256_set1_epi8(CChar(bitPattern: b)) }

/// 32 nibbles of the 16 bytes at `p + off`: low nibbles in bytes 0..<16, high nibbles in 16..<32 (ggml order).
@inline(__always) func nibbles32(_ p: UnsafeRawPointer, _ off: Int) -> V256i {
    let t = ld128(p, off)
    return _mm256_and_si256(csimd_set_m128i(_mm_srli_epi16(t, 4), t), splat8(0x0F))
}

/// Byte j is 0xFF where bit j of `bits` is set, else 0 (AVX-512BW: one mask-to-vector move).
@inline(__always) func bytesFromBits(_ bits: UInt32) -> V256i { _mm256_movm_epi8(bits) }

/// Calls `body(first, n)` with n a literal 1...4 (so the multi-row loops specialize), in groups of 4 past that.
@inline(__always)
func forMultiGroups(_ nx: Int, _ body: (_ first: Int, _ n: Int) -> Void) {
    var j = 0
    while j < nx {
        switch nx - j {
        case 1: body(j, 1); j += 1
        case 2: body(j, 2); j += 2
        case 3: body(j, 3); j += 3
        default: body(j, 4); j += 4
        }
    }
}

typealias Acc4 = (V8f, V8f, V8f, V8f)
@inline(__always) func zeroAcc4() -> Acc4 {
    let z = _mm256_setzero_ps()
    return (z, z, z, z)
}
@inline(__always)
func storeRows(_ acc: Acc4, _ nx: Int, _ out: UnsafeMutablePointer<Float>) {
    out[0] = hsum(acc.0)
    if nx > 1 { out[1] = hsum(acc.1) }
    if nx > 2 { out[2] = hsum(acc.2) }
    if nx > 3 { out[3] = hsum(acc.3) }
}

#endif
