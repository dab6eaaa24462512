#if arch(x86_64)  // the whole module is x86-64 only; QuantAVX512.kernels(for:base:) answers nil elsewhere
import _Builtin_intrinsics.intel
import CSIMD
import Quant

// The signed 32-element block formats (Q8_0, Q5_0, Q4_0) against Q8_0 activations with VNNI: per block and
// activation row one vpdpbusd (|w| unsigned × sign-adjusted x) instead of maddubs + madd. The int32 lane sums are
// those of the AVX2 kernels and the float steps the same, so the results are bit-identical to QuantAVX2's.

/// Row · `nx` (constant after inlining, 1...4) Q8_0 activation rows, 256-bit VNNI (`vpdpbusd ymm`).
@inline(__always)
func multi32VNNI(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ st: Int, _ nx: Int,
                 _ out: UnsafeMutablePointer<Float>, _ count: Int, _ ts: Int,
                 _ decode: (UnsafeRawPointer) -> V256i) {
    var acc = zeroAcc4()
    let zero = _mm256_setzero_si256()
    for b in 0..<(count / 32) {
        let p = row + b * ts, y = xq + b * 34
        csimd_prefetch(p + 1024)  // weights stream from DRAM in decode
        let q = decode(p)
        let aq = _mm256_abs_epi8(q)
        let d = h2f(p, 0)
        @inline(__always) func one(_ y: UnsafeRawPointer, _ acc: inout V8f) {
            let s = csimd_dpbusd256(zero, aq, _mm256_sign_epi8(ld256(y, 2), q))
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * h2f(y, 0)), _mm256_cvtepi32_ps(s), acc)
        }
        one(y, &acc.0)
        if nx > 1 { one(y + st, &acc.1) }
        if nx > 2 { one(y + 2 * st, &acc.2) }
        if nx > 3 { one(y + 3 * st, &acc.3) }
    }
    storeRows(acc, nx, out)
}

/// The same with 512-bit VNNI (`vpdpbusd zmm`), two blocks per register; a last odd block goes through the 256-bit
/// path. (Not bit-identical to the 256-bit kernel: the lanes are summed in another order.)
@inline(__always)
func multi32VNNI512(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ st: Int, _ nx: Int,
                    _ out: UnsafeMutablePointer<Float>, _ count: Int, _ ts: Int,
                    _ decode: (UnsafeRawPointer) -> V256i) {
    let z = _mm512_setzero_ps()
    var acc = (z, z, z, z)
    let zero = _mm512_setzero_si512()
    let nb = count / 32
    var b = 0
    while b + 2 <= nb {
        let p = row + b * ts, y = xq + b * 34
        csimd_prefetch(p + 1024)  // decode streams weights from DRAM: ask for them ahead of the hardware prefetcher
        let q = csimd_set_m256i(decode(p + ts), decode(p))
        let neg = _mm512_movepi8_mask(q)
        let aq = _mm512_abs_epi8(q)
        let d0 = h2f(p, 0), d1 = h2f(p, ts)
        @inline(__always) func one(_ y: UnsafeRawPointer, _ acc: inout V16f) {
            let yv = csimd_set_m256i(ld256(y, 36), ld256(y, 2))
            let s = _mm512_dpbusd_epi32(zero, aq, _mm512_mask_sub_epi8(yv, neg, zero, yv))
            let sc = csimd_set_m256(_mm256_set1_ps(d1 * h2f(y, 34)), _mm256_set1_ps(d0 * h2f(y, 0)))
            acc = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(s), acc)
        }
        one(y, &acc.0)
        if nx > 1 { one(y + st, &acc.1) }
        if nx > 2 { one(y + 2 * st, &acc.2) }
        if nx > 3 { one(y + 3 * st, &acc.3) }
        b += 2
    }
    @inline(__always) func fold(_ v: V16f) -> V8f {
        _mm256_add_ps(_mm512_castps512_ps256(v), csimd_extractf32x8_hi(v))
    }
    var tail: (Float, Float, Float, Float) = (0, 0, 0, 0)
    if b < nb {
        withUnsafeMutableBytes(of: &tail) { t in
            multi32VNNI(row + b * ts, xq + b * 34, st, nx, t.baseAddress!.assumingMemoryBound(to: Float.self),
                        32, ts, decode)
        }
    }
    out[0] = hsum(fold(acc.0)) + tail.0
    if nx > 1 { out[1] = hsum(fold(acc.1)) + tail.1 }
    if nx > 2 { out[2] = hsum(fold(acc.2)) + tail.2 }
    if nx > 3 { out[3] = hsum(fold(acc.3)) + tail.3 }
}

/// A signed 32-element block format for the VNNI kernels: its block size in bytes and its quants as int8.
public protocol Block32VNNI {
    static var ts: Int { get }
    static func decode(_ p: UnsafeRawPointer) -> __m256i
}

extension Block32VNNI {
    /// Row · Q8_0 activation, 256-bit VNNI (the one-row case of `vecDotMulti`, so both give identical bits).
    /// Not dispatched (the 512-bit variant measured faster); kept as the measured alternative and tested.
    public static func vecDot(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        var r: Float = 0
        multi32VNNI(row, xq, 0, 1, &r, count, ts, decode)
        return r
    }
    public static func vecDotMulti(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ xqStride: Int, _ nx: Int,
                                   _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        forMultiGroups(nx) { j, n in multi32VNNI(row, xq + j * xqStride, xqStride, n, out + j, count, ts, decode) }
    }
    /// The 512-bit variants: the ones `QuantAVX512.kernels(for:base:)` dispatches.
    public static func vecDot512(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ count: Int) -> Float {
        var r: Float = 0
        multi32VNNI512(row, xq, 0, 1, &r, count, ts, decode)
        return r
    }
    public static func vecDotMulti512(_ row: UnsafeRawPointer, _ xq: UnsafeRawPointer, _ xqStride: Int, _ nx: Int,
                                      _ out: UnsafeMutablePointer<Float>, _ count: Int) {
        forMultiGroups(nx) { j, n in multi32VNNI512(row, xq + j * xqStride, xqStride, n, out + j, count, ts, decode) }
    }
}

/// Q8_0 with VNNI: `{ half d; int8 qs[32] }`.
public enum Q8_0_VNNI: Block32VNNI {
    public static var ts: Int { 34 }
    @inline(__always) public static func decode(_ p: UnsafeRawPointer) -> __m256i { ld256(p, 2) }
}

/// Q5_0 with VNNI: `{ half d; uint8 qh[4]; uint8 qs[16] }`, x = d·(q − 16).
public enum Q5_0_VNNI: Block32VNNI {
    public static var ts: Int { 22 }
    @inline(__always) public static func decode(_ p: UnsafeRawPointer) -> __m256i {
        let hb = bytesFromBits(p.loadUnaligned(fromByteOffset: 2, as: UInt32.self))
        // bit 4 clear → q − 16 is the nibble with 0xF0 set (negative); set → the nibble itself.
        return _mm256_or_si256(nibbles32(p, 6), _mm256_andnot_si256(hb, splat8(0xF0)))
    }
}

/// Q4_0 with VNNI: `{ half d; uint8 qs[16] }`, x = d·(q − 8).
public enum Q4_0_VNNI: Block32VNNI {
    public static var ts: Int { 18 }
    @inline(__always) public static func decode(_ p: UnsafeRawPointer) -> __m256i {
        _mm256_sub_epi8(nibbles32(p, 2), splat8(8))
    }
}

#endif
