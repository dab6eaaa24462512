import Foundation

// The OpenAI wire format: every request and response body of /v1/chat/completions, /v1/completions and /v1/models.
// Field names are the wire names (snake_case through CodingKeys). Requests decode leniently (unknown keys are
// ignored, as OpenAI does); `RequestValidation.swift` turns them into checked `GenerationParameters`.

// MARK: - Requests

/// `stop`: one string or a list of strings.
public enum StopField: Decodable, Sendable, Equatable {
    case one(String)
    case many([String])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let s = try? c.decode(String.self) { self = .one(s); return }
        if let a = try? c.decode([String].self) { self = .many(a); return }
        throw DecodingError.typeMismatch(StopField.self, .init(codingPath: decoder.codingPath,
            debugDescription: "expected a string or an array of strings"))
    }

    public var strings: [String] {
        switch self {
        case .one(let s): [s]
        case .many(let a): a
        }
    }
}

public struct StreamOptions: Decodable, Sendable, Equatable {
    public var includeUsage: Bool?
    enum CodingKeys: String, CodingKey { case includeUsage = "include_usage" }
}

/// A chat message's `content`: a string, a list of parts (`{"type": "text", "text": ...}`), or null.
public enum MessageContent: Decodable, Sendable, Equatable {
    case text(String)
    case parts([ContentPart])
    case none

    public struct ContentPart: Decodable, Sendable, Equatable {
        public var type: String
        public var text: String?
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .none; return }
        if let s = try? c.decode(String.self) { self = .text(s); return }
        if let p = try? c.decode([ContentPart].self) { self = .parts(p); return }
        throw DecodingError.typeMismatch(MessageContent.self, .init(codingPath: decoder.codingPath,
            debugDescription: "expected a string or an array of content parts"))
    }
}

public struct ChatMessage: Decodable, Sendable, Equatable {
    public var role: String
    public var content: MessageContent?
    public var name: String?
    /// An assistant message's tool calls (checked here; the template gets them from `ChatExtras.messages`).
    public var toolCalls: [ToolCallIn]?
    /// A tool message's answer to this call id.
    public var toolCallID: String?

    public struct ToolCallIn: Decodable, Sendable, Equatable {
        public var id: String?
        public var type: String?
        public var function: Function
        public struct Function: Decodable, Sendable, Equatable {
            public var name: String
            public var arguments: String?
        }
    }

    enum CodingKeys: String, CodingKey {
        case role, content, name
        case toolCalls = "tool_calls", toolCallID = "tool_call_id"
    }

    public init(role: String, content: String) {
        self.role = role
        self.content = .text(content)
    }
}

/// The fields both endpoints share (sampling, limits, streaming).
public struct CommonFields: Decodable, Sendable, Equatable {
    public var model: String?
    public var maxTokens: Int?
    public var maxCompletionTokens: Int?
    public var stop: StopField?
    public var temperature: Double?
    public var topP: Double?
    public var topK: Int?
    public var minP: Double?
    public var seed: Int64?
    public var presencePenalty: Double?
    public var frequencyPenalty: Double?
    public var repetitionPenalty: Double?
    public var n: Int?
    public var stream: Bool?
    public var streamOptions: StreamOptions?
    public var ignoreEOS: Bool?
    public var logitBias: [String: Double]?
    /// Accepted and ignored (an end-user id for abuse monitoring at OpenAI).
    public var user: String?

    enum CodingKeys: String, CodingKey {
        case model, stop, temperature, seed, n, stream
        case maxTokens = "max_tokens", maxCompletionTokens = "max_completion_tokens"
        case topP = "top_p", topK = "top_k", minP = "min_p"
        case presencePenalty = "presence_penalty", frequencyPenalty = "frequency_penalty"
        case repetitionPenalty = "repetition_penalty"
        case streamOptions = "stream_options", ignoreEOS = "ignore_eos", logitBias = "logit_bias", user
    }

    public init() {}
}

public struct ChatCompletionRequest: Decodable, Sendable {
    public var common: CommonFields
    public var messages: [ChatMessage]
    public var logprobs: Bool?
    public var topLogprobs: Int?

