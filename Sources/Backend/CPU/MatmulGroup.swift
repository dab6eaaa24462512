import Quant

extension ThreadPool {
    /// `y_i = W_i · x` for two or three matrices that read the same activations (Q/K/V, gate/up).
    ///
    /// For small batches (decode) this is one parallel region over the rows of all of them, with the activations
    /// quantized once: a decode step has hundreds of regions, and each costs a wake-up and a join. Every output
    /// element is computed by the same kernel call as in `matmul`, so the results are bit-identical. Larger
    /// batches, mixed activation formats, and float weights fall back to one `matmul` each.
    public func matmulShared(_ w0: WeightMatrix, _ y0: UnsafeMutablePointer<Float>,
                             _ w1: WeightMatrix, _ y1: UnsafeMutablePointer<Float>,
                             _ w2: WeightMatrix? = nil, _ y2: UnsafeMutablePointer<Float>? = nil,
                             x: UnsafePointer<Float>, n: Int, scratch: MatmulScratch) {
        let vt = w0.kernels.vecDotType
        let count = w2 == nil ? 2 : 3
        guard n <= 4, vt != .f32, w1.kernels.vecDotType == vt, w2.map({ $0.kernels.vecDotType == vt }) ?? true,
              w1.cols == w0.cols, w2.map({ $0.cols == w0.cols }) ?? true,
              let q = KernelDispatch.kernels(for: vt)?.quantize, let xRowBytes = vt.byteCount(elements: w0.cols) else {
            matmul(w0, x, y0, n: n, scratch: scratch)
            matmul(w1, x, y1, n: n, scratch: scratch)
            if let w2, let y2 { matmul(w2, x, y2, n: n, scratch: scratch) }
            return
        }
        let cols = w0.cols
        scratch.activations.reserve(n * xRowBytes)
        let xq = scratch.activations.bytes
        for t in 0..<n { q(x + t * cols, xq + t * xRowBytes, cols) }
        let xqc = UnsafeRawPointer(xq)
        // Tasks: each matrix's rows in chunks, matrices one after another.
        func chunk(_ w: WeightMatrix) -> Int { max(1, min(256, w.rows / (threadCount * 8))) }
        let c0 = chunk(w0), c1 = chunk(w1), c2 = w2.map(chunk) ?? 1
        let t0 = (w0.rows + c0 - 1) / c0, t1 = (w1.rows + c1 - 1) / c1, t2 = w2.map { ($0.rows + c2 - 1) / c2 } ?? 0
        // NOTE: no WeightMatrix is copied inside the region (a copy retains its owner and kernel closures,
        // which showed up as 5% of a decode step); each branch passes plain pointers and closures at +0.
        let (d0, rb0, r0n) = (w0.data, w0.rowBytes, w0.rows)
        let (d1, rb1, r1n) = (w1.data, w1.rowBytes, w1.rows)
        let (d2, rb2, r2n) = (w2?.data ?? d0, w2?.rowBytes ?? 0, w2?.rows ?? 0)
        @inline(__always)
        func run(_ data: UnsafeRawPointer, _ rb: Int, _ rows: Int, _ y: UnsafeMutablePointer<Float>, _ c: Int,
                 _ local: Int, _ thread: Int, _ dot: QuantKernels.VecDot, _ multi: QuantKernels.VecDotMulti) {
            let start = local * c, end = min(rows, start + c)
            if n == 1 {
                for r in start..<end { y[r] = dot(data + r * rb, xqc, cols) }
            } else {
                let out = scratch.perThread.buffer(thread)
                for r in start..<end {
                    multi(data + r * rb, xqc, xRowBytes, n, out, cols)
                    for j in 0..<n { y[j * rows + r] = out[j] }
                }
            }
        }
        let k0 = w0.kernels, k1 = w1.kernels, k2 = w2?.kernels ?? w0.kernels
        parallelFor(t0 + t1 + (count == 3 ? t2 : 0)) { task, thread in
            if task < t0 {
                run(d0, rb0, r0n, y0, c0, task, thread, k0.vecDot, k0.vecDotMulti!)
            } else if task < t0 + t1 {
                run(d1, rb1, r1n, y1, c1, task - t0, thread, k1.vecDot, k1.vecDotMulti!)
            } else {
                run(d2, rb2, r2n, y2!, c2, task - t0 - t1, thread, k2.vecDot, k2.vecDotMulti!)
            }
        }
    }
}
