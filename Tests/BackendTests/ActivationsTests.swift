@testable import Backend
import Foundation
import XCTest

final class ActivationsTests: XCTestCase {
    func testVectorExpMatchesLibm() {
        var worst: Float = 0
        var x: Float = -87
        while x < 88 {
            let v = Activations.exp8(SIMD8((0..<8).map { x + Float($0) * 0.0137 }))
            for j in 0..<8 {
                let ref = Float(exp(Double(x + Float(j) * 0.0137)))
                worst = max(worst, abs(v[j] - ref) / ref)
            }
            x += 0.11
        }
        XCTAssertLessThan(worst, 3e-7, "max relative error \(worst)")
    }

    func testGatedActivationsMatchScalarDefinitions() {
        let n = 1003
        let xs = (0..<n).map { Float($0 - 500) * 0.023 }          // -11.5 ... 11.5
        let up = (0..<n).map { Float(($0 * 37) % 11) * 0.3 - 1.5 }
        for gelu in [true, false] {
            var g = xs
            up.withUnsafeBufferPointer { u in
                g.withUnsafeMutableBufferPointer { gp in
                    if gelu { Activations.gatedGELU(gp.baseAddress!, u.baseAddress!, n) } else {
                        Activations.gatedSiLU(gp.baseAddress!, u.baseAddress!, n)
                    }
                }
            }
            for i in 0..<n {
                let x = Double(xs[i])
                let ref = (gelu ? 0.5 * x * (1 + tanh(0.7978845608 * (x + 0.044715 * x * x * x))) : x / (1 + exp(-x))) * Double(up[i])
                XCTAssertEqual(Double(g[i]), ref, accuracy: 2e-6 * max(1, abs(ref)), "\(gelu ? "gelu" : "silu")(\(x))")
            }
        }
    }
}
