import Backend
import Foundation
import Quant

/// `ktransformers bench --moe`: the expert kernel on one synthetic MoE layer, against this machine's measured
/// memory bandwidth. Default shape: Qwen3-30B-A3B (128 experts, top-8, hidden 2048, expert width 768, Q4_K).
/// Each step routes `batch` tokens to random distinct experts and runs gate+up (one `matmulExperts` pass,
/// 8-bit activations), SiLU, down (f32 activations, as the models run it) and the weighted combine. Throughput is
/// bytes of *distinct* expert weights the step had to read (each chosen expert's three matrices, once, however
/// many tokens chose it) per second of step time.
struct MoEBench {
    var experts = 128
    var topK = 8
    var dim = 2048
    var ff = 768
    var type = GGMLType.q4_K
    var threads: Int
    var repetitions: Int
    var steps = 32

    struct Result: Codable {
        var test: String
        var type: String
        var experts: Int
        var top_k: Int
        var dim: Int
        var ff: Int
        var batch: Int
        var threads: Int
        var isa: String
        var distinct_experts_per_step: Double
        var mb_per_step: Double
        var ms_per_step: Double
        /// The two expert matmuls alone (the rest of ms_per_step: SiLU, combine).
        var gate_up_ms_per_step: Double
        var down_ms_per_step: Double
        var gb_per_second: Double
        var best_gb_per_second: Double
        var memory_bandwidth_gb_per_second: Double
        var fraction_of_bandwidth: Double
    }

