import Foundation
import XCTest
@testable import Quant

/// What a fixture says about one format: its name in the file names and its type.
struct FormatCase {
    let name: String
    let type: GGMLType
}

/// Every format the Quant module reads (all have `<name>.blocks.bin` and `<name>.deq.f32`).
let readCases: [FormatCase] = [
    .init(name: "F32", type: .f32), .init(name: "F16", type: .f16), .init(name: "BF16", type: .bf16),
    .init(name: "Q4_0", type: .q4_0), .init(name: "Q4_1", type: .q4_1), .init(name: "Q5_0", type: .q5_0),
    .init(name: "Q5_1", type: .q5_1), .init(name: "Q8_0", type: .q8_0), .init(name: "Q8_K", type: .q8_K),
    .init(name: "Q2_K", type: .q2_K), .init(name: "Q3_K", type: .q3_K), .init(name: "Q4_K", type: .q4_K),
    .init(name: "Q5_K", type: .q5_K), .init(name: "Q6_K", type: .q6_K), .init(name: "IQ4_NL", type: .iq4_nl),
    .init(name: "IQ4_XS", type: .iq4_xs),
]

/// The formats the Quant module writes (have `<name>.qin.f32` and `<name>.qout.bin`).
let writeCases: [FormatCase] = readCases.filter {
    [.f32, .f16, .bf16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q8_K, .q4_K, .q6_K].contains($0.type)
}

enum Fixtures {
    static let directory: URL = {
        guard let url = Bundle.module.url(forResource: "Fixtures", withExtension: nil) else {
            fatalError("QuantTests: Fixtures resource folder missing from the test bundle")
        }
        return url
    }()

    static func bytes(_ file: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: directory.appendingPathComponent(file)))
    }

    static func floats(_ file: String) throws -> [Float] {
        let b = try bytes(file)
        precondition(b.count % 4 == 0)
        return b.withUnsafeBytes { raw in
            (0..<(b.count / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) }
        }
    }
}

/// Deterministic Gaussian numbers (SplitMix64 + Box-Muller), so failures reproduce.
struct TestRNG {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func uniform() -> Double { Double(next() >> 11) / Double(1 << 53) }

    mutating func gaussian() -> Float {
        let u1 = max(uniform(), 1e-300), u2 = uniform()
        return Float((-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2))
    }

    mutating func gaussians(_ n: Int) -> [Float] { (0..<n).map { _ in gaussian() } }
}

func kernels(_ type: GGMLType, file: StaticString = #filePath, line: UInt = #line) -> QuantKernels {
    guard let k = QuantRegistry.kernels(for: type) else {
        XCTFail("no kernels for \(type)", file: file, line: line)
        fatalError()
    }
    return k
}

func dequantize(_ k: QuantKernels, _ bytes: [UInt8], count: Int) -> [Float] {
    var out = [Float](repeating: .nan, count: count)
    bytes.withUnsafeBytes { src in
        out.withUnsafeMutableBufferPointer { k.dequantize(src.baseAddress!, $0.baseAddress!, count) }
    }
    return out
}

func quantize(_ type: GGMLType, _ x: [Float]) -> [UInt8] {
    let k = kernels(type)
    var out = [UInt8](repeating: 0xAA, count: type.byteCount(elements: x.count)!)
    x.withUnsafeBufferPointer { src in
        out.withUnsafeMutableBytes { k.quantize!(src.baseAddress!, $0.baseAddress!, x.count) }
    }
    return out
}

func dotF32(_ k: QuantKernels, _ row: [UInt8], _ x: [Float]) -> Float {
    row.withUnsafeBytes { r in x.withUnsafeBufferPointer { k.dotF32(r.baseAddress!, $0.baseAddress!, x.count) } }
}

func vecDot(_ k: QuantKernels, _ row: [UInt8], _ xq: [UInt8], count: Int) -> Float {
    row.withUnsafeBytes { r in xq.withUnsafeBytes { k.vecDot(r.baseAddress!, $0.baseAddress!, count) } }
}

func norm(_ v: [Float]) -> Double { v.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot() }

/// RMS(a − b) / RMS(b).
func relativeRMSError(_ a: [Float], _ b: [Float]) -> Double {
    var num = 0.0, den = 0.0
    for i in b.indices {
        num += (Double(a[i]) - Double(b[i])) * (Double(a[i]) - Double(b[i]))
        den += Double(b[i]) * Double(b[i])
    }
    return den > 0 ? (num / den).squareRoot() : num.squareRoot()
}
