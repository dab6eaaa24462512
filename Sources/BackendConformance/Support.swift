import Backend
import Foundation
import Quant


// Shared pieces of the backend conformance suite (BackendConformance.swift): seeded random data, the error
// measure, host-built weights, and tensor transfer through the `ComputeBackend` API only (never `hostFloats` /
// `hostInt32` on a backend's tensor: a device backend's tensors are not host memory).

// MARK: - Random data

/// SplitMix64: a tiny seeded generator, so every failure reproduces.
struct SplitMix64 {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    mutating func uniform(_ lo: Float = -1, _ hi: Float = 1) -> Float {
        lo + (hi - lo) * Float(next() >> 40) / Float(1 << 24)
    }

    /// Standard normal (Box–Muller).
    mutating func normal() -> Float {
        let u1 = (Double(next() >> 11) + 1) / 9_007_199_254_740_992.0   // (0, 1]
        let u2 = Double(next() >> 11) / 9_007_199_254_740_992.0         // [0, 1)
        return Float((-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2))
    }

    /// Uniform in 0..<n.
    mutating func int(_ n: Int) -> Int { Int(next() % UInt64(n)) }

    mutating func normals(_ n: Int, scale: Float = 1) -> [Float] { (0..<n).map { _ in normal() * scale } }

    mutating func uniforms(_ n: Int, _ lo: Float = -1, _ hi: Float = 1) -> [Float] { (0..<n).map { _ in uniform(lo, hi) } }

    /// `k` distinct values of 0..<n, in random order.
    mutating func distinct(_ k: Int, below n: Int) -> [Int] {
        var chosen: [Int] = []
        while chosen.count < k {
            let v = int(n)
            if !chosen.contains(v) { chosen.append(v) }
        }
        return chosen
    }
}

// MARK: - Error measures

/// Normalized mean squared error `Σ(got − want)² / Σ want²`; infinite when `got` holds a NaN or an infinity.
func nmse(_ got: [Float], _ want: [Double]) -> Double {
    precondition(got.count == want.count, "nmse of \(got.count) values against \(want.count)")
    var num = 0.0, den = 0.0
    for i in got.indices {
        let d = Double(got[i]) - want[i]
        num += d * d
        den += want[i] * want[i]
    }
    guard num.isFinite else { return .infinity }
    if den == 0 { return num == 0 ? 0 : .infinity }
    return num / den
}

func nmse(_ got: [Float], _ want: [Float]) -> Double { nmse(got, want.map(Double.init)) }

/// The first index where `a` and `b` differ in their bits (nil when identical).
func firstBitDifference(_ a: [Float], _ b: [Float]) -> Int? {
    precondition(a.count == b.count)
    return a.indices.first { a[$0].bitPattern != b[$0].bitPattern }
}

/// `%.2e`.
func sci(_ v: Double) -> String { String(format: "%.2e", v) }

// MARK: - Host weights

/// Zeroed, 64-byte aligned host bytes: the storage of a test weight, kept alive as its `WeightRef.owner`.
final class HostBytes: @unchecked Sendable {
    let pointer: UnsafeMutableRawPointer
    let count: Int

    init(_ count: Int) {
        self.count = count
        pointer = .allocate(byteCount: max(1, count), alignment: 64)
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: max(1, count))
    }

    deinit { pointer.deallocate() }
}

/// A weight built on the host: its bytes in `type` (as a loader would hand them over) and the same values decoded
/// by the scalar reference kernel, which is what the reference computations use. Row-major
/// `// [count][rows, cols]`; ggml shape `[cols, rows]` or `[cols, rows, count]`.
struct HostWeight {
    let ref: WeightRef
    let rows: Int
    let cols: Int
    let count: Int
    /// `// [count][rows, cols]` dequantized.
    let values: [Float]

    var type: GGMLType { ref.type }

    /// Matrix `e` (`// [rows, cols]`), dequantized.
    func matrix(_ e: Int) -> ArraySlice<Float> { values[(e * rows * cols)..<((e + 1) * rows * cols)] }
}

enum Host {
    /// Offsets of the f16 scale fields in one block, for the formats that have no quantizer (read-only here):
    /// their weights are random bytes with these fields set to sane scales (see each format's file in Quant).
    static let scaleFields: [GGMLType: [Int]] = [
        .q2_K: [80, 82],    // { scales[16]; qs[64]; half d; half dmin }
        .q3_K: [108],       // { hmask[32]; qs[64]; scales[12]; half d }
        .q5_K: [0, 2],      // { half d; half dmin; scales[12]; qh[32]; qs[128] }
        .iq4_nl: [0],       // { half d; qs[16] }
        .iq4_xs: [0],       // { half d; uint16 scales_h; scales_l[4]; qs[128] }
    ]

    /// Weight formats a test can build: every format with kernels that has a quantizer or a known block layout
    /// (Q8_K is only an activation format).
    static var weightTypes: [GGMLType] {
        QuantRegistry.supportedTypes.filter { canMake($0) }
    }

    static func canMake(_ type: GGMLType) -> Bool {
        guard type != .q8_K, let k = QuantRegistry.kernels(for: type) else { return false }
        return k.quantize != nil || scaleFields[type] != nil
    }

