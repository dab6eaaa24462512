#if arch(x86_64)  // the whole module is x86-64 only; QuantAVX2.kernels(for:) answers nil elsewhere
import _Builtin_intrinsics.intel
import CSIMD
import Quant

// The 32-element block formats other than Q8_0, all paired with Q8_0 activations. Each decodes a block to 32
// int8 lanes in one register; the loops below are shared.

/// Σ_blocks d_w·d_x·Σ q·q_x for formats whose decoded quants are signed (sign trick on maddubs): the one-row
/// case of `multi32Signed`, so single- and multi-row dots give identical bits.
@inline(__always)
func vecDot32Signed(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int, _ ts: Int,
                    _ decode: (UnsafeRawPointer) -> V256i) -> Float {
    var r: Float = 0
    multi32Signed(row, xq, 0, 1, &r, count, ts, decode)
    return r
}

/// Σ_blocks d_w·d_x·Σ q·q_x against `nx` (constant after inlining, 1...4) activation rows, each block decoded
/// once. (Two blocks per step into two accumulators per row was tried: no faster for one row, ~8% slower for 4.)
@inline(__always)
func multi32Signed(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ st: Int, _ nx: Int,
                   _ out: UnsafeMutablePointer<Float>, _ count: Int, _ ts: Int,
                   _ decode: (UnsafeRawPointer) -> V256i) {
    var acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0
    for b in 0..<(count / 32) {
        let p = row + b * ts, y = xq + b * 34
        csimd_prefetch(p + 1024)  // weights stream from DRAM in decode
        let q = decode(p)
        let aq = _mm256_sign_epi8(q, q)
        let d = h2f(p, 0)
        @inline(__always) func one(_ y: UnsafeRawPointer, _ acc: inout V8f) {
            let s = sumPairs16(_mm256_maddubs_epi16(aq, _mm256_sign_epi8(ld256(y, 2), q)))
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * h2f(y, 0)), _mm256_cvtepi32_ps(s), acc)
        }
        one(y, &acc0)
        if nx > 1 { one(y + st, &acc1) }
        if nx > 2 { one(y + 2 * st, &acc2) }
        if nx > 3 { one(y + 3 * st, &acc3) }
    }
    out[0] = hsum(acc0)
    if nx > 1 { out[1] = hsum(acc1) }
    if nx > 2 { out[2] = hsum(acc2) }
    if nx > 3 { out[3] = hsum(acc3) }
}

/// Calls `body(n)` with n a literal 1...4 (so the multi-row loops specialize), in groups of 4 past that.
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

/// Σ_blocks d·Σ q·x (+ m·Σ x when `mOff` is given).
@inline(__always)
func dotF32Blocks32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int, _ ts: Int, mOff: Int?,
                    _ decode: (UnsafeRawPointer) -> V256i) -> Float {
    var acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps()
    for b in 0..<(count / 32) {
        let p = row + b * ts, xb = x + b * 32
        csimd_prefetch(p + 1024)  // weights stream from DRAM in decode
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(p, 0)), dot32(decode(p), xb), acc)
        if let mo = mOff {
            let sx = _mm256_add_ps(_mm256_add_ps(ldF(xb, 0), ldF(xb, 8)), _mm256_add_ps(ldF(xb, 16), ldF(xb, 24)))
            accm = _mm256_fmadd_ps(_mm256_set1_ps(h2f(p, mo)), sx, accm)
        }
    }
    return hsum(_mm256_add_ps(acc, accm))
}

/// Σ_blocks d·d_x·Σ q·q_x + m·d_x·Σ q_x for the unsigned formats with a min (Q4_1, Q5_1).
@inline(__always)
func vecDot32Unsigned(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int, _ ts: Int,
                      _ decode: (UnsafeRawPointer) -> V256i) -> Float {
    var acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps()
    for b in 0..<(count / 32) {
        let p = row + b * ts, y = xq + b * 34
        csimd_prefetch(p + 1024)  // weights stream from DRAM in decode
        let yq = ld256(y, 2)
        let s = sumPairs16(_mm256_maddubs_epi16(decode(p), yq))
        let dx = h2f(y, 0)
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(p, 0) * dx), _mm256_cvtepi32_ps(s), acc)
        accm = _mm256_fmadd_ps(_mm256_set1_ps(h2f(p, 2) * dx), _mm256_cvtepi32_ps(sumI8(yq)), accm)
    }
    return hsum(_mm256_add_ps(acc, accm))
}

/// A 32-element block format whose decoded quants are signed int8 (Q4_0, Q5_0): its block size in bytes and its
/// quants of one block; the kernels below are shared.
public protocol SignedBlock32AVX2 {
    static var ts: Int { get }
    static func decode(_ p: UnsafeRawPointer) -> __m256i
}

extension SignedBlock32AVX2 {
    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        for b in 0..<(count / 32) {
            let p = src + b * ts
            store32(decode(p), h2f(p, 0), dst + b * 32)
        }
    }
    /// The one-row case of `dotF32Multi` (identical bits).
    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        var r: Float = 0
        dotF32Multi32(row, x, 0, 1, &r, count, ts, decode)
        return r
    }
    public static func dotF32Multi(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ xStride: Int, _ nx: Int,
                                   _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        forMultiGroups(nx) { j, n in dotF32Multi32(row, x + j * xStride, xStride, n, out + j, count, ts, decode) }
    }
    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        vecDot32Signed(row, xq, count, ts, decode)
    }
    public static func vecDotMulti(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ xqStride: Int, _ nx: Int,
                                   _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        forMultiGroups(nx) { j, n in multi32Signed(row, xq + j * xqStride, xqStride, n, out + j, count, ts, decode) }
    }
}

