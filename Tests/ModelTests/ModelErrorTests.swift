import Foundation
import Backend
import GGUF
import Models
import XCTest

/// Loading failures name what is at fault.
final class ModelErrorTests: XCTestCase {
    func testUnsupportedArchitectureNamesIt() throws {
        let path = try TinyModels.rewrite("llama") { $0.set("general.architecture", .string("tinyfakearch")) }
        defer { try? FileManager.default.removeItem(atPath: path) }
        XCTAssertThrowsError(try ModelRegistry.load(GGUFFile(path: path), backend: CPUBackend(pool: TinyModels.pool))) { error in
            guard let e = error as? ModelError else { return XCTFail("expected ModelError, got \(error)") }
            XCTAssertTrue(e.description.contains("'tinyfakearch'"), e.description)
            XCTAssertTrue(e.description.contains("unsupported architecture"), e.description)
        }
    }

    /// For each architecture, drop a tensor it requires (one its own variant needs where there is one).
    func testMissingTensorNamesIt() throws {
        let cases = [
            ("llama", "output_norm.weight"),
            ("qwen2", "blk.1.attn_k.bias"),
            ("qwen3", "blk.0.attn_q_norm.weight"),
            ("gemma3", "blk.2.post_ffw_norm.weight"),
            ("gemma3", "blk.1.ffn_up.weight"),
            ("mixtral", "blk.1.ffn_down_exps.weight"),
            ("qwen2moe", "blk.0.ffn_gate_inp_shexp.weight"),
            ("qwen3moe", "blk.1.ffn_gate_inp.weight"),
            ("deepseek2", "blk.2.attn_kv_b.weight"),
            ("deepseek2", "blk.0.ffn_up.weight"),          // the leading dense layer
            ("deepseek2-v3", "blk.1.attn_q_a_norm.weight"),
            ("deepseek2-v3", "blk.2.attn_v_b.weight"),
            ("deepseek2-v3", "blk.1.ffn_up_shexp.weight"),
        ]
        for (fixture, tensor) in cases {
            let path = try TinyModels.rewrite(fixture) { $0 = $0.removingTensor(tensor) }
            defer { try? FileManager.default.removeItem(atPath: path) }
            let file = try GGUFFile(path: path)
            XCTAssertNil(file.tensor(named: tensor))
            XCTAssertThrowsError(try ModelRegistry.load(file, backend: CPUBackend(pool: TinyModels.pool))) { error in
                guard let e = error as? ModelError else { return XCTFail("expected ModelError, got \(error)") }
                XCTAssertTrue(e.description.contains("'\(tensor)'"), "\(fixture): \(e.description)")
                XCTAssertTrue(e.description.contains("missing tensor"), "\(fixture): \(e.description)")
            }
        }
    }

    /// A stacked expert tensor of the wrong shape is named with expected vs actual shape.
    func testWrongExpertShapeNamesIt() throws {
        let name = "blk.1.ffn_up_exps.weight"
        let path = try TinyModels.rewrite("qwen3moe") { w in
            guard let t = w.tensors.first(where: { $0.name == name }) else { return }
            var edited = w.removingTensor(name)
            // Drop the last expert: shape [dim, ff, nExpert - 1].
            let perExpert = t.data.count / t.shape[2]
            edited.addTensor(name: name, shape: [t.shape[0], t.shape[1], t.shape[2] - 1], type: t.type,
                             data: Array(t.data[0..<perExpert * (t.shape[2] - 1)]))
            w = edited
        }
        defer { try? FileManager.default.removeItem(atPath: path) }
        XCTAssertThrowsError(try ModelRegistry.load(GGUFFile(path: path), backend: CPUBackend(pool: TinyModels.pool))) { error in
            guard let e = error as? ModelError else { return XCTFail("expected ModelError, got \(error)") }
            XCTAssertTrue(e.description.contains("'\(name)'") && e.description.contains("expected [32, 16, 8]"),
                          e.description)
        }
    }

    /// The rewrite helper itself round-trips: an unedited copy loads and is the same architecture.
    func testUneditedCopyLoads() throws {
        let path = try TinyModels.rewrite("qwen3-q8_0") { _ in }
        defer { try? FileManager.default.removeItem(atPath: path) }
        let model = try ModelRegistry.load(GGUFFile(path: path), backend: CPUBackend(pool: TinyModels.pool))
        XCTAssertEqual(model.info.architecture, "qwen3")
        XCTAssertEqual(model.info.layerCount, 2)
    }
}
