import Foundation
import GGUF
import Quant
import Engine
import XCTest

/// Damaged model files must never crash or hang the process: every tiny fixture model of every architecture,
/// with one metadata value, tensor shape or tensor type mutated at a time, run through the real binary
/// (`logits`), which must exit by status (never by a signal) within a time limit, and name the file when it fails.
final class ModelFuzzTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../ModelTests/Fixtures").standardized

    static func pick<T>(_ rng: inout Xoshiro256, _ a: [T]) -> T { a[Int(rng.next() % UInt64(a.count))] }

    /// One mutation of `file`'s metadata or tensor table, and what it did.
    static func mutate(_ file: GGUFFile, _ rng: inout Xoshiro256) -> (GGUFWriter, String) {
        var meta: [(String, GGUFValue)] = file.metadataKeys.compactMap { k in file[k].map { (k, $0) } }
        var tensors = file.tensors.map { t in
            (name: t.name, shape: t.shape, type: t.type,
             data: [UInt8](UnsafeRawBufferPointer(start: file.data(of: t), count: t.byteCount)))
        }
        var what = ""
        switch rng.next() % 10 {
        case 0...5:
            // A numeric hyper-parameter (the architecture's keys, not the tokenizer's long arrays).
            let keys = meta.indices.filter { i in
                let k = meta[i].0
                if k.hasPrefix("tokenizer.") { return false }
                switch meta[i].1 {
                case .string, .array: return false
                default: return true
                }
            }
            guard !keys.isEmpty else { break }
            let i = pick(&rng, keys)
            let old = meta[i].1.int ?? 0
            let values: [GGUFValue] = [.uint32(0), .uint32(1), .uint32(UInt32.max), .int32(-1), .int32(Int32.max),
                                       .uint64(1 << 40), .uint32(UInt32(truncatingIfNeeded: old * 2)),
                                       .uint32(UInt32(truncatingIfNeeded: old + 1)),
                                       .uint32(UInt32(truncatingIfNeeded: max(0, old - 1))),
                                       .float32(.nan), .float32(.infinity), .float32(-1), .float32(1e30), .float32(0)]
            let v = pick(&rng, values)
            meta[i].1 = v
            what = "metadata \(meta[i].0) = \(v)"
        case 6, 7:
            let i = Int(rng.next() % UInt64(tensors.count))
            var shape = tensors[i].shape
            let d = Int(rng.next() % UInt64(shape.count))
            shape[d] = pick(&rng, [0, 1, shape[d] + 1, max(1, shape[d] - 1), shape[d] * 2, 1 << 20])
            what = "tensor \(tensors[i].name) shape \(tensors[i].shape) -> \(shape)"
            tensors[i].shape = shape
        case 8:
            let i = Int(rng.next() % UInt64(tensors.count))
            let t: GGMLType = pick(&rng, [.f32, .f16, .q8_0, .q4_K, .q6_K, .bf16])
            what = "tensor \(tensors[i].name) type \(tensors[i].type) -> \(t)"
            tensors[i].type = t
        default:
            // An array hyper-parameter cut short, or a string one changed.
            let keys = meta.indices.filter { !meta[$0].0.hasPrefix("tokenizer.ggml.") || meta[$0].0.hasSuffix("model") }
            let i = pick(&rng, keys)
            switch meta[i].1 {
            case .array(let a):
                func half<T>(_ v: [T]) -> [T] { Array(v.prefix(v.count / 2)) }
                let cut: GGUFArray
                switch a {
                case .uint32(let v): cut = .uint32(half(v))
                case .int32(let v): cut = .int32(half(v))
                case .float32(let v): cut = .float32(half(v))
                case .string(let v): cut = .string(half(v))
                default: cut = .int32([])
                }
                meta[i].1 = .array(cut)
                what = "metadata \(meta[i].0) cut to half"
            default:
                meta[i].1 = .string(pick(&rng, ["", "yarn", "linear", "llama", "gpt2", "x"]))
                what = "metadata \(meta[i].0) = \(meta[i].1)"
            }
        }
        var w = GGUFWriter()
        for (k, v) in meta { w.set(k, v) }
        for (t, original) in zip(tensors, file.tensors) {
            // A tensor whose shape or type changed gets random bytes of its new size (the file stays well formed:
            // what is tested is hyper-parameters and tensors that disagree); an impossible one keeps its own.
            guard let row = t.type.byteCount(elements: t.shape.first ?? 0), t.shape.allSatisfy({ $0 > 0 }) else {
                w.addTensor(name: t.name, shape: original.shape, type: original.type, data: t.data)
                continue
            }
            let bytes = t.shape.dropFirst().reduce(row, *)
            if bytes == t.data.count {
                w.addTensor(name: t.name, shape: t.shape, type: t.type, data: t.data)
            } else if bytes <= 16 << 20 {
                var data = [UInt8](repeating: 0, count: bytes)
                for j in stride(from: 0, to: bytes, by: 2) { data[j] = UInt8(truncatingIfNeeded: rng.next() & 0x3B) }
                w.addTensor(name: t.name, shape: t.shape, type: t.type, data: data)
            } else {
                w.addTensor(name: t.name, shape: original.shape, type: original.type, data: t.data)
            }
        }
        return (w, what)
    }

    func testMutatedModelFilesNeverCrashOrHang() throws {
        let names = try FileManager.default.contentsOfDirectory(atPath: Self.fixtures.path)
            .filter { $0.hasSuffix(".gguf") }.sorted()
        XCTAssertGreaterThanOrEqual(names.count, 10)
        let perModel = Int(ProcessInfo.processInfo.environment["KTRANSFORMERS_FUZZ_CASES"] ?? "") ?? (2000 + names.count - 1) / names.count
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fuzz-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let files = try names.map { try GGUFFile(path: Self.fixtures.appendingPathComponent($0).path) }
        let total = perModel * names.count
        let tally = Tally()
        // Cases run two at a time (one process each); case i's mutation depends on i alone.
        DispatchQueue.concurrentPerform(iterations: total) { i in
            let name = names[i % names.count]
            var rng = Xoshiro256(seed: 2026 &+ UInt64(i))
            let (w, what) = Self.mutate(files[i % names.count], &rng)
            let path = dir.appendingPathComponent("\(name)-\(i).gguf").path
            defer { try? FileManager.default.removeItem(atPath: path) }
            var problem: String?
            var wasRefused = false
            do {
                try w.write(to: path)
                let r = try CLITests.execute(["logits", "--model", path, "--tokens", "1 2 3", "--top", "1", "-t", "1"],
                                             timeout: 30)
                if r.status >= 128 || r.timedOut {
                    problem = "\(name): \(what): \(r.timedOut ? "hung" : "signal \(r.status - 128)"): \(r.stderr.suffix(300))"
                } else if r.status != 0 {
                    wasRefused = true
                    // A model that loads but whose context is shorter than the 3 tokens is a request error.
                    if !r.stderr.contains(path) && !r.stderr.contains("--tokens") && !r.stderr.contains("exceed the context length") {
                        problem = "\(name): \(what): refused without naming the file: \(r.stderr.suffix(300))"
                    }
                }
            } catch {
                problem = "\(name): \(what): \(error)"
            }
            tally.add(refused: wasRefused, problem: problem)
        }
        let cases = total, refused = tally.refused, crashes = tally.problems
        print("model fuzz: \(cases) mutated files, \(refused) refused with a message, \(crashes.count) crashes, hangs or unnamed failures")
        XCTAssertTrue(crashes.isEmpty, crashes.prefix(20).joined(separator: "\n"))
    }
}

final class Tally: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var refused = 0
    private(set) var problems: [String] = []
    func add(refused r: Bool, problem: String?) {
        lock.lock()
        if r { refused += 1 }
        if let problem { problems.append(problem) }
        lock.unlock()
    }
}
