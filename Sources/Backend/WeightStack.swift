import Quant

/// `count` weight matrices of one shape stored back to back as one tensor, read in place: the experts of an MoE
/// layer (`blk.N.ffn_{gate,up,down}_exps`) or MLA's per-head matrices (`attn_k_b`, `attn_v_b`).
/// `// [count][rows, cols]` — ggml shape `[cols, rows, count]`. Matrix e starts `e * matrixBytes` after `data`.
public struct WeightStack: @unchecked Sendable {
    public let name: String
    public let type: GGMLType
    public let count: Int
    public let rows: Int
    public let cols: Int
    public let data: UnsafeRawPointer
    public let rowBytes: Int
    public let matrixBytes: Int
    public let kernels: QuantKernels
    /// Keeps an owned buffer alive when the data is not in a mapping.
    private let owner: AnyObject?
    /// The device whose backend prepared it. `data` (host bytes) and `kernels` (the CPU kernels of its type)
    /// are always there; a device backend keeps its own copy in `storage`.
    public let device: Device
    /// A device backend's copy of the weight (nil on the CPU).
    public let storage: AnyObject?

    public init(name: String, type: GGMLType, count: Int, rows: Int, cols: Int, data: UnsafeRawPointer,
                owner: AnyObject? = nil, device: Device = .cpu, storage: AnyObject? = nil) throws {
        let (k, rb) = try weightRowLayout(name: name, type: type, cols: cols)
        self.name = name
        self.type = type
        self.count = count
        self.rows = rows
        self.cols = cols
        self.data = data
        self.rowBytes = rb
        self.matrixBytes = rb * rows
        self.kernels = k
        self.owner = owner
        self.device = device
        self.storage = storage
    }

    /// Row `r` of matrix `e`.
    @inline(__always)
    public func row(_ e: Int, _ r: Int) -> UnsafeRawPointer { data + e * matrixBytes + r * rowBytes }

    /// Matrix `e` as a `WeightMatrix` view (same storage).
    public func matrix(_ e: Int) -> WeightMatrix {
        // The format and row length were checked by init, so this cannot fail.
        try! WeightMatrix(name: "\(name)[\(e)]", type: type, rows: rows, cols: cols, data: data + e * matrixBytes,
                          owner: owner)
    }
}
