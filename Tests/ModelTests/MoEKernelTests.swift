import Backend
import Foundation
@testable import Models
import Quant
import XCTest

/// The expert matmul against a naive per-token loop (each token's chosen experts one by one through the dense
/// `matmul` on that expert's matrix), for quantized and float formats, gathered token rows (gate/up) and sorted
/// rows with f32 activations (down); and the routing variants on hand-made router logits.
final class MoEKernelTests: XCTestCase {
    /// Deterministic generator (SplitMix64), so failures reproduce.
    struct Rng {
        var s: UInt64
        mutating func next() -> UInt64 {
            s &+= 0x9E37_79B9_7F4A_7C15
            var z = s
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        mutating func float() -> Float { Float(next() >> 40) / Float(1 << 24) * 2 - 1 }
        mutating func int(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    }

    final class Bytes {
        let p: UnsafeMutableRawPointer
        init(_ n: Int) { p = .allocate(byteCount: max(1, n), alignment: 64) }
        deinit { p.deallocate() }
    }

    /// A stack of `count` random `[rows, cols]` matrices in `type` (rows of different scales, as real experts).
    func makeStack(_ type: GGMLType, count: Int, rows: Int, cols: Int, rng: inout Rng) throws -> WeightStack {
        let q = try XCTUnwrap(QuantRegistry.kernels(for: type)?.quantize, "\(type) has no quantizer")
        let rowBytes = try XCTUnwrap(type.byteCount(elements: cols))
        let bytes = Bytes(count * rows * rowBytes)
        var row = [Float](repeating: 0, count: cols)
        for r in 0..<count * rows {
            let s: Float = 0.5 + Float(r % 7) * 0.25
            for i in 0..<cols { row[i] = rng.float() * s }
            row.withUnsafeBufferPointer { q($0.baseAddress!, bytes.p + r * rowBytes, cols) }
        }
        return try WeightStack(name: "test_exps", type: type, count: count, rows: rows, cols: cols,
                               data: UnsafeRawPointer(bytes.p), owner: bytes)
    }

    func testMatmulExpertsMatchesPerTokenLoop() throws {
        let pool = TinyModels.pool
        let nExpert = 6, rows = 40, cols = 256
        let scratch = MatmulScratch(perThread: ThreadScratch(threads: pool.threadCount, floatsPerThread: cols),
                                    activations: ActivationBuffer())
        var rng = Rng(s: 42)
        for type in [GGMLType.q4_K, .q8_0, .q6_K, .f16, .f32] {
            let gate = try makeStack(type, count: nExpert, rows: rows, cols: cols, rng: &rng)
            let up = try makeStack(type, count: nExpert, rows: rows, cols: cols, rng: &rng)
            for (n, k) in [(1, 3), (5, 2), (9, 4), (40, 2)] {  // (40, 2): ~13 rows per expert, the tile path
                let x = (0..<n * cols).map { _ in rng.float() }
                var experts = [Int32]()
                for _ in 0..<n {
                    var chosen = Set<Int>()
                    while chosen.count < k { chosen.insert(rng.int(nExpert)) }
                    experts += chosen.sorted { _, _ in rng.int(2) == 0 }.map(Int32.init)
                }
                let routing = ExpertRouting(expertCount: nExpert)
                experts.withUnsafeBufferPointer { routing.set(experts: $0.baseAddress!, tokens: n, perToken: k) }
                XCTAssertEqual(routing.assignments, n * k)
                var yg = [Float](repeating: .nan, count: n * k * rows), yu = yg, yd = yg
                x.withUnsafeBufferPointer { xp in
                    yg.withUnsafeMutableBufferPointer { g in
                        yu.withUnsafeMutableBufferPointer { u in
                            pool.matmulExperts(gate, g.baseAddress!, also: up, u.baseAddress!, x: xp.baseAddress!,
                                               gather: true, routing: routing, scratch: scratch)
                        }
                    }
                }
                // Sorted rows in (the gathered x itself), precise activations: as the down projection runs.
                var xs = [Float](repeating: 0, count: n * k * cols)
                for p in 0..<n * k {
                    let t = Int(routing.tokenOf[p])
                    for i in 0..<cols { xs[p * cols + i] = x[t * cols + i] }
                }
                xs.withUnsafeBufferPointer { xp in
                    yd.withUnsafeMutableBufferPointer { d in
                        pool.matmulExperts(gate, d.baseAddress!, x: xp.baseAddress!, gather: false, routing: routing,
                                           scratch: scratch, precise: true)
                    }
                }
                // The same from the token rows (gathered inside): the same bits.
                var yd2 = yd
                x.withUnsafeBufferPointer { xp in
                    yd2.withUnsafeMutableBufferPointer { d in
                        pool.matmulExperts(gate, d.baseAddress!, x: xp.baseAddress!, gather: true, routing: routing,
                                           scratch: scratch, precise: true)
                    }
                }
                XCTAssertEqual(yd.map(\.bitPattern), yd2.map(\.bitPattern), "\(type): precise path, gathered vs sorted rows")
                // Naive: each (token, choice) through the dense matmul of that expert, one token at a time.
                var errQ: Float = 0, errF: Float = 0, scale: Float = 0
                var ref = [Float](repeating: 0, count: rows)
                for t in 0..<n {
                    for j in 0..<k {
                        let e = Int(experts[t * k + j]), p = Int(routing.positionOf[t * k + j])
                        XCTAssertEqual(Int(routing.tokenOf[p]), t)
                        XCTAssert(p >= Int(routing.offsets[e]) && p < Int(routing.offsets[e + 1]))
                        for (stack, y) in [(gate, yg), (up, yu)] {
                            x.withUnsafeBufferPointer { xp in
                                ref.withUnsafeMutableBufferPointer {
                                    pool.matmul(stack.matrix(e), xp.baseAddress! + t * cols, $0.baseAddress!, n: 1, scratch: scratch)
                                }
                            }
                            for r in 0..<rows {
                                errQ = max(errQ, abs(y[p * rows + r] - ref[r]))
                                scale = max(scale, abs(ref[r]))
                            }
                        }
                        x.withUnsafeBufferPointer { xp in
                            ref.withUnsafeMutableBufferPointer {
                                pool.matmul(gate.matrix(e), xp.baseAddress! + t * cols, $0.baseAddress!, n: 1,
                                            scratch: scratch, f32Activations: true)
                            }
                        }
                        for r in 0..<rows { errF = max(errF, abs(yd[p * rows + r] - ref[r])) }
                    }
                }
                // The precise path is f32 itself (bound: f32 rounding) or Q16_K (bound: its 16-bit rounding).
                let hasQ16 = KernelDispatch.kernels(for: type)?.q16DotMulti != nil
                print(String(format: "%@ n=%d k=%d: expert matmul vs per-token loop: %.3g (8-bit activations), %.3g (%@), max |y| %.3g",
                             type.description, n, k, errQ, errF, hasQ16 ? "Q16_K" : "f32", scale))
                // Same kernels' bits (multi-row, rows and tile kernels all give vecDot's): exactly equal.
                XCTAssertEqual(errQ, 0, "\(type) n=\(n) k=\(k): quantized-activation path")
                XCTAssertLessThanOrEqual(errF, (hasQ16 ? 1e-4 : 1e-5) * scale, "\(type) n=\(n) k=\(k): precise path")
            }
        }
    }

    /// The precise (Q16_K) expert path gives each token the bits it gets alone, whether its experts saw one or two
    /// tokens (the rows kernels) or more (the token kernels).
    func testPreciseExpertPathIsBatchInvariant() throws {
        let pool = TinyModels.pool
        let nExpert = 5, rows = 37, cols = 512, n = 7, k = 2
        let scratch = MatmulScratch(perThread: ThreadScratch(threads: pool.threadCount, floatsPerThread: cols),
                                    activations: ActivationBuffer())
        var rng = Rng(s: 7)
        for type in [GGMLType.q4_K, .q6_K] {
            let w = try makeStack(type, count: nExpert, rows: rows, cols: cols, rng: &rng)
            XCTAssertNotNil(w.kernels.q16DotMulti)
            let x = (0..<n * cols).map { _ in rng.float() * 3 }
            var experts = [Int32]()
            for t in 0..<n {  // token 0 alone on expert 3, tokens 1 and 2 on expert 4; experts 0-2 shared by more
                experts += t == 0 ? [3, 0] : t < 3 ? [4, Int32(t)] : [Int32(t % 3), Int32((t + 1) % 3)]
            }
            func run(_ tokens: Range<Int>) -> ([Float], ExpertRouting) {
                let routing = ExpertRouting(expertCount: nExpert)
                Array(experts[tokens.lowerBound * k..<tokens.upperBound * k]).withUnsafeBufferPointer {
                    routing.set(experts: $0.baseAddress!, tokens: tokens.count, perToken: k)
                }
                var y = [Float](repeating: .nan, count: tokens.count * k * rows)
                x.withUnsafeBufferPointer { xp in
                    y.withUnsafeMutableBufferPointer {
                        pool.matmulExperts(w, $0.baseAddress!, x: xp.baseAddress! + tokens.lowerBound * cols, gather: true,
                                           routing: routing, scratch: scratch, precise: true)
                    }
                }
                return (y, routing)
            }
            let (all, rAll) = run(0..<n)
            for t in 0..<n {
                let (solo, rSolo) = run(t..<t + 1)
                for j in 0..<k {
                    let pa = Int(rAll.positionOf[t * k + j]), ps = Int(rSolo.positionOf[j])
                    for r in 0..<rows {
                        XCTAssertEqual(all[pa * rows + r].bitPattern, solo[ps * rows + r].bitPattern, "\(type) token \(t) choice \(j) row \(r)")
                    }
                }
            }
        }
    }

    /// The routed experts of a step in one region (`ThreadPool.expertsFused`, per-expert dependencies) give the bits
    /// of the four-region path (gate+up, SiLU, Q16_K down, combine) for every K-quant the down projection has Q16
    /// kernels for, with experts that one, two and more rows chose; and the fused region really ran (its timing
    /// lands in gate+up alone).
    func testFusedExpertStepEqualsTheFourRegionPath() throws {
        defer { ThreadPool.fusedExperts = true }
        let nExpert = 8, dim = 256, ff = 512
        var rng = Rng(s: 2024)
        for type in [GGMLType.q4_K, .q6_K] {
            let w = ExpertWeights(gate: try makeStack(type, count: nExpert, rows: ff, cols: dim, rng: &rng),
                                  up: try makeStack(type, count: nExpert, rows: ff, cols: dim, rng: &rng),
                                  down: try makeStack(type, count: nExpert, rows: dim, cols: ff, rng: &rng))
            for (n, k) in [(1, 2), (1, 8), (3, 3), (6, 4)] {
                let cpu = CPUBackend(pool: TinyModels.pool)
                let x = cpu.upload((0..<n * dim).map { _ in rng.float() * 2 })
                var experts = [Int32]()
                for _ in 0..<n {
                    var chosen = [Int32]()
                    while chosen.count < k { let e = Int32(rng.int(nExpert)); if !chosen.contains(e) { chosen.append(e) } }
                    experts += chosen
                }
                let ids = cpu.allocate(n * k)
                experts.withUnsafeBufferPointer { cpu.write($0, to: ids) }
                let weights = cpu.upload((0..<n * k).map { _ in 0.2 + abs(rng.float()) })
                func run(fused: Bool) -> (out: [UInt32], down: UInt64, gateUp: UInt64) {
                    ThreadPool.fusedExperts = fused
                    let ex = CPUExpertExecutor(pool: TinyModels.pool, nExpert: nExpert, dim: dim, ff: ff)
                    ex.reserve(maxTokens: n, topK: k)
                    ex.timing = true
                    let out = cpu.upload([Float](repeating: 0.5, count: n * dim))
                    ex.submit(w, x: x, ids: ids, n: n, topK: k)
                    ex.wait(weights: weights, accumulateInto: out, n: n)
                    return ((0..<n * dim).map { out.hostFloats[$0].bitPattern }, ex.downNanoseconds, ex.gateUpNanoseconds)
                }
                let fused = run(fused: true), regions = run(fused: false)
                XCTAssertEqual(fused.out, regions.out, "\(type) n \(n) top-\(k): the fused step differs from the four regions")
                XCTAssertEqual(fused.down, 0, "\(type) n \(n): the fused region did not run")
                XCTAssertGreaterThan(regions.down, 0)
                XCTAssertTrue(fused.out.contains { Float(bitPattern: $0) != 0.5 })
            }
        }
    }

    // MARK: routing variants

    func route(_ r: MoERouting, _ logits: [Float]) -> ([Int32], [Float]) {
        var e = [Int32](repeating: -1, count: r.topK), w = [Float](repeating: 0, count: r.topK)
        var work = [Float](repeating: 0, count: 2 * logits.count + r.groups)
        logits.withUnsafeBufferPointer { l in
            r.select(logits: l.baseAddress!, nExpert: logits.count, experts: &e, weights: &w, work: &work)
        }
        return (e, w)
    }

    func testSoftmaxTopKWithAndWithoutNormalization() {
        let logits: [Float] = [0.1, 2.0, -1.0, 1.5, 0.3, 1.9]
        let z = logits.map { exp(Double($0)) }.reduce(0, +)
        let p = logits.map { Float(exp(Double($0)) / z) }
        let (e, w) = route(MoERouting(scoring: .softmax, topK: 2, normalizeTopK: false), logits)
        XCTAssertEqual(e, [1, 5])
        XCTAssertEqual(w[0], p[1], accuracy: 1e-6)
        XCTAssertEqual(w[1], p[5], accuracy: 1e-6)
        var r = MoERouting(scoring: .softmax, topK: 2, normalizeTopK: true)
        r.scale = 2
        let (e2, w2) = route(r, logits)
        XCTAssertEqual(e2, [1, 5])
        XCTAssertEqual(w2[0], 2 * p[1] / (p[1] + p[5]), accuracy: 1e-6)
        XCTAssertEqual(w2[0] + w2[1], 2, accuracy: 1e-6)
    }

    /// Four groups of two. Group maxima: g0 0.9, g1 0.8, g2 0.7, g3 0.6; top-two sums: g0 0.9, g1 1.5, g2 1.4,
    /// g3 0.6. Keeping two groups: by max (V2) g0 + g1, by top-two sum (V3) g1 + g2.
    func testGroupLimitedSelectionByMaxAndByTopTwoSum() {
        let scores: [Float] = [0.9, 0.0, 0.8, 0.7, 0.7, 0.7, 0.6, 0.0]
        // Sigmoid scoring: feed logits whose sigmoid is `scores` (clamped away from 0 for the logit).
        let logits = scores.map { s -> Float in let c = min(max(s, 1e-4), 1 - 1e-4); return log(c / (1 - c)) }
        var r = MoERouting(scoring: .sigmoid, topK: 2, normalizeTopK: false)
        r.groups = 4
        r.groupsUsed = 2
        r.groupScore = .max
        XCTAssertEqual(route(r, logits).0, [0, 2])
        r.groupScore = .topTwoSum
        XCTAssertEqual(route(r, logits).0, [2, 3])  // g1 (0.8, 0.7) and g2 (0.7, 0.7): ties go to the lower index
        // The selection bias moves the choice but not the weights (DeepSeek-V3's e_score_correction_bias).
        r.selectionBias = [0, 0, 0, 0, 0, 0, 0, 1.0]  // g3 top-two sum 1.6 + 0.6: now g3 and g1
        let (e, w) = route(r, logits)
        XCTAssertEqual(e, [7, 2])
        XCTAssertEqual(w[0], 1e-4, accuracy: 1e-6)   // unbiased sigmoid score of expert 7
        XCTAssertEqual(w[1], 0.8, accuracy: 1e-6)
    }

    /// The margins `select` returns: how far the last kept group and the last chosen expert were from the best
    /// dropped ones (what decides whether a small difference in the router's input can change the choice).
    func testSelectionMargins() {
        let scores: [Float] = [0.9, 0.0, 0.8, 0.7, 0.7, 0.65, 0.6, 0.0]
        let logits = scores.map { s -> Float in let c = min(max(s, 1e-4), 1 - 1e-4); return log(c / (1 - c)) }
        func margins(_ r: MoERouting) -> (group: Float, expert: Float) {
            var e = [Int32](repeating: -1, count: r.topK), w = [Float](repeating: 0, count: r.topK)
            var work = [Float](repeating: 0, count: 2 * logits.count + r.groups)
            let m = logits.withUnsafeBufferPointer { l in
                r.select(logits: l.baseAddress!, nExpert: logits.count, experts: &e, weights: &w, work: &work, margins: true)
            }
            XCTAssertNil(logits.withUnsafeBufferPointer { l in
                r.select(logits: l.baseAddress!, nExpert: logits.count, experts: &e, weights: &w, work: &work)
            }, "margins computed without being asked for")
            return m!
        }
        var r = MoERouting(scoring: .sigmoid, topK: 2, normalizeTopK: false)
        // No groups: experts 0 (0.9) and 2 (0.8) chosen, the best left is 3 or 4 (0.7): margin 0.1.
        var m = margins(r)
        XCTAssertEqual(m.group, .infinity)
        XCTAssertEqual(m.expert, 0.1, accuracy: 1e-5)
        // Top-two sums g0 0.9, g1 1.5, g2 1.35, g3 0.6: keep g1 and g2 (group margin 1.35 - 0.9), choose 2 (0.8) and
        // 3 (0.7) of them; the best left in the kept groups is 4 (0.7): margin 0.
        r.groups = 4
        r.groupsUsed = 2
        r.groupScore = .topTwoSum
        m = margins(r)
        XCTAssertEqual(m.group, 0.45, accuracy: 1e-3)  // g0 is 0.9 + 1e-4 (the clamped 0)
        XCTAssertEqual(m.expert, 0, accuracy: 1e-5)
        // Every expert of the kept groups chosen: nothing left, no expert margin.
        r.topK = 4
        m = margins(r)
        XCTAssertEqual(m.expert, .infinity)
    }
}
