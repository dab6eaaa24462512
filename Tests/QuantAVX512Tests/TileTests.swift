#if arch(x86_64)  // the AVX-512 kernels exist only on x86-64
import XCTest
import CSIMD
import Quant
import QuantAVX2
import QuantAVX512
import Backend
import Foundation

/// SplitMix64: reproducible test data.
private struct RNG {
    var s: UInt64
    mutating func next() -> UInt64 {
        s &+= 0x9E37_79B9_7F4A_7C15
        var z = s
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func float(_ lo: Float, _ hi: Float) -> Float { lo + (hi - lo) * Float(next() >> 40) / Float(1 << 24) }
}

private let hasAVX512VNNI: Bool = {
    let need = UInt32(CSIMD_AVX2 | CSIMD_FMA | CSIMD_F16C | CSIMD_AVX512F | CSIMD_AVX512BW | CSIMD_AVX512VL
                      | CSIMD_AVX512VNNI)
    return csimd_cpu_features() & need == need
}()

/// `rows` random rows of `t` (sane f16 scales), `rowBytes` apart.
private func randomRows(_ t: GGMLType, rows: Int, cols: Int, rowBytes: Int, _ rng: inout RNG) -> [UInt8] {
    var b = [UInt8](repeating: 0, count: rows * rowBytes + 64)
    for i in b.indices { b[i] = UInt8(truncatingIfNeeded: rng.next()) }
    let halves: [Int]
    switch t {
    case .q4_0, .q5_0, .q8_0: halves = [0]
    case .q4_K, .q5_K: halves = [0, 2]
    case .q6_K: halves = [208]
    default: halves = []
    }
    for r in 0..<rows {
        for blk in 0..<(cols / t.blockSize) {
            for off in halves {
                let v = Float16(rng.float(0.0005, 0.05) * (rng.next() & 1 == 0 ? 1 : -1)).bitPattern
                b[r * rowBytes + blk * t.typeSize + off] = UInt8(v & 0xFF)
                b[r * rowBytes + blk * t.typeSize + off + 1] = UInt8(v >> 8)
            }
        }
    }
    return b
}

/// Checks a tile kernel against its one-row kernel, bit for bit, over edge shapes (rows and tokens not multiples of
/// the register tile, odd block counts, odd strides).
func checkTile(_ k: QuantKernels, _ tile: TileKernels, f32: Bool, colsList: [Int], file: StaticString = #filePath,
               line: UInt = #line) {
    var rng = RNG(s: 0x711E)
    let t = k.type
    let vt = k.vecDotType
    let quantize = f32 ? nil : QuantRegistry.kernels(for: vt)!.quantize!
    for cols in colsList {
        for (nr, nx) in [(1, 1), (3, 5), (4, 4), (7, 18), (9, 33)] {
            let rb = t.byteCount(elements: cols)!
            let rowBytes = rb + 5
            let w = randomRows(t, rows: nr, cols: cols, rowBytes: rowBytes, &rng)
            let xs = (0..<(nx * cols)).map { _ in rng.float(-1, 1) * (rng.next() % 64 == 0 ? 20 : 1) }
            let xqb = f32 ? 0 : vt.byteCount(elements: cols)!
            var xq = [UInt8](repeating: 0, count: max(1, nx * xqb))
            if let quantize {
                xq.withUnsafeMutableBytes { q in
                    for j in 0..<nx { quantize(xs.withUnsafeBufferPointer { $0.baseAddress! + j * cols }, q.baseAddress! + j * xqb, cols) }
                }
            }
            // Prepared activations (odd stride) and the reference outputs.
            let pstride = f32 ? cols * 4 + 12 : tile.preparedBytes(cols) + 64
            let xp = UnsafeMutableRawPointer.allocate(byteCount: nx * pstride + 64, alignment: 64)
            let scratch = UnsafeMutableRawPointer.allocate(byteCount: tile.scratchBytes(nr, cols) + 64, alignment: 64)
            defer { xp.deallocate(); scratch.deallocate() }
            let ys = nr + 3
            var y = [Float](repeating: .nan, count: nx * ys)
            var ref = [Float](repeating: 0, count: nx * nr)
            w.withUnsafeBytes { wb in
                xq.withUnsafeBytes { qb in
                    xs.withUnsafeBufferPointer { xb in
                        for j in 0..<nx {
                            if f32 {
                                (xp + j * pstride).copyMemory(from: xb.baseAddress! + j * cols, byteCount: cols * 4)
                            } else {
                                tile.prepare!(qb.baseAddress! + j * xqb, xp + j * pstride, cols)
                            }
                            for r in 0..<nr {
                                ref[j * nr + r] = f32 ? k.dotF32(wb.baseAddress! + r * rowBytes, xb.baseAddress! + j * cols, cols)
                                    : k.vecDot(wb.baseAddress! + r * rowBytes, qb.baseAddress! + j * xqb, cols)
                            }
                        }
                        y.withUnsafeMutableBufferPointer { yb in
                            tile.gemm(wb.baseAddress!, rowBytes, nr, UnsafeRawPointer(xp), pstride, nx, yb.baseAddress!, ys, cols, scratch)
                        }
                    }
                }
            }
            for j in 0..<nx {
                for r in 0..<nr where y[j * ys + r].bitPattern != ref[j * nr + r].bitPattern {
                    XCTFail("\(t) \(f32 ? "f32" : "q") cols=\(cols) \(nr)x\(nx) [\(r),\(j)]: tile \(y[j * ys + r]) vs one-row \(ref[j * nr + r])",
                            file: file, line: line)
                    return
                }
            }
        }
    }
}

final class TileTests: XCTestCase {
    /// The AVX-512 tile kernels of the 32-element formats give `vecDot`'s bits.
    func testTile32() throws {
        try XCTSkipUnless(hasAVX512VNNI, "CPU lacks AVX-512 F/BW/VL + VNNI")
        for t in [GGMLType.q8_0, .q5_0, .q4_0] {
            let k = try XCTUnwrap(QuantAVX512.kernels(for: t, base: QuantAVX2.kernels(for: t)!))
            let tile = try XCTUnwrap(k.vecDotTile, "\(t)")
            checkTile(k, tile, f32: false, colsList: [32, 64, 96, 640, 1056])
        }
    }

