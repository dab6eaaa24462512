import Quant

/// A weight matrix stored in any supported block format, read in place (from the GGUF mapping or an owned
/// buffer). Row-major: `rows` rows of `cols` elements, each row a whole number of blocks.
/// `// [rows, cols]` — ggml shape `[cols, rows]`.
public struct WeightMatrix: @unchecked Sendable {
    public let name: String
    public let type: GGMLType
    public let rows: Int
    public let cols: Int
    public let data: UnsafeRawPointer
    public let rowBytes: Int
    public let kernels: QuantKernels
    /// Keeps an owned buffer alive when the data is not in a mapping.
    private let owner: AnyObject?
    /// The device whose backend prepared it. `data` (host bytes) and `kernels` (the CPU kernels of its type)
    /// are always there; a device backend keeps its own copy in `storage`.
    public let device: Device
    /// A device backend's copy of the weight (nil on the CPU).
    public let storage: AnyObject?

    public init(name: String, type: GGMLType, rows: Int, cols: Int, data: UnsafeRawPointer, owner: AnyObject? = nil, device: Device = .cpu, storage: AnyObject? = nil) throws {
        let (k, rb) = try weightRowLayout(name: name, type: type, cols: cols)
        self.name = name
        self.type = type
        self.rows = rows
        self.cols = cols
        self.data = data
        self.rowBytes = rb
        self.kernels = k
        self.owner = owner
        self.device = device
        self.storage = storage
    }

    @inline(__always)
    public func row(_ r: Int) -> UnsafeRawPointer { data + r * rowBytes }

    /// Decodes row `r` into `dst` (`cols` floats).
    @inline(__always)
    public func dequantizeRow(_ r: Int, into dst: UnsafeMutablePointer<Float>) {
        kernels.dequantize(row(r), dst, cols)
    }
}

/// The kernels of `type` and the bytes of one row of `cols` elements, or an error naming the tensor when the
/// type has no kernels or the row is not a whole number of blocks.
func weightRowLayout(name: String, type: GGMLType, cols: Int) throws -> (QuantKernels, rowBytes: Int) {
    guard let k = KernelDispatch.kernels(for: type) else {
        throw BackendError("tensor '\(name)' has type \(type), which has no kernels (supported: \(QuantRegistry.supportedTypes.map(\.description).joined(separator: ", ")))")
    }
    guard cols % type.blockSize == 0, let rb = type.byteCount(elements: cols) else {
        throw BackendError("tensor '\(name)': row length \(cols) is not a multiple of the \(type) block size \(type.blockSize)")
    }
    return (k, rb)
}
