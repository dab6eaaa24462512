import Backend
import BackendCUDA
@testable import Engine
import Foundation
import GGUF
import Models
import XCTest

/// The engine end to end on a tiny random model (Tests/ModelTests/Fixtures): batching, preemption and
/// cancellation must not change any sequence's tokens.
final class EngineTests: XCTestCase {
    static let modelPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../ModelTests/Fixtures/llama.gguf").standardized.path

    static func fixture(_ name: String) -> String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../ModelTests/Fixtures/\(name).gguf").standardized.path
    }

    func makeEngine(_ path: String = EngineTests.modelPath, _ configure: (inout EngineConfig) -> Void = { _ in }) throws -> Engine {
        let file = try GGUFFile(path: path)
        let model = try ModelRegistry.load(file, backend: CPUBackend(pool: ThreadPool(threads: 2)))
        var c = EngineConfig()
        configure(&c)
        return try Engine(model: model, config: c)
    }

    func prompt(_ n: Int, seed: Int) -> [Int32] { (0..<n).map { Int32((seed * 31 + $0 * 7) % 96) } }

    static func collect(_ stream: AsyncStream<EngineOutput>) async -> (tokens: [Int32], finish: FinishReason?, last: EngineOutput?) {
        var tokens: [Int32] = []
        var last: EngineOutput?
        for await o in stream {
            if let t = o.token { tokens.append(t) }
            last = o
        }
        return (tokens, last?.finishReason, last)
    }

    func alone(_ p: [Int32], maxTokens: Int, model: String = EngineTests.modelPath) async throws -> [Int32] {
        let e = try makeEngine(model) { $0.maxBatchSize = 1 }
        defer { e.shutdown() }
        return await Self.collect(try e.submit(EngineRequest(id: "x", promptTokens: p, maxTokens: maxTokens))).tokens
    }

    /// 8 requests with different prompt lengths arriving at different times give, greedily, exactly the tokens
    /// each gives alone — with chunked prefill (chunk 5) and a pool small enough to force preemption.
    func testBatchedGreedyEqualsAlone() async throws {
        try await checkBatchedGreedyEqualsAlone(model: EngineTests.modelPath)
    }

    /// The same on MoE models: expert routing of a token must not depend on its batch.
    func testBatchedGreedyEqualsAloneOnMoEModels() async throws {
        for name in ["qwen3moe", "mixtral", "deepseek2-v3"] {
            try await checkBatchedGreedyEqualsAlone(model: EngineTests.fixture(name))
        }
    }

    func checkBatchedGreedyEqualsAlone(model: String) async throws {
        let prompts = (0..<8).map { prompt(3 + 5 * $0, seed: $0) }
        var expected: [[Int32]] = []
        for p in prompts { expected.append(try await alone(p, maxTokens: 12, model: model)) }
        let e = try makeEngine(model) { c in
            c.maxBatchSize = 8
            c.chunkSize = 5
            c.pageSize = 4
            c.kvCacheTokens = 4 * 14   // 14 pages: enough for the longest (50 tokens), far too few for all 8
        }
        defer { e.shutdown() }
        let results = try await withThrowingTaskGroup(of: (Int, [Int32]).self) { g in
            for (i, p) in prompts.enumerated() {
                g.addTask {
                    try await Task.sleep(nanoseconds: UInt64(i) * 200_000)  // staggered arrivals
                    let r = await Self.collect(try e.submit(EngineRequest(id: "r\(i)", promptTokens: p, maxTokens: 12)))
                    XCTAssertEqual(r.finish, .length)
                    XCTAssertEqual(r.last?.completionTokens, 12)
                    XCTAssertEqual(r.last?.promptTokens, p.count)
                    return (i, r.tokens)
                }
            }
            var out = [[Int32]](repeating: [], count: prompts.count)
            for try await (i, t) in g { out[i] = t }
            return out
        }
        XCTAssertEqual(results, expected, model)
        let s = e.stats()
        XCTAssertEqual(s.kvPagesFree, s.kvPagesTotal)
        if model == EngineTests.modelPath {
            XCTAssertGreaterThan(s.preemptions, 0, "the pool was meant to run dry")
        }
        XCTAssertEqual(s.running + s.waiting, 0)
    }

    /// A queued request that is aborted never runs; its stream ends with `.abort` (the running-request case is
    /// tested on the real model in EndToEndTests, where a step is slow enough to abort mid-generation). On the tiny
    /// model the busy request's 54 tokens take a few ms, so a test thread descheduled that long (a loaded CI machine)
    /// aborts too late: the queued request has run by then. Such a round says so and the scenario runs again.
    func testAbortOfAQueuedRequest() async throws {
        var abortedWhileQueued = false
        for _ in 0..<10 where !abortedWhileQueued {
            let e = try makeEngine { $0.maxBatchSize = 1 }
            defer { e.shutdown() }
            let busy = try e.submit(EngineRequest(id: "busy", promptTokens: prompt(10, seed: 1), maxTokens: 54))
            let queued = try e.submit(EngineRequest(id: "q", promptTokens: prompt(10, seed: 2), maxTokens: 5))
            e.abort(id: "q")
            let r = await Self.collect(queued)
            let b = await Self.collect(busy)
            XCTAssertEqual(b.tokens.count, 54)
            XCTAssertEqual(e.stats().kvPagesFree, e.stats().kvPagesTotal)
            if r.finish == .abort {
                // Aborted before it ran, or (a late abort) while it ran: never more tokens than it was given.
                XCTAssertLessThan(r.tokens.count, 5)
                abortedWhileQueued = r.tokens.isEmpty
            } else {
                XCTAssertEqual(r.finish, .length, "the abort came after the request had finished")
                XCTAssertEqual(r.tokens.count, 5)
            }
        }
        XCTAssertTrue(abortedWhileQueued, "in 10 rounds the abort never reached the request while it was queued")
    }

    /// A consumer that stops listening (a disconnected client) cancels its request.
    func testDroppingTheStreamAbortsTheRequest() async throws {
        let e = try makeEngine()
        defer { e.shutdown() }
        let p = prompt(5, seed: 2)
        let task = Task {
            var n = 0
            for await o in try e.submit(EngineRequest(id: "d", promptTokens: p, maxTokens: 100_000)) {
                if o.token != nil { n += 1 }
            }
            return n
        }
        try await Task.sleep(nanoseconds: 20_000_000)
        task.cancel()
        _ = try await task.value
        for _ in 0..<200 where e.stats().running > 0 { try await Task.sleep(nanoseconds: 1_000_000) }
        XCTAssertEqual(e.stats().running, 0)
        XCTAssertEqual(e.stats().kvPagesFree, e.stats().kvPagesTotal)
    }

    func testStopTokensAndLimits() async throws {
        // With no waiting room, a request is taken only while a batch slot is free.
        let e = try makeEngine { c in
            c.maxQueued = 0
            c.maxBatchSize = 1
        }
        defer { e.shutdown() }
        let p = prompt(6, seed: 3)
        let free = try await alone(p, maxTokens: 6)
        // "first" holds the engine thread in its first sampling step (its constraint waits) until "q" has been
        // refused, however the threads are scheduled; it is then cancelled.
        var r0 = EngineRequest(id: "first", promptTokens: p, maxTokens: 1_000_000)
        let gate = GateConstraint()
        r0.constraint = gate
        let first = try e.submit(r0)
        gate.entered.wait()
        XCTAssertThrowsError(try e.submit(EngineRequest(id: "q", promptTokens: p, maxTokens: 6))) {
            guard case .overloaded = $0 as? EngineError else { return XCTFail("\($0)") }
        }
        e.abort(id: "first")
        gate.open.signal()
        let firstEnd = await Self.collect(first).finish
        XCTAssertEqual(firstEnd, .abort)
        // Stopping on the third token's id ends there, with that token reported.
        let e2 = try makeEngine()
        defer { e2.shutdown() }
        let r = await Self.collect(try e2.submit(EngineRequest(id: "s", promptTokens: p, maxTokens: 6, stopTokenIDs: [free[2]])))
        XCTAssertEqual(r.finish, .stop)
        XCTAssertEqual(r.tokens, Array(free.prefix(through: free.firstIndex(of: free[2])!)))
        XCTAssertThrowsError(try e2.submit(EngineRequest(id: "long", promptTokens: prompt(64, seed: 1), maxTokens: 1))) {
            XCTAssertEqual($0 as? EngineError, .promptTooLong(tokens: 64, limit: 64))
        }
        XCTAssertThrowsError(try e2.submit(EngineRequest(id: "empty", promptTokens: [], maxTokens: 1)))
        XCTAssertThrowsError(try e2.submit(EngineRequest(id: "oov", promptTokens: [96], maxTokens: 1)))
    }

    /// One batch mixing plain greedy rows (their choice from the backend's argmaxRows) with rows that read their
    /// logits (log-probabilities, a penalty, seeded sampling): each request gets exactly what it gets alone.
    func testMixedSamplingInOneBatchEqualsAlone() async throws {
        try await checkMixedSamplingEqualsAlone { batch in try self.makeEngine { $0.maxBatchSize = batch } }
    }

    /// The same with the model on the CUDA backend (a GPU, or the CUDA emulator): the greedy rows' argmax on the
    /// device, the other rows read from device memory one by one.
    func testMixedSamplingInOneBatchEqualsAloneOnCUDA() async throws {
        guard let gpu = try CUDABackend.makeIfPresent() else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA engine test skipped")
        }
        let model = try ModelRegistry.load(GGUFFile(path: Self.modelPath), backend: gpu)
        try await checkMixedSamplingEqualsAlone { batch in
            var c = EngineConfig()
            c.maxBatchSize = batch
            return try Engine(model: model, config: c)
        }
    }

    /// Five requests (plain greedy twice, greedy with log-probabilities, seeded sampling, greedy with a presence
    /// penalty) alone (`engine(1)`), then together in one engine (`engine(8)`): the same tokens and log-probabilities.
    func checkMixedSamplingEqualsAlone(_ engine: (Int) throws -> Engine) async throws {
        let requests: [(SamplingParams, Int?)] = [
            (.greedy, nil),
            (.greedy, 2),
            (SamplingParams(temperature: 0.8, topK: 0, topP: 1, minP: 0, seed: 7), nil),
            (SamplingParams(temperature: 0, topK: 1, topP: 1, minP: 0, presencePenalty: 0.7), nil),
            (.greedy, nil),
        ]
        let prompts = requests.indices.map { prompt(4 + 3 * $0, seed: 20 + $0) }
        @Sendable func run(_ e: Engine, _ i: Int) async throws -> (tokens: [Int32], logprobs: [String]) {
            var tokens: [Int32] = [], logprobs: [String] = []
            let (params, k) = requests[i]
            for await o in try e.submit(EngineRequest(id: "m\(i)", promptTokens: prompts[i], sampling: params,
                                                      maxTokens: 9, logprobs: k)) {
                if let t = o.token { tokens.append(t) }
                if let l = o.logprob { logprobs.append("\(l)") }
            }
            return (tokens, logprobs)
        }
        var alone: [(tokens: [Int32], logprobs: [String])] = []
        for i in requests.indices {
            let e = try engine(1)
            alone.append(try await run(e, i))
            e.shutdown()
        }
        let e = try engine(8)
        defer { e.shutdown() }
        let together = try await withThrowingTaskGroup(of: (Int, [Int32], [String]).self) { g in
            for i in requests.indices { g.addTask { let r = try await run(e, i); return (i, r.tokens, r.logprobs) } }
            var out = [(tokens: [Int32], logprobs: [String])](repeating: ([], []), count: requests.count)
            for try await (i, t, l) in g { out[i] = (t, l) }
            return out
        }
        for i in requests.indices {
            XCTAssertEqual(together[i].tokens, alone[i].tokens, "request \(i)")
            XCTAssertEqual(together[i].tokens.count, 9, "request \(i)")
            XCTAssertEqual(together[i].logprobs, alone[i].logprobs, "request \(i)")
        }
        XCTAssertEqual(alone[1].logprobs.count, 9)
    }

    func testSeededSamplingIsReproducibleAndLogprobsAreConsistent() async throws {
        let e = try makeEngine()
        defer { e.shutdown() }
        let params = SamplingParams(temperature: 1.0, topK: 0, topP: 0.9, minP: 0, seed: 42, presencePenalty: 0.5)
        let p = prompt(7, seed: 4)
        let a = await Self.collect(try e.submit(EngineRequest(id: "a", promptTokens: p, sampling: params, maxTokens: 10, logprobs: 3)))
        let b = await Self.collect(try e.submit(EngineRequest(id: "b", promptTokens: p, sampling: params, maxTokens: 10, logprobs: 3)))
        XCTAssertEqual(a.tokens, b.tokens)
        XCTAssertEqual(a.tokens.count, 10)
    }
}

