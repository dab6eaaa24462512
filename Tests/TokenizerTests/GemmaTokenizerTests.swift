import Foundation
import GGUF
import Tokenizer
import XCTest

/// The SentencePiece-style tokenizer on the real default model (Gemma 3), against llama.cpp's llama-tokenize.
final class GemmaTokenizerTests: XCTestCase {
    func testMatchesLlamaCppIDs() throws {
        let tok = try Fixtures.gemmaTokenizer()
        let cases = try Fixtures.tokenizeCases()
        XCTAssertGreaterThanOrEqual(cases.count, 50)
        for c in cases {
            let ids = tok.encode(c.text, addSpecial: c.add_bos, parseSpecial: c.parse_special)
            XCTAssertEqual(ids, c.ids, "text \(c.text.debugDescription) add_bos \(c.add_bos)")
        }
    }

    func testMetadata() throws {
        let tok = try Fixtures.gemmaTokenizer()
        XCTAssertEqual(tok.kind, .sentencePiece)
        XCTAssertEqual(tok.vocabSize, 262_144)
        XCTAssertEqual(tok.bosID, 2)
        XCTAssertEqual(tok.eosID, 1)
        XCTAssertTrue(tok.addBOS)
        XCTAssertFalse(tok.addEOS)
        XCTAssertFalse(tok.addSpacePrefix)
        XCTAssertEqual(tok.piece(2), "<bos>")
        XCTAssertEqual(tok.tokenID(for: "<bos>"), 2)
        XCTAssertNil(tok.tokenID(for: "no such token, surely"))
        let eot = try XCTUnwrap(tok.tokenID(for: "<end_of_turn>"))
        XCTAssertTrue(tok.isEndOfGeneration(eot))
        XCTAssertTrue(tok.isEndOfGeneration(1))
        XCTAssertEqual(tok.eotID, eot)
        XCTAssertFalse(tok.isEndOfGeneration(2))
        XCTAssertFalse(tok.isEndOfGeneration(tok.tokenID(for: "▁the")!))
        XCTAssertTrue(tok.isControl(2))
        XCTAssertFalse(tok.isControl(tok.tokenID(for: "▁the")!))
        XCTAssertEqual(tok.tokenBytes(tok.tokenID(for: "<0xF0>")!), [0xF0])
        XCTAssertEqual(tok.tokenBytes(tok.tokenID(for: "▁the")!), Array(" the".utf8))
        XCTAssertEqual(tok.tokenBytes(-1), [])
        XCTAssertEqual(tok.tokenBytes(Int32(tok.vocabSize)), [])
    }

    func testSpecialTokens() throws {
        let tok = try Fixtures.gemmaTokenizer()
        let sot = try XCTUnwrap(tok.tokenID(for: "<start_of_turn>"))
        let eot = try XCTUnwrap(tok.tokenID(for: "<end_of_turn>"))
        let text = "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n"
        let ids = tok.encode(text)
        XCTAssertEqual(ids.first, 2)
        XCTAssertEqual(ids[1], sot)
        XCTAssertEqual(ids.filter { $0 == sot }.count, 2)
        XCTAssertEqual(ids.filter { $0 == eot }.count, 1)
        XCTAssertEqual(tok.decode(ids), "<bos>" + text)
        XCTAssertEqual(tok.decode(ids, skipSpecial: true), "user\nHi there\nmodel\n")
        // The text between special tokens is tokenized on its own.
        XCTAssertEqual(Array(ids[2..<ids.firstIndex(of: eot)!]), tok.encode("user\nHi there", addSpecial: false))
        // Not parsed: the markup is plain text.
        let plain = tok.encode(text, addSpecial: false, parseSpecial: false)
        XCTAssertFalse(plain.contains(sot))
        XCTAssertFalse(plain.contains(eot))
        XCTAssertEqual(tok.decode(plain), text)
        // User-defined tokens (Gemma's "\n\n", runs of spaces, ...) are matched even then, as in llama.cpp.
        XCTAssertTrue(tok.encode("a\n\nb", addSpecial: false, parseSpecial: false).contains(tok.tokenID(for: "\n\n")!))
    }