    enum CodingKeys: String, CodingKey {
        case messages, logprobs
        case topLogprobs = "top_logprobs"
        case functions
        case functionCall = "function_call"
    }

    public init(from decoder: Decoder) throws {
        common = try CommonFields(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        messages = try c.decode([ChatMessage].self, forKey: .messages)
        logprobs = try c.decodeIfPresent(Bool.self, forKey: .logprobs)
        topLogprobs = try c.decodeIfPresent(Int.self, forKey: .topLogprobs)
        // NOTE: the deprecated function-calling fields are refused rather than ignored (a client asking for a
        // function call must not silently get free text); `tools` and `tool_choice` replace them. Tools, tool
        // choice and response format are read from the order-preserving parse of the body (`ChatExtras`).
        func present(_ k: CodingKeys) throws -> Bool { c.contains(k) ? !(try c.decodeNil(forKey: k)) : false }
        for k in [CodingKeys.functions, .functionCall] where try present(k) {
            if k == .functions, let list = try? c.decode([JSONAny].self, forKey: k), list.isEmpty { continue }
            if k == .functionCall, let s = try? c.decode(String.self, forKey: k), s == "none" || s == "auto" { continue }
            throw UnsupportedField(name: k.stringValue)
        }
    }
}

/// `prompt`: a string, a list of one string, a list of token ids, or a list of one list of token ids.
public enum PromptField: Decodable, Sendable, Equatable {
    case text(String)
    case texts([String])
    case tokens([Int])
    case tokenLists([[Int]])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let s = try? c.decode(String.self) { self = .text(s); return }
        if let a = try? c.decode([String].self) { self = .texts(a); return }
        if let a = try? c.decode([Int].self) { self = .tokens(a); return }
        if let a = try? c.decode([[Int]].self) { self = .tokenLists(a); return }
        throw DecodingError.typeMismatch(PromptField.self, .init(codingPath: decoder.codingPath,
            debugDescription: "expected a string, an array of strings, or an array of token ids"))
    }
}

public struct CompletionRequest: Decodable, Sendable {
    public var common: CommonFields
    public var prompt: PromptField
    /// Legacy logprobs: the number of alternatives per token (0 = the sampled token's only).
    public var logprobs: Int?
    public var echo: Bool?
    public var suffix: String?
    public var bestOf: Int?

    enum CodingKeys: String, CodingKey {
        case prompt, logprobs, echo, suffix
        case bestOf = "best_of"
    }

    public init(from decoder: Decoder) throws {
        common = try CommonFields(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        prompt = try c.decode(PromptField.self, forKey: .prompt)
        logprobs = try c.decodeIfPresent(Int.self, forKey: .logprobs)
        echo = try c.decodeIfPresent(Bool.self, forKey: .echo)
        suffix = try c.decodeIfPresent(String.self, forKey: .suffix)
        bestOf = try c.decodeIfPresent(Int.self, forKey: .bestOf)
    }
}

// MARK: - Responses

public struct Usage: Encodable, Sendable, Equatable {
    public var promptTokens: Int
    public var completionTokens: Int
    /// Prompt tokens served from the prefix cache (`prompt_tokens_details.cached_tokens`, as OpenAI reports it).
    public var cachedTokens: Int
    public var totalTokens: Int { promptTokens + completionTokens }

    public init(promptTokens: Int, completionTokens: Int, cachedTokens: Int = 0) {
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.cachedTokens = cachedTokens
    }

    enum CodingKeys: String, CodingKey {
        case promptTokens = "prompt_tokens", completionTokens = "completion_tokens", totalTokens = "total_tokens"
        case promptTokensDetails = "prompt_tokens_details"
    }

