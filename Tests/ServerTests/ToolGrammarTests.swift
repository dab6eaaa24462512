import Foundation
import Grammar
import XCTest
@testable import Server

/// The grammars that force tool calls write exactly what the matching parser reads back as calls, for every
/// format; the chat output parser composes reasoning and tool parsing; templates without tools get the
/// generic tool messages.
final class ToolGrammarTests: XCTestCase {
    let tools: [ToolDefinition] = {
        let specs = [
            #"{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["c", "f"]}}, "required": ["city"]}}}"#,
            #"{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"], "additionalProperties": false}}}"#,
        ]
        return specs.map { text in
            let v = try! JSONValue(parsing: text)
            return ToolDefinition(name: v["function"]!["name"]!.stringValue!, parameters: v["function"]!["parameters"]!, raw: v)
        }
    }()

    /// A random sentence of the grammar: random allowed bytes for a while, then the shortest way to the end.
    func randomSentence(_ g: Grammar, rng: inout some RandomNumberGenerator) -> String? {
        let m = GrammarMatcher(grammar: g)
        var state = m.initial
        var out: [UInt8] = []
        for step in 0..<200 {
            if m.isAccepting(state) && Int.random(in: 0..<3, using: &rng) == 0 { break }
            let options = (0...255).map(UInt8.init).filter { m.next(state, $0) >= 0 }
            if options.isEmpty || step > 120 { break }
            let b = options.randomElement(using: &rng)!
            out.append(b)
            state = m.next(state, b)
        }
        // Breadth-first search over the grammar's states for the shortest completion.
        var from: [Int32: (Int32, UInt8)] = [state: (-1, 0)]
        var queue = [state], head = 0
        var end: Int32? = m.isAccepting(state) ? state : nil
        while end == nil && head < queue.count && queue.count < 200_000 {
            let s = queue[head]
            head += 1
            for b in UInt8(0)...UInt8(255) {
                let t = m.next(s, b)
                guard t >= 0, from[t] == nil else { continue }
                from[t] = (s, b)
                if m.isAccepting(t) { end = t; break }
                queue.append(t)
            }
        }
        guard var s = end else { return nil }
        var tail: [UInt8] = []
        while s != state, let (p, b) = from[s] { tail.append(b); s = p }
        out += tail.reversed()
        return String(decoding: out, as: UTF8.self)
    }

    func testForcedCallsParseBackInEveryFormat() throws {
        var rng = SystemRandomNumberGenerator()
        for format in ToolCallFormat.allCases {
            for mistralArgs in format == .mistral ? [false, true] : [false] {
                for parallel in [false, true] {
                    let g = try OutputGrammars.toolCalls(format, tools: tools, parallel: parallel, mistralArgs: mistralArgs)
                    var parsed = 0
                    for _ in 0..<12 {
                        guard let text = randomSentence(g, rng: &rng) else { continue }
                        var p = ToolCallParser(format: format)
                        let events = p.push(text) + p.finish()
                        let calls = events.compactMap { e -> ParsedToolCall? in
                            if case .toolCall(_, let c) = e { return c } else { return nil }
                        }
                        let content = events.compactMap { e -> String? in if case .content(let s) = e { return s } else { return nil } }
                        XCTAssertFalse(calls.isEmpty, "\(format) \(parallel): no call in \(text.debugDescription)")
                        XCTAssertEqual(content.joined().trimmingCharacters(in: .whitespacesAndNewlines), "",
                                       "\(format): content left in \(text.debugDescription)")
                        if !parallel { XCTAssertEqual(calls.count, 1, text) }
                        for c in calls {
                            XCTAssertTrue(["get_weather", "add"].contains(c.name), text)
                            XCTAssertNotNil(try? JSONSerialization.jsonObject(with: Data(c.arguments.utf8)), "\(format): \(c.arguments)")
                        }
                        parsed += 1
                    }
                    XCTAssertEqual(parsed, 12, "\(format)")
                }
            }
        }
    }

    func testChatOutputParserSplitsReasoningThenToolCalls() {
        let text = "<think>\nLet me look it up.\n</think>\n\nSure.<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>"
        func run(_ pieces: [String]) -> [ChatEvent] {
            var p = ChatOutputParser(reasoning: ReasoningParser(format: .qwen3, startsInReasoning: false),
                                     tools: ToolCallParser(format: .hermes))
            return pieces.flatMap { p.push($0) } + p.finish()
        }
        func summary(_ events: [ChatEvent]) -> (String, String, [ParsedToolCall]) {
            var r = "", c = "", calls: [ParsedToolCall] = []
            for e in events {
                switch e {
                case .reasoning(let s): r += s
                case .content(let s): c += s
                case .toolCall(_, let call): calls.append(call)
                }
            }
            return (r, c, calls)
        }
        let whole = summary(run([text]))
        XCTAssertEqual(whole.0, "\nLet me look it up.\n")
        XCTAssertEqual(whole.1, "Sure.")
        XCTAssertEqual(whole.2.map(\.name), ["add"])
        let chars = text.map(String.init)
        let split = summary(run(chars))
        XCTAssertEqual(split.0, whole.0)
        XCTAssertEqual(split.1, whole.1)
        XCTAssertEqual(split.2, whole.2)
    }

    func testGenericToolMessagesForTemplatesWithoutTools() throws {
        let messages = try JSONValue(parsing: #"""
        [{"role": "user", "content": "Add 1 and 2."},
         {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 1, \"b\": 2}"}}]},
         {"role": "tool", "tool_call_id": "c1", "content": "3"},
         {"role": "tool", "tool_call_id": "c2", "content": "4"}]
        """#).arrayValue!
        let out = OpenAIServer.genericToolMessages(messages, tools: tools)
        XCTAssertEqual(out.map { $0["role"]!.stringValue! }, ["system", "user", "assistant", "user"])
        XCTAssertTrue(out[0]["content"]!.stringValue!.contains("<tools>\n{\"type\":\"function\""))
        XCTAssertEqual(out[2]["content"]!.stringValue!, "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>")
        XCTAssertEqual(out[3]["content"]!.stringValue!, "<tool_response>\n3\n</tool_response>\n\n<tool_response>\n4\n</tool_response>")
        // A template message: content parts joined, arguments parsed into an object.
        let m = OpenAIServer.templateMessage(messages[1])
        XCTAssertEqual(m["content"], .string(""))
        XCTAssertEqual(m["tool_calls"][0]["function"]["arguments"]["b"], .int(2))
    }
}
