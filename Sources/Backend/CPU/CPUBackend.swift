import Foundation
import Quant

/// The CPU backend: tensors are host memory, weights are read in place from the GGUF mapping with the kernels of
/// their format for this CPU (`KernelDispatch`), and every op runs on one persistent `ThreadPool`. The ops are
/// the `ThreadPool` kernels (`matmul`, `matmulShared`, `matmulExperts`, `matmulHeads`, `storeKV`, `attention`)
/// and `Ops`, called exactly as the layers called them before the seam, so results are bit for bit the same.
///
/// Its scratch (per-thread matmul outputs, quantized activations, attention scores, router work) is sized by
/// `reserve` for the largest step and for every weight it prepared; a forward pass then allocates nothing.
public final class CPUBackend: ComputeBackend, @unchecked Sendable {
    // NOTE: @unchecked: the scratch is used by one forward pass at a time (the ComputeBackend contract), and
    // `prepare` / `reserve` run at load, before any forward pass.
    public let pool: ThreadPool
    public var device: Device { .cpu }
    public var summary: String { "cpu (\(pool.threadCount) threads\(pool.pinned ? " pinned to cores" : ""), \(KernelDispatch.isa))" }
    private let memory = HostBuffers()
    private var scratch: MatmulScratch
    private var attentionScratch: ThreadScratch
    private var routerScratch: ThreadScratch
    /// Every distinct (type, cols) of a weight this backend prepared: sizes the activation scratch.
    private var shapes: [ShapeKey: QuantKernels] = [:]
    private var plan = ForwardPlan(maxTokens: 0, contextLength: 0, maxQueryGroup: 1)

    private struct ShapeKey: Hashable {
        let type: GGMLType
        let cols: Int
    }

    public init(pool: ThreadPool) {
        self.pool = pool
        scratch = MatmulScratch(perThread: ThreadScratch(threads: pool.threadCount, floatsPerThread: 8),
                                activations: ActivationBuffer(capacity: 64))
        attentionScratch = ThreadScratch(threads: pool.threadCount, floatsPerThread: 1)
        routerScratch = ThreadScratch(threads: pool.threadCount, floatsPerThread: 1)
    }

    public convenience init(threads: Int = CPUInfo.physicalCores) {
        self.init(pool: ThreadPool(threads: threads))
    }

    // MARK: memory

    public func allocate(_ count: Int) -> Tensor { memory.tensor(count) }

    public func release(_ t: Tensor) { memory.free(t) }

    public func upload(_ values: [Float]) -> Tensor {
        let t = memory.tensor(values.count)
        values.withUnsafeBufferPointer { t.hostFloats.update(from: $0.baseAddress!, count: values.count) }
        return t
    }

    public func write(_ values: UnsafeBufferPointer<Int32>, to t: Tensor) {
        precondition(values.count <= t.count, "write of \(values.count) elements into a tensor of \(t.count)")
        if let b = values.baseAddress { t.hostInt32.update(from: b, count: values.count) }
    }

    public func write(_ values: UnsafeBufferPointer<Float>, to t: Tensor) {
        precondition(values.count <= t.count, "write of \(values.count) elements into a tensor of \(t.count)")
        if let b = values.baseAddress { t.hostFloats.update(from: b, count: values.count) }
    }

    public func read(_ t: Tensor, count: Int) -> UnsafeMutablePointer<Float> { t.hostFloats }

    public func makeKVCache(pageSize: Int, numPages: Int, kDims: [Int], vDims: [Int]) -> KVCache {
        KVCache(pageSize: pageSize, numPages: numPages, kDims: kDims, vDims: vDims)
    }

    public func makeRopeTable(_ rope: RoPE, positions: Int) -> RopeTable {
        let t = memory.tensor(max(1, positions * rope.dims))
        let p = t.hostFloats, d = rope.dims
        pool.parallelFor(positions) { pos, _ in rope.table(position: pos, into: p + pos * d) }
        return RopeTable(rope: rope, table: t, positions: positions)
    }

    // MARK: weights

    public func prepare(_ w: WeightRef) throws -> WeightMatrix {
        guard w.shape.count == 2 else { throw BackendError("tensor '\(w.name)': shape \(w.shape) is not a matrix") }
        let m = try WeightMatrix(name: w.name, type: w.type, rows: w.shape[1], cols: w.shape[0], data: w.data,
                                 owner: w.owner)
        note(m.kernels, type: w.type, cols: m.cols)
        return m
    }

