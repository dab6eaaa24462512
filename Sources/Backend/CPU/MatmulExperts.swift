import Foundation
import Quant

extension ThreadPool {
    /// Row chunks per pool thread that an expert matmul is cut into (handed out dynamically): more balance the
    /// threads, fewer give each thread longer contiguous runs of weights. `KTRANSFORMERS_MOE_TASKS`, default 2
    /// (16 threads: `bench --moe` b1 0.34 ms a Qwen3-30B-A3B layer step with 2 or 4 against 0.376 with 8; hybrid
    /// decode 2-7% faster with 2 than 4 in each of three calls; docs/performance.md).
    public static let expertTasksPerThread: Int =
        max(1, ProcessInfo.processInfo.environment["KTRANSFORMERS_MOE_TASKS"].flatMap { Int($0) } ?? 2)

    /// The expert matmul of an MoE layer: for every expert e that `routing` sends rows to,
    /// `y[p] = W_e · x[row(p)]` for the sorted rows `p` in `routing.offsets[e] ..< offsets[e + 1]`, where
    /// `row(p)` is `routing.tokenOf[p]` when `gather` (x holds token rows, `// [nTokens, cols]`) and `p`
    /// otherwise (x already in sorted order, `// [nAssignments, cols]`). `y` is `// [nAssignments, W.rows]`.
    /// A second stack `w2` with the same input (the up projection beside the gate) is computed in the same pass
    /// into `y2`, sharing the quantized activations.
    ///
    /// Like `matmul`: activation rows are quantized once per token to the format's `vecDotType` (then the
    /// quantized rows are gathered into sorted order, so each expert's rows are contiguous), and every weight row
    /// of an expert is dotted with all of that expert's rows, up to 4 per pass (`vecDotMulti`): each expert's
    /// weights are read once per call however many tokens chose it, and experts nobody chose are not read.
    /// Tasks are (expert, matrix, row chunk) triples, expert-major, handed out dynamically over the pool.
    /// `precise` trades some speed for accuracy, as the dense MLP's f32 down projection does: activations go to the
    /// kernels as 16-bit `Q16_K` rows where the format has Q16 kernels (`q16DotMulti`: Q4_K, Q5_K, Q6_K; ~250x
    /// finer than Q8_K at ~1.3x its cost), else as f32 (`dotF32Multi`).
    public func matmulExperts(_ w: WeightStack, _ y: UnsafeMutablePointer<Float>,
                              also w2: WeightStack? = nil, _ y2: UnsafeMutablePointer<Float>? = nil,
                              x: UnsafePointer<Float>, gather: Bool, routing: ExpertRouting,
                              scratch: MatmulScratch, precise: Bool = false) {
        let a = routing.assignments
        guard a > 0, routing.activeCount > 0 else { return }
        let cols = w.cols, rows = w.rows
        precondition(w.count == routing.expertCount, "\(w.name): \(w.count) experts, routing has \(routing.expertCount)")
        if let w2 {
            precondition(w2.cols == cols && w2.rows == rows && w2.type == w.type && w2.count == w.count && y2 != nil,
                         "\(w2.name) must have the shape and type of \(w.name)")
        }
        let nMat = w2 == nil ? 1 : 2
        let ws = (w, w2 ?? w)
        let ys = (y, y2 ?? y)

        // Tasks: expert-major, then matrix, then row chunk; at least `expertTasksPerThread` per thread.
        let nActive = routing.activeCount
        let totalRows = nMat * nActive * rows
        let perThread = ThreadPool.expertTasksPerThread
        var chunk = (totalRows + threadCount * perThread - 1) / (threadCount * perThread)
        chunk = min(rows, max(16, (chunk + 3) & ~3))
        let chunksPerMatrix = (rows + chunk - 1) / chunk
        let tasks = nActive * nMat * chunksPerMatrix
        let active = UnsafePointer(routing.active), offsets = UnsafePointer(routing.offsets)
        let tokenOf = UnsafePointer(routing.tokenOf)
        let nTokenRows = gather ? routing.tokens : a

        /// Runs the tasks with `multi(row, p, nx, out)`: `out[j] = W_e[row] · x_sorted[p + j]` for j < nx ≤ 4; and
        /// where an expert has one or two rows from `p`, with `fewRows(row, rowStride, nr, p, nx, out)`:
        /// `out[4j + i] = W_e[row + i] · x[p + j]` for i < nr ≤ 4, j < nx ≤ 2 (when given: it must give `multi`'s bits).
        /// And where an expert has at least `manyRows.min` rows, with `manyRows.run(row, rowStride, nr, p0, nx, y,
        /// thread)`: `y[j·rows + i] = W_e[row + i] · x[p0 + j]` for i < nr, j < nx (it must give `multi`'s bits).
        @inline(__always)
        func run(fewRows: ((UnsafeRawPointer, Int, Int, Int, Int, UnsafeMutablePointer<Float>) -> Void)? = nil,
                 manyRows: (min: Int, run: (UnsafeRawPointer, Int, Int, Int, Int, UnsafeMutablePointer<Float>, Int) -> Void)? = nil,
                 _ multi: (UnsafeRawPointer, Int, Int, UnsafeMutablePointer<Float>) -> Void) {
            parallelFor(tasks) { task, thread in
                let ai = task / (nMat * chunksPerMatrix), rem = task % (nMat * chunksPerMatrix)
                let m = rem / chunksPerMatrix, c = rem % chunksPerMatrix
                let e = Int(active[ai])
                let p0 = Int(offsets[e]), p1 = Int(offsets[e + 1])
                let wm = m == 0 ? ws.0 : ws.1, ym = m == 0 ? ys.0 : ys.1
                let out = scratch.perThread.buffer(thread)
                let r1 = min(rows, (c + 1) * chunk)
                if let manyRows, p1 - p0 >= manyRows.min {
                    let r0 = c * chunk
                    manyRows.run(wm.row(e, r0), wm.rowBytes, r1 - r0, p0, p1 - p0, ym + p0 * rows + r0, thread)
                    return
                }
                if let fewRows, p1 - p0 <= 2 {
                    expertRowBlocks(wm, e, c * chunk..<r1, tokens: p0, nx: p1 - p0, ym, out) { wr, rs, nr, out in
                        fewRows(wr, rs, nr, p0, p1 - p0, out)
                    }
                    return
                }
                expertRows(wm, e, c * chunk..<r1, tokens: p0..<p1, ym, out, multi)
            }
        }

        let vt = w.kernels.vecDotType
        if precise, vt != .f32, let q16 = w.kernels.q16DotMulti {
            // Q16_K rows in sorted order, quantized straight from the token (or sorted) rows.
            let rowBytes = Q16_K.byteCount(elements: cols)
            routing.gathered.reserve(a * rowBytes)
            let xq = routing.gathered.bytes
            let quantize = KernelDispatch.q16Quantize
            parallelFor(a) { p, _ in quantize(x + (gather ? Int(tokenOf[p]) : p) * cols, xq + p * rowBytes, cols) }
            let xqc = UnsafeRawPointer(xq)
            if let q16Rows = w.kernels.q16DotRows {
                run(fewRows: { wr, rs, nr, p, nx, out in q16Rows(wr, rs, nr, xqc + p * rowBytes, rowBytes, nx, out, cols) }) { wr, p, nx, out in
                    q16(wr, xqc + p * rowBytes, rowBytes, nx, out, cols)
                }
            } else {
                run { wr, p, nx, out in q16(wr, xqc + p * rowBytes, rowBytes, nx, out, cols) }
            }
            return
        }
        if vt == .f32 || precise {
            // f32 rows in sorted order: `x` itself, or gathered into the routing's buffer.
            var xs = x
            if gather {
                routing.gathered.reserve(a * cols * 4)
                let g = routing.gathered.bytes.assumingMemoryBound(to: Float.self)
                parallelFor(a) { p, _ in (g + p * cols).update(from: x + Int(tokenOf[p]) * cols, count: cols) }
                xs = UnsafePointer(g)
            }
            let xsc = xs
            let multi = w.kernels.dotF32Multi ?? QuantKernels.referenceDotF32Multi(w.kernels.dotF32)
            run { wr, p, nx, out in multi(wr, xsc + p * cols, cols, nx, out, cols) }
            return
        }

        guard let q = KernelDispatch.kernels(for: vt)?.quantize, let xRowBytes = vt.byteCount(elements: cols) else {
            preconditionFailure("no quantizer for activation format \(vt) (weights \(w.name))")
        }
        // Quantize each token row once, then gather the quantized rows into sorted order.
        routing.activations.reserve(nTokenRows * xRowBytes)
        let xqTok = routing.activations.bytes
        if nTokenRows == 1 {
            q(x, xqTok, cols)
        } else {
            parallelFor(nTokenRows) { t, _ in q(x + t * cols, xqTok + t * xRowBytes, cols) }
        }
        var xq = UnsafeRawPointer(xqTok)
        if gather {
            routing.gathered.reserve(a * xRowBytes)
            let g = routing.gathered.bytes
            for p in 0..<a {
                (g + p * xRowBytes).copyMemory(from: xqTok + Int(tokenOf[p]) * xRowBytes, byteCount: xRowBytes)
            }
            xq = UnsafeRawPointer(g)
        }
        let xqc = xq
        let multi = w.kernels.vecDotMulti ?? QuantKernels.referenceVecDotMulti(w.kernels.vecDot)
        // Experts with at least the tile kernel's `minRows` rows (prefill) run as register-blocked tiles over those
        // rows: the same bits as `vecDotMulti` (the tile kernels give `vecDot`'s), each weight block decoded once.
        if let tile = w.kernels.vecDotTile, let prepare = tile.prepare,
           (0..<nActive).contains(where: { let e = Int(active[$0]); return Int(offsets[e + 1] - offsets[e]) >= tile.minRows }) {
            @inline(__always) func up64(_ v: Int) -> Int { (v + 63) & ~63 }
            let pb = up64(tile.preparedBytes(cols)), maxTileRows = 32
            let perThread = up64(tile.scratchBytes(maxTileRows, cols))
            routing.tiles.reserve(a * pb + threadCount * perThread)
            let prepared = routing.tiles.bytes, threadBase = prepared + a * pb
            parallelFor(a) { p, _ in prepare(xqc + p * xRowBytes, prepared + p * pb, cols) }
            let xp = UnsafeRawPointer(prepared)
            run(manyRows: (tile.minRows, { wr, rs, nr, p0, nx, y, thread in
                var r = 0
                while r < nr {
                    let n = min(maxTileRows, nr - r)
                    tile.gemm(wr + r * rs, rs, n, xp + p0 * pb, pb, nx, y + r, rows, cols, threadBase + thread * perThread)
                    r += n
                }
            })) { wr, p, nx, out in multi(wr, xqc + p * xRowBytes, xRowBytes, nx, out, cols) }
            return
        }
        run { wr, p, nx, out in multi(wr, xqc + p * xRowBytes, xRowBytes, nx, out, cols) }
    }

