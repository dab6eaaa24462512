import ChatTemplate
import Engine
import Foundation
import Grammar
import Tokenizer

/// What the text of a chat answer becomes: reasoning, answer text, tool calls.
enum ChatEvent: Sendable, Equatable {
    case reasoning(String)
    case content(String)
    case toolCall(index: Int, call: ParsedToolCall)
}

/// The chat output path after the detokenizer and stop strings: the reasoning parser splits off the thinking,
/// then the tool-call parser takes calls out of the answer. Streamed and whole answers both go through it, so
/// the concatenated deltas equal the whole answer.
struct ChatOutputParser {
    var reasoning: ReasoningParser?
    var tools: ToolCallParser?

    mutating func push(_ text: String) -> [ChatEvent] {
        guard !text.isEmpty else { return [] }
        guard var r = reasoning else { return content(text) }
        let events = r.push(text)
        reasoning = r
        return route(events)
    }

    mutating func finish() -> [ChatEvent] {
        var out: [ChatEvent] = []
        if var r = reasoning {
            out += route(r.finish())
            reasoning = r
        }
        if var t = tools {
            out += t.finish().map(Self.event)
            tools = t
        }
        return out
    }

    var sawToolCall: Bool { tools?.sawToolCall ?? false }

    private mutating func route(_ events: [ReasoningEvent]) -> [ChatEvent] {
        var out: [ChatEvent] = []
        for e in events {
            switch e {
            case .reasoning(let s): if !s.isEmpty { out.append(.reasoning(s)) }
            case .content(let s): out += content(s)
            }
        }
        return out
    }

    private mutating func content(_ text: String) -> [ChatEvent] {
        guard var t = tools else { return text.isEmpty ? [] : [.content(text)] }
        let events = t.push(text)
        tools = t
        return events.map(Self.event)
    }

    static func event(_ e: ToolCallEvent) -> ChatEvent {
        switch e {
        case .content(let s): .content(s)
        case .toolCall(let i, let c): .toolCall(index: i, call: c)
        }
    }
}

/// A chat request made ready for the engine: the prompt, the output parsers and the constraint to use.
struct ChatPlan {
    var prompt: [Int32]
    var toolFormat: ToolCallFormat?
    var reasoningFormat: ReasoningFormat?
    var startsInReasoning = false
    var grammar: Grammar?

    func parser() -> ChatOutputParser {
        ChatOutputParser(reasoning: reasoningFormat.map { ReasoningParser(format: $0, startsInReasoning: startsInReasoning) },
                         tools: toolFormat.map { ToolCallParser(format: $0) })
    }
}

extension OpenAIServer {
    /// Renders the conversation (with tools where asked), tokenizes it, and picks parsers and grammar.
    func planChat(_ x: ChatExtras) throws -> ChatPlan {
        guard let chatTemplate else {
            throw APIError.invalid("This model has no chat template; use /v1/completions.", param: "messages")
        }
        let useTools = x.parsesToolCalls
        let native = templateHasTools
        var messages = x.messages
        if !native && messages.contains(where: { $0["tool_calls"] != nil || $0["role"]?.stringValue == "tool" }) || (useTools && !native) {
            messages = Self.genericToolMessages(messages, tools: useTools ? x.tools : [])
        }
        var extra: [String: JinjaValue] = [:]
        for (k, v) in x.chatTemplateKwargs { extra[k] = v.jinja }
        if useTools && native { extra["tools"] = .array(x.tools.map(\.raw.jinja)) }
        let values = messages.map { Self.templateMessage($0) }
        let bos = tokenizer.bosID.map { tokenizer.piece($0) } ?? ""
        let eos = tokenizer.eosID.map { tokenizer.piece($0) } ?? ""
        var text: String
        do {
            text = try chatTemplate.render(messages: values, addGenerationPrompt: true, bosToken: bos, eosToken: eos, extra: extra)
        } catch let e as ChatTemplateError {
            throw APIError.invalid("The chat template rejected the conversation: \(e.message)", param: "messages")
        }
        var plan = ChatPlan(prompt: [])
        plan.reasoningFormat = reasoningFormat
        if reasoningFormat != nil {
            let tail = text.reversed().drop { $0.isWhitespace }
            plan.startsInReasoning = String(tail.prefix(7).reversed()) == "<think>"
            // Thinking turned off by the template (DeepSeek-V3.1, Qwen3 enable_thinking=false): a closed, empty
            // reasoning ends the prompt and the answer is plain content.
            if String(tail.prefix(8).reversed()) == "</think>" && !config.forceThink { plan.reasoningFormat = nil }
            if config.forceThink && !plan.startsInReasoning {
                // KTransformers' --force_think: the answer starts inside the reasoning.
                text += "<think>\n"
                plan.startsInReasoning = true
            }
        }
        if useTools { plan.toolFormat = toolFormat }
        switch x.toolChoice {
        case .required, .function:
            let tools = x.tools.filter { if case .function(let n) = x.toolChoice { $0.name == n } else { true } }
            let parallel = x.parallelToolCalls && x.toolChoice == .required
            plan.grammar = try OutputGrammars.toolCalls(toolFormat, tools: tools, parallel: parallel,
                                                        mistralArgs: chatTemplate.source.contains("[ARGS]"))
            // The forced call starts at once: no reasoning first.
            plan.reasoningFormat = nil
        default:
            plan.grammar = try OutputGrammars.responseFormat(x.responseFormat)
            if plan.grammar != nil { plan.reasoningFormat = nil }
        }
        plan.prompt = encodePrompt(text)
        return plan
    }

