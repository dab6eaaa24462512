import Engine

/// What the server needs from an engine; `Engine` conforms (a test double can too: the server sees only this).
public protocol InferenceEngine: Sendable {
    /// Tokens per sequence, prompt and generated together.
    var contextLength: Int { get }
    var vocabSize: Int { get }
    func submit(_ request: EngineRequest) throws -> AsyncStream<EngineOutput>
    func abort(id: String)
    func stats() -> EngineStats
}

extension Engine: InferenceEngine {
    public var contextLength: Int { min(config.contextLength, info.contextLength) }
    public var vocabSize: Int { info.vocabSize }
}
