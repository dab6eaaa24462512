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
final class Generation: @unchecked Sendable {
    // NOTE: @unchecked: `keepSpecial` is set once, before the generation runs.
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
        OutputProcessor(tokenizer: server.tokenizer, stopTokenIDs: request.stopTokenIDs, stopStrings: params.stop,
                        keepSpecial: keepSpecial)
    }

    /// Control tokens rendered as text (the tool-call format's markers, when tool calls are parsed).
    var keepSpecial: Set<Int32> = []

    /// Whether the request ended because the shutdown drain expired (set by `run`).
    private let endedByShutdown = NIOLockedValueBox(false)
    /// When the first token arrived (uptime ns), and the tokens generated: Ollama's timings and `context`.
    let firstTokenAt = NIOLockedValueBox<UInt64?>(nil)
    let generatedTokens = NIOLockedValueBox<[Int32]>([])

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
                            firstTokenAt.withLockedValue { $0 = now }
                        }
                        lastToken = now
                        generatedTokens.withLockedValue { $0.append(o.token!) }
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

    /// Whether the shutdown drain ended this request.
    var wasEndedByShutdown: Bool { endedByShutdown.withLockedValue { $0 } }

    /// One choice of a chat answer, whole.
    func collectChatChoice(index: Int, parser: ChatOutputParser) async throws -> (ChatChoice, Usage) {
        var parser = parser
        var content = "", reasoning = "", calls: [ToolCallOut] = []
        var entries: [ChatLogprobEntry] = []
        var finish = "stop"
        func take(_ events: [ChatEvent]) {
            for e in events {
                switch e {
                case .content(let s): content += s
                case .reasoning(let s): reasoning += s
                case .toolCall(_, let c): calls.append(ToolCallOut(id: c.id ?? Self.toolCallID(), name: c.name, arguments: c.arguments))
                }
            }
        }
        let usage = try await run { d, proc in
            take(parser.push(d.text))
            if self.wantLogprobs { entries += proc.chatEntries(d.logprobs) }
            if let f = d.finishReason {
                take(parser.finish())
                finish = f
            }
        }
        if wasEndedByShutdown { throw APIError.shuttingDown }
        if finish == "stop" && !calls.isEmpty { finish = "tool_calls" }
        let message = ResponseMessage(role: "assistant", content: calls.isEmpty || !content.isEmpty ? content : nil,
                                      reasoningContent: parser.reasoning != nil ? reasoning : nil, toolCalls: calls)
        let choice = ChatChoice(index: index, message: message,
                                logprobs: wantLogprobs ? ChatLogprobs(content: entries) : nil, finishReason: finish)
        return (choice, usage)
    }

    /// One choice of a streamed chat answer: each chunk's choice goes to `emit`.
    func streamChatChoice(index: Int, parser: ChatOutputParser,
                          emit: @escaping @Sendable (ChatChunkChoice) -> Void) async throws -> Usage {
        var parser = parser
        var calls = 0
        func send(_ events: [ChatEvent], logprobs: ChatLogprobs?) {
            var lp = logprobs
            for e in events {
                var delta = ChunkDelta()
                switch e {
                case .content(let s): delta.content = s
                case .reasoning(let s): delta.reasoningContent = s
                case .toolCall(let i, let c):
                    calls += 1
                    delta.toolCalls = [ToolCallDelta(index: i, id: c.id ?? Self.toolCallID(), type: "function",
                                                     function: .init(name: c.name, arguments: c.arguments))]
                }
                emit(ChatChunkChoice(index: index, delta: delta, logprobs: lp, finishReason: nil))
                lp = nil
            }
            // Logprobs of tokens whose text is still held by a parser go out with an empty delta.
            if let lp, !lp.content.isEmpty {
                emit(ChatChunkChoice(index: index, delta: ChunkDelta(content: ""), logprobs: lp, finishReason: nil))
            }
        }
        return try await run { d, proc in
            let lp = self.wantLogprobs && !d.logprobs.isEmpty ? ChatLogprobs(content: proc.chatEntries(d.logprobs)) : nil
            send(parser.push(d.text), logprobs: lp)
            if var f = d.finishReason {
                send(parser.finish(), logprobs: nil)
                if f == "stop" && calls > 0 { f = "tool_calls" }
                emit(ChatChunkChoice(index: index, delta: ChunkDelta(), logprobs: nil, finishReason: f))
            }
        }
    }

    static func toolCallID() -> String {
        let chars = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        var g = SystemRandomNumberGenerator()
        return "call_" + String((0..<24).map { _ in chars[Int(g.next() % UInt64(chars.count))] })
    }

    /// After the final chunk of a stream the shutdown cut short: an error event (OpenAI's clients raise it).
    func writeShutdownError(_ writer: inout any ResponseBodyWriter) async throws {
        guard endedByShutdown.withLockedValue({ $0 }) else { return }
        try await writer.write(ByteBuffer(string: SSE.event(APIError.shuttingDown.jsonBody)))
    }

    // MARK: Completions

    func collectCompletionChoice(index: Int) async throws -> (CompletionChoice, Usage) {
        var text = ""
        var lp = CompletionLogprobs()
        var finish = "stop"
        let usage = try await run { d, proc in
            text += d.text
            if self.wantLogprobs { proc.appendCompletion(d.logprobs, to: &lp) }
            if let f = d.finishReason { finish = f }
        }
        if wasEndedByShutdown { throw APIError.shuttingDown }
        return (CompletionChoice(index: index, text: text, logprobs: wantLogprobs ? lp : nil, finishReason: finish), usage)
    }

    func streamCompletionChoice(index: Int, emit: @escaping @Sendable (CompletionChoice) -> Void) async throws -> Usage {
        try await run { d, proc in
            if !d.text.isEmpty || !d.logprobs.isEmpty || d.finishReason != nil {
                var lp: CompletionLogprobs? = nil
                if self.wantLogprobs {
                    var l = CompletionLogprobs()
                    proc.appendCompletion(d.logprobs, to: &l)
                    lp = l
                }
                emit(CompletionChoice(index: index, text: d.text, logprobs: lp, finishReason: d.finishReason))
            }
        }
    }
}
