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

/// A causal language model: runs a `ForwardBatch` against a KV cache and writes the logits of
/// `batch.logitsIndices` into `logits` (`// [logitsIndices.count, vocabSize]`).
///
/// `forward` is called from one thread at a time (the engine's step loop); it parallelises internally on the
/// pool it was given at load.
public protocol LanguageModel: AnyObject, Sendable {
    var info: ModelInfo { get }
    func forward(_ batch: ForwardBatch, cache: KVCache, logits: UnsafeMutablePointer<Float>) throws
}
