import ChatTemplate
import Engine
import Foundation
import Hummingbird
import HummingbirdCore
import HTTPTypes
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Tokenizer

/// The request context: Hummingbird's core storage plus the connection, to notice a client going away.
public struct ServerContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}

/// The OpenAI-compatible HTTP layer: parses and validates requests, renders the chat template, tokenizes,
/// submits to the engine and turns its token stream into JSON or server-sent events.
public final class OpenAIServer: Sendable {
    public let engine: any InferenceEngine
    public let tokenizer: Tokenizer
    public let chatTemplate: ChatTemplate?
    public let config: ServerConfig
    let limits: ValidationLimits
    let created = Int(Date().timeIntervalSince1970)
    let eogIDs: Set<Int32>

    /// The shutdown drain: once `draining`, new requests get 503; once `expired`, what still runs is aborted and
    /// ended properly (see `Generation`). `active` holds the ids of the requests being generated.
    struct DrainState {
        var draining = false
        var expired = false
        var active: Set<String> = []
    }
    let drain = NIOLockedValueBox(DrainState())
    /// `/metrics` (Prometheus).
    public let metrics: ServerMetrics
    /// What the server runs on, for the start-up line (`cpu (16 threads, avx512), context 4096`).
    public nonisolated(unsafe) var summary = ""

    public init(engine: any InferenceEngine, tokenizer: Tokenizer, chatTemplate: ChatTemplate?, config: ServerConfig) {
        self.engine = engine
        self.tokenizer = tokenizer
        self.chatTemplate = chatTemplate
        self.config = config
        limits = ValidationLimits(vocabSize: engine.vocabSize)
        eogIDs = Set(tokenizer.endOfGenerationIDs)
        metrics = ServerMetrics(model: config.modelID)
    }

    // MARK: - Application

    /// The router with every route and middleware (also what the unit tests drive).
    public func makeRouter() -> Router<ServerContext> {
        let router = Router(context: ServerContext.self)
        router.middlewares.add(RequestIDMiddleware())
        if !config.corsOrigins.isEmpty { router.middlewares.add(CORSPolicyMiddleware(origins: config.corsOrigins)) }
        router.middlewares.add(OpenAIErrorMiddleware())
        router.middlewares.add(DrainMiddleware(server: self))
        if let key = config.apiKey { router.middlewares.add(APIKeyMiddleware(key: key)) }
        router.get("/health") { _, _ in try self.health() }
        router.get("/") { _, _ in
            var h = HTTPFields()
            h[.contentType] = "text/html; charset=utf-8"
            h[.cacheControl] = "no-cache"
            return Response(status: .ok, headers: h, body: .init(byteBuffer: ByteBuffer(bytes: PackageResources.index_html)))
        }
        router.get("/metrics") { _, _ in
            var h = HTTPFields()
            h[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
            return Response(status: .ok, headers: h,
                             body: .init(byteBuffer: ByteBuffer(string: self.metrics.render(self.engine.stats()))))
        }
        router.get("/v1/models") { _, _ in try self.models() }
        // What SGLang's router (sglang-router / the SGLang model gateway) reads from a worker when it registers it.
        for path in ["/model_info", "/get_model_info"] { router.get(RouterPath(path)) { _, _ in try self.modelInfo() } }
        for path in ["/server_info", "/get_server_info"] { router.get(RouterPath(path)) { _, _ in try self.serverInfo() } }
        router.get("/v1/models/{id}") { _, ctx in
            let id = ctx.parameters.get("id") ?? ""
            guard self.accepts(model: id) else { throw APIError.modelNotFound(id, served: self.config.modelID) }
            return try Self.json(self.modelCard())
        }
        router.post("/v1/chat/completions") { req, ctx in try await self.chat(req, ctx) }
        router.post("/v1/completions") { req, ctx in try await self.completions(req, ctx) }
        return router
    }

    /// The Hummingbird application bound to `config.host:config.port`, answering with this server's router.
    public func makeApplication(logger: Logger, onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in })
        -> some ApplicationProtocol {
        Self.makeApplication(responder: makeRouter().buildResponder(), config: config, logger: logger,
                             onServerRunning: onServerRunning)
    }

