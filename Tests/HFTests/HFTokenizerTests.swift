import Foundation
import GGUF
import SafeTensors
import Tokenizer
import XCTest

/// tokenizer.json → `tokenizer.ggml.*`: a byte-level BPE vocabulary trained with Hugging Face `tokenizers`
/// (Fixtures/bpe.json, a copy of TokenizerTests' fixture from scripts/make_bpe_fixture.py) written as a
/// tokenizer.json with each pre-tokenizer the way real checkpoints spell it, read back through `HFCheckpoint`,
/// must give the ids `tokenizers` gave.
final class HFTokenizerTests: XCTestCase {
    struct Fixture: Decodable {
        let vocab: [String]
        let special: [Int]
        let merges: [String]
        let strings: [String]
        let encode: [String: [[Int32]]]
    }

    /// The pre_tokenizer JSON of real checkpoints: GPT-2 is ByteLevel with its own regex; the others a Split
    /// (as in Llama 3's / Qwen2's / DeepSeek-V3's tokenizer.json) + ByteLevel without regex.
    static func preTokenizer(_ pre: String) -> String {
        let contractions = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)"#
        let tail = #"| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"#
        let letters = #"|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+"#
        func split(_ r: String) -> String { #"{"type": "Split", "pattern": {"Regex": "\#(r)"}, "behavior": "Isolated", "invert": false}"# }
        let byteLevel = #"{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}"#
        switch pre {
        case "gpt-2": return #"{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}"#
        case "llama-bpe": return #"{"type": "Sequence", "pretokenizers": [\#(split(contractions + letters + #"|\\p{N}{1,3}"# + tail)), \#(byteLevel)]}"#
        case "qwen2": return #"{"type": "Sequence", "pretokenizers": [\#(split(contractions + letters + #"|\\p{N}"# + tail)), \#(byteLevel)]}"#
        default:
            let third = ##"[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"##
            return #"{"type": "Sequence", "pretokenizers": [\#(split(#"\\p{N}{1,3}"#)), \#(split("[一-龥぀-ゟ゠-ヿ]+")), \#(split(third)), \#(byteLevel)]}"#
        }
    }

