/// f32 dot product, 4 independent 8-wide accumulators.
@inline(__always)
public func dotProduct(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var i = 0
    var s0 = SIMD8<Float>(), s1 = SIMD8<Float>(), s2 = SIMD8<Float>(), s3 = SIMD8<Float>()
    let ra = UnsafeRawPointer(a), rb = UnsafeRawPointer(b)
    while i + 32 <= n {
        let o = i * 4
        s0 += ra.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self) * rb.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self)
        s1 += ra.loadUnaligned(fromByteOffset: o + 32, as: SIMD8<Float>.self) * rb.loadUnaligned(fromByteOffset: o + 32, as: SIMD8<Float>.self)
        s2 += ra.loadUnaligned(fromByteOffset: o + 64, as: SIMD8<Float>.self) * rb.loadUnaligned(fromByteOffset: o + 64, as: SIMD8<Float>.self)
        s3 += ra.loadUnaligned(fromByteOffset: o + 96, as: SIMD8<Float>.self) * rb.loadUnaligned(fromByteOffset: o + 96, as: SIMD8<Float>.self)
        i += 32
    }
    while i + 8 <= n {
        let o = i * 4
        s0 += ra.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self) * rb.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self)
        i += 8
    }
    var s = ((s0 + s1) + (s2 + s3)).sum()
    while i < n {
        s += a[i] * b[i]
        i += 1
    }
    return s
}

/// `y += a * x` over n floats.
@inline(__always)
public func axpy(_ a: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
    var i = 0
    let rx = UnsafeRawPointer(x), ry = UnsafeMutableRawPointer(y)
    let va = SIMD8<Float>(repeating: a)
    while i + 8 <= n {
        let o = i * 4
        let v = ry.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self) + va * rx.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self)
        ry.storeBytes(of: v, toByteOffset: o, as: SIMD8<Float>.self)
        i += 8
    }
    while i < n {
        y[i] += a * x[i]
        i += 1
    }
}
