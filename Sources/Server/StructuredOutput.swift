import ChatTemplate
import Engine
import Foundation
import Grammar
import NIOConcurrencyHelpers
import Tokenizer

/// The vocabulary as the grammar engine sees it: each token's bytes in a trie, built once per server (`serve`
/// builds it on its own thread after the load). Control tokens are left out (their text is never output) except
/// the markers of the tool-call format, which constrained tool calls write; the end-of-generation tokens are
/// allowed exactly when the grammar's sentence is complete.
public final class ConstraintVocabulary: Sendable {
    public let trie: TokenTrie
    public let endOfGeneration: Set<Int32>
    /// Rendered as text by the output path even though they are control tokens (tool-call markers).
    public let keptSpecial: Set<Int32>

    public init(tokenizer: Tokenizer, markers: [String]) {
        var kept = Set<Int32>()
        for m in markers { if let id = tokenizer.tokenID(for: m) { kept.insert(id) } }
        let eog = Set(tokenizer.endOfGenerationIDs)
        var bytes: [[UInt8]] = []
        bytes.reserveCapacity(tokenizer.vocabSize)
        for i in 0..<tokenizer.vocabSize {
            let id = Int32(i)
            if eog.contains(id) { bytes.append([]); continue }
            switch tokenizer.type(id) {
            case .control?, .unknown?, .unused?, .undefined?, nil:
                bytes.append(kept.contains(id) ? tokenizer.tokenBytes(id) : [])
            default:
                bytes.append(tokenizer.tokenBytes(id))
            }
        }
        trie = TokenTrie(tokenBytes: bytes)
        endOfGeneration = eog
        keptSpecial = kept
    }
}

/// A grammar over one request's output, as the engine's sampling constraint.
final class GrammarConstraint: SamplingConstraint, @unchecked Sendable {
    // NOTE: @unchecked: created by the request handler, then used only by the engine thread.
    let matcher: GrammarMatcher
    let vocabulary: ConstraintVocabulary
    private var ended = false
    private var allowed: [Bool] = []

    init(grammar: Grammar, vocabulary: ConstraintVocabulary) {
        matcher = GrammarMatcher(grammar: grammar)
        self.vocabulary = vocabulary
    }

    func allows(_ token: Int32) -> Bool {
        if vocabulary.endOfGeneration.contains(token) { return matcher.isAccepting }
        guard token >= 0 && Int(token) < vocabulary.trie.vocabSize else { return false }
        let b = vocabulary.trie.tokenBytes[Int(token)]
        return !b.isEmpty && matcher.accepts(b)
    }

    func mask(_ logits: UnsafeMutablePointer<Float>, count: Int) {
        if allowed.count != count { allowed = [Bool](repeating: false, count: count) }
        for i in 0..<count { allowed[i] = false }
        vocabulary.trie.forEachAllowed(matcher, from: matcher.current) { t in
            if Int(t) < count { allowed[Int(t)] = true }
        }
        if matcher.isAccepting { for t in vocabulary.endOfGeneration where Int(t) < count { allowed[Int(t)] = true } }
        for i in 0..<count where !allowed[i] { logits[i] = -.infinity }
    }

    func accept(_ token: Int32) {
        if vocabulary.endOfGeneration.contains(token) { ended = true; return }
        guard token >= 0 && Int(token) < vocabulary.trie.vocabSize,
              matcher.advance(vocabulary.trie.tokenBytes[Int(token)]) else {
            ended = true  // cannot happen: only allowed tokens are sampled
            return
        }
    }

    var isComplete: Bool { ended || matcher.isComplete }
}

// MARK: - What a chat request asks for

/// One `tools` entry (type "function").
public struct ToolDefinition: Sendable {
    public var name: String
    /// The parameters' JSON schema (an empty object schema when absent).
    public var parameters: JSONValue
    /// The whole entry as the client sent it, for the chat template.
    public var raw: JSONValue
}

public enum ToolChoice: Sendable, Equatable {
    case none, auto, required
    case function(String)
}

public enum ResponseFormat: Sendable {
    case text
    case jsonObject
    case jsonSchema(name: String, schema: JSONValue)
}

/// The parts of a chat request the typed decoder does not keep: tools, tool choice, response format and the
/// messages as the template sees them, read from the order-preserving parse of the body.
public struct ChatExtras: Sendable {
    public var tools: [ToolDefinition] = []
    public var toolChoice: ToolChoice = .auto
    public var parallelToolCalls = true
    public var responseFormat: ResponseFormat = .text
    public var messages: [JSONValue] = []
    public var chatTemplateKwargs: [(String, JSONValue)] = []

