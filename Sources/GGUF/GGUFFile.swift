#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Quant

/// One tensor of a GGUF file. `shape` is in ggml order: `shape[0]` is the innermost (contiguous) dimension,
/// so a matrix of `rows` x `cols` stored row-major has `shape == [cols, rows]`.
public struct GGUFTensorInfo: Sendable {
    public let name: String
    public let shape: [Int]
    public let type: GGMLType
    /// Absolute byte offset of the tensor data in the file.
    public let fileOffset: Int
    public let byteCount: Int

    public var elementCount: Int { shape.reduce(1, *) }
}

/// A GGUF file (versions 2 and 3), memory-mapped read-only. Metadata and the tensor table are parsed at
/// open; tensor data stays in the mapping and is read in place.
///
/// Every structural problem (wrong magic, truncation, overflowing counts, tensors outside the file, unknown
/// types) is reported as a `GGUFError` naming the file and the offset or tensor, never a crash.
public final class GGUFFile: @unchecked Sendable {
    public let path: String
    public let version: UInt32
    public let metadata: [String: GGUFValue]
    /// Metadata keys in file order.
    public let metadataKeys: [String]
    public let tensors: [GGUFTensorInfo]
    public let alignment: Int
    /// Offset of the tensor data section.
    public let dataOffset: Int
    public let fileSize: Int

    private let tensorIndex: [String: Int]
    private let base: UnsafeMutableRawPointer?
    // NOTE: immutable after init, and the mapping lives as long as the object: safe to share across threads.

    public init(path: String, populate: Bool = false) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else {
            throw GGUFError(path: path, "cannot open: \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw GGUFError(path: path, "cannot stat: \(String(cString: strerror(errno)))")
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw GGUFError(path: path, "not a regular file") }
        let size = Int(st.st_size)
        fileSize = size
        guard size >= 24 else {
            throw GGUFError(path: path, "file is \(size) bytes, too small to be GGUF (header needs 24)")
        }
        var flags = MAP_PRIVATE
        #if os(Linux)
        if populate { flags |= MAP_POPULATE }
        #endif
        let m = mmap(nil, size, PROT_READ, flags, fd, 0)
        guard let m, m != MAP_FAILED else {
            throw GGUFError(path: path, "mmap failed: \(String(cString: strerror(errno)))")
        }
        base = m
        do {
            var r = ByteReader(base: UnsafeRawPointer(m), count: size, path: path)
            let magic = try r.read(UInt32.self)
            guard magic == 0x4655_4747 else {  // "GGUF" little-endian
                throw GGUFError(path: path, "not a GGUF file (magic bytes \(String(magic, radix: 16)), expected 'GGUF')")
            }
            version = try r.read(UInt32.self)
            guard version == 2 || version == 3 else {
                throw GGUFError(path: path, "unsupported GGUF version \(version) (supported: 2, 3)")
            }
            let tensorCount = try r.readCount(what: "tensor count", minBytesEach: 24)
            let kvCount = try r.readCount(what: "metadata count", minBytesEach: 12)
            var md: [String: GGUFValue] = [:]
            var keys: [String] = []
            md.reserveCapacity(kvCount)
            for _ in 0..<kvCount {
                let keyOffset = r.offset
                let key = try r.readString()
                let t = try r.read(UInt32.self)
                guard let wt = GGUFValue.WireType(rawValue: t) else {
                    throw GGUFError(path: path, "metadata '\(key)' at offset \(keyOffset) has unknown value type \(t)")
                }
                let v = try r.readValue(wt, depth: 0)
                if md.updateValue(v, forKey: key) != nil {
                    throw GGUFError(path: path, "duplicate metadata key '\(key)' at offset \(keyOffset)")
                }
                keys.append(key)
            }
            metadata = md
            metadataKeys = keys
            var align = 32
            if let a = md["general.alignment"] {
                guard let ai = a.int, ai > 0, ai & (ai - 1) == 0 else {
                    throw GGUFError(path: path, "general.alignment must be a power of two, got \(a)")
                }
                align = ai
            }
            alignment = align

            struct RawInfo { let name: String; let shape: [Int]; let type: GGMLType; let offset: Int; let at: Int }
            var raw: [RawInfo] = []
            raw.reserveCapacity(tensorCount)
            for _ in 0..<tensorCount {
                let at = r.offset
                let name = try r.readString()
                let nd = try r.read(UInt32.self)
                guard nd >= 1, nd <= 4 else {
                    throw GGUFError(path: path, "tensor '\(name)' at offset \(at) has \(nd) dimensions (1 to 4 allowed)")
                }
                var shape: [Int] = []
                for _ in 0..<nd {
                    let d = try r.read(UInt64.self)
                    guard d > 0, d < (1 << 40) else {
                        throw GGUFError(path: path, "tensor '\(name)' at offset \(at) has invalid dimension \(d)")
                    }
                    shape.append(Int(d))
                }
                let typeRaw = try r.read(UInt32.self)
                guard let type = GGMLType(rawValue: typeRaw) else {
                    throw GGUFError(path: path, "tensor '\(name)' has unknown ggml type \(typeRaw)")
                }
                let off = try r.read(UInt64.self)
                guard off < UInt64(size) else {
                    throw GGUFError(path: path, "tensor '\(name)' data offset \(off) lies beyond the end of the file (\(size) bytes): truncated file?")
                }
                raw.append(RawInfo(name: name, shape: shape, type: type, offset: Int(off), at: at))
            }
            let dataStart = (r.offset + align - 1) / align * align
            dataOffset = dataStart
            var infos: [GGUFTensorInfo] = []
            var index: [String: Int] = [:]
            for t in raw {
                var n = 1
                for d in t.shape {
                    let (p, o) = n.multipliedReportingOverflow(by: d)
                    guard !o, p < (1 << 48) else {
                        throw GGUFError(path: path, "tensor '\(t.name)' shape \(t.shape) is too large")
                    }
                    n = p
                }
                guard t.shape[0] % t.type.blockSize == 0, let bytes = t.type.byteCount(elements: n) else {
                    throw GGUFError(path: path, "tensor '\(t.name)' of type \(t.type) has row length \(t.shape[0]), not a multiple of its block size \(t.type.blockSize)")
                }
                guard t.offset % align == 0 else {
                    throw GGUFError(path: path, "tensor '\(t.name)' data offset \(t.offset) is not aligned to \(align)")
                }
                let start = dataStart + t.offset
                guard start <= size, bytes <= size - start else {
                    throw GGUFError(path: path, "tensor '\(t.name)' (\(t.type), shape \(t.shape)) needs bytes \(start)..<\(start + bytes) but the file has \(size) bytes: truncated file?")
                }
                if index.updateValue(infos.count, forKey: t.name) != nil {
                    throw GGUFError(path: path, "duplicate tensor name '\(t.name)'")
                }
                infos.append(GGUFTensorInfo(name: t.name, shape: t.shape, type: t.type, fileOffset: start, byteCount: bytes))
            }
            tensors = infos
            tensorIndex = index
        } catch {
            munmap(m, size)
            throw error
        }
    }