    /// Where stacks of matrices (the routed experts, in a hybrid placement) are copied at load instead of being read
    /// from the file's mapping: e.g. page-locked memory, which a GPU's copy engine reads at the link's speed (the
    /// hybrid MoE's layerwise prefill). Returns the memory and its owner (which frees it), or nil (that stack then
    /// stays on the mapping). nil, the default: every stack is read from the mapping.
    public var stackMemory: (@Sendable (_ bytes: Int) -> (pointer: UnsafeMutableRawPointer, owner: AnyObject)?)?

    public func prepareStack(_ w: WeightRef) throws -> WeightStack {
        guard w.shape.count == 3 else { throw BackendError("tensor '\(w.name)': shape \(w.shape) is not a stack of matrices") }
        var data = w.data, owner = w.owner
        if let alloc = stackMemory, let bytes = w.byteCount, bytes > 0, let memory = alloc(bytes) {
            HostMemory.parallelCopy(memory.pointer, w.data, bytes: bytes)
            data = UnsafeRawPointer(memory.pointer)
            owner = memory.owner
        }
        let s = try WeightStack(name: w.name, type: w.type, count: w.shape[2], rows: w.shape[1], cols: w.shape[0],
                                data: data, owner: owner)
        note(s.kernels, type: w.type, cols: s.cols)
        return s
    }

    private func note(_ k: QuantKernels, type: GGMLType, cols: Int) {
        let key = ShapeKey(type: type, cols: cols)
        guard shapes[key] == nil else { return }
        shapes[key] = k
        if plan.maxTokens > 0 { resizeScratch() }
    }

    public func makeExpertExecutor(nExpert: Int, dim: Int, ff: Int) -> any ExpertExecutor {
        CPUExpertExecutor(pool: pool, nExpert: nExpert, dim: dim, ff: ff)
    }

    public func reserve(_ p: ForwardPlan) {
        plan = ForwardPlan(maxTokens: max(plan.maxTokens, p.maxTokens),
                           contextLength: max(plan.contextLength, p.contextLength),
                           maxQueryGroup: max(plan.maxQueryGroup, p.maxQueryGroup),
                           routerWork: max(plan.routerWork, p.routerWork))
        resizeScratch()
    }

    /// Grows the scratch to the plan and to every prepared weight shape (only where it is too small).
    private func resizeScratch() {
        let threads = pool.threadCount
        let maxCols = shapes.keys.map(\.cols).max() ?? 8
        if scratch.perThread.floatsPerThread < maxCols {
            scratch = MatmulScratch(perThread: ThreadScratch(threads: threads, floatsPerThread: maxCols),
                                    activations: scratch.activations)
        }
        var bytes = 0
        for (key, k) in shapes {
            bytes = max(bytes, CPUBackend.matmulScratchBytes(k, cols: key.cols, tokens: plan.maxTokens, threads: threads))
        }
        scratch.activations.reserve(bytes)
        let attention = (plan.maxQueryGroup + 1) * plan.contextLength
        if attentionScratch.floatsPerThread < attention {
            attentionScratch = ThreadScratch(threads: threads, floatsPerThread: attention)
        }
        if routerScratch.floatsPerThread < plan.routerWork {
            routerScratch = ThreadScratch(threads: threads, floatsPerThread: plan.routerWork)
        }
    }

    /// The most bytes of `MatmulScratch.activations` any matmul path takes for `tokens` rows of `cols` elements
    /// (see `ThreadPool.matmul`, `tiledMatmul`, `matmulShared`).
    static func matmulScratchBytes(_ k: QuantKernels, cols: Int, tokens n: Int, threads: Int) -> Int {
        @inline(__always) func up64(_ v: Int) -> Int { (v + 63) & ~63 }
        let maxTile = 32
        var need = 0
        if k.vecDotType != .f32, let xRowBytes = k.vecDotType.byteCount(elements: cols) {
            need = n * xRowBytes
            if let tile = k.vecDotTile, tile.prepare != nil {
                need = max(need, n * up64(tile.preparedBytes(cols))
                                 + threads * (up64(xRowBytes) + up64(tile.scratchBytes(maxTile, cols))))
            }
        }
        if let tile = k.dotF32Tile {
            need = max(need, threads * up64(tile.scratchBytes(maxTile, cols)))
        }
        return need
    }

