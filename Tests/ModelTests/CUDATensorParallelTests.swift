import Backend
import BackendConformance
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

    /// The all-reduce alone, through the conformance check (BackendConformance.checkCollective), over 2 and 3
    /// logical devices.
    func testAllReduceGivesEveryRankTheRankOrderSum() throws {
        for ranks in [2, 3] {
            let backends = try Self.makeBackends(ranks)
            let collective = try Self.makeCollective(backends)
            XCTAssertTrue(collective.summary.contains("logical devices"), collective.summary)
            XCTAssertEqual(Set(backends.map(\.device)).count, ranks, "each shard is a device of its own")
            for f in Expect.collect({ BackendConformance.checkCollective(backends: backends, collective: collective) }) {
                XCTFail("\(ranks) ranks: \(f)")
            }
        }
    }
}
