#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Quant

/// Element types of the safetensors format.
public enum SafeTensorsDType: String, Sendable, CaseIterable {
    case f64 = "F64", f32 = "F32", f16 = "F16", bf16 = "BF16"
    case i64 = "I64", i32 = "I32", i16 = "I16", i8 = "I8", u8 = "U8", bool = "BOOL"
    case f8e4m3 = "F8_E4M3", f8e5m2 = "F8_E5M2"

    public var size: Int {
        switch self {
        case .f64, .i64: 8
        case .f32, .i32: 4
        case .f16, .bf16, .i16: 2
        case .i8, .u8, .bool, .f8e4m3, .f8e5m2: 1
        }
    }

    /// The ggml type with the same element encoding (the float types a model can read in place).
    public var ggmlType: GGMLType? {
        switch self {
        case .f32: .f32
        case .f16: .f16
        case .bf16: .bf16
        default: nil
        }
    }
}

/// One tensor of a safetensors file. `shape` is in PyTorch order (outermost first, the last dimension
/// contiguous), the reverse of ggml's.
public struct SafeTensorInfo: Sendable {
    public let name: String
    public let dtype: SafeTensorsDType
    public let shape: [Int]
    /// Absolute byte offset of the data in the file.
    public let fileOffset: Int
    public let byteCount: Int

    public var elementCount: Int { shape.reduce(1, *) }
    /// Length of the contiguous last dimension (1 for a scalar).
    public var rowLength: Int { shape.last ?? 1 }
    public var rowCount: Int { shape.isEmpty ? 1 : shape.dropLast().reduce(1, *) }
}

