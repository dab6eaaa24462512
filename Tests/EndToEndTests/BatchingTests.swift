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

/// The prefix cache on the real model: 50 random multi-turn greedy conversations sharing a system prompt (each turn
/// resends the whole history) give the same tokens with the cache on and off, and every page is released.
final class PrefixCacheTests: XCTestCase {
    func testFiftyConversationsEqualWithAndWithoutTheCache() async throws {
        let m = try DefaultModelFixture.get()
        var outputs: [[[Int32]]] = []
        var hits = 0
        for caching in [true, false] {
            var config = EngineConfig()
            config.prefixCaching = caching
            config.maxBatchSize = 8
            config.chunkSize = 64
            config.kvCacheTokens = 2048
            config.contextLength = 256
            let engine = try Engine(model: m.model, config: config)
            var seed: UInt64 = 7
            func next() -> UInt64 { seed = seed &* 6364136223846793005 &+ 1442695040888963407; return seed >> 33 }
            let system = (0..<40).map { _ in Int32(1000 + next() % 50_000) }
            let plans: [[[Int32]]] = (0..<50).map { _ in (0..<3).map { _ in (0..<(4 + Int(next() % 9))).map { _ in Int32(1000 + next() % 50_000) } } }
            let got = try await withThrowingTaskGroup(of: (Int, [[Int32]]).self) { group in
                for (c, turns) in plans.enumerated() {
                    group.addTask {
                        var history = system, outs: [[Int32]] = []
                        for (t, user) in turns.enumerated() {
                            history += user
                            var out: [Int32] = []
                            for await o in try engine.submit(EngineRequest(id: "c\(c)t\(t)", promptTokens: history, maxTokens: 6)) {
                                if let tok = o.token { out.append(tok) }
                            }
                            outs.append(out)
                            history += out
                        }
                        return (c, outs)
                    }
                }
                var r = [[[Int32]]](repeating: [], count: plans.count)
                for try await (c, o) in group { r[c] = o }
                return r
            }
            outputs.append(got.flatMap { $0 })
            let s = engine.stats()
            XCTAssertEqual(s.kvPagesFree, s.kvPagesTotal)
            if caching { hits = s.prefixCacheHitTokens; print("default model: prefix cache hit \(s.prefixCacheHitTokens) of \(s.prefixCacheQueryTokens) tokens") }
            engine.shutdown()
        }
        XCTAssertEqual(outputs[0], outputs[1])
        XCTAssertGreaterThan(hits, 50 * 32)   // at least the shared system prompt's full pages, every request
    }
}