    /// One matrix per head applied to that head's slice of every token row (MLA's absorbed `k_b` / `v_b`):
    /// `y[t, h * yHeadStride + r] = W_h[r] · x[t, h * xHeadStride ..< + W.cols]` for `n` tokens, with token
    /// row strides `xStride` / `yStride` (floats). Activations stay f32 (`dotF32Multi`): these inputs are
    /// per-head slices too short to amortise quantizing them, and f32 keeps the attention path exact.
    public func matmulHeads(_ w: WeightStack, _ x: UnsafePointer<Float>, xStride: Int, xHeadStride: Int,
                            _ y: UnsafeMutablePointer<Float>, yStride: Int, yHeadStride: Int, n: Int,
                            scratch: MatmulScratch) {
        let rows = w.rows, cols = w.cols, heads = w.count
        let chunk = max(4, min(rows, (heads * rows + threadCount * 8 - 1) / (threadCount * 8)))
        let chunksPerHead = (rows + chunk - 1) / chunk
        let multi = w.kernels.dotF32Multi ?? QuantKernels.referenceDotF32Multi(w.kernels.dotF32)
        parallelFor(heads * chunksPerHead) { task, thread in
            let h = task / chunksPerHead, c = task % chunksPerHead
            let out = scratch.perThread.buffer(thread)
            let xh = x + h * xHeadStride
            for r in c * chunk..<min(rows, (c + 1) * chunk) {
                let wr = w.row(h, r)
                var t = 0
                while t < n {
                    let nx = min(4, n - t)
                    multi(wr, xh + t * xStride, xStride, nx, out, cols)
                    for j in 0..<nx { y[(t + j) * yStride + h * yHeadStride + r] = out[j] }
                    t += nx
                }
            }
        }
    }
}