/// The steady state allocates nothing: after an engine is built (model, KV cache, runner sized at load), a long
/// run of steps of every mix (prompt chunks with decode tokens, 1 to 4 sequences, preemption) never allocates run
/// memory (`RunMemory` counts every arena, KV cache, RoPE table and kernel-scratch allocation or growth).
final class SteadyStateMemoryTests: XCTestCase {
    func testThousandsOfMixedStepsAllocateNoRunMemory() async throws {
        for name in ["llama-q8_0", "qwen3moe-q8_0", "deepseek2-v3", "gemma3"] {
            let file = try GGUFFile(path: EngineTests.fixture(name))
            let model = try ModelRegistry.load(file, backend: CPUBackend(pool: ThreadPool(threads: 2)))
            var c = EngineConfig()
            c.maxBatchSize = 4
            c.chunkSize = 9          // prompt chunks of up to 9 tokens beside decode tokens
            c.pageSize = 4
            c.kvCacheTokens = 96     // small enough that four long sequences preempt each other
            let engine = try Engine(model: model, config: c)
            defer { engine.shutdown() }
            let before = RunMemory.allocations
            let ctx = min(model.info.contextLength, c.contextLength)
            var step = 0
            for round in 0..<40 {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for r in 0..<4 {
                        let len = 1 + (round * 7 + r * 5) % 20
                        let p = (0..<len).map { Int32((round * 31 + r * 17 + $0 * 7) % 90) }
                        let stream = try engine.submit(EngineRequest(id: "\(round)-\(r)", promptTokens: p,
                                                                     maxTokens: min(ctx - len - 1, 8 + (round + r) % 25)))
                        group.addTask { _ = await EngineTests.collect(stream) }
                    }
                    try await group.waitForAll()
                }
                step = engine.stats().steps
            }
            XCTAssertGreaterThanOrEqual(step, 1000, "\(name): \(step) steps")
            XCTAssertEqual(RunMemory.allocations, before, "\(name): run memory allocated during \(step) steps")
        }
    }
}

