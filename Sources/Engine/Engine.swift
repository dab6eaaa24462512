import Backend
import Foundation
import Models

/// The serving engine: continuous batching over one model on a dedicated thread.
///
/// `submit` queues a request and returns the stream its tokens arrive on; `abort` cancels one (also done
/// automatically when the consumer drops its stream). Each step of the loop is
/// `schedule()` → `runner.execute(output)` → `update(output, result)`: one `ForwardBatch` mixes prompt chunks
/// and decode tokens of every running sequence; the `ModelRunner` owns the KV cache and samples; `update`
/// applies the stop rules and hands tokens out.
public final class Engine: @unchecked Sendable {
    // NOTE: @unchecked: `lock` guards `inbox`, `aborts`, `streams`, `snapshot`, `stopping`, `queued`; everything
    // else is owned by the loop thread.
    public let info: ModelInfo
    public let config: EngineConfig
    private let runner: ModelRunner
    private var scheduler: Scheduler
    /// KV pages in the pool (fixed; read by `submit` without the lock).
    private let numPages: Int
    private let lock = NSCondition()
    private var inbox: [SequenceState] = []
    private var aborts: [String] = []
    private var streams: [String: AsyncStream<EngineOutput>.Continuation] = [:]
    private var snapshot: EngineStats
    private var stopping = false
    private var stopped = false
    private var queued = 0
    private var arrivals = 0
    private var thread: Thread?
    private var generatedTokens = 0
    private var promptTokensComputed = 0
    /// Requests waiting for another one's prompt to be computed (`EngineRequest.prefillAfter`); loop thread only.
    private var held: [SequenceState] = []

    public init(model: LanguageModel, config: EngineConfig) throws {
        var config = config
        config.contextLength = min(config.contextLength, model.info.contextLength)
        try config.validate()
        info = model.info
        self.config = config
        let pages = max(1, config.kvCacheTokens / config.pageSize)
        numPages = pages
        runner = ModelRunner(model: model, config: config, numPages: pages)
        scheduler = Scheduler(maxBatchSize: config.maxBatchSize, chunkSize: config.chunkSize,
                              kv: KVCacheManager(pageSize: config.pageSize, numPages: pages,
                                                 prefixCaching: config.prefixCaching))
        snapshot = EngineStats(running: 0, waiting: 0, kvPagesTotal: pages, kvPagesFree: pages, kvPageSize: config.pageSize,
                               steps: 0, preemptions: 0, generatedTokens: 0, promptTokens: 0)
        let t = Thread { [unowned self] in self.loop() }
        t.name = "ktransformers-engine"
        t.stackSize = 8 << 20
        thread = t
        t.start()
    }

    /// Queues a request. Throws `EngineError` when it cannot be served (overloaded, too long, invalid).
    public func submit(_ request: EngineRequest) throws -> AsyncStream<EngineOutput> {
        let n = request.promptTokens.count
        guard n > 0 else { throw EngineError.invalid("the prompt has no tokens") }
        guard request.maxTokens >= 1 else { throw EngineError.invalid("max_tokens must be at least 1") }
        if let bad = request.promptTokens.first(where: { $0 < 0 || Int($0) >= info.vocabSize }) {
            throw EngineError.invalid("token id \(bad) is outside the vocabulary (0..<\(info.vocabSize))")
        }
        let limit = min(config.contextLength, numPages * config.pageSize)
        guard n + 1 <= limit else { throw EngineError.promptTooLong(tokens: n, limit: limit) }
        let (stream, continuation) = AsyncStream<EngineOutput>.makeStream(bufferingPolicy: .unbounded)
        lock.lock()
        defer { lock.unlock() }
        guard !stopping else { throw EngineError.shuttingDown }
        // Room to run at once, or room in the waiting queue (`--max-queued` counts requests that must wait).
        guard snapshot.running + queued < config.maxBatchSize || queued < config.maxQueued else {
            throw EngineError.overloaded(queued: queued)
        }
        guard streams[request.id] == nil else { throw EngineError.invalid("duplicate request id \(request.id)") }
        arrivals += 1
        inbox.append(SequenceState(request: request, arrival: arrivals))
        queued += 1
        streams[request.id] = continuation
        continuation.onTermination = { [weak self] reason in
            if case .cancelled = reason { self?.abort(id: request.id) }
        }
        lock.signal()
        return stream
    }

    /// Cancels a request wherever it is; its pages are free after the current step and its stream ends with
    /// `.abort`. Unknown or finished ids are ignored.
    public func abort(id: String) {
        lock.lock()
        aborts.append(id)
        lock.signal()
        lock.unlock()
    }

    public func stats() -> EngineStats {
        lock.lock()
        defer { lock.unlock() }
        return snapshot
    }

    /// Stops accepting requests, aborts everything in flight and stops the loop thread. Idempotent.
    public func shutdown() {
        lock.lock()
        stopping = true
        lock.signal()
        while !stopped { lock.wait() }
        lock.unlock()
    }

    // MARK: - loop thread

    private func loop() {
        while true {
            releaseHeld()
            lock.lock()
            while inbox.isEmpty && aborts.isEmpty && !stopping && !scheduler.hasWork && held.isEmpty { lock.wait() }
            let newOnes = inbox
            inbox.removeAll()
            let cancelled = aborts
            aborts.removeAll()
            let stop = stopping
            lock.unlock()

            for s in newOnes {
                if s.request.prefillAfter != nil { held.append(s) } else { scheduler.add(s) }
            }
            for id in cancelled {
                let wasHeld = held.contains { $0.id == id }
                held.removeAll { $0.id == id }
                if scheduler.remove(id) != nil || wasHeld || newOnes.contains(where: { $0.id == id }) {
                    finish(id, token: nil, reason: .abort, promptTokens: 0, completionTokens: 0)
                }
            }
            releaseHeld()
            if stop {
                for s in held { scheduler.add(s) }
                held.removeAll()
                for s in scheduler.running + scheduler.waiting {
                    scheduler.remove(s.id)
                    finish(s.id, token: nil, reason: .abort, promptTokens: s.request.promptTokens.count,
                           completionTokens: s.outputTokens.count)
                }
                lock.lock()
                stopped = true
                lock.broadcast()
                lock.unlock()
                return
            }
            step()
        }
    }

