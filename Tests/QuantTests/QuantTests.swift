import XCTest
@testable import Quant

final class QuantTests: XCTestCase {
    // MARK: 1. Layout

    /// Elements and bytes per block of every type, as ggml-common.h declares them (static_asserts there).
    func testBlockAndTypeSizesMatchGGML() {
        let ggml: [(GGMLType, Int, Int)] = [
            (.f32, 1, 4), (.f16, 1, 2), (.bf16, 1, 2),
            (.q4_0, 32, 18), (.q4_1, 32, 20), (.q5_0, 32, 22), (.q5_1, 32, 24), (.q8_0, 32, 34), (.q8_1, 32, 36),
            (.q2_K, 256, 84), (.q3_K, 256, 110), (.q4_K, 256, 144), (.q5_K, 256, 176), (.q6_K, 256, 210),
            (.q8_K, 256, 292), (.iq4_nl, 32, 18), (.iq4_xs, 256, 136),
            (.iq2_xxs, 256, 66), (.iq2_xs, 256, 74), (.iq2_s, 256, 82), (.iq3_xxs, 256, 98), (.iq3_s, 256, 110),
            (.iq1_s, 256, 50), (.iq1_m, 256, 56), (.tq1_0, 256, 54), (.tq2_0, 256, 66), (.mxfp4, 32, 17),
        ]
        for (t, bs, ts) in ggml {
            XCTAssertEqual(t.blockSize, bs, "\(t) block size")
            XCTAssertEqual(t.typeSize, ts, "\(t) type size")
        }
        let enums: [(GGMLType, Int, Int)] = [
            (.q4_0, Q4_0.blockSize, Q4_0.typeSize), (.q4_1, Q4_1.blockSize, Q4_1.typeSize),
            (.q5_0, Q5_0.blockSize, Q5_0.typeSize), (.q5_1, Q5_1.blockSize, Q5_1.typeSize),
            (.q8_0, Q8_0.blockSize, Q8_0.typeSize), (.q8_K, Q8_K.blockSize, Q8_K.typeSize),
            (.q2_K, Q2_K.blockSize, Q2_K.typeSize), (.q3_K, Q3_K.blockSize, Q3_K.typeSize),
            (.q4_K, Q4_K.blockSize, Q4_K.typeSize), (.q5_K, Q5_K.blockSize, Q5_K.typeSize),
            (.q6_K, Q6_K.blockSize, Q6_K.typeSize), (.iq4_nl, IQ4_NL.blockSize, IQ4_NL.typeSize),
            (.iq4_xs, IQ4_XS.blockSize, IQ4_XS.typeSize),
        ]
        for (t, bs, ts) in enums {
            XCTAssertEqual(t.blockSize, bs, "\(t): enum and GGMLType disagree on block size")
            XCTAssertEqual(t.typeSize, ts, "\(t): enum and GGMLType disagree on type size")
        }
    }

    /// The registry answers exactly the 16 formats, each with its own type, the right activation format, and a
    /// quantizer where one is promised.
    func testRegistry() {
        XCTAssertEqual(Set(QuantRegistry.supportedTypes), Set(readCases.map(\.type)))
        XCTAssertEqual(QuantRegistry.supportedTypes.count, 16)
        for t in GGMLType.allCases where !readCases.map(\.type).contains(t) {
            XCTAssertNil(QuantRegistry.kernels(for: t), "\(t)")
        }
        for c in readCases {
            let k = kernels(c.type)
            XCTAssertEqual(k.type, c.type)
            let expectedVecDot: GGMLType
            switch c.type {
            case .f32, .f16, .bf16: expectedVecDot = .f32
            case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .iq4_nl: expectedVecDot = .q8_0
            default: expectedVecDot = .q8_K
            }
            XCTAssertEqual(k.vecDotType, expectedVecDot, "\(c.name)")
            XCTAssertEqual(k.quantize != nil, writeCases.contains { $0.type == c.type }, "\(c.name) quantize")
        }
    }

    // MARK: 2. Dequantize

