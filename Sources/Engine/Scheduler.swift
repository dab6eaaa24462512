import Foundation
/// A request as the scheduler sees it: tokens so far and how many of them have their K/V in the cache.
/// There is no prefill or decode phase: `numComputedTokens` catches up to `numTokens`, by a chunk of the
/// prompt or by the one token sampled last step.
final class SequenceState {
    let request: EngineRequest
    /// Arrival order; FCFS and "preempt the newest" both use it.
    let arrival: Int
    var outputTokens: [Int32] = []
    var numComputedTokens = 0
    var preemptions = 0
    /// Sampling state (RNG, penalty counts) lives with the sequence so preemption cannot change its output.
    var sampler: Sampler
    /// Occurrences of each generated token (presence/frequency penalties).
    var generatedCounts: [Int32: Int] = [:]
    /// Prompt tokens whose K/V came from the prefix cache when the sequence was first admitted (nil before).
    var cachedPromptTokens: Int?
    /// When the engine received the request, and when its first step ran (nil before): the queue time.
    let submitted = DispatchTime.now().uptimeNanoseconds
    var firstScheduled: UInt64?

    init(request: EngineRequest, arrival: Int) {
        self.request = request
        self.arrival = arrival
        sampler = Sampler(request.sampling)
    }

    var id: String { request.id }
    var numTokens: Int { request.promptTokens.count + outputTokens.count }

    func token(at i: Int) -> Int32 {
        i < request.promptTokens.count ? request.promptTokens[i] : outputTokens[i - request.promptTokens.count]
    }
}

/// One sequence's share of a step.
struct ScheduledSequence {
    let sequence: SequenceState
    /// Tokens fed this step, at positions `start..<start + count`.
    let start: Int
    let count: Int
    /// True when this step brings the sequence up to date, so its last token's logits are sampled.
    var sample: Bool { start + count == sequence.numTokens }
}

struct SchedulerOutput {
    var scheduled: [ScheduledSequence] = []
    /// Sequences preempted this step (their pages were freed; they will be recomputed).
    var preempted: [String] = []
    /// Sequences that can never fit the pool (finished with `.length`).
    var evicted: [SequenceState] = []
    var isEmpty: Bool { scheduled.isEmpty }
}

/// FCFS continuous batching with chunked prefill over a paged KV pool. Integers only; unit-tested alone.
///
/// Each step: running sequences first, oldest first (a decode token each, or the next prompt chunk), then
/// waiting ones in arrival order while there is room in the batch, the token budget and the pool. When the
/// pool runs dry, the newest running sequence is preempted: its pages are freed and it goes back to the head of
/// the queue to be recomputed later (prompt and generated tokens alike).
struct Scheduler {
    let maxBatchSize: Int
    let chunkSize: Int
    private(set) var kv: KVCacheManager
    private(set) var waiting: [SequenceState] = []
    private(set) var running: [SequenceState] = []
    private(set) var preemptionCount = 0
    /// Prefix cache: tokens looked up at admission, and of those, tokens adopted from the cache.
    private(set) var prefixQueryTokens = 0
    private(set) var prefixHitTokens = 0

    init(maxBatchSize: Int, chunkSize: Int, kv: KVCacheManager) {
        self.maxBatchSize = maxBatchSize
        self.chunkSize = chunkSize
        self.kv = kv
    }

    mutating func add(_ s: SequenceState) { waiting.append(s) }

    var hasWork: Bool { !waiting.isEmpty || !running.isEmpty }

    mutating func schedule() -> SchedulerOutput {
        var out = SchedulerOutput()
        var budget = chunkSize
        var i = 0
        while i < running.count && budget > 0 {
            let s = running[i]
            let n = min(s.numTokens - s.numComputedTokens, budget)
            guard n > 0 else { i += 1; continue }
            if kv.allocate(s.id, tokens: s.numComputedTokens + n) {
                out.scheduled.append(ScheduledSequence(sequence: s, start: s.numComputedTokens, count: n))
                budget -= n
                i += 1
                continue
            }
            // The pool is dry: preempt the newest running sequence (possibly `s` itself) and retry.
            let victim = running.indices.max { running[$0].arrival < running[$1].arrival }!
            if victim == i && running.count == 1 {
                // Alone and still too big for the whole pool: it can never finish.
                kv.free(s.id)
                running.remove(at: i)
                out.evicted.append(s)
                continue
            }
            let v = running.remove(at: victim)
            kv.free(v.id)
            v.numComputedTokens = 0
            v.preemptions += 1
            preemptionCount += 1
            waiting.insert(v, at: 0)
            out.preempted.append(v.id)
            if let j = out.scheduled.firstIndex(where: { $0.sequence === v }) {
                budget += out.scheduled[j].count
                out.scheduled.remove(at: j)
            }
            if victim < i { i -= 1 }
        }
        // NOTE: no admissions in a step that had to preempt: the pool is full, and re-admitting the victim
        // at once would only thrash.
        while out.preempted.isEmpty, let s = waiting.first, running.count < maxBatchSize, budget > 0 {
            // Start from the longest cached prefix of its tokens (prompt, and after a preemption its output too).
            let adopted = s.numComputedTokens == 0 ? kv.adoptPrefix(s.id, count: s.numTokens, token: s.token(at:)) : 0
            s.numComputedTokens += adopted
            let n = min(s.numTokens - s.numComputedTokens, budget)
            // Admit only with room for this chunk plus the pages already promised to running sequences.
            guard kv.allocate(s.id, tokens: s.numComputedTokens + n) else {
                if adopted > 0 {
                    kv.free(s.id)
                    s.numComputedTokens = 0
                }
                break
            }
            if kv.prefixCaching {
                prefixQueryTokens += s.numTokens
                prefixHitTokens += adopted
            }
            if s.cachedPromptTokens == nil { s.cachedPromptTokens = min(adopted, s.request.promptTokens.count) }
            waiting.removeFirst()
            running.append(s)
            out.scheduled.append(ScheduledSequence(sequence: s, start: s.numComputedTokens, count: n))
            budget -= n
        }
        return out
    }

    /// Marks the scheduled tokens computed (call after the forward pass), and offers the pages they filled to the
    /// prefix cache.
    mutating func commit(_ out: SchedulerOutput) {
        for s in out.scheduled {
            let seq = s.sequence
            seq.numComputedTokens = s.start + s.count
            kv.cacheFullPages(seq.id, computed: seq.numComputedTokens, token: seq.token(at:))
        }
    }

    /// Removes a sequence wherever it is and frees its pages. Returns it if it was known.
    @discardableResult
    mutating func remove(_ id: String) -> SequenceState? {
        kv.free(id)
        if let i = running.firstIndex(where: { $0.id == id }) { return running.remove(at: i) }
        if let i = waiting.firstIndex(where: { $0.id == id }) { return waiting.remove(at: i) }
        return nil
    }
}
