import Backend
import Foundation
import Models
import Quant

/// `ktransformers bench --moe`: one synthetic MoE layer, run by the models' own `MoEFeedForward` code path
/// (`StandaloneMoELayer`: router, the CPU expert executor, combine), against this machine's measured memory
/// bandwidth. Default shape: Qwen3-30B-A3B (128 experts, top-8, hidden 2048, expert width 768, Q4_K).
/// Each step feeds `batch` random token rows (a different set each step, so a random f32 router spreads them over
/// the experts as real routing does); the experts run gate+up in one pass (8-bit activations), SiLU, down (Q16_K
/// activations, as the models run it) and the weighted combine. Throughput is bytes of *distinct* expert weights
/// the step had to read (each chosen expert's three matrices, once, however many tokens chose it) per second of
/// step time; the router's f32 matmul is part of the step time, not of the bytes.
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
        let backend = CPUBackend(pool: pool)
        func stack(_ m: Int, rows: Int, cols: Int, _ name: String) throws -> WeightStack {
            try backend.prepareStack(WeightRef(name: name, type: type, shape: [cols, rows, experts], data: storage[m]))
        }
        let weights = ExpertWeights(gate: try stack(0, rows: ff, cols: dim, "bench.ffn_gate_exps.weight"),
                                    up: try stack(1, rows: ff, cols: dim, "bench.ffn_up_exps.weight"),
                                    down: try stack(2, rows: dim, cols: ff, "bench.ffn_down_exps.weight"))
        var rng = SplitMix(seed: 7)
        // Router: f32 [experts, dim], as the models keep it; N(0, 1/dim) so that the logits have unit scale.
        let routerValues = (0..<experts * dim).map { _ in rng.normalish() * (0.75 / Float(dim)).squareRoot() }
        let routerTensor = backend.upload(routerValues)
        let router = try backend.prepare(WeightRef(name: "bench.ffn_gate_inp.weight", type: .f32, shape: [dim, experts],
                                                   data: UnsafeRawPointer(routerTensor.hostFloats)))

        // Bandwidth is measured before and after the kernel runs (best of both), so a busy spell during one of
        // them does not decide the ratio.
        let bandwidthBefore = MemoryBandwidth.measure(pool: pool)
        let maxBatch = batches.max() ?? 1
        let layer = StandaloneMoELayer(backend: backend, router: router, experts: weights,
                                       routing: MoERouting(scoring: .softmax, topK: topK, normalizeTopK: true),
                                       maxTokens: maxBatch)
        let executor = layer.executor as? CPUExpertExecutor
        executor?.timing = true
        // Token rows of every step: `steps` different sets, so that the routes differ from step to step.
        let xs = backend.allocate(steps * maxBatch * dim)
        for i in 0..<steps * maxBatch * dim { xs.hostFloats[i] = rng.normalish() }
        let out = backend.allocate(maxBatch * dim)

        var results: [Result] = []
        for batch in batches {
            func step(_ s: Int) { layer.forward(xs.offset(s * maxBatch * dim), out: out, n: batch) }
            // Warm-up, and the distinct experts each step reads (the same every repetition: the rows are fixed).
            var distinctPerStep: [Int] = []
            for s in 0..<steps {
                step(s)
                let ids = layer.chosenExperts.hostInt32
                distinctPerStep.append(Set((0..<batch * topK).map { ids[$0] }).count)
            }
            executor?.resetTiming()
            var bytesAll = 0.0, secondsAll = 0.0, best = 0.0
            for _ in 0..<repetitions {
                let bytes = Double(distinctPerStep.reduce(0, +) * 3 * matrixBytes)
                let t0 = DispatchTime.now().uptimeNanoseconds
                for s in 0..<steps { step(s) }
                let sec = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
                bytesAll += bytes
                secondsAll += sec
                best = max(best, bytes / sec / 1e9)
            }
            let phase = (gateUp: executor?.gateUpNanoseconds ?? 0, down: executor?.downNanoseconds ?? 0)
            let total = steps
            let distinctCount = distinctPerStep.reduce(0, +)
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
    /// `runBytes`: the contiguous run each task reads (4 MB by default); runs are taken in a random order, so
    /// short runs see what the expert kernel sees (matrices of ~1 MB at scattered places, cut into row chunks).
    static func measure(pool: ThreadPool, bytes: Int = 1 << 29, passes: Int = 5, runBytes: Int = 4 << 20) -> Double {
        let n = bytes / 4
        let buf = UnsafeMutablePointer<Float>.allocate(capacity: n)
        defer { buf.deallocate() }
        let chunk = max(32, runBytes / 4)  // floats per task
        let tasks = n / chunk
        pool.parallelFor(tasks) { t, _ in for i in 0..<chunk { buf[t * chunk + i] = Float((t &* 31 &+ i) & 1023) } }
        var rng = SplitMix(seed: 11)
        var order = Array(0..<tasks)
        for i in stride(from: tasks - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
        let sums = UnsafeMutablePointer<Float>.allocate(capacity: tasks)
        defer { sums.deallocate() }
        var best = 0.0
        for _ in 0..<passes {
            let t0 = DispatchTime.now().uptimeNanoseconds
            order.withUnsafeBufferPointer { order in
            pool.parallelFor(tasks) { t, _ in
                let raw = UnsafeRawPointer(buf + order[t] * chunk)
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
            }
            let sec = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            best = max(best, Double(tasks * chunk * 4) / sec / 1e9)
        }
        return best
    }

    /// Diagnostics of the expert kernel's surroundings on this pool: read bandwidth by contiguous run length, and
    /// the cost of one empty parallel region (wake the workers, hand out one task each, join).
    static func diagnostics(pool: ThreadPool) -> String {
        let runs = [(4 << 20, "4 MB"), (1 << 20, "1 MB"), (256 << 10, "256 KB"), (64 << 10, "64 KB")]
        let bw = runs.map { "\($0.1) \(String(format: "%.1f", measure(pool: pool, runBytes: $0.0)))" }
        let regions = 2000
        for _ in 0..<100 { pool.parallelFor(pool.threadCount) { _, _ in } }
        let t0 = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<regions { pool.parallelFor(pool.threadCount) { _, _ in } }
        let us = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e3 / Double(regions)
        return "moe-diag | \(pool.threadCount) threads | read GB/s by contiguous run: " + bw.joined(separator: ", ")
            + String(format: " | empty parallel region %.2f µs\n", us)
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