/// Rows `rows` of expert `e` of `w` against the sorted activation rows `tokens`, up to four at a time:
/// `y[p · w.rows + r] = W_e[r] · x[p]`, where `dot(W_e[r], p, nx, out)` writes `out[j] = W_e[r] · x[p + j]`, j < nx ≤ 4.
@inline(__always)
func expertRows(_ w: WeightStack, _ e: Int, _ rows: Range<Int>, tokens: Range<Int>, _ y: UnsafeMutablePointer<Float>,
                _ out: UnsafeMutablePointer<Float>, _ dot: (UnsafeRawPointer, Int, Int, UnsafeMutablePointer<Float>) -> Void) {
    for r in rows {
        let wr = w.row(e, r)
        var p = tokens.lowerBound
        while p < tokens.upperBound {
            let nx = min(4, tokens.upperBound - p)
            dot(wr, p, nx, out)
            for j in 0..<nx { y[(p + j) * w.rows + r] = out[j] }
            p += nx
        }
    }
}

/// The same for an expert that one or two tokens chose (`nx` ≤ 2 rows from `p0`), four weight rows a call:
/// `rowsDot(W_e[r], rowStride, nr, out)` writes `out[4j + i] = W_e[r + i] · x[p0 + j]`, i < nr ≤ 4.
@inline(__always)
func expertRowBlocks(_ w: WeightStack, _ e: Int, _ rows: Range<Int>, tokens p0: Int, nx: Int, _ y: UnsafeMutablePointer<Float>,
                     _ out: UnsafeMutablePointer<Float>, _ rowsDot: (UnsafeRawPointer, Int, Int, UnsafeMutablePointer<Float>) -> Void) {
    var r = rows.lowerBound
    while r < rows.upperBound {
        let nr = min(4, rows.upperBound - r)
        rowsDot(w.row(e, r), w.rowBytes, nr, out)
        for j in 0..<nx { for i in 0..<nr { y[(p0 + j) * w.rows + r + i] = out[4 * j + i] } }
        r += nr
    }
}
