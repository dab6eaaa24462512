import Backend
import XCTest

/// `ExpertUsage`: what the expert executors record of the routing (the routing-spread line of `bench`).
final class ExpertUsageTests: XCTestCase {
    func testRecordsPairsPerExpertAndDistinctExpertsPerStepSize() {
        let usage = ExpertUsage(expertCount: 6)
        let routing = ExpertRouting(expertCount: 6)
        func step(_ layer: String, _ ids: [Int32], k: Int) {
            ids.withUnsafeBufferPointer { routing.set(experts: $0.baseAddress!, tokens: ids.count / k, perToken: k) }
            usage.record(layer: layer, routing: routing)
        }
        step("blk.1.ffn_gate_exps.weight", [0, 1, 1, 2, 0, 5], k: 2)   // 3 tokens: experts 0, 1, 2, 5
        step("blk.2.ffn_gate_exps.weight", [3, 4, 4, 3, 3, 4], k: 2)   // 3 tokens: experts 3, 4
        step("blk.1.ffn_gate_exps.weight", [5, 4], k: 2)               // 1 token
        let layers = usage.perLayer()
        XCTAssertEqual(layers.map(\.layer), ["blk.1.ffn_gate_exps.weight", "blk.2.ffn_gate_exps.weight"])
        XCTAssertEqual(layers[0].counts, [2, 2, 1, 0, 1, 2])
        XCTAssertEqual(layers[1].counts, [0, 0, 0, 3, 3, 0])
        let steps = usage.stepSummary()
        XCTAssertEqual(steps.map(\.tokens), [1, 3])
        XCTAssertEqual(steps.map(\.layerSteps), [1, 2])
        XCTAssertEqual(steps[0].meanDistinct, 2)
        XCTAssertEqual(steps[1].meanDistinct, 3)   // (4 + 2) / 2
        XCTAssertEqual(steps[0].expectedDistinct, 2, accuracy: 1e-12)   // one token reads its k experts
        XCTAssertEqual(steps[1].expectedDistinct, 6 * (1 - pow(4.0 / 6, 3)), accuracy: 1e-12)
        usage.reset()
        XCTAssertTrue(usage.stepSummary().isEmpty)
        XCTAssertTrue(usage.perLayer().isEmpty)
    }

    func testExpectedDistinctUnderRandomChoices() {
        // Qwen3-30B-A3B's 128 experts, top-8: 8 sequences read ~51.6 distinct experts (docs/performance.md).
        XCTAssertEqual(ExpertUsage.expectedDistinct(experts: 128, topK: 8, tokens: 8), 51.6, accuracy: 0.05)
        XCTAssertEqual(ExpertUsage.expectedDistinct(experts: 256, topK: 8, tokens: 8), 57.4, accuracy: 0.05)
        XCTAssertEqual(ExpertUsage.expectedDistinct(experts: 128, topK: 8, tokens: 0), 0)
        XCTAssertEqual(ExpertUsage.expectedDistinct(experts: 128, topK: 128, tokens: 1), 128)
        // A Monte Carlo check of the formula.
        var rng = SystemRandomNumberGenerator()
        var total = 0
        let trials = 2000
        for _ in 0..<trials {
            var seen = Set<Int>()
            for _ in 0..<5 { seen.formUnion(Array(0..<32).shuffled(using: &rng).prefix(4)) }
            total += seen.count
        }
        XCTAssertEqual(Double(total) / Double(trials), ExpertUsage.expectedDistinct(experts: 32, topK: 4, tokens: 5),
                       accuracy: 0.25)
    }

    func testTheCPUExpertExecutorRecordsItsSteps() throws {
        let cpu = CPUBackend(pool: ThreadPool(threads: 2))
        let nExpert = 4, dim = 32, ff = 32
        let e = cpu.makeExpertExecutor(nExpert: nExpert, dim: dim, ff: ff)
        let usage = try XCTUnwrap(e.usage)
        XCTAssertEqual(usage.expertCount, nExpert)
        let values = (0..<nExpert * ff * dim).map { Float(($0 * 7) % 13) / 13 - 0.5 }
        let storage = UnsafeMutablePointer<Float>.allocate(capacity: values.count)
        defer { storage.deallocate() }
        storage.initialize(from: values, count: values.count)
        let stacks = try ["gate", "up", "down"].map {
            try WeightStack(name: "blk.3.ffn_\($0)_exps.weight", type: .f32, count: nExpert, rows: ff, cols: dim,
                            data: UnsafeRawPointer(storage))
        }
        let experts = ExpertWeights(gate: stacks[0], up: stacks[1], down: stacks[2])
        e.reserve(maxTokens: 2, topK: 2)
        let x = cpu.upload((0..<2 * dim).map { Float($0 % 5) / 5 })
        let ids = cpu.allocate(4)
        let chosen: [Int32] = [2, 0, 2, 3]
        for (i, v) in chosen.enumerated() { ids.hostInt32[i] = v }
        let out = cpu.upload([Float](repeating: 0, count: 2 * dim))
        e.submit(experts, x: x, ids: ids, n: 2, topK: 2)
        e.wait(weights: cpu.upload([0.5, 0.5, 0.5, 0.5]), accumulateInto: out, n: 2)
        XCTAssertEqual(usage.perLayer().map(\.layer), ["blk.3.ffn_gate_exps.weight"])
        XCTAssertEqual(usage.perLayer()[0].counts, [1, 0, 2, 1])
        XCTAssertEqual(usage.stepSummary().map(\.meanDistinct), [3])
    }
}
