import Quant

/// Scratch memory per pool thread, sized once (the hot path allocates nothing).
public final class ThreadScratch: @unchecked Sendable {
    public let floatsPerThread: Int
    private let base: UnsafeMutablePointer<Float>

    public init(threads: Int, floatsPerThread: Int) {
        self.floatsPerThread = floatsPerThread
        base = .allocate(capacity: max(1, threads * floatsPerThread))
        RunMemory.noteAllocation()
    }

    deinit { base.deallocate() }

    @inline(__always)
    public func buffer(_ thread: Int) -> UnsafeMutablePointer<Float> { base + thread * floatsPerThread }
}

/// Reusable buffer for activation rows quantized to a weight format's `vecDotType`; grows to the largest
/// batch seen and is then reused (no allocation in the steady state).
public final class ActivationBuffer: @unchecked Sendable {
    private(set) var bytes: UnsafeMutableRawPointer
    private(set) var capacity: Int

    public init(capacity: Int = 1 << 16) {
        self.capacity = capacity
        bytes = .allocate(byteCount: capacity, alignment: 64)
        RunMemory.noteAllocation()
    }

    deinit { bytes.deallocate() }

    /// Grows to at least `n` bytes. Backends call this at load with the largest step's needs
    /// (`CPUBackend.reserve`), so the calls the kernels make during a forward pass never grow it.
    public func reserve(_ n: Int) {
        guard n > capacity else { return }
        bytes.deallocate()
        capacity = max(n, capacity * 2)
        bytes = .allocate(byteCount: capacity, alignment: 64)
        RunMemory.noteAllocation()
    }
}

/// What a matmul needs besides its operands.
public struct MatmulScratch: @unchecked Sendable {
    public let perThread: ThreadScratch
    public let activations: ActivationBuffer

    public init(perThread: ThreadScratch, activations: ActivationBuffer) {
        self.perThread = perThread
        self.activations = activations
    }
}

extension ThreadPool {
    /// `y[t, r] = W[r] · x[t]` for `n` token rows: `x` is `// [n, W.cols]`, `y` is `// [n, W.rows]`
    /// (row stride `yStride`, default W.rows).
    ///
    /// Quantized weights: the activation rows are quantized once to the format's `vecDotType` (Q8_0 / Q8_K)
    /// and every weight row is dotted with all of them by integer multiply-add, so each weight row is read
    /// once per batch. Float weights (F32/F16/BF16) dot f32 activations directly.
    ///
    /// `f32Activations` keeps the activations in f32 (each weight row dotted with `dotF32`): slower, but exact
    /// for heavy-tailed inputs such as the MLP's down projection, where 8-bit activations cost the most accuracy
    /// (measured on Gemma 3 270M against a float64 reference, mean |Δlogprob|: 0.113 with 8-bit activations
    /// everywhere, 0.065 with f32 activations into ffn_down; llama.cpp 0.104).
    /// From the tile kernels' `minRows` token rows on (5 unless a format measured otherwise: on Zen 5, 2 threads,
    /// batched decode of Gemma 3 270M, 4 rows were 5% slower tiled, 6 rows 16% faster), formats with tile kernels (`vecDotTile` / `dotF32Tile`) decode each weight row
    /// once per matmul and run register-blocked tiles of several weight rows × several token rows; they give every
    /// output the bits of the one-row kernel (`vecDot` / `dotF32`).
    /// Every token row is computed the same way whatever the batch size, so batching never changes results.
    public func matmul(_ w: WeightMatrix, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, n: Int,
                       yStride: Int? = nil, scratch: MatmulScratch, f32Activations: Bool = false) {
        let rows = w.rows, cols = w.cols, ys = yStride ?? w.rows
        // Up to 256 rows per task: long contiguous runs keep the hardware prefetchers streaming (64 gave
        // 83 t/s decode on the default model, 256 gave 99: the 178 MB output projection dominates a step).
        let chunk = max(1, min(256, rows / (threadCount * 8)))
        let tasks = (rows + chunk - 1) / chunk
        let vt = w.kernels.vecDotType

        /// The untiled loop over tasks of weight rows: `multi(r, t, m, out)` fills out[0..<m] with weight row r
        /// against token rows t..<t+m (m ≤ 4, each weight block decoded once), used for several token rows when
        /// the format has it; else `one(r, t)` per token row.
        @inline(__always)
        func rowLoop(multi: ((Int, Int, Int, UnsafeMutablePointer<Float>) -> Void)?, one: (Int, Int) -> Float) {
            if let multi, n > 1 {
                parallelFor(tasks) { task, thread in
                    let r0 = task * chunk, r1 = min(rows, r0 + chunk)
                    let out = scratch.perThread.buffer(thread)
                    for r in r0..<r1 {
                        var t = 0
                        while t < n {
                            let m = min(4, n - t)
                            multi(r, t, m, out)
                            for j in 0..<m { y[(t + j) * ys + r] = out[j] }
                            t += m
                        }
                    }
                }
            } else {
                parallelFor(tasks) { task, _ in
                    let r0 = task * chunk, r1 = min(rows, r0 + chunk)
                    for r in r0..<r1 {
                        for t in 0..<n { y[t * ys + r] = one(r, t) }
                    }
                }
            }
        }
        if vt == .f32 || f32Activations {
            if let tile = w.kernels.dotF32Tile, n >= tile.minRows {
                tiledMatmul(w, tile, n: n, ys: ys, scratch: scratch, xRowBytes: 0, y: y, x: UnsafeRawPointer(x),
                            prepareRow: nil)
                return
            }
            let dot = w.kernels.dotF32
            // Every out[j] of dotF32Multi has the bits dotF32 would give (the formats' single-row kernel is the
            // one-row case of the same code).
            rowLoop(multi: w.kernels.dotF32Multi.map { multi in { r, t, m, out in multi(w.row(r), x + t * cols, cols, m, out, cols) } },
                    one: { r, t in dot(w.row(r), x + t * cols, cols) })
            return
        }
        // Quantize the activations once: `// xq: [n, rowBytes(vt)]`.
        guard let q = KernelDispatch.kernels(for: vt)?.quantize, let xRowBytes = vt.byteCount(elements: cols) else {
            preconditionFailure("no quantizer for activation format \(vt) (weights \(w.name))")
        }
        if let tile = w.kernels.vecDotTile, n >= tile.minRows, let prepare = tile.prepare {
            tiledMatmul(w, tile, n: n, ys: ys, scratch: scratch, xRowBytes: xRowBytes, y: y, x: nil) { t, xp, tmp in
                q(x + t * cols, tmp, cols)
                prepare(tmp, xp, cols)
            }
            return
        }
        scratch.activations.reserve(n * xRowBytes)
        let xq = scratch.activations.bytes
        if n == 1 {
            q(x, xq, cols)
        } else {
            parallelFor(n) { t, _ in q(x + t * cols, xq + t * xRowBytes, cols) }
        }
        let xqc = UnsafeRawPointer(xq)
        let dot = w.kernels.vecDot
        rowLoop(multi: w.kernels.vecDotMulti.map { multi in { r, t, m, out in multi(w.row(r), xqc + t * xRowBytes, xRowBytes, m, out, cols) } },
                one: { r, t in dot(w.row(r), xqc + t * xRowBytes, cols) })
    }
}

