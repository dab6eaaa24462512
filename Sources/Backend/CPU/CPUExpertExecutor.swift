import Dispatch
import Quant

/// Routed experts on CPU threads: the step's (token, choice) pairs sorted by expert (`ExpertRouting`), gate and
/// up in one `matmulExperts` pass, SiLU, the down projection with precise (Q16_K or f32) activations, then the
/// weighted combine into the caller's output. Each chosen expert's weights are read once per step however many
/// tokens chose it. Shared by the MoE layers of one model (one layer at a time).
///
/// `submit` runs the experts before it returns; `wait` does the combine. A hybrid backend runs the same work on
/// its own threads while the GPU does the shared experts.
public final class CPUExpertExecutor: ExpertExecutor, @unchecked Sendable {
    // NOTE: @unchecked: one layer at a time (the ExpertExecutor contract).
    public let pool: ThreadPool
    public let nExpert: Int
    public let dim: Int
    public let ff: Int
    let routing: ExpertRouting
    private let memory = HostBuffers()
    private let scratch: MatmulScratch
    private var capacity = 0                                  // assignments
    private var gate = Tensor(address: 0, count: 0, device: .cpu)   // [n * topK, ff] sorted rows
    private var up = Tensor(address: 0, count: 0, device: .cpu)     // [n * topK, ff]
    private var down = Tensor(address: 0, count: 0, device: .cpu)   // [n * topK, dim]
    /// Nanoseconds spent in the gate/up and down matmuls, when `timing` is on (`bench --moe`).
    public var timing = false
    public private(set) var gateUpNanoseconds: UInt64 = 0
    public private(set) var downNanoseconds: UInt64 = 0
    /// Which experts the steps chose (`ExpertUsage`).
    public let usage: ExpertUsage?

    public init(pool: ThreadPool, nExpert: Int, dim: Int, ff: Int) {
        self.pool = pool
        self.nExpert = nExpert
        self.dim = dim
        self.ff = ff
        routing = ExpertRouting(expertCount: nExpert)
        usage = ExpertUsage(expertCount: nExpert)
        scratch = MatmulScratch(perThread: ThreadScratch(threads: pool.threadCount, floatsPerThread: max(dim, ff, 8)),
                                activations: ActivationBuffer(capacity: 64))
    }

    public func resetTiming() {
        gateUpNanoseconds = 0
        downNanoseconds = 0
    }

    public func reserve(maxTokens: Int, topK: Int) {
        let a = maxTokens * topK
        guard a > capacity else { return }
        capacity = a
        gate = memory.tensor(a * ff)
        up = memory.tensor(a * ff)
        down = memory.tensor(a * dim)
        routing.reserve(assignments: a)
        // The routing's buffers as `matmulExperts` uses them, for every format the executor may meet.
        var activations = 0, gathered = 0, tiles = 0
        @inline(__always) func up64(_ v: Int) -> Int { (v + 63) & ~63 }
        for type in QuantRegistry.supportedTypes {
            guard let k = KernelDispatch.kernels(for: type) else { continue }
            for cols in [dim, ff] where cols % type.blockSize == 0 {
                let vt = k.vecDotType
                let xRowBytes = vt == .f32 ? 0 : (vt.byteCount(elements: cols) ?? 0)
                activations = max(activations, a * xRowBytes)
                gathered = max(gathered, a * max(xRowBytes, cols * 4, Q16_K.byteCount(elements: cols)))
                if let tile = k.vecDotTile, tile.prepare != nil {
                    tiles = max(tiles, a * up64(tile.preparedBytes(cols))
                                       + pool.threadCount * up64(tile.scratchBytes(32, cols)))
                }
            }
        }
        routing.activations.reserve(activations)
        routing.gathered.reserve(gathered)
        routing.tiles.reserve(tiles)
        routing.fused.reserve(((a * Q16_K.byteCount(elements: ff) + 63) & ~63) + 2 * nExpert * 64)
    }

    public func submit(_ w: ExpertWeights, x: Tensor, ids: Tensor, n: Int, topK k: Int) {
        precondition(n * k <= capacity, "expert executor reserved for \(capacity) assignments, step has \(n * k)")
        routing.set(experts: ids.hostInt32, tokens: n, perToken: k)
        usage?.record(layer: w.gate.name, routing: routing)
        let gb = gate.hostFloats, ub = up.hostFloats, db = down.hostFloats, f = ff
        let t0 = timing ? DispatchTime.now().uptimeNanoseconds : 0
        // One region with per-expert dependencies where it applies (decode); `timing` then counts it all as gate+up.
        if pool.expertsFused(w, x: x.hostFloats, routing: routing,
                             gate: gb, up: ub, down: down.hostFloats, scratch: scratch) {
            if timing { gateUpNanoseconds += DispatchTime.now().uptimeNanoseconds - t0 }
            return
        }
        // Routed experts, rows in sorted order: gate and up in one pass, then silu(gate)·up, then down.
        pool.matmulExperts(w.gate, gb, also: w.up, ub, x: x.hostFloats, gather: true, routing: routing, scratch: scratch)
        let t1 = timing ? DispatchTime.now().uptimeNanoseconds : 0
        pool.parallelFor(routing.assignments) { p, _ in Ops.gatedSiLU(gb + p * f, ub + p * f, f) }
        let t2 = timing ? DispatchTime.now().uptimeNanoseconds : 0
        // NOTE: precise (16-bit or f32) activations into the down projection, as the dense MLP: its input is
        // heavy-tailed, and 8-bit rounding of it costs accuracy (docs/architecture.md).
        pool.matmulExperts(w.down, db, x: gb, gather: false, routing: routing, scratch: scratch, precise: true)
        if timing {
            gateUpNanoseconds += t1 - t0
            downNanoseconds += DispatchTime.now().uptimeNanoseconds - t2
        }
    }

    public func wait(weights: Tensor, accumulateInto out: Tensor, n: Int) {
        let k = routing.perToken, d = dim
        let pos = UnsafePointer(routing.positionOf), db = UnsafePointer(down.hostFloats)
        let wts = UnsafePointer(weights.hostFloats), op = out.hostFloats
        pool.parallelFor(n) { t, _ in
            for j in 0..<k {
                let i = t * k + j
                axpy(wts[i], db + Int(pos[i]) * d, op + t * d, d)
            }
        }
    }
}