    struct PromptTokensDetails: Encodable {
        var cachedTokens: Int
        enum CodingKeys: String, CodingKey { case cachedTokens = "cached_tokens" }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(promptTokens, forKey: .promptTokens)
        try c.encode(completionTokens, forKey: .completionTokens)
        try c.encode(totalTokens, forKey: .totalTokens)
        try c.encode(PromptTokensDetails(cachedTokens: cachedTokens), forKey: .promptTokensDetails)
    }
}

/// Chat logprobs: one entry per generated token.
public struct ChatLogprobEntry: Encodable, Sendable, Equatable {
    public var token: String
    public var logprob: Float
    public var bytes: [UInt8]
    public var topLogprobs: [Alternative]

    public struct Alternative: Encodable, Sendable, Equatable {
        public var token: String
        public var logprob: Float
        public var bytes: [UInt8]
    }

    enum CodingKeys: String, CodingKey { case token, logprob, bytes, topLogprobs = "top_logprobs" }
}

public struct ChatLogprobs: Encodable, Sendable, Equatable {
    public var content: [ChatLogprobEntry]
}

/// Legacy completions logprobs (parallel arrays).
public struct CompletionLogprobs: Encodable, Sendable, Equatable {
    public var tokens: [String] = []
    public var tokenLogprobs: [Float] = []
    public var topLogprobs: [[String: Float]] = []
    public var textOffset: [Int] = []

    enum CodingKeys: String, CodingKey {
        case tokens, tokenLogprobs = "token_logprobs", topLogprobs = "top_logprobs", textOffset = "text_offset"
    }
}

public struct ResponseMessage: Encodable, Sendable, Equatable {
    public var role: String
    /// null when the answer is only tool calls.
    public var content: String?
    /// The reasoning (thinking) of a reasoning model, apart from the answer; absent for other models.
    public var reasoningContent: String?
    public var toolCalls: [ToolCallOut] = []

    public init(role: String, content: String?, reasoningContent: String? = nil, toolCalls: [ToolCallOut] = []) {
        self.role = role
        self.content = content
        self.reasoningContent = reasoningContent
        self.toolCalls = toolCalls
    }

    enum CodingKeys: String, CodingKey { case role, content, reasoningContent = "reasoning_content", toolCalls = "tool_calls" }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(role, forKey: .role)
        try c.encode(content, forKey: .content)
        try c.encodeIfPresent(reasoningContent, forKey: .reasoningContent)
        if !toolCalls.isEmpty { try c.encode(toolCalls, forKey: .toolCalls) }
    }
}

/// A tool call of a response (`message.tool_calls[i]`).
public struct ToolCallOut: Encodable, Sendable, Equatable {
    public var id: String
    public var type = "function"
    public var function: Function

    public struct Function: Encodable, Sendable, Equatable {
        public var name: String
        /// JSON text.
        public var arguments: String
    }

    public init(id: String, name: String, arguments: String) {
        self.id = id
        function = Function(name: name, arguments: arguments)
    }
}

/// A streamed tool call (`delta.tool_calls[i]`): the first delta of a call has its id, type and name.
public struct ToolCallDelta: Encodable, Sendable, Equatable {
    public var index: Int
    public var id: String?
    public var type: String?
    public var function: Function

    public struct Function: Encodable, Sendable, Equatable {
        public var name: String?
        public var arguments: String?
    }
}

public struct ChatChoice: Encodable, Sendable {
    public var index: Int
    public var message: ResponseMessage
    public var logprobs: ChatLogprobs?
    public var finishReason: String?

    enum CodingKeys: String, CodingKey { case index, message, logprobs, finishReason = "finish_reason" }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(index, forKey: .index)
        try c.encode(message, forKey: .message)
        try c.encode(logprobs, forKey: .logprobs)  // null when absent, as OpenAI writes it
        try c.encode(finishReason, forKey: .finishReason)
    }
}


public struct ChunkDelta: Encodable, Sendable, Equatable {
    public var role: String?
    public var content: String?
    public var reasoningContent: String?
    public var toolCalls: [ToolCallDelta]?

    public init(role: String? = nil, content: String? = nil, reasoningContent: String? = nil, toolCalls: [ToolCallDelta]? = nil) {
        self.role = role
        self.content = content
        self.reasoningContent = reasoningContent
        self.toolCalls = toolCalls
    }