    /// Decoding random blocks equals gguf-py's NumPy decoding (bit-exact expected; allowed 1e-6 relative), also
    /// from a source pointer that is not aligned.
    func testDequantizeMatchesGGUFPy() throws {
        for c in readCases {
            let blocks = try Fixtures.bytes("\(c.name).blocks.bin")
            let expected = try Fixtures.floats("\(c.name).deq.f32")
            XCTAssertEqual(blocks.count, c.type.byteCount(elements: expected.count), c.name)
            let k = kernels(c.type)
            let got = dequantize(k, blocks, count: expected.count)
            var worst: Float = 0
            for i in expected.indices {
                let err = abs(got[i] - expected[i])
                worst = max(worst, err / max(abs(expected[i]), 1e-30))
                if err > 1e-6 * abs(expected[i]) {
                    XCTFail("\(c.name)[\(i)]: \(got[i]) != \(expected[i])")
                    break
                }
            }
            // Unaligned source: the same bytes one byte further on.
            let shifted = [0] + blocks
            var out = [Float](repeating: .nan, count: expected.count)
            shifted.withUnsafeBytes { src in
                out.withUnsafeMutableBufferPointer { k.dequantize(src.baseAddress! + 1, $0.baseAddress!, expected.count) }
            }
            XCTAssertEqual(out, got, "\(c.name) unaligned")
            _ = worst
        }
    }

    // MARK: 3. Quantize

    /// Quantizing equals the fixture bytes: gguf-py's quantizers (F32 … Q8_0), the script's f32 port of ggml's
    /// reference quantizers (Q4_K, Q6_K, Q8_K). Bit-exact.
    func testQuantizeMatchesReference() throws {
        for c in writeCases {
            let x = try Fixtures.floats("\(c.name).qin.f32")
            let expected = try Fixtures.bytes("\(c.name).qout.bin")
            let got = quantize(c.type, x)
            XCTAssertEqual(got.count, expected.count, c.name)
            let diff = zip(got, expected).enumerated().filter { $0.element.0 != $0.element.1 }.map(\.offset)
            XCTAssertTrue(diff.isEmpty, "\(c.name): \(diff.count) bytes differ, first at \(diff.prefix(8))")
        }
    }

    /// Quantize → dequantize of Gaussian data (4096 values, a random magnitude per 256) stays within a per-type
    /// bound on RMS(error)/RMS(input), the worst 256-element stretch counted. Measured values are in the comments
    /// (seed 1); the bounds are about 1.3x those.
    func testRoundTripError() {
        let bounds: [GGMLType: Double] = [
            .f32: 0,          // exact
            .f16: 3e-4,       // measured 2.3e-4
            .bf16: 2.5e-3,    // measured 1.7e-3
            .q8_0: 0.008,     // measured 0.0057
            .q8_K: 0.01,      // measured 0.0078
            .q6_K: 0.025,     // measured 0.0187
            .q5_0: 0.06,      // measured 0.045
            .q5_1: 0.055,     // measured 0.040
            .q4_0: 0.12,      // measured 0.095
            .q4_1: 0.11,      // measured 0.083
            .q4_K: 0.10,      // measured 0.076
        ]
        var rng = TestRNG(seed: 1)
        var x = rng.gaussians(4096)
        for b in 0..<16 {
            let s = Float(Foundation.pow(10.0, rng.uniform() * 4 - 2))
            for i in (256 * b)..<(256 * b + 256) { x[i] *= s }
        }
        var report: [String] = []
        for c in writeCases {
            let back = dequantize(kernels(c.type), quantize(c.type, x), count: x.count)
            // Per-256 relative error, so large-magnitude blocks don't hide the small ones.
            var worst = 0.0
            for b in 0..<16 {
                let r = (256 * b)..<(256 * b + 256)
                worst = max(worst, relativeRMSError(Array(back[r]), Array(x[r])))
            }
            report.append("\(c.name)=\(String(format: "%.5f", worst))")
            XCTAssertLessThanOrEqual(worst, bounds[c.type]!, "\(c.name) round-trip RMS error")
        }
        print("round-trip worst per-256 RMS error / RMS:", report.joined(separator: " "))
    }

    // MARK: 4. dotF32

