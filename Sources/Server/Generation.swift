import Engine
import Foundation
import Hummingbird
import NIOConcurrencyHelpers
import NIOCore

/// One request in flight: consumes the engine's stream through an `OutputProcessor` and writes the OpenAI
/// response, whole or as server-sent events.
///
/// The engine request is aborted (its KV pages freed within a step) whenever the answer can no longer be
/// delivered or is complete early: the client disconnects (connection input closed or reset), a write fails,
/// the handler task is cancelled (server shutdown past its grace period), or a stop string matched.
final class Generation: Sendable {
    let server: OpenAIServer
    let id: String
    let request: EngineRequest
    let params: GenerationParameters
    let stream: AsyncStream<EngineOutput>
    let connection: ConnectionState?
    let created = Int(Date().timeIntervalSince1970)
    /// When the request arrived (its latency metrics count from here).
    let arrival = DispatchTime.now().uptimeNanoseconds

    init(server: OpenAIServer, id: String, request: EngineRequest, params: GenerationParameters,
         stream: AsyncStream<EngineOutput>, connection: ConnectionState?) {
        self.server = server
        self.id = id
        self.request = request
        self.params = params
        self.stream = stream
        self.connection = connection
    }

    private func makeProcessor() -> OutputProcessor {
        OutputProcessor(tokenizer: server.tokenizer, stopTokenIDs: request.stopTokenIDs, stopStrings: params.stop)
    }

    /// Whether the request ended because the shutdown drain expired (set by `run`).
    private let endedByShutdown = NIOLockedValueBox(false)

    /// Feeds every delta to `body` until the request finishes. Returns the final usage.
    private func run(_ body: (OutputProcessor.Delta, OutputProcessor) async throws -> Void) async throws -> Usage {
        let engine = server.engine
        let id = id
        let token = connection?.onClose { engine.abort(id: id) }
        server.track(id)
        defer {
            connection?.cancel(token)
            server.untrack(id)
        }
        var proc = makeProcessor()
        var usage = Usage(promptTokens: request.promptTokens.count, completionTokens: 0)
        var finished = false
        var lastToken: UInt64? = nil
        var finishReason = FinishReason.abort.rawValue
        let metrics = server.metrics
        defer {
            let now = DispatchTime.now().uptimeNanoseconds
            metrics.observeFinished(after: Double(now - arrival) / 1e9, promptTokens: usage.promptTokens,
                                    generatedTokens: usage.completionTokens, reason: finishReason)
        }
        do {
            try await withTaskCancellationHandler {
                for await o in stream {
                    if o.token != nil {
                        let now = DispatchTime.now().uptimeNanoseconds
                        if let last = lastToken { metrics.observeInterToken(Double(now - last) / 1e9) } else {
                            metrics.observeFirstToken(after: Double(now - arrival) / 1e9)
                        }
                        lastToken = now
                    }
                    if let q = o.queueSeconds { metrics.observeQueue(q) }
                    if let f = o.finishReason { finishReason = f.rawValue }
                    let d = proc.process(o)
                    if d.stopStringMatched { engine.abort(id: id) }
                    // An abort's last element carries no cache figure: keep the one reported before it.
                    usage = Usage(promptTokens: d.promptTokens, completionTokens: d.completionTokens,
                                  cachedTokens: max(usage.cachedTokens, d.cachedTokens))
                    if d.finishReason == FinishReason.abort.rawValue && server.drainExpired {
                        endedByShutdown.withLockedValue { $0 = true }
                    }
                    try await body(d, proc)
                    if d.finishReason != nil { finished = true; break }
                }
            } onCancel: {
                engine.abort(id: id)
            }
        } catch {
            engine.abort(id: id)
            throw error
        }
        if !finished {
            // The stream ended without a last element (cannot happen with a well-behaved engine): report an abort.
            var d = OutputProcessor.Delta()
            d.finishReason = FinishReason.abort.rawValue
            d.promptTokens = usage.promptTokens
            d.completionTokens = usage.completionTokens
            try await body(d, proc)
        }
        return usage
    }

    private var wantLogprobs: Bool { params.logprobs != nil }

    // MARK: Chat

