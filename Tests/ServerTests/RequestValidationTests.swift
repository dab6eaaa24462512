import Engine
import Grammar
import XCTest
@testable import Server

final class RequestValidationTests: XCTestCase {
    let limits = ValidationLimits(vocabSize: 1000)

    func chatError(_ json: String) -> APIError? {
        do {
            let r = try RequestValidation.decode(ChatCompletionRequest.self, from: Data(json.utf8))
            try RequestValidation.checkMessages(r.messages)
            let lp = try RequestValidation.chatLogprobs(r, limits: limits)
            _ = try RequestValidation.parameters(r.common, logprobs: lp, limits: limits)
            let x = try ChatExtras.parse(try JSONValue(parsing: json))
            _ = try OutputGrammars.responseFormat(x.responseFormat)
            if x.toolChoice != .auto && x.toolChoice != .none {
                _ = try OutputGrammars.toolCalls(.hermes, tools: x.tools, parallel: true)
            }
            return nil
        } catch let e as APIError {
            return e
        } catch {
            XCTFail("unexpected \(error)")
            return nil
        }
    }

    let msgs = #""messages": [{"role": "user", "content": "hi"}]"#

    func testValidRequest() throws {
        let r = try RequestValidation.decode(ChatCompletionRequest.self, from: Data("""
        {"model": "m", \(msgs), "max_tokens": 5, "stop": ["a", "b"], "temperature": 0.5, "top_p": 0.9, "top_k": 3,
         "min_p": 0.1, "seed": -1, "presence_penalty": 1, "frequency_penalty": -1, "repetition_penalty": 1.2,
         "logprobs": true, "top_logprobs": 2, "stream": true, "stream_options": {"include_usage": true},
         "unknown_field": {"ignored": [1, 2]}}
        """.utf8))
        let p = try RequestValidation.parameters(r.common, logprobs: try RequestValidation.chatLogprobs(r, limits: limits), limits: limits)
        XCTAssertEqual(p.maxTokens, 5)
        XCTAssertEqual(p.stop, ["a", "b"])
        XCTAssertEqual(p.sampling.temperature, 0.5)
        XCTAssertEqual(p.sampling.topK, 3)
        XCTAssertEqual(p.sampling.seed, UInt64.max)
        XCTAssertEqual(p.sampling.repetitionPenalty, 1.2, accuracy: 1e-6)
        XCTAssertEqual(p.logprobs, 2)
        XCTAssertTrue(p.stream && p.includeUsage)
    }

    func testDefaultsAreOpenAIs() throws {
        let r = try RequestValidation.decode(ChatCompletionRequest.self, from: Data("{\(msgs)}".utf8))
        let p = try RequestValidation.parameters(r.common, logprobs: nil, limits: limits)
        XCTAssertEqual(p.sampling.temperature, 1)
        XCTAssertEqual(p.sampling.topP, 1)
        XCTAssertEqual(p.sampling.topK, 0)
        XCTAssertEqual(p.sampling.minP, 0)
        XCTAssertNil(p.maxTokens)
        XCTAssertFalse(p.stream)
    }

