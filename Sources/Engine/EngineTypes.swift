import Foundation

// Messages that cross the boundary between the server and the engine. The engine never sees HTTP or text;
// the server never sees tensors.

/// One generation request, already tokenized.
public struct EngineRequest: Sendable {
    public var id: String
    public var promptTokens: [Int32]
    public var sampling: SamplingParams
    /// Tokens to generate at most (the engine also stops at the context length).
    public var maxTokens: Int
    /// Generation ends (finish reason `.stop`) when one of these is sampled; it is reported but not counted
    /// as text by the server. Usually the tokenizer's end-of-generation ids (empty with `ignore_eos`).
    public var stopTokenIDs: Set<Int32>
    /// nil: no log-probabilities. 0: the sampled token's. K > 0: also the K most likely alternatives.
    public var logprobs: Int?
    /// Restricts which tokens may be sampled (structured output, forced tool calls); nil: any.
    public var constraint: (any SamplingConstraint)?
    /// Another request with the same prompt (`n` > 1): this one waits until that one's prompt is computed, then
    /// starts from its K/V through the prefix cache, so the prompt is computed once.
    public var prefillAfter: String?

    public init(id: String, promptTokens: [Int32], sampling: SamplingParams = .greedy, maxTokens: Int,
                stopTokenIDs: Set<Int32> = [], logprobs: Int? = nil, constraint: (any SamplingConstraint)? = nil) {
        self.id = id
        self.promptTokens = promptTokens
        self.sampling = sampling
        self.maxTokens = maxTokens
        self.stopTokenIDs = stopTokenIDs
        self.logprobs = logprobs
        self.constraint = constraint
    }
}

/// Which tokens may come next, for one sequence (a grammar over the output, say). The engine samples from the
/// model's distribution restricted to the allowed tokens: exactly, as if every other logit were -inf.
///
/// Used only on the engine thread, one instance per request (hence a class; `Sendable` because the request
/// crosses into the engine once, before its first use).
public protocol SamplingConstraint: AnyObject, Sendable {
    /// Whether `token` may come next.
    func allows(_ token: Int32) -> Bool
    /// Sets the logit of every token that may not come next to -inf.
    func mask(_ logits: UnsafeMutablePointer<Float>, count: Int)
    /// Advances past the sampled token.
    func accept(_ token: Int32)
    /// Nothing more may follow: the engine ends the request (finish reason `stop`).
    var isComplete: Bool { get }
}

public enum FinishReason: String, Sendable, Codable {
    /// A stop token was sampled (or, set by the server, a stop string matched).
    case stop
    /// `maxTokens` or the context length was reached.
    case length
    /// Cancelled by `Engine.abort` (client gone) or engine shutdown.
    case abort
}

/// The log-probability of one sampled token and, if asked, its most likely alternatives.
public struct TokenLogprob: Sendable, Equatable {
    public var id: Int32
    public var logprob: Float
    public var top: [TopLogprob]

    public struct TopLogprob: Sendable, Equatable {
        public var id: Int32
        public var logprob: Float
        public init(id: Int32, logprob: Float) { self.id = id; self.logprob = logprob }
    }

    public init(id: Int32, logprob: Float, top: [TopLogprob]) {
        self.id = id
        self.logprob = logprob
        self.top = top
    }
}

/// What a request's stream yields: each generated token as it is sampled; the last element has
/// `finishReason` set (and may carry no token, e.g. after an abort).
public struct EngineOutput: Sendable {
    public var token: Int32?
    public var logprob: TokenLogprob?
    public var finishReason: FinishReason?
    public var promptTokens: Int
    /// Tokens generated so far, this one included.
    public var completionTokens: Int
    /// Prompt tokens whose K/V came from the prefix cache instead of being computed.
    public var cachedTokens: Int
    /// On a request's first token: seconds from its arrival in the engine to its first step (queue time).
    public var queueSeconds: Double? = nil

    public init(token: Int32?, logprob: TokenLogprob?, finishReason: FinishReason?, promptTokens: Int, completionTokens: Int,
                cachedTokens: Int = 0) {
        self.token = token
        self.logprob = logprob
        self.finishReason = finishReason
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.cachedTokens = cachedTokens
    }
}

/// Why the engine refused a request (the server maps these to HTTP statuses).
public enum EngineError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The waiting queue is full (HTTP 503).
    case overloaded(queued: Int)
    /// Prompt plus at least one generated token does not fit the context (HTTP 400).
    case promptTooLong(tokens: Int, limit: Int)
    /// Invalid request fields (HTTP 400).
    case invalid(String)
    /// The engine is shutting down (HTTP 503).
    case shuttingDown

    public var description: String {
        switch self {
        case .overloaded(let q): "the server is overloaded: \(q) requests are already waiting; retry later"
        case .promptTooLong(let t, let l): "the prompt has \(t) tokens; with at least one generated token it exceeds the context length of \(l) tokens"
        case .invalid(let m): m
        case .shuttingDown: "the server is shutting down"
        }
    }
}

/// A snapshot of the engine's load, for /health and metrics.
public struct EngineStats: Sendable, Codable, Equatable {
    public var running: Int
    public var waiting: Int
    public var kvPagesTotal: Int
    public var kvPagesFree: Int
    public var kvPageSize: Int
    public var steps: Int
    public var preemptions: Int
    public var generatedTokens: Int
    public var promptTokens: Int
    /// Unreferenced pages holding cached prefixes (counted in `kvPagesFree` too: they are reclaimed on demand).
    public var kvPagesCached: Int = 0
    /// Prefix cache: tokens looked up when sequences were admitted, and of those, tokens found in the cache.
    public var prefixCacheQueryTokens: Int = 0
    public var prefixCacheHitTokens: Int = 0
}

/// Engine settings; every field is a `serve` flag (docs/server.md).
public struct EngineConfig: Sendable {
    /// Running sequences at most (`--max-batch-size`).
    public var maxBatchSize = 8
    /// Tokens per step at most, prompt chunks and decode tokens together (`--chunk-size`).
    public var chunkSize = 512
    /// Tokens per KV page (`--page-size`).
    public var pageSize = 16
    /// KV cache capacity in tokens, over all sequences (`--kv-cache-tokens`).
    public var kvCacheTokens = 16384
    /// Requests waiting for a batch slot at most (beyond those that can start at once); beyond,
    /// `EngineError.overloaded` (`--max-queued`).
    public var maxQueued = 64
    /// Context length per sequence (`--ctx-size`); capped by the model's.
    public var contextLength = 4096
    /// Reuse the K/V of full pages whose token prefix an earlier request computed (`--no-prefix-cache` turns it off).
    public var prefixCaching = true

    public init() {}

    public func validate() throws {
        func check(_ ok: Bool, _ m: String) throws { if !ok { throw EngineError.invalid(m) } }
        try check(maxBatchSize >= 1 && maxBatchSize <= 1024, "max batch size must be between 1 and 1024")
        try check(chunkSize >= 1, "chunk size must be at least 1")
        try check(pageSize >= 1 && pageSize <= 4096, "page size must be between 1 and 4096")
        try check(kvCacheTokens >= pageSize, "the KV cache must hold at least one page")
        try check(maxQueued >= 0, "max queued must be >= 0")
        try check(contextLength >= 2, "context length must be at least 2")
    }
}
