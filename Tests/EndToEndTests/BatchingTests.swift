import Engine
import Foundation
import XCTest

/// Continuous batching on the real default model: with greedy sampling, a request returns the same tokens
/// whether it runs alone or among 7 others with different prompt lengths arriving at different times.
final class BatchingTests: XCTestCase {
    func testEightStaggeredRequestsEqualTheirSoloRuns() async throws {
        let m = try DefaultModelFixture.get()
        let prompts = try ReferenceCase.load().prefix(8).map(\.promptIDs)
        XCTAssertEqual(Set(prompts.map(\.count)).count > 3, true, "prompt lengths should differ")
        let maxTokens = 16
        var expected: [[Int32]] = []
        for p in prompts {
            let g = try Generator(model: m.model, contextLength: 256)
            var s = Sampler(.greedy)
            var out: [Int32] = []
            try g.generate(prompt: p, maxTokens: maxTokens, sampler: &s) { out.append($0); return true }
            expected.append(out)
        }
        var config = EngineConfig()
        config.maxBatchSize = 8
        config.chunkSize = 16      // prompts arrive in several chunks while others decode
        config.kvCacheTokens = 1024
        config.contextLength = 256
        let engine = try Engine(model: m.model, config: config)
        defer { engine.shutdown() }
        let got = try await withThrowingTaskGroup(of: (Int, [Int32]).self) { group in
            for (i, p) in prompts.enumerated() {
                group.addTask {
                    try await Task.sleep(nanoseconds: UInt64(i) * 15_000_000)
                    var tokens: [Int32] = []
                    for await o in try engine.submit(EngineRequest(id: "r\(i)", promptTokens: p, maxTokens: maxTokens)) {
                        if let t = o.token { tokens.append(t) }
                    }
                    return (i, tokens)
                }
            }
            var r = [[Int32]](repeating: [], count: prompts.count)
            for try await (i, t) in group { r[i] = t }
            return r
        }
        XCTAssertEqual(got, expected)
        let s = engine.stats()
        XCTAssertEqual(s.kvPagesFree, s.kvPagesTotal)
        XCTAssertGreaterThan(s.steps, maxTokens)
    }

    /// Aborting a running request ends its stream with `.abort` and returns its pages within a step.
    func testAbortMidGenerationFreesPages() async throws {
        let m = try DefaultModelFixture.get()
        var config = EngineConfig()
        config.contextLength = 512
        config.kvCacheTokens = 1024
        let engine = try Engine(model: m.model, config: config)
        defer { engine.shutdown() }
        let stream = try engine.submit(EngineRequest(id: "a", promptTokens: [2, 4754, 17797], maxTokens: 400))
        var n = 0
        var finish: FinishReason?
        for await o in stream {
            if o.token != nil { n += 1 }
            if n == 3 && finish == nil { engine.abort(id: "a") }
            finish = o.finishReason ?? finish
        }
        XCTAssertEqual(finish, .abort)
        XCTAssertLessThan(n, 400)
        let s = engine.stats()
        XCTAssertEqual(s.kvPagesFree, s.kvPagesTotal)
        XCTAssertEqual(s.running, 0)
    }
}
