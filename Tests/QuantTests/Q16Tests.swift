import Foundation
import XCTest
@testable import Quant

/// The Q16_K activation format and the scalar row · Q16_K kernels of Q4_K / Q5_K / Q6_K.
final class Q16Tests: XCTestCase {
    static let cases = readCases.filter { [.q4_K, .q5_K, .q6_K].contains($0.type) }

    func quantize16(_ x: [Float]) -> [UInt8] {
        var out = [UInt8](repeating: 0xAA, count: Q16_K.byteCount(elements: x.count))
        x.withUnsafeBufferPointer { src in out.withUnsafeMutableBytes { Q16_K.quantize(src.baseAddress!, $0.baseAddress!, x.count) } }
        return out
    }

    func dequantize16(_ b: [UInt8], count: Int) -> [Float] {
        var out = [Float](repeating: .nan, count: count)
        b.withUnsafeBytes { src in out.withUnsafeMutableBufferPointer { Q16_K.dequantize(src.baseAddress!, $0.baseAddress!, count) } }
        return out
    }

    /// Each element is within half a step (d/2) of x, the planes hold v = 256·hi + lo with |v| ≤ 32639, the sums
    /// are the sums of v, the largest element maps to ±32639, and an all-zero block is all zeros.
    func testQuantizeRoundTrip() {
        var rng = TestRNG(seed: 16)
        var x = rng.gaussians(1024).map { $0 * 3 }
        for i in 512..<768 { x[i] = 0 }           // one all-zero block
        x[7] = 40; x[300] = -55                    // outliers set the scale
        let q = quantize16(x)
        let back = dequantize16(q, count: x.count)
        q.withUnsafeBytes { raw in
            for b in 0..<4 {
                let p = raw.baseAddress! + b * Q16_K.typeSize
                let d = p.loadUnaligned(as: Float.self)
                var vmax: Int32 = 0
                for g in 0..<16 {
                    var s: Int32 = 0
                    for i in 16 * g..<16 * g + 16 {
                        let v = 256 * Int32(p.load(fromByteOffset: 4 + i, as: Int8.self)) + Int32(p.load(fromByteOffset: 260 + i, as: Int8.self))
                        XCTAssertLessThanOrEqual(abs(v), 32639)
                        vmax = max(vmax, abs(v))
                        s += v
                        XCTAssertLessThanOrEqual(abs(back[256 * b + i] - x[256 * b + i]), d * 0.5001 + 1e-30)
                    }
                    XCTAssertEqual(p.loadUnaligned(fromByteOffset: 516 + 4 * g, as: Int32.self), s)
                }
                XCTAssertEqual(vmax, b == 2 ? 0 : 32639, "block \(b)")
                if b == 2 { XCTAssertEqual(d, 0) }
            }
        }
    }

    /// Row · Q16_K equals the f64 dot of the decoded row and the decoded activation within 1e-6 of Σ|w·x|
    /// (the integer arithmetic), and the f64 dot with the f32 activation within 2e-5 (the format's error:
    /// ~100x below Q8_K's 2e-3 bound in QuantTests).
    func testDotMatchesF64() throws {
        var rng = TestRNG(seed: 17)
        for c in Self.cases {
            let k = kernels(c.type)
            let q16 = try XCTUnwrap(k.q16DotMulti, "\(c.name) has no Q16 kernel")
            let row = try Fixtures.bytes("\(c.name).blocks.bin")
            let w = try Fixtures.floats("\(c.name).deq.f32")
            var worst = 0.0, worstQ8 = 0.0
            for _ in 0..<4 {
                let x = rng.gaussians(w.count)
                let xq = quantize16(x)
                let xd = dequantize16(xq, count: x.count)
                var refQ = 0.0, refX = 0.0, mag = 0.0
                for i in w.indices {
                    refQ += Double(w[i]) * Double(xd[i])
                    refX += Double(w[i]) * Double(x[i])
                    mag += abs(Double(w[i]) * Double(x[i]))
                }
                var got: Float = .nan
                row.withUnsafeBytes { r in xq.withUnsafeBytes { q16(r.baseAddress!, $0.baseAddress!, 0, 1, &got, x.count) } }
                XCTAssertLessThanOrEqual(abs(Double(got) - refQ), 1e-6 * mag, "\(c.name): \(got) vs \(refQ)")
                worst = max(worst, abs(Double(got) - refX) / mag)
                worstQ8 = max(worstQ8, abs(Double(vecDot(k, row, quantize(.q8_K, x), count: x.count)) - refX) / mag)
            }
            print(String(format: "%@ vs the f32 activation, worst |Δ| / Σ|w·x|: Q16_K %.2e, Q8_K %.2e", c.name, worst, worstQ8))
            XCTAssertLessThanOrEqual(worst, 2e-5, "\(c.name) row · Q16_K vs the f32 activation")
        }
    }
}