    enum CodingKeys: String, CodingKey { case role, content, reasoningContent = "reasoning_content", toolCalls = "tool_calls" }
}

public struct ChatChunkChoice: Encodable, Sendable {
    public var index: Int
    public var delta: ChunkDelta
    public var logprobs: ChatLogprobs?
    public var finishReason: String?

    enum CodingKeys: String, CodingKey { case index, delta, logprobs, finishReason = "finish_reason" }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(index, forKey: .index)
        try c.encode(delta, forKey: .delta)
        try c.encode(logprobs, forKey: .logprobs)
        try c.encode(finishReason, forKey: .finishReason)
    }
}


public struct CompletionChoice: Encodable, Sendable {
    public var index: Int
    public var text: String
    public var logprobs: CompletionLogprobs?
    public var finishReason: String?

    enum CodingKeys: String, CodingKey { case index, text, logprobs, finishReason = "finish_reason" }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(index, forKey: .index)
        try c.encode(text, forKey: .text)
        try c.encode(logprobs, forKey: .logprobs)
        try c.encode(finishReason, forKey: .finishReason)
    }
}

/// A choice of a completion response or chunk, and the `object` name of the responses that carry it.
public protocol ResponseChoice: Encodable, Sendable {
    static var object: String { get }
    /// Whether responses write `usage` unless told otherwise (streamed chat chunks only with `include_usage`).
    static var usageByDefault: Bool { get }
}

extension ChatChoice: ResponseChoice {
    public static var object: String { "chat.completion" }
    public static var usageByDefault: Bool { true }
}

extension ChatChunkChoice: ResponseChoice {
    public static var object: String { "chat.completion.chunk" }
    public static var usageByDefault: Bool { false }
}

extension CompletionChoice: ResponseChoice {
    /// OpenAI uses `text_completion` for the non-streaming response and for each streamed chunk.
    public static var object: String { "text_completion" }
    public static var usageByDefault: Bool { true }
}

/// Every completion response and streamed chunk: id, object, created, model, choices, usage. Written by hand
/// because OpenAI writes `system_fingerprint` (and `usage`, where a response has the key) as explicit nulls,
/// which synthesized Codable would leave out.
public struct CompletionEnvelope<Choice: ResponseChoice>: Encodable, Sendable {
    public var id: String
    public var object = Choice.object
    public var created: Int
    public var model: String
    public var choices: [Choice]
    /// On a streamed chat chunk, only with `stream_options.include_usage`: null on every chunk but the last,
    /// which has no choices.
    public var usage: Usage?
    public var includeUsageKey = Choice.usageByDefault

    enum CodingKeys: String, CodingKey { case id, object, created, model, choices, usage, systemFingerprint = "system_fingerprint" }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(object, forKey: .object)
        try c.encode(created, forKey: .created)
        try c.encode(model, forKey: .model)
        try c.encode(String?.none, forKey: .systemFingerprint)
        try c.encode(choices, forKey: .choices)
        if includeUsageKey { try c.encode(usage, forKey: .usage) }
    }
}

public typealias ChatCompletionResponse = CompletionEnvelope<ChatChoice>
public typealias ChatCompletionChunk = CompletionEnvelope<ChatChunkChoice>
public typealias CompletionResponse = CompletionEnvelope<CompletionChoice>

public struct ModelCard: Encodable, Sendable {
    public var id: String
    public var object = "model"
    public var created: Int
    public var ownedBy = "ktransformers"
    /// Extension: the context length requests are checked against.
    public var maxModelLen: Int

    enum CodingKeys: String, CodingKey { case id, object, created, ownedBy = "owned_by", maxModelLen = "max_model_len" }
}

public struct ModelList: Encodable, Sendable {
    public var object = "list"
    public var data: [ModelCard]
}

/// A request field this server does not support yet, where ignoring it would change the meaning of the answer.
struct UnsupportedField: Error {
    let name: String
}

/// Any JSON value, skipped (only its presence matters).
struct JSONAny: Decodable {
    init(from decoder: Decoder) throws {}
}
