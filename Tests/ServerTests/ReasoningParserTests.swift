import XCTest
@testable import Server

final class ReasoningParserTests: XCTestCase {
    struct Parsed: Equatable, CustomStringConvertible {
        var reasoning = ""
        var content = ""
        var description: String { "reasoning: \(reasoning.debugDescription), content: \(content.debugDescription)" }
    }

    func run(_ format: ReasoningFormat, _ startsInReasoning: Bool, _ pieces: [String]) -> Parsed {
        var parser = ReasoningParser(format: format, startsInReasoning: startsInReasoning)
        var events: [ReasoningEvent] = []
        for piece in pieces { events += parser.push(piece) }
        events += parser.finish()
        var parsed = Parsed()
        for event in events {
            switch event {
            case .reasoning(let text): parsed.reasoning += text
            case .content(let text): parsed.content += text
            }
        }
        return parsed
    }

    func parse(_ format: ReasoningFormat, _ startsInReasoning: Bool, _ text: String) -> Parsed {
        run(format, startsInReasoning, [text])
    }

    /// Every split of `text` in two, at each Unicode scalar boundary, and feeding it one scalar at a time, give
    /// the same reasoning and content as feeding it whole.
    func assertSplitInvariant(_ format: ReasoningFormat, _ startsInReasoning: Bool, _ text: String,
                              file: StaticString = #filePath, line: UInt = #line) {
        let whole = parse(format, startsInReasoning, text)
        let scalars = Array(text.unicodeScalars)
        func string(_ range: Range<Int>) -> String {
            var view = String.UnicodeScalarView()
            view.append(contentsOf: scalars[range])
            return String(view)
        }
        for cut in 0...scalars.count {
            XCTAssertEqual(run(format, startsInReasoning, [string(0..<cut), string(cut..<scalars.count)]), whole,
                           "\(format) split at \(cut) of \(text.debugDescription)", file: file, line: line)
        }
        XCTAssertEqual(run(format, startsInReasoning, scalars.indices.map { string($0..<$0 + 1) }), whole,
                       "\(format) one scalar at a time: \(text.debugDescription)", file: file, line: line)
    }

    static let samples = [
        // Qwen3 with thinking: the model opens the block itself.
        "<think>\nOkay, the user asks what 2 + 2 is. That's 4.\n</think>\n\nThe answer is **4**.",
        // Thinking disabled (Qwen3 with enable_thinking=false writes an empty block).
        "<think>\n\n</think>\n\nHello! How can I help?",
        // R1 / Qwen3-2507-Thinking: the prompt ended with "<think>\n", so only the closing tag appears.
        "Okay, so I need to compute 7 × 6. That's 42.\n</think>\n\n**42**",
        // No tags at all.
        "Just an answer, with <b>tags</b> and a < b.",
        // Truncated inside reasoning.
        "<think>\nLet me think about the 日本語 text 😀 carefully",
        // Leading whitespace before the tag; the tag text again later, in content.
        "\n\n<think>short</think>Answer: use </think> and <think> literally.\n",
        // Something that looks like a tag but is not.
        "<thinking>is not a tag</thinking>",
        "",
        "\n",
    ]

    func testQwen3() {
        let s = Self.samples
        XCTAssertEqual(parse(.qwen3, false, s[0]), Parsed(
            reasoning: "\nOkay, the user asks what 2 + 2 is. That's 4.\n", content: "The answer is **4**."))
        XCTAssertEqual(parse(.qwen3, false, s[1]), Parsed(reasoning: "\n\n", content: "Hello! How can I help?"))
        XCTAssertEqual(parse(.qwen3, false, s[2]), Parsed(content: s[2]))  // no opening tag: content
        XCTAssertEqual(parse(.qwen3, false, s[3]), Parsed(content: s[3]))
        XCTAssertEqual(parse(.qwen3, false, s[4]), Parsed(reasoning: "\nLet me think about the 日本語 text 😀 carefully"))
        XCTAssertEqual(parse(.qwen3, false, s[5]), Parsed(
            reasoning: "short", content: "Answer: use </think> and <think> literally.\n"))
        XCTAssertEqual(parse(.qwen3, false, s[6]), Parsed(content: s[6]))
        XCTAssertEqual(parse(.qwen3, false, s[7]), Parsed())
        XCTAssertEqual(parse(.qwen3, false, s[8]), Parsed(content: "\n"))
    }

