// The backend conformance suite under XCTest: every backend in `BackendConformance.backends`
// (Sources/BackendConformance/Backends.swift, where a new backend is one line) runs every check. The same checks run
// from the command line, where no Swift toolchain is (the GPU machine): `ktransformers devices --conformance`.
import Backend
import BackendConformance
import XCTest

final class BackendConformanceTests: XCTestCase {
    /// Runs the check `name` on a fresh instance of every available backend; skips when none is available.
    private func run(_ name: String) throws {
        guard let check = BackendConformance.checks.first(where: { $0.name == name }) else {
            return XCTFail("no conformance check '\(name)'")
        }
        var ran = 0
        for (backendName, make) in BackendConformance.backends {
            guard let backend = try make() else {
                print("[\(backendName)] not available on this machine: conformance checks skipped")
                continue
            }
            let c = BackendConformance(name: backendName, backend: backend)
            for f in Expect.collect({ try check.run(c) }) {
                XCTFail("[\(backendName)] \(name): \(f)")
            }
            ran += 1
        }
        if ran == 0 { throw XCTSkip("no backend available") }
    }

    func testEveryCheckIsListed() {
        XCTAssertEqual(BackendConformance.checks.count, 15)
    }

    func testMemory() throws { try run("memory") }
    func testEmbed() throws { try run("embed") }
    func testRMSNorm() throws { try run("rmsNorm") }
    func testMatmul() throws { try run("matmul") }
    func testMatmulGroup() throws { try run("matmulGroup") }
    func testChainedOps() throws { try run("chainedOps") }
    func testMatmulHeads() throws { try run("matmulHeads") }
    func testElementwise() throws { try run("elementwise") }
    func testRoPE() throws { try run("rope") }
    func testRopeAndStoreKV() throws { try run("ropeAndStoreKV") }
    func testAddRMSNorm() throws { try run("addRMSNorm") }
    func testPagedAttention() throws { try run("attention") }
    func testMoESelect() throws { try run("moeSelect") }
    func testExpertExecutor() throws { try run("expertExecutor") }
    func testStagedExpertExecutor() throws { try run("stagedExpertExecutor") }
}
