#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Quant

/// Writes GGUF v3 files: metadata in insertion order, then the tensor table, then aligned tensor data.
/// Used by `convert` and by the tests to build tiny models.
public struct GGUFWriter {
    public private(set) var metadata: [(String, GGUFValue)] = []
    public private(set) var tensors: [(name: String, shape: [Int], type: GGMLType, data: [UInt8])] = []
    public var alignment = 32

    public init() {}

    public mutating func set(_ key: String, _ value: GGUFValue) {
        if let i = metadata.firstIndex(where: { $0.0 == key }) {
            metadata[i].1 = value
        } else {
            metadata.append((key, value))
        }
        if key == "general.alignment", let a = value.int { alignment = a }
    }

    /// Adds a tensor whose `data` is already encoded in `type`. `shape` is in ggml order (innermost first).
    public mutating func addTensor(name: String, shape: [Int], type: GGMLType, data: [UInt8]) {
        precondition(type.byteCount(elements: shape.reduce(1, *)) == data.count,
                     "tensor \(name): \(data.count) bytes do not match \(type) \(shape)")
        tensors.append((name, shape, type, data))
    }

    /// Adds an f32 tensor, encoding it to `type` with the registered quantizer.
    public mutating func addTensor(name: String, shape: [Int], values: [Float], type: GGMLType = .f32) throws {
        guard values.count == shape.reduce(1, *) else {
            throw GGUFError(path: name, "\(values.count) values for shape \(shape)")
        }
        guard let k = QuantRegistry.kernels(for: type), let q = k.quantize,
              let bytes = type.byteCount(elements: values.count), shape[0] % type.blockSize == 0 else {
            throw GGUFError(path: name, "cannot encode shape \(shape) as \(type)")
        }
        var out = [UInt8](repeating: 0, count: bytes)
        values.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBytes { dst in q(src.baseAddress!, dst.baseAddress!, values.count) }
        }
        addTensor(name: name, shape: shape, type: type, data: out)
    }

    public func encoded() -> [UInt8] {
        var b = header(tensors: tensors.map { ($0.name, $0.shape, $0.type, $0.data.count) })
        for t in tensors {
            b.append(contentsOf: t.data)
            while b.count % alignment != 0 { b.append(0) }
        }
        return b
    }

    /// The header, tensor table and padding up to the data section, for tensors of the given byte counts laid
    /// out in order, each padded to `alignment`.
    func header(tensors infos: [(name: String, shape: [Int], type: GGMLType, byteCount: Int)]) -> [UInt8] {
        var b: [UInt8] = []
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { b.append(contentsOf: $0) } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { b.append(contentsOf: $0) } }
        func str(_ s: String) { u64(UInt64(s.utf8.count)); b.append(contentsOf: s.utf8) }
        func value(_ v: GGUFValue) {
            switch v {
            case .uint8(let x): b.append(x)
            case .int8(let x): b.append(UInt8(bitPattern: x))
            case .uint16(let x): withUnsafeBytes(of: x.littleEndian) { b.append(contentsOf: $0) }
            case .int16(let x): withUnsafeBytes(of: x.littleEndian) { b.append(contentsOf: $0) }
            case .uint32(let x): u32(x)
            case .int32(let x): u32(UInt32(bitPattern: x))
            case .uint64(let x): u64(x)
            case .int64(let x): u64(UInt64(bitPattern: x))
            case .float32(let x): u32(x.bitPattern)
            case .float64(let x): u64(x.bitPattern)
            case .bool(let x): b.append(x ? 1 : 0)
            case .string(let s): str(s)
            case .array(let a): array(a)
            }
        }
        func array(_ a: GGUFArray) {
            u32(a.elementType.rawValue)
            u64(UInt64(a.count))
            switch a {
            case .uint8(let x): x.forEach { value(.uint8($0)) }
            case .int8(let x): x.forEach { value(.int8($0)) }
            case .uint16(let x): x.forEach { value(.uint16($0)) }
            case .int16(let x): x.forEach { value(.int16($0)) }
            case .uint32(let x): x.forEach { value(.uint32($0)) }
            case .int32(let x): x.forEach { value(.int32($0)) }
            case .uint64(let x): x.forEach { value(.uint64($0)) }
            case .int64(let x): x.forEach { value(.int64($0)) }
            case .float32(let x): x.forEach { value(.float32($0)) }
            case .float64(let x): x.forEach { value(.float64($0)) }
            case .bool(let x): x.forEach { value(.bool($0)) }
            case .string(let x): x.forEach(str)
            case .array(let x): x.forEach(array)
            }
        }

        u32(0x4655_4747)
        u32(3)
        u64(UInt64(infos.count))
        u64(UInt64(metadata.count))
        for (k, v) in metadata {
            str(k)
            u32(v.wireType.rawValue)
            value(v)
        }
        var offset = 0
        for t in infos {
            str(t.name)
            u32(UInt32(t.shape.count))
            t.shape.forEach { u64(UInt64($0)) }
            u32(t.type.rawValue)
            u64(UInt64(offset))
            offset += (t.byteCount + alignment - 1) / alignment * alignment
        }
        while b.count % alignment != 0 { b.append(0) }
        return b
    }

    /// Writes a GGUF file whose tensor data is produced one tensor at a time (for conversions larger than memory):
    /// `tensors` are only described here (this writer's own `tensors` are ignored), and `produce(i, sink)` must
    /// pass exactly the bytes of tensor `i` to `sink`, in one or more pieces.
    public func write(to path: String, streaming infos: [(name: String, shape: [Int], type: GGMLType)],
                      produce: (Int, (UnsafeRawBufferPointer) throws -> Void) throws -> Void) throws {
        var sized: [(name: String, shape: [Int], type: GGMLType, byteCount: Int)] = []
        for t in infos {
            guard t.shape.first.map({ $0 % t.type.blockSize == 0 }) ?? false,
                  let n = t.type.byteCount(elements: t.shape.reduce(1, *)) else {
                throw GGUFError(path: path, "tensor '\(t.name)': shape \(t.shape) cannot be stored as \(t.type)")
            }
            sized.append((t.name, t.shape, t.type, n))
        }
        guard let f = fopen(path, "wb") else {
            throw GGUFError(path: path, "cannot create: \(String(cString: strerror(errno)))")
        }
        var ok = false
        defer {
            fclose(f)
            if !ok { unlink(path) }
        }
        func put(_ p: UnsafeRawBufferPointer) throws {
            guard p.count == 0 || fwrite(p.baseAddress!, 1, p.count, f) == p.count else {
                throw GGUFError(path: path, "write failed: \(String(cString: strerror(errno)))")
            }
        }
        try header(tensors: sized).withUnsafeBytes { try put($0) }
        let zeros = [UInt8](repeating: 0, count: alignment)
        for (i, t) in sized.enumerated() {
            var written = 0
            try produce(i) { piece in
                written += piece.count
                guard written <= t.byteCount else {
                    throw GGUFError(path: path, "tensor '\(t.name)': more than its \(t.byteCount) bytes were produced")
                }
                try put(piece)
            }
            guard written == t.byteCount else {
                throw GGUFError(path: path, "tensor '\(t.name)': \(written) bytes produced, expected \(t.byteCount)")
            }
            let pad = (alignment - t.byteCount % alignment) % alignment
            try zeros.withUnsafeBytes { try put(UnsafeRawBufferPointer(rebasing: $0[0..<pad])) }
        }
        guard fflush(f) == 0 else { throw GGUFError(path: path, "write failed: \(String(cString: strerror(errno)))") }
        ok = true
    }

    public func write(to path: String) throws {
        let bytes = encoded()
        guard FileManager.default.createFile(atPath: path, contents: Data(bytes)) else {
            throw GGUFError(path: path, "cannot write file")
        }
    }
}
