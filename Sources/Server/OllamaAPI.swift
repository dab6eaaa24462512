import Engine
import Foundation
import Grammar
import Hummingbird
import HTTPTypes
import NIOCore

/// What `/api/tags`, `/api/show` and `/api/ps` report about the served model (filled in by `serve` after the load).
public struct ModelDescription: Sendable {
    public var family = "unknown"
    public var parameterCount = 0
    public var quantization = "unknown"
    public var sizeBytes = 0
    public var modifiedAt = Date()
    /// A stable id of the file (64 hex digits), as Ollama's digests look.
    public var digest = String(repeating: "0", count: 64)
    /// `model_info`: the file's scalar metadata (general.*, the architecture's hyper-parameters).
    public var info: [(String, JSONValue)] = []
    public var loadSeconds: Double = 0
    public var loadedAt = Date()

    public init() {}

    /// llama.cpp's `general.file_type` names.
    public static func fileTypeName(_ t: Int) -> String? {
        let names: [Int: String] = [0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
                                    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
                                    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
                                    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
                                    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16"]
        return names[t]
    }

    /// "268.10M", "30.5B", as Ollama writes parameter sizes.
    public var parameterSize: String {
        let n = Double(parameterCount)
        return n >= 1e9 ? String(format: "%.1fB", n / 1e9) : String(format: "%.2fM", n / 1e6)
    }
}

/// An Ollama API error: `{"error": "..."}` with its status.
struct OllamaError: Error {
    let status: HTTPResponse.Status
    let message: String

    static func bad(_ m: String) -> OllamaError { OllamaError(status: .badRequest, message: m) }

    var response: Response {
        OpenAIServer.jsonResponse(Data(JSONValue.object([("error", .string(message))]).compactText.utf8), status: status)
    }
}

/// Ollama's API (`/api/chat`, `/api/generate`, `/api/tags`, `/api/show`, `/api/ps`, `/api/version`) over the same
/// engine, chat template, parsers and grammars as the OpenAI routes. Streams are NDJSON (one object per line);
/// `stream` defaults to true, as Ollama's does. Durations are nanoseconds.
extension OpenAIServer {
    static let ollamaVersion = "0.12.0"

    func addOllamaRoutes(_ router: Router<ServerContext>) {
        router.get("/api/version") { _, _ in
            Self.ndjsonValue(.object([("version", .string(Self.ollamaVersion))]))
        }
        router.get("/api/tags") { _, _ in try self.ollamaTags() }
        router.get("/api/ps") { _, _ in try self.ollamaPS() }
        router.post("/api/show") { req, _ in try await self.ollamaCatching { try await self.ollamaShow(req) } }
        router.post("/api/chat") { req, ctx in try await self.ollamaCatching { try await self.ollamaChat(req, ctx) } }
        router.post("/api/generate") { req, ctx in try await self.ollamaCatching { try await self.ollamaGenerate(req, ctx) } }
        // Routes Ollama has that manage models: this server serves one model, loaded at start-up.
        for path in ["/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete", "/api/embed", "/api/embeddings"] {
            router.on(RouterPath(path), method: path == "/api/delete" ? .delete : .post) { _, _ in
                OllamaError(status: .notImplemented,
                            message: "\(path) is not supported: this server serves \(self.config.modelID), loaded at start-up").response
            }
        }
    }

    /// Ollama clients read `{"error": ...}` bodies.
    func ollamaCatching(_ body: () async throws -> Response) async throws -> Response {
        do {
            return try await body()
        } catch let e as OllamaError {
            return e.response
        } catch let e as APIError {
            return OllamaError(status: e.status, message: e.message).response
        }
    }

    static func ndjsonValue(_ v: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
        jsonResponse(Data(v.compactText.utf8), status: status)
    }

    static func timestamp(_ d: Date = Date()) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.string(from: d)
    }

    // MARK: Models

    /// The served name as Ollama writes it (`name:tag`).
    var ollamaName: String { config.modelID.contains(":") ? config.modelID : config.modelID + ":latest" }

    func ollamaAccepts(_ name: String?) -> Bool {
        guard let name, !name.isEmpty else { return false }
        if accepts(model: name) || name == ollamaName { return true }
        if name.hasSuffix(":latest") { return accepts(model: String(name.dropLast(7))) }
        return false
    }

