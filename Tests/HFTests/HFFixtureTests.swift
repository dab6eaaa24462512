import Backend
import Engine
import Foundation
import GGUF
import Models
import Quant
import SafeTensors
import XCTest

/// Every architecture's tiny random Hugging Face checkpoint (Fixtures/<name>/, made by scripts/make_hf_fixtures.py
/// with PyTorch + transformers) against the logits transformers computed for it (`reference.json`, eager attention,
/// float32): read directly from the directory, and converted to GGUF.
///
/// Tolerances (the acceptance): f32 — max |ours - ref| <= 1e-3 × max |ref| and the same argmax at every
/// position; q8_0 — the same argmax at >= 95% of positions. Measured (x86-64, AVX2): the directory and its f32
/// conversion ~4e-7–8e-7 relative, argmax 24/24 everywhere; q8_0 2–3% relative, argmax 24/24 (Mixtral 23/24: one
/// token's router choice flips under 8-bit activations).
final class HFFixtureTests: XCTestCase {
    static let fixtures = ["llama", "qwen2", "qwen3", "gemma3", "mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2",
                           "deepseek_v3"]
    /// The fixtures whose architecture the engine registers (all of them once the MoE architectures are in).
    static let all = fixtures.filter { ModelRegistry.supportedArchitectures.contains(expectedArchitecture[$0]!) }
    static let expectedArchitecture = ["llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3",
                                       "mixtral": "llama", "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe",
                                       "deepseek_v2": "deepseek2", "deepseek_v3": "deepseek2"]
    static let pool = ThreadPool(threads: 2)

    static let directory: URL = {
        guard let url = Bundle.module.url(forResource: "Fixtures", withExtension: nil) else {
            fatalError("HFTests: Fixtures resource folder missing from the test bundle")
        }
        return url
    }()

    static func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    struct Reference: Decodable {
        let architecture: String
        let tokens: [Int32]
        let logits: [[Float]]
    }

    static func reference(_ name: String) throws -> Reference {
        try JSONDecoder().decode(Reference.self,
                                 from: Data(contentsOf: directory.appendingPathComponent(name + "/reference.json")))
    }

    func testDirectories() throws {
        for name in Self.fixtures where !Self.all.contains(name) {
            print("\(name): skipped, architecture '\(Self.expectedArchitecture[name]!)' is not registered")
        }
        for name in Self.all {
            let hf = try HFCheckpoint(directory: Self.path(name))
            XCTAssertEqual(hf.architecture, Self.expectedArchitecture[name], name)
            try check(name, hf, what: "directory", maxRelativeError: 1e-3, minArgmaxAgreement: 1)
        }
    }

    func testF32Conversions() throws {
        for name in Self.all {
            let gguf = try converted(name, .f32)
            defer { try? FileManager.default.removeItem(atPath: gguf.path) }
            try check(name, gguf, what: "f32 GGUF", maxRelativeError: 1e-3, minArgmaxAgreement: 1)
        }
    }

    func testQ8_0Conversions() throws {
        for name in Self.all {
            let gguf = try converted(name, .q8_0)
            defer { try? FileManager.default.removeItem(atPath: gguf.path) }
            try check(name, gguf, what: "q8_0 GGUF", maxRelativeError: nil, minArgmaxAgreement: 0.95)
        }
    }

    /// The converted file has exactly the directory's GGUF view: same metadata (but the file type), same tensors,
    /// names, shapes, and (for f32) bytes; matrices become Q8_0 where their rows allow, norms and routers stay f32.
    func testConversionMatchesTheDirectoryView() throws {
        for name in ["llama", "gemma3", "deepseek_v3", "mixtral"] {
            let hf = try HFCheckpoint(directory: Self.path(name))
            for type in [GGMLType.f32, .q8_0] {
                let file = try converted(name, type)
                defer { try? FileManager.default.removeItem(atPath: file.path) }
                XCTAssertEqual(Set(file.metadataKeys).subtracting(["general.quantization_version"]), Set(hf.metadataKeys), name)
                for key in hf.metadataKeys where key != "general.file_type" {
                    XCTAssertEqual(file[key], hf.metadata[key], "\(name) \(key)")
                }
                XCTAssertEqual(file.tensors.map(\.name), hf.tensors.map(\.name), name)
                for t in hf.tensors {
                    let g = try XCTUnwrap(file.tensor(named: t.name))
                    XCTAssertEqual(g.shape, t.shape, "\(name) \(t.name)")
                    if type == .f32 {
                        XCTAssertEqual(g.type, .f32)
                        XCTAssertEqual(memcmp(file.data(of: g), hf.data(of: t), t.byteCount), 0, "\(name) \(t.name)")
                    } else if t.shape.count == 1 || t.name.hasSuffix("ffn_gate_inp.weight") {
                        XCTAssertEqual(g.type, .f32, "\(name) \(t.name)")
                    } else {
                        XCTAssertEqual(g.type, t.shape[0] % 32 == 0 ? .q8_0 : .f16, "\(name) \(t.name)")
                    }
                }
            }
        }
    }

