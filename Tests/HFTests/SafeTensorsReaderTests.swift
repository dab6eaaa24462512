import Foundation
import Quant
import SafeTensors
import XCTest

/// Writes safetensors files for the tests (header JSON padded to 8 bytes, tensors back to back).
enum SafeTensorsWriter {
    static func write(_ path: String, _ tensors: [(String, SafeTensorsDType, [Int], [UInt8])],
                      metadata: [String: String] = [:]) throws {
        var data: [UInt8] = []
        var entries: [String] = []
        if !metadata.isEmpty {
            entries.append("\"__metadata__\": {" + metadata.map { "\"\($0.key)\": \"\($0.value)\"" }.joined(separator: ", ") + "}")
        }
        for (name, dtype, shape, bytes) in tensors {
            entries.append("\"\(name)\": {\"dtype\": \"\(dtype.rawValue)\", \"shape\": \(shape), \"data_offsets\": [\(data.count), \(data.count + bytes.count)]}")
            data += bytes
        }
        var header = Array(("{" + entries.joined(separator: ", ") + "}").utf8)
        while header.count % 8 != 0 { header.append(0x20) }
        var out: [UInt8] = []
        withUnsafeBytes(of: UInt64(header.count).littleEndian) { out += $0 }
        out += header + data
        try Data(out).write(to: URL(fileURLWithPath: path))
    }
}

func floatBytes(_ v: [Float]) -> [UInt8] { v.withUnsafeBytes { Array($0) } }

