import Engine
import Foundation

/// HTTP server settings; every field is a `serve` flag (docs/server.md).
public struct ServerConfig: Sendable {
    /// Address to bind (`--host`). Loopback by default: exposing the server is an explicit choice.
    public var host = "127.0.0.1"
    /// TCP port (`--port`).
    public var port = 10002
    /// When set, every route but `/health` needs `Authorization: Bearer <key>` (`--api-key`).
    public var apiKey: String?
    /// Origins whose browser requests are allowed (`--cors-origins`, comma-separated; `*` for any; empty: no CORS
    /// headers, browsers then refuse cross-origin calls).
    public var corsOrigins: [String] = []
    /// The model id `/v1/models` reports and requests must name (`--served-model-name`; default: the file name).
    public var modelID = "model"
    /// Other names accepted in a request's `model` (the file name without `.gguf`, by default).
    public var modelAliases: [String] = []
    /// Request bodies larger than this are answered 413 (`--max-body-bytes`).
    public var maxBodyBytes = 4 * 1024 * 1024
    /// Seconds a connection may take to deliver one complete request (head and body) before it is closed
    /// (`--request-timeout`). Protects against slow clients.
    public var requestTimeout: Double = 30
    /// Seconds a connection may stay open without a request (fresh, or between requests) before it is closed
    /// (`--idle-timeout`).
    public var idleTimeout: Double = 15
    /// Open connections at most (`--max-connections`); a new one beyond closes the longest idle connection, or is
    /// answered 503 when all are busy.
    public var maxConnections = 256
    /// Tokens generated when a chat request gives no `max_tokens` (`--max-new-tokens`); completions default
    /// to 16 as OpenAI's do. Always capped by the context left after the prompt.
    public var maxNewTokens = 1024
    /// Seconds in-flight requests get to finish after SIGINT/SIGTERM (`--drain-timeout`); then every stream still
    /// running ends with a final chunk (`finish_reason: "abort"`), an error event and `[DONE]`, and every other
    /// request is answered 503.
    public var drainTimeout: Double = 30
    /// How tool calls are read from the output (`--tool-parser`: hermes, llama3_json, mistral, deepseek_v3,
    /// deepseek_v31); nil (`auto`): from the chat template, Hermes when the template has no tool support.
    public var toolParser: String?
    /// How reasoning is split from the answer (`--reasoning-parser`: auto, deepseek_r1, qwen3, none).
    public var reasoningParser = "auto"
    /// Start every chat answer inside the reasoning (`--force-think`; KTransformers' `--force_think`): the
    /// prompt gets `<think>\n` when the template did not already end with it.
    public var forceThink = false

    public init() {}

    public func validate() throws {
        func check(_ ok: Bool, _ m: String) throws { if !ok { throw EngineError.invalid(m) } }
        try check((1...65535).contains(port) || port == 0, "--port must be between 0 and 65535")
        try check(maxBodyBytes >= 1024, "--max-body-bytes must be at least 1024")
        try check(requestTimeout > 0 && requestTimeout <= 86400, "--request-timeout must be between 0 and 86400 seconds")
        try check(maxConnections >= 1, "--max-connections must be at least 1")
        try check(maxNewTokens >= 1, "--max-new-tokens must be at least 1")
        try check(idleTimeout > 0 && idleTimeout <= 86400, "--idle-timeout must be between 0 and 86400 seconds")
        try check(drainTimeout >= 0 && drainTimeout <= 86400, "--drain-timeout must be between 0 and 86400 seconds")
        try check(!modelID.isEmpty, "--served-model-name must not be empty")
        if let k = apiKey { try check(!k.isEmpty, "--api-key must not be empty") }
        if let t = toolParser {
            try check(ToolCallFormat(rawValue: t) != nil,
                      "--tool-parser must be auto, " + ToolCallFormat.allCases.map(\.rawValue).joined(separator: ", "))
        }
        try check(reasoningParser == "auto" || reasoningParser == "none" || ReasoningFormat(rawValue: reasoningParser) != nil,
                  "--reasoning-parser must be auto, none, " + ReasoningFormat.allCases.map(\.rawValue).joined(separator: ", "))
    }
}
