import Foundation
import XCTest
@testable import ChatTemplate

final class APITests: XCTestCase {
    func testBuiltinTemplatesAreTheFixtureTemplates() throws {
        let pairs: [(String, String)] = [("gemma3", "gemma-3-it"), ("gemma2", "gemma-2-2b-it"), ("gemma", "gemma-2-2b-it"),
                                         ("llama", "llama-3-8b-instruct"), ("qwen2", "qwen2.5-7b-instruct"),
                                         ("qwen3", "qwen3-0.6b"), ("qwen3moe", "qwen3-0.6b"), ("phi3", "phi-3-mini-4k-instruct")]
        for (arch, stem) in pairs {
            let builtin = try XCTUnwrap(BuiltinTemplates.template(forArchitecture: arch), arch)
            XCTAssertEqual(builtin, try Fixtures.template(stem), arch)
        }
        for arch in BuiltinTemplates.architectures {
            XCTAssertNoThrow(try ChatTemplate(source: BuiltinTemplates.template(forArchitecture: arch)!), arch)
        }
        XCTAssertNil(BuiltinTemplates.template(forArchitecture: "bert"))
    }

    func testGemma3FoldsSystemPromptIntoFirstUserTurn() throws {
        let t = try ChatTemplate(source: BuiltinTemplates.gemma3)
        let out = try t.render(messages: [["role": "system", "content": "Be brief."],
                                          ["role": "user", "content": " Hi "],
                                          ["role": "assistant", "content": "Hello."],
                                          ["role": "user", "content": "Bye"]],
                               addGenerationPrompt: true, bosToken: "<bos>", eosToken: "<eos>")
        XCTAssertEqual(out, "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
                       + "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")
        XCTAssertThrowsError(try t.render(messages: [["role": "assistant", "content": "x"]], addGenerationPrompt: true,
                                          bosToken: "<bos>", eosToken: "<eos>")) { e in
            XCTAssertEqual(e as? ChatTemplateError, .raised(message: "Conversation roles must alternate user/assistant/user/assistant/..."))
        }
    }

