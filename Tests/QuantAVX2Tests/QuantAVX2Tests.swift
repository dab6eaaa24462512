import XCTest
import CSIMD
import Quant
import QuantAVX2
import Backend
import Foundation

/// SplitMix64: reproducible test data.
struct TestRNG {
    var s: UInt64
    init(_ seed: UInt64) { s = seed }
    mutating func next() -> UInt64 {
        s &+= 0x9E37_79B9_7F4A_7C15
        var z = s
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func float(_ lo: Float, _ hi: Float) -> Float {
        lo + (hi - lo) * Float(next() >> 40) / Float(1 << 24)
    }
    mutating func byte() -> UInt8 { UInt8(truncatingIfNeeded: next()) }
}

/// A buffer whose data starts `misalign` bytes past a 64-byte boundary.
final class Buf {
    let base: UnsafeMutableRawPointer
    let p: UnsafeMutableRawPointer
    let bytes: Int
    init(bytes: Int, misalign: Int) {
        base = .allocate(byteCount: bytes + 128, alignment: 64)
        p = base + misalign
        self.bytes = bytes
    }
    deinit { base.deallocate() }
    var floats: UnsafeMutablePointer<Float> { p.assumingMemoryBound(to: Float.self) }
}

let hasAVX2: Bool = {
    let f = csimd_cpu_features()
    let need = UInt32(CSIMD_AVX2 | CSIMD_FMA | CSIMD_F16C)
    return f & need == need
}()

/// Offsets (per block) of the f16 scale fields, which random bytes must not turn into NaN/Inf.
func halfFields(_ t: GGMLType) -> [Int] {
    switch t {
    case .q4_0, .q5_0, .q8_0, .iq4_nl, .iq4_xs: return [0]
    case .q4_1, .q5_1, .q4_K, .q5_K: return [0, 2]
    case .q2_K: return [80, 82]
    case .q3_K: return [108]
    case .q6_K: return [208]
    default: return []
    }
}

/// Random weights of type `t`: random bytes with sane scales, or random values for the float formats.
func randomWeights(_ t: GGMLType, _ n: Int, _ rng: inout TestRNG, misalign: Int) -> Buf {
    let bytes = t.byteCount(elements: n)!
    let b = Buf(bytes: bytes, misalign: misalign)
    switch t {
    case .f32:
        for i in 0..<n { b.p.storeBytes(of: rng.float(-1, 1), toByteOffset: 4 * i, as: Float.self) }
    case .f16:
        for i in 0..<n { b.p.storeBytes(of: Float16(rng.float(-1, 1)).bitPattern, toByteOffset: 2 * i, as: UInt16.self) }
    case .bf16:
        for i in 0..<n {
            b.p.storeBytes(of: UInt16(truncatingIfNeeded: rng.float(-1, 1).bitPattern >> 16), toByteOffset: 2 * i,
                           as: UInt16.self)
        }
    case .q8_K:
        for i in 0..<bytes { b.p.storeBytes(of: rng.byte(), toByteOffset: i, as: UInt8.self) }
        for blk in 0..<(n / 256) { b.p.storeBytes(of: rng.float(0.001, 0.02), toByteOffset: blk * 292, as: Float.self) }
    default:
        for i in 0..<bytes { b.p.storeBytes(of: rng.byte(), toByteOffset: i, as: UInt8.self) }
        for blk in 0..<(n / t.blockSize) {
            for off in halfFields(t) {
                let v = Float16(rng.float(0.0005, 0.05) * (rng.next() & 1 == 0 ? 1 : -1))
                b.p.storeBytes(of: v.bitPattern, toByteOffset: blk * t.typeSize + off, as: UInt16.self)
            }
        }
    }
    return b
}

func randomFloats(_ n: Int, _ rng: inout TestRNG, misalign: Int, scale: Float = 1) -> Buf {
    let b = Buf(bytes: 4 * n, misalign: misalign)
    for i in 0..<n {
        // A few outliers, as real activations have.
        let big = rng.next() % 64 == 0
        b.floats[i] = rng.float(-scale, scale) * (big ? 20 : 1)
    }
    return b
}

final class QuantAVX2Tests: XCTestCase {
    static let formats: [GGMLType] = QuantRegistry.supportedTypes

    func lengths(_ t: GGMLType) -> [Int] {
        t.blockSize == 256 ? [256, 512, 1280, 4096] : (t.blockSize == 32 ? [32, 64, 160, 1024, 4128] : [1, 7, 16, 33, 1000, 4096])
    }