    /// Admits the held requests whose leader has computed its prompt (it has output) or is gone.
    private func releaseHeld() {
        guard !held.isEmpty else { return }
        held.removeAll { s in
            let leaderID = s.request.prefillAfter!
            let leader = scheduler.running.first { $0.id == leaderID } ?? scheduler.waiting.first { $0.id == leaderID }
            guard leader == nil || !leader!.outputTokens.isEmpty else { return false }
            scheduler.add(s)
            return true
        }
    }

    /// Called on the engine thread after every step that ran a batch, with its duration in seconds, the sequences
    /// and the tokens in it (the server's step-time and batch-size metrics). Set it before requests arrive.
    public nonisolated(unsafe) var stepObserver: (@Sendable (_ seconds: Double, _ sequences: Int, _ tokens: Int) -> Void)?

    /// One engine step: schedule, run the batch and sample, then apply the results.
    private func step() {
        let t0 = DispatchTime.now().uptimeNanoseconds
        let out = scheduler.schedule()
        for s in out.evicted {
            finish(s.id, token: nil, reason: .length, promptTokens: s.request.promptTokens.count,
                   completionTokens: s.outputTokens.count)
        }
        guard !out.isEmpty else { publishStats(); return }
        let now = DispatchTime.now().uptimeNanoseconds
        for s in out.scheduled where s.sequence.firstScheduled == nil { s.sequence.firstScheduled = now }
        do {
            let kv = scheduler.kv
            let result = try runner.execute(out) { kv.blockTable($0) }
            update(out, result)
        } catch {
            // A model error fails the sequences of this batch, not the server.
            for s in out.scheduled {
                scheduler.remove(s.sequence.id)
                finish(s.sequence.id, token: nil, reason: .abort, promptTokens: s.sequence.request.promptTokens.count,
                       completionTokens: s.sequence.outputTokens.count)
            }
        }
        publishStats(stepDone: true)
        if let observe = stepObserver {
            let tokens = out.scheduled.reduce(0) { $0 + $1.count }
            observe(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9, out.scheduled.count, tokens)
        }
    }

    /// Commits the step's tokens to the scheduler, appends each sampled token, applies the stop rules (stop
    /// token, `maxTokens`, context length) and hands the tokens out.
    private func update(_ out: SchedulerOutput, _ result: ModelRunnerOutput) {
        scheduler.commit(out)
        for s in out.scheduled where s.start < s.sequence.request.promptTokens.count {
            promptTokensComputed += min(s.count, s.sequence.request.promptTokens.count - s.start)
        }
        var i = 0
        for s in out.scheduled where s.sample {
            let seq = s.sequence, token = result.tokens[i], lp = result.logprobs[i]
            i += 1
            generatedTokens += 1
            seq.outputTokens.append(token)
            seq.generatedCounts[token, default: 0] += 1
            let reason: FinishReason? =
                seq.request.stopTokenIDs.contains(token) || seq.request.constraint?.isComplete == true ? .stop
                : (seq.outputTokens.count >= seq.request.maxTokens || seq.numTokens >= config.contextLength) ? .length
                : nil
            if reason != nil { scheduler.remove(seq.id) }
            emit(seq, token: token, logprob: lp, reason: reason)
        }
    }

    private func emit(_ seq: SequenceState, token: Int32, logprob: TokenLogprob?, reason: FinishReason?) {
        var o = EngineOutput(token: token, logprob: logprob, finishReason: reason,
                             promptTokens: seq.request.promptTokens.count, completionTokens: seq.outputTokens.count,
                             cachedTokens: seq.cachedPromptTokens ?? 0)
        if seq.outputTokens.count == 1, let first = seq.firstScheduled {
            o.queueSeconds = Double(first &- seq.submitted) / 1e9
        }
        // Stats first, so a client that sees its stream end also sees its pages back in /health.
        if reason != nil { publishStats() }
        lock.lock()
        let c = streams[seq.id]
        if reason != nil { streams[seq.id] = nil }
        lock.unlock()
        c?.yield(o)
        if reason != nil { c?.finish() }
    }

    private func finish(_ id: String, token: Int32?, reason: FinishReason, promptTokens: Int, completionTokens: Int) {
        publishStats()
        lock.lock()
        let c = streams.removeValue(forKey: id)
        lock.unlock()
        c?.yield(EngineOutput(token: token, logprob: nil, finishReason: reason, promptTokens: promptTokens,
                              completionTokens: completionTokens))
        c?.finish()
    }

    private func publishStats(stepDone: Bool = false) {
        lock.lock()
        queued = inbox.count + scheduler.waiting.count + held.count
        snapshot.running = scheduler.running.count
        snapshot.waiting = queued
        snapshot.kvPagesFree = scheduler.kv.freePages
        snapshot.kvPagesCached = scheduler.kv.cachedPages
        snapshot.prefixCacheQueryTokens = scheduler.prefixQueryTokens
        snapshot.prefixCacheHitTokens = scheduler.prefixHitTokens
        snapshot.preemptions = scheduler.preemptionCount
        snapshot.generatedTokens = generatedTokens
        snapshot.promptTokens = promptTokensComputed
        if stepDone { snapshot.steps += 1 }
        lock.unlock()
    }
}