    deinit {
        if let base { munmap(base, fileSize) }
    }

    public func tensor(named name: String) -> GGUFTensorInfo? {
        tensorIndex[name].map { tensors[$0] }
    }

    /// Pointer to a tensor's data inside the mapping (valid as long as this object lives).
    public func data(of tensor: GGUFTensorInfo) -> UnsafeRawPointer {
        UnsafeRawPointer(base!).advanced(by: tensor.fileOffset)
    }

    public subscript(key: String) -> GGUFValue? { metadata[key] }

    /// `general.architecture`.
    public var architecture: String? { metadata["general.architecture"]?.string }
}

/// Bounds-checked little-endian reader over the mapping.
struct ByteReader {
    let base: UnsafeRawPointer
    let count: Int
    let path: String
    var offset = 0

    init(base: UnsafeRawPointer, count: Int, path: String) {
        self.base = base
        self.count = count
        self.path = path
    }

    mutating func need(_ n: Int, _ what: @autoclosure () -> String) throws {
        guard n >= 0, n <= count - offset else {
            throw GGUFError(path: path, "truncated file: \(what()) at offset \(offset) needs \(n) bytes, only \(count - offset) left")
        }
    }

    mutating func read<T: FixedWidthInteger>(_: T.Type) throws -> T {
        try need(MemoryLayout<T>.size, "a \(T.self)")
        let v = base.loadUnaligned(fromByteOffset: offset, as: T.self)
        offset += MemoryLayout<T>.size
        return T(littleEndian: v)
    }