    /// The Hummingbird application for `responder` (a `LoadingResponder` binds before the model is loaded).
    public static func makeApplication<R: HTTPResponder>(responder: R, config: ServerConfig, logger: Logger,
                                                         onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in })
        -> some ApplicationProtocol where R.Context == ServerContext {
        let limits = ConnectionLimits(requestTimeout: .nanoseconds(Int64(config.requestTimeout * 1e9)),
                                      idleTimeout: .nanoseconds(Int64(config.idleTimeout * 1e9)),
                                      maxConnections: config.maxConnections)
        return Application(
            responder: responder,
            server: HTTPServerBuilder { responder in ServerHTTP1Channel(responder: responder, limits: limits) },
            configuration: .init(address: .hostname(config.host, port: config.port), serverName: nil),
            onServerRunning: onServerRunning,
            logger: logger)
    }

    // MARK: - Shutdown drain

    /// SIGTERM/SIGINT: from now on new requests are answered 503 (`shutting_down`, with `Connection: close`) and
    /// /health says "draining"; running requests go on.
    public func beginDrain() {
        drain.withLockedValue { $0.draining = true }
    }

    /// The drain timeout has passed: every request still generating is aborted; streams end with a final chunk
    /// (`finish_reason: "abort"`), an error event and `[DONE]`, other requests get a 503 JSON error.
    public func expireDrain() {
        let ids = drain.withLockedValue { s -> Set<String> in
            s.draining = true
            s.expired = true
            return s.active
        }
        for id in ids { engine.abort(id: id) }
    }

    public var isDraining: Bool { drain.withLockedValue { $0.draining } }
    var drainExpired: Bool { drain.withLockedValue { $0.expired } }
    /// Requests being generated now.
    public var activeRequests: Int { drain.withLockedValue { $0.active.count } }

    /// Notes a request as generating; if the drain has already expired it is aborted at once.
    func track(_ id: String) {
        let expired = drain.withLockedValue { s -> Bool in
            s.active.insert(id)
            return s.expired
        }
        if expired { engine.abort(id: id) }
    }

    func untrack(_ id: String) {
        _ = drain.withLockedValue { $0.active.remove(id) }
    }

    // MARK: - Simple routes

    func health() throws -> Response {
        let s = engine.stats()
        let draining = isDraining
        let obj: [String: Any] = [
            "status": draining ? "draining" : "ok",
            "model": config.modelID,
            "engine": [
                "running": s.running, "waiting": s.waiting,
                "kv_pages_total": s.kvPagesTotal, "kv_pages_free": s.kvPagesFree, "kv_page_size": s.kvPageSize,
                "steps": s.steps, "preemptions": s.preemptions,
                "generated_tokens": s.generatedTokens, "prompt_tokens": s.promptTokens,
                "kv_pages_cached": s.kvPagesCached,
                "prefix_cache_query_tokens": s.prefixCacheQueryTokens,
                "prefix_cache_hit_tokens": s.prefixCacheHitTokens,
            ],
            "connections": ConnectionRegistry.shared.count,
            "connections_evicted": ConnectionRegistry.shared.evictionCount,
        ]
        let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
        return Self.jsonResponse(data, status: draining ? .serviceUnavailable : .ok)
    }

    /// SGLang's `/model_info`: the model a router registers this worker under.
    func modelInfo() throws -> Response {
        let obj: [String: Any] = ["model_path": config.modelID, "served_model_name": config.modelID,
                                  "tokenizer_path": NSNull(), "is_generation": true, "max_model_len": engine.contextLength]
        return Self.jsonResponse(try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]))
    }

    /// SGLang's `/server_info`: the serving limits a router may read.
    func serverInfo() throws -> Response {
        let s = engine.stats()
        let obj: [String: Any] = ["model_path": config.modelID, "served_model_name": config.modelID,
                                  "context_length": engine.contextLength, "page_size": s.kvPageSize,
                                  "max_total_num_tokens": s.kvPagesTotal * s.kvPageSize, "dp_size": 1, "tp_size": 1,
                                  "version": "ktransformers-swift"]
        return Self.jsonResponse(try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]))
    }

    func modelCard() -> ModelCard {
        ModelCard(id: config.modelID, created: created, maxModelLen: engine.contextLength)
    }

    func models() throws -> Response {
        try Self.json(ModelList(data: [modelCard()]))
    }

    /// The served id and its aliases; a request without `model` is accepted too.
    func accepts(model: String?) -> Bool {
        guard let model else { return true }
        return model == config.modelID || config.modelAliases.contains(model)
    }

    // MARK: - Request preparation

    func readBody(_ req: Request) async throws -> Data {
        if let cl = req.headers[.contentLength], let n = Int(cl), n > config.maxBodyBytes {
            throw APIError.tooLarge(limit: config.maxBodyBytes)
        }
        do {
            var buf = try await req.body.collect(upTo: config.maxBodyBytes)
            return Data(buf.readBytes(length: buf.readableBytes) ?? [])
        } catch is NIOTooManyBytesError {
            throw APIError.tooLarge(limit: config.maxBodyBytes)
        } catch {
            // The client stopped sending mid-body (it usually is gone, and never sees this).
            throw APIError.invalid("The request body could not be read completely.", code: "incomplete_body")
        }
    }

    func checkModel(_ model: String?) throws {
        if !accepts(model: model) { throw APIError.modelNotFound(model ?? "", served: config.modelID) }
    }

    /// Renders the conversation with the chat template and tokenizes it.
    public func chatPrompt(_ messages: [ChatMessage]) throws -> [Int32] {
        guard let chatTemplate else {
            throw APIError.invalid("This model has no chat template; use /v1/completions.", param: "messages")
        }
        let values: [JinjaValue] = messages.map { m in
            var o = JinjaObject()
            o["role"] = .string(m.role)
            o["content"] = .string(m.content?.text ?? "")
            if let n = m.name { o["name"] = .string(n) }
            return .object(o)
        }
        let bos = tokenizer.bosID.map { tokenizer.piece($0) } ?? ""
        let eos = tokenizer.eosID.map { tokenizer.piece($0) } ?? ""
        let text: String
        do {
            text = try chatTemplate.render(messages: values, addGenerationPrompt: true, bosToken: bos, eosToken: eos, extra: [:])
        } catch let e as ChatTemplateError {
            throw APIError.invalid("The chat template rejected the conversation: \(e.message)", param: "messages")
        }
        return encodePrompt(text)
    }

    /// Tokenizes prompt text: special-token text is parsed (templates write `<start_of_turn>` etc.); BOS is
    /// added when the model asks for it and the text does not already start with it.
    public func encodePrompt(_ text: String) -> [Int32] {
        var ids = tokenizer.encode(text, addSpecial: false, parseSpecial: true)
        if tokenizer.addBOS, let bos = tokenizer.bosID, ids.first != bos { ids.insert(bos, at: 0) }
        return ids
    }

    func completionPrompt(_ p: PromptField) throws -> [Int32] {
        switch p {
        case .text(let s):
            return encodePrompt(s)
        case .texts(let a):
            guard a.count == 1 else {
                throw APIError.invalid("'prompt' must be a single prompt; batches of \(a.count) are not supported.", param: "prompt")
            }
            return encodePrompt(a[0])
        case .tokens(let ids):
            return try checkIDs(ids)
        case .tokenLists(let l):
            guard l.count == 1 else {
                throw APIError.invalid("'prompt' must be a single prompt; batches of \(l.count) are not supported.", param: "prompt")
            }
            return try checkIDs(l[0])
        }
    }

    func checkIDs(_ ids: [Int]) throws -> [Int32] {
        let v = engine.vocabSize
        if let bad = ids.first(where: { $0 < 0 || $0 >= v }) {
            throw APIError.invalid("Token id \(bad) in 'prompt' is outside the vocabulary (0..<\(v)).", param: "prompt", code: "invalid_value")
        }
        return ids.map { Int32($0) }
    }

    /// Checks the prompt against the context and builds the engine request.
    func engineRequest(id: String, prompt: [Int32], params: GenerationParameters, defaultMaxTokens: Int,
                       param: String) throws -> EngineRequest {
        guard !prompt.isEmpty else {
            throw APIError.invalid("The prompt is empty (it encodes to no tokens).", param: param, code: "invalid_value")
        }
        let ctx = engine.contextLength
        guard prompt.count < ctx else {
            throw APIError.invalid(
                "This model's maximum context length is \(ctx) tokens, but the prompt has \(prompt.count) tokens; at least one more is needed for the completion.",
                param: param, code: "context_length_exceeded")
        }
        let maxTokens = min(params.maxTokens ?? defaultMaxTokens, ctx - prompt.count)
        return EngineRequest(id: id, promptTokens: prompt, sampling: params.sampling, maxTokens: maxTokens,
                             stopTokenIDs: params.ignoreEOS ? [] : eogIDs, logprobs: params.logprobs)
    }

    func submit(_ r: EngineRequest) throws -> AsyncStream<EngineOutput> {
        do {
            return try engine.submit(r)
        } catch let e as EngineError {
            switch e {
            case .overloaded, .shuttingDown: throw APIError.overloaded(e.description)
            case .promptTooLong: throw APIError.invalid(e.description, code: "context_length_exceeded")
            case .invalid(let m): throw APIError.invalid(m)
            }
        }
    }

    static func newID(_ prefix: String) -> String {
        var g = SystemRandomNumberGenerator()
        let hex = (0..<3).map { _ in String(g.next() as UInt64, radix: 16) }.joined()
        return prefix + hex
    }

    // MARK: - Chat

    func chat(_ req: Request, _ ctx: ServerContext) async throws -> Response {
        let body = try await readBody(req)
        let r = try RequestValidation.decode(ChatCompletionRequest.self, from: body)
        try checkModel(r.common.model)
        try RequestValidation.checkMessages(r.messages)
        let lp = try RequestValidation.chatLogprobs(r, limits: limits)
        let params = try RequestValidation.parameters(r.common, logprobs: lp, limits: limits)
        let prompt = try chatPrompt(r.messages)
        let id = Self.newID("chatcmpl-")
        let er = try engineRequest(id: id, prompt: prompt, params: params, defaultMaxTokens: config.maxNewTokens, param: "messages")
        let stream = try submit(er)
        let run = Generation(server: self, id: id, request: er, params: params, stream: stream,
                             connection: ConnectionRegistry.shared.state(for: ctx.channel))
        let model = r.common.model ?? config.modelID
        if params.stream {
            return Self.sse { writer in try await run.streamChat(model: model, writer: &writer) }
        }
        return try Self.json(try await run.collectChat(model: model))
    }

    // MARK: - Completions

    func completions(_ req: Request, _ ctx: ServerContext) async throws -> Response {
        let body = try await readBody(req)
        let r = try RequestValidation.decode(CompletionRequest.self, from: body)
        try checkModel(r.common.model)
        if r.echo == true { throw APIError.invalid("'echo' is not supported.", param: "echo", code: "unsupported_parameter") }
        if let s = r.suffix, !s.isEmpty {
            throw APIError.invalid("'suffix' is not supported.", param: "suffix", code: "unsupported_parameter")
        }
        if let b = r.bestOf, b != 1 { throw APIError.invalid("Only best_of = 1 is supported; got \(b).", param: "best_of") }
        let params = try RequestValidation.parameters(r.common, logprobs: r.logprobs, limits: limits)
        let prompt = try completionPrompt(r.prompt)
        let id = Self.newID("cmpl-")
        let er = try engineRequest(id: id, prompt: prompt, params: params, defaultMaxTokens: 16, param: "prompt")
        let stream = try submit(er)
        let run = Generation(server: self, id: id, request: er, params: params, stream: stream,
                             connection: ConnectionRegistry.shared.state(for: ctx.channel))
        let model = r.common.model ?? config.modelID
        if params.stream {
            return Self.sse { writer in try await run.streamCompletion(model: model, writer: &writer) }
        }
        return try Self.json(try await run.collectCompletion(model: model))
    }

    // MARK: - Responses

    static func encoder() -> JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.withoutEscapingSlashes, .sortedKeys]
        return e
    }

    static func jsonResponse(_ data: Data, status: HTTPResponse.Status = .ok) -> Response {
        var h = HTTPFields()
        h[.contentType] = "application/json"
        return Response(status: status, headers: h, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func json<T: Encodable>(_ v: T) throws -> Response {
        jsonResponse(try encoder().encode(v))
    }

    static func sse(_ body: @escaping @Sendable (inout any ResponseBodyWriter) async throws -> Void) -> Response {
        var h = HTTPFields()
        h[.contentType] = "text/event-stream"
        h[.cacheControl] = "no-cache"
        return Response(status: .ok, headers: h, body: ResponseBody { writer in
            try await body(&writer)
            try await writer.finish(nil)
        })
    }
}

extension APIError {
    var response: Response {
        OpenAIServer.jsonResponse(jsonBody, status: status)
    }
}

/// Turns every error into an OpenAI error body; nothing escapes as a bare 500 or a dropped connection.
struct OpenAIErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let e as APIError {
            return e.response
        } catch is NIOTooManyBytesError {
            return APIError(status: .contentTooLarge, message: "The request body is too large.", code: "request_too_large").response
        } catch let e as HTTPError {
            if e.status == .notFound { return APIError.notFound(path: request.uri.path).response }
            let type = e.status.code >= 500 ? "server_error" : "invalid_request_error"
            return APIError(status: e.status, message: e.body ?? e.status.reasonPhrase, type: type).response
        } catch is CancellationError {
            return APIError.overloaded("The request was cancelled (the server is shutting down).").response
        } catch {
            context.logger.error("internal error: \(error)")
            return APIError.internalError("Internal server error: \(error)").response
        }
    }
}

