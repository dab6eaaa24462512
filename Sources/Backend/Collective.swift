import Foundation

/// Which part of a tensor-parallel model one shard holds: shard `index` of `count` (Megatron-style: attention
/// heads and feed-forward columns split, one all-reduce after each block's attention and feed-forward).
public struct TensorShard: Sendable, Equatable, CustomStringConvertible {
    public let index: Int
    public let count: Int

    public init(index: Int, count: Int) {
        precondition(count >= 1 && index >= 0 && index < count)
        self.index = index
        self.count = count
    }

    /// The whole model (no tensor parallelism).
    public static let whole = TensorShard(index: 0, count: 1)

    public var description: String { "shard \(index + 1) of \(count)" }

    /// This shard's equal part of `total` (`total` must be a multiple of `count`).
    public func part(of total: Int) -> Range<Int> {
        let size = total / count
        return index * size ..< (index + 1) * size
    }
}

/// Sums a tensor over the shards of a tensor-parallel model. Each shard runs its own forward pass on its own
/// thread and backend; at every reduction point each shard's thread calls `allReduceSum` with its rank and its
/// tensor, and when the call returns (on a device backend: when the work it queued has run) every shard's tensor
/// holds the sum of all of them, added in rank order, so every shard gets the same bits.
///
/// Every rank must make the same calls in the same order (a missing rank blocks the others: the model makes its
/// calls unconditionally, after any check that could throw).
public protocol Collective: AnyObject, Sendable {
    /// The shards taking part.
    var ranks: Int { get }
    /// What carries the sums, for the start-up log (`host memory`, `device copies on cuda:0`, `NCCL 2.21`).
    var summary: String { get }
    /// `x[i] = Σ_rank x_rank[i]` for i < count on every rank, `x` being this rank's tensor (in its backend's memory).
    func allReduceSum(_ x: Tensor, count: Int, rank: Int)
}

/// A reusable barrier for the `parties` threads of one collective: `wait` returns once every party has called it.
public final class ThreadBarrier: @unchecked Sendable {
    // NOTE: @unchecked: the state is guarded by `condition`.
    private let condition = NSCondition()
    private let parties: Int
    private var arrived = 0
    private var generation = 0

    public init(parties: Int) {
        precondition(parties >= 1)
        self.parties = parties
    }

    public func wait() {
        condition.lock()
        let g = generation
        arrived += 1
        if arrived == parties {
            arrived = 0
            generation &+= 1
            condition.broadcast()
            condition.unlock()
            return
        }
        while generation == g { condition.wait() }
        condition.unlock()
    }
}

/// The collective of shards whose tensors are in host memory (CPU backends): each rank sums every rank's tensor
/// into a buffer of its own between two barriers, then copies it back.
public final class HostCollective: Collective, @unchecked Sendable {
    // NOTE: @unchecked: slot r of `tensors` and `sums` is written by rank r's thread only, and read by the others
    // only between the two barriers of a call.
    public let ranks: Int
    public var summary: String { "host memory" }
    private let barrier: ThreadBarrier
    private let tensors: UnsafeMutablePointer<UnsafeMutablePointer<Float>?>
    private let sums: UnsafeMutablePointer<UnsafeMutablePointer<Float>?>
    private let capacity: UnsafeMutablePointer<Int>

    public init(ranks: Int) {
        precondition(ranks >= 1)
        self.ranks = ranks
        barrier = ThreadBarrier(parties: ranks)
        tensors = .allocate(capacity: ranks)
        tensors.initialize(repeating: nil, count: ranks)
        sums = .allocate(capacity: ranks)
        sums.initialize(repeating: nil, count: ranks)
        capacity = .allocate(capacity: ranks)
        capacity.initialize(repeating: 0, count: ranks)
    }

    deinit {
        for r in 0..<ranks { sums[r]?.deallocate() }
        tensors.deallocate()
        sums.deallocate()
        capacity.deallocate()
    }

    public func allReduceSum(_ x: Tensor, count: Int, rank: Int) {
        precondition(x.device == .cpu && count <= x.count, "HostCollective: rank \(rank)'s tensor is not host memory of \(count) floats")
        guard ranks > 1, count > 0 else { return }
        if capacity[rank] < count {
            sums[rank]?.deallocate()
            sums[rank] = .allocate(capacity: count)
            capacity[rank] = count
        }
        tensors[rank] = x.hostFloats
        barrier.wait()   // every rank's tensor is final and known
        let out = sums[rank]!
        out.update(from: tensors[0]!, count: count)
        for r in 1..<ranks {
            let p = tensors[r]!
            for i in 0..<count { out[i] += p[i] }
        }
        barrier.wait()   // nobody reads a tensor any more
        x.hostFloats.update(from: out, count: count)
    }
}
