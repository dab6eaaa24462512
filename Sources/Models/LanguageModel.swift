import Backend

/// What the engine needs to know about a loaded model.
public struct ModelInfo: Sendable {
    public var architecture: String
    public var name: String
    public var vocabSize: Int
    public var contextLength: Int
    public var layerCount: Int
    /// Per-layer widths of what one token stores in the KV cache.
    public var kvKeyDims: [Int]
    public var kvValueDims: [Int]
}

/// The largest forward pass a loaded model is ready for: its activation arena, RoPE tables and the backend's
/// scratch are sized for these once, at load (`LanguageModel.reserve`); a forward pass within them allocates
/// nothing, and one beyond them is refused with an error.
public struct RunLimits: Sendable, Equatable {
    /// Tokens in one forward pass (the engine's chunk size: prompt chunks and decode tokens together).
    public var maxTokens: Int
    /// Sequences in one forward pass (the engine's batch size).
    public var maxSequences: Int
    /// Rows of logits one forward pass returns.
    public var maxLogitsRows: Int
    /// Positions a token may have (RoPE tables and attention scratch cover them).
    public var contextLength: Int

    public init(maxTokens: Int, maxSequences: Int, maxLogitsRows: Int, contextLength: Int) {
        self.maxTokens = maxTokens
        self.maxSequences = maxSequences
        self.maxLogitsRows = maxLogitsRows
        self.contextLength = contextLength
    }

    /// What a model is sized for at load unless told otherwise: 512-token steps of up to 8 sequences, and the
    /// model's context up to 4096 positions.
    public static func defaults(contextLength: Int) -> RunLimits {
        RunLimits(maxTokens: 512, maxSequences: 8, maxLogitsRows: 8, contextLength: min(contextLength, 4096))
    }

    /// Each field the larger of the two.
    public func union(_ o: RunLimits) -> RunLimits {
        RunLimits(maxTokens: max(maxTokens, o.maxTokens), maxSequences: max(maxSequences, o.maxSequences),
                  maxLogitsRows: max(maxLogitsRows, o.maxLogitsRows), contextLength: max(contextLength, o.contextLength))
    }
}

/// A causal language model on a compute backend: runs a `ForwardBatch` against a KV cache in that backend's
/// memory and returns the logits of `batch.logitsIndices` as a tensor `// [logitsIndices.count, vocabSize]` in
/// the backend's memory, valid until the next forward pass (`backend.read` gives them to the host).
///
/// `forward` is called from one thread at a time (the engine's step loop). `reserve` is called at load, before
/// any forward pass that needs it.
public protocol LanguageModel: AnyObject, Sendable {
    var info: ModelInfo { get }
    /// The backend that runs the model (its activations, KV cache and ops).
    var backend: any ComputeBackend { get }
    /// What the model is sized for now.
    var limits: RunLimits { get }
    /// Grows the run state to cover `limits` (never shrinks).
    func reserve(_ limits: RunLimits)
    func forward(_ batch: ForwardBatch, cache: KVCache) throws -> Tensor
    /// The records of which routed experts were chosen (`ExpertUsage`), one per expert executor that keeps one;
    /// empty for dense models and for experts routed on the GPU.
    var expertUsage: [ExpertUsage] { get }
    /// A paged KV pool for this model in its backend's memory (a tensor-parallel model: one per shard): pages
    /// `0..<numPages` for the caller's sequences, plus one more, the last, that the model keeps for itself (the
    /// padding rows of a step replayed as a graph write their K/V there).
    func makeKVCache(pageSize: Int, numPages: Int) -> KVCache
}

extension LanguageModel {
    public var expertUsage: [ExpertUsage] { [] }

    public func makeKVCache(pageSize: Int, numPages: Int) -> KVCache {
        backend.makeKVCache(pageSize: pageSize, numPages: numPages + 1, kDims: info.kvKeyDims, vDims: info.kvValueDims)
    }

    /// `forward`, with the logits copied to `logits` (`// [logitsIndices.count, vocabSize]` host floats).
    public func forward(_ batch: ForwardBatch, cache: KVCache, logits: UnsafeMutablePointer<Float>) throws {
        let t = try forward(batch, cache: cache)
        let count = batch.logitsIndices.count * info.vocabSize
        if count > 0 { logits.update(from: backend.read(t, count: count), count: count) }
    }
}
