import Backend
import Foundation

/// The all-reduce of tensor-parallel shards on CUDA backends of one process, by copies between their memories: each
/// rank copies every other rank's partial sum into a buffer of its own (`cuMemcpyPeerAsync`: over NVLink or PCIe
/// where peer access is on, through the host otherwise; a device copy where two shards share one GPU), then adds
/// them in rank order with `sum_ranks`. Events order the copies after their sources and the sums after every copy
/// of their own tensor; the host threads meet at two barriers a call so that each waits on the events of this call.
/// Used where NCCL is not there or refuses the devices (NCCL does not take two ranks on one GPU, which is how the
/// one-GPU machine runs this path: `--devices cuda:0,cuda:0`).
public final class CUDAPeerCollective: Collective, @unchecked Sendable {
    // NOTE: @unchecked: slot r of `sources`, `gathers` and the events is written by rank r's thread only, and read by
    // the others between the barriers of a call.
    public let ranks: Int
    public let summary: String
    static let maxRanks = 8
    private let backends: [CUDABackend]
    private let barrier: ThreadBarrier
    private let produced: [CUDADriver.Handle]
    private let copied: [CUDADriver.Handle]
    /// Whether ranks r and p are on different GPUs (copies cross contexts).
    private let crossDevice: Bool
    /// Per rank (written by that rank's thread only): its tensor of the current call, its copies of the others'
    /// tensors (`ranks - 1` slots of `capacity[r]` floats) and their capacity. Raw storage: the ranks' threads write
    /// their own slots at once.
    private let sources: UnsafeMutablePointer<UInt>
    private let gathers: UnsafeMutablePointer<UInt>
    private let capacity: UnsafeMutablePointer<Int>

    public init(backends: [CUDABackend]) throws {
        guard backends.count >= 1, backends.count <= Self.maxRanks else {
            throw CUDAError("tensor parallelism over \(backends.count) GPUs: between 1 and \(Self.maxRanks) are supported")
        }
        self.backends = backends
        ranks = backends.count
        barrier = ThreadBarrier(parties: backends.count)
        var produced: [CUDADriver.Handle] = [], copied: [CUDADriver.Handle] = []
        for b in backends {
            b.current()
            produced.append(try b.driver.makeEvent())
            copied.append(try b.driver.makeEvent())
        }
        self.produced = produced
        self.copied = copied
        crossDevice = Set(backends.map(\.ordinal)).count > 1
        var peer = 0
        if crossDevice {
            for a in backends {
                a.current()
                for b in backends where b.ordinal != a.ordinal {
                    if a.driver.enablePeerAccess(from: a.ordinal, to: b.ordinal, peerContext: b.context) { peer += 1 }
                }
            }
        }
        sources = .allocate(capacity: backends.count)
        sources.initialize(repeating: 0, count: backends.count)
        gathers = .allocate(capacity: backends.count)
        gathers.initialize(repeating: 0, count: backends.count)
        capacity = .allocate(capacity: backends.count)
        capacity.initialize(repeating: 0, count: backends.count)
        let gpus = Set(backends.map(\.ordinal)).sorted().map { "\($0)" }.joined(separator: ", ")
        summary = crossDevice
            ? "peer copies between GPUs \(gpus) (\(peer == backends.count * (backends.count - 1) ? "peer access on" : "peer access \(peer > 0 ? "partly" : "off"): through the host"))"
            : "device copies on GPU \(gpus) (\(backends.count) logical devices)"
    }

    deinit {
        for (r, b) in backends.enumerated() {
            b.current()
            b.driver.destroyEvent(produced[r])
            b.driver.destroyEvent(copied[r])
            if gathers[r] != 0 { b.freeWeights(gathers[r]) }
        }
        sources.deallocate()
        gathers.deallocate()
        capacity.deallocate()
    }

    public func allReduceSum(_ x: Tensor, count: Int, rank: Int) {
        guard ranks > 1, count > 0 else { return }
        let b = backends[rank]
        b.current()   // also launches what the backend left pending
        if capacity[rank] < count {
            if gathers[rank] != 0 { b.freeWeights(gathers[rank]) }
            gathers[rank] = b.deviceAllocate(bytes: (ranks - 1) * count * 4)
            capacity[rank] = count
        }
        let bytes = count * 4
        sources[rank] = x.address
        b.must("cuEventRecord") { try b.driver.record(produced[rank], stream: b.stream) }
        barrier.wait()   // every rank's partial sum is queued, and its event recorded
        var inputs: [UInt] = []
        var slot = 0
        for p in 0..<ranks {
            if p == rank { inputs.append(x.address); continue }
            let dst = gathers[rank] + UInt(slot * bytes)
            slot += 1
            inputs.append(dst)
            let peer = backends[p]
            b.must("cuStreamWaitEvent") { try b.driver.streamWait(b.stream, for: produced[p]) }
            b.must("copy of rank \(p)'s partial sum") {
                if crossDevice && peer.ordinal != b.ordinal {
                    try b.driver.copyPeerAsync(CUDADriver.CUdeviceptr(dst), b.context, from: CUDADriver.CUdeviceptr(sources[p]),
                                               peer.context, bytes: bytes, stream: b.stream)
                } else {
                    try b.driver.copyAsync(device: CUDADriver.CUdeviceptr(dst), from: CUDADriver.CUdeviceptr(sources[p]),
                                           bytes: bytes, stream: b.stream)
                }
            }
        }
        b.must("cuEventRecord") { try b.driver.record(copied[rank], stream: b.stream) }
        barrier.wait()   // every copy is queued, and its event recorded
        for p in 0..<ranks where p != rank {
            b.must("cuStreamWaitEvent") { try b.driver.streamWait(b.stream, for: copied[p]) }
        }
        while inputs.count < Self.maxRanks { inputs.append(0) }
        b.launch("sum_ranks", grid: (CUDABackend.blocks(count), 1, 1), block: 256,
                 [.ptr(x.address)] + inputs.map { .ptr($0) } + [.i32(ranks), .i64(count)])
    }
}
