import Quant

/// Scratch memory per pool thread, sized once (the hot path allocates nothing).
public final class ThreadScratch: @unchecked Sendable {
    public let floatsPerThread: Int
    private let base: UnsafeMutablePointer<Float>

    public init(threads: Int, floatsPerThread: Int) {
        self.floatsPerThread = floatsPerThread
        base = .allocate(capacity: max(1, threads * floatsPerThread))
    }

    deinit { base.deallocate() }

    @inline(__always)
    public func buffer(_ thread: Int) -> UnsafeMutablePointer<Float> { base + thread * floatsPerThread }
}

extension ThreadPool {
    /// `y[t, r] = W[r] · x[t]` for `n` token rows: `x` is `// [n, W.cols]`, `y` is `// [n, W.rows]`
    /// (row stride `yStride`, default W.rows).
    ///
    /// One token: each row's dot runs on the stored blocks directly. Several tokens: each weight row is decoded
    /// once into thread scratch and dotted with every token row, so weights are read once per batch.
    public func matmul(_ w: WeightMatrix, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, n: Int,
                       yStride: Int? = nil, scratch: ThreadScratch) {
        let rows = w.rows, cols = w.cols, ys = yStride ?? w.rows
        let chunk = max(1, min(64, rows / (threadCount * 8)))
        let tasks = (rows + chunk - 1) / chunk
        if n == 1 {
            let dot = w.kernels.dotF32
            parallelFor(tasks) { task, _ in
                let r0 = task * chunk, r1 = min(rows, r0 + chunk)
                for r in r0..<r1 { y[r] = dot(w.row(r), x, cols) }
            }
            return
        }
        precondition(scratch.floatsPerThread >= cols, "matmul scratch too small for \(w.name)")
        let deq = w.kernels.dequantize
        parallelFor(tasks) { task, thread in
            let buf = scratch.buffer(thread)
            let r0 = task * chunk, r1 = min(rows, r0 + chunk)
            for r in r0..<r1 {
                deq(w.row(r), buf, cols)
                for t in 0..<n {
                    y[t * ys + r] = dotProduct(buf, x + t * cols, cols)
                }
            }
        }
    }
}

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
