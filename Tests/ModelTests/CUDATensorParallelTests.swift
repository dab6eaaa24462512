import Backend
import BackendCUDA
import Foundation
import XCTest

/// Every tensor-parallel test (TensorParallelTests) again with each shard on a CUDA backend of its own, as logical
/// devices of GPU 0 (`--devices cuda:0,cuda:0`), summing through `CUDAPeerCollective`'s device copies and
/// `sum_ranks`: each shard its own stream and thread. Runs on a GPU or on the CUDA emulator; skipped, visibly,
/// where neither is.
final class CUDATensorParallelTests: TensorParallelTests {
    override class func makeBackends(_ shards: Int) throws -> [any ComputeBackend] {
        guard try CUDABackend.makeIfPresent() != nil else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA tensor-parallel tests skipped")
        }
        return try (0..<shards).map { try CUDABackend.make(ordinal: 0, logical: $0) }
    }

    override class func makeCollective(_ backends: [any ComputeBackend]) throws -> any Collective {
        try CUDAPeerCollective(backends: backends.map { $0 as! CUDABackend })
    }

    /// The all-reduce alone: each rank's tensor becomes the rank-order sum of all of them, bit for bit the host's
    /// (HostCollective's) sum, on every rank, for several sizes and repeated calls (the events and barriers of
    /// one call must not let the next overtake it).
    func testAllReduceGivesEveryRankTheRankOrderSum() throws {
        for ranks in [2, 3] {
            let backends = try Self.makeBackends(ranks).map { $0 as! CUDABackend }
            let collective = try CUDAPeerCollective(backends: backends)
            XCTAssertTrue(collective.summary.contains("logical devices"), collective.summary)
            XCTAssertEqual(Set(backends.map(\.device)).count, ranks, "each shard is a device of its own")
            for (round, count) in [1, 1000, 70_001, 1000].enumerated() {
                var inputs: [[Float]] = []
                for r in 0..<ranks {
                    var g = SystemRandomNumberGenerator()
                    inputs.append((0..<count).map { _ in Float.random(in: -1...1, using: &g) * Float(r + round + 1) })
                }
                let tensors = backends.enumerated().map { r, b in b.upload(inputs[r]) }
                var expected = inputs[0]
                for r in 1..<ranks { for i in 0..<count { expected[i] += inputs[r][i] } }
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
                    XCTAssertEqual(got, expected, "rank \(r) of \(ranks), \(count) floats: not the rank-order sum")
                    b.release(tensors[r])
                }
            }
        }
    }
}