    func testRoundTrip() throws {
        let tok = try Fixtures.gemmaTokenizer()
        var texts = try Fixtures.tokenizeCases().map(\.text)
        texts += ["", " ", "\u{0}", "a\u{7F}b", "ﬁ ligature", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛", "\u{10FFFF}\u{E000}", String(repeating: "🎉", count: 50)]
        for text in texts {
            let ids = tok.encode(text, addSpecial: false, parseSpecial: false)
            XCTAssertEqual(tok.decode(ids), text, "text \(text.debugDescription)")
            let withBOS = tok.encode(text)
            XCTAssertEqual(tok.decode(withBOS, skipSpecial: true), text)
        }
    }

    func testIncrementalDetokenizer() throws {
        let tok = try Fixtures.gemmaTokenizer()
        let texts = ["Emoji: 🎉🔥👍🏽 and family 👨‍👩‍👧", "日本語のテキストです。", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u{10FFFF}", "你好，世界！今天天气很好。",
                     "rare CJK 𠀀𠀁𪜀 and 🫨🪿", "<start_of_turn>user\n🦄🦄<end_of_turn>"]
        var sawHeldBack = false
        for text in texts {
            let ids = tok.encode(text)
            for skip in [false, true] {
                var detok = IncrementalDetokenizer(tokenizer: tok, skipSpecial: skip)
                var out = ""
                for id in ids {
                    let piece = detok.append(id)
                    XCTAssertFalse(piece.unicodeScalars.contains("\u{FFFD}"), "broken UTF-8 emitted for \(text)")
                    if piece.isEmpty && !tok.tokenBytes(id).isEmpty && !tok.isControl(id) { sawHeldBack = true }
                    out += piece
                }
                out += detok.flush()
                XCTAssertEqual(out, tok.decode(ids, skipSpecial: skip))
            }
        }
        XCTAssertTrue(sawHeldBack, "expected some byte-fallback token to be held back")

        // Bytes that never complete a character come out of flush as U+FFFD, as in decode.
        let f0 = try XCTUnwrap(tok.tokenID(for: "<0xF0>")), x9f = try XCTUnwrap(tok.tokenID(for: "<0x9F>"))
        let a = try XCTUnwrap(tok.tokenID(for: "a"))
        let ids = [a, f0, x9f, a, f0]
        var detok = IncrementalDetokenizer(tokenizer: tok)
        var out = ids.map { detok.append($0) }.joined()
        out += detok.flush()
        XCTAssertEqual(out, tok.decode(ids))
        XCTAssertEqual(out, "a\u{FFFD}a\u{FFFD}")
    }

    func testLongInputIsFast() throws {
        let tok = try Fixtures.gemmaTokenizer()
        let unit = "The quick brown fox jumps over the lazy dog. 日本語 🎉 <start_of_turn> 1234567\n"
        let text = String(repeating: unit, count: 2000)  // ~180 KB
        let t0 = Date()
        let ids = tok.encode(text)
        let dt = Date().timeIntervalSince(t0)
        XCTAssertEqual(tok.decode(ids, skipSpecial: false), "<bos>" + text)
        XCTAssertLessThan(dt, 2.0, "encoding 180 KB took \(dt) s")
        // One long run without spaces: merges must not be quadratic.
        let run = String(repeating: "abcdefghij", count: 10_000)
        let t1 = Date()
        let runIDs = tok.encode(run, addSpecial: false)
        XCTAssertLessThan(Date().timeIntervalSince(t1), 2.0)
        XCTAssertEqual(tok.decode(runIDs), run)
    }

    func testInitTime() throws {
        guard DefaultModel.isInstalled else {
            XCTFail("default model not found at \(DefaultModel.path): run scripts/default-model.sh to install it")
            return
        }
        let file = try GGUFFile(path: DefaultModel.path)
        let t0 = Date()
        _ = try Tokenizer(gguf: file)
        let dt = Date().timeIntervalSince(t0)
        XCTAssertLessThan(dt, 1.5, "Tokenizer init took \(dt) s")
        print("Tokenizer init (262144 tokens): \(String(format: "%.3f", dt)) s")
    }
}
