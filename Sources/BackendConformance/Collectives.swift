import Backend
import BackendCUDA
import Foundation

extension BackendConformance {
    /// The tensor-parallel collectives under test: a name and a factory of the shards' backends and their
    /// collective, or nil where this machine lacks them (skipped with a note). The GPU ones: two and three logical
    /// devices of GPU 0 (peer copies: NCCL takes one rank per GPU), and, on a machine with several GPUs, every GPU
    /// with NCCL where it loads and with peer copies.
    public static let collectives: [(name: String, make: @Sendable () throws -> (backends: [any ComputeBackend], collective: any Collective)?)] = [
        ("host memory, 2 CPU shards", {
            let b = [CPUBackend(threads: 1), CPUBackend(threads: 1)]
            return (b, HostCollective(ranks: 2))
        }),
        ("device copies, 2 logical devices of GPU 0", { try logicalShards(2) }),
        ("device copies, 3 logical devices of GPU 0", { try logicalShards(3) }),
        ("peer copies, every GPU", {
            let n = CUDABackend.visibleGPUs()
            guard n > 1 else { return nil }
            let b = try (0..<n).map { try CUDABackend.make(ordinal: $0) }
            return (b, try CUDAPeerCollective(backends: b))
        }),
        ("NCCL, every GPU", {
            let n = CUDABackend.visibleGPUs()
            guard n > 1 else { return nil }
            let b = try (0..<n).map { try CUDABackend.make(ordinal: $0) }
            return (b, try NCCLCollective(backends: b))
        }),
    ]

    private static func logicalShards(_ n: Int) throws -> (backends: [any ComputeBackend], collective: any Collective)? {
        guard try CUDABackend.makeIfPresent() != nil else { return nil }
        let b = try (0..<n).map { try CUDABackend.make(ordinal: 0, logical: $0) }
        return (b, try CUDAPeerCollective(backends: b))
    }

    /// `allReduceSum` from every rank's thread at once: each rank's tensor becomes the rank-order sum of all of them
    /// (bit for bit what one thread adding them in rank order gets), on every rank, for sizes from 1 to 70,001 floats
    /// and repeated calls (one call's events and barriers must not let the next overtake it).
    public static func checkCollective(backends: [any ComputeBackend], collective: any Collective) {
        let ranks = backends.count
        Expect.equal(collective.ranks, ranks, "the collective's ranks")
        for (round, count) in [1, 1000, 70_001, 1000, 4096].enumerated() {
            var g = SystemRandomNumberGenerator()
            let inputs = (0..<ranks).map { r in (0..<count).map { _ in Float.random(in: -1...1, using: &g) * Float(r + round + 1) } }
            var expected = inputs[0]
            for r in 1..<ranks { for i in 0..<count { expected[i] += inputs[r][i] } }
            let tensors = backends.enumerated().map { r, b in b.upload(inputs[r]) }
            let done = DispatchGroup()
            for r in 1..<ranks {
                let t = tensors[r]
                done.enter()
                Thread { collective.allReduceSum(t, count: count, rank: r); done.leave() }.start()
            }
            collective.allReduceSum(tensors[0], count: count, rank: 0)
            done.wait()
            for (r, b) in backends.enumerated() {
                let got = Array(UnsafeBufferPointer(start: b.read(tensors[r], count: count), count: count))
                Expect.equal(got == expected, true, "rank \(r) of \(ranks), \(count) floats: not the rank-order sum")
                b.release(tensors[r])
            }
        }
    }
}
