import XCTest
import CSIMD
import Quant
import QuantAVX2
import Backend

/// `dotF32Multi`: every AVX2 one against `dotF32` (bit-identical, and within 1e-5 relative of the scalar
/// reference), the reference loop for the others, and the f32-activation matmul path.
final class DotF32MultiTests: XCTestCase {
    static let multiFormats: [GGMLType] = [.q6_K, .q4_K, .q5_0, .q8_0, .q4_0, .q5_K]

    func testAVX2DotF32MultiMatchesDotF32() throws {
        try XCTSkipUnless(hasAVX2, "CPU lacks AVX2/FMA/F16C")
        var rng = TestRNG(0xD07F)
        for t in Self.multiFormats {
            let k = try XCTUnwrap(QuantAVX2.kernels(for: t))
            let multi = try XCTUnwrap(k.dotF32Multi, "\(t) has no dotF32Multi")
            let ref = QuantRegistry.kernels(for: t)!
            for n in (t.blockSize == 256 ? [256, 768, 2048] : [32, 96, 640, 2080]) {
                for nx in 1...6 {
                    let w = randomWeights(t, n, &rng, misalign: nx % 3)
                    let xs = n + 5   // odd stride: each row misaligned differently
                    let x = randomFloats(xs * nx, &rng, misalign: 4 * (nx % 2))
                    var out = [Float](repeating: .nan, count: nx)
                    multi(w.p, x.floats, xs, nx, &out, n)
                    let deq = Buf(bytes: 4 * n, misalign: 0)
                    ref.dequantize(w.p, deq.floats, n)
                    for j in 0..<nx {
                        let xj = x.floats + j * xs
                        let single = k.dotF32(w.p, xj, n)
                        XCTAssertEqual(out[j].bitPattern, single.bitPattern,
                                       "\(t) n=\(n) nx=\(nx) row \(j): multi \(out[j]) vs dotF32 \(single)")
                        let r = ref.dotF32(w.p, xj, n)
                        var mag: Float = 0
                        for i in 0..<n { mag += abs(deq.floats[i] * xj[i]) }
                        XCTAssertLessThanOrEqual(abs(out[j] - r), 1e-5 * max(abs(r), mag),
                                                 "\(t) n=\(n) nx=\(nx) row \(j): \(out[j]) vs scalar \(r)")
                    }
                }
            }
        }
    }

    func testReferenceDotF32Multi() {
        var rng = TestRNG(0xF32)
        for t in [GGMLType.q4_1, .f16, .q3_K] {
            let k = QuantRegistry.kernels(for: t)!
            let n = t.blockSize == 256 ? 512 : 64
            let w = randomWeights(t, n, &rng, misalign: 0)
            let x = randomFloats(3 * n, &rng, misalign: 0)
            let multi = k.withReferenceMulti().dotF32Multi!
            var out = [Float](repeating: 0, count: 3)
            multi(w.p, x.floats, n, 3, &out, n)
            for j in 0..<3 { XCTAssertEqual(out[j].bitPattern, k.dotF32(w.p, x.floats + j * n, n).bitPattern, "\(t)") }
        }
    }

    /// The f32-activation matmul gives, for every batch size, exactly the per-row dotF32 results.
    func testMatmulF32ActivationsBatchInvariant() throws {
        var rng = TestRNG(0xBA7C)
        let pool = ThreadPool(threads: 2)
        for t in [GGMLType.q6_K, .q4_K, .q5_0] {
            let rows = 37, cols = 512
            let w = randomWeights(t, rows * cols, &rng, misalign: 0)
            let wm = try WeightMatrix(name: "w", type: t, rows: rows, cols: cols, data: UnsafeRawPointer(w.p))
            let n = 7
            let x = randomFloats(n * cols, &rng, misalign: 0)
            let scratch = MatmulScratch(perThread: ThreadScratch(threads: 2, floatsPerThread: cols),
                                        activations: ActivationBuffer())
            var y = [Float](repeating: .nan, count: n * rows)
            y.withUnsafeMutableBufferPointer { yb in
                pool.matmul(wm, x.floats, yb.baseAddress!, n: n, scratch: scratch, f32Activations: true)
            }
            for tk in 0..<n {
                for r in 0..<rows {
                    let single = wm.kernels.dotF32(wm.row(r), x.floats + tk * cols, cols)
                    XCTAssertEqual(y[tk * rows + r].bitPattern, single.bitPattern, "\(t) token \(tk) row \(r)")
                }
            }
        }
    }
}
