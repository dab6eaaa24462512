import XCTest
import CSIMD
import Quant
import QuantAVX2
import Backend

/// The AVX2 tile kernels against their one-row kernels, bit for bit, over edge shapes (rows and tokens not multiples
/// of the register tile, odd strides).
final class TileAVX2Tests: XCTestCase {
    func testQuantizedTilesMatchVecDot() throws {
        try XCTSkipUnless(hasAVX2, "CPU lacks AVX2/FMA/F16C")
        var rng = TestRNG(0x711E3)
        for t in [GGMLType.q5_0, .q4_0] {
            let k = try XCTUnwrap(QuantAVX2.kernels(for: t))
            let tile = try XCTUnwrap(k.vecDotTile, "\(t)")
            let quantize = QuantRegistry.kernels(for: k.vecDotType)!.quantize!
            for cols in [32, 96, 640, 2080] {
                for (nr, nx) in [(1, 1), (2, 5), (3, 3), (7, 11), (8, 17)] {
                    let rb = t.byteCount(elements: cols)!
                    let w = randomWeights(t, nr * cols, &rng, misalign: nr % 3)
                    let x = randomFloats(cols * nx, &rng, misalign: 0)
                    let xqb = k.vecDotType.byteCount(elements: cols)!
                    let xq = Buf(bytes: xqb * nx, misalign: 1)
                    let ps = tile.preparedBytes(cols) + 8
                    let xp = Buf(bytes: ps * nx, misalign: 0)
                    for j in 0..<nx {
                        quantize(x.floats + j * cols, xq.p + j * xqb, cols)
                        tile.prepare!(xq.p + j * xqb, xp.p + j * ps, cols)
                    }
                    let scratch = Buf(bytes: tile.scratchBytes(nr, cols) + 64, misalign: 0)
                    let ys = nr + 2
                    var y = [Float](repeating: .nan, count: nx * ys)
                    tile.gemm(UnsafeRawPointer(w.p), rb, nr, UnsafeRawPointer(xp.p), ps, nx, &y, ys, cols, scratch.p)
                    for j in 0..<nx {
                        for r in 0..<nr {
                            let ref = k.vecDot(w.p + r * rb, xq.p + j * xqb, cols)
                            XCTAssertEqual(y[j * ys + r].bitPattern, ref.bitPattern,
                                           "\(t) cols=\(cols) \(nr)x\(nx) [\(r),\(j)]: tile \(y[j * ys + r]) vs vecDot \(ref)")
                        }
                    }
                }
            }
        }
    }

    func testF32TilesMatchDotF32() throws {
        try XCTSkipUnless(hasAVX2, "CPU lacks AVX2/FMA/F16C")
        var rng = TestRNG(0x711E2)
        for t in [GGMLType.q4_K, .q6_K] {
            let k = try XCTUnwrap(QuantAVX2.kernels(for: t))
            let tile = try XCTUnwrap(k.dotF32Tile, "\(t)")
            for cols in [256, 512, 2048] {
                for (nr, nx) in [(1, 1), (2, 5), (3, 3), (7, 11), (8, 16)] {
                    let rb = t.byteCount(elements: cols)!
                    let w = randomWeights(t, nr * cols, &rng, misalign: nr % 3)
                    let xs = cols + 3
                    let x = randomFloats(xs * nx, &rng, misalign: 4)
                    let scratch = Buf(bytes: tile.scratchBytes(nr, cols) + 64, misalign: 0)
                    let ys = nr + 2
                    var y = [Float](repeating: .nan, count: nx * ys)
                    tile.gemm(UnsafeRawPointer(w.p), rb, nr, UnsafeRawPointer(x.floats), xs * 4, nx, &y, ys, cols, scratch.p)
                    for j in 0..<nx {
                        for r in 0..<nr {
                            let ref = k.dotF32(w.p + r * rb, x.floats + j * xs, cols)
                            XCTAssertEqual(y[j * ys + r].bitPattern, ref.bitPattern,
                                           "\(t) cols=\(cols) \(nr)x\(nx) [\(r),\(j)]: tile \(y[j * ys + r]) vs dotF32 \(ref)")
                        }
                    }
                }
            }
        }
    }
}
