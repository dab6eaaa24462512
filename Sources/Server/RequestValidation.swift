import ChatTemplate
import Engine
import Foundation

/// A request's generation settings after validation: what the output path and the engine need.
public struct GenerationParameters: Sendable, Equatable {
    public var sampling: SamplingParams
    /// nil: the server's default (`--max-new-tokens` for chat, 16 for completions, as OpenAI).
    public var maxTokens: Int?
    public var stop: [String]
    /// nil: no logprobs; 0: the sampled token's; K: plus K alternatives.
    public var logprobs: Int?
    public var stream: Bool
    public var includeUsage: Bool
    public var ignoreEOS: Bool
    /// Choices to generate (`n`), each sampled independently from one shared prompt prefill.
    public var n = 1
}

/// Limits the checks use (from `ServerConfig` and the model).
public struct ValidationLimits: Sendable {
    public var maxStopStrings = 16
    public var maxStopLength = 256
    public var maxTopLogprobs = 20
    /// Choices per request at most (`n`).
    public var maxN = 16
    public var vocabSize: Int

    public init(vocabSize: Int) { self.vocabSize = vocabSize }
}

public enum RequestValidation {
    /// Decodes a JSON body into `T`, turning every decoding failure into a 400 that names the parameter.
    public static func decode<T: Decodable>(_ type: T.Type, from data: Data) throws -> T {
        guard !data.isEmpty else { throw APIError.invalid("The request body is empty; expected a JSON object.") }
        // NOTE: before any parser sees it: Foundation's decoder (and every other recursive walk of the value)
        // recurses once per nesting level, so a body nested 100,000 deep would exhaust the stack.
        guard nestingDepth(data, limit: maxNestingDepth) <= maxNestingDepth else {
            throw APIError.invalid("The request body nests JSON arrays or objects more than \(maxNestingDepth) levels deep.")
        }
        do {
            return try JSONDecoder().decode(T.self, from: data)
        } catch let e as UnsupportedField {
            throw APIError.invalid("'\(e.name)' (deprecated function calling) is not supported; use 'tools' and 'tool_choice'.",
                                   param: e.name, code: "unsupported_parameter")
        } catch let e as DecodingError {
            if case .dataCorrupted(let ctx) = e, ctx.codingPath.isEmpty, let precise = diagnoseNumbers(data) { throw precise }
            throw apiError(e)
        } catch {
            throw APIError.invalid("The request body is not valid JSON.")
        }
    }

    /// Deepest nesting of arrays and objects a request body may have (real requests need fewer than 10).
    public static let maxNestingDepth = 128

    /// The deepest nesting of `[` / `{` in `data` outside strings, counting stops once past `limit`.
    static func nestingDepth(_ data: Data, limit: Int) -> Int {
        var depth = 0, deepest = 0, inString = false, escaped = false
        for b in data {
            if inString {
                if escaped { escaped = false } else if b == UInt8(ascii: "\\") { escaped = true } else if b == UInt8(ascii: "\"") { inString = false }
                continue
            }
            switch b {
            case UInt8(ascii: "\""): inString = true
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                depth += 1
                if depth > deepest {
                    deepest = depth
                    if deepest > limit { return deepest }
                }
            case UInt8(ascii: "]"), UInt8(ascii: "}"): depth -= 1
            default: break
            }
        }
        return deepest
    }