    /// A u64 count, checked against the bytes left (each element needs at least `minBytesEach`).
    mutating func readCount(what: String, minBytesEach: Int) throws -> Int {
        let at = offset
        let n = try read(UInt64.self)
        guard n <= UInt64(count - offset) / UInt64(max(minBytesEach, 1)) else {
            throw GGUFError(path: path, "\(what) \(n) at offset \(at) cannot fit in the \(count - offset) bytes left")
        }
        return Int(n)
    }

    mutating func readString() throws -> String {
        let at = offset
        let n = try readCount(what: "string length", minBytesEach: 1)
        let bytes = UnsafeRawBufferPointer(start: base + offset, count: n)
        offset += n
        guard let s = String(validating: bytes, as: UTF8.self) else {
            throw GGUFError(path: path, "string at offset \(at) is not valid UTF-8")
        }
        return s
    }

    mutating func readValue(_ t: GGUFValue.WireType, depth: Int) throws -> GGUFValue {
        switch t {
        case .uint8: return .uint8(try read(UInt8.self))
        case .int8: return .int8(try read(Int8.self))
        case .uint16: return .uint16(try read(UInt16.self))
        case .int16: return .int16(try read(Int16.self))
        case .uint32: return .uint32(try read(UInt32.self))
        case .int32: return .int32(try read(Int32.self))
        case .uint64: return .uint64(try read(UInt64.self))
        case .int64: return .int64(try read(Int64.self))
        case .float32: return .float32(Float(bitPattern: try read(UInt32.self)))
        case .float64: return .float64(Double(bitPattern: try read(UInt64.self)))
        case .bool:
            let b = try read(UInt8.self)
            guard b <= 1 else { throw GGUFError(path: path, "bool at offset \(offset - 1) has value \(b)") }
            return .bool(b == 1)
        case .string: return .string(try readString())
        case .array: return .array(try readArray(depth: depth + 1))
        }
    }

    mutating func readArray(depth: Int) throws -> GGUFArray {
        guard depth <= 8 else { throw GGUFError(path: path, "arrays nested deeper than 8 at offset \(offset)") }
        let at = offset
        let t = try read(UInt32.self)
        guard let et = GGUFValue.WireType(rawValue: t) else {
            throw GGUFError(path: path, "array at offset \(at) has unknown element type \(t)")
        }
        let minSize: Int = switch et {
        case .uint8, .int8, .bool: 1
        case .uint16, .int16: 2
        case .uint32, .int32, .float32: 4
        case .uint64, .int64, .float64, .string: 8
        case .array: 12
        }
        let n = try readCount(what: "array length", minBytesEach: minSize)
        func ints<T: FixedWidthInteger>(_: T.Type) throws -> [T] {
            try need(n * MemoryLayout<T>.size, "an array of \(n) \(T.self)")
            let out = [T](unsafeUninitializedCapacity: n) { buf, c in
                for i in 0..<n {
                    buf[i] = T(littleEndian: base.loadUnaligned(fromByteOffset: offset + i * MemoryLayout<T>.size, as: T.self))
                }
                c = n
            }
            offset += n * MemoryLayout<T>.size
            return out
        }
        switch et {
        case .uint8: return .uint8(try ints(UInt8.self))
        case .int8: return .int8(try ints(Int8.self))
        case .uint16: return .uint16(try ints(UInt16.self))
        case .int16: return .int16(try ints(Int16.self))
        case .uint32: return .uint32(try ints(UInt32.self))
        case .int32: return .int32(try ints(Int32.self))
        case .uint64: return .uint64(try ints(UInt64.self))
        case .int64: return .int64(try ints(Int64.self))
        case .float32: return .float32(try ints(UInt32.self).map(Float.init(bitPattern:)))
        case .float64: return .float64(try ints(UInt64.self).map(Double.init(bitPattern:)))
        case .bool:
            let b = try ints(UInt8.self)
            if let bad = b.firstIndex(where: { $0 > 1 }) {
                throw GGUFError(path: path, "bool array at offset \(at) has value \(b[bad]) at index \(bad)")
            }
            return .bool(b.map { $0 == 1 })
        case .string:
            var a: [String] = []
            a.reserveCapacity(n)
            for _ in 0..<n { a.append(try readString()) }
            return .string(a)
        case .array:
            var a: [GGUFArray] = []
            for _ in 0..<n { a.append(try readArray(depth: depth + 1)) }
            return .array(a)
        }
    }
}