    func run(batches: [Int]) throws -> [Result] {
        let pool = ThreadPool(threads: threads)
        guard KernelDispatch.kernels(for: type) != nil, let quantize = QuantRegistry.kernels(for: type)?.quantize else {
            throw CLIError("--moe-type \(type): no kernels or quantizer for it")
        }
        guard topK <= experts, dim % type.blockSize == 0, ff % type.blockSize == 0,
              let upRow = type.byteCount(elements: dim), let downRow = type.byteCount(elements: ff) else {
            throw CLIError("--moe shape: dim \(dim) and ff \(ff) must be multiples of the \(type) block size \(type.blockSize), top-k <= experts")
        }
        let matrixBytes = ff * upRow   // == dim * downRow for the down projection
        precondition(matrixBytes == dim * downRow)

        // Weights: a few distinct random experts quantized with the format's quantizer, then copied over the
        // others with their rows rotated (so no two experts hold the same pages): the kernels' speed does not
        // depend on the values, and quantizing all 128 experts would take ~30 s per core.
        let distinct = min(experts, 4)
        let storage = [UnsafeMutableRawPointer](
            (0..<3).map { _ in UnsafeMutableRawPointer.allocate(byteCount: experts * matrixBytes, alignment: 64) })
        defer { storage.forEach { $0.deallocate() } }
        for (m, base) in storage.enumerated() {
            let (rows, cols, rowBytes) = m < 2 ? (ff, dim, upRow) : (dim, ff, downRow)
            pool.parallelFor(distinct * rows) { r, _ in
                var rng = SplitMix(seed: UInt64(m * 1_000_003 + r))
                var row = [Float](repeating: 0, count: cols)
                for i in 0..<cols { row[i] = rng.normalish() * 0.05 }
                row.withUnsafeBufferPointer { quantize($0.baseAddress!, base + r * rowBytes, cols) }
            }
            pool.parallelFor(experts - distinct) { i, _ in
                let e = distinct + i, src = base + (e % distinct) * matrixBytes, shift = e / distinct
                for r in 0..<rows {
                    (base + e * matrixBytes + r * rowBytes).copyMemory(from: src + ((r + shift) % rows) * rowBytes,
                                                                       byteCount: rowBytes)
                }
            }
        }
        let gate = try WeightStack(name: "bench.ffn_gate_exps", type: type, count: experts, rows: ff, cols: dim, data: storage[0])
        let up = try WeightStack(name: "bench.ffn_up_exps", type: type, count: experts, rows: ff, cols: dim, data: storage[1])
        let down = try WeightStack(name: "bench.ffn_down_exps", type: type, count: experts, rows: dim, cols: ff, data: storage[2])

        // Bandwidth is measured before and after the kernel runs (best of both), so a busy spell during one of
        // them does not decide the ratio.
        let bandwidthBefore = MemoryBandwidth.measure(pool: pool)
        let maxBatch = batches.max() ?? 1
        let scratch = MatmulScratch(perThread: ThreadScratch(threads: threads, floatsPerThread: max(dim, ff)),
                                    activations: ActivationBuffer())
        let routing = ExpertRouting(expertCount: experts)
        let x = UnsafeMutablePointer<Float>.allocate(capacity: maxBatch * dim)
        let g = UnsafeMutablePointer<Float>.allocate(capacity: maxBatch * topK * ff)
        let u = UnsafeMutablePointer<Float>.allocate(capacity: maxBatch * topK * ff)
        let d = UnsafeMutablePointer<Float>.allocate(capacity: maxBatch * topK * dim)
        let out = UnsafeMutablePointer<Float>.allocate(capacity: maxBatch * dim)
        defer { [x, g, u, d, out].forEach { $0.deallocate() } }
        var rng = SplitMix(seed: 7)
        for i in 0..<maxBatch * dim { x[i] = rng.normalish() }
        var ids = [Int32](repeating: 0, count: maxBatch * topK)
        let weight = 1 / Float(topK)

        var results: [Result] = []
        for batch in batches {
            // Pre-drawn routes for every step, so drawing them is not timed.
            let total = (repetitions + 1) * steps
            var routes: [[Int32]] = []
            var distinctCount = 0
            for _ in 0..<total {
                for t in 0..<batch {
                    var chosen = Set<Int32>()
                    while chosen.count < topK { chosen.insert(Int32(rng.next() % UInt64(experts))) }
                    for (j, e) in chosen.enumerated() { ids[t * topK + j] = e }
                }
                let r = Array(ids[0..<batch * topK])
                distinctCount += Set(r).count
                routes.append(r)
            }
            var phase = (gateUp: UInt64(0), down: UInt64(0))  // ns, over the timed steps
            func step(_ r: [Int32]) {
                r.withUnsafeBufferPointer { routing.set(experts: $0.baseAddress!, tokens: batch, perToken: topK) }
                let t0 = DispatchTime.now().uptimeNanoseconds
                pool.matmulExperts(gate, g, also: up, u, x: x, gather: true, routing: routing, scratch: scratch)
                let t1 = DispatchTime.now().uptimeNanoseconds
                let a = routing.assignments, f = ff, dm = dim
                pool.parallelFor(a) { p, _ in Ops.gatedSiLU(g + p * f, u + p * f, f) }
                let t2 = DispatchTime.now().uptimeNanoseconds
                pool.matmulExperts(down, d, x: g, gather: false, routing: routing, scratch: scratch, precise: true)
                phase.gateUp += t1 - t0
                phase.down += DispatchTime.now().uptimeNanoseconds - t2
                let pos = routing.positionOf, kk = topK
                pool.parallelFor(batch) { t, _ in
                    (out + t * dm).update(repeating: 0, count: dm)
                    for j in 0..<kk { axpy(weight, d + Int(pos[t * kk + j]) * dm, out + t * dm, dm) }
                }
            }
            for s in 0..<steps { step(routes[s]) }  // warm-up
            phase = (0, 0)
            var bytesAll = 0.0, secondsAll = 0.0, best = 0.0
            for rep in 0..<repetitions {
                var bytes = 0.0
                let t0 = DispatchTime.now().uptimeNanoseconds
                for s in 0..<steps {
                    let r = routes[(rep + 1) * steps + s]
                    bytes += Double(Set(r).count * 3 * matrixBytes)
                    step(r)
                }
                let sec = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
                bytesAll += bytes
                secondsAll += sec
                best = max(best, bytes / sec / 1e9)
            }
            let timedSteps = Double(repetitions * steps)
            let gbps = bytesAll / secondsAll / 1e9
            let perStep = Double(distinctCount) / Double(total)
            results.append(Result(test: "moe-b\(batch)", type: type.description, experts: experts, top_k: topK, dim: dim,
                                  ff: ff, batch: batch, threads: threads, isa: KernelDispatch.isa,
                                  distinct_experts_per_step: perStep,
                                  mb_per_step: perStep * Double(3 * matrixBytes) / 1e6,
                                  ms_per_step: secondsAll / timedSteps * 1e3,
                                  gate_up_ms_per_step: Double(phase.gateUp) / 1e6 / timedSteps,
                                  down_ms_per_step: Double(phase.down) / 1e6 / timedSteps,
                                  gb_per_second: gbps, best_gb_per_second: best,
                                  memory_bandwidth_gb_per_second: 0, fraction_of_bandwidth: 0))
        }
        let bandwidth = max(bandwidthBefore, MemoryBandwidth.measure(pool: pool))
        for i in results.indices {
            results[i].memory_bandwidth_gb_per_second = bandwidth
            results[i].fraction_of_bandwidth = results[i].best_gb_per_second / bandwidth
        }
        return results
    }

