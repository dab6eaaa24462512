import Foundation
import GGUF
import Tokenizer
import XCTest

/// Byte-level BPE and the pre-tokenizers, against Hugging Face `tokenizers` and the Python `regex` module
/// (Fixtures/bpe.json, made by scripts/make_bpe_fixture.py).
final class BPETokenizerTests: XCTestCase {
    struct Fixture: Decodable {
        let vocab: [String]
        let special: [Int32]
        let merges: [String]
        let strings: [String]
        let encode: [String: [[Int32]]]
        let splits: [String: [[String]]]
    }

    static let fixture: Result<Fixture, any Error> = Result {
        try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: Fixtures.url("bpe.json")))
    }

    func fixture() throws -> Fixture { try Self.fixture.get() }

    func metadata(pre: String?, addBOS: Bool? = false) throws -> [String: GGUFValue] {
        let f = try fixture()
        var md: [String: GGUFValue] = [
            "tokenizer.ggml.model": .string("gpt2"),
            "tokenizer.ggml.tokens": .array(.string(f.vocab)),
            "tokenizer.ggml.token_type": .array(.int32(f.vocab.indices.map { f.special.contains(Int32($0)) ? 3 : 1 })),
            "tokenizer.ggml.merges": .array(.string(f.merges)),
            "tokenizer.ggml.bos_token_id": .uint32(0),
            "tokenizer.ggml.eos_token_id": .uint32(1),
        ]
        if let pre { md["tokenizer.ggml.pre"] = .string(pre) }
        if let addBOS { md["tokenizer.ggml.add_bos_token"] = .bool(addBOS) }
        return md
    }

    func testEncodeMatchesHuggingFace() throws {
        let f = try fixture()
        XCTAssertEqual(Set(f.encode.keys), ["gpt-2", "llama-bpe", "qwen2", "deepseek-v3"])
        for (pre, expected) in f.encode.sorted(by: { $0.key < $1.key }) {
            let tok = try Tokenizer(metadata: metadata(pre: pre))
            XCTAssertEqual(tok.kind, .byteLevelBPE)
            XCTAssertEqual(tok.preTokenizer?.name, pre)
            for (text, ids) in zip(f.strings, expected) {
                let got = tok.encode(text, addSpecial: false)
                XCTAssertEqual(got, ids, "\(pre): \(text.debugDescription)")
                XCTAssertEqual(tok.decode(got), text, "\(pre): \(text.debugDescription)")
            }
        }
    }

    func testPreTokenizerSplitsMatchPythonRegex() throws {
        let f = try fixture()
        XCTAssertEqual(Set(f.splits.keys), ["gpt-2", "llama-bpe", "qwen2", "deepseek-v3", "default"])
        for (name, expected) in f.splits.sorted(by: { $0.key < $1.key }) {
            let pre = try PreTokenizer(name: name)
            for (text, words) in zip(f.strings, expected) {
                XCTAssertEqual(pre.split(text), words, "\(name): \(text.debugDescription)")
            }
        }
    }

    func testThroughGGUFFile() throws {
        var w = GGUFWriter()
        for (k, v) in try metadata(pre: "qwen2").sorted(by: { $0.key < $1.key }) { w.set(k, v) }
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("bpe-\(UUID().uuidString).gguf").path
        try w.write(to: path)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let tok = try Tokenizer(gguf: GGUFFile(path: path))
        let f = try fixture()
        XCTAssertEqual(tok.encode(f.strings[0], addSpecial: false), f.encode["qwen2"]![0])
    }

    func testSpecialTokensAndFlags() throws {
        let f = try fixture()
        // llama-bpe adds BOS unless the metadata says otherwise.
        let tok = try Tokenizer(metadata: metadata(pre: "llama-bpe", addBOS: nil))
        XCTAssertTrue(tok.addBOS)
        XCTAssertEqual(tok.encode("hi").first, 0)
        XCTAssertEqual(tok.encode("hi", addSpecial: false), tok.encode("hi").dropFirst().map { $0 })
        for name in ["<|eot_id|>", "<|im_end|>", "<|end_of_text|>"] {
            XCTAssertTrue(tok.isEndOfGeneration(tok.tokenID(for: name)!), name)
        }
        XCTAssertFalse(tok.isEndOfGeneration(tok.tokenID(for: "<|im_start|>")!))
        XCTAssertFalse(tok.isEndOfGeneration(0))
        XCTAssertTrue(tok.isControl(tok.tokenID(for: "<|im_start|>")!))

        let eot = tok.tokenID(for: "<|eot_id|>")!
        XCTAssertTrue(tok.encode("a<|eot_id|>b", addSpecial: false).contains(eot))
        let plain = tok.encode("a<|eot_id|>b", addSpecial: false, parseSpecial: false)
        XCTAssertFalse(plain.contains(eot))
        XCTAssertEqual(tok.decode(plain), "a<|eot_id|>b")
        XCTAssertEqual(tok.decode(tok.encode("a<|eot_id|>b")), "<|begin_of_text|>a<|eot_id|>b")
        XCTAssertEqual(tok.decode(tok.encode("a<|eot_id|>b"), skipSpecial: true), "ab")

        // Byte-level pieces decode to their bytes.
        XCTAssertEqual(tok.tokenBytes(tok.tokenID(for: "Ġ")!), [0x20])
        XCTAssertEqual(tok.tokenBytes(tok.tokenID(for: "Ċ")!), [0x0A])
        XCTAssertEqual(tok.piece(tok.tokenID(for: "Ġ")!), "Ġ")
        XCTAssertEqual(tok.vocabSize, f.vocab.count)

        // Incremental detokenization of multi-byte characters split over byte tokens.
        let text = "Emoji: 🦄🎉 日本語 ещё"
        let ids = tok.encode(text, addSpecial: false)
        var detok = IncrementalDetokenizer(tokenizer: tok)
        var out = ""
        for id in ids {
            let piece = detok.append(id)
            XCTAssertFalse(piece.unicodeScalars.contains("\u{FFFD}"))
            out += piece
        }
        out += detok.flush()
        XCTAssertEqual(out, text)
    }

    func testErrors() throws {
        func message(_ md: [String: GGUFValue]) -> String {
            do {
                _ = try Tokenizer(metadata: md)
                return "no error"
            } catch {
                return "\(error)"
            }
        }
        var md = try metadata(pre: "qwen2")
        md["tokenizer.ggml.model"] = nil
        XCTAssertTrue(message(md).contains("tokenizer.ggml.model"), message(md))
        md["tokenizer.ggml.model"] = .string("bert")
        XCTAssertTrue(message(md).contains("unsupported tokenizer.ggml.model 'bert'"), message(md))
        md = try metadata(pre: "no-such-pre")
        XCTAssertTrue(message(md).contains("unsupported tokenizer.ggml.pre 'no-such-pre'"), message(md))
        md = try metadata(pre: "qwen2")
        md["tokenizer.ggml.merges"] = nil
        XCTAssertTrue(message(md).contains("missing metadata tokenizer.ggml.merges"), message(md))
        md = try metadata(pre: "qwen2")
        md["tokenizer.ggml.tokens"] = .array(.int32([1, 2]))
        XCTAssertTrue(message(md).contains("tokenizer.ggml.tokens must be an array of strings"), message(md))
        md = try metadata(pre: "qwen2")
        md["tokenizer.ggml.bos_token_id"] = .uint32(100_000)
        XCTAssertTrue(message(md).contains("tokenizer.ggml.bos_token_id = 100000 is outside"), message(md))
        md = try metadata(pre: "qwen2")
        md["tokenizer.ggml.token_type"] = .array(.int32([1]))
        XCTAssertTrue(message(md).contains("tokenizer.ggml.token_type has 1 entries"), message(md))
        md = try metadata(pre: "qwen2")
        md["tokenizer.ggml.merges"] = .array(.string(["nospace"]))
        XCTAssertTrue(message(md).contains("tokenizer.ggml.merges[0]"), message(md))
        XCTAssertThrowsError(try PreTokenizer(name: "nonsense"))
    }

    func testLongInputIsFast() throws {
        let tok = try Tokenizer(metadata: metadata(pre: "llama-bpe"))
        let text = String(repeating: "The quick brown fox, 12345 日本語 🎉\n", count: 4000)
        let t0 = Date()
        let ids = tok.encode(text, addSpecial: false)
        XCTAssertLessThan(Date().timeIntervalSince(t0), 2.0)
        XCTAssertEqual(tok.decode(ids), text)
        let run = String(repeating: "abcdefghij", count: 5000)
        let t1 = Date()
        XCTAssertEqual(tok.decode(tok.encode(run, addSpecial: false)), run)
        XCTAssertLessThan(Date().timeIntervalSince(t1), 2.0)
    }
}