    func testErrorsNameTheParameter() {
        let cases: [(String, String?)] = [
            (#"{"messages": "hi"}"#, "messages"),
            ("{\(msgs), \"temperature\": \"hot\"}", "temperature"),
            ("{\(msgs), \"temperature\": 3}", "temperature"),
            ("{\(msgs), \"max_tokens\": 0}", "max_tokens"),
            ("{\(msgs), \"max_completion_tokens\": -1}", "max_completion_tokens"),
            ("{\(msgs), \"max_tokens\": 1e300}", "max_tokens"),
            ("{\(msgs), \"max_tokens\": 99999999999999999999999}", "max_tokens"),
            ("{\(msgs), \"temperature\": 1e400}", "temperature"),
            ("{\(msgs), \"top_p\": 0}", "top_p"),
            ("{\(msgs), \"top_k\": -2}", "top_k"),
            ("{\(msgs), \"n\": 17}", "n"),
            ("{\(msgs), \"n\": 0}", "n"),
            ("{\(msgs), \"stop\": 5}", "stop"),
            ("{\(msgs), \"stop\": [\"\"]}", "stop"),
            ("{\(msgs), \"top_logprobs\": 2}", "top_logprobs"),
            ("{\(msgs), \"logprobs\": true, \"top_logprobs\": 21}", "top_logprobs"),
            ("{\(msgs), \"logit_bias\": {\"5000\": 1}}", "logit_bias"),
            ("{\(msgs), \"logit_bias\": {\"x\": 1}}", "logit_bias"),
            ("{\(msgs), \"logit_bias\": {\"5\": 101}}", "logit_bias"),
            (#"{"messages": []}"#, "messages"),
            (#"{}"#, "messages"),
            (#"{"messages": [{"role": "user"}, {"role": "bot", "content": "x"}]}"#, "messages[1].role"),
            (#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#, "messages[0].content[0]"),
            (#"{"messages": [{"role": "user", "content": 5}]}"#, "messages[0].content"),
        ]
        for (json, param) in cases {
            let e = chatError(json)
            XCTAssertEqual(e?.status, .badRequest, json)
            XCTAssertEqual(e?.param, param, json)
            XCTAssertFalse(e?.message.isEmpty ?? true)
        }
    }

    /// Bodies nested far deeper than any request (they would exhaust the stack of a recursive parser) get a 400,
    /// wherever the nesting is; a body at the limit still parses.
    func testDeeplyNestedBodiesAreRefusedBeforeParsing() throws {
        let n = 100_000
        let cases = [
            "{\(msgs), \"stop\": " + String(repeating: "[", count: n) + String(repeating: "]", count: n) + "}",
            "{\(msgs), \"extra\": " + String(repeating: "{\"a\":", count: n) + "1" + String(repeating: "}", count: n) + "}",
            String(repeating: "[", count: n) + String(repeating: "]", count: n),
            "{\"messages\": [{\"role\": \"user\", \"content\": " + String(repeating: "[", count: 20_000) + String(repeating: "]", count: 20_000) + "}]}",
        ]
        for body in cases {
            let e = try XCTUnwrap(chatError(body))
            XCTAssertTrue(e.message.contains("more than 128 levels deep"), e.message)
        }
        // Brackets inside strings do not count; 128 levels of real nesting still reach the decoder.
        XCTAssertNil(chatError("{\(msgs), \"stop\": \"" + String(repeating: "[{", count: 100) + "\"}"))
        let atLimit = "{\(msgs), \"extra\": " + String(repeating: "[", count: 126) + String(repeating: "]", count: 126) + "}"
        XCTAssertNil(chatError(atLimit))
    }

    /// The deprecated function-calling fields are refused by name (their neutral values pass); tools, tool
    /// choice and response formats are checked, and a schema the grammar compiler cannot enforce is a 400 naming
    /// the keyword.
    func testToolsAndFormatsAreCheckedByName() throws {
        let tool = #"{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}"#
        let refused: [(String, String, String)] = [
            ("functions", #""functions": [{"name": "f"}]"#, "is not supported"),
            ("function_call", #""function_call": {"name": "f"}"#, "is not supported"),
            ("tool_choice", #""tool_choice": "required""#, "'tools' is empty"),
            ("tool_choice", "\"tools\": [\(tool)], \"tool_choice\": {\"type\": \"function\", \"function\": {\"name\": \"g\"}}", "not in 'tools'"),
            ("tool_choice", "\"tools\": [\(tool)], \"tool_choice\": \"sometimes\"", "must be"),
            ("tools[0].type", #""tools": [{"type": "retrieval"}]"#, "function"),
            ("tools[0].function.name", #""tools": [{"type": "function", "function": {"name": "a b"}}]"#, "characters"),
            ("tools[1].function.name", "\"tools\": [\(tool), \(tool)]", "Two tools"),
            ("tools[0].function.parameters", #""tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string", "pattern": "a+"}}}], "tool_choice": "required""#, "pattern"),
            ("response_format.type", #""response_format": {"type": "xml"}"#, "must be"),
            ("response_format.json_schema.schema", #""response_format": {"type": "json_schema", "json_schema": {"name": "x"}}"#, "JSON schema"),
            ("response_format.json_schema.schema", #""response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "^a"}}}"#, "'pattern' is not supported"),
            ("response_format.json_schema.schema", #""response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"n": {"type": "number", "multipleOf": 3}}}}}"#, "multipleOf"),
        ]
        for (param, field, text) in refused {
            let e = try XCTUnwrap(chatError("{\(msgs), \(field)}"), field)
            XCTAssertEqual(e.param, param, field)
            XCTAssertEqual(e.status, .badRequest)
            XCTAssertTrue(e.message.contains(text), e.message)
        }
        for accepted in [#""tools": []"#, #""tools": null"#, #""tool_choice": "none""#, #""tool_choice": "auto""#,
                         #""response_format": {"type": "text"}"#, #""response_format": null"#,
                         #""response_format": {"type": "json_object"}"#,
                         #""response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}, "strict": true}}"#,
                         "\"tools\": [\(tool)], \"tool_choice\": \"required\"",
                         "\"tools\": [\(tool)], \"tool_choice\": {\"type\": \"function\", \"function\": {\"name\": \"f\"}}",
                         #""n": 4, "logit_bias": {"5": -100, "7": 2.5}, "user": "u1", "seed": 3"#] {
            XCTAssertNil(chatError("{\(msgs), \(accepted)}"), accepted)
        }
    }

    func testMalformedBodies() {
        for body in ["", "{", "[1]", "null", "\"x\"", "{\"messages\": [}"] {
            XCTAssertEqual(chatError(body)?.status, .badRequest, body)
        }
        let invalidUTF8 = Data([0x7B, 0x22, 0x6D, 0xFF, 0x22, 0x3A, 0x31, 0x7D])
        XCTAssertThrowsError(try RequestValidation.decode(ChatCompletionRequest.self, from: invalidUTF8)) {
            XCTAssertEqual(($0 as? APIError)?.status, .badRequest)
        }
    }

    func testPromptForms() throws {
        func prompt(_ j: String) throws -> PromptField { try RequestValidation.decode(CompletionRequest.self, from: Data(j.utf8)).prompt }
        XCTAssertEqual(try prompt(#"{"prompt": "a"}"#), .text("a"))
        XCTAssertEqual(try prompt(#"{"prompt": ["a"]}"#), .texts(["a"]))
        XCTAssertEqual(try prompt(#"{"prompt": [1, 2]}"#), .tokens([1, 2]))
        XCTAssertEqual(try prompt(#"{"prompt": [[1, 2]]}"#), .tokenLists([[1, 2]]))
        XCTAssertThrowsError(try prompt(#"{"prompt": 5}"#)) { XCTAssertEqual(($0 as? APIError)?.param, "prompt") }
        XCTAssertThrowsError(try prompt(#"{"prompt": {"a": 1}}"#)) { XCTAssertEqual(($0 as? APIError)?.param, "prompt") }
    }

    func testErrorBodyShape() throws {
        let e = APIError.invalid("bad", param: "x")
        let obj = try JSONSerialization.jsonObject(with: e.jsonBody) as? [String: [String: Any]]
        XCTAssertEqual(obj?["error"]?["message"] as? String, "bad")
        XCTAssertEqual(obj?["error"]?["type"] as? String, "invalid_request_error")
        XCTAssertEqual(obj?["error"]?["param"] as? String, "x")
        XCTAssertTrue(obj?["error"]?["code"] is NSNull)
    }
}
