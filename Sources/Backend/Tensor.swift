import Atomics

/// Where a buffer or a weight lives.
public enum Device: Hashable, Sendable, CustomStringConvertible {
    case cpu
    /// GPU number `i` of a device backend (CUDA).
    case gpu(Int)

    public var description: String {
        switch self {
        case .cpu: return "cpu"
        case .gpu(let i): return i == 0 ? "cuda" : "cuda:\(i)"
        }
    }

    /// `cpu`, `cuda`, `cuda:N` (also `gpu`, `gpu:N`).
    public init?(name: String) {
        let s = name.lowercased()
        if s == "cpu" { self = .cpu; return }
        for prefix in ["cuda", "gpu"] where s.hasPrefix(prefix) {
            let rest = s.dropFirst(prefix.count)
            if rest.isEmpty { self = .gpu(0); return }
            if rest.first == ":", let i = Int(rest.dropFirst()), i >= 0 { self = .gpu(i); return }
        }
        return nil
    }
}

/// A device-neutral handle to a run of 4-byte elements (f32 activations, i32 ids and metadata) in one backend's
/// memory: the address of element 0 on its device and the element count. Model code only passes these around
/// and offsets them; the backend that owns the memory reads and writes it. Row strides and widths are op
/// parameters, as in the kernels underneath.
public struct Tensor: @unchecked Sendable, Equatable {
    /// Device address of element 0 (a host address on the CPU, a `CUdeviceptr` on a GPU).
    public let address: UInt
    /// Elements in the view.
    public let count: Int
    public let device: Device

    public init(address: UInt, count: Int, device: Device) {
        self.address = address
        self.count = count
        self.device = device
    }

    /// The view starting `elements` further on (to the end of this one).
    @inline(__always)
    public func offset(_ elements: Int) -> Tensor {
        Tensor(address: address &+ UInt(elements &* 4), count: count - elements, device: device)
    }

    /// The first `elements` of the view.
    @inline(__always)
    public func prefix(_ elements: Int) -> Tensor {
        Tensor(address: address, count: elements, device: device)
    }

    /// The view as host f32 (only for tensors in host memory: the CPU backend's, or a device backend's staging).
    @inline(__always)
    public var hostFloats: UnsafeMutablePointer<Float> {
        UnsafeMutablePointer<Float>(bitPattern: address)!
    }

    /// The view as host i32.
    @inline(__always)
    public var hostInt32: UnsafeMutablePointer<Int32> {
        UnsafeMutablePointer<Int32>(bitPattern: address)!
    }

    /// A host buffer seen as a CPU tensor (tests, and the CPU backend's own buffers).
    public static func host(_ p: UnsafeMutablePointer<Float>, count: Int) -> Tensor {
        Tensor(address: UInt(bitPattern: p), count: count, device: .cpu)
    }

    public static func host(_ p: UnsafeMutablePointer<Int32>, count: Int) -> Tensor {
        Tensor(address: UInt(bitPattern: p), count: count, device: .cpu)
    }
}

/// Counts every allocation of run-time memory that the backends and their scratch buffers make (arenas, KV
/// caches, kernel scratch, growth of a scratch buffer). The steady state of a forward pass makes none: a test
/// runs many steps of mixed sizes and checks that this count does not move.
public enum RunMemory {
    private static let counter = ManagedAtomic<Int>(0)
    public static var allocations: Int { counter.load(ordering: .relaxed) }
    public static func noteAllocation() { counter.wrappingIncrement(ordering: .relaxed) }
}