    func testStartsInReasoning() {
        let s = Self.samples
        for format in ReasoningFormat.allCases {
            XCTAssertEqual(parse(format, true, s[2]), Parsed(
                reasoning: "Okay, so I need to compute 7 × 6. That's 42.\n", content: "**42**"))
            // A model that writes the opening tag anyway.
            XCTAssertEqual(parse(format, true, s[0]), Parsed(
                reasoning: "\nOkay, the user asks what 2 + 2 is. That's 4.\n", content: "The answer is **4**."))
            // Generation that ends inside the reasoning.
            XCTAssertEqual(parse(format, true, s[3]), Parsed(reasoning: s[3]))
            XCTAssertEqual(parse(format, true, "\nHmm"), Parsed(reasoning: "\nHmm"))
        }
    }

    func testDeepSeekR1() {
        let s = Self.samples
        XCTAssertEqual(parse(.deepseekR1, false, s[0]), Parsed(
            reasoning: "\nOkay, the user asks what 2 + 2 is. That's 4.\n", content: "The answer is **4**."))
        // A closing tag without an opening one: what came before it was reasoning.
        XCTAssertEqual(parse(.deepseekR1, false, s[2]), Parsed(
            reasoning: "Okay, so I need to compute 7 × 6. That's 42.\n", content: "**42**"))
        // No closing tag: content.
        XCTAssertEqual(parse(.deepseekR1, false, s[3]), Parsed(content: s[3]))
        XCTAssertEqual(parse(.deepseekR1, false, s[4]), Parsed(
            reasoning: "\nLet me think about the 日本語 text 😀 carefully"))
        XCTAssertEqual(parse(.deepseekR1, false, s[6]), Parsed(content: s[6]))
    }

    func testStreamingReleasesAllButATagPrefix() {
        var parser = ReasoningParser(format: .qwen3, startsInReasoning: false)
        XCTAssertEqual(parser.push("\n<thi"), [])
        XCTAssertEqual(parser.push("nk>"), [])
        XCTAssertEqual(parser.push("abc <"), [.reasoning("abc ")])
        XCTAssertEqual(parser.push("b> </thi"), [.reasoning("<b> ")])
        XCTAssertEqual(parser.push("nk>\n"), [])
        XCTAssertEqual(parser.push("\nDone"), [.content("Done")])
        XCTAssertEqual(parser.push(" </think>"), [.content(" </think>")])
        XCTAssertEqual(parser.finish(), [])

        var plain = ReasoningParser(format: .qwen3, startsInReasoning: false)
        XCTAssertEqual(plain.push("Hi"), [.content("Hi")])

        // deepseek_r1 without an opening tag cannot know before a closing tag (or the end) what it has.
        var r1 = ReasoningParser(format: .deepseekR1, startsInReasoning: false)
        XCTAssertEqual(r1.push("Hmm, "), [])
        XCTAssertEqual(r1.push("ok.</think>\n\nYes"), [.reasoning("Hmm, ok."), .content("Yes")])
        XCTAssertEqual(r1.finish(), [])
    }

    func testEverySplitGivesTheSameResult() {
        for format in ReasoningFormat.allCases {
            for startsInReasoning in [false, true] {
                for sample in Self.samples { assertSplitInvariant(format, startsInReasoning, sample) }
            }
        }
    }

    func testDetect() {
        XCTAssertEqual(ReasoningFormat.detect(template: """
            {%- if add_generation_prompt %}{{'<｜Assistant｜><think>\\n'}}{%- endif %}
            """), .deepseekR1)
        XCTAssertEqual(ReasoningFormat.detect(template: """
            {{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}
            """), .qwen3)
        XCTAssertNil(ReasoningFormat.detect(template: "{{- '<|im_start|>assistant\\n' }}"))
        XCTAssertEqual(ReasoningFormat(rawValue: "deepseek_r1"), .deepseekR1)
    }
}