    static let integerKeys: Set<String> = ["max_tokens", "max_completion_tokens", "top_k", "n", "seed", "top_logprobs",
                                           "logprobs", "best_of"]
    static let numberKeys: Set<String> = ["temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                                          "repetition_penalty"]

    /// Foundation's decoder rejects a whole document as "not valid JSON" when a number does not fit its field
    /// (1e300 for an Int, 1e400 anywhere). Re-parse with a lenient parser to name the parameter.
    static func diagnoseNumbers(_ data: Data) -> APIError? {
        guard let text = String(data: data, encoding: .utf8), let v = try? JinjaValue(jsonText: text),
              case .object(let o) = v else { return nil }
        for (k, val) in o {
            if integerKeys.contains(k), case .double(let d) = val {
                return .invalid("Invalid value for '\(k)': expected an integer that fits in 64 bits; got \(d).",
                                param: k, code: "invalid_value")
            }
            if numberKeys.contains(k), case .double(let d) = val, !d.isFinite {
                return .invalid("Invalid value for '\(k)': the number is out of range.", param: k, code: "invalid_value")
            }
        }
        return nil
    }

    static func path(_ p: [CodingKey]) -> String {
        var s = ""
        for k in p {
            if let i = k.intValue { s += "[\(i)]" } else { s += s.isEmpty ? k.stringValue : "." + k.stringValue }
        }
        return s
    }

    static func typeName(_ t: Any.Type) -> String {
        switch t {
        case is String.Type: "a string"
        case is Bool.Type: "a boolean"
        case is Int.Type, is Int64.Type: "an integer"
        case is Double.Type, is Float.Type: "a number"
        case is StopField.Type: "a string or an array of strings"
        case is PromptField.Type: "a string, an array of strings or an array of token ids"
        case is MessageContent.Type: "a string or an array of content parts"
        default:
            String(describing: t).hasPrefix("Array") ? "an array" : "an object"
        }
    }

    static func apiError(_ e: DecodingError) -> APIError {
        switch e {
        case .typeMismatch(let t, let ctx):
            let p = path(ctx.codingPath)
            if p.isEmpty { return .invalid("The request body must be a JSON object.") }
            return .invalid("Invalid type for '\(p)': expected \(typeName(t)).", param: p, code: "invalid_type")
        case .valueNotFound(let t, let ctx):
            let p = path(ctx.codingPath)
            return .invalid("'\(p)' must not be null: expected \(typeName(t)).", param: p, code: "invalid_type")
        case .keyNotFound(let k, let ctx):
            let p = path(ctx.codingPath + [k])
            return .invalid("Missing required parameter: '\(p)'.", param: p, code: "missing_required_parameter")
        case .dataCorrupted(let ctx):
            let p = path(ctx.codingPath)
            if p.isEmpty { return .invalid("The request body is not valid JSON (or not valid UTF-8).", code: "invalid_json") }
            return .invalid("Invalid value for '\(p)': \(ctx.debugDescription)", param: p, code: "invalid_value")
        @unknown default:
            return .invalid("The request body could not be decoded.")
        }
    }

    /// Checks the shared fields and builds the generation settings. `logprobs` is the already-normalised
    /// endpoint-specific value (nil, 0 or K).
    public static func parameters(_ f: CommonFields, logprobs: Int?, limits: ValidationLimits) throws -> GenerationParameters {
        func range(_ v: Double?, _ name: String, _ lo: Double, _ hi: Double, loOpen: Bool = false) throws {
            guard let v else { return }
            let ok = v.isFinite && (loOpen ? v > lo : v >= lo) && v <= hi
            if !ok {
                throw APIError.invalid("'\(name)' must be \(loOpen ? "greater than" : "at least") \(fmt(lo)) and at most \(fmt(hi)); got \(fmt(v)).",
                                       param: name, code: "invalid_value")
            }
        }
        if let n = f.n, n < 1 || n > limits.maxN {
            throw APIError.invalid("'n' must be between 1 and \(limits.maxN); got \(n).", param: "n", code: "invalid_value")
        }
        try range(f.temperature, "temperature", 0, 2)
        try range(f.topP, "top_p", 0, 1, loOpen: true)
        try range(f.minP, "min_p", 0, 1)
        try range(f.presencePenalty, "presence_penalty", -2, 2)
        try range(f.frequencyPenalty, "frequency_penalty", -2, 2)
        try range(f.repetitionPenalty, "repetition_penalty", 0, 10, loOpen: true)
        if let k = f.topK, k < -1 {
            throw APIError.invalid("'top_k' must be -1 or 0 (off) or a positive integer; got \(k).", param: "top_k", code: "invalid_value")
        }
        var bias: [Int32: Float] = [:]
        for (k, v) in f.logitBias ?? [:] {
            guard let id = Int(k), id >= 0, id < limits.vocabSize else {
                throw APIError.invalid("'logit_bias' key '\(k)' is not a token id of this model (0..<\(limits.vocabSize)).",
                                       param: "logit_bias", code: "invalid_value")
            }
            guard v.isFinite && v >= -100 && v <= 100 else {
                throw APIError.invalid("'logit_bias' values must be between -100 and 100; got \(fmt(v)) for token \(k).",
                                       param: "logit_bias", code: "invalid_value")
            }
            bias[Int32(id)] = Float(v)
        }
        var maxTokens: Int? = nil
        for (name, v) in [("max_completion_tokens", f.maxCompletionTokens), ("max_tokens", f.maxTokens)] {
            guard let v else { continue }
            guard v >= 1 else {
                throw APIError.invalid("'\(name)' must be at least 1; got \(v).", param: name, code: "invalid_value")
            }
            if maxTokens == nil { maxTokens = v }
        }
        let stop = f.stop?.strings ?? []
        if stop.count > limits.maxStopStrings {
            throw APIError.invalid("'stop' has \(stop.count) strings; at most \(limits.maxStopStrings) are allowed.", param: "stop", code: "invalid_value")
        }
        for s in stop where s.isEmpty || s.utf8.count > limits.maxStopLength {
            throw APIError.invalid("Every 'stop' string must be 1 to \(limits.maxStopLength) bytes long.", param: "stop", code: "invalid_value")
        }
        if let lp = logprobs, lp < 0 || lp > limits.maxTopLogprobs {
            throw APIError.invalid("The number of log-probabilities must be between 0 and \(limits.maxTopLogprobs); got \(lp).",
                                   param: "logprobs", code: "invalid_value")
        }

        var s = SamplingParams()
        // OpenAI's defaults: temperature 1, top_p 1, no top-k / min-p.
        s.temperature = Float(f.temperature ?? 1)
        s.topP = Float(f.topP ?? 1)
        s.topK = max(0, min(f.topK ?? 0, limits.vocabSize))
        s.minP = Float(f.minP ?? 0)
        s.seed = f.seed.map { UInt64(bitPattern: $0) }
        s.presencePenalty = Float(f.presencePenalty ?? 0)
        s.frequencyPenalty = Float(f.frequencyPenalty ?? 0)
        s.repetitionPenalty = Float(f.repetitionPenalty ?? 1)
        s.logitBias = bias
        return GenerationParameters(
            sampling: s, maxTokens: maxTokens, stop: stop, logprobs: logprobs, stream: f.stream ?? false,
            includeUsage: f.streamOptions?.includeUsage ?? false, ignoreEOS: f.ignoreEOS ?? false, n: f.n ?? 1)
    }

    /// Chat: `logprobs` (bool) + `top_logprobs` (0...20, needs `logprobs: true`).
    public static func chatLogprobs(_ r: ChatCompletionRequest, limits: ValidationLimits) throws -> Int? {
        if let t = r.topLogprobs {
            guard r.logprobs == true else {
                throw APIError.invalid("'top_logprobs' requires 'logprobs' to be true.", param: "top_logprobs", code: "invalid_value")
            }
            guard t >= 0 && t <= limits.maxTopLogprobs else {
                throw APIError.invalid("'top_logprobs' must be between 0 and \(limits.maxTopLogprobs); got \(t).",
                                       param: "top_logprobs", code: "invalid_value")
            }
            return t
        }
        return r.logprobs == true ? 0 : nil
    }

    /// Chat messages: non-empty, known roles, text content only.
    public static func checkMessages(_ messages: [ChatMessage]) throws {
        guard !messages.isEmpty else {
            throw APIError.invalid("'messages' must contain at least one message.", param: "messages", code: "invalid_value")
        }
        let roles: Set<String> = ["system", "developer", "user", "assistant", "tool"]
        for (i, m) in messages.enumerated() {
            guard roles.contains(m.role) else {
                throw APIError.invalid("Invalid role '\(m.role)' of 'messages[\(i)]': expected system, developer, user, assistant or tool.",
                                       param: "messages[\(i)].role", code: "invalid_value")
            }
            if case .parts(let parts) = m.content {
                for (j, p) in parts.enumerated() where p.type != "text" || p.text == nil {
                    throw APIError.invalid("Only text content parts are supported ('messages[\(i)].content[\(j)]' has type '\(p.type)').",
                                           param: "messages[\(i)].content[\(j)]", code: "invalid_value")
                }
            }
        }
    }

    static func fmt(_ v: Double) -> String {
        if v.isFinite && v == v.rounded() && abs(v) < 1e15 { return String(Int(v)) }
        return String(v)
    }
}

extension MessageContent {
    /// The text of the message (parts joined).
    public var text: String {
        switch self {
        case .text(let s): s
        case .parts(let p): p.compactMap(\.text).joined()
        case .none: ""
        }
    }
}