    /// The transforms themselves, on known tensors: Llama's Q rows permuted, Gemma's norms + 1, experts stacked,
    /// DeepSeek's kv_b_proj split (K part transposed), the V3 routing bias kept.
    func testTransforms() throws {
        let llama = try HFCheckpoint(directory: Self.path("llama"))
        let q = try llama.checkpoint.floats("model.layers.0.self_attn.q_proj.weight")   // [64, 64], 4 heads of 16
        let pq = floats(llama, "blk.0.attn_q.weight")
        for (h, i, j) in [(0, 0, 0), (0, 0, 1), (1, 3, 1), (3, 7, 0)] {
            let newRow = h * 16 + i * 2 + j, oldRow = h * 16 + j * 8 + i
            XCTAssertEqual(Array(pq[newRow * 64..<(newRow + 1) * 64]), Array(q[oldRow * 64..<(oldRow + 1) * 64]))
        }
        XCTAssertNotNil(llama.tensor(named: "rope_freqs.weight"), "llama3 rope scaling gives rope_freqs")

        let gemma = try HFCheckpoint(directory: Self.path("gemma3"))
        let n = try gemma.checkpoint.floats("model.layers.1.pre_feedforward_layernorm.weight")
        XCTAssertEqual(floats(gemma, "blk.1.ffn_norm.weight"), n.map { $0 + 1 })
        XCTAssertEqual(gemma.metadata["gemma3.attention.sliding_window_pattern"]?.int, 2)
        XCTAssertNil(gemma.tensor(named: "output.weight"), "tied embeddings: no output tensor")

        let mixtral = try HFCheckpoint(directory: Self.path("mixtral"))
        let exps = try XCTUnwrap(mixtral.tensor(named: "blk.1.ffn_down_exps.weight"))
        XCTAssertEqual(exps.shape, [64, 64, 4])
        let w2 = try mixtral.checkpoint.floats("model.layers.1.block_sparse_moe.experts.2.w2.weight")
        XCTAssertEqual(Array(floats(mixtral, exps.name)[2 * 4096..<3 * 4096]), w2)

        let v3 = try HFCheckpoint(directory: Self.path("deepseek_v3"))
        let kvB = try v3.checkpoint.floats("model.layers.0.self_attn.kv_b_proj.weight")  // [4 * (16 + 16), 32]
        let kB = floats(v3, "blk.0.attn_k_b.weight"), vB = floats(v3, "blk.0.attn_v_b.weight")
        for (h, c, i) in [(0, 0, 0), (1, 5, 3), (3, 31, 15)] {
            XCTAssertEqual(kB[(h * 32 + c) * 16 + i], kvB[(h * 32 + i) * 32 + c])       // k_b[h][c][i] = kv_b[h*32+i][c]
            XCTAssertEqual(vB[(h * 16 + i) * 32 + c], kvB[(h * 32 + 16 + i) * 32 + c])  // v_b[h][i][c] = kv_b[h*32+16+i][c]
        }
        XCTAssertEqual(floats(v3, "blk.1.exp_probs_b.bias"),
                       try v3.checkpoint.floats("model.layers.1.mlp.gate.e_score_correction_bias"))
        XCTAssertEqual(v3.metadata["deepseek2.expert_gating_func"]?.int, 2)
        XCTAssertEqual(v3.metadata["deepseek2.rope.scaling.type"]?.string, "yarn")
        XCTAssertEqual(v3.metadata["deepseek2.expert_group_count"]?.int, 2)
    }