/// A `.safetensors` file, memory-mapped read-only: 8-byte little-endian header length, a JSON header
/// `{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the data.
/// Every structural problem (truncation, bad JSON, unknown dtypes, offsets outside the data or not matching the
/// shape) is a `SafeTensorsError` naming the file and the tensor.
public final class SafeTensorsFile: @unchecked Sendable {
    public let path: String
    public let tensors: [SafeTensorInfo]
    /// The header's `__metadata__` (string values).
    public let metadata: [String: String]
    public let fileSize: Int
    private let index: [String: Int]
    private let base: UnsafeMutableRawPointer?
    // NOTE: immutable after init; the mapping lives as long as the object, so it is safe to share across threads.

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw SafeTensorsError(path: path, "cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SafeTensorsError(path: path, "cannot stat: \(String(cString: strerror(errno)))") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw SafeTensorsError(path: path, "not a regular file") }
        let size = Int(st.st_size)
        fileSize = size
        guard size >= 8 else {
            throw SafeTensorsError(path: path, "file is \(size) bytes, too small to be safetensors (the header length needs 8)")
        }
        let m = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let m, m != MAP_FAILED else {
            throw SafeTensorsError(path: path, "mmap failed: \(String(cString: strerror(errno)))")
        }
        base = m
        do {
            let headerLength = UInt64(littleEndian: UnsafeRawPointer(m).loadUnaligned(as: UInt64.self))
            guard headerLength <= UInt64(size - 8) else {
                throw SafeTensorsError(path: path, "header length \(headerLength) exceeds the \(size - 8) bytes after it: truncated or not a safetensors file")
            }
            let dataStart = 8 + Int(headerLength)
            let header = Data(bytes: m + 8, count: Int(headerLength))
            guard case .object(let entries) = try JSONValue.parse(header, what: path + " (header)") else {
                throw SafeTensorsError(path: path, "header is not a JSON object")
            }
            var md: [String: String] = [:]
            var infos: [SafeTensorInfo] = []
            for (name, v) in entries.sorted(by: { $0.key < $1.key }) {
                if name == "__metadata__" {
                    for (k, mv) in v.object ?? [:] { if let s = mv.string { md[k] = s } }
                    continue
                }
                guard let ds = v["dtype"]?.string else {
                    throw SafeTensorsError(path: path, "tensor '\(name)' has no dtype")
                }
                guard let dtype = SafeTensorsDType(rawValue: ds) else {
                    throw SafeTensorsError(path: path, "tensor '\(name)' has unknown dtype '\(ds)' (known: \(SafeTensorsDType.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                guard let sa = v["shape"]?.array, let shape = Optional(sa.compactMap(\.int)), shape.count == sa.count,
                      shape.allSatisfy({ $0 >= 0 && $0 < (1 << 40) }) else {
                    throw SafeTensorsError(path: path, "tensor '\(name)' has an invalid shape \(v["shape"].map { "\($0)" } ?? "(none)")")
                }
                guard let oa = v["data_offsets"]?.array, oa.count == 2, let b = oa[0].int, let e = oa[1].int, 0 <= b, b <= e else {
                    throw SafeTensorsError(path: path, "tensor '\(name)' has invalid data_offsets")
                }
                var n = 1
                for d in shape {
                    let (p, o) = n.multipliedReportingOverflow(by: d)
                    guard !o, p < (1 << 48) else { throw SafeTensorsError(path: path, "tensor '\(name)' shape \(shape) is too large") }
                    n = p
                }
                guard e - b == n * dtype.size else {
                    throw SafeTensorsError(path: path, "tensor '\(name)' (\(ds), shape \(shape)) needs \(n * dtype.size) bytes but its data_offsets [\(b), \(e)] span \(e - b)")
                }
                guard e <= size - dataStart else {
                    throw SafeTensorsError(path: path, "tensor '\(name)' data [\(b), \(e)) lies beyond the end of the file (\(size - dataStart) data bytes): truncated file?")
                }
                infos.append(SafeTensorInfo(name: name, dtype: dtype, shape: shape, fileOffset: dataStart + b, byteCount: e - b))
            }
            metadata = md
            tensors = infos
            var idx: [String: Int] = [:]
            for (i, t) in infos.enumerated() { idx[t.name] = i }
            index = idx
        } catch {
            munmap(m, size)
            throw error
        }
    }

    deinit {
        if let base { munmap(base, fileSize) }
    }

    public func tensor(named name: String) -> SafeTensorInfo? { index[name].map { tensors[$0] } }

    /// Pointer to a tensor's data inside the mapping (valid as long as this object lives). Not necessarily
    /// aligned to the element size: read with `loadUnaligned` or copy.
    public func data(of t: SafeTensorInfo) -> UnsafeRawPointer { UnsafeRawPointer(base!) + t.fileOffset }

    /// The tensor's values as f32 (any float or integer dtype; F8 types are not supported).
    public func floats(_ t: SafeTensorInfo) throws -> [Float] {
        var out = [Float](repeating: 0, count: t.elementCount)
        try out.withUnsafeMutableBufferPointer { try Self.decode(data(of: t), t.dtype, $0.baseAddress!, t.elementCount, name: t.name, path: path) }
        return out
    }

    /// Decodes `count` elements of `dtype` at `src` into f32.
    public static func decode(_ src: UnsafeRawPointer, _ dtype: SafeTensorsDType, _ dst: UnsafeMutablePointer<Float>,
                              _ count: Int, name: String, path: String) throws {
        func each<T>(_: T.Type, _ f: (T) -> Float) {
            for i in 0..<count { dst[i] = f(src.loadUnaligned(fromByteOffset: i * MemoryLayout<T>.size, as: T.self)) }
        }
        switch dtype {
        case .f32: each(UInt32.self) { Float(bitPattern: UInt32(littleEndian: $0)) }
        case .f16: F16.dequantize(src, dst, count)
        case .bf16: BF16.dequantize(src, dst, count)
        case .f64: each(UInt64.self) { Float(Double(bitPattern: UInt64(littleEndian: $0))) }
        case .i64: each(Int64.self) { Float(Int64(littleEndian: $0)) }
        case .i32: each(Int32.self) { Float(Int32(littleEndian: $0)) }
        case .i16: each(Int16.self) { Float(Int16(littleEndian: $0)) }
        case .i8: each(Int8.self) { Float($0) }
        case .u8, .bool: each(UInt8.self) { Float($0) }
        case .f8e4m3, .f8e5m2:
            throw SafeTensorsError(path: path, "tensor '\(name)' has dtype \(dtype.rawValue), which cannot be decoded (F8 checkpoints are not supported)")
        }
    }
}