    func ollamaModel(_ body: JSONValue) throws -> String {
        let name = body["model"]?.stringValue ?? body["name"]?.stringValue
        guard let name, !name.isEmpty else { throw OllamaError.bad("model is required") }
        guard ollamaAccepts(name) else {
            throw OllamaError(status: .notFound, message: "model '\(name)' not found (this server serves '\(ollamaName)')")
        }
        return name
    }

    var ollamaDetails: JSONValue {
        let d = modelDescription
        return .object([("parent_model", .string("")), ("format", .string("gguf")), ("family", .string(d.family)),
                        ("families", .array([.string(d.family)])), ("parameter_size", .string(d.parameterSize)),
                        ("quantization_level", .string(d.quantization))])
    }

    func ollamaTags() throws -> Response {
        let d = modelDescription
        let m: JSONValue = .object([("name", .string(ollamaName)), ("model", .string(ollamaName)),
                                    ("modified_at", .string(Self.timestamp(d.modifiedAt))),
                                    ("size", .number(Double(d.sizeBytes), String(d.sizeBytes))),
                                    ("digest", .string(d.digest)), ("details", ollamaDetails)])
        return Self.ndjsonValue(.object([("models", .array([m]))]))
    }

    func ollamaPS() throws -> Response {
        let d = modelDescription
        let m: JSONValue = .object([("name", .string(ollamaName)), ("model", .string(ollamaName)),
                                    ("size", .number(Double(d.sizeBytes), String(d.sizeBytes))),
                                    ("digest", .string(d.digest)), ("details", ollamaDetails),
                                    // Loaded for the server's lifetime.
                                    ("expires_at", .string(Self.timestamp(Date().addingTimeInterval(86400 * 365)))),
                                    ("size_vram", .number(0, "0")),
                                    ("context_length", .number(Double(engine.contextLength), String(engine.contextLength)))])
        return Self.ndjsonValue(.object([("models", .array([m]))]))
    }

    func ollamaShow(_ req: Request) async throws -> Response {
        let body = try await ollamaBody(req)
        _ = try ollamaModel(body)
        var caps: [JSONValue] = [.string("completion")]
        if chatTemplate != nil { caps.append(.string("tools")) }
        if reasoningFormat != nil { caps.append(.string("thinking")) }
        let d = modelDescription
        let params = "temperature 0.8\ntop_k 40\ntop_p 0.9\nnum_ctx \(engine.contextLength)"
        let template = chatTemplate?.source ?? ""
        let modelfile = "# Served by ktransformers-swift\nFROM \(config.modelID)\nTEMPLATE \"\"\"\(template)\"\"\"\n"
            + params.split(separator: "\n").map { "PARAMETER \($0)" }.joined(separator: "\n") + "\n"
        return Self.ndjsonValue(.object([
            ("license", .string("")), ("modelfile", .string(modelfile)), ("parameters", .string(params)),
            ("template", .string(template)), ("details", ollamaDetails), ("model_info", .object(d.info)),
            ("capabilities", .array(caps)), ("modified_at", .string(Self.timestamp(d.modifiedAt))),
        ]))
    }

    func ollamaBody(_ req: Request) async throws -> JSONValue {
        let data = try await readBody(req)
        guard RequestValidation.nestingDepth(data, limit: RequestValidation.maxNestingDepth) <= RequestValidation.maxNestingDepth else {
            throw OllamaError.bad("the request body nests JSON more than \(RequestValidation.maxNestingDepth) levels deep")
        }
        guard let text = String(data: data, encoding: .utf8), let v = try? JSONValue(parsing: text), v.objectValue != nil else {
            throw OllamaError.bad("the request body must be a JSON object")
        }
        return v
    }

    // MARK: Options