    /// dotF32 of the fixture row with Gaussian x equals the f64 dot of gguf-py's decoded values and x, within
    /// 1e-4 of Σ|w·x| (relative to the sum of magnitudes, which stays meaningful when the dot cancels).
    func testDotF32MatchesF64Dot() throws {
        var rng = TestRNG(seed: 2)
        for c in readCases {
            let row = try Fixtures.bytes("\(c.name).blocks.bin")
            let w = try Fixtures.floats("\(c.name).deq.f32")
            let x = rng.gaussians(w.count)
            var ref = 0.0, mag = 0.0
            for i in w.indices {
                ref += Double(w[i]) * Double(x[i])
                mag += abs(Double(w[i]) * Double(x[i]))
            }
            let got = Double(dotF32(kernels(c.type), row, x))
            XCTAssertLessThanOrEqual(abs(got - ref), 1e-4 * mag, "\(c.name): \(got) vs \(ref)")
        }
    }

    // MARK: 5. vecDot

    /// vecDot(row, quantize(x, vecDotType)) equals dotF32(row, x) within a bound relative to |row|·|x|: exactly
    /// for the float formats (f32 activation), within 2e-3 for Q8_0 / Q8_K activations (measured worst 5.7e-4, Q5_0).
    func testVecDotMatchesDotF32() throws {
        var rng = TestRNG(seed: 3)
        var report: [String] = []
        for c in readCases {
            let k = kernels(c.type)
            let row = try Fixtures.bytes("\(c.name).blocks.bin")
            let w = try Fixtures.floats("\(c.name).deq.f32")
            var worst = 0.0
            for _ in 0..<4 {
                let x = rng.gaussians(w.count)
                let exact = Double(dotF32(k, row, x))
                let xq: [UInt8]
                if k.vecDotType == .f32 {
                    xq = x.withUnsafeBytes { [UInt8]($0) }
                } else {
                    xq = quantize(k.vecDotType, x)
                }
                let got = Double(vecDot(k, row, xq, count: x.count))
                let rel = abs(got - exact) / (norm(w) * norm(x))
                worst = max(worst, rel)
                if k.vecDotType == .f32 {
                    XCTAssertEqual(got, exact, "\(c.name): vecDot with f32 activation must equal dotF32")
                }
            }
            report.append("\(c.name)=\(String(format: "%.2e", worst))")
            XCTAssertLessThanOrEqual(worst, 2e-3, "\(c.name) vecDot vs dotF32")
        }
        print("vecDot vs dotF32, worst |Δ|/(|row|·|x|):", report.joined(separator: " "))
    }

    /// The integer vecDot kernels agree with a plain f64 dot of the decoded row and the decoded activation
    /// (tests the integer arithmetic itself, not the activation's quantization error): within 1e-5 of
    /// Σ|w·x_q|.
    func testVecDotMatchesDecodedActivation() throws {
        var rng = TestRNG(seed: 4)
        for c in readCases {
            let k = kernels(c.type)
            guard k.vecDotType != .f32 else { continue }
            let row = try Fixtures.bytes("\(c.name).blocks.bin")
            let w = try Fixtures.floats("\(c.name).deq.f32")
            let x = rng.gaussians(w.count)
            let xq = quantize(k.vecDotType, x)
            let xd = dequantize(kernels(k.vecDotType), xq, count: x.count)
            var ref = 0.0, mag = 0.0
            for i in w.indices {
                ref += Double(w[i]) * Double(xd[i])
                mag += abs(Double(w[i]) * Double(xd[i]))
            }
            let got = Double(vecDot(k, row, xq, count: x.count))
            XCTAssertLessThanOrEqual(abs(got - ref), 1e-5 * mag, "\(c.name): \(got) vs \(ref)")
        }
    }
}

final class GGMLTypeNameTests: XCTestCase {
    /// Names print as llama.cpp spells them and parse back case-insensitively.
    func testNames() {
        XCTAssertEqual(GGMLType.q4_K.description, "Q4_K")
        XCTAssertEqual(GGMLType.iq4_xs.description, "IQ4_XS")
        XCTAssertEqual("\(GGMLType.bf16)", "BF16")
        for t in GGMLType.allCases {
            XCTAssertEqual(GGMLType(name: t.description), t)
            XCTAssertEqual(GGMLType(name: t.description.lowercased()), t)
        }
        XCTAssertEqual(GGMLType(name: "q4_k"), .q4_K)
        XCTAssertNil(GGMLType(name: "q7_0"))
    }
}
