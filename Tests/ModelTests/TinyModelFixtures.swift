import Backend
import Foundation
import GGUF
import Models
import XCTest

/// The tiny random models of Fixtures/ (made by scripts/make_tiny_models.py) and their float64 NumPy reference
/// logits. `<name>.gguf` is the model, `<name>.json` is `{"tokens": [...], "logits": [[vocab] per position]}`.
enum TinyModels {
    /// Every fixture: f32 matrices, and one quantized variant per dense architecture; the MoE models
    /// (scripts/make_tiny_moe_models.py) are f32, plus `qwen3moe-q8_0` with Q8_0 experts.
    static let all = ["llama", "llama-q8_0", "qwen2", "qwen2-f16", "qwen3", "qwen3-q8_0", "gemma3", "gemma3-f16"] + moe
        + ["qwen3moe-q8_0"]
    /// The f32 variant of each architecture.
    static let f32 = ["llama", "qwen2", "qwen3", "gemma3"] + moe
    /// The MoE fixtures: Mixtral (stored as `llama`), Qwen2-MoE, Qwen3-MoE, DeepSeek-V2 and -V3 style.
    static let moe = ["mixtral", "qwen2moe", "qwen3moe", "deepseek2", "deepseek2-v3"]

    /// One pool for every test (workers stay up for the process).
    static let pool = ThreadPool(threads: 2)

    static let directory: URL = {
        guard let url = Bundle.module.url(forResource: "Fixtures", withExtension: nil) else {
            fatalError("ModelTests: Fixtures resource folder missing from the test bundle")
        }
        return url
    }()

    static func path(_ name: String, _ ext: String) -> String {
        directory.appendingPathComponent("\(name).\(ext)").path
    }

    struct Reference: Decodable {
        let tokens: [Int32]
        let logits: [[Double]]
    }

    static func reference(_ name: String) throws -> Reference {
        try JSONDecoder().decode(Reference.self, from: Data(contentsOf: URL(fileURLWithPath: path(name, "json"))))
    }

    static func load(_ name: String) throws -> LanguageModel {
        try load(name, backend: CPUBackend(pool: pool))
    }

    static func load(_ name: String, backend: any ComputeBackend) throws -> LanguageModel {
        try ModelRegistry.load(GGUFFile(path: path(name, "gguf")), backend: backend)
    }

    /// The architecture part of a fixture name (`qwen3-q8_0` → `qwen3`; llama.cpp stores Mixtral as `llama`).
    static func architecture(_ name: String) -> String {
        name == "mixtral" ? "llama" : String(name.split(separator: "-")[0])
    }

    /// Copies `source` into a new GGUF file in the temporary directory, with `edit` applied to the writer
    /// (which starts with every metadata key and tensor of `source`); returns its path.
    static func rewrite(_ source: String, _ edit: (inout GGUFWriter) -> Void) throws -> String {
        let file = try GGUFFile(path: path(source, "gguf"))
        var w = GGUFWriter()
        for key in file.metadataKeys {
            if let v = file[key] { w.set(key, v) }
        }
        for t in file.tensors {
            let bytes = [UInt8](UnsafeRawBufferPointer(start: file.data(of: t), count: t.byteCount))
            w.addTensor(name: t.name, shape: t.shape, type: t.type, data: bytes)
        }
        edit(&w)
        let out = FileManager.default.temporaryDirectory
            .appendingPathComponent("modeltests-\(UUID().uuidString).gguf").path
        try w.write(to: out)
        return out
    }
}

extension GGUFWriter {
    /// The same writer without tensor `name`.
    func removingTensor(_ name: String) -> GGUFWriter {
        var w = GGUFWriter()
        w.alignment = alignment
        for (k, v) in metadata { w.set(k, v) }
        for t in tensors where t.name != name { w.addTensor(name: t.name, shape: t.shape, type: t.type, data: t.data) }
        return w
    }
}

/// Max |a - b| over `count` floats.
func maxAbsDiff(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ count: Int) -> Float {
    var m: Float = 0
    for i in 0..<count { m = max(m, abs(a[i] - b[i])) }
    return m
}

func maxAbs(_ a: UnsafePointer<Float>, _ count: Int) -> Float {
    var m: Float = 0
    for i in 0..<count { m = max(m, abs(a[i])) }
    return m
}
