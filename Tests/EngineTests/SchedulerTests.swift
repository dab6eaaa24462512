@testable import Engine
import XCTest

final class SchedulerTests: XCTestCase {
    private func seq(_ id: String, prompt: Int, arrival: Int, maxTokens: Int = 100) -> SequenceState {
        SequenceState(request: EngineRequest(id: id, promptTokens: Array(repeating: 1, count: prompt), maxTokens: maxTokens),
                      arrival: arrival)
    }

    /// Runs one step as the engine would: commit, then append a token to every sequence that sampled.
    private func advance(_ s: inout Scheduler, _ out: SchedulerOutput) {
        s.commit(out)
        for x in out.scheduled where x.sample { x.sequence.outputTokens.append(7) }
    }

    private func plan(_ out: SchedulerOutput) -> [String] {
        out.scheduled.map { "\($0.sequence.id):\($0.start)+\($0.count)" }
    }

    func testChunkedPrefillSharesTheStepWithDecode() {
        var s = Scheduler(maxBatchSize: 4, chunkSize: 8, kv: KVCacheManager(pageSize: 4, numPages: 16))
        s.add(seq("a", prompt: 3, arrival: 1))
        var out = s.schedule()
        XCTAssertEqual(plan(out), ["a:0+3"])
        advance(&s, out)
        s.add(seq("b", prompt: 20, arrival: 2))
        out = s.schedule()
        XCTAssertEqual(plan(out), ["a:3+1", "b:0+7"])   // a decodes, b gets the rest of the budget
        XCTAssertFalse(out.scheduled[1].sample)
        advance(&s, out)
        out = s.schedule()
        XCTAssertEqual(plan(out), ["a:4+1", "b:7+7"])
        advance(&s, out)
        out = s.schedule()
        XCTAssertEqual(plan(out), ["a:5+1", "b:14+6"])
        XCTAssertTrue(out.scheduled[1].sample)          // b's prompt is complete: its first token is sampled
        advance(&s, out)
        // Pages were handed out as tokens arrived, so the two tables interleave.
        XCTAssertEqual(s.kv.blockTable("a"), [0, 3])
        XCTAssertEqual(s.kv.blockTable("b"), [1, 2, 4, 5, 6])
    }

    func testFCFSAndBatchLimit() {
        var s = Scheduler(maxBatchSize: 2, chunkSize: 64, kv: KVCacheManager(pageSize: 4, numPages: 16))
        for (i, id) in ["a", "b", "c"].enumerated() { s.add(seq(id, prompt: 2, arrival: i)) }
        let out = s.schedule()
        XCTAssertEqual(plan(out), ["a:0+2", "b:0+2"])
        XCTAssertEqual(s.waiting.map(\.id), ["c"])
        advance(&s, out)
        s.remove("a")
        XCTAssertEqual(plan(s.schedule()), ["b:2+1", "c:0+2"])
    }

    /// When the pool runs dry the newest running sequence is preempted, its pages freed, and it is recomputed
    /// from scratch (prompt and generated tokens) once there is room.
    func testPreemptsTheNewestWhenThePoolRunsDry() {
        var s = Scheduler(maxBatchSize: 4, chunkSize: 64, kv: KVCacheManager(pageSize: 2, numPages: 4))
        s.add(seq("old", prompt: 3, arrival: 1))
        s.add(seq("new", prompt: 3, arrival: 2))
        var out = s.schedule()
        XCTAssertEqual(plan(out), ["old:0+3", "new:0+3"])
        XCTAssertEqual(s.kv.freePages, 0)
        advance(&s, out)
        // The sampled tokens sit at position 3, still inside each sequence's two pages.
        out = s.schedule()
        XCTAssertEqual(plan(out), ["old:3+1", "new:3+1"])
        advance(&s, out)
        // Position 4 needs a third page each; only "new" can be preempted to make room for "old".
        out = s.schedule()
        XCTAssertEqual(out.preempted, ["new"])
        XCTAssertEqual(plan(out), ["old:4+1"])
        XCTAssertEqual(s.waiting.map(\.id), ["new"])
        XCTAssertEqual(s.waiting[0].numComputedTokens, 0)
        XCTAssertEqual(s.waiting[0].numTokens, 5)      // 3 prompt + 2 generated, all to recompute
        XCTAssertEqual(s.kv.blockTable("old"), [0, 1, 2])
        advance(&s, out)
        s.remove("old")
        out = s.schedule()
        XCTAssertEqual(plan(out), ["new:0+5"])
        XCTAssertTrue(out.scheduled[0].sample)
        XCTAssertEqual(s.preemptionCount, 1)
    }