    /// A message as the template sees it: every field the client sent; content parts joined to text; a tool
    /// call's `arguments` parsed from its JSON string (templates write them with `tojson`).
    static func templateMessage(_ m: JSONValue) -> JinjaValue {
        var o = JinjaObject()
        for (k, v) in m.objectValue ?? [] {
            switch k {
            case "content":
                switch v {
                case .array(let parts): o[k] = .string(parts.compactMap { $0["text"]?.stringValue }.joined())
                case .null: o[k] = .string("")
                default: o[k] = v.jinja
                }
            case "tool_calls":
                o[k] = .array((v.arrayValue ?? []).map { call in
                    guard case .object(var c) = call.jinja else { return call.jinja }
                    if case .object(var f)? = c["function"], case .string(let a)? = f["arguments"],
                       let parsed = try? JSONValue(parsing: a), parsed.objectValue != nil {
                        f["arguments"] = parsed.jinja
                        c["function"] = .object(f)
                    }
                    return .object(c)
                })
            default:
                o[k] = v.jinja
            }
        }
        if o["content"] == nil { o["content"] = .string("") }
        return .object(o)
    }

    /// For templates that know nothing of tools: the tools described in the system message (Hermes style, the
    /// format the `hermes` parser reads), assistant tool calls written as `<tool_call>` blocks, tool results as
    /// user turns in `<tool_response>` blocks; consecutive turns of one role merged (templates that insist on
    /// alternating roles accept the result).
    static func genericToolMessages(_ messages: [JSONValue], tools: [ToolDefinition]) -> [JSONValue] {
        func text(_ m: JSONValue) -> String {
            switch m["content"] {
            case .string(let s)?: return s
            case .array(let parts)?: return parts.compactMap { $0["text"]?.stringValue }.joined()
            default: return ""
            }
        }
        var out: [(role: String, content: String)] = []
        for m in messages {
            let role = m["role"]?.stringValue ?? "user"
            var content = text(m)
            var outRole = role
            if role == "tool" {
                outRole = "user"
                content = "<tool_response>\n\(content)\n</tool_response>"
            } else if role == "assistant", let calls = m["tool_calls"]?.arrayValue, !calls.isEmpty {
                let blocks = calls.map { c -> String in
                    let name = c["function"]?["name"]?.stringValue ?? ""
                    let args = c["function"]?["arguments"]?.stringValue ?? "{}"
                    return "<tool_call>\n{\"name\": \(JSONValue.quote(name)), \"arguments\": \(args)}\n</tool_call>"
                }
                content = ([content].filter { !$0.isEmpty } + blocks).joined(separator: "\n")
            }
            if let last = out.last, last.role == outRole, outRole != "system" {
                out[out.count - 1].content += "\n\n" + content
            } else {
                out.append((outRole, content))
            }
        }
        if !tools.isEmpty {
            let list = tools.map(\.raw.compactText).joined(separator: "\n")
            let prompt = """
                # Tools

                You may call one or more functions to assist with the user query.

                You are provided with function signatures within <tools></tools> XML tags:
                <tools>
                \(list)
                </tools>

                For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
                <tool_call>
                {"name": <function-name>, "arguments": <args-json-object>}
                </tool_call>
                """
            if let first = out.first, first.role == "system" {
                out[0].content += "\n\n" + prompt
            } else {
                out.insert(("system", prompt), at: 0)
            }
        }
        return out.map { .object([("role", .string($0.role)), ("content", .string($0.content))]) }
    }
}