/// Q4_0 with AVX2: `{ half d; uint8 qs[16] }`, x = d·(q − 8).
public enum Q4_0_AVX2: SignedBlock32AVX2 {
    public static var ts: Int { 18 }
    @inline(__always) public static func decode(_ p: UnsafeRawPointer) -> __m256i {
        _mm256_sub_epi8(nibbles32(p, 2), splat8(8))
    }
    public static var kernels: QuantKernels {
        QuantKernels(type: .q4_0, dequantize: dequantize, quantize: Q4_0.quantize, dotF32: dotF32,
                     vecDotType: .q8_0, vecDot: vecDot, vecDotMulti: vecDotMulti,
                     dotF32Multi: dotF32Multi, vecDotTile: tile)
    }
}

/// Q5_0 with AVX2: `{ half d; uint8 qh[4]; uint8 qs[16] }`, x = d·(q − 16).
public enum Q5_0_AVX2: SignedBlock32AVX2 {
    public static var ts: Int { 22 }
    @inline(__always) public static func decode(_ p: UnsafeRawPointer) -> __m256i {
        let hb = bytesFromBits(p.loadUnaligned(fromByteOffset: 2, as: UInt32.self))
        // bit 4 clear → q − 16 is the nibble with 0xF0 set (negative); set → the nibble itself.
        return _mm256_or_si256(nibbles32(p, 6), _mm256_andnot_si256(hb, splat8(0xF0)))
    }
    public static var kernels: QuantKernels {
        QuantKernels(type: .q5_0, dequantize: dequantize, quantize: Q5_0.quantize, dotF32: dotF32,
                     vecDotType: .q8_0, vecDot: vecDot, vecDotMulti: vecDotMulti,
                     dotF32Multi: dotF32Multi, vecDotTile: tile)
    }
}

/// Q4_1 with AVX2: `{ half d; half m; uint8 qs[16] }`, x = d·q + m.
public enum Q4_1_AVX2 {
    @inline(__always) static func decode(_ p: UnsafeRawPointer) -> V256i { nibbles32(p, 4) }
    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        for b in 0..<(count / 32) {
            let p = src + b * 20
            store32(decode(p), h2f(p, 0), plus: h2f(p, 2), dst + b * 32)
        }
    }
    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        dotF32Blocks32(row, x, count, 20, mOff: 2, decode)
    }
    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        vecDot32Unsigned(row, xq, count, 20, decode)
    }
    public static var kernels: QuantKernels {
        QuantKernels(type: .q4_1, dequantize: dequantize, quantize: Q4_1.quantize, dotF32: dotF32,
                     vecDotType: .q8_0, vecDot: vecDot, vecDotMulti: QuantKernels.referenceVecDotMulti(vecDot))
    }
}

/// Q5_1 with AVX2: `{ half d; half m; uint8 qh[4]; uint8 qs[16] }`, x = d·q + m.
public enum Q5_1_AVX2 {
    @inline(__always) static func decode(_ p: UnsafeRawPointer) -> V256i {
        let hb = bytesFromBits(p.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        return _mm256_or_si256(nibbles32(p, 8), _mm256_and_si256(hb, splat8(0x10)))
    }
    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        for b in 0..<(count / 32) {
            let p = src + b * 24
            store32(decode(p), h2f(p, 0), plus: h2f(p, 2), dst + b * 32)
        }
    }
    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        dotF32Blocks32(row, x, count, 24, mOff: 2, decode)
    }
    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        vecDot32Unsigned(row, xq, count, 24, decode)
    }
    public static var kernels: QuantKernels {
        QuantKernels(type: .q5_1, dequantize: dequantize, quantize: Q5_1.quantize, dotF32: dotF32,
                     vecDotType: .q8_0, vecDot: vecDot, vecDotMulti: QuantKernels.referenceVecDotMulti(vecDot))
    }
}

/// IQ4_NL with AVX2: `{ half d; uint8 qs[16] }`, x = d·kvalues_iq4nl[q].
public enum IQ4_NL_AVX2 {
    @inline(__always) static func decode(_ p: UnsafeRawPointer) -> V256i {
        _mm256_shuffle_epi8(iq4nlTable(), nibbles32(p, 2))
    }
    public static func dequantize(_ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, _ count: Int) {
        for b in 0..<(count / 32) {
            let p = src + b * 18
            store32(decode(p), h2f(p, 0), dst + b * 32)
        }
    }
    public static func dotF32(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ count: Int) -> Float {
        dotF32Blocks32(row, x, count, 18, mOff: nil, decode)
    }
    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        vecDot32Signed(row, xq, count, 18, decode)
    }
    public static func vecDotMulti(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ xqStride: Int, _ nx: Int,
                                   _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        forMultiGroups(nx) { j, n in multi32Signed(row, xq + j * xqStride, xqStride, n, out + j, count, 18, decode) }
    }
    public static var kernels: QuantKernels {
        QuantKernels(type: .iq4_nl, dequantize: dequantize, quantize: nil, dotF32: dotF32,
                     vecDotType: .q8_0, vecDot: vecDot, vecDotMulti: vecDotMulti)
    }
}

#endif
