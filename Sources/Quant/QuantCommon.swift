// Helpers shared by the block formats: half-precision fields, ggml's rounding, the K-quant scale packing,
// and the plain f32 dot product. Internal: each format's enum is the public face.

/// Reads an IEEE half at `offset` (unaligned) as f32.
@inline(__always)
func readF16(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
    f16ToF32(p.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
}

/// Half → single, exact. Normal numbers by rebiasing the exponent (x86-64 without F16C turns
/// `Float(Float16)` into a library call, which showed in the per-block scale reads); the rest through Float16.
@inline(__always)
func f16ToF32(_ h: UInt16) -> Float {
    let em = UInt32(h & 0x7fff)
    if em >= 0x0400 && em < 0x7c00 {
        return Float(bitPattern: (UInt32(h & 0x8000) << 16) | ((em << 13) &+ 0x3800_0000))
    }
    return f16ToF32Slow(h)
}

@inline(never)
func f16ToF32Slow(_ h: UInt16) -> Float { Float(Float16(bitPattern: h)) }

/// Writes `v` rounded to the nearest half (ties to even, as ggml's `GGML_FP32_TO_FP16`).
@inline(__always)
func writeF16(_ p: UnsafeMutableRawPointer, _ offset: Int, _ v: Float) {
    p.storeBytes(of: Float16(v).bitPattern, toByteOffset: offset, as: UInt16.self)
}

/// ggml's `nearest_int`: round to nearest, ties to even, by the 1.5·2^23 trick. Exact for |x| < 2^22, and
/// never traps (NaN or huge values give garbage, as in ggml, rather than a crash).
@inline(__always)
func nearestInt(_ x: Float) -> Int32 {
    let v = x + 12582912.0
    return Int32(bitPattern: v.bitPattern & 0x007f_ffff) - 0x0040_0000
}

/// C's `(int)x` truncation for the 32-blocks' quantizers, without trapping on NaN or out-of-range input.
@inline(__always)
func truncToInt(_ x: Float) -> Int32 {
    guard x.isFinite else { return 0 }
    return Int32(max(-2.0e9, min(2.0e9, x)))
}

/// The 6-bit scale and min of sub-block `j` (0..<8) of a Q4_K / Q5_K block's 12 packed bytes
/// (ggml's `get_scale_min_k4`).
@inline(__always)
func scaleMinK4(_ j: Int, _ q: UnsafeRawPointer) -> (sc: UInt8, m: UInt8) {
    let b = q.assumingMemoryBound(to: UInt8.self)
    if j < 4 {
        return (b[j] & 63, b[j + 4] & 63)
    }
    return ((b[j + 4] & 0xF) | ((b[j - 4] >> 6) << 4), (b[j + 4] >> 4) | ((b[j] >> 6) << 4))
}

/// The non-linear 4-bit grid of IQ4_NL and IQ4_XS (ggml's `kvalues_iq4nl`), as a function so the table is a
/// constant in the caller rather than a lazily initialized global.
@inline(__always)
func kvalueIQ4NL(_ i: UInt8) -> Int8 {
    let k: SIMD16<Int8> = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]
    return k[Int(i & 0x0F)]
}

// NOTE: the kernels use 8- and 16-lane SIMD and plain loops over fixed counts that LLVM vectorizes. 32-lane SIMD
// types (SIMD32<Int8>, SIMD32<Float>) were tried first and ran ~100x slower: their conversions and arithmetic
// are not lowered to vector code by this toolchain at -O.

@inline(__always)
func loadF8(_ p: UnsafeRawPointer) -> SIMD8<Float> { p.loadUnaligned(as: SIMD8<Float>.self) }

@inline(__always)
func i8x8ToF(_ p: UnsafeRawPointer) -> SIMD8<Float> {
    SIMD8<Float>(SIMD8<Int32>(truncatingIfNeeded: p.loadUnaligned(as: SIMD8<Int8>.self)))
}

/// Sum of `a[i] * x[i]` for f32 `a` at any alignment.
@inline(__always)
func dotF32Raw(_ a: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ n: Int) -> Float {
    let xr = UnsafeRawPointer(x)
    var acc0 = SIMD8<Float>(), acc1 = SIMD8<Float>()
    var i = 0
    while i + 16 <= n {
        acc0 += loadF8(a + 4 * i) * loadF8(xr + 4 * i)
        acc1 += loadF8(a + 4 * i + 32) * loadF8(xr + 4 * i + 32)
        i += 16
    }
    var s = (acc0 + acc1).sum()
    while i < n {
        s += a.loadUnaligned(fromByteOffset: 4 * i, as: Float.self) * x[i]
        i += 1
    }
    return s
}

