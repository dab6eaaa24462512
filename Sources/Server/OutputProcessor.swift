import Engine
import Tokenizer

/// The per-request output path: engine outputs → incremental detokenizer → stop strings → text deltas and the
/// log-probabilities of the tokens whose text has been released.
///
/// End-of-generation tokens (the request's `stopTokenIDs`) end the text and count in `completion_tokens` but
/// add no text and no logprobs entry. Special (control) tokens are never rendered as text.
public struct OutputProcessor: Sendable {
    public struct LogprobItem: Sendable, Equatable {
        public var logprob: TokenLogprob
        /// Offset of the token's text in the completion text, in Unicode code points (Python string indices).
        public var textOffset: Int
    }

    public struct Delta: Sendable {
        public var text = ""
        public var logprobs: [LogprobItem] = []
        /// "stop" (stop token or stop string), "length", or "abort"; nil while generating.
        public var finishReason: String?
        /// Set when a stop string matched: the caller must abort the engine request.
        public var stopStringMatched = false
        public var promptTokens = 0
        public var completionTokens = 0
        public var cachedTokens = 0
    }

    private let tokenizer: Tokenizer
    private let stopTokenIDs: Set<Int32>
    private var detok: IncrementalDetokenizer
    private var matcher: StopStringMatcher
    /// Bytes of text pushed into the matcher so far.
    private var producedBytes = 0
    private var producedScalars = 0
    private var pending: [(item: LogprobItem, start: Int, end: Int)] = []
    public private(set) var finished = false

    /// `keepSpecial`: control tokens whose text is output all the same (tool-call markers the parser reads).
    public init(tokenizer: Tokenizer, stopTokenIDs: Set<Int32>, stopStrings: [String], keepSpecial: Set<Int32> = []) {
        self.tokenizer = tokenizer
        self.stopTokenIDs = stopTokenIDs
        detok = IncrementalDetokenizer(tokenizer: tokenizer, skipSpecial: true, keepSpecial: keepSpecial)
        matcher = StopStringMatcher(stopStrings)
    }

    public mutating func process(_ o: EngineOutput) -> Delta {
        var d = Delta()
        d.promptTokens = o.promptTokens
        d.completionTokens = o.completionTokens
        d.cachedTokens = o.cachedTokens
        guard !finished else { return d }
        var text = ""
        if let t = o.token, !(o.finishReason == .stop && stopTokenIDs.contains(t)) {
            let start = producedBytes, startScalar = producedScalars
            text = detok.append(t)
            producedBytes += text.utf8.count
            producedScalars += text.unicodeScalars.count
            if let lp = o.logprob {
                pending.append((LogprobItem(logprob: lp, textOffset: startScalar), start, producedBytes))
            }
        }
        if o.finishReason != nil {
            let rest = detok.flush()
            text += rest
            producedBytes += rest.utf8.count
            producedScalars += rest.unicodeScalars.count
            if let last = pending.indices.last { pending[last].end = producedBytes }
        }
        d.text = matcher.push(text)
        if matcher.matched != nil {
            finished = true
            d.finishReason = "stop"
            d.stopStringMatched = true
            let cut = matcher.releasedBytes
            d.logprobs = pending.filter { $0.start < cut || $0.end <= cut }.map(\.item)
            pending.removeAll()
            return d
        }
        if let f = o.finishReason {
            d.text += matcher.finish()
            finished = true
            d.finishReason = f.rawValue
            d.logprobs = pending.map(\.item)
            pending.removeAll()
            return d
        }
        let released = matcher.releasedBytes
        var n = 0
        while n < pending.count && pending[n].end <= released { n += 1 }
        if n > 0 {
            d.logprobs = pending[..<n].map(\.item)
            pending.removeFirst(n)
        }
        return d
    }

    // MARK: - Logprob formats

    public func tokenText(_ id: Int32) -> (String, [UInt8]) {
        let b = tokenizer.tokenBytes(id)
        return (String(decoding: b, as: UTF8.self), b)
    }

    public func chatEntries(_ items: [LogprobItem]) -> [ChatLogprobEntry] {
        items.map { it in
            let (s, b) = tokenText(it.logprob.id)
            return ChatLogprobEntry(token: s, logprob: Self.clean(it.logprob.logprob), bytes: b, topLogprobs: it.logprob.top.map {
                let (ts, tb) = tokenText($0.id)
                return .init(token: ts, logprob: Self.clean($0.logprob), bytes: tb)
            })
        }
    }

    public func appendCompletion(_ items: [LogprobItem], to lp: inout CompletionLogprobs, baseOffset: Int = 0) {
        for it in items {
            lp.tokens.append(tokenText(it.logprob.id).0)
            lp.tokenLogprobs.append(Self.clean(it.logprob.logprob))
            var top: [String: Float] = [:]
            for t in it.logprob.top {
                let s = tokenText(t.id).0
                if top[s] == nil { top[s] = Self.clean(t.logprob) }
            }
            lp.topLogprobs.append(top)
            lp.textOffset.append(baseOffset + it.textOffset)
        }
    }

    /// JSON has no -inf: a probability that underflowed is written as -9999 (as OpenAI does).
    static func clean(_ v: Float) -> Float { v.isFinite ? v : -9999 }
}