/// The prefix cache changes no result: random multi-turn greedy conversations (each turn resends the whole
/// history, all conversations share a system prompt) give the same tokens with the cache on and off.
final class PrefixCacheEngineTests: XCTestCase {
    /// Runs `count` conversations of `turns` turns at once; returns each conversation's outputs, turn by turn.
    static func converse(_ engine: Engine, count: Int, turns: Int, vocab: Int32, system: Int, user: ClosedRange<Int>,
                         output: ClosedRange<Int>, seed: UInt64) async throws -> [[[Int32]]] {
        var rng = Xoshiro256(seed: seed)
        let shared = (0..<system).map { _ in Int32(rng.next() % UInt64(vocab)) }
        let plans: [[(user: [Int32], maxTokens: Int)]] = (0..<count).map { _ in
            (0..<turns).map { _ in
                let n = user.lowerBound + Int(rng.next() % UInt64(user.count))
                return ((0..<n).map { _ in Int32(rng.next() % UInt64(vocab)) },
                        output.lowerBound + Int(rng.next() % UInt64(output.count)))
            }
        }
        return try await withThrowingTaskGroup(of: (Int, [[Int32]]).self) { group in
            for (c, plan) in plans.enumerated() {
                group.addTask {
                    var history = shared, outs: [[Int32]] = []
                    for (t, turn) in plan.enumerated() {
                        history += turn.user
                        let stream = try engine.submit(EngineRequest(id: "c\(c)-t\(t)", promptTokens: history,
                                                                     maxTokens: turn.maxTokens))
                        let out = await EngineTests.collect(stream).tokens
                        outs.append(out)
                        history += out
                    }
                    return (c, outs)
                }
            }
            var r = [[[Int32]]](repeating: [], count: count)
            for try await (c, o) in group { r[c] = o }
            return r
        }
    }

