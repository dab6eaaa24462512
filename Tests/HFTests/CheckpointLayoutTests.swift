import Backend
import Engine
import Foundation
import GGUF
import Models
import Quant
import SafeTensors
import XCTest

/// The same fixtures stored the other ways checkpoints come: F16 and BF16 weights (read in place, moved in their
/// own type by the transforms, decoded for Gemma's norms), and transformers 5's fused expert tensors.
final class CheckpointLayoutTests: XCTestCase {
    typealias Tensor = (String, SafeTensorsDType, [Int], [UInt8])

    /// Rewrites a fixture's tensors through `edit` into a new directory with the same config.json.
    private func rewritten(_ name: String, _ edit: ([Tensor]) -> [Tensor]) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hflayout-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: HFFixtureTests.path(name) + "/config.json", toPath: dir + "/config.json")
        let ck = try SafeTensorsCheckpoint(directory: HFFixtureTests.path(name))
        let tensors: [Tensor] = try ck.names.map { n in
            let t = ck.tensor(named: n)!
            return (n, t.dtype, t.shape, floatBytes(try ck.floats(n)))
        }
        try SafeTensorsWriter.write(dir + "/model.safetensors", edit(tensors))
        return dir
    }

    private func logits(_ source: any TensorSource, _ tokens: [Int32]) throws -> (UnsafeMutablePointer<Float>, Int, Generator) {
        let model = try ModelRegistry.load(source, backend: CPUBackend(pool: HFFixtureTests.pool))
        let gen = try Generator(model: model)
        let (l, _) = try gen.forward(tokens, start: 0, logits: .all)
        return (l, model.info.vocabSize, gen)
    }

    func testHalfPrecisionWeights() throws {
        for dtype in [SafeTensorsDType.f16, .bf16] {
            for name in ["llama", "gemma3", "deepseek_v3", "qwen2_moe"] where HFFixtureTests.all.contains(name) {
                let dir = try rewritten(name) { ts in
                    ts.map { t in
                        let v = t.3.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
                        var out = [UInt8](repeating: 0, count: v.count * 2)
                        v.withUnsafeBufferPointer { (dtype == .f16 ? F16.quantize : BF16.quantize)($0.baseAddress!, &out, v.count) }
                        return (t.0, dtype, t.2, out)
                    }
                }
                defer { try? FileManager.default.removeItem(atPath: dir) }
                let hf = try HFCheckpoint(directory: dir)
                let q = try XCTUnwrap(hf.tensor(named: "blk.0.attn_q.weight") ?? hf.tensor(named: "blk.0.attn_q_a.weight"))
                XCTAssertEqual(q.type, dtype.ggmlType, "\(name): matrices keep their type")
                let ref = try HFFixtureTests.reference(name)
                let (a, vocab, g1) = try logits(hf, ref.tokens)
                // The same weights converted to f32 give the same logits (up to f32 rounding).
                let out = dir + "/model.gguf"
                try hf.writeGGUF(to: out, type: .f32)
                let (b, _, g2) = try logits(try GGUFFile(path: out), ref.tokens)
                var agree = 0, scale: Float = 0, diff: Float = 0
                for r in 0..<ref.tokens.count {
                    let row = ref.logits[r]
                    let best = row.indices.max { row[$0] < row[$1] }!
                    let ours = (0..<vocab).max { a[r * vocab + $0] < a[r * vocab + $1] }!
                    if best == ours { agree += 1 }
                    for v in 0..<vocab {
                        scale = max(scale, abs(row[v]))
                        diff = max(diff, abs(a[r * vocab + v] - b[r * vocab + v]))
                    }
                }
                print("\(name) \(dtype.rawValue): argmax vs f32 reference \(agree)/\(ref.tokens.count), in place vs converted \(diff / scale)")
                XCTAssertGreaterThanOrEqual(Double(agree), 0.9 * Double(ref.tokens.count), "\(name) \(dtype.rawValue)")
                XCTAssertLessThanOrEqual(diff, 1e-4 * scale, "\(name) \(dtype.rawValue)")
                withExtendedLifetime((g1, g2)) {}
            }
        }
    }

    /// `mlp.experts.gate_up_proj` `[nExpert, 2 * ff, dim]` and `mlp.experts.down_proj` `[nExpert, dim, ff]`.
    func testFusedExperts() throws {
        for name in ["qwen3_moe", "deepseek_v3"] where HFFixtureTests.all.contains(name) {
            let dir = try rewritten(name) { ts in
                var byName = Dictionary(uniqueKeysWithValues: ts.map { ($0.0, $0) })
                var out: [Tensor] = []
                for layer in 0..<2 {
                    let p = "model.layers.\(layer).mlp.experts."
                    guard byName[p + "0.gate_proj.weight"] != nil else { continue }
                    var gateUp: [UInt8] = [], down: [UInt8] = []
                    var e = 0, shape: [Int] = []
                    while let g = byName.removeValue(forKey: p + "\(e).gate_proj.weight") {
                        let u = byName.removeValue(forKey: p + "\(e).up_proj.weight")!
                        let d = byName.removeValue(forKey: p + "\(e).down_proj.weight")!
                        gateUp += g.3 + u.3
                        down += d.3
                        shape = [g.2[0], g.2[1], d.2[0]]  // ff, dim, dim
                        e += 1
                    }
                    out.append((p + "gate_up_proj", .f32, [e, 2 * shape[0], shape[1]], gateUp))
                    out.append((p + "down_proj", .f32, [e, shape[2], shape[0]], down))
                }
                return out + byName.values.sorted { $0.0 < $1.0 }
            }
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let hf = try HFCheckpoint(directory: dir)
            let ref = try HFFixtureTests.reference(name)
            let (l, vocab, gen) = try logits(hf, ref.tokens)
            var err: Float = 0, scale: Float = 0
            for r in 0..<ref.tokens.count {
                for v in 0..<vocab {
                    scale = max(scale, abs(ref.logits[r][v]))
                    err = max(err, abs(ref.logits[r][v] - l[r * vocab + v]))
                }
            }
            print("\(name) fused experts: relative error \(err / scale)")
            XCTAssertLessThanOrEqual(err, 1e-3 * scale, name)
            withExtendedLifetime(gen) {}
        }
    }
}
