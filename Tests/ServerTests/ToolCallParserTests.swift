import XCTest
@testable import Server

final class ToolCallParserTests: XCTestCase {
    /// What a parser produced: the content concatenated, and the calls in order.
    struct Parsed: Equatable, CustomStringConvertible {
        var content = ""
        var calls: [ParsedToolCall] = []
        var description: String { "content: \(content.debugDescription), calls: \(calls)" }
    }

    /// Feeds `pieces` one by one, then finishes; checks the call indices count from 0.
    func run(_ format: ToolCallFormat, _ pieces: [String], file: StaticString = #filePath,
             line: UInt = #line) -> Parsed {
        var parser = ToolCallParser(format: format)
        var events: [ToolCallEvent] = []
        for piece in pieces { events += parser.push(piece) }
        events += parser.finish()
        var parsed = Parsed()
        for event in events {
            switch event {
            case .content(let text): parsed.content += text
            case .toolCall(let index, let call):
                XCTAssertEqual(index, parsed.calls.count, "call indices", file: file, line: line)
                parsed.calls.append(call)
            }
        }
        XCTAssertEqual(parser.sawToolCall, !parsed.calls.isEmpty, "sawToolCall", file: file, line: line)
        return parsed
    }

    func parse(_ format: ToolCallFormat, _ text: String) -> Parsed {
        run(format, [text])
    }

    func call(_ name: String, _ arguments: String, id: String? = nil) -> ParsedToolCall {
        ParsedToolCall(id: id, name: name, arguments: arguments)
    }

    /// Every split of `text` in two, at each Unicode scalar boundary, and feeding it one scalar at a time, give
    /// the same content and calls as feeding it whole.
    func assertSplitInvariant(_ format: ToolCallFormat, _ text: String, file: StaticString = #filePath,
                              line: UInt = #line) {
        let whole = parse(format, text)
        let scalars = Array(text.unicodeScalars)
        func string(_ range: Range<Int>) -> String {
            var view = String.UnicodeScalarView()
            view.append(contentsOf: scalars[range])
            return String(view)
        }
        for cut in 0...scalars.count {
            let split = run(format, [string(0..<cut), string(cut..<scalars.count)])
            XCTAssertEqual(split, whole, "\(format) split at \(cut) of \(text.debugDescription)", file: file,
                           line: line)
        }
        let single = run(format, scalars.indices.map { string($0..<$0 + 1) })
        XCTAssertEqual(single, whole, "\(format) one scalar at a time: \(text.debugDescription)", file: file,
                       line: line)
    }

    // MARK: - Recorded outputs