    /// Σ|w_i·x_i| with w the scalar-dequantized weights and x the (dequantized) activation.
    func absDot(_ w: [Float], _ x: UnsafePointer<Float>) -> Float {
        var s: Float = 0
        for i in w.indices { s += abs(w[i] * x[i]) }
        return s
    }

    func testFeatureDetection() {
        let f = csimd_cpu_features()
        print("csimd_cpu_features = 0x\(String(f, radix: 16))")
        // The F16C/FMA bits imply AVX; AVX-512 sub-features imply AVX-512F.
        if f & UInt32(CSIMD_AVX512BW) != 0 { XCTAssertNotEqual(f & UInt32(CSIMD_AVX512F), 0) }
        if f & UInt32(CSIMD_AVX2) != 0 { XCTAssertNotEqual(f & UInt32(CSIMD_AVX), 0) }
        #if os(Linux) && arch(x86_64)
        // Same answer as the kernel's view of the CPU.
        if let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
           let line = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) {
            let flags = Set(line.split(separator: " ").map(String.init))
            let pairs: [(Int, String)] = [(CSIMD_AVX2, "avx2"), (CSIMD_FMA, "fma"), (CSIMD_F16C, "f16c"),
                                          (CSIMD_AVX512F, "avx512f"), (CSIMD_AVX512BW, "avx512bw"),
                                          (CSIMD_AVX512VL, "avx512vl"), (CSIMD_AVX512VNNI, "avx512_vnni"),
                                          (CSIMD_AVXVNNI, "avx_vnni"), (CSIMD_BMI2, "bmi2"), (CSIMD_AVX, "avx")]
            for (bit, name) in pairs {
                XCTAssertEqual(f & UInt32(bit) != 0, flags.contains(name), "feature \(name)")
            }
        }
        #endif
    }

    func testEveryFormatHasAVX2Kernels() throws {
        try XCTSkipUnless(hasAVX2, "CPU lacks AVX2/FMA/F16C")
        for t in Self.formats {
            let k = try XCTUnwrap(QuantAVX2.kernels(for: t), "no AVX2 kernels for \(t)")
            let s = QuantRegistry.kernels(for: t)!
            XCTAssertEqual(k.type, t)
            XCTAssertEqual(k.vecDotType, s.vecDotType, "\(t)")
            XCTAssertEqual(k.quantize == nil, s.quantize == nil, "\(t)")
        }
        for t in [GGMLType.q8_0, .q5_0, .q4_K, .q6_K] {
            XCTAssertNotNil(QuantAVX2.kernels(for: t)?.vecDotMulti, "\(t) needs a multi-row kernel")
        }
    }

