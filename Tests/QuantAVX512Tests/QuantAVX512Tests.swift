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

private let features = csimd_cpu_features()
private let hasAVX512VNNI: Bool = {
    let need = UInt32(CSIMD_AVX2 | CSIMD_FMA | CSIMD_F16C | CSIMD_AVX512F | CSIMD_AVX512BW | CSIMD_AVX512VL
                      | CSIMD_AVX512VNNI)
    return features & need == need
}()

/// Random bytes with sane f16 scales, `misalign` bytes past a 64-byte boundary (the returned base is to free).
private func randomWeights(_ t: GGMLType, _ n: Int, _ rng: inout RNG, misalign: Int) -> [UInt8] {
    let bytes = t.byteCount(elements: n)!
    var b = [UInt8](repeating: 0, count: bytes + misalign)
    for i in b.indices { b[i] = UInt8(truncatingIfNeeded: rng.next()) }
    let halves: [Int]
    switch t {
    case .q4_0, .q5_0, .q8_0: halves = [0]
    case .q4_K, .q5_K: halves = [0, 2]
    case .q6_K: halves = [208]
    default: halves = []
    }
    for blk in 0..<(n / t.blockSize) {
        for off in halves {
            let v = Float16(rng.float(0.0005, 0.05) * (rng.next() & 1 == 0 ? 1 : -1)).bitPattern
            b[misalign + blk * t.typeSize + off] = UInt8(v & 0xFF)
            b[misalign + blk * t.typeSize + off + 1] = UInt8(v >> 8)
        }
    }
    return b
}

final class QuantAVX512Tests: XCTestCase {
    static let formats: [GGMLType] = [.q8_0, .q5_0, .q4_0, .q4_K, .q5_K, .q6_K]