    /// Ollama's `options` (and `format`, `stream`) as generation parameters. Ollama's defaults: temperature 0.8,
    /// top_k 40, top_p 0.9; `num_predict` -1 (until the end or the context is full). Options of the model's
    /// loading (num_ctx, num_gpu, ...) are accepted and ignored; a wrong type is a 400.
    func ollamaParameters(_ body: JSONValue, defaultStream: Bool = true) throws -> GenerationParameters {
        let o = body["options"] ?? .object([])
        guard o.objectValue != nil || o == .null else { throw OllamaError.bad("options must be an object") }
        func num(_ k: String) throws -> Double? {
            guard let v = o[k], v != .null else { return nil }
            guard let d = v.numberValue else { throw OllamaError.bad("option \(k) must be a number") }
            return d
        }
        var f = CommonFields()
        f.temperature = try num("temperature") ?? 0.8
        f.topK = try num("top_k").map { Int($0) } ?? 40
        f.topP = try num("top_p") ?? 0.9
        f.minP = try num("min_p")
        f.seed = try num("seed").map { Int64($0) }
        f.presencePenalty = try num("presence_penalty")
        f.frequencyPenalty = try num("frequency_penalty")
        f.repetitionPenalty = try num("repeat_penalty").flatMap { $0 > 0 ? $0 : nil }
        if let n = try num("num_predict"), n >= 1 { f.maxTokens = Int(n) }
        if let s = o["stop"], s != .null {
            guard let list = s.arrayValue?.compactMap(\.stringValue), list.count == s.arrayValue?.count else {
                throw OllamaError.bad("option stop must be a list of strings")
            }
            f.stop = .many(list)
        }
        if let t = f.temperature, t > 2 { f.temperature = 2 }
        if let p = f.topP, p <= 0 { f.topP = 1 }
        if let k = f.topK, k < 0 { f.topK = 0 }
        switch body["stream"] {
        case nil, .null?: f.stream = defaultStream
        case .bool(let b)?: f.stream = b
        default: throw OllamaError.bad("stream must be a boolean")
        }
        return try RequestValidation.parameters(f, logprobs: nil, limits: limits)
    }

    /// `format`: "json" or a JSON schema.
    func ollamaFormat(_ body: JSONValue) throws -> ResponseFormat {
        switch body["format"] {
        case nil, .null?, .string("")?: return .text
        case .string("json")?: return .jsonObject
        case let v? where v.objectValue != nil: return .jsonSchema(name: "format", schema: v)
        default: throw OllamaError.bad("format must be \"json\" or a JSON schema object")
        }
    }

    // MARK: Chat and generate

    /// Ollama messages → the OpenAI-style messages the chat path reads (tool calls with JSON-text arguments).
    func ollamaMessages(_ list: [JSONValue]) throws -> [JSONValue] {
        try list.enumerated().map { i, m in
            guard let o = m.objectValue, let role = m["role"]?.stringValue else {
                throw OllamaError.bad("messages[\(i)] must be an object with a role")
            }
            guard ["system", "user", "assistant", "tool"].contains(role) else {
                throw OllamaError.bad("messages[\(i)]: invalid role '\(role)'")
            }
            if let images = m["images"]?.arrayValue, !images.isEmpty {
                throw OllamaError.bad("messages[\(i)]: images are not supported (the model reads text only)")
            }
            var out: [(String, JSONValue)] = []
            for (k, v) in o where k != "images" && k != "tool_calls" && k != "thinking" && k != "tool_name" {
                out.append((k, v))
            }
            if out.first(where: { $0.0 == "content" }) == nil { out.append(("content", .string(""))) }
            if let name = m["tool_name"]?.stringValue { out.append(("name", .string(name))) }
            if let thinking = m["thinking"]?.stringValue, !thinking.isEmpty { out.append(("reasoning_content", .string(thinking))) }
            if let calls = m["tool_calls"]?.arrayValue {
                out.append(("tool_calls", .array(calls.enumerated().map { j, c in
                    let f = c["function"] ?? .object([])
                    let args = f["arguments"] ?? .object([])
                    return .object([("id", .string("call_\(i)_\(j)")), ("type", .string("function")),
                                    ("function", .object([("name", f["name"] ?? .string("")),
                                                          ("arguments", .string(args.stringValue ?? args.compactText))]))])
                })))
            }
            return .object(out)
        }
    }

    func ollamaChat(_ req: Request, _ ctx: ServerContext) async throws -> Response {
        let body = try await ollamaBody(req)
        let name = try ollamaModel(body)
        guard let list = body["messages"]?.arrayValue else {
            // Ollama loads the model for an empty request; here it is always loaded.
            if body["messages"] == nil || body["messages"] == .null {
                return Self.ndjsonValue(.object([("model", .string(name)), ("created_at", .string(Self.timestamp())),
                                                 ("message", .object([("role", .string("assistant")), ("content", .string(""))])),
                                                 ("done_reason", .string("load")), ("done", .bool(true))]))
            }
            throw OllamaError.bad("messages must be a list")
        }
        guard !list.isEmpty else {
            return Self.ndjsonValue(.object([("model", .string(name)), ("created_at", .string(Self.timestamp())),
                                             ("message", .object([("role", .string("assistant")), ("content", .string(""))])),
                                             ("done_reason", .string("load")), ("done", .bool(true))]))
        }
        let params = try ollamaParameters(body)
        var fields: [(String, JSONValue)] = [("messages", .array(try ollamaMessages(list)))]
        if let t = body["tools"] { fields.append(("tools", t)) }
        var x = try ChatExtras.parse(.object(fields))
        x.responseFormat = try ollamaFormat(body)
        let think = try ollamaThink(body)
        if think == false { x.chatTemplateKwargs.append(("enable_thinking", .bool(false))) }
        var plan = try planChat(x)
        if think == false { plan.reasoningFormat = nil }
        return try await ollamaRun(plan: plan, params: params, name: name, chat: true, ctx: ctx)
    }