    func testAgainstScalar() throws {
        try XCTSkipUnless(hasAVX2, "CPU lacks AVX2/FMA/F16C")
        var rng = TestRNG(0x5EED)
        for t in Self.formats {
            guard let fast = QuantAVX2.kernels(for: t) else { XCTFail("no AVX2 kernels for \(t)"); continue }
            let ref = QuantRegistry.kernels(for: t)!
            var worstVec: Float = 0, worstF32: Float = 0
            for (li, n) in lengths(t).enumerated() {
                for trial in 0..<3 {
                    let mis = (li + trial) % 4 + (trial == 2 ? 1 : 0)
                    let w = randomWeights(t, n, &rng, misalign: mis)
                    let x = randomFloats(n, &rng, misalign: (mis + 1) % 4 * 4 + trial)

                    // dequantize: bit-exact.
                    let d0 = Buf(bytes: 4 * n, misalign: 4 * trial), d1 = Buf(bytes: 4 * n, misalign: 4 * ((trial + 1) % 3))
                    ref.dequantize(w.p, d0.floats, n)
                    fast.dequantize(w.p, d1.floats, n)
                    for i in 0..<n where d0.floats[i].bitPattern != d1.floats[i].bitPattern {
                        XCTFail("\(t) n=\(n) dequantize[\(i)]: \(d1.floats[i]) vs scalar \(d0.floats[i])")
                        break
                    }
                    let wf = Array(UnsafeBufferPointer(start: d0.floats, count: n))

                    // dotF32: within 1e-5·Σ|w·x|.
                    let r = ref.dotF32(w.p, x.floats, n), a = fast.dotF32(w.p, x.floats, n)
                    let mag = absDot(wf, x.floats)
                    XCTAssertLessThanOrEqual(abs(a - r), 1e-5 * mag, "\(t) n=\(n) dotF32 \(a) vs \(r)")
                    worstF32 = max(worstF32, abs(a - r) / max(mag, .leastNormalMagnitude))

                    // vecDot: against the scalar vecDot on the same quantized activation.
                    let vt = ref.vecDotType
                    let xqBytes = vt.byteCount(elements: n)!
                    let nx = 4
                    let stride = xqBytes + 3   // odd stride: every activation row misaligned differently
                    let xq = Buf(bytes: stride * nx, misalign: trial)
                    var xs: [Buf] = [x]
                    for j in 1..<nx { xs.append(randomFloats(n, &rng, misalign: j)) }
                    for j in 0..<nx {
                        let qz = QuantRegistry.kernels(for: vt)!.quantize!
                        qz(xs[j].floats, xq.p + j * stride, n)
                    }
                    var refs = [Float](), xdq = Buf(bytes: 4 * n, misalign: 0)
                    for j in 0..<nx {
                        let rv = ref.vecDot(w.p, xq.p + j * stride, n), av = fast.vecDot(w.p, xq.p + j * stride, n)
                        refs.append(av)
                        QuantRegistry.kernels(for: vt)!.dequantize(xq.p + j * stride, xdq.floats, n)
                        let m = absDot(wf, xdq.floats)
                        // Same integer sums; only the f32 combination order differs.
                        XCTAssertLessThanOrEqual(abs(av - rv), 1e-5 * max(abs(rv), 1e-2 * m),
                                                 "\(t) n=\(n) vecDot \(av) vs \(rv)")
                        worstVec = max(worstVec, abs(av - rv) / max(abs(rv), 1e-2 * m, .leastNormalMagnitude))
                    }
                    _ = xdq
                    xdq = Buf(bytes: 4, misalign: 0)

                    // vecDotMulti: identical to vecDot.
                    if let multi = fast.vecDotMulti {
                        for k in 1...nx {
                            var out = [Float](repeating: .nan, count: 5)
                            multi(w.p, xq.p, stride, k, &out, n)
                            for j in 0..<k {
                                XCTAssertEqual(out[j].bitPattern, refs[j].bitPattern, "\(t) n=\(n) multi nx=\(k) row \(j): \(out[j]) vs \(refs[j])")
                            }
                            XCTAssertTrue(out[k].isNaN, "\(t) multi wrote past nx")
                        }
                    }
                }
            }
            print(String(format: "%@: worst vecDot rel err %.2e, worst dotF32 err/Σ|w·x| %.2e", t.description, worstVec, worstF32))
        }
    }

    /// The activation quantizers (and every quantize the AVX2 table carries) give the scalar bytes.
    func testQuantizeBytes() throws {
        try XCTSkipUnless(hasAVX2, "CPU lacks AVX2/FMA/F16C")
        var rng = TestRNG(42)
        for t in Self.formats {
            guard let fq = QuantAVX2.kernels(for: t)?.quantize, let rq = QuantRegistry.kernels(for: t)?.quantize else { continue }
            for n in lengths(t) {
                for mis in 0..<3 {
                    for scale: Float in [1, 1e-3, 300] {
                        let x = randomFloats(n, &rng, misalign: 4 * mis + (mis == 2 ? 0 : 0), scale: scale)
                        // Some exact zeros, ties and an all-zero block.
                        if n >= 64 { for i in 0..<min(n, t.blockSize) { x.floats[i] = 0 } }
                        if n > 40 { x.floats[33] = 0.5; x.floats[34] = -2.5 }
                        let bytes = t.byteCount(elements: n)!
                        let a = Buf(bytes: bytes, misalign: mis), b = Buf(bytes: bytes, misalign: (mis + 1) % 3)
                        rq(x.floats, a.p, n)
                        fq(x.floats, b.p, n)
                        for i in 0..<bytes where a.p.load(fromByteOffset: i, as: UInt8.self) != b.p.load(fromByteOffset: i, as: UInt8.self) {
                            XCTFail("\(t) n=\(n) quantize byte \(i) differs")
                            break
                        }
                    }
                }
            }
        }
    }