    /// Whether tool calls are parsed out of the output.
    public var parsesToolCalls: Bool { !tools.isEmpty && toolChoice != .none }

    static let toolNameCharacters = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")

    public static func parse(_ body: JSONValue) throws -> ChatExtras {
        var x = ChatExtras()
        x.messages = body["messages"]?.arrayValue ?? []
        if let t = body["tools"], t != .null {
            guard let list = t.arrayValue else {
                throw APIError.invalid("'tools' must be an array of tool objects.", param: "tools", code: "invalid_type")
            }
            for (i, tool) in list.enumerated() {
                let p = "tools[\(i)]"
                guard tool["type"]?.stringValue == "function" else {
                    throw APIError.invalid("'\(p).type' must be \"function\" (the only tool type supported).", param: p + ".type",
                                           code: "invalid_value")
                }
                guard let f = tool["function"], f.objectValue != nil else {
                    throw APIError.invalid("Missing required parameter: '\(p).function'.", param: p + ".function",
                                           code: "missing_required_parameter")
                }
                guard let name = f["name"]?.stringValue, !name.isEmpty, name.count <= 64,
                      name.allSatisfy({ toolNameCharacters.contains($0) }) else {
                    throw APIError.invalid("'\(p).function.name' must be 1 to 64 characters of a-z, A-Z, 0-9, '_', '-' and '.'.",
                                           param: p + ".function.name", code: "invalid_value")
                }
                if x.tools.contains(where: { $0.name == name }) {
                    throw APIError.invalid("Two tools are named '\(name)'.", param: p + ".function.name", code: "invalid_value")
                }
                let params = f["parameters"] ?? .object([("type", .string("object")), ("properties", .object([]))])
                guard params.objectValue != nil else {
                    throw APIError.invalid("'\(p).function.parameters' must be a JSON schema object.",
                                           param: p + ".function.parameters", code: "invalid_type")
                }
                x.tools.append(ToolDefinition(name: name, parameters: params, raw: tool))
            }
        }
        switch body["tool_choice"] {
        case nil, .null?: x.toolChoice = x.tools.isEmpty ? .none : .auto
        case .string("none")?: x.toolChoice = .none
        case .string("auto")?: x.toolChoice = .auto
        case .string("required")?: x.toolChoice = .required
        case let v?:
            guard v["type"]?.stringValue == "function", let name = v["function"]?["name"]?.stringValue else {
                throw APIError.invalid("'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}.",
                                       param: "tool_choice", code: "invalid_value")
            }
            x.toolChoice = .function(name)
        }
        if x.toolChoice != .none && x.toolChoice != .auto {
            guard !x.tools.isEmpty else {
                throw APIError.invalid("'tool_choice' asks for a tool call but 'tools' is empty.", param: "tool_choice",
                                       code: "invalid_value")
            }
            if case .function(let n) = x.toolChoice, !x.tools.contains(where: { $0.name == n }) {
                throw APIError.invalid("'tool_choice' names the function '\(n)', which is not in 'tools'.", param: "tool_choice",
                                       code: "invalid_value")
            }
        }
        if let p = body["parallel_tool_calls"], p != .null {
            guard let b = p.boolValue else {
                throw APIError.invalid("Invalid type for 'parallel_tool_calls': expected a boolean.", param: "parallel_tool_calls",
                                       code: "invalid_type")
            }
            x.parallelToolCalls = b
        }
        if let rf = body["response_format"], rf != .null {
            switch rf["type"]?.stringValue {
            case "text"?: x.responseFormat = .text
            case "json_object"?: x.responseFormat = .jsonObject
            case "json_schema"?:
                guard let js = rf["json_schema"], let schema = js["schema"], schema.objectValue != nil || schema.boolValue != nil else {
                    throw APIError.invalid("'response_format.json_schema.schema' must be a JSON schema object.",
                                           param: "response_format.json_schema.schema", code: "invalid_value")
                }
                x.responseFormat = .jsonSchema(name: js["name"]?.stringValue ?? "response", schema: schema)
            default:
                throw APIError.invalid("'response_format.type' must be \"text\", \"json_object\" or \"json_schema\".",
                                       param: "response_format.type", code: "invalid_value")
            }
        }
        if case .jsonSchema = x.responseFormat, x.toolChoice == .required || x.toolChoice != .auto && x.toolChoice != .none {
            throw APIError.invalid("'response_format' json_schema cannot be combined with a forced 'tool_choice'.",
                                   param: "response_format", code: "invalid_value")
        }
        if let k = body["chat_template_kwargs"], k != .null {
            guard let o = k.objectValue else {
                throw APIError.invalid("'chat_template_kwargs' must be an object.", param: "chat_template_kwargs", code: "invalid_type")
            }
            x.chatTemplateKwargs = o
        }
        return x
    }
}