    /// `think`: true / false / nil (the model's default); "high"/"medium"/"low" count as true.
    func ollamaThink(_ body: JSONValue) throws -> Bool? {
        switch body["think"] {
        case nil, .null?: return nil
        case .bool(let b)?:
            if b && reasoningFormat == nil { throw OllamaError.bad("\"\(ollamaName)\" does not support thinking") }
            return b
        case .string(let s)? where ["high", "medium", "low"].contains(s):
            if reasoningFormat == nil { throw OllamaError.bad("\"\(ollamaName)\" does not support thinking") }
            return true
        default: throw OllamaError.bad("think must be a boolean or \"high\", \"medium\", \"low\"")
        }
    }

    func ollamaGenerate(_ req: Request, _ ctx: ServerContext) async throws -> Response {
        let body = try await ollamaBody(req)
        let name = try ollamaModel(body)
        let prompt = body["prompt"]?.stringValue ?? ""
        if let images = body["images"]?.arrayValue, !images.isEmpty {
            throw OllamaError.bad("images are not supported (the model reads text only)")
        }
        if let s = body["suffix"]?.stringValue, !s.isEmpty { throw OllamaError.bad("suffix (fill-in-the-middle) is not supported") }
        if let t = body["template"]?.stringValue, !t.isEmpty {
            throw OllamaError.bad("template overrides are not supported; the model's chat template is used (or raw: true)")
        }
        guard !prompt.isEmpty else {
            return Self.ndjsonValue(.object([("model", .string(name)), ("created_at", .string(Self.timestamp())),
                                             ("response", .string("")), ("done_reason", .string("load")), ("done", .bool(true))]))
        }
        let params = try ollamaParameters(body)
        let raw = body["raw"]?.boolValue ?? false
        var plan: ChatPlan
        if raw || chatTemplate == nil {
            plan = ChatPlan(prompt: encodePrompt(prompt))
            plan.grammar = try OutputGrammars.responseFormat(try ollamaFormat(body))
        } else {
            var messages: [JSONValue] = []
            if let sys = body["system"]?.stringValue, !sys.isEmpty {
                messages.append(.object([("role", .string("system")), ("content", .string(sys))]))
            }
            messages.append(.object([("role", .string("user")), ("content", .string(prompt))]))
            var x = ChatExtras()
            x.messages = messages
            x.responseFormat = try ollamaFormat(body)
            let think = try ollamaThink(body)
            if think == false { x.chatTemplateKwargs.append(("enable_thinking", .bool(false))) }
            plan = try planChat(x)
            if think == false { plan.reasoningFormat = nil }
        }
        // `context` (deprecated in Ollama, still sent by clients): the tokens of an earlier exchange go first.
        if let c = body["context"]?.arrayValue, !c.isEmpty {
            let ids = try checkIDs(c.compactMap { $0.numberValue.map { Int($0) } })
            plan.prompt = ids + plan.prompt
        }
        return try await ollamaRun(plan: plan, params: params, name: name, chat: false, ctx: ctx)
    }