    // MARK: ops

    /// `body(row)` for every row, over the pool when the rows hold enough work to pay for waking it
    /// (`elementsPerRow` floats each), else on the calling thread: a decode step of a few tokens has hundreds of
    /// such small ops. Each row is computed the same way either way, so the bits do not depend on it.
    @inline(__always)
    private func forEachRow(_ n: Int, elementsPerRow: Int, _ body: (Int) -> Void) {
        if n * elementsPerRow < 16384 {
            for t in 0..<n { body(t) }
        } else {
            pool.parallelFor(n) { t, _ in body(t) }
        }
    }

    public func embed(_ table: WeightMatrix, tokens: Tensor, n: Int, out: Tensor, scale: Float) {
        let toks = tokens.hostInt32, x = out.hostFloats, d = table.cols
        let dequantize = table.kernels.dequantize, data = table.data, rowBytes = table.rowBytes
        forEachRow(n, elementsPerRow: d) { t in
            dequantize(data + Int(toks[t]) * rowBytes, x + t * d, d)
            if scale != 1 { Ops.scale(x + t * d, scale, d) }
        }
    }

    public func rmsNorm(_ x: Tensor, weight: Tensor, out: Tensor, rows: Int, dim: Int, stride: Int, eps: Float) {
        let xp = x.hostFloats, wp = UnsafePointer(weight.hostFloats), op = out.hostFloats
        forEachRow(rows, elementsPerRow: dim) { t in
            Ops.rmsNorm(xp + t * stride, wp, op + t * stride, rows: 1, dim: dim, eps: eps)
        }
    }

    public func rmsNormRows(_ x: Tensor, indices: Tensor, count: Int, weight: Tensor, out: Tensor, dim: Int, eps: Float) {
        let xp = x.hostFloats, ip = indices.hostInt32, wp = UnsafePointer(weight.hostFloats), op = out.hostFloats
        for i in 0..<count { Ops.rmsNorm(xp + Int(ip[i]) * dim, wp, op + i * dim, rows: 1, dim: dim, eps: eps) }
    }

    public func matmul(_ w: WeightMatrix, _ x: Tensor, _ y: Tensor, n: Int, precision: MatmulPrecision) {
        pool.matmul(w, x.hostFloats, y.hostFloats, n: n, scratch: scratch,
                    f32Activations: precision == .f32Activations)
    }

    public func matmulGroup(_ w0: WeightMatrix, _ y0: Tensor, _ w1: WeightMatrix, _ y1: Tensor, _ w2: WeightMatrix?,
                            _ y2: Tensor?, x: Tensor, n: Int) {
        pool.matmulShared(w0, y0.hostFloats, w1, y1.hostFloats, w2, y2?.hostFloats, x: x.hostFloats, n: n,
                          scratch: scratch)
    }

    public func matmulHeads(_ w: WeightStack, _ x: Tensor, xStride: Int, xHeadStride: Int, _ y: Tensor, yStride: Int,
                            yHeadStride: Int, n: Int) {
        pool.matmulHeads(w, x.hostFloats, xStride: xStride, xHeadStride: xHeadStride, y.hostFloats, yStride: yStride,
                         yHeadStride: yHeadStride, n: n, scratch: scratch)
    }

    public func addBias(_ bias: Tensor, to x: Tensor, rows: Int) {
        let b = UnsafePointer(bias.hostFloats), xp = x.hostFloats, w = bias.count
        for t in 0..<rows { Ops.add(b, into: xp + t * w, w) }
    }

    public func rope(_ x: Tensor, rows: Int, rowStride: Int, heads: Int, headStride: Int, table: RopeTable,
                     positions: Tensor, norm: Tensor?, eps: Float) {
        let xp = x.hostFloats, pos = positions.hostInt32, tp = UnsafePointer(table.table.hostFloats)
        let rope = table.rope, dims = rope.dims
        let np = norm.map { UnsafePointer($0.hostFloats) }
        forEachRow(rows, elementsPerRow: heads * headStride) { t in
            let xt = xp + t * rowStride
            if let np { Ops.rmsNormHeads(xt, np, count: heads, dim: headStride, eps: eps) }
            rope.apply(xt, heads: heads, headDim: headStride, table: tp + Int(pos[t]) * dims)
        }
    }

