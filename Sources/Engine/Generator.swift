import Backend
import Foundation
import Models

/// Runs one sequence through a model: teacher-forced logits, and prompt + sampled continuation.
/// (The serving engine batches many sequences; this is the single-stream path the CLI uses.)
public final class Generator {
    public let model: LanguageModel
    public let cache: KVCache
    public let contextLength: Int
    /// Tokens per forward pass while reading a prompt.
    public let chunkSize: Int
    private let blockTable: [Int32]
    private var logitsBuffer: UnsafeMutablePointer<Float>
    private var logitsCapacity: Int

    public init(model: LanguageModel, contextLength: Int? = nil, chunkSize: Int = 512, pageSize: Int = 256) throws {
        self.model = model
        let ctx = min(contextLength ?? model.info.contextLength, model.info.contextLength)
        guard ctx > 0 else { throw ModelError("context length must be positive") }
        self.contextLength = ctx
        self.chunkSize = max(1, chunkSize)
        let pages = (ctx + pageSize - 1) / pageSize
        model.reserve(RunLimits(maxTokens: self.chunkSize, maxSequences: 1, maxLogitsRows: 1, contextLength: ctx))
        cache = model.makeKVCache(pageSize: pageSize, numPages: pages)
        blockTable = (0..<pages).map(Int32.init)
        logitsCapacity = model.info.vocabSize
        logitsBuffer = .allocate(capacity: logitsCapacity)
    }

    deinit { logitsBuffer.deallocate() }

    private func reserveLogits(rows: Int) {
        let need = rows * model.info.vocabSize
        guard need > logitsCapacity else { return }
        logitsBuffer.deallocate()
        logitsCapacity = need
        logitsBuffer = .allocate(capacity: need)
    }

    private func check(_ tokens: [Int32], start: Int) throws {
        guard start + tokens.count <= contextLength else {
            throw ModelError("\(start + tokens.count) tokens exceed the context length \(contextLength)")
        }
    }

    /// Feeds `tokens` at positions `start...` and returns the logits of the selected positions,
    /// `// [rows, vocab]` in a buffer valid until the next call.
    public func forward(_ tokens: [Int32], start: Int, logits: ForwardBatch.LogitsSelection)
        throws -> (UnsafeMutablePointer<Float>, rows: Int) {
        try check(tokens, start: start)
        let vocab = model.info.vocabSize
        let rowsWanted = logits == .all ? tokens.count : (logits == .last ? 1 : 0)
        reserveLogits(rows: max(rowsWanted, 1))
        if logits == .all {
            // Every row of a chunk comes back: size the model's logits for a whole chunk (once, before the pass).
            model.reserve(RunLimits(maxTokens: chunkSize, maxSequences: 1, maxLogitsRows: min(chunkSize, tokens.count),
                                    contextLength: contextLength))
        }
        var done = 0
        var rows = 0
        while done < tokens.count {
            let n = min(chunkSize, tokens.count - done)
            let isLastChunk = done + n == tokens.count
            var batch = ForwardBatch(pageSize: cache.pageSize)
            let sel: ForwardBatch.LogitsSelection = logits == .all ? .all : (logits == .last && isLastChunk ? .last : .none)
            batch.addSequence(tokens: Array(tokens[done..<done + n]), startPosition: start + done, blockTable: blockTable,
                              logits: sel)
            let result = try model.forward(batch, cache: cache)
            let m = batch.logitsIndices.count
            // NOTE: copied out, not handed out in place: the model's logits are overwritten by the next forward pass
            // of any user of the model (another Generator, an Engine), and moved by a `reserve`.
            if m > 0 { (logitsBuffer + rows * vocab).update(from: model.backend.read(result, count: m * vocab), count: m * vocab) }
            rows += m
            done += n
        }
        return (logitsBuffer, rows)
    }

    public struct Stats: Sendable {
        public var promptTokens = 0
        public var generatedTokens = 0
        public var promptSeconds = 0.0
        public var generateSeconds = 0.0
        public var promptTokensPerSecond: Double { promptSeconds > 0 ? Double(promptTokens) / promptSeconds : 0 }
        public var generateTokensPerSecond: Double {
            generateSeconds > 0 && generatedTokens > 1 ? Double(generatedTokens - 1) / generateSeconds : 0
        }
    }

    /// Reads `prompt`, then samples up to `maxTokens` tokens, calling `onToken` for each (return false to stop).
    /// Stops at the context length. The token sampled from the prompt's logits counts as the first generated one;
    /// generation speed is measured over the tokens after it.
    @discardableResult
    public func generate(prompt: [Int32], maxTokens: Int, sampler: inout Sampler, onToken: (Int32) -> Bool) throws -> Stats {
        guard !prompt.isEmpty else { throw ModelError("the prompt has no tokens") }
        var stats = Stats()
        stats.promptTokens = prompt.count
        let vocab = model.info.vocabSize
        let t0 = Date()
        var (logits, _) = try forward(prompt, start: 0, logits: .last)
        stats.promptSeconds = Date().timeIntervalSince(t0)
        var pos = prompt.count
        let t1 = Date()
        while stats.generatedTokens < maxTokens {
            let next = sampler.sample(logits, count: vocab)
            stats.generatedTokens += 1
            if !onToken(next) || stats.generatedTokens >= maxTokens || pos >= contextLength { break }
            (logits, _) = try forward([next], start: pos, logits: .last)
            pos += 1
        }
        stats.generateSeconds = Date().timeIntervalSince(t1)
        return stats
    }
}