    /// Runs one answer and writes it Ollama's way: NDJSON chunks then a final object with the timings, or one
    /// object.
    func ollamaRun(plan: ChatPlan, params: GenerationParameters, name: String, chat: Bool, ctx: ServerContext) async throws -> Response {
        let id = Self.newID(chat ? "ollama-chat-" : "ollama-gen-")
        let gens = try startChoices(id: id, prompt: plan.prompt, params: params, grammar: plan.grammar,
                                    keepSpecial: plan.toolFormat != nil ? markerTokens : [],
                                    defaultMaxTokens: engine.contextLength, param: chat ? "messages" : "prompt", ctx: ctx)
        let g = gens[0]
        let start = DispatchTime.now().uptimeNanoseconds
        @Sendable func final(usage: Usage, reason: String, extra: [(String, JSONValue)]) -> JSONValue {
            let end = DispatchTime.now().uptimeNanoseconds
            let first = g.firstTokenAt.withLockedValue { $0 } ?? end
            func ns(_ v: UInt64) -> JSONValue { .number(Double(v), String(v)) }
            func int(_ v: Int) -> JSONValue { .number(Double(v), String(v)) }
            var o: [(String, JSONValue)] = [("model", .string(name)), ("created_at", .string(Self.timestamp()))]
            o += extra
            o += [("done", .bool(true)), ("done_reason", .string(reason == "length" ? "length" : reason == "abort" ? "abort" : "stop")),
                  ("total_duration", ns(end &- start)), ("load_duration", ns(0)),
                  ("prompt_eval_count", int(usage.promptTokens - usage.cachedTokens)), ("prompt_eval_duration", ns(first &- start)),
                  ("eval_count", int(usage.completionTokens)), ("eval_duration", ns(end &- first))]
            if !chat {
                let ctxTokens = plan.prompt + g.generatedTokens.withLockedValue { $0 }
                o.append(("context", .array(ctxTokens.map { .number(Double($0), String($0)) })))
            }
            return .object(o)
        }
        @Sendable func ollamaCalls(_ calls: [(String, String)]) -> JSONValue {
            .array(calls.map { name, args in
                .object([("function", .object([("name", .string(name)),
                                               ("arguments", (try? JSONValue(parsing: args)) ?? .object([]))]))])
            })
        }
        @Sendable func message(content: String, thinking: String, calls: [(String, String)]) -> JSONValue {
            var m: [(String, JSONValue)] = [("role", .string("assistant")), ("content", .string(content))]
            if !thinking.isEmpty { m.append(("thinking", .string(thinking))) }
            if !calls.isEmpty { m.append(("tool_calls", ollamaCalls(calls))) }
            return .object(m)
        }
        if !params.stream {
            let (choice, usage) = try await g.collectChatChoice(index: 0, parser: plan.parser())
            let m = choice.message
            let calls = m.toolCalls.map { ($0.function.name, $0.function.arguments) }
            let reason = choice.finishReason == "tool_calls" ? "stop" : choice.finishReason ?? "stop"
            let extra: [(String, JSONValue)] = chat
                ? [("message", message(content: m.content ?? "", thinking: m.reasoningContent ?? "", calls: calls))]
                : [("response", .string(m.content ?? ""))] + ((m.reasoningContent ?? "").isEmpty ? [] : [("thinking", .string(m.reasoningContent!))])
            return Self.ndjsonValue(final(usage: usage, reason: reason, extra: extra))
        }
        var h = HTTPFields()
        h[.contentType] = "application/x-ndjson"
        return Response(status: .ok, headers: h, body: ResponseBody { writer in
            let (events, sink) = AsyncStream<ChatChunkChoice>.makeStream()
            let producer = Task { () throws -> Usage in
                defer { sink.finish() }
                return try await g.streamChatChoice(index: 0, parser: plan.parser()) { sink.yield($0) }
            }
            var reason = "stop"
            do {
                for await c in events {
                    if let f = c.finishReason { reason = f == "tool_calls" ? "stop" : f; continue }
                    let d = c.delta
                    let calls = (d.toolCalls ?? []).map { ($0.function.name ?? "", $0.function.arguments ?? "{}") }
                    let content = d.content ?? ""
                    let thinking = d.reasoningContent ?? ""
                    if content.isEmpty && thinking.isEmpty && calls.isEmpty { continue }
                    var o: [(String, JSONValue)] = [("model", .string(name)), ("created_at", .string(Self.timestamp()))]
                    if chat {
                        o.append(("message", message(content: content, thinking: thinking, calls: calls)))
                    } else {
                        o.append(("response", .string(content)))
                        if !thinking.isEmpty { o.append(("thinking", .string(thinking))) }
                    }
                    o.append(("done", .bool(false)))
                    try await writer.write(ByteBuffer(string: JSONValue.object(o).compactText + "\n"))
                }
            } catch {
                producer.cancel()
                throw error
            }
            let usage = try await producer.value
            let extra: [(String, JSONValue)] = chat
                ? [("message", .object([("role", .string("assistant")), ("content", .string(""))]))]
                : [("response", .string(""))]
            var last = final(usage: usage, reason: reason, extra: extra)
            if g.wasEndedByShutdown, case .object(var o) = last {
                o.append(("error", .string("the server is shutting down")))
                last = .object(o)
            }
            try await writer.write(ByteBuffer(string: last.compactText + "\n"))
            try await writer.finish(nil)
        })
    }
}