    /// The AVX-512 tile kernel of Q4_K against Q8_K activations gives `vecDot`'s bits.
    func testTileK() throws {
        try XCTSkipUnless(hasAVX512VNNI, "CPU lacks AVX-512 F/BW/VL + VNNI")
        let k = try XCTUnwrap(QuantAVX512.kernels(for: .q4_K, base: QuantAVX2.kernels(for: .q4_K)!))
        checkTile(k, try XCTUnwrap(k.vecDotTile), f32: false, colsList: [256, 512, 1024])
    }

    /// The AVX-512 f32-activation tile kernels of Q4_K / Q6_K give `dotF32`'s bits.
    func testTileF32() throws {
        try XCTSkipUnless(hasAVX512VNNI, "CPU lacks AVX-512 F/BW/VL + VNNI")
        for t in [GGMLType.q4_K, .q6_K] {
            let k = try XCTUnwrap(QuantAVX512.kernels(for: t, base: QuantAVX2.kernels(for: t)!))
            let tile = try XCTUnwrap(k.dotF32Tile, "\(t)")
            checkTile(k, tile, f32: true, colsList: [256, 512, 2048])
        }
    }
}

/// `matmul` over many token rows (the tile path where the format has one) gives every row the bits of a one-row
/// matmul, for each dispatched format and both activation paths.
final class TiledMatmulTests: XCTestCase {
    func testBatchInvariance() throws {
        var rng = RNG(s: 0xBA7C)
        let pool = ThreadPool(threads: 2)
        for (t, cols, f32) in [(GGMLType.q5_0, 640, false), (.q8_0, 96, false), (.q4_0, 160, false),
                               (.q4_K, 1024, false), (.q4_K, 512, true), (.q6_K, 512, true)] {
            let rows = 37, n = 23
            let rb = t.byteCount(elements: cols)!
            let bytes = randomRows(t, rows: rows, cols: cols, rowBytes: rb, &rng)
            let data = UnsafeMutableRawPointer.allocate(byteCount: bytes.count, alignment: 64)
            defer { data.deallocate() }
            bytes.withUnsafeBytes { data.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
            let w = try WeightMatrix(name: "w", type: t, rows: rows, cols: cols, data: UnsafeRawPointer(data))
            let scratch = MatmulScratch(perThread: ThreadScratch(threads: 2, floatsPerThread: cols),
                                        activations: ActivationBuffer())
            let x = (0..<(n * cols)).map { _ in rng.float(-1, 1) }
            var yAll = [Float](repeating: .nan, count: n * rows), yOne = [Float](repeating: .nan, count: rows)
            x.withUnsafeBufferPointer { xb in
                pool.matmul(w, xb.baseAddress!, &yAll, n: n, scratch: scratch, f32Activations: f32)
                for j in 0..<n {
                    pool.matmul(w, xb.baseAddress! + j * cols, &yOne, n: 1, scratch: scratch, f32Activations: f32)
                    for r in 0..<rows where yOne[r].bitPattern != yAll[j * rows + r].bitPattern {
                        XCTFail("\(t) f32=\(f32) token \(j) row \(r): batched \(yAll[j * rows + r]) vs alone \(yOne[r])")
                        return
                    }
                }
            }
        }
    }
}

final class AttentionAVX512Tests: XCTestCase {
    /// The AVX-512 and AVX2 attention kernels against the scalar one (float tolerance), over odd sizes.
    func testAgainstScalar() throws {
        try XCTSkipUnless(hasAVX512VNNI, "CPU lacks AVX-512 F/BW/VL + VNNI")
        var rng = RNG(s: 0xA77)
        for (g, d, dv, count, softcap) in [(4, 256, 256, 37, Float(0)), (3, 72, 40, 5, 0), (1, 64, 64, 1, 0),
                                             (5, 19, 70, 18, 30), (8, 128, 128, 300, 0)] {
            let slotsN = count + 7
            let kStride = d * 2 + 3, vStride = dv + 5
            let q = (0..<(g * d)).map { _ in rng.float(-1, 1) }
            let k = (0..<(slotsN * kStride)).map { _ in rng.float(-1, 1) }
            let v = (0..<(slotsN * vStride)).map { _ in rng.float(-1, 1) }
            let slots = (0..<count).map { Int32(($0 * 5 + 3) % slotsN) }
            var sc1 = [Float](repeating: 0, count: g * count), sc2 = sc1, sc3 = sc1
            var o1 = [Float](repeating: .nan, count: g * dv), o2 = o1, o3 = o1
            let scale = 1 / Float(d).squareRoot()
            q.withUnsafeBufferPointer { qb in k.withUnsafeBufferPointer { kb in v.withUnsafeBufferPointer { vb in
                slots.withUnsafeBufferPointer { sb in
                    ScalarAttention.attend(AttentionKernelArgs(
                        q: qb.baseAddress!, g: g, headDim: d, k: kb.baseAddress!, kStride: kStride, v: vb.baseAddress!,
                        vStride: vStride, headDimV: dv, slots: sb.baseAddress!, count: count, scale: scale,
                        softcap: softcap, scores: &sc1, out: &o1))
                    Attention_AVX512.attend(q: qb.baseAddress!, g: g, headDim: d, k: kb.baseAddress!, kStride: kStride,
                                            v: vb.baseAddress!, vStride: vStride, headDimV: dv, slots: sb.baseAddress!,
                                            count: count, scale: scale, softcap: softcap, scores: &sc2, out: &o2)
                    Attention_AVX2.attend(q: qb.baseAddress!, g: g, headDim: d, k: kb.baseAddress!, kStride: kStride,
                                          v: vb.baseAddress!, vStride: vStride, headDimV: dv, slots: sb.baseAddress!,
                                          count: count, scale: scale, softcap: softcap, scores: &sc3, out: &o3)
                }
            } } }
            for i in 0..<(g * dv) {
                XCTAssertEqual(o1[i], o2[i], accuracy: 1e-5, "avx512 g=\(g) d=\(d) dv=\(dv) count=\(count) [\(i)]")
                XCTAssertEqual(o1[i], o3[i], accuracy: 1e-5, "avx2 g=\(g) d=\(d) dv=\(dv) count=\(count) [\(i)]")
            }
        }
    }
}
#endif