    /// `count` random `[rows, cols]` matrices in `type`. Quantizable formats: normal values with a different
    /// scale per row (as real weights), quantized row by row by the reference quantizer. Others: random blocks
    /// with f16 scales in a sane range.
    static func weight(_ type: GGMLType, name: String, rows: Int, cols: Int, count: Int = 1,
                       rng: inout SplitMix64) throws -> HostWeight {
        let kernels = try Expect.unwrap(QuantRegistry.kernels(for: type), "\(type) has no kernels")
        let rowBytes = try Expect.unwrap(type.byteCount(elements: cols), "\(cols) is not a whole number of \(type) blocks")
        let nRows = rows * count
        let bytes = HostBytes(nRows * rowBytes)
        if let quantize = kernels.quantize {
            var row = [Float](repeating: 0, count: cols)
            for r in 0..<nRows {
                let s: Float = 0.5 + Float(r % 7) * 0.25
                for c in 0..<cols { row[c] = rng.normal() * s }
                row.withUnsafeBufferPointer { quantize($0.baseAddress!, bytes.pointer + r * rowBytes, cols) }
            }
        } else {
            let fields = try Expect.unwrap(scaleFields[type], "\(type): no quantizer and no known block layout")
            let p = bytes.pointer.assumingMemoryBound(to: UInt8.self)
            for i in 0..<bytes.count { p[i] = UInt8(truncatingIfNeeded: rng.next()) }
            for b in 0..<(bytes.count / type.typeSize) {
                for (j, offset) in fields.enumerated() {
                    let scale = Float16(rng.uniform(0.5, 1.5) * (j == 0 ? 0.02 : 0.01))
                    (bytes.pointer + b * type.typeSize + offset).storeBytes(of: scale.bitPattern, as: UInt16.self)
                }
            }
        }
        var values = [Float](repeating: 0, count: nRows * cols)
        values.withUnsafeMutableBufferPointer { v in
            for r in 0..<nRows { kernels.dequantize(bytes.pointer + r * rowBytes, v.baseAddress! + r * cols, cols) }
        }
        Expect.that(values.allSatisfy(\.isFinite), "\(type): test weight decodes to non-finite values")
        let shape = count == 1 ? [cols, rows] : [cols, rows, count]
        let ref = WeightRef(name: name, type: type, shape: shape, data: UnsafeRawPointer(bytes.pointer), owner: bytes)
        return HostWeight(ref: ref, rows: rows, cols: cols, count: count, values: values)
    }
}

// MARK: - Tensors through the backend API

extension ComputeBackend {
    /// The first `count` floats of `t`, copied to the host.
    func floats(_ t: Tensor, _ count: Int) -> [Float] {
        let p = read(t, count: count)
        return Array(UnsafeBufferPointer(start: p, count: count))
    }

    /// The first `count` elements of `t` as i32 (the bits `read` returns, reinterpreted).
    func int32s(_ t: Tensor, _ count: Int) -> [Int32] {
        let p = read(t, count: count)
        return Array(UnsafeBufferPointer(start: UnsafeRawPointer(p).assumingMemoryBound(to: Int32.self), count: count))
    }

    func set(_ t: Tensor, _ values: [Float]) {
        values.withUnsafeBufferPointer { write($0, to: t) }
    }

    func set(_ t: Tensor, _ values: [Int32]) {
        values.withUnsafeBufferPointer { write($0, to: t) }
    }

    /// A new i32 tensor of `capacity` elements (at least `values.count`) holding `values`.
    func int32Tensor(_ values: [Int32], capacity: Int = 0) -> Tensor {
        let t = allocate(max(1, capacity, values.count))
        set(t, values)
        return t
    }

    /// A new tensor of `count` elements, all `value` (written from the host: the sentinel of untouched memory).
    func filled(_ count: Int, _ value: Float) -> Tensor {
        upload([Float](repeating: value, count: count))
    }
}

// MARK: - Reference math (Double)

enum Reference {
    /// `y[t, r] = Σ_c w[r, c] · x[t, c]` for `n` rows.
    static func matmul(_ w: ArraySlice<Float>, rows: Int, cols: Int, _ x: [Float], n: Int) -> [Double] {
        var y = [Double](repeating: 0, count: n * rows)
        let w = Array(w)
        w.withUnsafeBufferPointer { wp in
            x.withUnsafeBufferPointer { xp in
                for t in 0..<n {
                    for r in 0..<rows {
                        var s = 0.0
                        for c in 0..<cols { s += Double(wp[r * cols + c]) * Double(xp[t * cols + c]) }
                        y[t * rows + r] = s
                    }
                }
            }
        }
        return y
    }

    static func rmsNorm(_ x: ArraySlice<Float>, weight: [Float], eps: Float) -> [Double] {
        let x = Array(x)
        let ms = x.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(x.count)
        let inv = 1 / (ms + Double(eps)).squareRoot()
        return x.indices.map { Double(x[$0]) * inv * Double(weight[$0]) }
    }

    static func silu(_ x: Double) -> Double { x / (1 + exp(-x)) }

    static func gelu(_ x: Double) -> Double { 0.5 * x * (1 + tanh(0.797_884_56 * (x + 0.044715 * x * x * x))) }

    static func sigmoid(_ x: Double) -> Double { 1 / (1 + exp(-x)) }
}
