import Backend
import BackendCUDA
import GGUF
import Quant
import XCTest

/// The CUDA backend's fused steps must actually be taken, not only give the right bits (the conformance checks
/// `chainedOps` and `addRMSNorm` prove the bits): with the kernel profiler on, the MLP's op chain on Q4_K weights
/// 256-multiple wide launches the fused kernels and neither the separate quantization nor the separate split.
/// Runs on a GPU or the CUDA emulator; skipped, visibly, where neither is.
final class CUDAFusionTests: XCTestCase {
    /// Owns a weight's bytes for as long as the backend may read them.
    final class Bytes {
        let pointer: UnsafeMutableRawPointer
        init(_ count: Int) { pointer = .allocate(byteCount: count, alignment: 64) }
        deinit { pointer.deallocate() }
    }

    /// A random Q4_K `[rows, cols]` matrix quantized by the reference quantizer.
    private func q4K(_ name: String, rows: Int, cols: Int) throws -> WeightRef {
        let quantize = try XCTUnwrap(QuantRegistry.kernels(for: .q4_K)?.quantize)
        let rowBytes = try XCTUnwrap(GGMLType.q4_K.byteCount(elements: cols))
        let bytes = Bytes(rows * rowBytes)
        var rng = SystemRandomNumberGenerator()
        var row = [Float](repeating: 0, count: cols)
        for r in 0..<rows {
            for c in 0..<cols { row[c] = Float.random(in: -1...1, using: &rng) }
            row.withUnsafeBufferPointer { quantize($0.baseAddress!, bytes.pointer + r * rowBytes, cols) }
        }
        return WeightRef(name: name, type: .q4_K, shape: [cols, rows], data: UnsafeRawPointer(bytes.pointer), owner: bytes)
    }

    func testMLPChainLaunchesTheFusedKernels() throws {
        guard let b = try CUDABackend.makeIfPresent() else {
            throw XCTSkip("no CUDA driver/GPU and no CUDA emulator here: CUDA fusion test skipped")
        }
        let dim = 512, ff = 768, n = 2
        b.reserve(ForwardPlan(maxTokens: 8, contextLength: 64, maxQueryGroup: 1))
        let gate = try b.prepare(q4K("blk.0.ffn_gate.weight", rows: ff, cols: dim))
        let up = try b.prepare(q4K("blk.0.ffn_up.weight", rows: ff, cols: dim))
        let down = try b.prepare(q4K("blk.0.ffn_down.weight", rows: dim, cols: ff))
        let x = b.upload((0..<(n * dim)).map { Float($0 % 13) - 6 }), res = b.upload([Float](repeating: 0.5, count: n * dim))
        let norm = b.upload([Float](repeating: 1, count: dim))
        let xn = b.allocate(n * dim), g = b.allocate(n * ff), u = b.allocate(n * ff), y = b.allocate(n * dim)
        func chain() -> [Substring] {
            b.profiling = true
            b.resetKernelProfile()
            b.rmsNorm(x, weight: norm, out: xn, rows: n, dim: dim, stride: dim, eps: 1e-5)
            b.matmulGroup(gate, g, up, u, nil, nil, x: xn, n: n)
            b.gatedActivation(g, u, count: n * ff, .silu)
            b.matmul(down, g, y, n: n, precision: .f32Activations)
            b.addRMSNorm(y, into: res, weight: norm, out: xn, rows: n, dim: dim, eps: 1e-5)
            b.matmulGroup(gate, g, up, u, nil, nil, x: xn, n: n)
            return b.kernelProfile().map { $0.name.split(separator: " ")[0] }
        }
        // Decode (2 tokens) runs the plain matmul kernels by default (faster there than the streaming forms).
        let plain = chain()
        XCTAssertEqual(Set(plain), ["rms_norm_q8K", "matvec_q4_K_q8_3", "gated_silu_split", "mmf_q4_K_1", "add_rms_norm"],
                       "kernels launched: \(plain)")
        XCTAssertEqual(b.kernelProfile().first { $0.name.hasPrefix("matvec_q4_K_q8_3") }?.calls, 2)
        // With the streaming forms from 1 token: the same fusions around them.
        let saved = CUDABackend.streamMinTokens
        CUDABackend.streamMinTokens = 1
        defer { CUDABackend.streamMinTokens = saved }
        let streaming = chain()
        XCTAssertEqual(Set(streaming), ["rms_norm_q8K", "matvec_stream_q4_K_q8", "gated_silu_split", "mmf_stream_q4_K_1",
                                        "add_rms_norm"], "kernels launched: \(streaming)")
        XCTAssertEqual(b.kernelProfile().first { $0.name.hasPrefix("matvec_stream_q4_K_q8") }?.calls, 2)
    }
}
