import Engine
import GGUF
import Tokenizer
import XCTest
@testable import Server

/// The output path on the real default model's tokenizer (skipped when the model is not installed).
final class OutputProcessorTests: XCTestCase {
    static let tokenizer: Tokenizer? = {
        guard DefaultModel.isInstalled, let f = try? GGUFFile(path: DefaultModel.path) else { return nil }
        return try? Tokenizer(gguf: f)
    }()

    func tok() throws -> Tokenizer {
        guard let t = Self.tokenizer else { throw XCTSkip("default model not installed (scripts/default-model.sh)") }
        return t
    }

    func outputs(_ ids: [Int32], finish: FinishReason = .length, logprobs: Bool = true) -> [EngineOutput] {
        ids.enumerated().map { i, id in
            EngineOutput(token: id, logprob: logprobs ? TokenLogprob(id: id, logprob: -Float(i) / 10, top: []) : nil,
                         finishReason: i == ids.count - 1 ? finish : nil, promptTokens: 5, completionTokens: i + 1)
        }
    }

    func testPlainTextAndLogprobsLineUp() throws {
        let t = try tok()
        let ids = t.encode("Hello there, how are you today?", addSpecial: false)
        var p = OutputProcessor(tokenizer: t, stopTokenIDs: [], stopStrings: [])
        var text = "", items: [OutputProcessor.LogprobItem] = []
        var last: OutputProcessor.Delta?
        for o in outputs(ids) { let d = p.process(o); text += d.text; items += d.logprobs; last = d }
        XCTAssertEqual(text, "Hello there, how are you today?")
        XCTAssertEqual(items.count, ids.count)
        XCTAssertEqual(last?.finishReason, "length")
        XCTAssertEqual(last?.completionTokens, ids.count)
        var lp = CompletionLogprobs()
        p.appendCompletion(items, to: &lp)
        XCTAssertEqual(lp.tokens.joined(), text)
        for (i, off) in lp.textOffset.enumerated() {
            XCTAssertEqual(off, lp.tokens[..<i].map { $0.unicodeScalars.count }.reduce(0, +))
        }
    }

    func testStopStringAcrossTokensIsNeverEmitted() throws {
        let t = try tok()
        let ids = t.encode("The answer is forty-two. The end.", addSpecial: false)
        var p = OutputProcessor(tokenizer: t, stopTokenIDs: [], stopStrings: ["ty-tw"])
        var text = "", matched = false, items = 0, finish: String?
        for o in outputs(ids) {
            let d = p.process(o)
            text += d.text
            items += d.logprobs.count
            if d.stopStringMatched { matched = true; finish = d.finishReason; break }
        }
        XCTAssertTrue(matched)
        XCTAssertEqual(finish, "stop")
        XCTAssertEqual(text, "The answer is for")
        XCTAssertFalse(text.contains("ty-tw"))
        XCTAssertLessThan(items, ids.count)
    }

    func testEndOfGenerationTokenAddsNoText() throws {
        let t = try tok()
        let eog = try XCTUnwrap(t.endOfGenerationIDs.first)
        let ids = t.encode("Bye now", addSpecial: false) + [eog]
        var p = OutputProcessor(tokenizer: t, stopTokenIDs: Set(t.endOfGenerationIDs), stopStrings: [])
        var text = "", items = 0
        var last: OutputProcessor.Delta?
        for o in outputs(ids, finish: .stop) { let d = p.process(o); text += d.text; items += d.logprobs.count; last = d }
        XCTAssertEqual(text, "Bye now")
        XCTAssertEqual(items, ids.count - 1)
        XCTAssertEqual(last?.finishReason, "stop")
        XCTAssertEqual(last?.completionTokens, ids.count)  // the end token still counts in usage
    }

    func testAbortWithoutToken() throws {
        let t = try tok()
        var p = OutputProcessor(tokenizer: t, stopTokenIDs: [], stopStrings: ["zzz"])
        XCTAssertEqual(p.process(EngineOutput(token: t.encode("ab z", addSpecial: false)[0], logprob: nil, finishReason: nil,
                                              promptTokens: 1, completionTokens: 1)).finishReason, nil)
        let d = p.process(EngineOutput(token: nil, logprob: nil, finishReason: .abort, promptTokens: 1, completionTokens: 1))
        XCTAssertEqual(d.finishReason, "abort")
    }
}