    func testUnsupportedArchitectureAndUnknownTensorAreNamed() throws {
        let dir = try copyFixture("qwen3")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cfg = dir + "/config.json"
        let original = try String(contentsOfFile: cfg, encoding: .utf8)
        try original.replacingOccurrences(of: "Qwen3ForCausalLM", with: "FancyForCausalLM")
            .replacingOccurrences(of: "\"qwen3\"", with: "\"fancy\"").write(toFile: cfg, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try HFCheckpoint(directory: dir)) { e in
            XCTAssertTrue("\(e)".contains("unsupported architecture 'FancyForCausalLM'"), "\(e)")
            XCTAssertTrue("\(e)".contains("config.json"), "\(e)")
        }
        // A tensor the mapping does not know.
        try original.write(toFile: cfg, atomically: true, encoding: .utf8)
        try SafeTensorsWriter.write(dir + "/extra.safetensors", [("model.layers.0.mystery.weight", .f32, [2], floatBytes([1, 2]))])
        XCTAssertThrowsError(try HFCheckpoint(directory: dir)) { e in
            XCTAssertTrue("\(e)".contains("'model.layers.0.mystery.weight'") && "\(e)".contains("extra.safetensors"), "\(e)")
        }
    }

    func testMissingExpertIsNamed() throws {
        let dir = try copyFixture("qwen2_moe")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Rewrite the file without one expert's up projection.
        let st = try SafeTensorsFile(path: dir + "/model.safetensors")
        let kept = st.tensors.filter { $0.name != "model.layers.1.mlp.experts.3.up_proj.weight" }.map {
            ($0.name, $0.dtype, $0.shape, [UInt8](UnsafeRawBufferPointer(start: st.data(of: $0), count: $0.byteCount)))
        }
        try SafeTensorsWriter.write(dir + "/model.safetensors", kept)
        XCTAssertThrowsError(try HFCheckpoint(directory: dir)) { e in
            XCTAssertTrue("\(e)".contains("layer 1 has up tensors for experts [0, 1, 2]"), "\(e)")
        }
    }

    // MARK: helpers

    private func floats(_ hf: HFCheckpoint, _ name: String) -> [Float] {
        guard let t = hf.tensor(named: name), let k = QuantRegistry.kernels(for: t.type) else {
            XCTFail("missing tensor \(name)")
            return []
        }
        var out = [Float](repeating: 0, count: t.elementCount)
        out.withUnsafeMutableBufferPointer { k.dequantize(hf.data(of: t), $0.baseAddress!, t.elementCount) }
        return out
    }

    private func converted(_ name: String, _ type: GGMLType) throws -> GGUFFile {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("hftests-\(name)-\(UUID().uuidString).gguf").path
        try HFCheckpoint(directory: Self.path(name)).writeGGUF(to: out, type: type)
        return try GGUFFile(path: out)
    }

    private func copyFixture(_ name: String) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hftests-\(UUID().uuidString)").path
        try FileManager.default.copyItem(atPath: Self.path(name), toPath: dir)
        return dir
    }

    private func check(_ name: String, _ source: any TensorSource, what: String, maxRelativeError: Float?,
                       minArgmaxAgreement: Double, file: StaticString = #filePath, line: UInt = #line) throws {
        let ref = try Self.reference(name)
        let model = try ModelRegistry.load(source, backend: CPUBackend(pool: Self.pool))
        let vocab = model.info.vocabSize
        XCTAssertEqual(ref.logits.first?.count, vocab, file: file, line: line)
        let gen = try Generator(model: model)
        let (logits, rows) = try gen.forward(ref.tokens, start: 0, logits: .all)
        XCTAssertEqual(rows, ref.tokens.count, file: file, line: line)
        var scale: Float = 0, err: Float = 0, agree = 0
        for r in 0..<rows {
            var bestRef = 0, bestOurs = 0
            for v in 0..<vocab {
                let a = ref.logits[r][v], b = logits[r * vocab + v]
                scale = max(scale, abs(a))
                err = max(err, abs(a - b))
                if a > ref.logits[r][bestRef] { bestRef = v }
                if b > logits[r * vocab + bestOurs] { bestOurs = v }
            }
            if bestRef == bestOurs { agree += 1 }
        }
        print(String(format: "%@ (%@): max |ours - ref| = %.3g, relative %.3g, argmax %d/%d", name, what, err, err / scale,
                     agree, rows))
        if let maxRelativeError {
            XCTAssertLessThanOrEqual(err, maxRelativeError * scale, "\(name) \(what)", file: file, line: line)
        }
        XCTAssertGreaterThanOrEqual(Double(agree), minArgmaxAgreement * Double(rows), "\(name) \(what)", file: file, line: line)
    }
}