    func testLlamaAndQwenBuiltins() throws {
        let llama = try ChatTemplate(source: BuiltinTemplates.template(forArchitecture: "llama")!)
        XCTAssertEqual(try llama.render(messages: [["role": "user", "content": "Hi"]], addGenerationPrompt: true,
                                        bosToken: "<|begin_of_text|>", eosToken: "<|eot_id|>"),
                       "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
        let qwen3 = try ChatTemplate(source: BuiltinTemplates.qwen3)
        XCTAssertEqual(try qwen3.render(messages: [["role": "user", "content": "Hi"]], addGenerationPrompt: true,
                                        bosToken: "", eosToken: "<|im_end|>", extra: ["enable_thinking": false]),
                       "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
        let qwen2 = try ChatTemplate(source: BuiltinTemplates.qwen2)
        XCTAssertEqual(try qwen2.render(messages: [["role": "user", "content": "Hi"]], addGenerationPrompt: true,
                                        bosToken: "", eosToken: "<|im_end|>"),
                       "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                       + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    }

    func testJSONSerializationInput() throws {
        let text = #"{"messages": [{"role": "user", "content": "héllo", "n": 3, "f": 1.5, "ok": true, "z": null, "list": [1, false]}]}"#
        let any = try JSONSerialization.jsonObject(with: Data(text.utf8))
        let v = JinjaValue(json: any)
        let m = v["messages"][0]
        XCTAssertEqual(m["content"], .string("héllo"))
        XCTAssertEqual(m["n"], .int(3))
        XCTAssertEqual(m["f"], .double(1.5))
        XCTAssertEqual(m["ok"], .bool(true))
        XCTAssertEqual(m["z"], .none)
        XCTAssertEqual(m["list"], .array([.int(1), .bool(false)]))
        XCTAssertEqual(m["missing"], .undefined)
        // Ordered parse keeps the key order, as Python's json module does.
        let ordered = try JinjaValue(jsonText: #"{"b": 1, "a": {"d": [1.0, 2], "c": "\u00e9\n"}}"#)
        XCTAssertEqual(ordered.objectValue?.keys, ["b", "a"])
        XCTAssertEqual(ordered.jsonString, #"{"b": 1, "a": {"d": [1.0, 2], "c": "é\n"}}"#)
        let t = try ChatTemplate(source: "{{ x | tojson }}|{{ messages[0].ok }}")
        XCTAssertEqual(try t.render(context: ["x": ordered, "messages": v["messages"]]), #"{"b": 1, "a": {"d": [1.0, 2], "c": "é\n"}}|True"#)
    }

    func testSyntaxErrorsSayWhere() throws {
        XCTAssertThrowsError(try ChatTemplate(source: "line one\n  {{ a b }}")) { e in
            guard case .syntax(let m, let line, let column)? = e as? ChatTemplateError else { return XCTFail("\(e)") }
            XCTAssertEqual(line, 2)
            XCTAssertEqual(column, 8)
            XCTAssertTrue(m.contains("'b'"), m)
        }
        XCTAssertThrowsError(try ChatTemplate(source: "ok\n{% for x in y %}\nno end")) { e in
            guard case .syntax(let m, let line, _)? = e as? ChatTemplateError else { return XCTFail("\(e)") }
            XCTAssertEqual(line, 2)
            XCTAssertTrue(m.contains("endfor"), m)
        }
        XCTAssertThrowsError(try ChatTemplate(source: "{% include 'x.jinja' %}")) { e in
            XCTAssertTrue("\(e)".contains("'include' tag is not supported"), "\(e)")
        }
        XCTAssertThrowsError(try ChatTemplate(source: "\n\n   {% frobnicate %}")) { e in
            XCTAssertEqual(e as? ChatTemplateError, .syntax(message: "unknown tag 'frobnicate'", line: 3, column: 7))
        }
    }

    func testRuntimeErrorsCarryLineAndJinjaMessage() throws {
        let t = try ChatTemplate(source: "{% for m in messages %}\n{{ m.content + 1 }}\n{% endfor %}")
        XCTAssertThrowsError(try t.render(messages: [["role": "user", "content": "x"]], addGenerationPrompt: false,
                                          bosToken: "", eosToken: "")) { e in
            XCTAssertEqual(e as? ChatTemplateError, .runtime(message: #"can only concatenate str (not "int") to str"#, line: 2))
        }
        let u = try ChatTemplate(source: "{{ messages[0].tool_calls[0].function }}")
        XCTAssertThrowsError(try u.render(messages: [["role": "user"]], addGenerationPrompt: false, bosToken: "", eosToken: "")) { e in
            XCTAssertEqual((e as? ChatTemplateError)?.message, "'dict object' has no attribute 'tool_calls'")
        }
    }

    func testRaiseExceptionMessageIsVerbatim() throws {
        let t = try ChatTemplate(source: "{% if messages[0].role != 'user' %}{{ raise_exception('First message must be from the user, got ' + messages[0].role + '!') }}{% endif %}ok")
        XCTAssertThrowsError(try t.render(messages: [["role": "tool", "content": ""]], addGenerationPrompt: true, bosToken: "", eosToken: "")) { e in
            XCTAssertEqual(e as? ChatTemplateError, .raised(message: "First message must be from the user, got tool!"))
            XCTAssertEqual("\(e)", "First message must be from the user, got tool!")
        }
    }

    func testConcurrentRendering() async throws {
        let t = try ChatTemplate(source: BuiltinTemplates.qwen3)
        let results = try await withThrowingTaskGroup(of: String.self) { group in
            for i in 0..<8 {
                group.addTask {
                    try t.render(messages: [["role": "user", "content": .string("n\(i)")]], addGenerationPrompt: true,
                                 bosToken: "", eosToken: "")
                }
            }
            var out: [String] = []
            for try await r in group { out.append(r) }
            return out
        }
        XCTAssertEqual(Set(results).count, 8)
    }

    func testStrftimeNowUsesTheClock() throws {
        var t = try ChatTemplate(source: "{{ strftime_now('%d %b %Y') }}")
        t.now = { Fixtures.now }
        XCTAssertEqual(try t.render(context: [:]), "15 Jan 2025")
    }
}