// MARK: - Grammars of the output

enum OutputGrammars {
    /// The grammar `response_format` asks for (nil for text).
    static func responseFormat(_ f: ResponseFormat) throws -> Grammar? {
        switch f {
        case .text: return nil
        case .jsonObject: return JSONSchemaGrammar.anyObjectGrammar()
        case .jsonSchema(_, let schema):
            do {
                return try JSONSchemaGrammar.grammar(schema: schema)
            } catch let e as SchemaError {
                throw APIError.invalid("'response_format.json_schema.schema' cannot be enforced: \(e.description).",
                                       param: "response_format.json_schema.schema",
                                       code: e.keyword.map { _ in "unsupported_schema" } ?? "invalid_value")
            }
        }
    }

    /// Output that is one or more tool calls (several when `parallel`) in `format`, each naming one of `tools`
    /// with arguments that match its parameters' schema.
    /// `mistralArgs`: the Mistral template writes `[TOOL_CALLS]name[ARGS]{...}` (Small 3.2, Devstral) rather than a
    /// JSON list.
    static func toolCalls(_ format: ToolCallFormat, tools: [ToolDefinition], parallel: Bool,
                          mistralArgs: Bool = false) throws -> Grammar {
        typealias S = GrammarBuilder.Symbol
        let b = GrammarBuilder()
        let ws = JSONSchemaGrammar.whitespaceRule(in: b)
        var calls: [[S]] = []
        for (i, t) in tools.enumerated() {
            let args: Int32
            do {
                args = try JSONSchemaGrammar.valueRule(t.parameters, in: b)
            } catch let e as SchemaError {
                throw APIError.invalid("The parameters of tool '\(t.name)' cannot be enforced: \(e.description).",
                                       param: "tools[\(i)].function.parameters",
                                       code: e.keyword.map { _ in "unsupported_schema" } ?? "invalid_value")
            }
            let name = JSONValue.quote(t.name)
            switch format {
            case .hermes:
                calls.append([.text("<tool_call>\n{\"name\": \(name), \"arguments\": "), .rule(args), .text("}\n</tool_call>")])
            case .llama3:
                calls.append([.text("{\"name\": \(name), \"parameters\": "), .rule(args), .text("}")])
            case .mistral where mistralArgs:
                calls.append([.text("[TOOL_CALLS]\(t.name)[ARGS]"), .rule(args)])
            case .mistral:
                calls.append([.text("{\"name\": \(name), \"arguments\": "), .rule(args), .text("}")])
            case .deepseekV3:
                calls.append([.text("<｜tool▁call▁begin｜>function<｜tool▁sep｜>\(t.name)\n```json\n"), .rule(args),
                              .text("\n```<｜tool▁call▁end｜>")])
            case .deepseekV31:
                calls.append([.text("<｜tool▁call▁begin｜>\(t.name)<｜tool▁sep｜>"), .rule(args), .text("<｜tool▁call▁end｜>")])
            }
        }
        let call = b.add("call", calls)
        let sep: [S]
        let (open, close): ([S], [S])
        switch format {
        case .hermes: sep = [.text("\n")]; open = []; close = []
        case .llama3: sep = [.text("; ")]; open = []; close = []
        case .mistral where mistralArgs: sep = []; open = []; close = []
        case .mistral: sep = [.text(", ")]; open = [.text("[TOOL_CALLS][")]; close = [.text("]")]
        case .deepseekV3, .deepseekV31:
            sep = []; open = [.text("<｜tool▁calls▁begin｜>")]; close = [.text("<｜tool▁calls▁end｜>")]
        }
        let more: [S] = parallel ? [b.star(sep + [.rule(call)])] : []
        let root = b.add("root", [open + [.rule(call)] + more + close])
        return try b.build(root: root)
    }
}

// MARK: - JSON ↔ template values

extension JSONValue {
    /// The value as the chat template sees it (objects keep their key order).
    var jinja: JinjaValue {
        switch self {
        case .null: return .none
        case .bool(let b): return .bool(b)
        case .number(let d, let text):
            if !text.contains(where: { $0 == "." || $0 == "e" || $0 == "E" }), let i = Int(text) { return .int(i) }
            return .double(d)
        case .string(let s): return .string(s)
        case .array(let a): return .array(a.map(\.jinja))
        case .object(let o):
            var j = JinjaObject()
            for (k, v) in o { j[k] = v.jinja }
            return .object(j)
        }
    }
}
