import Foundation
import GGUF
import Quant
import XCTest

final class GGUFReaderTests: XCTestCase {
    private var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("gguf-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: dir)
    }

    private func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

    /// A small file using every metadata type, nested arrays and two tensors.
    private func sampleWriter() throws -> GGUFWriter {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("u8", .uint8(200)); w.set("i8", .int8(-5)); w.set("u16", .uint16(65000)); w.set("i16", .int16(-300))
        w.set("u32", .uint32(4_000_000_000)); w.set("i32", .int32(-7)); w.set("u64", .uint64(1 << 40))
        w.set("i64", .int64(-(1 << 40))); w.set("f32", .float32(1.5)); w.set("f64", .float64(-2.25))
        w.set("bool", .bool(true)); w.set("str", .string("héllo ✓"))
        w.set("strs", .array(.string(["a", "", "ü"])))
        w.set("floats", .array(.float32([1, 2, 3])))
        w.set("nested", .array(.array([.int32([1, 2]), .int32([3])])))
        w.set("bools", .array(.bool([true, false])))
        try w.addTensor(name: "a", shape: [4, 2], values: (0..<8).map(Float.init))
        try w.addTensor(name: "b", shape: [32, 3], values: (0..<96).map { Float($0) / 10 }, type: .q8_0)
        return w
    }

    func testRoundTripsEveryMetadataTypeAndTensors() throws {
        let w = try sampleWriter()
        try w.write(to: path("s.gguf"))
        let f = try GGUFFile(path: path("s.gguf"))
        XCTAssertEqual(f.version, 3)
        XCTAssertEqual(f.metadataKeys, w.metadata.map(\.0))
        for (k, v) in w.metadata { XCTAssertEqual(f[k], v, k) }
        XCTAssertEqual(f["u64"]?.int, 1 << 40)
        XCTAssertEqual(f["nested"]?.array, .array([.int32([1, 2]), .int32([3])]))
        XCTAssertEqual(f.tensors.map(\.name), ["a", "b"])
        let a = try XCTUnwrap(f.tensor(named: "a"))
        XCTAssertEqual(a.shape, [4, 2])
        XCTAssertEqual(a.type, .f32)
        XCTAssertEqual(a.fileOffset % 32, 0)
        let av = UnsafeBufferPointer(start: f.data(of: a).assumingMemoryBound(to: Float.self), count: 8)
        XCTAssertEqual(Array(av), (0..<8).map(Float.init))
        let b = try XCTUnwrap(f.tensor(named: "b"))
        XCTAssertEqual(b.type, .q8_0)
        XCTAssertEqual(b.byteCount, 3 * 34)
        var out = [Float](repeating: 0, count: 96)
        QuantRegistry.kernels(for: .q8_0)!.dequantize(f.data(of: b), &out, 96)
        // Q8_0 error is at most half a step: d/2 = max|x|/254 per 32-block.
        for i in 0..<96 { XCTAssertEqual(out[i], Float(i) / 10, accuracy: Float(i / 32 * 32 + 31) / 10 / 254 + 1e-3) }
    }

    func testCustomAlignment() throws {
        var w = try sampleWriter()
        w.set("general.alignment", .uint32(64))
        try w.write(to: path("a.gguf"))
        let f = try GGUFFile(path: path("a.gguf"))
        XCTAssertEqual(f.alignment, 64)
        for t in f.tensors { XCTAssertEqual(t.fileOffset % 64, 0) }
    }

    /// Every truncation of a valid file is an error naming the file, never a crash.
    func testEveryTruncationIsAClearError() throws {
        let bytes = try sampleWriter().encoded()
        FileManager.default.createFile(atPath: path("full.gguf"), contents: Data(bytes))
        let full = try GGUFFile(path: path("full.gguf"))
        // Bytes after the last tensor's data are alignment padding: a file cut there is still whole.
        let end = full.tensors.map { $0.fileOffset + $0.byteCount }.max()!
        XCTAssertGreaterThan(end, bytes.count - 32)
        for n in 0..<end {
            FileManager.default.createFile(atPath: path("t.gguf"), contents: Data(bytes[0..<n]))
            XCTAssertThrowsError(try GGUFFile(path: path("t.gguf")), "prefix of \(n) bytes") { e in
                let s = "\(e)"
                XCTAssertTrue(s.hasPrefix(path("t.gguf") + ": "), s)
            }
        }
    }

    func testRandomBytesAreRejected() throws {
        var rng = SystemRandomNumberGenerator()
        for size in [0, 3, 24, 1000, 100_000] {
            let data = Data((0..<size).map { _ in UInt8.random(in: 0...255, using: &rng) })
            FileManager.default.createFile(atPath: path("r.gguf"), contents: data)
            XCTAssertThrowsError(try GGUFFile(path: path("r.gguf")))
        }
        // Random bytes after a valid magic and version: counts that cannot fit are caught before allocating.
        for _ in 0..<200 {
            var data = Data([0x47, 0x47, 0x55, 0x46, 3, 0, 0, 0])
            data.append(contentsOf: (0..<500).map { _ in UInt8.random(in: 0...255, using: &rng) })
            FileManager.default.createFile(atPath: path("r.gguf"), contents: data)
            XCTAssertThrowsError(try GGUFFile(path: path("r.gguf")))
        }
    }

    func testMissingFileAndBadHeader() throws {
        XCTAssertThrowsError(try GGUFFile(path: path("none.gguf"))) { XCTAssertTrue("\($0)".contains("cannot open")) }
        var bytes = try sampleWriter().encoded()
        bytes[0] = UInt8(ascii: "X")
        FileManager.default.createFile(atPath: path("m.gguf"), contents: Data(bytes))
        XCTAssertThrowsError(try GGUFFile(path: path("m.gguf"))) { XCTAssertTrue("\($0)".contains("not a GGUF file")) }
        bytes = try sampleWriter().encoded()
        bytes[4] = 1
        FileManager.default.createFile(atPath: path("v.gguf"), contents: Data(bytes))
        XCTAssertThrowsError(try GGUFFile(path: path("v.gguf"))) { XCTAssertTrue("\($0)".contains("unsupported GGUF version 1")) }
    }

    /// A tensor whose type number ggml does not know is reported by name.
    func testUnknownTensorTypeIsNamed() throws {
        var w = GGUFWriter()
        w.addTensor(name: "weird", shape: [4], type: .f32, data: [UInt8](repeating: 0, count: 16))
        var bytes = w.encoded()
        // Tensor info: name (8 + 5), n_dims (4), dims (8), then the type u32.
        let typeOffset = 24 + 8 + 5 + 4 + 8
        XCTAssertEqual(bytes[typeOffset], 0)
        bytes[typeOffset] = 77
        FileManager.default.createFile(atPath: path("u.gguf"), contents: Data(bytes))
        XCTAssertThrowsError(try GGUFFile(path: path("u.gguf"))) { e in
            XCTAssertTrue("\(e)".contains("tensor 'weird' has unknown ggml type 77"), "\(e)")
        }
    }

    func testTypeTable() {
        XCTAssertEqual(GGMLType.q4_K.description, "Q4_K")
        XCTAssertEqual(GGMLType.iq4_xs.description, "IQ4_XS")
        XCTAssertEqual(GGMLType.bf16.description, "BF16")
        XCTAssertEqual(GGMLType(name: "q6_k"), .q6_K)
        XCTAssertEqual(GGMLType.q4_K.byteCount(elements: 512), 288)
        XCTAssertNil(GGMLType.q4_K.byteCount(elements: 100))
    }
}
