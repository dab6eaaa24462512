// The backend conformance suite: every backend in `backends` runs every check of `BackendConformance`.
//
// A new backend plugs in with ONE line in `backends` below, e.g. for CUDA:
//
//     ("cuda", { CUDABackend.makeIfAvailable() }),   // nil where this machine has no GPU: its checks are skipped
//
import Backend
import XCTest

final class BackendConformanceTests: XCTestCase {
    /// The backends under test: a name for the messages and a factory that makes a fresh instance, or nil when
    /// the backend is not available on this machine (then its checks are skipped with a note).
    static let backends: [(name: String, make: @Sendable () -> (any ComputeBackend)?)] = [
        ("cpu", { CPUBackend(threads: 2) }),
    ]

    /// Runs `check` on a fresh instance of every available backend; skips the test when none is available.
    private func forEachBackend(_ check: (BackendConformance) throws -> Void) throws {
        var ran = 0
        for (name, make) in Self.backends {
            guard let backend = make() else {
                print("[\(name)] not available on this machine: conformance checks skipped")
                continue
            }
            try check(BackendConformance(name: name, backend: backend))
            ran += 1
        }
        if ran == 0 { throw XCTSkip("no backend available") }
    }

    func testMemory() throws { try forEachBackend { $0.checkMemory() } }
    func testEmbed() throws { try forEachBackend { try $0.checkEmbed() } }
    func testRMSNorm() throws { try forEachBackend { $0.checkRMSNorm() } }
    func testMatmul() throws { try forEachBackend { try $0.checkMatmul() } }
    func testMatmulGroup() throws { try forEachBackend { try $0.checkMatmulGroup() } }
    func testMatmulHeads() throws { try forEachBackend { try $0.checkMatmulHeads() } }
    func testElementwise() throws { try forEachBackend { $0.checkElementwise() } }
    func testRoPE() throws { try forEachBackend { $0.checkRoPE() } }
    func testPagedAttention() throws { try forEachBackend { $0.checkAttention() } }
    func testMoESelect() throws { try forEachBackend { $0.checkMoESelect() } }
    func testExpertExecutor() throws { try forEachBackend { try $0.checkExpertExecutor() } }
}