    static let hermesSamples = [
        // Qwen2.5-7B-Instruct, one call.
        "<tool_call>\n{\"name\": \"get_current_weather\", \"arguments\": {\"location\": \"San Francisco, CA\", "
            + "\"unit\": \"fahrenheit\"}}\n</tool_call>",
        // Parallel calls.
        "<tool_call>\n{\"name\": \"get_current_temperature\", \"arguments\": {\"location\": "
            + "\"San Francisco, CA, USA\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_temperature_date\", "
            + "\"arguments\": {\"location\": "
            + "\"San Francisco, CA, USA\", \"date\": \"2024-10-01\"}}\n</tool_call>",
        // Content, then a call (Qwen3 after its reasoning).
        "I'll check the weather in both cities for you.\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
            + "{\"city\": \"Tokyo\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
            + "{\"city\": \"Paris\"}}\n</tool_call>",
        // Malformed JSON (the arguments object is not closed).
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}\n</tool_call>",
        // Unterminated block (generation stopped).
        "Sure.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": ",
        // Plain text with tag-like bits.
        "Use <b>bold</b> when a < b, and <tool> is not <tool_call either.\n",
        // Arguments with braces, quotes, escapes and non-ASCII text in strings; key order as written.
        "<tool_call>\n{\"name\": \"write_file\", \"arguments\": {\"path\": \"/tmp/main.rs\", \"content\": "
            + "\"fn main() { println!(\\\"{}\\\", \\\"}{\\\"); } // 日本語 ✓ 😀\\n\", \"mode\": {\"z\": 1, \"a\": [1, "
            + "{\"b\": null}]}}}\n</tool_call>",
        // Arguments as a JSON string holding JSON.
        "<tool_call>\n{\"name\": \"lookup\", \"arguments\": \"{\\\"id\\\": 42}\"}\n</tool_call>",
        // No name: not a call.
        "<tool_call>\n{\"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
        // A call, then more content.
        "<tool_call>\n{\"name\": \"ping\", \"arguments\": {}}\n</tool_call>\n\nI pinged the server.\n",
        // No arguments at all; whitespace around the JSON.
        "<tool_call>   {\"name\": \"now\"}\t\r\n</tool_call>",
    ]

    static let llamaSamples = [
        // Llama 3.1 JSON tool calling, one call.
        "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}",
        // With the python tag and "arguments".
        "<|python_tag|>{\"name\": \"search\", \"arguments\": {\"query\": \"swift 6 strict concurrency\"}}",
        // Parallel calls separated by ';', leading whitespace.
        "\n\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}; {\"name\": \"get_weather\", "
            + "\"parameters\": {\"city\": \"Rome\"}};{\"name\": \"get_time\", \"parameters\": {}}",
        // Plain answers.
        "Hello! How can I help you today?",
        "<b>Bold</b> claim: {not json}",
        "  ",
        // Unterminated call.
        "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"",
        // Bad JSON.
        "{\"name\": get_weather, \"parameters\": {}}",
        // JSON that is an answer, not a call.
        "{\"name\": \"John\", \"age\": 30}",
        // A built-in tool call in Python syntax: not JSON.
        "<|python_tag|>brave_search.call(query=\"current weather in Menlo Park\")",
        // An object that is not a call, then one that is: all content.
        "{\"x\": 1};\n{\"name\": \"f\", \"parameters\": {}}",
        // A call, then text.
        "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}\n\nI have asked for the weather.",
        // Nested arguments with braces and quotes in strings.
        "{\"name\": \"run_sql\", \"parameters\": {\"query\": \"SELECT '{' || name || '}' FROM t WHERE x = \\\"y\\\"\", "
            + "\"opts\": {\"limit\": 10, \"tags\": [\"ü\", \"}\"]}}}",
    ]

    static let mistralSamples = [
        // Mistral-7B-Instruct-v0.3: an array after [TOOL_CALLS].
        "[TOOL_CALLS] [{\"name\": \"get_current_weather\", \"arguments\": {\"location\": \"Paris, France\", "
            + "\"format\": \"celsius\"}}]",
        // v0.3 parallel calls, with ids.
        "[TOOL_CALLS] [{\"name\": \"add\", \"arguments\": {\"a\": 3.5, \"b\": 4}, \"id\": \"bbc5b7ede\"}, "
            + "{\"name\": \"multiply\", \"arguments\": {\"a\": 3, \"b\": 6}, \"id\": \"a1b2c3d4e\"}]",
        // Mistral Small 3.2 (tokenizer v11): call ids.
        "[TOOL_CALLS]get_weather[CALL_ID]abcDEF123[ARGS]{\"city\": \"Zürich\"}[TOOL_CALLS]get_weather"
            + "[CALL_ID]xyzXYZ789[ARGS]{\"city\": \"Bern\"}",
        // Magistral / Devstral (v13): no ids; nested arguments with quotes.
        "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Zürich\", \"unit\": \"c\"}[TOOL_CALLS]search[ARGS]{\"query\": "
            + "\"café \\\"best\\\" {x}\", \"filters\": {\"tags\": [\"a\", \"b\"], \"max\": 3}}",
        // Content, then a call.
        "Let me look that up.[TOOL_CALLS]search[ARGS]{\"q\": \"population of Lyon\"}",
        // Bad JSON.
        "[TOOL_CALLS]get_weather[ARGS]{\"city\": Paris}",
        // Unterminated.
        "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Par",
        // Plain text with brackets.
        "Arrays look like [1, 2, 3]; [TOOL] and [ARGS] are not markers here.",
        // The arguments marker rendered as nothing.
        "[TOOL_CALLS]get_time{\"timezone\": \"UTC\"}",
        // An array element without a name.
        "[TOOL_CALLS] [{\"arguments\": {}}]",
    ]

    static let begin = "<｜tool▁calls▁begin｜>", end = "<｜tool▁calls▁end｜>"
    static let callBegin = "<｜tool▁call▁begin｜>", callEnd = "<｜tool▁call▁end｜>", sep = "<｜tool▁sep｜>"

    static let deepseekV3Samples = [
        // DeepSeek-V3, one call.
        begin + callBegin + "function" + sep + "get_current_weather\n```json\n{\"location\": \"Beijing\"}\n```"
            + callEnd + end,
        // Two calls, content first.
        "Let me check both.\n\n" + begin + callBegin + "function" + sep + "get_weather\n```json\n{\"city\": "
            + "\"Beijing\", \"unit\": \"c\"}\n```" + callEnd + "\n" + callBegin + "function" + sep
            + "get_weather\n```json\n{\"city\": \"Hangzhou\", \"note\": \"}{ \\\"quoted\\\" 杭州\"}\n```" + callEnd
            + end,
        // Malformed JSON: the whole section is content.
        begin + callBegin + "function" + sep + "get_weather\n```json\n{\"location\": }\n```" + callEnd + end,
        // One good call and one bad.
        begin + callBegin + "function" + sep + "a\n```json\n{}\n```" + callEnd + "\n" + callBegin + "function" + sep
            + "b\n```json\n{oops}\n```" + callEnd + end,
        // Unterminated.
        begin + callBegin + "function" + sep + "get_weather\n```json\n{\"location\": \"Bei",
        // Plain text.
        "The answer is 42. <｜not a marker｜> <b>",
    ]

    static let deepseekV31Samples = [
        // DeepSeek-V3.1, one call.
        begin + callBegin + "get_weather" + sep + "{\"location\": \"Tokyo\"}" + callEnd + end,
        // Parallel calls after content.
        "I'll search.\n" + begin + callBegin + "search" + sep + "{\"query\": \"a {b} \\\"c\\\"\"}" + callEnd
            + callBegin + "fetch" + sep + "{\"url\": \"https://example.com/ü\", \"opts\": {\"z\": 1, \"a\": 2}}"
            + callEnd + end,
        // Malformed.
        begin + callBegin + "get_weather" + sep + "{\"location\": Tokyo}" + callEnd + end,
        // Unterminated section (no end marker) after a good call: the call stands.
        begin + callBegin + "now" + sep + "{}" + callEnd,
        // Stray text inside the section.
        begin + "oops" + end,
    ]

    // MARK: - hermes

    func testHermes() {
        let s = Self.hermesSamples
        XCTAssertEqual(parse(.hermes, s[0]), Parsed(calls: [
            call("get_current_weather", "{\"location\": \"San Francisco, CA\", \"unit\": \"fahrenheit\"}"),
        ]))
        XCTAssertEqual(parse(.hermes, s[1]), Parsed(calls: [
            call("get_current_temperature", "{\"location\": \"San Francisco, CA, USA\"}"),
            call("get_temperature_date", "{\"location\": \"San Francisco, CA, USA\", \"date\": \"2024-10-01\"}"),
        ]))
        XCTAssertEqual(parse(.hermes, s[2]), Parsed(content: "I'll check the weather in both cities for you.", calls: [
            call("get_weather", "{\"city\": \"Tokyo\"}"), call("get_weather", "{\"city\": \"Paris\"}"),
        ]))
        XCTAssertEqual(parse(.hermes, s[3]), Parsed(content: s[3]))
        XCTAssertEqual(parse(.hermes, s[4]), Parsed(content: s[4]))
        XCTAssertEqual(parse(.hermes, s[5]), Parsed(content: s[5]))
        XCTAssertEqual(parse(.hermes, s[6]).calls, [call("write_file",
            "{\"path\": \"/tmp/main.rs\", \"content\": "
                + "\"fn main() { println!(\\\"{}\\\", \\\"}{\\\"); } // 日本語 ✓ 😀\\n\", "
                + "\"mode\": {\"z\": 1, \"a\": [1, {\"b\": null}]}}")])
        XCTAssertEqual(parse(.hermes, s[7]), Parsed(calls: [call("lookup", "{\"id\": 42}")]))
        XCTAssertEqual(parse(.hermes, s[8]), Parsed(content: s[8]))
        XCTAssertEqual(parse(.hermes, s[9]), Parsed(content: "I pinged the server.\n", calls: [call("ping", "{}")]))
        XCTAssertEqual(parse(.hermes, s[10]), Parsed(calls: [call("now", "{}")]))
    }

    func testHermesBadBlockBetweenGoodOnes() {
        let text = "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>\n<tool_call>{bad}</tool_call>\n"
            + "<tool_call>{\"name\": \"b\", \"arguments\": {\"x\": [1]}}</tool_call>"
        XCTAssertEqual(parse(.hermes, text), Parsed(content: "<tool_call>{bad}</tool_call>", calls: [
            call("a", "{}"), call("b", "{\"x\": [1]}"),
        ]))
        assertSplitInvariant(.hermes, text)
    }

    func testHermesReleasesContentAsSoonAsItCannotBeAMarker() {
        var parser = ToolCallParser(format: .hermes)
        XCTAssertEqual(parser.push("The answer"), [.content("The answer")])
        XCTAssertEqual(parser.push(" is <"), [.content(" is")])  // " <" might begin a call
        XCTAssertEqual(parser.push("b>"), [.content(" <b>")])
        XCTAssertEqual(parser.push(" <tool_"), [])
        XCTAssertEqual(parser.push("call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}</tool_"), [])
        XCTAssertEqual(parser.push("call>"), [.toolCall(index: 0, call: call("f", "{\"a\": 1}"))])
        XCTAssertTrue(parser.sawToolCall)
        XCTAssertEqual(parser.push("\n"), [])
        XCTAssertEqual(parser.finish(), [])
    }

    // MARK: - llama3_json

    func testLlama3() {
        let s = Self.llamaSamples
        XCTAssertEqual(parse(.llama3, s[0]), Parsed(calls: [
            call("get_weather", "{\"city\": \"Paris\", \"unit\": \"celsius\"}"),
        ]))
        XCTAssertEqual(parse(.llama3, s[1]), Parsed(calls: [
            call("search", "{\"query\": \"swift 6 strict concurrency\"}"),
        ]))
        XCTAssertEqual(parse(.llama3, s[2]), Parsed(calls: [
            call("get_weather", "{\"city\": \"Paris\"}"), call("get_weather", "{\"city\": \"Rome\"}"),
            call("get_time", "{}"),
        ]))
        for i in [3, 4, 5, 6, 7, 8, 9, 10] {
            XCTAssertEqual(parse(.llama3, s[i]), Parsed(content: s[i]), "sample \(i)")
        }
        XCTAssertEqual(parse(.llama3, s[11]), Parsed(content: "I have asked for the weather.", calls: [
            call("get_weather", "{\"city\": \"Paris\"}"),
        ]))
        XCTAssertEqual(parse(.llama3, s[12]), Parsed(calls: [call("run_sql",
            "{\"query\": \"SELECT '{' || name || '}' FROM t WHERE x = \\\"y\\\"\", "
                + "\"opts\": {\"limit\": 10, \"tags\": [\"ü\", \"}\"]}}")]))
    }

    func testLlama3HoldsBackOnlyWhatCouldStartACall() {
        var parser = ToolCallParser(format: .llama3)
        XCTAssertEqual(parser.push("  "), [])
        XCTAssertEqual(parser.push("<|python"), [])
        XCTAssertEqual(parser.push("_tag|>{\"name\": \"f\", "), [])
        XCTAssertEqual(parser.push("\"parameters\": {}}"), [.toolCall(index: 0, call: call("f", "{}"))])
        XCTAssertEqual(parser.finish(), [])

        var plain = ToolCallParser(format: .llama3)
        XCTAssertEqual(plain.push("\n"), [])
        XCTAssertEqual(plain.push("Hi"), [.content("\nHi")])
        XCTAssertEqual(plain.push(" {there}"), [.content(" {there}")])
        XCTAssertEqual(plain.finish(), [])
    }

    // MARK: - mistral

    func testMistral() {
        let s = Self.mistralSamples
        XCTAssertEqual(parse(.mistral, s[0]), Parsed(calls: [
            call("get_current_weather", "{\"location\": \"Paris, France\", \"format\": \"celsius\"}"),
        ]))
        XCTAssertEqual(parse(.mistral, s[1]), Parsed(calls: [
            call("add", "{\"a\": 3.5, \"b\": 4}", id: "bbc5b7ede"),
            call("multiply", "{\"a\": 3, \"b\": 6}", id: "a1b2c3d4e"),
        ]))
        XCTAssertEqual(parse(.mistral, s[2]), Parsed(calls: [
            call("get_weather", "{\"city\": \"Zürich\"}", id: "abcDEF123"),
            call("get_weather", "{\"city\": \"Bern\"}", id: "xyzXYZ789"),
        ]))
        XCTAssertEqual(parse(.mistral, s[3]), Parsed(calls: [
            call("get_weather", "{\"city\": \"Zürich\", \"unit\": \"c\"}"),
            call("search",
                 "{\"query\": \"café \\\"best\\\" {x}\", \"filters\": {\"tags\": [\"a\", \"b\"], \"max\": 3}}"),
        ]))
        XCTAssertEqual(parse(.mistral, s[4]), Parsed(content: "Let me look that up.", calls: [
            call("search", "{\"q\": \"population of Lyon\"}"),
        ]))
        for i in [5, 6, 7, 9] {
            XCTAssertEqual(parse(.mistral, s[i]), Parsed(content: s[i]), "sample \(i)")
        }
        XCTAssertEqual(parse(.mistral, s[8]), Parsed(calls: [call("get_time", "{\"timezone\": \"UTC\"}")]))
    }

    // MARK: - deepseek

    func testDeepSeekV3() {
        let s = Self.deepseekV3Samples
        XCTAssertEqual(parse(.deepseekV3, s[0]), Parsed(calls: [
            call("get_current_weather", "{\"location\": \"Beijing\"}"),
        ]))
        XCTAssertEqual(parse(.deepseekV3, s[1]), Parsed(content: "Let me check both.", calls: [
            call("get_weather", "{\"city\": \"Beijing\", \"unit\": \"c\"}"),
            call("get_weather", "{\"city\": \"Hangzhou\", \"note\": \"}{ \\\"quoted\\\" 杭州\"}"),
        ]))
        XCTAssertEqual(parse(.deepseekV3, s[2]), Parsed(content: s[2]))
        XCTAssertEqual(parse(.deepseekV3, s[3]), Parsed(
            content: Self.callBegin + "function" + Self.sep + "b\n```json\n{oops}\n```" + Self.callEnd,
            calls: [call("a", "{}")]))
        XCTAssertEqual(parse(.deepseekV3, s[4]), Parsed(content: s[4]))
        XCTAssertEqual(parse(.deepseekV3, s[5]), Parsed(content: s[5]))
    }

    func testDeepSeekV31() {
        let s = Self.deepseekV31Samples
        XCTAssertEqual(parse(.deepseekV31, s[0]), Parsed(calls: [call("get_weather", "{\"location\": \"Tokyo\"}")]))
        XCTAssertEqual(parse(.deepseekV31, s[1]), Parsed(content: "I'll search.", calls: [
            call("search", "{\"query\": \"a {b} \\\"c\\\"\"}"),
            call("fetch", "{\"url\": \"https://example.com/ü\", \"opts\": {\"z\": 1, \"a\": 2}}"),
        ]))
        XCTAssertEqual(parse(.deepseekV31, s[2]), Parsed(content: s[2]))
        XCTAssertEqual(parse(.deepseekV31, s[3]), Parsed(calls: [call("now", "{}")]))
        XCTAssertEqual(parse(.deepseekV31, s[4]), Parsed(content: s[4]))
        // The V3 shape is not V3.1's: content.
        XCTAssertEqual(parse(.deepseekV31, Self.deepseekV3Samples[0]).calls, [])
    }

    // MARK: - Streaming

    func testEverySplitGivesTheSameResult() {
        let all: [(ToolCallFormat, [String])] = [
            (.hermes, Self.hermesSamples), (.llama3, Self.llamaSamples), (.mistral, Self.mistralSamples),
            (.deepseekV3, Self.deepseekV3Samples), (.deepseekV31, Self.deepseekV31Samples),
        ]
        for (format, samples) in all {
            for sample in samples { assertSplitInvariant(format, sample) }
        }
    }

    func testOutputWithoutCallsPassesThroughUnchanged() {
        let text = "  Line one.\n\n  Line two < three [x] {y}\n\n"
        for format in ToolCallFormat.allCases {
            XCTAssertEqual(parse(format, text), Parsed(content: text), "\(format)")
            XCTAssertEqual(parse(format, ""), Parsed(), "\(format)")
        }
    }

    // MARK: - Formats

    func testMarkers() {
        XCTAssertEqual(ToolCallFormat.hermes.markers, ["<tool_call>", "</tool_call>"])
        XCTAssertEqual(ToolCallFormat.llama3.markers, ["<|python_tag|>"])
        XCTAssertTrue(ToolCallFormat.mistral.markers.contains("[TOOL_CALLS]"))
        XCTAssertTrue(ToolCallFormat.deepseekV3.markers.contains(Self.sep))
        XCTAssertEqual(ToolCallFormat(rawValue: "llama3_json"), .llama3)
        XCTAssertEqual(ToolCallFormat(rawValue: "deepseek_v31"), .deepseekV31)
    }

    func testDetect() {
        XCTAssertEqual(ToolCallFormat.detect(template: """
            {%- for tool_call in message.tool_calls %}{{- '<tool_call>\\n{"name": "' }}{{- tool_call.name }}
            """), .hermes)
        XCTAssertEqual(ToolCallFormat.detect(template: """
            {{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + \
            tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + \
            '<｜tool▁call▁end｜>'}}
            """), .deepseekV3)
        XCTAssertEqual(ToolCallFormat.detect(template: "<｜tool▁call▁begin｜>function<｜tool▁sep｜>"), .deepseekV3)
        XCTAssertEqual(ToolCallFormat.detect(template: """
            {{'<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>'+ tool['function']['name'] + '<｜tool▁sep｜>' + \
            tool['function']['arguments'] + '<｜tool▁call▁end｜>'}}
            """), .deepseekV31)
        XCTAssertEqual(ToolCallFormat.detect(template: "{{- '[TOOL_CALLS]' + tool_calls|tojson }}"), .mistral)
        XCTAssertEqual(ToolCallFormat.detect(template: "{{- '<|python_tag|>' + tool_call.name }}"), .llama3)
        XCTAssertEqual(ToolCallFormat.detect(template: """
            {{- '{"name": "' + tool_call.name + '", ' }}{{- '"parameters": ' }}
            {%- elif message.role == "tool" or message.role == "ipython" %}
            """), .llama3)
        XCTAssertNil(ToolCallFormat.detect(
            template: "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"))
    }
}