    func collectChat(model: String) async throws -> ChatCompletionResponse {
        var text = ""
        var entries: [ChatLogprobEntry] = []
        var finish = "stop"
        let usage = try await run { d, proc in
            text += d.text
            if self.wantLogprobs { entries += proc.chatEntries(d.logprobs) }
            if let f = d.finishReason { finish = f }
        }
        if endedByShutdown.withLockedValue({ $0 }) { throw APIError.shuttingDown }
        let choice = ChatChoice(index: 0, message: ResponseMessage(role: "assistant", content: text),
                                logprobs: wantLogprobs ? ChatLogprobs(content: entries) : nil, finishReason: finish)
        return ChatCompletionResponse(id: id, created: created, model: model, choices: [choice], usage: usage)
    }

    /// One streamed event: a chunk with `choices` (and `usage` when the client asked for it).
    private func event<C: ResponseChoice>(_ choices: [C], model: String, usage: Usage? = nil,
                                          encoder: JSONEncoder) throws -> ByteBuffer {
        let c = CompletionEnvelope(id: id, created: created, model: model, choices: choices, usage: usage,
                                   includeUsageKey: params.includeUsage)
        return ByteBuffer(string: SSE.event(try encoder.encode(c)))
    }

    func streamChat(model: String, writer: inout any ResponseBodyWriter) async throws {
        let enc = OpenAIServer.encoder()
        let includeUsage = params.includeUsage
        func chunk(_ choices: [ChatChunkChoice], usage: Usage? = nil) throws -> ByteBuffer {
            try event(choices, model: model, usage: usage, encoder: enc)
        }
        try await writer.write(chunk([ChatChunkChoice(index: 0, delta: ChunkDelta(role: "assistant", content: ""),
                                                      logprobs: nil, finishReason: nil)]))
        let usage = try await run { d, proc in
            if !d.text.isEmpty || !d.logprobs.isEmpty {
                let lp = self.wantLogprobs ? ChatLogprobs(content: proc.chatEntries(d.logprobs)) : nil
                try await writer.write(chunk([ChatChunkChoice(index: 0, delta: ChunkDelta(content: d.text), logprobs: lp,
                                                              finishReason: nil)]))
            }
            if let f = d.finishReason {
                try await writer.write(chunk([ChatChunkChoice(index: 0, delta: ChunkDelta(), logprobs: nil, finishReason: f)]))
            }
        }
        if includeUsage { try await writer.write(chunk([], usage: usage)) }
        try await writeShutdownError(&writer)
        try await writer.write(ByteBuffer(string: SSE.done))
    }

    /// After the final chunk of a stream the shutdown cut short: an error event (OpenAI's clients raise it).
    private func writeShutdownError(_ writer: inout any ResponseBodyWriter) async throws {
        guard endedByShutdown.withLockedValue({ $0 }) else { return }
        try await writer.write(ByteBuffer(string: SSE.event(APIError.shuttingDown.jsonBody)))
    }

    // MARK: Completions

    func collectCompletion(model: String) async throws -> CompletionResponse {
        var text = ""
        var lp = CompletionLogprobs()
        var finish = "stop"
        let usage = try await run { d, proc in
            text += d.text
            if self.wantLogprobs { proc.appendCompletion(d.logprobs, to: &lp) }
            if let f = d.finishReason { finish = f }
        }
        if endedByShutdown.withLockedValue({ $0 }) { throw APIError.shuttingDown }
        let choice = CompletionChoice(index: 0, text: text, logprobs: wantLogprobs ? lp : nil, finishReason: finish)
        return CompletionResponse(id: id, created: created, model: model, choices: [choice], usage: usage)
    }

    func streamCompletion(model: String, writer: inout any ResponseBodyWriter) async throws {
        let enc = OpenAIServer.encoder()
        let includeUsage = params.includeUsage
        func chunk(_ choices: [CompletionChoice], usage: Usage? = nil) throws -> ByteBuffer {
            try event(choices, model: model, usage: usage, encoder: enc)
        }
        let usage = try await run { d, proc in
            if !d.text.isEmpty || !d.logprobs.isEmpty || d.finishReason != nil {
                var lp: CompletionLogprobs? = nil
                if self.wantLogprobs {
                    var l = CompletionLogprobs()
                    proc.appendCompletion(d.logprobs, to: &l)
                    lp = l
                }
                try await writer.write(chunk([CompletionChoice(index: 0, text: d.text, logprobs: lp, finishReason: d.finishReason)]))
            }
        }
        if includeUsage { try await writer.write(chunk([], usage: usage)) }
        try await writeShutdownError(&writer)
        try await writer.write(ByteBuffer(string: SSE.done))
    }
}