/// While the server drains for a shutdown: every new request but /health is answered 503 (`shutting_down`), and
/// every response asks the client to close the connection (so keep-alive clients reconnect to another replica).
struct DrainMiddleware<Context: RequestContext>: RouterMiddleware {
    let server: OpenAIServer

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard server.isDraining else { return try await next(request, context) }
        var response = request.uri.path == "/health" ? try await next(request, context) : APIError.shuttingDown.response
        response.headers[.connection] = "close"
        return response
    }
}

/// `--api-key`: every route but the chat page (`/`, which sends the key the user types), /health and /metrics (and CORS preflights, which browsers send without credentials) needs
/// `Authorization: Bearer <key>`; the scheme name is case-insensitive (RFC 7235), the key is not.
struct APIKeyMiddleware<Context: RequestContext>: RouterMiddleware {
    let key: [UInt8]
    init(key: String) { self.key = Array(key.utf8) }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if ["/", "/health", "/metrics"].contains(request.uri.path) || request.method == .options {
            return try await next(request, context)
        }
        let header = request.headers[.authorization] ?? ""
        let scheme = "bearer "
        let given = header.lowercased().hasPrefix(scheme) ? Array(header.utf8.dropFirst(scheme.utf8.count)) : []
        // Constant-time comparison: the time taken does not reveal how much of the key matched.
        var diff = UInt8(given.count == key.count ? 0 : 1)
        for i in 0..<key.count { diff |= key[i] ^ (i < given.count ? given[i] : 0) }
        guard diff == 0 else { throw APIError.unauthorized }
        return try await next(request, context)
    }
}