final class SafeTensorsReaderTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("safetensors-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func testEveryDTypeDecodes() throws {
        let values: [Float] = [1, -2.5, 0.15625, 65504, -0.0009765625, 3]
        var f16 = [UInt8](repeating: 0, count: 12), bf16 = [UInt8](repeating: 0, count: 12)
        values.withUnsafeBufferPointer { F16.quantize($0.baseAddress!, &f16, 6) }
        values.withUnsafeBufferPointer { BF16.quantize($0.baseAddress!, &bf16, 6) }
        func ints<T: FixedWidthInteger>(_ v: [T]) -> [UInt8] { v.map(\.littleEndian).withUnsafeBytes { Array($0) } }
        let p = dir + "/all.safetensors"
        try SafeTensorsWriter.write(p, [
            ("f32", .f32, [2, 3], floatBytes(values)),
            ("f16", .f16, [6], f16),
            ("bf16", .bf16, [3, 2], bf16),
            ("f64", .f64, [2], [1.5, -4.25].withUnsafeBytes { Array($0) }),
            ("i64", .i64, [3], ints([Int64(-7), 0, 1 << 40])),
            ("i32", .i32, [2], ints([Int32(42), -1])),
            ("u8", .u8, [2], [0, 255]),
            ("scalar", .f32, [], floatBytes([7])),
            ("empty", .f32, [0, 4], []),
        ], metadata: ["format": "pt"])
        let f = try SafeTensorsFile(path: p)
        XCTAssertEqual(f.metadata["format"], "pt")
        XCTAssertEqual(f.tensors.count, 9)
        XCTAssertEqual(try f.floats(f.tensor(named: "f32")!), values)
        XCTAssertEqual(f.tensor(named: "f32")?.shape, [2, 3])
        XCTAssertEqual(try f.floats(f.tensor(named: "f16")!), values)  // all exact in f16
        XCTAssertEqual(try f.floats(f.tensor(named: "bf16")!).prefix(3), [1, -2.5, 0.15625])
        XCTAssertEqual(try f.floats(f.tensor(named: "f64")!), [1.5, -4.25])
        XCTAssertEqual(try f.floats(f.tensor(named: "i64")!), [-7, 0, Float(1 << 40)])
        XCTAssertEqual(try f.floats(f.tensor(named: "i32")!), [42, -1])
        XCTAssertEqual(try f.floats(f.tensor(named: "u8")!), [0, 255])
        XCTAssertEqual(try f.floats(f.tensor(named: "scalar")!), [7])
        XCTAssertEqual(f.tensor(named: "empty")?.elementCount, 0)
        XCTAssertEqual(SafeTensorsDType.bf16.ggmlType, .bf16)
        XCTAssertNil(SafeTensorsDType.i32.ggmlType)
    }

    func testShardedCheckpointFollowsTheIndex() throws {
        try SafeTensorsWriter.write(dir + "/model-00001-of-00002.safetensors", [("a", .f32, [2], floatBytes([1, 2]))])
        try SafeTensorsWriter.write(dir + "/model-00002-of-00002.safetensors",
                                    [("b", .f32, [1], floatBytes([3])), ("c", .f32, [1], floatBytes([4]))])
        func index(_ map: [String: String]) throws {
            let body = map.map { "\"\($0.key)\": \"\($0.value)\"" }.joined(separator: ", ")
            try "{\"metadata\": {}, \"weight_map\": {\(body)}}".write(toFile: dir + "/model.safetensors.index.json",
                                                                     atomically: true, encoding: .utf8)
        }
        try index(["a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors",
                   "c": "model-00002-of-00002.safetensors"])
        let ck = try SafeTensorsCheckpoint(directory: dir)
        XCTAssertEqual(ck.names, ["a", "b", "c"])
        XCTAssertEqual(try ck.floats("c"), [4])
        XCTAssertTrue(ck.file(of: "a")!.path.hasSuffix("model-00001-of-00002.safetensors"))

        // The index names a tensor the shard does not have.
        try index(["a": "model-00001-of-00002.safetensors", "z": "model-00001-of-00002.safetensors"])
        assertError(try SafeTensorsCheckpoint(directory: dir), ["tensor 'z'", "model-00001-of-00002.safetensors"])
        // ... or a shard that is missing.
        try index(["a": "model-00003-of-00003.safetensors"])
        assertError(try SafeTensorsCheckpoint(directory: dir), ["model-00003-of-00003.safetensors", "missing"])
        // The same tensor in two shards.
        try FileManager.default.removeItem(atPath: dir + "/model.safetensors.index.json")
        try SafeTensorsWriter.write(dir + "/model-00002-of-00002.safetensors", [("a", .f32, [1], floatBytes([3]))])
        assertError(try SafeTensorsCheckpoint(directory: dir), ["tensor 'a'", "also in"])
    }

    func testCorruptFilesAreNamedErrors() throws {
        let good = dir + "/good.safetensors"
        try SafeTensorsWriter.write(good, [("w", .f32, [4, 4], floatBytes(Array(repeating: 1, count: 16)))])
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: good)))
        let p = dir + "/bad.safetensors"
        func write(_ b: [UInt8]) throws { try Data(b).write(to: URL(fileURLWithPath: p)) }

        // Every truncation is an error naming the file, never a crash.
        for n in [0, 4, 7, 8, 20, bytes.count - 64, bytes.count - 1] {
            try write(Array(bytes.prefix(n)))
            assertError(try SafeTensorsFile(path: p), ["bad.safetensors"])
        }
        try write(Array(bytes.prefix(bytes.count - 1)))
        assertError(try SafeTensorsFile(path: p), ["tensor 'w'", "truncated"])

        var huge = bytes
        huge.replaceSubrange(0..<8, with: [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0])
        try write(huge)
        assertError(try SafeTensorsFile(path: p), ["header length"])

        func header(_ json: String, data: Int = 64) throws {
            var h = Array(json.utf8)
            while h.count % 8 != 0 { h.append(0x20) }
            var out: [UInt8] = []
            withUnsafeBytes(of: UInt64(h.count).littleEndian) { out += $0 }
            try write(out + h + [UInt8](repeating: 0, count: data))
        }
        try header("{not json")
        assertError(try SafeTensorsFile(path: p), ["invalid JSON"])
        try header("[1, 2]")
        assertError(try SafeTensorsFile(path: p), ["not a JSON object"])
        try header(#"{"w": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 16]}}"#)
        assertError(try SafeTensorsFile(path: p), ["tensor 'w'", "unknown dtype 'Q4'"])
        try header(#"{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}"#)
        assertError(try SafeTensorsFile(path: p), ["tensor 'w'", "needs 16 bytes"])
        try header(#"{"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}"#)
        assertError(try SafeTensorsFile(path: p), ["tensor 'w'", "invalid shape"])
        try header(#"{"w": {"dtype": "F32", "shape": [4], "data_offsets": [16, 8]}}"#)
        assertError(try SafeTensorsFile(path: p), ["tensor 'w'", "data_offsets"])
        try header(#"{"w": {"dtype": "F32", "shape": [32], "data_offsets": [0, 128]}}"#)
        assertError(try SafeTensorsFile(path: p), ["tensor 'w'", "beyond the end"])
        assertError(try SafeTensorsFile(path: dir + "/absent.safetensors"), ["absent.safetensors", "cannot open"])
        assertError(try SafeTensorsCheckpoint(directory: dir + "/nowhere"), ["no *.safetensors"])
    }

    func testConfigRopeParametersOfBothGenerations() throws {
        let old = try JSONValue.parse(Data(#"{"rope_theta": 500000, "rope_scaling": {"rope_type": "linear", "factor": 8}}"#.utf8), what: "a")
        let new = try JSONValue.parse(Data(#"{"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4}}"#.utf8), what: "b")
        let gemma = try JSONValue.parse(Data(#"{"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8, "rope_theta": 1e6}, "sliding_attention": {"rope_theta": 10000}}}"#.utf8), what: "c")
        let a = HFConfig(json: old, path: "a").rope(defaultTheta: 1)
        XCTAssertEqual(a.theta, 500000); XCTAssertEqual(a.type, "linear"); XCTAssertEqual(a.params["factor"]?.double, 8)
        let b = HFConfig(json: new, path: "b").rope(defaultTheta: 1)
        XCTAssertEqual(b.theta, 1e6); XCTAssertEqual(b.type, "yarn")
        let g = HFConfig(json: gemma, path: "c")
        XCTAssertEqual(g.rope(layerType: "full_attention", defaultTheta: 1).type, "linear")
        XCTAssertEqual(g.rope(layerType: "sliding_attention", defaultTheta: 1).theta, 10000)
        XCTAssertEqual(HFConfig(json: .object([:]), path: "d").rope(defaultTheta: 10000).theta, 10000)
        assertError(try HFConfig(json: old, path: "x/config.json").int("hidden_size"), ["x/config.json", "'hidden_size'"])
    }

    private func assertError<T>(_ body: @autoclosure () throws -> T, _ parts: [String],
                                file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { e in
            let s = "\(e)"
            for part in parts { XCTAssertTrue(s.contains(part), "'\(s)' does not mention '\(part)'", file: file, line: line) }
        }
    }
}
