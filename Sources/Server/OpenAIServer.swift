import ChatTemplate
import Engine
import Foundation
import Grammar
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
    /// The served model as Ollama's routes describe it (set by `serve` before requests arrive).
    public nonisolated(unsafe) var modelDescription = ModelDescription()
    /// How this model writes tool calls (`--tool-parser`, else from the template; Hermes for templates without
    /// tools, which get the generic tool prompt).
    public let toolFormat: ToolCallFormat
    /// Whether the chat template renders `tools` itself.
    public let templateHasTools: Bool
    /// How this model marks its reasoning (`--reasoning-parser`, else from the template); nil: no reasoning split.
    public let reasoningFormat: ReasoningFormat?
    /// The control tokens of the tool-call markers, rendered as text when tool calls are parsed.
    let markerTokens: Set<Int32>
    private let vocabulary = NIOLockedValueBox<ConstraintVocabulary?>(nil)

    /// Builds the grammar engine's view of the vocabulary now (on the calling thread), so that the first
    /// structured-output request does not wait for it (`serve` calls it on a thread of its own after the load).
    public func prepareConstraintVocabulary() { _ = constraintVocabulary() }

    /// The grammar engine's view of the vocabulary, built by the first request that needs it.
    func constraintVocabulary() -> ConstraintVocabulary {
        vocabulary.withLockedValue { v in
            if let v { return v }
            let built = ConstraintVocabulary(tokenizer: tokenizer, markers: toolFormat.markers)
            v = built
            return built
        }
    }

    public init(engine: any InferenceEngine, tokenizer: Tokenizer, chatTemplate: ChatTemplate?, config: ServerConfig) {
        self.engine = engine
        self.tokenizer = tokenizer
        self.chatTemplate = chatTemplate
        self.config = config
        limits = ValidationLimits(vocabSize: engine.vocabSize)
        eogIDs = Set(tokenizer.endOfGenerationIDs)
        metrics = ServerMetrics(model: config.modelID)
        let source = chatTemplate?.source ?? ""
        templateHasTools = source.contains("tools")
        let detected = templateHasTools ? ToolCallFormat.detect(template: source) : nil
        toolFormat = config.toolParser.flatMap(ToolCallFormat.init(rawValue:)) ?? detected ?? .hermes
        switch config.reasoningParser {
        case "auto": reasoningFormat = ReasoningFormat.detect(template: source)
        case "none": reasoningFormat = nil
        default: reasoningFormat = ReasoningFormat(rawValue: config.reasoningParser)
        }
        markerTokens = Set(toolFormat.markers.compactMap { tokenizer.tokenID(for: $0) })
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
        router.post("/tokenize") { req, _ in try await self.tokenize(req) }
        router.post("/detokenize") { req, _ in try await self.detokenize(req) }
        addOllamaRoutes(router)
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

    /// `POST /tokenize` (llama.cpp's server, and vLLM's `prompt` / `count`): `{"content": text}` (or `"prompt"`),
    /// optional `add_special` (default false: no BOS) and `with_pieces`; answers `{"tokens": [...], "count": n,
    /// "max_model_len": context}`, the tokens as `{"id", "piece"}` objects with `with_pieces`.
    func tokenize(_ req: Request) async throws -> Response {
        struct Body: Decodable {
            let content: String?
            let prompt: String?
            let add_special: Bool?
            let with_pieces: Bool?
        }
        let r = try RequestValidation.decode(Body.self, from: try await readBody(req))
        guard let text = r.content ?? r.prompt else {
            throw APIError.invalid("'content' (the text to tokenize) is required.", param: "content")
        }
        let ids = tokenizer.encode(text, addSpecial: r.add_special ?? false)
        let tokens: [Any] = r.with_pieces == true
            ? ids.map { ["id": Int($0), "piece": tokenizer.decode([$0])] as [String: Any] }
            : ids.map { Int($0) }
        let obj: [String: Any] = ["tokens": tokens, "count": ids.count, "max_model_len": engine.contextLength]
        return Self.jsonResponse(try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]))
    }

    /// `POST /detokenize`: `{"tokens": [ids]}` → `{"content": text}` (special tokens kept as text).
    func detokenize(_ req: Request) async throws -> Response {
        struct Body: Decodable { let tokens: [Int]? }
        let r = try RequestValidation.decode(Body.self, from: try await readBody(req))
        guard let ids = r.tokens else { throw APIError.invalid("'tokens' (an array of token ids) is required.", param: "tokens") }
        if let bad = ids.first(where: { $0 < 0 || $0 >= tokenizer.vocabSize }) {
            throw APIError.invalid("token id \(bad) is outside the vocabulary (0..<\(tokenizer.vocabSize)).", param: "tokens")
        }
        let obj: [String: Any] = ["content": tokenizer.decode(ids.map { Int32($0) })]
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
        // The decoder above has checked the body; this parse keeps key order (schemas, tool definitions).
        let ordered = try JSONValue(parsing: String(decoding: body, as: UTF8.self))
        let extras = try ChatExtras.parse(ordered)
        let plan = try planChat(extras)
        let id = Self.newID("chatcmpl-")
        let gens = try startChoices(id: id, prompt: plan.prompt, params: params, grammar: plan.grammar,
                                    keepSpecial: plan.toolFormat != nil ? markerTokens : [],
                                    defaultMaxTokens: config.maxNewTokens, param: "messages", ctx: ctx)
        let model = r.common.model ?? config.modelID
        if params.stream {
            return Self.sse { writer in try await self.streamChat(gens, plan: plan, params: params, model: model, writer: &writer) }
        }
        return try Self.json(try await collectChat(gens, plan: plan, model: model))
    }

    /// Submits the `n` choices of a request: the first at once, the others after its prompt is computed (they
    /// start from its K/V through the prefix cache). Each has its own sampler seed (`seed + i`) and constraint.
    func startChoices(id: String, prompt: [Int32], params: GenerationParameters, grammar: Grammar?, keepSpecial: Set<Int32>,
                      defaultMaxTokens: Int, param: String, ctx: ServerContext) throws -> [Generation] {
        var gens: [Generation] = []
        let vocabulary = grammar != nil ? constraintVocabulary() : nil
        for i in 0..<params.n {
            var p = params
            if i > 0, let seed = p.sampling.seed { p.sampling.seed = seed &+ UInt64(i) }
            let rid = i == 0 ? id : "\(id)-\(i)"
            var er = try engineRequest(id: rid, prompt: prompt, params: p, defaultMaxTokens: defaultMaxTokens, param: param)
            if let grammar, let vocabulary { er.constraint = GrammarConstraint(grammar: grammar, vocabulary: vocabulary) }
            if i > 0 { er.prefillAfter = id }
            let stream: AsyncStream<EngineOutput>
            do {
                stream = try submit(er)
            } catch {
                for g in gens { engine.abort(id: g.request.id) }
                throw error
            }
            let g = Generation(server: self, id: rid, request: er, params: p, stream: stream,
                               connection: ConnectionRegistry.shared.state(for: ctx.channel))
            g.keepSpecial = keepSpecial
            gens.append(g)
        }
        return gens
    }

    static func totalUsage(_ usages: [Usage]) -> Usage {
        Usage(promptTokens: usages.first?.promptTokens ?? 0, completionTokens: usages.reduce(0) { $0 + $1.completionTokens },
              cachedTokens: usages.first?.cachedTokens ?? 0)
    }

    func collectChat(_ gens: [Generation], plan: ChatPlan, model: String) async throws -> ChatCompletionResponse {
        let results = try await withThrowingTaskGroup(of: (Int, ChatChoice, Usage).self) { group in
            for (i, g) in gens.enumerated() {
                group.addTask {
                    let (c, u) = try await g.collectChatChoice(index: i, parser: plan.parser())
                    return (i, c, u)
                }
            }
            var out: [(Int, ChatChoice, Usage)] = []
            for try await r in group { out.append(r) }
            return out.sorted { $0.0 < $1.0 }
        }
        return ChatCompletionResponse(id: gens[0].id, created: gens[0].created, model: model, choices: results.map(\.1),
                                      usage: Self.totalUsage(results.map(\.2)))
    }

    func streamChat(_ gens: [Generation], plan: ChatPlan, params: GenerationParameters, model: String,
                    writer: inout any ResponseBodyWriter) async throws {
        let lead = gens[0]
        let enc = Self.encoder()
        for i in gens.indices {
            let c = ChatCompletionChunk(id: lead.id, created: lead.created, model: model,
                                        choices: [ChatChunkChoice(index: i, delta: ChunkDelta(role: "assistant", content: ""),
                                                                  logprobs: nil, finishReason: nil)],
                                        usage: nil, includeUsageKey: params.includeUsage)
            try await writer.write(ByteBuffer(string: SSE.event(try enc.encode(c))))
        }
        try await streamChoices(gens, params: params, model: model, writer: &writer) { g, i, emit in
            try await g.streamChatChoice(index: i, parser: plan.parser(), emit: emit)
        }
    }

    /// Writes the streamed choices of `gens` as server-sent events: the choices run concurrently and their chunks
    /// meet in one stream that this task writes out; then the usage chunk (when asked), a shutdown error event
    /// (when the drain cut the answer short) and `[DONE]`.
    func streamChoices<C: ResponseChoice>(
        _ gens: [Generation], params: GenerationParameters, model: String, writer: inout any ResponseBodyWriter,
        run: @escaping @Sendable (Generation, Int, @escaping @Sendable (C) -> Void) async throws -> Usage
    ) async throws {
        let enc = Self.encoder()
        let lead = gens[0]
        func chunk(_ choices: [C], usage: Usage? = nil) throws -> ByteBuffer {
            let c = CompletionEnvelope(id: lead.id, created: lead.created, model: model, choices: choices, usage: usage,
                                       includeUsageKey: params.includeUsage)
            return ByteBuffer(string: SSE.event(try enc.encode(c)))
        }
        let (events, sink) = AsyncStream<C>.makeStream()
        let producer = Task { () throws -> [Usage] in
            defer { sink.finish() }
            return try await withThrowingTaskGroup(of: Usage.self) { group in
                for (i, g) in gens.enumerated() {
                    group.addTask { try await run(g, i) { sink.yield($0) } }
                }
                var usages: [Usage] = []
                for try await u in group { usages.append(u) }
                return usages
            }
        }
        do {
            for await c in events { try await writer.write(chunk([c])) }
        } catch {
            producer.cancel()
            throw error
        }
        let usages = try await producer.value
        if params.includeUsage { try await writer.write(chunk([], usage: Self.totalUsage(usages))) }
        for g in gens where g.wasEndedByShutdown {
            try await g.writeShutdownError(&writer)
            break
        }
        try await writer.write(ByteBuffer(string: SSE.done))
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
        if let b = r.bestOf, b != (r.common.n ?? 1) {
            throw APIError.invalid("Only best_of = n is supported (every sample is returned); got best_of \(b).", param: "best_of")
        }
        let params = try RequestValidation.parameters(r.common, logprobs: r.logprobs, limits: limits)
        let prompt = try completionPrompt(r.prompt)
        let id = Self.newID("cmpl-")
        let gens = try startChoices(id: id, prompt: prompt, params: params, grammar: nil, keepSpecial: [],
                                    defaultMaxTokens: 16, param: "prompt", ctx: ctx)
        let model = r.common.model ?? config.modelID
        let lead = gens[0]
        if params.stream {
            return Self.sse { writer in
                try await self.streamChoices(gens, params: params, model: model, writer: &writer) { g, i, emit in
                    try await g.streamCompletionChoice(index: i, emit: emit)
                }
            }
        }
        let results = try await withThrowingTaskGroup(of: (Int, CompletionChoice, Usage).self) { group in
            for (i, g) in gens.enumerated() {
                group.addTask {
                    let (c, u) = try await g.collectCompletionChoice(index: i)
                    return (i, c, u)
                }
            }
            var out: [(Int, CompletionChoice, Usage)] = []
            for try await r in group { out.append(r) }
            return out.sorted { $0.0 < $1.0 }
        }
        return try Self.json(CompletionResponse(id: lead.id, created: lead.created, model: model, choices: results.map(\.1),
                                                usage: Self.totalUsage(results.map(\.2))))
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
