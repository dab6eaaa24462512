import Backend
@testable import Engine
import Foundation
import XCTest

/// A constraint over token ids: `allowed` may come next; ends after `length` tokens.
final class SetConstraint: SamplingConstraint, @unchecked Sendable {
    let allowed: Set<Int32>
    let length: Int
    private(set) var accepted: [Int32] = []
    private(set) var checks = 0
    private(set) var masks = 0

    init(_ allowed: Set<Int32>, length: Int = .max) {
        self.allowed = allowed
        self.length = length
    }

    func allows(_ token: Int32) -> Bool { checks += 1; return allowed.contains(token) }
    func mask(_ logits: UnsafeMutablePointer<Float>, count: Int) {
        masks += 1
        for i in 0..<count where !allowed.contains(Int32(i)) { logits[i] = -.infinity }
    }
    func accept(_ token: Int32) { accepted.append(token) }
    var isComplete: Bool { accepted.count >= length }
}

final class ConstraintTests: XCTestCase {
    /// Constrained sampling draws from the model's distribution restricted to the allowed tokens, whichever path
    /// it takes (rejection for untruncated sampling, the full mask for top-k/top-p/min-p), and greedy picks the
    /// best allowed token.
    func testConstrainedSamplingIsTheMaskedDistribution() {
        let logits: [Float] = [3, 2.5, 2, 1, 0.5, 0, -1, -2]
        let allowed: Set<Int32> = [1, 3, 4, 7]
        // Greedy: the best allowed.
        var g = Sampler(.greedy)
        var row = logits
        XCTAssertEqual(g.sample(&row, count: row.count, constraint: SetConstraint(allowed)), 1)

        func masked(_ p: SamplingParams) -> [Double] {
            var row = logits
            for i in row.indices where !allowed.contains(Int32(i)) { row[i] = -.infinity }
            let m = row.max()!
            var probs = row.map { Double(expf(($0 - m) / p.temperature)) }
            if p.topK > 0 {
                let kth = probs.sorted(by: >)[min(p.topK, allowed.count) - 1]
                probs = probs.map { $0 >= kth ? $0 : 0 }
            }
            let z = probs.reduce(0, +)
            return probs.map { $0 / z }
        }
        for p in [SamplingParams(temperature: 1, topK: 0, topP: 1, minP: 0, seed: 7),
                  SamplingParams(temperature: 0.7, topK: 2, topP: 1, minP: 0, seed: 9)] {
            var s = Sampler(p)
            var counts = [Int](repeating: 0, count: logits.count)
            let n = 40_000
            let c = SetConstraint(allowed)
            for _ in 0..<n {
                var row = logits
                let t = s.sample(&row, count: row.count, constraint: c)!
                counts[Int(t)] += 1
            }
            let expected = masked(p)
            for i in logits.indices {
                let f = Double(counts[i]) / Double(n)
                XCTAssertEqual(f, expected[i], accuracy: 0.012, "token \(i) with \(p)")
            }
            // Untruncated sampling never needs the full mask here; truncated sampling always does.
            if p.truncates { XCTAssertEqual(c.masks, n) } else { XCTAssertLessThan(c.masks, n / 100) }
        }
        // Nothing allowed: nil, not a crash.
        var row2 = logits
        var s = Sampler(SamplingParams(temperature: 1, topK: 0, topP: 1, minP: 0, seed: 1))
        XCTAssertNil(s.sample(&row2, count: row2.count, constraint: SetConstraint([])))
    }

    func testLogitBiasIsAddedBeforeSampling() {
        var p = SamplingParams.greedy
        p.logitBias = [5: 100, 0: -100]
        let s = Sampler(p)
        var row: [Float] = [3, 2, 1, 0, 0, 0]
        s.applyPenalties(&row, count: row.count, prompt: [], generated: [:])
        XCTAssertEqual(Sampler.argmax(row, count: row.count), 5)
        XCTAssertEqual(row[0], -97)
    }
}

extension EngineTests {
    /// A constraint restricts every sampled token and ends the request (finish reason stop) when complete.
    func testConstraintRestrictsTokensAndEndsTheRequest() async throws {
        let e = try makeEngine()
        defer { e.shutdown() }
        let allowed: Set<Int32> = [10, 11, 12]
        var r = EngineRequest(id: "c", promptTokens: prompt(9, seed: 1), sampling: SamplingParams(temperature: 1, topK: 0, topP: 1, minP: 0, seed: 3),
                              maxTokens: 30)
        let c = SetConstraint(allowed, length: 7)
        r.constraint = c
        let out = await Self.collect(try e.submit(r))
        XCTAssertEqual(out.tokens.count, 7)
        XCTAssertTrue(out.tokens.allSatisfy(allowed.contains), "\(out.tokens)")
        XCTAssertEqual(out.finish, .stop)
        XCTAssertEqual(c.accepted, out.tokens)
    }

    /// `prefillAfter`: the followers of a request with the same prompt wait for its prompt, then take it from
    /// the prefix cache; greedy answers are identical.
    func testFollowersShareTheLeadersPrefill() async throws {
        let e = try makeEngine { c in
            c.pageSize = 4
            c.chunkSize = 8
        }
        defer { e.shutdown() }
        let p = prompt(30, seed: 5)
        var streams: [AsyncStream<EngineOutput>] = []
        for i in 0..<3 {
            var r = EngineRequest(id: i == 0 ? "lead" : "f\(i)", promptTokens: p, maxTokens: 6)
            if i > 0 { r.prefillAfter = "lead" }
            streams.append(try e.submit(r))
        }
        var results: [(tokens: [Int32], finish: FinishReason?, last: EngineOutput?)] = []
        for s in streams { results.append(await Self.collect(s)) }
        XCTAssertEqual(results[1].tokens, results[0].tokens)
        XCTAssertEqual(results[2].tokens, results[0].tokens)
        XCTAssertEqual(results[0].last?.cachedTokens, 0)
        // Every full page of the prompt but the last token's comes from the cache (28 of 30 tokens).
        XCTAssertEqual(results[1].last?.cachedTokens, 28)
        XCTAssertEqual(results[2].last?.cachedTokens, 28)
        XCTAssertEqual(e.stats().promptTokens, 30 + 2 * 2)
        // A follower whose leader is aborted (or unknown) still runs.
        var orphan = EngineRequest(id: "o", promptTokens: p, maxTokens: 2)
        orphan.prefillAfter = "nobody"
        let o = await Self.collect(try e.submit(orphan))
        XCTAssertEqual(o.tokens.count, 2)
    }
}
