/// The paged key/value pool: for every layer, `numPages * pageSize` slots of K (`kDim` floats) and V
/// (`vDim` floats), in one backend's memory. Which slots belong to which sequence is decided elsewhere (the
/// engine's page allocator, integers only); the model writes K/V at `slotMapping` and reads them through block
/// tables. `// k[layer]: [numPages * pageSize, kDim]`, `// v[layer]: [numPages * pageSize, vDim]`
public final class KVCache: @unchecked Sendable {
    public let pageSize: Int
    public let numPages: Int
    public let kDims: [Int]
    public let vDims: [Int]
    public let device: Device
    private let kBufs: [Tensor]
    private let vBufs: [Tensor]
    /// Keeps host storage alive (the CPU pool) or a device backend's allocation.
    private let storage: AnyObject?
    /// A tensor-parallel model's pool: one pool per shard (each holding that shard's K/V heads, in its backend's
    /// memory), sharing this one's pages and slots; this pool is shard 0's. Empty otherwise.
    public let shards: [KVCache]

    /// A pool over tensors a backend allocated (`ComputeBackend.makeKVCache`).
    public init(pageSize: Int, numPages: Int, kDims: [Int], vDims: [Int], k: [Tensor], v: [Tensor], device: Device,
                storage: AnyObject?, shards: [KVCache] = []) {
        precondition(pageSize > 0 && numPages > 0 && kDims.count == vDims.count && k.count == kDims.count && v.count == vDims.count)
        self.shards = shards
        self.pageSize = pageSize
        self.numPages = numPages
        self.kDims = kDims
        self.vDims = vDims
        self.device = device
        self.storage = storage
        kBufs = k
        vBufs = v
    }

    /// A pool in host memory (the CPU backend's).
    public convenience init(pageSize: Int, numPages: Int, kDims: [Int], vDims: [Int]) {
        let slots = pageSize * numPages
        let host = HostBuffers()
        let k = kDims.map { host.tensor(max(1, slots * $0)) }
        let v = vDims.map { host.tensor(max(1, slots * $0)) }
        self.init(pageSize: pageSize, numPages: numPages, kDims: kDims, vDims: vDims, k: k, v: v, device: .cpu,
                  storage: host)
    }

    /// The pool of a tensor-parallel model's shards (`shards[0]` is seen through this pool too).
    public convenience init(shards: [KVCache]) {
        precondition(!shards.isEmpty && shards.allSatisfy { $0.pageSize == shards[0].pageSize && $0.numPages == shards[0].numPages })
        let s = shards[0]
        self.init(pageSize: s.pageSize, numPages: s.numPages, kDims: s.kDims, vDims: s.vDims, k: s.kBufs, v: s.vBufs,
                  device: s.device, storage: s, shards: shards)
    }

    @inline(__always) public func k(_ layer: Int) -> Tensor { kBufs[layer] }
    @inline(__always) public func v(_ layer: Int) -> Tensor { vBufs[layer] }
}

/// Zeroed, 64-byte aligned host allocations freed together (the CPU backend's memory).
public final class HostBuffers: @unchecked Sendable {
    private var blocks: [UnsafeMutableRawPointer] = []

    public init() {}

    deinit { blocks.forEach { $0.deallocate() } }

    /// `count` zeroed 4-byte elements.
    public func tensor(_ count: Int) -> Tensor {
        let bytes = max(1, count) * 4
        let p = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        p.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        blocks.append(p)
        RunMemory.noteAllocation()
        return Tensor(address: UInt(bitPattern: p), count: count, device: .cpu)
    }

    /// Frees the allocation `t` starts (no-op for a tensor this object did not allocate).
    public func free(_ t: Tensor) {
        guard let i = blocks.firstIndex(where: { UInt(bitPattern: $0) == t.address }) else { return }
        blocks.remove(at: i).deallocate()
    }
}