    static func table(_ results: [Result]) -> String {
        var s = "| test | type | threads | isa | experts read/step | MB/step | ms/step | gate+up ms | down ms | GB/s (mean) | GB/s (best) | mem GB/s | best / mem |\n"
        s += "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        for r in results {
            s += String(format: "| %@ | %@ | %d | %@ | %.1f | %.1f | %.3f | %.3f | %.3f | %.2f | %.2f | %.2f | %.0f%% |\n", r.test, r.type,
                        r.threads, r.isa, r.distinct_experts_per_step, r.mb_per_step, r.ms_per_step,
                        r.gate_up_ms_per_step, r.down_ms_per_step, r.gb_per_second,
                        r.best_gb_per_second, r.memory_bandwidth_gb_per_second, 100 * r.fraction_of_bandwidth)
        }
        return s
    }
}

/// Read bandwidth of this machine as the expert kernel sees it: every pool thread streams its share of a buffer
/// much larger than the caches (SIMD loads, summed so they are not optimised away); best of several passes.
enum MemoryBandwidth {
    static func measure(pool: ThreadPool, bytes: Int = 1 << 29, passes: Int = 5) -> Double {
        let n = bytes / 4
        let buf = UnsafeMutablePointer<Float>.allocate(capacity: n)
        defer { buf.deallocate() }
        let chunk = 1 << 20  // floats per task (4 MB)
        let tasks = n / chunk
        pool.parallelFor(tasks) { t, _ in for i in 0..<chunk { buf[t * chunk + i] = Float((t &* 31 &+ i) & 1023) } }
        let sums = UnsafeMutablePointer<Float>.allocate(capacity: tasks)
        defer { sums.deallocate() }
        var best = 0.0
        for _ in 0..<passes {
            let t0 = DispatchTime.now().uptimeNanoseconds
            pool.parallelFor(tasks) { t, _ in
                let raw = UnsafeRawPointer(buf + t * chunk)
                var s0 = SIMD8<Float>(), s1 = SIMD8<Float>(), s2 = SIMD8<Float>(), s3 = SIMD8<Float>()
                var o = 0
                while o < chunk * 4 {
                    s0 += raw.load(fromByteOffset: o, as: SIMD8<Float>.self)
                    s1 += raw.load(fromByteOffset: o + 32, as: SIMD8<Float>.self)
                    s2 += raw.load(fromByteOffset: o + 64, as: SIMD8<Float>.self)
                    s3 += raw.load(fromByteOffset: o + 96, as: SIMD8<Float>.self)
                    o += 128
                }
                sums[t] = ((s0 + s1) + (s2 + s3)).sum()
            }
            let sec = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            best = max(best, Double(tasks * chunk * 4) / sec / 1e9)
        }
        return best
    }
}

/// Deterministic generator for the synthetic weights and routes.
struct SplitMix {
    var s: UInt64
    init(seed: UInt64) { s = seed }
    mutating func next() -> UInt64 {
        s &+= 0x9E37_79B9_7F4A_7C15
        var z = s
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Sum of four uniforms in [-1, 1): roughly normal, variance 4/3.
    mutating func normalish() -> Float {
        var s: Float = 0
        for _ in 0..<4 { s += Float(next() >> 40) / Float(1 << 23) - 1 }
        return s
    }
}

