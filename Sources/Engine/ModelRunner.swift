import Backend
import Models

/// What one step produced: for each scheduled sequence that sampled (in `SchedulerOutput.scheduled` order), its
/// token and, when asked, its log-probabilities.
struct ModelRunnerOutput {
    var tokens: [Int32] = []
    var logprobs: [TokenLogprob?] = []
}

/// Runs the model for the engine: owns the KV cache (in the model's backend memory), turns a `SchedulerOutput`
/// into a `ForwardBatch`, runs the forward pass, and samples one token for every sequence that caught up.
/// Stop rules and output live in the engine's `update`; the scheduler's bookkeeping stays integers only.
final class ModelRunner {
    let model: LanguageModel
    let cache: KVCache
    private var batch: ForwardBatch
    private let rawRow: UnsafeMutablePointer<Float>      // [vocab]
    /// The greedy choices of a step's rows (i32, `maxBatchSize`), from the backend's argmaxRows.
    private let chosen: Tensor

    /// Sizes the model for the engine's largest step (`chunkSize` tokens, `maxBatchSize` sequences) and
    /// allocates `numPages` pages of KV cache.
    init(model: LanguageModel, config: EngineConfig, numPages: Int) {
        self.model = model
        model.reserve(RunLimits(maxTokens: config.chunkSize, maxSequences: config.maxBatchSize,
                                maxLogitsRows: config.maxBatchSize, contextLength: config.contextLength))
        cache = model.makeKVCache(pageSize: config.pageSize, numPages: numPages)
        batch = ForwardBatch(pageSize: config.pageSize)
        rawRow = .allocate(capacity: model.info.vocabSize)
        chosen = model.backend.allocate(max(1, config.maxBatchSize))
    }

    deinit {
        rawRow.deallocate()
        model.backend.release(chosen)
    }

    /// Whether a sequence's token is the row's argmax and nothing else reads its logits (greedy, no penalties, no
    /// log-probabilities, no constraint).
    private static func plainGreedy(_ seq: SequenceState) -> Bool {
        let p = seq.sampler.params
        return p.isGreedy && !p.hasPenalties && seq.request.logprobs == nil && seq.request.constraint == nil
    }

    /// One forward pass over the scheduled tokens, then sampling. `blockTable(id)` is each sequence's page list.
    func execute(_ out: SchedulerOutput, blockTable: (String) -> [Int32]) throws -> ModelRunnerOutput {
        batch.removeAll()
        for s in out.scheduled {
            let seq = s.sequence
            batch.addSequence(tokens: (s.start..<s.start + s.count).lazy.map { seq.token(at: $0) }, startPosition: s.start,
                              blockTable: blockTable(seq.id), logits: s.sample ? .last : .none)
        }
        let result = try model.forward(batch, cache: cache)
        let vocab = model.info.vocabSize
        let rows = batch.logitsIndices.count
        // Plain greedy rows take the backend's argmax (the host scan's index): one int a row read back instead of
        // the logits (a device's 32 rows of a 128K vocabulary are 16 MB a step, then a scan each). The other rows
        // read their logits: all at once when none is plain greedy, else each alone.
        let plain = out.scheduled.filter(\.sample).map { Self.plainGreedy($0.sequence) }
        var greedy: [Int32] = []
        if plain.contains(true) {
            model.backend.argmaxRows(result, rows: rows, cols: vocab, out: chosen)
            let ids = UnsafeRawPointer(model.backend.read(chosen, count: rows))
            greedy = (0..<rows).map { ids.load(fromByteOffset: 4 * $0, as: Int32.self) }
        }
        let all = plain.contains(false) && greedy.isEmpty ? model.backend.read(result, count: rows * vocab) : nil
        var o = ModelRunnerOutput()
        o.tokens.reserveCapacity(rows)
        o.logprobs.reserveCapacity(rows)
        var row = 0
        for s in out.scheduled where s.sample {
            let seq = s.sequence
            defer { row += 1 }
            if plain[row] {
                o.tokens.append(greedy[row])
                o.logprobs.append(nil)
                continue
            }
            let l = all.map { $0 + row * vocab } ?? model.backend.read(result.offset(row * vocab), count: vocab)
            let k = seq.request.logprobs
            let penalized = seq.sampler.params.hasPenalties
            if k != nil && penalized {
                // Log-probabilities describe the model's own distribution, before penalties change the row.
                rawRow.update(from: l, count: vocab)
            }
            seq.sampler.applyPenalties(l, count: vocab, prompt: seq.request.promptTokens, generated: seq.generatedCounts)
            var token: Int32
            if let c = seq.request.constraint {
                if k != nil && !penalized { rawRow.update(from: l, count: vocab) }
                // A constraint with no allowed token left (cannot happen with a grammar that always ends in an
                // end-of-generation token) ends the sequence with its first stop token.
                token = seq.sampler.sample(l, count: vocab, constraint: c) ?? seq.request.stopTokenIDs.min() ?? 0
                c.accept(token)
            } else {
                token = seq.sampler.sample(l, count: vocab)
            }
            o.tokens.append(token)
            let raw = penalized || seq.request.constraint != nil
            o.logprobs.append(k.map { Sampler.logprobs(raw ? UnsafePointer(rawRow) : UnsafePointer(l), count: vocab,
                                                       chosen: token, top: $0) })
        }
        return o
    }
}