    func testTokenizerJSONBecomesGGUFTokenizerMetadata() throws {
        let f = try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: HFFixtureTests.directory.appendingPathComponent("bpe.json")))
        let special = Set(f.special)
        func q(_ s: String) -> String { String(data: try! JSONEncoder().encode(s), encoding: .utf8)! }
        let vocab = f.vocab.enumerated().filter { !special.contains($0.offset) }.map { "\(q($0.element)): \($0.offset)" }
        let added = f.special.map { #"{"id": \#($0), "content": \#(q(f.vocab[$0])), "special": true}"# }
        for pre in ["gpt-2", "llama-bpe", "qwen2", "deepseek-v3"] {
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hftok-\(UUID().uuidString)").path
            try FileManager.default.copyItem(atPath: HFFixtureTests.path("qwen2"), toPath: dir)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let json = """
                {"version": "1.0", "added_tokens": [\(added.joined(separator: ", "))],
                 "pre_tokenizer": \(Self.preTokenizer(pre)),
                 "model": {"type": "BPE", "byte_fallback": false, "vocab": {\(vocab.joined(separator: ", "))},
                           "merges": [\(f.merges.map(q).joined(separator: ", "))]}}
                """
            try json.write(toFile: dir + "/tokenizer.json", atomically: true, encoding: .utf8)
            try #"{"add_bos_token": false, "bos_token": "<|begin_of_text|>", "eos_token": {"content": "<|im_end|>"}, "chat_template": "{{ messages }}"}"#
                .write(toFile: dir + "/tokenizer_config.json", atomically: true, encoding: .utf8)
            let hf = try HFCheckpoint(directory: dir)
            XCTAssertNil(hf.tokenizerProblem, pre)
            XCTAssertEqual(hf.metadata["tokenizer.ggml.pre"]?.string, pre)
            XCTAssertEqual(hf.metadata["tokenizer.ggml.bos_token_id"]?.int, 0)
            XCTAssertEqual(hf.metadata["tokenizer.ggml.eos_token_id"]?.int, 4)
            XCTAssertEqual(hf.metadata["tokenizer.chat_template"]?.string, "{{ messages }}")
            let tok = try Tokenizer(metadata: hf.metadata)
            XCTAssertTrue(tok.isControl(3), pre)
            for (i, text) in f.strings.enumerated() {
                XCTAssertEqual(tok.encode(text, addSpecial: false), f.encode[pre]![i], "\(pre): \(text.debugDescription)")
            }
            // convert carries it into the GGUF file.
            let out = dir + "/model.gguf"
            try hf.writeGGUF(to: out, type: .f32)
            let gguf = try GGUFFile(path: out)
            XCTAssertEqual(gguf["tokenizer.ggml.tokens"], hf.metadata["tokenizer.ggml.tokens"])
            XCTAssertEqual(try Tokenizer(gguf: gguf).encode(f.strings[0], addSpecial: false), f.encode[pre]![0])
        }
    }

    /// A SentencePiece BPE model (byte fallback, Llama settings) as `transformers` writes it to tokenizer.json
    /// (Fixtures/spm.json from scripts/make_spm_fixture.py), in the legacy spelling (Llama 2, Mixtral: Prepend +
    /// Replace normalizer) and the Metaspace one (Mistral v3 and later), must give SentencePiece's own ids.
    func testSentencePieceTokenizerJSON() throws {
        let data = try Data(contentsOf: HFFixtureTests.directory.appendingPathComponent("spm.json"))
        let f = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let strings = try XCTUnwrap(f["strings"] as? [String])
        let want = try XCTUnwrap(f["ids"] as? [[Int]]).map { $0.map(Int32.init) }
        for variant in ["legacy", "metaspace"] {
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hftok-\(UUID().uuidString)").path
            try FileManager.default.copyItem(atPath: HFFixtureTests.path("llama"), toPath: dir)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try JSONSerialization.data(withJSONObject: try XCTUnwrap(f[variant]))
                .write(to: URL(fileURLWithPath: dir + "/tokenizer.json"))
            try #"{"add_bos_token": true, "add_eos_token": false, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}"#
                .write(toFile: dir + "/tokenizer_config.json", atomically: true, encoding: .utf8)
            let hf = try HFCheckpoint(directory: dir)
            XCTAssertNil(hf.tokenizerProblem, variant)
            XCTAssertEqual(hf.metadata["tokenizer.ggml.model"]?.string, "llama")
            XCTAssertEqual(hf.metadata["tokenizer.ggml.add_space_prefix"], .bool(true), variant)
            XCTAssertEqual(hf.metadata["tokenizer.ggml.bos_token_id"]?.int, 1)
            XCTAssertEqual(hf.metadata["tokenizer.ggml.eos_token_id"]?.int, 2)
            let tok = try Tokenizer(metadata: hf.metadata)
            for (i, text) in strings.enumerated() {
                let ids = tok.encode(text, addSpecial: false)
                XCTAssertEqual(ids, want[i], "\(variant): \(text.debugDescription)")
                XCTAssertEqual(tok.decode(ids), text, "\(variant): decode")
            }
            XCTAssertEqual(tok.encode(strings[0]).first, 1, "\(variant): BOS added")
            XCTAssertTrue(tok.isControl(2))
            // convert carries it into the GGUF file.
            let out = dir + "/model.gguf"
            try hf.writeGGUF(to: out, type: .f32)
            let fromFile = try Tokenizer(gguf: try GGUFFile(path: out))
            XCTAssertEqual(fromFile.encode(strings[1], addSpecial: false), want[1], variant)
        }
    }

    func testUnsupportedTokenizerIsReportedNotFatal() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hftok-\(UUID().uuidString)").path
        try FileManager.default.copyItem(atPath: HFFixtureTests.path("llama"), toPath: dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (json, says) in [
            (#"{"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}"#, "Unigram"),
            (#"{"normalizer": {"type": "NFKC"}, "model": {"type": "BPE", "byte_fallback": true, "vocab": {"a": 0}, "merges": []}}"#, "NFKC"),
        ] {
            try json.write(toFile: dir + "/tokenizer.json", atomically: true, encoding: .utf8)
            let hf = try HFCheckpoint(directory: dir)
            XCTAssertTrue(hf.tokenizerProblem?.contains(says) ?? false, hf.tokenizerProblem ?? "nil")
            XCTAssertNil(hf.metadata["tokenizer.ggml.model"])
        }
        XCTAssertNil(try HFCheckpoint(directory: HFFixtureTests.path("llama")).tokenizerProblem, "no tokenizer.json: no problem")
    }
}