    public func storeKV(k: Tensor, v: Tensor, n: Int, cache: KVCache, layer: Int, meta: BatchMetadata) {
        pool.storeKV(k.hostFloats, v.hostFloats, n: n, cache: cache, layer: layer, meta: AttentionMetadata(meta))
    }

    public func attention(q: Tensor, out: Tensor, n: Int, cache: KVCache, layer: Int, meta: BatchMetadata,
                          params: AttentionParams) {
        pool.attention(q: q.hostFloats, out: out.hostFloats, n: n, cache: cache, layer: layer,
                       meta: AttentionMetadata(meta), params: params, scratch: attentionScratch)
    }

    public func gatedActivation(_ g: Tensor, _ u: Tensor, count total: Int, _ kind: GatedActivation) {
        let gp = g.hostFloats, up = UnsafePointer(u.hostFloats)
        // In chunks over the pool when there is enough of it (prefill).
        let chunk = 8192
        pool.parallelFor((total + chunk - 1) / chunk) { c, _ in
            let start = c * chunk, len = min(chunk, total - start)
            switch kind {
            case .silu: Ops.gatedSiLU(gp + start, up + start, len)
            case .gelu: Ops.gatedGELU(gp + start, up + start, len)
            }
        }
    }

    public func add(_ x: Tensor, into y: Tensor, count: Int) {
        Ops.add(x.hostFloats, into: y.hostFloats, count)
    }

    public func copyRows(_ src: Tensor, srcStride: Int, _ dst: Tensor, dstStride: Int, rows: Int, width: Int) {
        let s = src.hostFloats, d = dst.hostFloats
        for r in 0..<rows { (d + r * dstStride).update(from: s + r * srcStride, count: width) }
    }

    public func fill(_ x: Tensor, count: Int, value: Float) {
        x.hostFloats.update(repeating: value, count: count)
    }

    public func moeSelect(logits: Tensor, nExpert: Int, routing: MoERouting, experts: Tensor, weights: Tensor, n: Int) {
        let lp = UnsafePointer(logits.hostFloats), ep = experts.hostInt32, wp = weights.hostFloats
        let k = routing.topK, work = routerScratch
        precondition(work.floatsPerThread >= routing.workFloats(nExpert: nExpert), "router scratch not reserved")
        if MoERouting.traceMargins {
            for t in 0..<n {
                let m = routing.select(logits: lp + t * nExpert, nExpert: nExpert, experts: ep + t * k, weights: wp + t * k,
                                       work: work.buffer(0), margins: true)!
                FileHandle.standardError.write(String(format: "routing margins: token %d of %d: group %.4g, expert %.4g\n",
                                                      t, n, m.group, m.expert).data(using: .utf8)!)
            }
        } else if n * nExpert * k < 16384 {
            for t in 0..<n {
                routing.select(logits: lp + t * nExpert, nExpert: nExpert, experts: ep + t * k, weights: wp + t * k,
                               work: work.buffer(0))
            }
        } else {
            pool.parallelFor(n) { t, thread in
                routing.select(logits: lp + t * nExpert, nExpert: nExpert, experts: ep + t * k, weights: wp + t * k,
                               work: work.buffer(thread))
            }
        }
    }

    public func sigmoidGate(_ out: Tensor, gate: Tensor, x: Tensor, width: Int, n: Int) {
        let op = out.hostFloats, w = UnsafePointer(gate.hostFloats), xp = UnsafePointer(x.hostFloats)
        forEachRow(n, elementsPerRow: width) { t in
            let z = dotProduct(w, xp + t * width, width)
            Ops.scale(op + t * width, 1 / (1 + expf(-z)), width)
        }
    }

    public func softcap(_ x: Tensor, count: Int, cap c: Float) {
        let p = x.hostFloats
        for i in 0..<count { p[i] = c * tanhf(p[i] / c) }
    }

    public func argmaxRows(_ x: Tensor, rows: Int, cols: Int, out: Tensor) {
        let p = x.hostFloats, o = out.hostInt32
        for r in 0..<rows { o[r] = Int32(firstArgmax(p + r * cols, count: cols)) }
    }
}