/// Σ q[i]·x[i] for int8 quants and f32 x; `n` a multiple of 8.
@inline(__always)
func dotI8F32(_ q: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ n: Int) -> Float {
    var a = SIMD8<Float>()
    for j in stride(from: 0, to: n, by: 8) {
        a += i8x8ToF(q + j) * loadF8(UnsafeRawPointer(x + j))
    }
    return a.sum()
}

/// Σ x[i]; `n` a multiple of 8.
@inline(__always)
func sumF32(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
    var a = SIMD8<Float>()
    for j in stride(from: 0, to: n, by: 8) { a += loadF8(UnsafeRawPointer(x + j)) }
    return a.sum()
}

/// Σ a[i]·b[i] over int8, exact in i32 (n ≤ 2^17).
@inline(__always)
func dotI8I8(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ n: Int) -> Int32 {
    let pa = a.assumingMemoryBound(to: Int8.self), pb = b.assumingMemoryBound(to: Int8.self)
    var s: Int32 = 0
    for i in 0..<n { s &+= Int32(pa[i]) &* Int32(pb[i]) }
    return s
}

/// Σ a[i] over int8.
@inline(__always)
func sumI8(_ a: UnsafeRawPointer, _ n: Int) -> Int32 {
    let pa = a.assumingMemoryBound(to: Int8.self)
    var s: Int32 = 0
    for i in 0..<n { s &+= Int32(pa[i]) }
    return s
}

/// y[i] = q[i]·d for int8 quants; `n` a multiple of 8.
@inline(__always)
func scaleI8(_ q: UnsafeRawPointer, _ d: Float, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
    for j in stride(from: 0, to: n, by: 8) {
        UnsafeMutableRawPointer(y + j).storeBytes(of: i8x8ToF(q + j) * d, as: SIMD8<Float>.self)
    }
}

/// y[i] = q[i]·d − m for int8 quants (ggml's `d·q − m` of the formats with a min); `n` a multiple of 8.
@inline(__always)
func scaleI8(_ q: UnsafeRawPointer, _ d: Float, minus m: Float, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
    for j in stride(from: 0, to: n, by: 8) {
        UnsafeMutableRawPointer(y + j).storeBytes(of: i8x8ToF(q + j) * d - m, as: SIMD8<Float>.self)
    }
}

/// y[i] = q[i]·d + m for int8 quants (Q4_1 and Q5_1 order); `n` a multiple of 8.
@inline(__always)
func scaleI8(_ q: UnsafeRawPointer, _ d: Float, plus m: Float, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
    for j in stride(from: 0, to: n, by: 8) {
        UnsafeMutableRawPointer(y + j).storeBytes(of: i8x8ToF(q + j) * d + m, as: SIMD8<Float>.self)
    }
}

/// Runs `body` with a stack scratch of 256 int8 quants (one decoded block).
@inline(__always)
func withQuantScratch<R>(_ body: (UnsafeMutablePointer<Int8>) -> R) -> R {
    withUnsafeTemporaryAllocation(of: Int8.self, capacity: 256) { body($0.baseAddress!) }
}

/// Decodes the 32 nibbles of 16 bytes at `p` into q[0..<32] (low nibbles first, ggml order), minus `offset`.
@inline(__always)
func decodeNibbles(_ p: UnsafeRawPointer, _ q: UnsafeMutablePointer<Int8>, offset: Int8) {
    let b = p.assumingMemoryBound(to: UInt8.self)
    for j in 0..<16 {
        q[j] = Int8(bitPattern: b[j] & 0x0F) &- offset
        q[j + 16] = Int8(bitPattern: b[j] >> 4) &- offset
    }
}

/// Decodes Q5_0/Q5_1 quants: nibbles of the 16 bytes at `p` plus bit j of `qh` as bit 4 of element j, minus
/// `offset`.
@inline(__always)
func decodeQ5(_ p: UnsafeRawPointer, _ qh: UInt32, _ q: UnsafeMutablePointer<Int8>, offset: Int8) {
    let b = p.assumingMemoryBound(to: UInt8.self)
    for j in 0..<16 {
        let h0 = UInt8(truncatingIfNeeded: (qh >> UInt32(j)) << 4) & 0x10
        let h1 = UInt8(truncatingIfNeeded: qh >> UInt32(j + 12)) & 0x10
        q[j] = Int8(bitPattern: (b[j] & 0x0F) | h0) &- offset
        q[j + 16] = Int8(bitPattern: (b[j] >> 4) | h1) &- offset
    }
}

@inline(__always)
func loadX16(_ x: UnsafePointer<Float>, _ i: Int) -> SIMD16<Float> {
    UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self)
}
