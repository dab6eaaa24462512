import XCTest
@testable import Server

final class SSETests: XCTestCase {
    func testFraming() {
        XCTAssertEqual(SSE.event(Data(#"{"a":1}"#.utf8)), "data: {\"a\":1}\n\n")
        XCTAssertEqual(SSE.done, "data: [DONE]\n\n")
        XCTAssertEqual(SSE.event(text: "a\nb"), "data: a\ndata: b\n\n")
    }

    func testParseAcrossReads() {
        var buf = ""
        var got: [String] = []
        let stream = SSE.event(Data("{\"x\":\"1\"}".utf8)) + SSE.event(text: "two\nlines") + SSE.done
        for ch in stream { buf.append(ch); got += SSE.parse(&buf) }
        XCTAssertEqual(got, ["{\"x\":\"1\"}", "two\nlines", "[DONE]"])
        XCTAssertEqual(buf, "")
    }

    func testChunkJSONHasExplicitNulls() throws {
        let c = ChatCompletionChunk(id: "i", created: 1, model: "m",
                                    choices: [ChatChunkChoice(index: 0, delta: ChunkDelta(content: "hi"), logprobs: nil, finishReason: nil)],
                                    usage: nil, includeUsageKey: true)
        let obj = try JSONSerialization.jsonObject(with: OpenAIServer.encoder().encode(c)) as! [String: Any]
        XCTAssertEqual(obj["object"] as? String, "chat.completion.chunk")
        XCTAssertTrue(obj["usage"] is NSNull)
        let choice = (obj["choices"] as! [[String: Any]])[0]
        XCTAssertTrue(choice["finish_reason"] is NSNull)
        XCTAssertTrue(choice["logprobs"] is NSNull)
        XCTAssertEqual(choice["delta"] as? [String: String], ["content": "hi"])
        // without include_usage there is no usage key at all
        var c2 = c
        c2.includeUsageKey = false
        let obj2 = try JSONSerialization.jsonObject(with: OpenAIServer.encoder().encode(c2)) as! [String: Any]
        XCTAssertNil(obj2["usage"])
    }

    func testUsageTotals() throws {
        let u = Usage(promptTokens: 3, completionTokens: 4)
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: JSONEncoder().encode(u)) as? [String: Any])
        XCTAssertEqual(obj.filter { $0.key != "prompt_tokens_details" } as? [String: Int],
                       ["prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7])
        XCTAssertEqual(obj["prompt_tokens_details"] as? [String: Int], ["cached_tokens": 0])
        // Prompt tokens served from the prefix cache, as OpenAI reports them.
        let cached = try XCTUnwrap(JSONSerialization.jsonObject(
            with: JSONEncoder().encode(Usage(promptTokens: 40, completionTokens: 2, cachedTokens: 32))) as? [String: Any])
        XCTAssertEqual(cached["prompt_tokens_details"] as? [String: Int], ["cached_tokens": 32])
        XCTAssertEqual(cached["total_tokens"] as? Int, 42)
    }
}