    func testFiftyConversationsGiveTheSameTokensWithAndWithoutTheCache() async throws {
        for name in ["llama", "qwen3moe", "deepseek2-v3", "gemma3"] {
            var results: [[[[Int32]]]] = []
            var stats: [EngineStats] = []
            for caching in [true, false] {
                let model = try ModelRegistry.load(try GGUFFile(path: EngineTests.fixture(name)),
                                                   backend: CPUBackend(pool: ThreadPool(threads: 2)))
                var c = EngineConfig()
                c.prefixCaching = caching
                c.pageSize = 4
                c.chunkSize = 16
                c.maxBatchSize = 6
                c.kvCacheTokens = 160     // small: cached pages are reclaimed and sequences preempted
                let engine = try Engine(model: model, config: c)
                results.append(try await Self.converse(engine, count: 50, turns: 3, vocab: 90, system: 13, user: 2...6,
                                                       output: 3...8, seed: 42))
                stats.append(engine.stats())
                engine.shutdown()
            }
            XCTAssertEqual(results[0], results[1], "\(name): outputs differ with the prefix cache")
            XCTAssertGreaterThan(stats[0].prefixCacheHitTokens, stats[0].prefixCacheQueryTokens / 4, "\(name): \(stats[0])")
            XCTAssertEqual(stats[1].prefixCacheHitTokens, 0)
            for s in stats { XCTAssertEqual(s.kvPagesFree, s.kvPagesTotal, "\(name): pages still held: \(s)") }
            print("\(name): prefix cache hit \(stats[0].prefixCacheHitTokens) of \(stats[0].prefixCacheQueryTokens) tokens, \(stats[0].kvPagesCached) pages cached, steps \(stats[0].steps) vs \(stats[1].steps), preemptions \(stats[0].preemptions)/\(stats[1].preemptions)")
        }
    }
}

