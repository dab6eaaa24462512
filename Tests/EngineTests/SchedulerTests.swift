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