extension ThreadPool {

    /// The tile path: every activation row prepared once (`prepareRow(t, dst, tmp)`, `tmp` a per-thread buffer of
    /// `xRowBytes`; or the f32 rows `x` read in place when `prepareRow` is nil), then tasks of up to 32 weight rows,
    /// each one `gemm` over all token rows.
    /// Buffer: `// [n, preparedBytes]` prepared rows, then per thread `xRowBytes` + the gemm scratch.
    func tiledMatmul(_ w: WeightMatrix, _ tile: TileKernels, n: Int, ys: Int, scratch: MatmulScratch, xRowBytes: Int,
                     y: UnsafeMutablePointer<Float>, x: UnsafeRawPointer?,
                     prepareRow: ((_ t: Int, _ dst: UnsafeMutableRawPointer, _ tmp: UnsafeMutableRawPointer) -> Void)?) {
        let rows = w.rows, cols = w.cols
        // Multiples of 4 rows (the register tile), at least ~4 tasks per thread where the matrix allows.
        let chunk = max(4, min(32, (rows / (threadCount * 4) + 3) / 4 * 4))
        let tasks = (rows + chunk - 1) / chunk
        @inline(__always) func up64(_ v: Int) -> Int { (v + 63) & ~63 }
        let pb = prepareRow == nil ? 0 : up64(tile.preparedBytes(cols))
        let perThread = up64(xRowBytes) + up64(tile.scratchBytes(chunk, cols))
        scratch.activations.reserve(n * pb + threadCount * perThread)
        let base = scratch.activations.bytes
        let threadBase = base + n * pb
        let xp: UnsafeRawPointer, xStride: Int
        if let prepareRow {
            parallelFor(n) { t, thread in prepareRow(t, base + t * pb, threadBase + thread * perThread) }
            xp = UnsafeRawPointer(base)
            xStride = pb
        } else {
            xp = x!
            xStride = cols * MemoryLayout<Float>.stride
        }
        parallelFor(tasks) { task, thread in
            let r0 = task * chunk, r1 = min(rows, r0 + chunk)
            let ws = threadBase + thread * perThread + up64(xRowBytes)
            tile.gemm(w.row(r0), w.rowBytes, r1 - r0, xp, xStride, n, y + r0, ys, cols, ws)
        }
    }
}