    /// Every AVX-512 vecDot against the scalar reference, bit-equal to AVX2's; every vecDotMulti (1...6 rows,
    /// odd strides) bit-equal to its vecDot; the 512-bit variants of the 32-element formats the same way.
    func testVNNIKernelsAgainstScalar() throws {
        try XCTSkipUnless(hasAVX512VNNI, "CPU lacks AVX-512 F/BW/VL + VNNI")
        var rng = RNG(s: 0xA512)
        for t in Self.formats {
            let avx2 = try XCTUnwrap(QuantAVX2.kernels(for: t))
            // Q5_K's VNNI kernel was slower than AVX2's and is not dispatched (but still tested).
            let k = t == .q5_K ? avx2 : try XCTUnwrap(QuantAVX512.kernels(for: t, base: avx2), "no AVX-512 kernels for \(t)")
            // Batch invariance: the dispatched vecDot must give vecDotMulti's bits (checked below with variant 0).
            let ref = QuantRegistry.kernels(for: t)!
            let vt = ref.vecDotType
            let quantize = QuantRegistry.kernels(for: vt)!.quantize!
            // The kernels dispatch uses, and every variant the module has (kept or not).
            var variants: [(String, QuantKernels.VecDot, QuantKernels.VecDotMulti)] = [("dispatched", k.vecDot, k.vecDotMulti!)]
            switch t {
            case .q8_0: variants += [("vnni512", Q8_0_VNNI.vecDot512, Q8_0_VNNI.vecDotMulti512),
                                     ("vnni256", Q8_0_VNNI.vecDot, Q8_0_VNNI.vecDotMulti)]
            case .q5_0: variants += [("vnni512", Q5_0_VNNI.vecDot512, Q5_0_VNNI.vecDotMulti512),
                                     ("vnni256", Q5_0_VNNI.vecDot, Q5_0_VNNI.vecDotMulti)]
            case .q4_0: variants += [("vnni512", Q4_0_VNNI.vecDot512, Q4_0_VNNI.vecDotMulti512),
                                     ("vnni256", Q4_0_VNNI.vecDot, Q4_0_VNNI.vecDotMulti)]
            case .q4_K: variants += [("vnni512", Q4_K_VNNI.vecDot512, Q4_K_VNNI.vecDotMulti512),
                                     ("vnni256", Q4_K_VNNI.vecDot, Q4_K_VNNI.vecDotMulti)]
            case .q5_K: variants += [("vnni512", Q5_K_VNNI.vecDot512, Q5_K_VNNI.vecDotMulti512),
                                     ("vnni256", Q5_K_VNNI.vecDot, Q5_K_VNNI.vecDotMulti)]
            case .q6_K: variants.append(("vnni256", Q6_K_VNNI.vecDot, Q6_K_VNNI.vecDotMulti))
            default: break
            }
            let bitEqualAVX2 = variants.count - 1   // the 256-bit VNNI kernels keep AVX2's integer sums and float steps
            for n in (t.blockSize == 256 ? [256, 512, 1280, 4096] : [32, 64, 160, 1024, 4128]) {
                for trial in 0..<2 {
                    let mis = (n / t.blockSize + trial) % 5
                    let wb = randomWeights(t, n, &rng, misalign: mis)
                    let nx = 6
                    let xqBytes = vt.byteCount(elements: n)!
                    let stride = xqBytes + 3
                    var xq = [UInt8](repeating: 0, count: stride * nx + 1)
                    var deqW = [Float](repeating: 0, count: n)
                    var xs = [[Float]]()
                    for _ in 0..<nx {
                        xs.append((0..<n).map { _ in rng.float(-1, 1) * (rng.next() % 64 == 0 ? 20 : 1) })
                    }
                    wb.withUnsafeBytes { wr in
                        let w = wr.baseAddress! + mis
                        ref.dequantize(w, &deqW, n)
                        xq.withUnsafeMutableBytes { qb in
                            let q = qb.baseAddress! + 1
                            for j in 0..<nx { quantize(xs[j], q + j * stride, n) }
                            var deqX = [Float](repeating: 0, count: n)
                            var singles = [[Float]](repeating: [], count: variants.count)
                            for j in 0..<nx {
                                let y = UnsafeRawPointer(q + j * stride)
                                let r = ref.vecDot(w, y, n)
                                QuantRegistry.kernels(for: vt)!.dequantize(y, &deqX, n)
                                var mag: Float = 0
                                for i in 0..<n { mag += abs(deqW[i] * deqX[i]) }
                                for (vi, v) in variants.enumerated() {
                                    let a = v.1(w, y, n)
                                    singles[vi].append(a)
                                    XCTAssertLessThanOrEqual(abs(a - r), 1e-5 * max(abs(r), 1e-2 * mag),
                                                             "\(t) \(v.0) n=\(n) vecDot \(a) vs scalar \(r)")
                                }
                                XCTAssertEqual(variants[bitEqualAVX2].1(w, y, n).bitPattern, avx2.vecDot(w, y, n).bitPattern,
                                               "\(t) n=\(n): 256-bit VNNI vecDot differs from AVX2")
                                // The K-quants' 512-bit kernels fold their lanes back to the 256-bit ones' sums: AVX2's bits too.
                                for v in variants where v.0 == "vnni512" && (t == .q4_K || t == .q5_K) {
                                    XCTAssertEqual(v.1(w, y, n).bitPattern, avx2.vecDot(w, y, n).bitPattern,
                                                   "\(t) n=\(n): 512-bit VNNI vecDot differs from AVX2")
                                }
                            }
                            for (vi, v) in variants.enumerated() {
                                for m in 1...nx {
                                    var out = [Float](repeating: .nan, count: m)
                                    v.2(w, q, stride, m, &out, n)
                                    for j in 0..<m {
                                        XCTAssertEqual(out[j].bitPattern, singles[vi][j].bitPattern,
                                                       "\(t) \(v.0) n=\(n) multi(\(m))[\(j)] \(out[j]) vs \(singles[vi][j])")
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The level follows CPUID and `KTRANSFORMERS_SIMD`; at avx512 the formats with AVX-512 kernels use them.
    func testDispatchLevel() throws {
        let env = ProcessInfo.processInfo.environment["KTRANSFORMERS_SIMD"]?.lowercased()
        let avx2 = UInt32(CSIMD_AVX2 | CSIMD_FMA | CSIMD_F16C)
        var expect = features & avx2 != avx2 ? "scalar" : (hasAVX512VNNI ? "avx512" : "avx2")
        if env == "scalar" { expect = "scalar" } else if env == "avx2", expect == "avx512" { expect = "avx2" }
        XCTAssertEqual(KernelDispatch.isa, expect)
        print("KernelDispatch.isa = \(KernelDispatch.isa)")
        guard KernelDispatch.level == .avx512 else { return }
        // Same results as the AVX-512 kernels (pointer identity of closures is not observable: compare outputs).
        var rng = RNG(s: 1)
        for t in Self.formats {
            let n = t.blockSize == 256 ? 512 : 64
            let wb = randomWeights(t, n, &rng, misalign: 0)
            let vt = QuantRegistry.kernels(for: t)!.vecDotType
            var xq = [UInt8](repeating: 0, count: vt.byteCount(elements: n)!)
            let x = (0..<n).map { _ in rng.float(-1, 1) }
            QuantRegistry.kernels(for: vt)!.quantize!(x, &xq, n)
            let k = try XCTUnwrap(KernelDispatch.kernels(for: t))
            let direct = QuantAVX512.kernels(for: t, base: QuantAVX2.kernels(for: t)!) ?? QuantAVX2.kernels(for: t)!
            XCTAssertEqual(k.vecDot(wb, xq, n).bitPattern, direct.vecDot(wb, xq, n).bitPattern, "\(t)")
            XCTAssertNotNil(k.dotF32Multi, "\(t)")
        }
    }
}

/// The SIMD row · Q16_K kernels (AVX2 and AVX-512) and the AVX2 Q16_K quantizer against the scalar ones.
final class Q16SIMDTests: XCTestCase {
    /// The AVX2 quantizer writes exactly the scalar quantizer's bytes (ties, clamping and zero blocks included).
    func testAVX2QuantizerMatchesScalar() throws {
        try XCTSkipUnless(features & UInt32(CSIMD_AVX2 | CSIMD_FMA | CSIMD_F16C) == UInt32(CSIMD_AVX2 | CSIMD_FMA | CSIMD_F16C))
        var rng = RNG(s: 0x16)
        let n = 2048
        var x = (0..<n).map { _ in rng.float(-3, 3) }
        for i in 256..<512 { x[i] = 0 }
        for i in 512..<768 { x[i] = Float(Int(x[i] * 10)) * 0.5 }  // exact halves: ties in v = x/d
        x[1000] = 1e6
        var a = [UInt8](repeating: 0xAA, count: Q16_K.byteCount(elements: n)), b = a
        Q16_K.quantize(x, &a, n)
        Q16_AVX2.quantize(x, &b, n)
        XCTAssertEqual(a, b)
    }

    /// Every SIMD kernel agrees with the scalar reference within 1e-6 of Σ|w·x| (both compute exact integer sums;
    /// only float rounding differs), and every nx (1...6, odd strides) gives exactly the bits of nx = 1.
    func testKernelsAgainstScalar() throws {
        try XCTSkipUnless(hasAVX512VNNI, "CPU lacks AVX-512 F/BW/VL + VNNI")
        var rng = RNG(s: 0x1616)
        let n = 768
        let simd: [(GGMLType, String, QuantKernels.VecDotMulti)] = [
            (.q4_K, "avx2", Q16_AVX2.q4K), (.q5_K, "avx2", Q16_AVX2.q5K), (.q6_K, "avx2", Q16_AVX2.q6K),
            (.q4_K, "vnni", Q16_VNNI.q4K), (.q5_K, "vnni", Q16_VNNI.q5K), (.q6_K, "vnni", Q16_VNNI.q6K),
        ]
        for (t, name, kernel) in simd {
            let ref = try XCTUnwrap(QuantRegistry.kernels(for: t)?.q16DotMulti)
            for misalign in [0, 3] {
                let wb = randomWeights(t, n, &rng, misalign: misalign)
                let w = [Float](unsafeUninitializedCapacity: n) { buf, c in
                    wb.withUnsafeBytes { QuantRegistry.kernels(for: t)!.dequantize($0.baseAddress! + misalign, buf.baseAddress!, n) }
                    c = n
                }
                let stride = Q16_K.byteCount(elements: n) + 5
                var xq = [UInt8](repeating: 0, count: 6 * stride)
                var xs: [[Float]] = []
                for j in 0..<6 {
                    let x = (0..<n).map { _ in rng.float(-2, 2) * (j == 3 ? 1e-3 : 1) }
                    xs.append(x)
                    xq.withUnsafeMutableBytes { Q16_K.quantize(x, $0.baseAddress! + j * stride, n) }
                }
                wb.withUnsafeBytes { wr in
                    xq.withUnsafeBytes { xr in
                        let row = wr.baseAddress! + misalign, x0 = xr.baseAddress!
                        var single = [Float](repeating: 0, count: 6)
                        for j in 0..<6 {
                            var r: Float = 0, s: Float = 0
                            ref(row, x0 + j * stride, stride, 1, &r, n)
                            kernel(row, x0 + j * stride, stride, 1, &s, n)
                            var mag = 0.0
                            for i in 0..<n { mag += abs(Double(w[i]) * Double(xs[j][i])) }
                            XCTAssertLessThanOrEqual(abs(Double(s) - Double(r)), 1e-6 * mag, "\(t) \(name) row \(j): \(s) vs \(r)")
                            single[j] = s
                        }
                        for nx in 1...6 {
                            var out = [Float](repeating: .nan, count: nx)
                            kernel(row, x0, stride, nx, &out, n)
                            for j in 0..<nx {
                                XCTAssertEqual(out[j].bitPattern, single[j].bitPattern, "\(t) \(name) nx=\(nx) j=\(j)")
                            }
                        }
                    }
                }
            }
        }
    }

    /// The rows kernels (several weight rows · one or two activations) give exactly the bits of the token kernels
    /// (one row · several activations) for every row count: an expert's result for a token does not depend on
    /// whether other tokens chose that expert too.
    func testRowsKernelsMatchMulti() throws {
        try XCTSkipUnless(hasAVX512VNNI, "CPU lacks AVX-512 F/BW/VL + VNNI")
        var rng = RNG(s: 0x1617)
        let n = 768
        let kernels: [(GGMLType, QuantKernels.VecDotRows, QuantKernels.VecDotMulti)] = [
            (.q4_K, Q16_VNNI.q4KRows, Q16_VNNI.q4K), (.q5_K, Q16_VNNI.q5KRows, Q16_VNNI.q5K),
            (.q6_K, Q16_VNNI.q6KRows, Q16_VNNI.q6K),
            (.q4_K, Q16_AVX2.q4KRows, Q16_AVX2.q4K), (.q5_K, Q16_AVX2.q5KRows, Q16_AVX2.q5K),
        ]
        for (t, rowsK, multi) in kernels {
            let rowBytes = t.byteCount(elements: n)! + 7
            var wb = [UInt8]()
            for _ in 0..<5 { wb += randomWeights(t, n, &rng, misalign: 7) }
            let xStride = Q16_K.byteCount(elements: n) + 3
            var xq = [UInt8](repeating: 0, count: 2 * xStride)
            for j in 0..<2 { xq.withUnsafeMutableBytes { Q16_K.quantize((0..<n).map { _ in rng.float(-2, 2) }, $0.baseAddress! + j * xStride, n) } }
            wb.withUnsafeBytes { wr in
                xq.withUnsafeBytes { xr in
                    let base = wr.baseAddress! + 7, x0 = xr.baseAddress!
                    var single = [[Float]](repeating: [Float](repeating: 0, count: 5), count: 2)
                    for j in 0..<2 { for i in 0..<5 { multi(base + i * rowBytes, x0 + j * xStride, 0, 1, &single[j][i], n) } }
                    for nx in 1...2 {
                        for nr in 1...4 {
                            for first in 0...(5 - nr) {
                                var out = [Float](repeating: .nan, count: 8)
                                rowsK(base + first * rowBytes, rowBytes, nr, x0, xStride, nx, &out, n)
                                for j in 0..<nx {
                                    for i in 0..<nr {
                                        XCTAssertEqual(out[4 * j + i].bitPattern, single[j][first + i].bitPattern,
                                                       "\(t) nr=\(nr) nx=\(nx) row \(first + i) activation \(j)")
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// At the avx512 level the dispatched Q16 kernels are the VNNI ones; at avx2 the AVX2 ones.
    func testDispatch() throws {
        guard KernelDispatch.level >= .avx2 else { return }
        var rng = RNG(s: 9)
        for (t, avx2, vnni) in [(GGMLType.q4_K, Q16_AVX2.q4K, Q16_VNNI.q4K), (.q5_K, Q16_AVX2.q5K, Q16_VNNI.q5K),
                                (.q6_K, Q16_AVX2.q6K, Q16_VNNI.q6K)] {
            let wb = randomWeights(t, 512, &rng, misalign: 0)
            var xq = [UInt8](repeating: 0, count: Q16_K.byteCount(elements: 512))
            Q16_K.quantize((0..<512).map { _ in rng.float(-1, 1) }, &xq, 512)
            let k = try XCTUnwrap(KernelDispatch.kernels(for: t)?.q16DotMulti)
            var got: Float = 0, want: Float = 0
            k(wb, xq, 0, 1, &got, 512)
            (KernelDispatch.level == .avx512 ? vnni : avx2)(wb, xq, 0, 1, &want, 512)
            XCTAssertEqual(got.bitPattern, want.bitPattern, "\(t)")
        }
    }
}

#endif