extension PrefixCacheEngineTests {
    /// No leak: 1,000 requests sharing prefixes, a third of them cancelled mid-stream (the consumer drops its stream
    /// after the first token); afterwards every page is free or cached-and-unreferenced.
    func testThousandRequestsWithCancellationsLeaveEveryPageFreeOrCached() async throws {
        let model = try ModelRegistry.load(try GGUFFile(path: EngineTests.fixture("qwen3moe")),
                                           backend: CPUBackend(pool: ThreadPool(threads: 2)))
        var c = EngineConfig()
        c.pageSize = 4
        c.chunkSize = 32
        c.maxBatchSize = 8
        c.kvCacheTokens = 256
        c.maxQueued = 1000
        let engine = try Engine(model: model, config: c)
        defer { engine.shutdown() }
        var prefixes: [[Int32]] = []
        for p in 0..<5 {
            let n = 9 + 4 * p
            prefixes.append((0..<n).map { (j: Int) -> Int32 in Int32((p * 37 + j * 11) % 90) })
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<1000 {
                let tail: [Int32] = (0..<(1 + i % 7)).map { (j: Int) -> Int32 in Int32((i + j * 13) % 90) }
                let prompt = prefixes[i % 5] + tail
                let stream = try engine.submit(EngineRequest(id: "r\(i)", promptTokens: prompt, maxTokens: 4 + i % 9))
                group.addTask {
                    if i % 3 == 0 {
                        for await o in stream where o.token != nil { break }   // cancelled mid-stream
                    } else {
                        _ = await EngineTests.collect(stream)
                    }
                }
                if i % 50 == 49 { try await group.waitForAll() }
            }
            try await group.waitForAll()
        }
        // Cancellation takes effect within a step.
        for _ in 0..<200 where engine.stats().running + engine.stats().waiting > 0 { try await Task.sleep(nanoseconds: 5_000_000) }
        let s = engine.stats()
        XCTAssertEqual(s.running + s.waiting, 0)
        XCTAssertEqual(s.kvPagesFree, s.kvPagesTotal, "\(s)")
        XCTAssertGreaterThan(s.kvPagesCached, 0)
        XCTAssertGreaterThan(s.prefixCacheHitTokens, 0)
        print("1000 requests: \(s.prefixCacheHitTokens) of \(s.prefixCacheQueryTokens) prompt tokens from the cache, \(s.kvPagesCached) pages cached, \(s.kvPagesFree) free of \(s.kvPagesTotal)")
    }
}

/// A constraint that allows everything but holds the engine thread at its first check until `open` is signalled.
final class GateConstraint: SamplingConstraint, @unchecked Sendable {
    let entered = DispatchSemaphore(value: 0)
    let open = DispatchSemaphore(value: 0)
    private var first = true

    func allows(_ token: Int32) -> Bool {
        if first {
            first = false
            entered.signal()
            open.wait()
        }
        return true
    }
    func mask(_ logits: UnsafeMutablePointer<Float>, count: Int) {}
    func accept(_ token: Int32) {}
    var isComplete: Bool { false }
}
