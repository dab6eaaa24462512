import Foundation
import GGUF
import Models
import XCTest

/// Loading failures name what is at fault.
final class ModelErrorTests: XCTestCase {
    func testUnsupportedArchitectureNamesIt() throws {
        let path = try TinyModels.rewrite("llama") { $0.set("general.architecture", .string("tinyfakearch")) }
        defer { try? FileManager.default.removeItem(atPath: path) }
        XCTAssertThrowsError(try ModelRegistry.load(GGUFFile(path: path), pool: TinyModels.pool)) { error in
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
        ]
        for (fixture, tensor) in cases {
            let path = try TinyModels.rewrite(fixture) { $0 = $0.removingTensor(tensor) }
            defer { try? FileManager.default.removeItem(atPath: path) }
            let file = try GGUFFile(path: path)
            XCTAssertNil(file.tensor(named: tensor))
            XCTAssertThrowsError(try ModelRegistry.load(file, pool: TinyModels.pool)) { error in
                guard let e = error as? ModelError else { return XCTFail("expected ModelError, got \(error)") }
                XCTAssertTrue(e.description.contains("'\(tensor)'"), "\(fixture): \(e.description)")
                XCTAssertTrue(e.description.contains("missing tensor"), "\(fixture): \(e.description)")
            }
        }
    }

    /// The rewrite helper itself round-trips: an unedited copy loads and is the same architecture.
    func testUneditedCopyLoads() throws {
        let path = try TinyModels.rewrite("qwen3-q8_0") { _ in }
        defer { try? FileManager.default.removeItem(atPath: path) }
        let model = try ModelRegistry.load(GGUFFile(path: path), pool: TinyModels.pool)
        XCTAssertEqual(model.info.architecture, "qwen3")
        XCTAssertEqual(model.info.layerCount, 2)
    }
}
