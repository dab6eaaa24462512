import Atomics
import Foundation
import Quant

extension ThreadPool {
    /// Whether `expertsFused` runs (`KTRANSFORMERS_MOE_FUSED=0`: the four-region path of `CPUExpertExecutor`).
    nonisolated(unsafe) public static var fusedExperts = ProcessInfo.processInfo.environment["KTRANSFORMERS_MOE_FUSED"] != "0"

    /// The routed experts of one step in a single parallel region: gate and up (8-bit activations), SiLU·up, its
    /// Q16_K quantization and the down projection, with per-expert dependencies instead of barriers. Tasks are
    /// handed out in order: every (expert, gate|up, row chunk) first, then every (expert, down row chunk). The task
    /// that finishes an expert's last gate/up chunk applies SiLU·up to its rows and quantizes them; a down task of
    /// that expert waits for it (it can only wait for tasks already running, so nothing deadlocks). Same arithmetic,
    /// row for row, as `matmulExperts` gate+up, `Ops.gatedSiLU`, `matmulExperts(precise:)` down (tested bit for bit),
    /// without three region barriers and their tails.
    ///
    /// `gate`, `up`: `[a, ff]` and `down`: `[a, dim]` in the routing's sorted order. Returns false, doing nothing,
    /// where the general path is needed: f32 activations, no Q16 kernels for the down projection, or an expert with
    /// enough rows for the tile kernels (prefill).
    public func expertsFused(_ w: ExpertWeights, x: UnsafePointer<Float>, routing: ExpertRouting,
                             gate gb: UnsafeMutablePointer<Float>, up ub: UnsafeMutablePointer<Float>,
                             down db: UnsafeMutablePointer<Float>, scratch: MatmulScratch) -> Bool {
        let g = w.gate, u = w.up, d = w.down
        let a = routing.assignments, nActive = routing.activeCount
        guard Self.fusedExperts, a > 0, nActive > 0 else { return false }
        let cols = g.cols, ff = g.rows, dim = d.rows
        let vt = g.kernels.vecDotType
        guard u.type == g.type, u.rows == ff, u.cols == cols, u.count == g.count, d.cols == ff, d.count == g.count,
              g.count == routing.expertCount, vt != .f32, d.kernels.vecDotType != .f32,
              let quantize = KernelDispatch.kernels(for: vt)?.quantize, let xRowBytes = vt.byteCount(elements: cols),
              let q16 = d.kernels.q16DotMulti, let q16Rows = d.kernels.q16DotRows else { return false }
        let active = UnsafePointer(routing.active), offsets = UnsafePointer(routing.offsets)
        if let tile = g.kernels.vecDotTile, tile.prepare != nil,
           (0..<nActive).contains(where: { let e = Int(active[$0]); return Int(offsets[e + 1] - offsets[e]) >= tile.minRows }) {
            return false
        }
        // Activations: each token row quantized once, gathered into sorted order (as `matmulExperts`).
        let n = routing.tokens, tokenOf = UnsafePointer(routing.tokenOf)
        let q16Bytes = Q16_K.byteCount(elements: ff)
        routing.activations.reserve(n * xRowBytes)
        routing.gathered.reserve(a * xRowBytes)
        let rowsBytes = (a * q16Bytes + 63) & ~63
        routing.fused.reserve(rowsBytes + 2 * nActive * 64)
        let xqTok = routing.activations.bytes, xq = UnsafeRawPointer(routing.gathered.bytes)
        if n == 1 {
            quantize(x, xqTok, cols)
        } else {
            parallelFor(n) { t, _ in quantize(x + t * cols, xqTok + t * xRowBytes, cols) }
        }
        for p in 0..<a {
            (routing.gathered.bytes + p * xRowBytes).copyMemory(from: xqTok + Int(tokenOf[p]) * xRowBytes, byteCount: xRowBytes)
        }
        let hq = routing.fused.bytes            // [a] Q16_K rows of SiLU·up
        let counters = hq + rowsBytes           // per active expert: gate/up chunks left, then ready (a cache line each)
        func left(_ ai: Int) -> UnsafeAtomic<Int> { UnsafeAtomic(at: (counters + ai * 64).assumingMemoryBound(to: Int.AtomicRepresentation.self)) }
        func ready(_ ai: Int) -> UnsafeAtomic<Int> {
            UnsafeAtomic(at: (counters + (nActive + ai) * 64).assumingMemoryBound(to: Int.AtomicRepresentation.self))
        }

        let perThread = ThreadPool.expertTasksPerThread
        func chunkRows(_ total: Int, _ rows: Int) -> Int {
            let c = (total + threadCount * perThread - 1) / (threadCount * perThread)
            return min(rows, max(16, (c + 3) & ~3))
        }
        let chunk1 = chunkRows(2 * nActive * ff, ff), cpm1 = (ff + chunk1 - 1) / chunk1
        let chunk2 = chunkRows(nActive * dim, dim), cpm2 = (dim + chunk2 - 1) / chunk2
        let tasks1 = nActive * 2 * cpm1, tasks = tasks1 + nActive * cpm2
        for ai in 0..<nActive {
            (counters + ai * 64).storeBytes(of: 2 * cpm1, as: Int.self)
            (counters + (nActive + ai) * 64).storeBytes(of: 0, as: Int.self)
        }
        let multi = g.kernels.vecDotMulti ?? QuantKernels.referenceVecDotMulti(g.kernels.vecDot)
        let quantize16 = KernelDispatch.q16Quantize
        let hqc = UnsafeRawPointer(hq)

        parallelFor(tasks) { task, thread in
            let out = scratch.perThread.buffer(thread)
            if task < tasks1 {
                let ai = task / (2 * cpm1), rem = task % (2 * cpm1), m = rem / cpm1, c = rem % cpm1
                let e = Int(active[ai]), p0 = Int(offsets[e]), p1 = Int(offsets[e + 1])
                let wm = m == 0 ? g : u, ym = m == 0 ? gb : ub
                expertRows(wm, e, c * chunk1..<min(ff, (c + 1) * chunk1), tokens: p0..<p1, ym, out) { wr, p, nx, out in
                    multi(wr, xq + p * xRowBytes, xRowBytes, nx, out, cols)
                }
                if left(ai).loadThenWrappingDecrement(ordering: .acquiringAndReleasing) == 1 {
                    // The expert's last gate/up chunk: SiLU·up and the down projection's Q16_K rows.
                    for p in p0..<p1 {
                        Ops.gatedSiLU(gb + p * ff, ub + p * ff, ff)
                        quantize16(gb + p * ff, hq + p * q16Bytes, ff)
                    }
                    ready(ai).store(1, ordering: .releasing)
                }
                return
            }
            let t2 = task - tasks1, ai = t2 / cpm2, c = t2 % cpm2
            let e = Int(active[ai]), p0 = Int(offsets[e]), p1 = Int(offsets[e + 1])
            while ready(ai).load(ordering: .acquiring) == 0 {}
            let r1 = min(dim, (c + 1) * chunk2)
            if p1 - p0 <= 2 {
                expertRowBlocks(d, e, c * chunk2..<r1, tokens: p0, nx: p1 - p0, db, out) { wr, rs, nr, out in
                    q16Rows(wr, rs, nr, hqc + p0 * q16Bytes, q16Bytes, p1 - p0, out, ff)
                }
                return
            }
            expertRows(d, e, c * chunk2..<r1, tokens: p0..<p1, db, out) { wr, p, nx, out in
                q16(wr, hqc + p * q16Bytes, q16Bytes, nx, out, ff)
            }
        }
        return true
    }
}
