import Foundation
import XCTest
@testable import ChatTemplate

/// Every real model template over every conversation, against jinja2's renderings
/// (scripts/make_chat_template_fixtures.py).
final class RealTemplateTests: XCTestCase {
    func testAllTemplatesMatchJinja2() throws {
        let data = try Fixtures.json("chat_template_cases.json")
        let conversations = try XCTUnwrap(data["conversations"].objectValue)
        let cases = try XCTUnwrap(data["cases"].arrayValue)
        XCTAssertGreaterThan(cases.count, 200)
        var templates: [String: ChatTemplate] = [:]
        var passed = 0
        var otherErrors = 0, otherSameText = 0
        var perTemplate: [String: (ok: Int, total: Int)] = [:]
        for c in cases {
            let stem = try XCTUnwrap(c["template"].stringValue)
            let convName = try XCTUnwrap(c["conversation"].stringValue)
            let label = "\(stem) / \(convName) / gen=\(c["add_generation_prompt"].boolValue!)"
            if templates[stem] == nil {
                do {
                    var t = try ChatTemplate(source: try Fixtures.template(stem))
                    t.now = { Fixtures.now }
                    templates[stem] = t
                } catch {
                    XCTFail("\(stem): parse failed: \(error)")
                    continue
                }
            }
            let template = templates[stem]!
            let conv = try XCTUnwrap(conversations[convName])
            var extra: [String: JinjaValue] = [:]
            if let e = conv["extra"].objectValue { for (k, v) in e { extra[k] = v } }
            var ok = false
            do {
                let out = try template.render(messages: conv["messages"].arrayValue!,
                                              addGenerationPrompt: c["add_generation_prompt"].boolValue!,
                                              bosToken: c["bos_token"].stringValue!, eosToken: c["eos_token"].stringValue!,
                                              extra: extra)
                if let expected = c["expected"].stringValue {
                    if out == expected { ok = true } else {
                        XCTFail("\(label): rendering differs from jinja2\n\(Fixtures.firstDifference(out, expected))")
                    }
                } else {
                    XCTFail("\(label): expected error \(c["error"].stringValue ?? "") but rendered \(out.debugDescription.prefix(300))")
                }
            } catch let e as ChatTemplateError {
                guard let expectedError = c["error"].stringValue else {
                    XCTFail("\(label): unexpected error \(e)")
                    continue
                }
                switch (c["error_kind"].stringValue, e) {
                case ("raise", .raised(let m)):
                    if m == expectedError { ok = true } else { XCTFail("\(label): raise_exception message \(m.debugDescription) != \(expectedError.debugDescription)") }
                case ("other", .runtime(let m, _)):
                    // Other failures (type errors, undefined values) must fail too; the text is jinja2's where we can.
                    ok = true
                    otherErrors += 1
                    if m == expectedError { otherSameText += 1 } else { print("  note: \(label): \(m) | jinja2: \(expectedError)") }
                default:
                    XCTFail("\(label): error \(e) does not match jinja2's \(c["error_kind"].stringValue ?? "?"): \(expectedError)")
                }
            }
            if ok { passed += 1 }
            perTemplate[stem, default: (0, 0)].total += 1
            if ok { perTemplate[stem, default: (0, 0)].ok += 1 }
        }
        print("real templates: \(passed)/\(cases.count) cases match jinja2 across \(perTemplate.count) templates; "
              + "\(otherSameText)/\(otherErrors) non-raise errors have jinja2's exact message")
        for (k, v) in perTemplate.sorted(by: { $0.key < $1.key }) where v.ok != v.total {
            print("  \(k): \(v.ok)/\(v.total)")
        }
    }

    /// Rendering a 20-message conversation must take well under a millisecond.
    func testRenderSpeed() throws {
        for stem in ["qwen3-0.6b", "llama-3.1-8b-instruct", "gemma-3-it", "mistral-7b-instruct-v0.3"] {
            let t = try ChatTemplate(source: try Fixtures.template(stem))
            var messages: [JinjaValue] = [["role": "system", "content": "You are helpful."]]
            for i in 0..<19 {
                let role: JinjaValue = i % 2 == 0 ? "user" : "assistant"
                messages.append(["role": role, "content": .string("Message number \(i) with some text in it, about a line long.")])
            }
            if messages.count % 2 == 1 { }  // ends with a user turn (index 18 -> user)
            _ = try t.render(messages: messages, addGenerationPrompt: true, bosToken: "<s>", eosToken: "</s>")
            let n = 200
            let start = DispatchTime.now().uptimeNanoseconds
            for _ in 0..<n {
                _ = try t.render(messages: messages, addGenerationPrompt: true, bosToken: "<s>", eosToken: "</s>")
            }
            let per = Double(DispatchTime.now().uptimeNanoseconds - start) / Double(n) / 1e6
            print("\(stem): \(String(format: "%.3f", per)) ms per 20-message render")
            XCTAssertLessThan(per, 1.0, stem)
        }
    }
}