    func testASequenceTooBigForThePoolIsEvicted() {
        var s = Scheduler(maxBatchSize: 4, chunkSize: 64, kv: KVCacheManager(pageSize: 2, numPages: 2))
        s.add(seq("a", prompt: 4, arrival: 1))
        var out = s.schedule()
        advance(&s, out)
        out = s.schedule()  // position 4 needs a third page that does not exist
        XCTAssertEqual(out.evicted.map(\.id), ["a"])
        XCTAssertEqual(s.kv.freePages, 2)
        XCTAssertFalse(s.hasWork)
    }
}

/// The scheduler with the prefix cache: a new request starts after its cached prefix, and a preempted one
/// re-adopts its own pages.
final class PrefixCacheSchedulerTests: XCTestCase {
    private func seq(_ id: String, _ prompt: [Int32], arrival: Int) -> SequenceState {
        SequenceState(request: EngineRequest(id: id, promptTokens: prompt, maxTokens: 100), arrival: arrival)
    }

    private func plan(_ out: SchedulerOutput) -> [String] {
        out.scheduled.map { "\($0.sequence.id):\($0.start)+\($0.count)" }
    }

    private func advance(_ s: inout Scheduler, _ out: SchedulerOutput) {
        s.commit(out)
        for x in out.scheduled where x.sample { x.sequence.outputTokens.append(7) }
    }

    func testANewRequestStartsAfterItsCachedPrefix() {
        var s = Scheduler(maxBatchSize: 4, chunkSize: 64, kv: KVCacheManager(pageSize: 4, numPages: 16, prefixCaching: true))
        let system: [Int32] = [10, 11, 12, 13, 14, 15, 16, 17]
        s.add(seq("x", system + [1, 2], arrival: 1))
        var out = s.schedule()
        XCTAssertEqual(plan(out), ["x:0+10"])
        advance(&s, out)
        s.remove("x")
        let y = seq("y", system + [3, 4, 5], arrival: 2)
        s.add(y)
        out = s.schedule()
        XCTAssertEqual(plan(out), ["y:8+3"])
        XCTAssertEqual(s.kv.blockTable("y"), [0, 1, 2])
        XCTAssertEqual(y.cachedPromptTokens, 8)
        XCTAssertEqual(s.prefixHitTokens, 8)
        XCTAssertEqual(s.prefixQueryTokens, 10 + 11)
    }

    func testAPreemptedSequenceReadoptsItsOwnPages() {
        var s = Scheduler(maxBatchSize: 4, chunkSize: 64, kv: KVCacheManager(pageSize: 4, numPages: 4, prefixCaching: true))
        let a = seq("a", [1, 2, 3, 4, 5, 6, 7, 8], arrival: 1)
        let b = seq("b", [9, 10, 11, 12, 13, 14, 15], arrival: 2)
        s.add(a)
        s.add(b)
        var out = s.schedule()
        XCTAssertEqual(plan(out), ["a:0+8", "b:0+7"])
        advance(&s, out)                                        // a: pages 0, 1 full; b: page 2 full, 3 partial
        XCTAssertEqual(s.kv.blockTable("b"), [2, 3])
        out = s.schedule()                                      // a's 9th token needs a page: b is preempted
        XCTAssertEqual(out.preempted, ["b"])
        XCTAssertEqual(plan(out), ["a:8+1"])
        XCTAssertEqual(s.kv.blockTable("a"), [0, 1, 3])          // b's partial page, not its cached one
        advance(&s, out)
        s.remove("a")
        out = s.schedule()
        // b's first page was still cached: it starts at token 4 (its output token, 7, came after its prompt).
        XCTAssertEqual(plan(out), ["b:4+4"])
        XCTAssertEqual(s.kv.blockTable("b").first, 2)
        XCTAssertEqual(b.cachedPromptTokens, 0)                 // reported for its first admission
    }
}
