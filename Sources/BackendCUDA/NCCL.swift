import Backend
import Foundation

/// NCCL (`libnccl.so.2`), opened at run time like the rest of CUDA: the all-reduce of tensor-parallel shards on
/// different GPUs of one process. `KTRANSFORMERS_NCCL` names the library where it is not on the loader's path
/// (PyTorch's wheel keeps it under `site-packages/nvidia/nccl/lib`).
final class NCCL: @unchecked Sendable {
    typealias Comm = OpaquePointer
    private let library: DynamicLibrary
    var path: String { library.path }
    let ncclGetVersion: @convention(c) (UnsafeMutablePointer<Int32>) -> Int32
    let ncclCommInitAll: @convention(c) (UnsafeMutablePointer<Comm?>, Int32, UnsafePointer<Int32>) -> Int32
    let ncclCommDestroy: @convention(c) (Comm) -> Int32
    let ncclAllReduce: @convention(c) (UnsafeRawPointer, UnsafeMutableRawPointer, Int, Int32, Int32, Comm, OpaquePointer?) -> Int32
    let ncclGetErrorString: @convention(c) (Int32) -> UnsafePointer<CChar>?
    /// ncclFloat32, ncclSum.
    static let float32: Int32 = 7
    static let sum: Int32 = 0

    static func load() -> Result<NCCL, CUDAError> {
        return DynamicLibrary.load(["libnccl.so.2", "libnccl.so"], what: "NCCL", override: "KTRANSFORMERS_NCCL") { try NCCL($0) }
    }

    private init(_ l: DynamicLibrary) throws {
        library = l
        ncclGetVersion = try l.symbol("ncclGetVersion", as: type(of: ncclGetVersion))
        ncclCommInitAll = try l.symbol("ncclCommInitAll", as: type(of: ncclCommInitAll))
        ncclCommDestroy = try l.symbol("ncclCommDestroy", as: type(of: ncclCommDestroy))
        ncclAllReduce = try l.symbol("ncclAllReduce", as: type(of: ncclAllReduce))
        ncclGetErrorString = try l.symbol("ncclGetErrorString", as: type(of: ncclGetErrorString))
    }

    func check(_ r: Int32, _ call: String) throws {
        guard r != 0 else { return }
        let why = ncclGetErrorString(r).map { String(cString: $0) } ?? "error \(r)"
        throw CUDAError("\(call): \(why) (NCCL error \(r))")
    }

    /// `2.21.5` from NCCL's version number.
    var version: String {
        var v: Int32 = 0
        guard ncclGetVersion(&v) == 0 else { return "?" }
        return v >= 10000 ? "\(v / 10000).\(v / 100 % 100).\(v % 100)" : "\(v / 1000).\(v / 100 % 10).\(v % 100)"
    }
}

/// The all-reduce of tensor-parallel shards through NCCL: one communicator per GPU (`ncclCommInitAll`), each
/// rank's thread calling `ncclAllReduce` in place on its backend's stream. NCCL's ring or tree gives every rank
/// the same bits. NCCL refuses two ranks on one GPU: logical devices use `CUDAPeerCollective`.
public final class NCCLCollective: Collective, @unchecked Sendable {
    public let ranks: Int
    public let summary: String
    private let nccl: NCCL
    private let backends: [CUDABackend]
    private let comms: [NCCL.Comm]

    /// NCCL over `backends` (distinct GPUs, rank order), or an error naming what is missing or what NCCL refused.
    public init(backends: [CUDABackend]) throws {
        let nccl: NCCL
        switch NCCL.load() {
        case .failure(let e): throw e
        case .success(let n): nccl = n
        }
        let ordinals = backends.map { Int32($0.ordinal) }
        guard Set(ordinals).count == ordinals.count else {
            throw CUDAError("NCCL takes one rank per GPU; \(backends.map(\.summary).joined(separator: ", ")) share one")
        }
        backends.first?.current()
        var comms = [NCCL.Comm?](repeating: nil, count: backends.count)
        try ordinals.withUnsafeBufferPointer { list in
            try nccl.check(nccl.ncclCommInitAll(&comms, Int32(backends.count), list.baseAddress!), "ncclCommInitAll")
        }
        self.nccl = nccl
        self.backends = backends
        self.comms = comms.map { $0! }
        ranks = backends.count
        summary = "NCCL \(nccl.version) over GPUs \(ordinals.map { "\($0)" }.joined(separator: ", "))"
    }

    deinit { comms.forEach { _ = nccl.ncclCommDestroy($0) } }

    /// Whether NCCL loads here and runs: its version and path, and a one-rank all-reduce on GPU 0 (all one GPU
    /// can run: NCCL takes one rank per GPU); or why not.
    public static func probe() -> String {
        let nccl: NCCL
        switch NCCL.load() {
        case .failure(let e): return "not found (\(e.description)); tensor parallelism over GPUs sums through peer copies (KTRANSFORMERS_NCCL names the library)"
        case .success(let n): nccl = n
        }
        do {
            let g = try CUDABackend.make(ordinal: 0)
            let c = try NCCLCollective(backends: [g])
            let values = (0..<1024).map { Float($0) }
            let t = g.upload(values)
            g.current()
            g.driver.noteOtherWork()
            try nccl.check(nccl.ncclAllReduce(UnsafeRawPointer(bitPattern: t.address)!, UnsafeMutableRawPointer(bitPattern: t.address)!,
                                              1024, NCCL.float32, NCCL.sum, c.comms[0], g.stream), "ncclAllReduce")
            let back = Array(UnsafeBufferPointer(start: g.read(t, count: 1024), count: 1024))
            return "NCCL \(nccl.version) (\(nccl.path)): one-rank all-reduce on GPU 0 \(back == values ? "ok" : "WRONG")"
        } catch {
            return "NCCL \(nccl.version) (\(nccl.path)) loads, but: \(error)"
        }
    }

    public func allReduceSum(_ x: Tensor, count: Int, rank: Int) {
        guard ranks > 1, count > 0 else { return }
        let b = backends[rank]
        b.current()   // also launches what the backend left pending
        b.driver.noteOtherWork()
        let p = UnsafeMutableRawPointer(bitPattern: x.address)!
        b.must("ncclAllReduce") {
            try nccl.check(nccl.ncclAllReduce(UnsafeRawPointer(p), p, count, NCCL.float32, NCCL.sum, comms[rank],
                                              b.stream), "ncclAllReduce")
        }
    }
}