    /// Round-half-away ties in Q8_0: exact halves must round away from zero, as the scalar code does.
    func testQ8_0Ties() throws {
        try XCTSkipUnless(hasAVX2, "CPU lacks AVX2/FMA/F16C")
        let fq = QuantAVX2.kernels(for: .q8_0)!.quantize!, rq = Q8_0.quantize
        var x = [Float](repeating: 0, count: 32)
        x[0] = 127
        for i in 1..<32 { x[i] = Float(i) - 16.5 }
        var a = [UInt8](repeating: 0, count: 34), b = a
        rq(x, &a, 32)
        fq(x, &b, 32)
        XCTAssertEqual(a, b)
    }
    /// Special values through the f16/bf16 encoders and the activation quantizers.
    func testQuantizeSpecialValues() throws {
        try XCTSkipUnless(hasAVX2, "CPU lacks AVX2/FMA/F16C")
        let specials: [Float] = [0, -0.0, 1e-7, -6e-8, 3e-5, 65504, 65519.99, 65520, -1e5, .infinity, -.infinity,
                                 1, -1, 0.5, 1.0009765625, 1.00048828125, 3.14159, -2.5e-3, 1e-38, 3.4e38]
        var x = [Float](repeating: 0, count: 256)
        for i in x.indices { x[i] = specials[i % specials.count] * (i % 3 == 0 ? 1 : -1) }
        for t in [GGMLType.f16, .bf16] {
            let fq = QuantAVX2.kernels(for: t)!.quantize!, rq = QuantRegistry.kernels(for: t)!.quantize!
            for n in [256, 255, 7] {
                var a = [UInt8](repeating: 0, count: 2 * n), b = a
                rq(x, &a, n)
                fq(x, &b, n)
                XCTAssertEqual(a, b, "\(t) n=\(n)")
            }
        }
        // NaN: f16 and bf16 keep a NaN.
        var nanX = [Float](repeating: .nan, count: 16)
        nanX[3] = -.nan
        for t in [GGMLType.f16, .bf16] {
            let fq = QuantAVX2.kernels(for: t)!.quantize!, deq = QuantRegistry.kernels(for: t)!.dequantize
            var b = [UInt8](repeating: 0, count: 32)
            fq(nanX, &b, 16)
            var back = [Float](repeating: 0, count: 16)
            deq(b, &back, 16)
            XCTAssertTrue(back.allSatisfy { $0.isNaN }, "\(t) NaN")
        }
        // Activation quantizers on finite extremes (tiny, huge, single spikes, ties of magnitude).
        var y = [Float](repeating: 0, count: 512)
        for i in y.indices { y[i] = Float(i % 17) * 1e-30 }
        y[5] = 3e38; y[300] = -3e38; y[301] = 3e38   // both signs at the maximum magnitude: the first wins
        y[290] = .leastNonzeroMagnitude
        for t in [GGMLType.q8_0, .q8_K] {
            let fq = QuantAVX2.kernels(for: t)!.quantize!, rq = QuantRegistry.kernels(for: t)!.quantize!
            let nb = t.byteCount(elements: 512)!
            var a = [UInt8](repeating: 0, count: nb), b = [UInt8](repeating: 1, count: nb)
            rq(y, &a, 512)
            fq(y, &b, 512)
            XCTAssertEqual(a, b, "\(t)")
        }
    }

    /// KernelDispatch picks AVX2 exactly when the CPU has it (and KTRANSFORMERS_SIMD is not "scalar"), and every
    /// type it answers has a multi-row kernel.
    func testDispatch() {
        let forcedScalar = ProcessInfo.processInfo.environment["KTRANSFORMERS_SIMD"]?.lowercased() == "scalar"
        // "avx512" where the CPU (and the build) has the AVX-512 VNNI kernels: see QuantAVX512Tests.
        let expected = hasAVX2 && !forcedScalar ? (KernelDispatch.cpuLevel == .avx512 && KernelDispatch.isa == "avx512"
                                                   ? "avx512" : "avx2") : "scalar"
        XCTAssertEqual(KernelDispatch.isa, expected)
        for t in QuantRegistry.supportedTypes {
            guard let k = KernelDispatch.kernels(for: t) else { XCTFail("no kernels for \(t)"); continue }
            XCTAssertEqual(k.type, t)
            XCTAssertNotNil(k.vecDotMulti, "\(t)")
            XCTAssertNotNil(k.dotF32Multi, "\(t)")
        }
        XCTAssertNil(KernelDispatch.kernels(for: .iq2_xxs))
        print("KernelDispatch.isa = \(KernelDispatch.isa), features 0x\(String(KernelDispatch.cpuFeatures, radix: 16))")
    }
}
