import Backend
import BackendCUDA
import XCTest

/// Every golden-logits test (GoldenLogitsTests) again with the models on the CUDA backend: each architecture's
/// logits against its float64 reference at the same tolerance, one pass = chunked = token by token, and a batch of
/// two sequences = each alone. Runs on a GPU, or on the CUDA emulator (scripts/test.sh sets it up:
/// KTRANSFORMERS_CUDA_DRIVER / KTRANSFORMERS_NVRTC, see docs/testing.md); skipped, visibly, where neither is.
final class CUDAGoldenLogitsTests: GoldenLogitsTests {
    /// One backend for every test (its stream and compiled kernels); nil when there is no CUDA here.
    nonisolated(unsafe) static var shared: Result<CUDABackend?, Error>?

    override class func makeBackend() throws -> any ComputeBackend {
        if shared == nil { shared = Result { try CUDABackend.makeIfPresent() } }
        guard let b = try shared!.get() else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA model tests skipped")
        }
        return b
    }

    // (Linux's XCTest discovers a class by the tests it declares; the inherited ones then run too.)

    /// The compiled kernels are cached on disk: a second backend loads them and compiles nothing.
    func testSecondStartLoadsTheKernelsFromTheCache() throws {
        _ = try Self.makeBackend()
        let second = try XCTUnwrap(try CUDABackend.makeIfPresent())
        XCTAssertTrue(second.kernelOrigin.hasPrefix("cache "), "kernels of a second start: \(second.kernelOrigin)")
    }
}
