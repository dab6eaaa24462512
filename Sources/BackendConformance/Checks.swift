import Backend
import BackendCUDA
import Foundation
import Quant


/// The checks every `ComputeBackend` must pass: each op on random data (seeded) against a plain reference written
/// here in Double loops, with weights decoded by Quant's scalar reference kernels, so a backend differs from the
/// reference only by its float rounding and, on the `.standard` matmul path, by the rounding of its 8-bit
/// activations. The backends it runs on are listed in `BackendConformanceTests.backends`
/// (BackendConformanceTests.swift); a new backend is one line there.
///
/// Everything goes through the protocol: tensors in with `upload` / `allocate` + `write`, out with `read`
/// (i32 results reinterpreted from the floats `read` returns), weights through `prepare` / `prepareStack`.
///
/// Bounds are on the normalized mean squared error `Σ(got − want)² / Σ want²` (NMSE) of one op's outputs:
/// - `Bound.exact` 1e-12: ops of one float rounding per element (embedding, add, copies, softcap): measured ≤ 1e-14.
/// - `Bound.f32` 1e-10: f32 activations throughout (float weights, `.f32Activations`, heads, RoPE, norms,
///   attention): long float sums, measured ≤ 1e-12.
/// - `Bound.q16` 1e-8: `.f32Activations` on a backend that is not batch-invariant, which may round them to 16-bit
///   integers per 256-block at one token (the CUDA backend's batch-1 down projection: measured ~1e-9).
/// - `Bound.q8` 5e-4: 8-bit activations (`.standard` on quantized weights, the expert executor's gate/up):
///   rounding to Q8_0 / Q8_K costs 3e-5 ... 1.2e-4 (a 3% gain error on that path gives ~1e-3).
/// The smallest bug these checks are meant to catch (one wrong row of 70, a sign, a missing scale, a position off
/// by one, a visible key too many or too few of ~10, a sub-block of 16 of 512 decoded wrong) moves the NMSE by
/// more than 1e-2, far above even the 8-bit bound; batch invariance and the grouped matmul are compared bit for bit.
public struct BackendConformance {
    public let name: String
    public let backend: any ComputeBackend

    enum Bound {
        static let exact = 1e-12
        static let f32 = 1e-10
        static let q16 = 1e-8
        static let q8 = 5e-4
    }

    /// Room for every check below: 33-row matmuls, 19-token KV writes, 4 query heads per K/V head, 32-expert
    /// routers.
    static let plan = ForwardPlan(maxTokens: 64, contextLength: 64, maxQueryGroup: 4, routerWork: 256)

    /// What tensors hold where an op must not write (after the last row, in the gaps of strided rows).
    static let sentinel: Float = 1234.5

    public init(name: String, backend: any ComputeBackend) {
        self.name = name
        self.backend = backend
        backend.reserve(Self.plan)
    }

    /// Prints the worst error of one check and fails it beyond its bound.
    func expect(_ what: String, worst: Double, bound: Double, file: StaticString = #filePath, line: UInt = #line) {
        print("[\(name)] \(what): worst NMSE \(sci(worst)) (bound \(sci(bound)))")
        Expect.lessOrEqual(worst, bound, "[\(name)] \(what): NMSE \(sci(worst)) above \(sci(bound))",
                                 file: file, line: line)
    }

    /// Fails unless every element of `values` in `range` is the sentinel.
    func expectUntouched(_ values: [Float], _ range: Range<Int>, _ what: String, file: StaticString = #filePath,
                         line: UInt = #line) {
        if let i = range.first(where: { values[$0] != Self.sentinel }) {
            Expect.fail("[\(name)] \(what): wrote element \(i) (\(values[i])), outside its output", file: file, line: line)
        }
    }

    // MARK: 1. memory

    public func checkMemory() {
        let b = backend
        var rng = SplitMix64(seed: 1)
        // `allocate` is zeroed, also where a released tensor was.
        let old = b.allocate(777)
        b.set(old, rng.normals(777))
        b.release(old)
        let zeros = b.allocate(1000)
        Expect.equal(zeros.count, 1000)
        Expect.that(b.floats(zeros, 1000).allSatisfy { $0.bitPattern == 0 }, "[\(name)] allocate is not zeroed")

        // `upload` then `read` round-trips bit for bit.
        let values = rng.normals(300) + [0, -0.0, .leastNonzeroMagnitude, .greatestFiniteMagnitude, -1e-30]
        let t = b.upload(values)
        Expect.equal(t.count, values.count)
        Expect.isNil(firstBitDifference(b.floats(t, values.count), values), "[\(name)] upload/read round trip")

        // `offset` / `prefix` views.
        Expect.equal(t.offset(100).count, values.count - 100)
        Expect.equal(t.prefix(10).count, 10)
        Expect.equal(t.offset(100).prefix(7).count, 7)
        Expect.equal(b.floats(t.offset(100), 50), Array(values[100..<150]), "[\(name)] read of an offset view")
        Expect.equal(b.floats(t.offset(100).offset(50), 5), Array(values[150..<155]), "[\(name)] offset of an offset")
        Expect.equal(b.floats(t.prefix(10), 10), Array(values[0..<10]), "[\(name)] read of a prefix view")

        // `write` of floats into a view changes exactly those elements.
        let patch: [Float] = [1.5, -2.25, 3e-7]
        b.set(t.offset(7), patch)
        var expected = values
        expected.replaceSubrange(7..<10, with: patch)
        Expect.isNil(firstBitDifference(b.floats(t, values.count), expected), "[\(name)] write into an offset view")

        // `write` of i32, read back as bits.
        let ints: [Int32] = [0, 1, -1, .max, .min, 123_456_789, -42, 0x7F80_0001]  // the last is a NaN's bits
        let it = b.int32Tensor(ints, capacity: 32)
        Expect.equal(b.int32s(it, ints.count), ints, "[\(name)] i32 write/read")
        Expect.that(b.int32s(it, 32)[ints.count...].allSatisfy { $0 == 0 }, "[\(name)] i32 write past its values")
        b.set(it.offset(20), [Int32(5), 6])
        Expect.equal(b.int32s(it.offset(19), 4), [0, 5, 6, 0], "[\(name)] i32 write into an offset view")
    }

    // MARK: 2. embed

    public func checkEmbed() throws {
        let b = backend
        var rng = SplitMix64(seed: 2)
        let vocab = 40, dim = 256
        let tokens: [Int32] = [3, 39, 0, 17, 3, 25]
        let n = tokens.count
        let tok = b.int32Tensor(tokens)
        for type in [GGMLType.f32, .f16, .q8_0, .q4_K, .q6_K] where Host.canMake(type) {
            let table = try Host.weight(type, name: "token_embd.weight", rows: vocab, cols: dim, rng: &rng)
            let w = try b.prepare(table.ref)
            var worst = 0.0
            for scale in [Float(1), Float(dim).squareRoot(), 0.37] {
                let out = b.filled((n + 1) * dim, Self.sentinel)
                b.embed(w, tokens: tok, n: n, out: out, scale: scale)
                let got = b.floats(out, (n + 1) * dim)
                var want: [Double] = []
                for t in tokens {
                    for i in 0..<dim { want.append(Double(table.values[Int(t) * dim + i]) * Double(scale)) }
                }
                worst = max(worst, nmse(Array(got[0..<n * dim]), want))
                expectUntouched(got, n * dim..<(n + 1) * dim, "embed \(type)")
            }
            expect("embed \(type) (scales 1, 16, 0.37)", worst: worst, bound: Bound.exact)
        }
    }

    // MARK: 3. rmsNorm, rmsNormRows

    public func checkRMSNorm() {
        let b = backend
        var rng = SplitMix64(seed: 3)
        let dim = 48, eps: Float = 1e-5
        let weight = (0..<dim).map { i in rng.uniform(0.5, 1.5) * (i % 3 == 0 ? -1 : 1) }
        let w = b.upload(weight)
        // Rows of very different magnitudes: eps matters for the small ones (mean square 9e-6 against eps 1e-5).
        let rowScales: [Float] = [1, 0.003, 30]
        var worst = 0.0
        for (rows, stride) in [(1, 48), (7, 48), (1, 64), (7, 64)] {
            for inPlace in [false, true] {
                var x = [Float](repeating: 0, count: rows * stride)
                for r in 0..<rows {
                    for i in 0..<stride { x[r * stride + i] = rng.normal() * rowScales[r % 3] }
                }
                let xt = b.upload(x)
                let out = inPlace ? xt : b.filled(rows * stride, Self.sentinel)
                b.rmsNorm(xt, weight: w, out: out, rows: rows, dim: dim, stride: stride, eps: eps)
                let got = b.floats(out, rows * stride)
                var g: [Float] = [], want: [Double] = []
                let what = "rmsNorm rows \(rows) stride \(stride)\(inPlace ? " in place" : "")"
                for r in 0..<rows {
                    g += got[r * stride..<r * stride + dim]
                    want += Reference.rmsNorm(x[r * stride..<r * stride + dim], weight: weight, eps: eps)
                    // The gap after each row's `dim` elements is not written.
                    for i in r * stride + dim..<(r + 1) * stride where got[i] != (inPlace ? x[i] : Self.sentinel) {
                        Expect.fail("[\(name)] \(what): wrote element \(i), in the gap between rows")
                        break
                    }
                }
                if !inPlace { Expect.equal(b.floats(xt, rows * stride), x, "[\(name)] \(what) changed its input") }
                worst = max(worst, nmse(g, want))
            }
        }
        expect("rmsNorm (rows 1/7, stride 48/64, in place or not)", worst: worst, bound: Bound.f32)

        // rmsNormRows: the norm of chosen rows (repeats allowed), gathered.
        let rows = 8
        var x = [Float]()
        for r in 0..<rows { x += rng.normals(dim, scale: rowScales[r % 3]) }
        let xt = b.upload(x)
        let indices: [Int32] = [6, 0, 3, 6, 7]
        let idx = b.int32Tensor(indices)
        let count = indices.count
        let out = b.filled((count + 1) * dim, Self.sentinel)
        b.rmsNormRows(xt, indices: idx, count: count, weight: w, out: out, dim: dim, eps: eps)
        let got = b.floats(out, (count + 1) * dim)
        let want = indices.flatMap { Reference.rmsNorm(x[Int($0) * dim..<(Int($0) + 1) * dim], weight: weight, eps: eps) }
        expect("rmsNormRows (rows [6, 0, 3, 6, 7] of 8)", worst: nmse(Array(got[0..<count * dim]), want),
               bound: Bound.f32)
        expectUntouched(got, count * dim..<(count + 1) * dim, "rmsNormRows")
        Expect.equal(b.floats(xt, rows * dim), x, "[\(name)] rmsNormRows changed its input")
    }

    // MARK: 4. matmul

    /// Every weight format a test can build, both precisions, n ∈ {1, 2, 4, 5, 9, 32, 33, 64}: on the CPU backend n = 1
    /// is the one-row kernel, 2 and 4 the multi-row kernels (up to 4 token rows a call), 5 and 9 the tile kernels'
    /// `minRows` (5, or 9 for the VNNI K-quant tiles; below it 4 + 1 and 4 + 4 + 1 rows), 32 a full batched-decode
    /// group, 33 a long batch with a remainder, 64 a prefill batch (a device backend may run other kernels there). Each row of a batch must have
    /// the bits of the same row computed alone (batch invariance).
    public func checkMatmul() throws {
        let b = backend
        var rng = SplitMix64(seed: 4)
        let ns = [1, 2, 4, 5, 9, 32, 33, 64], maxN = 64
        let skipped = QuantRegistry.supportedTypes.filter { !Host.canMake($0) }
        if !skipped.isEmpty { print("[\(name)] matmul: no test weights for \(skipped) (activation-only or no layout)") }
        // 512 columns: two 256-blocks; 2560: ten (a device kernel that takes super-blocks four at a time has a
        // remainder; one that splits K every 8 has two splits), with 37 rows.
        // 1000 × 2048 (Q4_K and Q6_K, n up to 33): a device's streaming decode kernel walks more chunks of rows per
        // block than its ring of stages holds (the ring wraps), and its rows against the tiles' bits at n = 33; a
        // block-staged batched-decode kernel (9 to 32 tokens) walks several units of row tiles per block. 96 × 4096
        // (Q4_K): rows of 4 steps of 1024 columns (a decode kernel that holds a row's inputs in registers; 512, 2560
        // and 2048 give it 1, 3 and 2). 72 × 4352 (Q4_K, f32 activations too): a decode kernel that splits rows
        // longer than 4096 into slices of 2048 columns has a last slice of one super-block.
        for (rows, cols, only) in [(70, 512, nil), (37, 2560, nil), (1000, 2048, [GGMLType.q4_K, .q6_K]),
                                   (96, 4096, [GGMLType.q4_K]), (72, 4352, [GGMLType.q4_K])] {
        let ns = only == nil ? ns : [1, 9, 17, 32, 33], maxN = only == nil ? maxN : 33
        let x = rng.normals(maxN * cols)
        let xt = b.upload(x)
        let y = b.allocate((maxN + 1) * rows)
        defer { b.release(xt); b.release(y) }
        for type in Host.weightTypes where only?.contains(type) ?? true {
            let hw = try Host.weight(type, name: "blk.0.ffn_up.weight", rows: rows, cols: cols, rng: &rng)
            let w = try b.prepare(hw.ref)
            let want = Reference.matmul(hw.matrix(0), rows: rows, cols: cols, x, n: maxN)
            let floatActivations = QuantRegistry.kernels(for: type)!.vecDotType == .f32
            for precision in only == nil || cols > 4096 ? [MatmulPrecision.standard, .f32Activations] : [.standard] {
                let what = "matmul \(type) \(precision) \(rows)x\(cols)"
                // Each row alone: the values batches must reproduce.
                var alone: [Float] = []
                for t in 0..<maxN {
                    b.matmul(w, xt.offset(t * cols), y, n: 1, precision: precision)
                    alone += b.floats(y, rows)
                }
                var worst = nmse(alone, want)
                for n in ns {
                    b.set(y, [Float](repeating: Self.sentinel, count: (maxN + 1) * rows))
                    b.matmul(w, xt, y, n: n, precision: precision)
                    let all = b.floats(y, (maxN + 1) * rows)
                    let got = Array(all[0..<n * rows])
                    worst = max(worst, nmse(got, Array(want[0..<n * rows])))
                    expectUntouched(all, n * rows..<(maxN + 1) * rows, "\(what) n=\(n)")
                    if b.batchInvariant, let i = firstBitDifference(got, Array(alone[0..<n * rows])) {
                        Expect.fail("[\(name)] \(what) n=\(n): element \(i % rows) of row \(i / rows) is \(got[i]), "
                                + "but \(alone[i]) when that row is computed alone (batch invariance)")
                    }
                }
                expect(what, worst: worst, bound: floatActivations ? Bound.f32
                       : precision == .f32Activations ? (b.batchInvariant ? Bound.f32 : Bound.q16) : Bound.q8)
            }
        }
        }
    }

    // MARK: 5. matmulGroup

    /// The MLP's op chain (rmsNorm → matmulGroup → gatedActivation → f32-activation matmul) with Q4_K weights 256
    /// wide: a backend may hand an op's output to the next op in a prepared form (the quantized or split input the
    /// consumer needs); the results must have the bits of the same ops run apart (another op between each pair),
    /// decode (n = 1, 5) and prefill (n = 64).
    public func checkChainedOps() throws {
        let b = backend
        var rng = SplitMix64(seed: 12)
        let dim = 512, ff = 768, maxN = 64
        let gate = try b.prepare(Host.weight(.q4_K, name: "blk.0.ffn_gate.weight", rows: ff, cols: dim, rng: &rng).ref)
        let up = try b.prepare(Host.weight(.q4_K, name: "blk.0.ffn_up.weight", rows: ff, cols: dim, rng: &rng).ref)
        let down = try b.prepare(Host.weight(.q4_K, name: "blk.0.ffn_down.weight", rows: dim, cols: ff, rng: &rng).ref)
        let x = b.upload(rng.normals(maxN * dim))
        let norm = b.upload((0..<dim).map { _ in rng.uniform(0.5, 1.5) })
        let xn = b.allocate(maxN * dim), g = b.allocate(maxN * ff), u = b.allocate(maxN * ff), y = b.allocate(maxN * dim)
        let other = b.allocate(16)
        defer { [x, norm, xn, g, u, y, other].forEach { b.release($0) } }
        for n in [1, 5, 64] {
            var results: [[Float]] = []
            for apart in [false, true] {
                func gap() { if apart { b.fill(other, count: 16, value: 0) } }
                b.rmsNorm(x, weight: norm, out: xn, rows: n, dim: dim, stride: dim, eps: 1e-5)
                gap()
                b.matmulGroup(gate, g, up, u, nil, nil, x: xn, n: n)
                gap()
                b.gatedActivation(g, u, count: n * ff, .silu)
                gap()
                b.matmul(down, g, y, n: n, precision: .f32Activations)
                results.append(b.floats(g, n * ff) + b.floats(y, n * dim))
            }
            if let i = firstBitDifference(results[0], results[1]) {
                Expect.fail("[\(name)] chained MLP ops n=\(n): value \(i) is \(results[0][i]) chained, \(results[1][i]) apart")
            }
        }
        print("[\(name)] chained MLP ops (norm, gate/up, SwiGLU, f32 down; Q4_K): bit-identical to the ops run apart for n = 1, 5, 64")
    }

    /// Each output of `matmulGroup` has the bits `matmul` (`.standard`) gives it, for matrices of one format and of
    /// mixed formats (mixed activation formats), decode (n = 1, 3), prefill (n = 6) and batched decode (n = 20).
    public func checkMatmulGroup() throws {
        let b = backend
        var rng = SplitMix64(seed: 5)
        let cols = 256, maxN = 20
        let groups: [[(GGMLType, Int)]] = [
            [(.q8_0, 40), (.q8_0, 24)],
            [(.q4_K, 40), (.q4_K, 24), (.q4_K, 56)],
            [(.q4_K, 40), (.q6_K, 24), (.q8_0, 56)],
            [(.f32, 40), (.f16, 24), (.bf16, 8)],
        ]
        let x = b.upload(rng.normals(maxN * cols))
        for group in groups where group.allSatisfy({ Host.canMake($0.0) }) {
            let host = try group.map { try Host.weight($0.0, name: "blk.0.attn_q.weight", rows: $0.1, cols: cols, rng: &rng) }
            let ws = try host.map { try b.prepare($0.ref) }
            let ys = host.map { b.allocate((maxN + 1) * $0.rows) }
            let what = "matmulGroup \(group.map { "\($0.0)" }.joined(separator: "+"))"
            for n in [1, 3, 6, 20] {
                var individual: [[Float]] = []
                for i in ws.indices {
                    b.matmul(ws[i], x, ys[i], n: n, precision: .standard)
                    individual.append(b.floats(ys[i], n * host[i].rows))
                    b.set(ys[i], [Float](repeating: Self.sentinel, count: (maxN + 1) * host[i].rows))
                }
                let three = ws.count == 3
                b.matmulGroup(ws[0], ys[0], ws[1], ys[1], three ? ws[2] : nil, three ? ys[2] : nil, x: x, n: n)
                for i in ws.indices {
                    let rows = host[i].rows
                    let all = b.floats(ys[i], (maxN + 1) * rows)
                    if let j = firstBitDifference(Array(all[0..<n * rows]), individual[i]) {
                        Expect.fail("[\(name)] \(what) n=\(n): output \(i) element \(j % rows) of row \(j / rows) is "
                                + "\(all[j]), matmul gives \(individual[i][j])")
                    }
                    expectUntouched(all, n * rows..<(maxN + 1) * rows, "\(what) n=\(n) output \(i)")
                }
            }
            print("[\(name)] \(what): bit-identical to matmul for n = 1, 3, 6, 20")
        }
    }

    /// Prefill-sized matmuls (130 and 160 tokens: a backend may run these on another path, such as a GPU's f16
    /// GEMMs, with its own rounding, so no batch invariance here, only the bound of 8-bit activations): every weight
    /// format, rows of very different magnitudes (1e-3 to 1e5: beyond f16's range unless scaled), single matrices and
    /// a group of three, which must match the single matmuls bit for bit.
    public func checkMatmulPrefill() throws {
        let b = backend
        var rng = SplitMix64(seed: 13)
        let rows = 72, cols = 512, maxN = 160
        b.reserve(ForwardPlan(maxTokens: maxN, contextLength: Self.plan.contextLength, maxQueryGroup: Self.plan.maxQueryGroup,
                              routerWork: Self.plan.routerWork))
        var x = rng.normals(maxN * cols)
        for t in 0..<maxN {
            let scale: Float = t == 7 ? 1e5 : Float(pow(10.0, Double(t % 7) - 3))
            for i in 0..<cols { x[t * cols + i] *= scale }
        }
        let xt = b.upload(x)
        let ys = (0..<3).map { _ in b.allocate((maxN + 1) * rows) }
        defer { b.release(xt); ys.forEach { b.release($0) } }
        func worstRow(_ got: [Float], _ want: [Double], n: Int) -> Double {
            (0..<n).map { t in nmse(Array(got[t * rows..<(t + 1) * rows]), Array(want[t * rows..<(t + 1) * rows])) }.max() ?? 0
        }
        for type in Host.weightTypes {
            let hw = try Host.weight(type, name: "blk.0.ffn_up.weight", rows: rows, cols: cols, rng: &rng)
            let w = try b.prepare(hw.ref)
            let want = Reference.matmul(hw.matrix(0), rows: rows, cols: cols, x, n: maxN)
            var worst = 0.0
            for precision in [MatmulPrecision.standard, .f32Activations] {
                for n in [130, maxN] {
                    b.set(ys[0], [Float](repeating: Self.sentinel, count: (maxN + 1) * rows))
                    b.matmul(w, xt, ys[0], n: n, precision: precision)
                    let all = b.floats(ys[0], (maxN + 1) * rows)
                    worst = max(worst, worstRow(Array(all[0..<n * rows]), want, n: n))
                    expectUntouched(all, n * rows..<(maxN + 1) * rows, "matmul prefill \(type) \(precision) n=\(n)")
                }
            }
            // Per row of 72 outputs the 8-bit activations' NMSE reaches ~5e-4 (Q5_K on the CPU): twice the whole-matrix
            // bound of `matmul` per row.
            expect("matmul prefill \(type) \(rows)x\(cols), n = 130, 160 (worst row)", worst: worst, bound: 4 * Bound.q8)
        }
        for types in [[GGMLType.q4_K, .q4_K, .q4_K], [.q4_K, .q6_K, .q8_0]] where types.allSatisfy({ Host.canMake($0) }) {
            let host = try types.map { try Host.weight($0, name: "blk.0.attn_q.weight", rows: rows, cols: cols, rng: &rng) }
            let ws = try host.map { try b.prepare($0.ref) }
            let what = "matmulGroup prefill \(types.map { "\($0)" }.joined(separator: "+"))"
            var individual: [[Float]] = []
            for i in ws.indices {
                b.matmul(ws[i], xt, ys[i], n: maxN, precision: .standard)
                individual.append(b.floats(ys[i], maxN * rows))
                b.set(ys[i], [Float](repeating: Self.sentinel, count: (maxN + 1) * rows))
            }
            b.matmulGroup(ws[0], ys[0], ws[1], ys[1], ws[2], ys[2], x: xt, n: maxN)
            for i in ws.indices {
                let all = b.floats(ys[i], (maxN + 1) * rows)
                if let j = firstBitDifference(Array(all[0..<maxN * rows]), individual[i]) {
                    Expect.fail("[\(name)] \(what): output \(i) element \(j % rows) of row \(j / rows) is \(all[j]), matmul gives \(individual[i][j])")
                }
                expectUntouched(all, maxN * rows..<(maxN + 1) * rows, "\(what) output \(i)")
            }
            print("[\(name)] \(what): bit-identical to matmul for n = \(maxN)")
        }
    }

    // MARK: 6. matmulHeads

    /// One matrix per head on strided per-head slices (MLA's absorbed k_b / v_b): `cols` < the head stride of x,
    /// `rows` < the head stride of y, and row strides equal to or larger than heads × head stride.
    public func checkMatmulHeads() throws {
        let b = backend
        var rng = SplitMix64(seed: 6)
        let heads = 4, rows = 24, cols = 32, xHeadStride = 40, yHeadStride = 28, maxN = 6
        for (xStride, yStride) in [(heads * xHeadStride, heads * yHeadStride), (heads * xHeadStride + 8, heads * yHeadStride + 4)] {
            let x = rng.normals(maxN * xStride)
            let xt = b.upload(x)
            for type in [GGMLType.f32, .f16, .bf16, .q8_0, .q4_0] where Host.canMake(type) {
                let hw = try Host.weight(type, name: "blk.0.attn_k_b.weight", rows: rows, cols: cols, count: heads, rng: &rng)
                let stack = try b.prepareStack(hw.ref)
                var worst = 0.0
                for n in [1, 3, 6] {
                    let y = b.filled(n * yStride, Self.sentinel)
                    b.matmulHeads(stack, xt, xStride: xStride, xHeadStride: xHeadStride, y, yStride: yStride,
                                  yHeadStride: yHeadStride, n: n)
                    let all = b.floats(y, n * yStride)
                    var got: [Float] = [], want: [Double] = []
                    var written = Set<Int>()
                    for t in 0..<n {
                        for h in 0..<heads {
                            let wh = Array(hw.matrix(h))
                            for r in 0..<rows {
                                var s = 0.0
                                for c in 0..<cols { s += Double(wh[r * cols + c]) * Double(x[t * xStride + h * xHeadStride + c]) }
                                let i = t * yStride + h * yHeadStride + r
                                want.append(s)
                                got.append(all[i])
                                written.insert(i)
                            }
                        }
                    }
                    worst = max(worst, nmse(got, want))
                    if let i = all.indices.first(where: { !written.contains($0) && all[$0] != Self.sentinel }) {
                        Expect.fail("[\(name)] matmulHeads \(type) n=\(n): wrote y[\(i)], outside every head's rows")
                    }
                }
                expect("matmulHeads \(type) xStride \(xStride) yStride \(yStride)", worst: worst, bound: Bound.f32)
            }
        }
    }

    // MARK: 7. element-wise

    public func checkElementwise() {
        let b = backend
        var rng = SplitMix64(seed: 7)

        // addBias: x[t] += bias for `rows` rows of bias.count; the row after is not touched.
        do {
            let width = 37, rows = 5
            let bias = rng.normals(width), x = rng.normals(rows * width)
            let xt = b.upload(x + [Float](repeating: Self.sentinel, count: width))
            b.addBias(b.upload(bias), to: xt, rows: rows)
            let got = b.floats(xt, (rows + 1) * width)
            let want = (0..<rows * width).map { Double(x[$0]) + Double(bias[$0 % width]) }
            expect("addBias", worst: nmse(Array(got[0..<rows * width]), want), bound: Bound.exact)
            expectUntouched(got, rows * width..<(rows + 1) * width, "addBias")
        }
        // add: y += x over an odd count (vector tails).
        do {
            let count = 1003
            let x = rng.normals(count), y = rng.normals(count)
            let yt = b.upload(y + [Self.sentinel])
            b.add(b.upload(x), into: yt, count: count)
            let got = b.floats(yt, count + 1)
            expect("add", worst: nmse(Array(got[0..<count]), (0..<count).map { Double(x[$0]) + Double(y[$0]) }),
                   bound: Bound.exact)
            expectUntouched(got, count..<count + 1, "add")
        }
        // fill: a view in the middle of a tensor.
        do {
            let t = b.filled(100, Self.sentinel)
            b.fill(t.offset(10), count: 77, value: -3.5)
            let got = b.floats(t, 100)
            Expect.that(got[10..<87].allSatisfy { $0 == -3.5 }, "[\(name)] fill")
            expectUntouched(got, 0..<10, "fill")
            expectUntouched(got, 87..<100, "fill")
        }
        // copyRows between strided views.
        do {
            let rows = 6, width = 30, srcStride = 50, dstStride = 40
            let src = rng.normals(rows * srcStride)
            let dst = b.filled(rows * dstStride, Self.sentinel)
            b.copyRows(b.upload(src).offset(3), srcStride: srcStride, dst.offset(2), dstStride: dstStride, rows: rows - 1,
                       width: width)
            let got = b.floats(dst, rows * dstStride)
            var ok = true
            for i in 0..<rows * dstStride {
                let r = (i - 2) / dstStride, c = (i - 2) % dstStride
                let inside = i >= 2 && r < rows - 1 && c < width
                if got[i] != (inside ? src[3 + r * srcStride + c] : Self.sentinel) { ok = false }
            }
            Expect.that(ok, "[\(name)] copyRows (rows 5, width 30, strides 50 → 40, offset views)")
        }
        // softcap: cap · tanh(x / cap).
        do {
            let count = 515, cap: Float = 30
            let x = rng.uniforms(count, -100, 100)
            let t = b.upload(x)
            b.softcap(t, count: count, cap: cap)
            let want = x.map { Double(cap) * tanh(Double($0) / Double(cap)) }
            expect("softcap 30", worst: nmse(b.floats(t, count), want), bound: Bound.exact)
        }
        // gatedActivation: g = act(g) · u, SiLU and tanh-GELU; a short count and one longer than a CPU chunk.
        for kind in [GatedActivation.silu, .gelu] {
            var worst = 0.0
            for count in [1003, 20000] {
                let g = rng.uniforms(count, -10, 10), u = rng.normals(count)
                let gt = b.upload(g + [Self.sentinel])
                b.gatedActivation(gt, b.upload(u), count: count, kind)
                let got = b.floats(gt, count + 1)
                let want = (0..<count).map { i -> Double in
                    let a = kind == .silu ? Reference.silu(Double(g[i])) : Reference.gelu(Double(g[i]))
                    return a * Double(u[i])
                }
                worst = max(worst, nmse(Array(got[0..<count]), want))
                expectUntouched(got, count..<count + 1, "gatedActivation \(kind)")
            }
            expect("gatedActivation \(kind)", worst: worst, bound: Bound.f32)
        }
        // sigmoidGate: out[t] *= sigmoid(gate · x[t]).
        do {
            let width = 64, n = 5
            let gate = rng.normals(width, scale: 0.3), x = rng.normals(n * width), out = rng.normals(n * width)
            let ot = b.upload(out + [Self.sentinel])
            b.sigmoidGate(ot, gate: b.upload(gate), x: b.upload(x), width: width, n: n)
            let got = b.floats(ot, n * width + 1)
            var want: [Double] = []
            for t in 0..<n {
                var z = 0.0
                for i in 0..<width { z += Double(gate[i]) * Double(x[t * width + i]) }
                for i in 0..<width { want.append(Double(out[t * width + i]) * Reference.sigmoid(z)) }
            }
            expect("sigmoidGate", worst: nmse(Array(got[0..<n * width]), want), bound: Bound.f32)
            expectUntouched(got, n * width..<n * width + 1, "sigmoidGate")
        }
    }

    // MARK: 8. RoPE

    /// NeoX and adjacent-pair RoPE, partial rotary dims, linear scaling and YaRN, on rows of several heads at
    /// non-contiguous positions, with and without a per-head norm. The table itself: against angles computed here
    /// in Double (YaRN: against `RoPE.table(position:into:)`, where its frequency blend is defined); the rotation:
    /// against the reference rotation with those cos/sin.
    public func checkRoPE() {
        let b = backend
        var rng = SplitMix64(seed: 8)
        let yarn = YaRN(factor: 40, originalContext: 4096, mscale: 1.2)  // pairs 0-5 kept, 5-12 blended, rest / 40
        let cases: [(String, RoPE, headStride: Int)] = [
            ("neox", RoPE(dims: 32, base: 10000, neox: true), 32),
            ("adjacent pairs", RoPE(dims: 32, base: 10000, neox: false), 32),
            ("neox partial 16 of 32", RoPE(dims: 16, base: 1_000_000, neox: true), 32),
            ("adjacent pairs partial 24 of 40, linear ×4", RoPE(dims: 24, base: 10000, neox: false, linearScale: 4), 40),
            ("neox linear ×2", RoPE(dims: 32, base: 500_000, neox: true, linearScale: 2), 32),
            ("yarn adjacent pairs", RoPE(dims: 32, base: 10000, neox: false, yarn: yarn), 32),
            ("yarn neox partial 16 of 24", RoPE(dims: 16, base: 10000, neox: true, yarn: yarn), 24),
        ]
        let positions: [Int32] = [5, 0, 17, 3, 60]
        let rows = positions.count, heads = 3, tablePositions = 64, eps: Float = 1e-6
        let pos = b.int32Tensor(positions)
        for (label, rope, hs) in cases {
            let isYaRN = label.hasPrefix("yarn")
            let dims = rope.dims, half = dims / 2
            let table = b.makeRopeTable(rope, positions: tablePositions)
            Expect.equal(table.positions, tablePositions)
            Expect.equal(table.dims, dims)
            // The reference cos/sin `// [positions][dims/2][2]`.
            var cs = [Double](repeating: 0, count: tablePositions * dims)
            if isYaRN {
                var buf = [Float](repeating: 0, count: dims)
                for p in 0..<tablePositions {
                    buf.withUnsafeMutableBufferPointer { rope.table(position: p, into: $0.baseAddress!) }
                    for i in 0..<dims { cs[p * dims + i] = Double(buf[i]) }
                }
            } else {
                for p in 0..<tablePositions {
                    for i in 0..<half {
                        let theta = Double(p) / rope.linearScale * pow(rope.base, -2 * Double(i) / Double(dims))
                        cs[p * dims + 2 * i] = cos(theta)
                        cs[p * dims + 2 * i + 1] = sin(theta)
                    }
                }
            }
            let got = b.floats(table.table, tablePositions * dims)
            let tableError = zip(got, cs).map { abs(Double($0) - $1) }.max()!
            print("[\(name)] rope table \(label): max |error| of cos/sin \(sci(tableError)) (bound 1e-5)")
            Expect.lessOrEqual(tableError, 1e-5, "[\(name)] rope table \(label): max |error| \(tableError)")

            for withNorm in [false, true] {
                let rowStride = heads * hs + 8   // 8 floats after the heads that rope must not touch
                let x = rng.normals(rows * rowStride, scale: 2)
                let normWeight = rng.uniforms(hs, 0.5, 1.5)
                let xt = b.upload(x)
                b.rope(xt, rows: rows, rowStride: rowStride, heads: heads, headStride: hs, table: table,
                       positions: pos, norm: withNorm ? b.upload(normWeight) : nil, eps: eps)
                let all = b.floats(xt, rows * rowStride)
                var g: [Float] = [], want: [Double] = []
                for t in 0..<rows {
                    let p = Int(positions[t])
                    for h in 0..<heads {
                        let start = t * rowStride + h * hs
                        var v = withNorm ? Reference.rmsNorm(x[start..<start + hs], weight: normWeight, eps: eps)
                                         : x[start..<start + hs].map(Double.init)
                        for i in 0..<half {
                            let c = cs[p * dims + 2 * i], s = cs[p * dims + 2 * i + 1]
                            let (ia, ib) = rope.neox ? (i, i + half) : (2 * i, 2 * i + 1)
                            let a = v[ia], bb = v[ib]
                            v[ia] = a * c - bb * s
                            v[ib] = a * s + bb * c
                        }
                        want += v
                        g += all[start..<start + hs]
                    }
                    let pad = t * rowStride + heads * hs..<(t + 1) * rowStride
                    Expect.equal(Array(all[pad]), Array(x[pad]), "[\(name)] rope \(label): wrote the row's padding")
                }
                expect("rope \(label)\(withNorm ? " + head norm" : "")", worst: nmse(g, want), bound: Bound.f32)
            }
        }
    }

    // MARK: 9. paged attention

    /// `addRMSNorm` has the bits of `add` then `rmsNorm`, and a Q4_K matmul reading its output right after has the
    /// bits it has after the two ops run apart (n = 1, 7, 64; 512 wide).
    public func checkAddRMSNorm() throws {
        let b = backend
        var rng = SplitMix64(seed: 14)
        let dim = 512, rowsOut = 96, maxN = 64
        let w = try b.prepare(Host.weight(.q4_K, name: "blk.0.attn_q.weight", rows: rowsOut, cols: dim, rng: &rng).ref)
        let xs = rng.normals(maxN * dim), ys = rng.normals(maxN * dim)
        let norm = b.upload((0..<dim).map { _ in rng.uniform(0.5, 1.5) })
        let x = b.upload(xs), out = b.allocate(maxN * dim), mm = b.allocate(maxN * rowsOut), other = b.allocate(16)
        defer { [x, norm, out, mm, other].forEach { b.release($0) } }
        for n in [1, 7, 64] {
            var results: [[Float]] = []
            for fused in [true, false] {
                let y = b.upload(ys)
                if fused {
                    b.addRMSNorm(x, into: y, weight: norm, out: out, rows: n, dim: dim, eps: 1e-5)
                } else {
                    b.add(x, into: y, count: n * dim)
                    b.fill(other, count: 16, value: 0)
                    b.rmsNorm(y, weight: norm, out: out, rows: n, dim: dim, stride: dim, eps: 1e-5)
                    b.fill(other, count: 16, value: 0)
                }
                b.matmul(w, out, mm, n: n, precision: .standard)
                results.append(b.floats(y, n * dim) + b.floats(out, n * dim) + b.floats(mm, n * rowsOut))
                b.release(y)
            }
            if let i = firstBitDifference(results[0], results[1]) {
                Expect.fail("[\(name)] addRMSNorm n=\(n): value \(i) is \(results[0][i]), add + rmsNorm give \(results[1][i])")
            }
        }
        print("[\(name)] addRMSNorm (and a Q4_K matmul of its output): bit-identical to add, rmsNorm for n = 1, 7, 64")
    }

    /// `ropeAndStoreKV` has the bits of `rope(q)`, `rope(k)`, `storeKV` (with and without per-head norms, GQA), for
    /// NeoX and normal rotations, partial rotary dims, and a head of 512 rotated dims (more pairs than a GPU block of
    /// 128 threads takes at once: the CUDA kernel's other path).
    public func checkRopeAndStoreKV() {
        let b = backend
        var rng = SplitMix64(seed: 13)
        let qHeads = 4, kHeads = 2, n = 5, pageSize = 4, eps: Float = 1e-6
        let pos = b.int32Tensor([3, 9, 0, 17, 4]), slots = b.int32Tensor([5, 2, 11, 7, 0])
        let meta = BatchMetadata(tokens: n, positions: pos, slotMapping: slots, sequenceOfToken: b.int32Tensor([0, 0, 0, 0, 0]),
                                 blockTables: b.int32Tensor([0, 1, 2, 3]), blockTableStride: 4, pageSize: pageSize)
        for (hd, dims, neox) in [(32, 32, true), (32, 32, false), (32, 16, false), (512, 512, true)] {
            let vDim = kHeads * hd
            let table = b.makeRopeTable(RoPE(dims: dims, base: 10000, neox: neox), positions: 64)
            let qs = rng.normals(n * qHeads * hd), ks = rng.normals(n * kHeads * hd), vs = rng.normals(n * vDim)
            let qNorm = b.upload((0..<hd).map { _ in rng.uniform(0.5, 1.5) }), kNorm = b.upload((0..<hd).map { _ in rng.uniform(0.5, 1.5) })
            for norms in [false, true] {
                var results: [[Float]] = []
                for fused in [true, false] {
                    let cache = b.makeKVCache(pageSize: pageSize, numPages: 4, kDims: [kHeads * hd], vDims: [vDim])
                    let q = b.upload(qs), k = b.upload(ks), v = b.upload(vs)
                    if fused {
                        b.ropeAndStoreKV(q: q, qHeads: qHeads, qNorm: norms ? qNorm : nil, k: k, kHeads: kHeads,
                                         kNorm: norms ? kNorm : nil, v: v, headDim: hd, n: n, table: table, eps: eps,
                                         cache: cache, layer: 0, meta: meta)
                    } else {
                        b.rope(q, rows: n, rowStride: qHeads * hd, heads: qHeads, headStride: hd, table: table, positions: pos,
                               norm: norms ? qNorm : nil, eps: eps)
                        b.rope(k, rows: n, rowStride: kHeads * hd, heads: kHeads, headStride: hd, table: table, positions: pos,
                               norm: norms ? kNorm : nil, eps: eps)
                        b.storeKV(k: k, v: v, n: n, cache: cache, layer: 0, meta: meta)
                    }
                    let slotsUsed = [5, 2, 11, 7, 0]
                    let kc = b.floats(cache.k(0), 16 * kHeads * hd), vc = b.floats(cache.v(0), 16 * vDim)
                    var stored: [Float] = []
                    let kw = kHeads * hd
                    for s in slotsUsed {
                        stored.append(contentsOf: kc[(s * kw)..<((s + 1) * kw)])
                        stored.append(contentsOf: vc[(s * vDim)..<((s + 1) * vDim)])
                    }
                    results.append(b.floats(q, n * qHeads * hd) + stored)
                    [q, k, v].forEach { b.release($0) }
                }
                if let i = firstBitDifference(results[0], results[1]) {
                    Expect.fail("[\(name)] ropeAndStoreKV (head \(hd), dims \(dims), neox: \(neox), norms: \(norms)): value \(i) is \(results[0][i]), rope + rope + storeKV give \(results[1][i])")
                }
            }
            [qNorm, kNorm, table.table].forEach { b.release($0) }
        }
        print("[\(name)] ropeAndStoreKV: bit-identical to rope, rope, storeKV (with and without per-head norms; NeoX and normal; partial dims; 512 dims)")
    }

    /// `ropeStoreAndAttend` of a decode step (four sequences at positions 700, 5, 1030 and 0 over a pool of 16-token
    /// pages in shuffled order, a context of 2048: a GPU's split-K shares) has the bits of `ropeAndStoreKV` then
    /// `attention`: the output, the K/V rows stored and a Q4_K (Q8_0 for 128-wide rows) matmul of the output (a backend
    /// may hand the output's quantized form to it); GQA with per-head norms and 256-wide output rows, narrow rows without norms, a
    /// sliding window with soft-capping; GQA of 128-wide heads (a GPU writes the output's Q8_K form with it). Twice:
    /// with a reserved context of 2048 and of 256 (one key split on a GPU, whose fused kernel then writes each head
    /// directly). The two calls also run told the step's largest position (`BatchMetadata.maxPosition`: a GPU then
    /// launches only the key splits it reaches) and must give the same bits. All again for a step at positions 200,
    /// 5, 31 and 0 (one key split reached). The checks table runs it with the opt-in fused kernels on (`withOptInFusions`).
    public func checkRopeStoreAndAttend() throws {
        let b = backend
        var rng = SplitMix64(seed: 21)
        let pageSize = 16, numPages = 128, maxN = 8, context = 2048
        var qwen = AttentionParams(nHead: 8, nKVHead: 2, headDim: 32, scale: 1 / Float(32).squareRoot())
        let narrow = AttentionParams(nHead: 4, nKVHead: 2, headDim: 32, headDimV: 32, scale: 0.2)
        var window = qwen
        window.window = 300
        window.softcap = 30
        qwen.window = 0
        let cases: [(String, AttentionParams, norms: Bool, neox: Bool)] = [
            ("GQA 8/2 heads, per-head norms, 256-wide rows", qwen, true, true),
            ("4/2 heads, 128-wide rows, no norms", narrow, false, false),
            ("sliding window 300, softcap 30", window, true, true),
            ("GQA 4/2 heads of 128, 512-wide rows", AttentionParams(nHead: 4, nKVHead: 2, headDim: 128, scale: 0.09), true, false),
        ]
        // Long contexts (several key splits), then short ones (one split of a long reserved context).
        for lengths in [[700, 5, 1030, 0], [200, 5, 31, 0]] {
            let pages = lengths.map { $0 / pageSize + 1 }
            var free = Array(0..<numPages - 1)
            for i in stride(from: free.count - 1, to: 0, by: -1) { free.swapAt(i, rng.int(i + 1)) }
            var tables: [[Int32]] = []
            for c in pages { tables.append(free.prefix(c).map(Int32.init)); free.removeFirst(c) }
            let tableStride = pages.max()!
            let flat = b.int32Tensor(tables.flatMap { $0 + [Int32](repeating: 0, count: tableStride - $0.count) })
            func slot(_ s: Int, _ p: Int) -> Int { Int(tables[s][p / pageSize]) * pageSize + p % pageSize }
            let positions = b.allocate(64), slots = b.allocate(64), seqOf = b.allocate(64)
            for reserved in [context, 256] {
            b.reserve(ForwardPlan(maxTokens: Self.plan.maxTokens, contextLength: reserved, maxQueryGroup: Self.plan.maxQueryGroup,
                                  routerWork: Self.plan.routerWork))
            for (caseLabel, params, norms, neox) in cases {
                let label = "\(caseLabel), reserved context \(reserved)"
                let hd = params.headDim, kDim = params.nKVHead * hd, vDim = params.nKVHead * params.headDimV
                let qWidth = params.nHead * hd, width = params.nHead * params.headDimV
                let cache = b.makeKVCache(pageSize: pageSize, numPages: numPages, kDims: [kDim], vDims: [vDim])
                let table = b.makeRopeTable(RoPE(dims: hd, base: 10000, neox: neox), positions: context)
                let k = b.allocate(64 * kDim), v = b.allocate(64 * vDim), q = b.allocate(maxN * qWidth)
                let out = b.allocate(maxN * width), mm = b.allocate(maxN * 64)
                let wo = try b.prepare(Host.weight(width % 256 == 0 ? .q4_K : .q8_0, name: "blk.0.attn_output.weight", rows: 64,
                                                   cols: width, rng: &rng).ref)
                let qNorm = b.upload((0..<hd).map { _ in rng.uniform(0.5, 1.5) }), kNorm = b.upload((0..<hd).map { _ in rng.uniform(0.5, 1.5) })
                defer { [k, v, q, out, mm, qNorm, kNorm].forEach { b.release($0) } }
                // The sequences' earlier keys and values, 64 rows a store.
                let earlier = lengths.enumerated().flatMap { s, len in (0..<len).map { (s, $0) } }
                for c in stride(from: 0, to: earlier.count, by: 64) {
                    let part = earlier[c..<min(earlier.count, c + 64)]
                    b.set(slots, part.map { Int32(slot($0.0, $0.1)) })
                    b.set(k, rng.normals(part.count * kDim))
                    b.set(v, rng.normals(part.count * vDim))
                    b.storeKV(k: k, v: v, n: part.count, cache: cache, layer: 0, meta: BatchMetadata(
                        tokens: part.count, positions: positions, slotMapping: slots, sequenceOfToken: seqOf,
                        blockTables: flat, blockTableStride: tableStride, pageSize: pageSize))
                }
                let n = lengths.count
                b.set(positions, lengths.map { Int32($0) })
                b.set(slots, lengths.enumerated().map { Int32(slot($0.offset, $0.element)) })
                b.set(seqOf, (0..<n).map { Int32($0) })
                let qs = rng.normals(n * qWidth, scale: 2), ks = rng.normals(n * kDim, scale: 2), vs = rng.normals(n * vDim)
                var results: [[Float]] = []
                // The fused call; the two calls; the two calls told the step's largest position (a backend may then
                // launch only the key splits it reaches).
                for variant in 0..<3 {
                    let fused = variant == 0
                    b.set(q, qs)
                    b.set(k, ks)
                    b.set(v, vs)
                    let meta = BatchMetadata(tokens: n, positions: positions, slotMapping: slots, sequenceOfToken: seqOf,
                                             blockTables: flat, blockTableStride: tableStride, pageSize: pageSize,
                                             oneTokenPerSequence: fused, maxPosition: variant == 2 ? lengths.max() : nil)
                    if fused {
                        // On CUDA (not batch-invariant) the fused kernel must be what ran (the checks table switches it on).
                        let cuda = (b as? CUDABackend).flatMap { $0.batchInvariant ? nil : $0 }
                        cuda?.profiling = true
                        cuda?.resetKernelProfile()
                        b.ropeStoreAndAttend(q: q, qNorm: norms ? qNorm : nil, k: k, kNorm: norms ? kNorm : nil, v: v, out: out,
                                             n: n, table: table, eps: 1e-6, cache: cache, layer: 0, meta: meta, params: params)
                        if let cuda {
                            cuda.profiling = false
                            if !cuda.kernelProfile().contains(where: { $0.name.hasPrefix("attention_decode") }) {
                                Expect.fail("[\(name)] ropeStoreAndAttend \(label): attention_decode did not run")
                            }
                        }
                    } else {
                        b.ropeAndStoreKV(q: q, qHeads: params.nHead, qNorm: norms ? qNorm : nil, k: k, kHeads: params.nKVHead,
                                         kNorm: norms ? kNorm : nil, v: v, headDim: hd, n: n, table: table, eps: 1e-6,
                                         cache: cache, layer: 0, meta: meta)
                        b.attention(q: q, out: out, n: n, cache: cache, layer: 0, meta: meta, params: params)
                    }
                    b.matmul(wo, out, mm, n: n, precision: .standard)
                    let kc = b.floats(cache.k(0), numPages * pageSize * kDim), vc = b.floats(cache.v(0), numPages * pageSize * vDim)
                    var stored: [Float] = []
                    for (s, len) in lengths.enumerated() {
                        let r = slot(s, len)
                        stored.append(contentsOf: kc[(r * kDim)..<((r + 1) * kDim)])
                        stored.append(contentsOf: vc[(r * vDim)..<((r + 1) * vDim)])
                    }
                    results.append(b.floats(out, n * width) + stored + b.floats(mm, n * 64))
                }
                if let i = firstBitDifference(results[0], results[1]) {
                    Expect.fail("[\(name)] ropeStoreAndAttend \(label): value \(i) is \(results[0][i]), ropeAndStoreKV + attention give \(results[1][i])")
                }
                if let i = firstBitDifference(results[2], results[1]) {
                    Expect.fail("[\(name)] attention \(label), told the largest position \(lengths.max()!): value \(i) is \(results[2][i]), untold \(results[1][i])")
                }
                if results[0].contains(where: { !$0.isFinite }) { Expect.fail("[\(name)] ropeStoreAndAttend \(label): a value is not finite") }
                if let cuda = b as? CUDABackend, !cuda.attentionCountersAreZero {
                    Expect.fail("[\(name)] ropeStoreAndAttend \(label): attention_decode left a counter set")
                }
            }
            }
            [positions, slots, seqOf, flat].forEach { b.release($0) }
        }
        print("[\(name)] ropeStoreAndAttend: bit-identical to ropeAndStoreKV + attention, which are bit-identical told the step's largest position (decode steps, 4 sequences up to 1031 and up to 201 keys, 4 cases, reserved contexts 2048 and 256)")
    }

    /// A paged pool of 4-token pages; four sequences whose pages are interleaved and out of order; their first
    /// tokens stored in one step, then a step that mixes a 5-token prompt chunk, decode tokens and a new
    /// sequence's first chunk, then a single decode token (one query row: the CPU backend's per-head path).
    /// Layer 1 is attended; layer 0 holds other values at the same slots and unused pages hold junk.
    public func checkAttention() {
        for (label, params, kDim, vDim, qScale) in Self.attentionCases {
            let worst = attentionCase(params, kDim: kDim, vDim: vDim, qScale: qScale, seed: UInt64(label.count))
            expect("attention \(label)", worst: worst, bound: Bound.f32)
        }
    }

    /// The same cases with every length × 16 (pages of 64, a 130-token mixed step: chunks of two sequences, two
    /// decode tokens, a new sequence's 48 tokens), the size from which a backend may run attention with f16
    /// operands (a GPU's tensor cores): bound 1e-5.
    public func checkAttentionPrefill() {
        var cases = Self.attentionCases
        cases[2].0 = "sliding window 40"
        cases[2].1.window = 40
        for (label, params, kDim, vDim, qScale) in cases {
            let worst = attentionCase(params, kDim: kDim, vDim: vDim, qScale: qScale, seed: UInt64(label.count), scale: 16)
            expect("attention prefill \(label)", worst: worst, bound: 1e-5)
        }
    }

    static var attentionCases: [(String, AttentionParams, kDim: Int, vDim: Int, qScale: Float)] {
        let headDim = 32
        let gqa = AttentionParams(nHead: 4, nKVHead: 2, headDim: headDim, scale: 1 / Float(headDim).squareRoot())
        let narrowV = AttentionParams(nHead: 4, nKVHead: 2, headDim: headDim, headDimV: 16, scale: 0.2)
        var window = gqa
        window.window = 3
        var softcap = gqa
        softcap.softcap = 30
        var mla = AttentionParams(nHead: 4, nKVHead: 1, headDim: 48, headDimV: 32, scale: 0.15)
        mla.valueInKey = true
        return [
            ("GQA 4/2 heads", gqa, 64, 64, 1),
            ("GQA, headDimV 16 < headDim 32", narrowV, 64, 32, 1),
            ("sliding window 3", window, 64, 64, 1),
            ("softcap 30 (scores ~N(0, 10))", softcap, 64, 64, 10),
            ("MLA valueInKey (1 K/V head, headDimV 32 of 48, V width 0)", mla, 48, 0, 1),
        ]
    }

    /// Three steps over a paged cache of four sequences (pages of 4 · `scale` positions, lengths × `scale`).
    private func attentionCase(_ params: AttentionParams, kDim: Int, vDim: Int, qScale: Float, seed: UInt64,
                               scale: Int = 1) -> Double {
        let b = backend
        var rng = SplitMix64(seed: 9 &+ seed)
        let pageSize = 4 * scale, numPages = 12, layer = 1
        let cache = b.makeKVCache(pageSize: pageSize, numPages: numPages, kDims: [kDim, kDim], vDims: [vDim, vDim])
        // Sequences A, B, C, D; pages 4, 6, 8 belong to no one.
        let blockTables: [[Int32]] = [[7, 2, 10], [5, 0], [9, 3, 11], [1]]
        let stride = 4
        let flatTables = blockTables.flatMap { $0 + [Int32](repeating: 0, count: stride - $0.count) }
        func slot(_ s: Int, _ p: Int) -> Int { Int(blockTables[s][p / pageSize]) * pageSize + p % pageSize }

        // The K/V of every (sequence, position), as the reference sees them.
        var kOf: [Int: [Float]] = [:], vOf: [Int: [Float]] = [:]
        func key(_ s: Int, _ p: Int) -> Int { s * 1000 + p }

        let maxTokens = 32 * scale
        if scale > 1 {
            b.reserve(ForwardPlan(maxTokens: maxTokens, contextLength: 12 * pageSize, maxQueryGroup: Self.plan.maxQueryGroup,
                                  routerWork: Self.plan.routerWork))
        }
        let positions = b.allocate(maxTokens), slots = b.allocate(maxTokens), seqOf = b.allocate(maxTokens)
        let tables = b.int32Tensor(flatTables)
        let k = b.allocate(maxTokens * kDim), v = b.allocate(max(1, maxTokens * vDim))
        let q = b.allocate(maxTokens * params.nHead * params.headDim)
        let outWidth = params.nHead * params.headDimV
        let out = b.allocate((maxTokens + 1) * outWidth)

        /// Writes one step's metadata; returns it.
        func meta(_ tokens: [(s: Int, p: Int)], slotsOverride: [Int]? = nil) -> BatchMetadata {
            b.set(positions, tokens.map { Int32($0.p) })
            b.set(slots, slotsOverride.map { $0.map(Int32.init) } ?? tokens.map { Int32(slot($0.s, $0.p)) })
            b.set(seqOf, tokens.map { Int32($0.s) })
            return BatchMetadata(tokens: tokens.count, positions: positions, slotMapping: slots, sequenceOfToken: seqOf,
                                 blockTables: tables, blockTableStride: stride, pageSize: pageSize)
        }
        /// Stores random K/V for `tokens` in layer 1 (remembered), and other random values in layer 0.
        func store(_ tokens: [(s: Int, p: Int)]) {
            let m = meta(tokens)
            var ks: [Float] = [], vs: [Float] = []
            for (s, p) in tokens {
                let kr = rng.normals(kDim), vr = rng.normals(vDim)
                kOf[key(s, p)] = kr
                vOf[key(s, p)] = vr
                ks += kr
                vs += vr
            }
            b.set(k, ks)
            if vDim > 0 { b.set(v, vs) }
            b.storeKV(k: k, v: v, n: tokens.count, cache: cache, layer: layer, meta: m)
            b.set(k, rng.normals(tokens.count * kDim, scale: 3))
            if vDim > 0 { b.set(v, rng.normals(tokens.count * vDim, scale: 3)) }
            b.storeKV(k: k, v: v, n: tokens.count, cache: cache, layer: 0, meta: m)
        }
        /// Attention of `tokens` (already stored) against the reference.
        /// The last `attend`'s query rows and output rows.
        var lastQ: [Float] = [], lastOut: [Float] = []
        func attend(_ tokens: [(s: Int, p: Int)], queries: [Float]? = nil) -> Double {
            let n = tokens.count
            let m = meta(tokens)
            let qs = queries ?? rng.normals(n * params.nHead * params.headDim, scale: qScale)
            lastQ = qs
            b.set(q, qs)
            b.set(out, [Float](repeating: BackendConformance.sentinel, count: (maxTokens + 1) * outWidth))
            b.attention(q: q, out: out, n: n, cache: cache, layer: layer, meta: m, params: params)
            let all = b.floats(out, (maxTokens + 1) * outWidth)
            expectUntouched(all, n * outWidth..<(maxTokens + 1) * outWidth, "attention")
            var want: [Double] = []
            let group = params.nHead / params.nKVHead
            for (i, (s, p)) in tokens.enumerated() {
                let lo = params.window > 0 ? max(0, p - params.window + 1) : 0
                for h in 0..<params.nHead {
                    let kvh = h / group
                    var scores: [Double] = []
                    for j in lo...p {
                        let kr = kOf[key(s, j)]!
                        var dot = 0.0
                        for d in 0..<params.headDim {
                            dot += Double(qs[(i * params.nHead + h) * params.headDim + d]) * Double(kr[kvh * params.headDim + d])
                        }
                        var score = dot * Double(params.scale)
                        if params.softcap > 0 { score = Double(params.softcap) * tanh(score / Double(params.softcap)) }
                        scores.append(score)
                    }
                    let mx = scores.max()!
                    let e = scores.map { exp($0 - mx) }
                    let sum = e.reduce(0, +)
                    for d in 0..<params.headDimV {
                        var acc = 0.0
                        for (jj, j) in (lo...p).enumerated() {
                            let value = params.valueInKey ? kOf[key(s, j)]![kvh * params.headDim + d]
                                                          : vOf[key(s, j)]![kvh * params.headDimV + d]
                            acc += e[jj] / sum * Double(value)
                        }
                        want.append(acc)
                    }
                }
            }
            lastOut = Array(all[0..<n * outWidth])
            return nmse(lastOut, want)
        }

        // Junk in the pages no sequence owns.
        let junk = [4, 6, 8].flatMap { page in (0..<pageSize).map { page * pageSize + $0 } }
        let jm = meta(junk.map { _ in (s: 0, p: 0) }, slotsOverride: junk)
        b.set(k, rng.normals(junk.count * kDim, scale: 5))
        if vDim > 0 { b.set(v, rng.normals(junk.count * vDim, scale: 5)) }
        b.storeKV(k: k, v: v, n: junk.count, cache: cache, layer: layer, meta: jm)

        // Step 1: the first tokens of A (6), B (5), C (8).
        let x = scale
        store((0..<6 * x).map { (0, $0) } + (0..<5 * x).map { (1, $0) } + (0..<8 * x).map { (2, $0) })
        // Step 2: B's next token, a 5-token chunk of A, C's next token, D's first 3 tokens.
        let step2: [(s: Int, p: Int)] = [(1, 5 * x)] + (6 * x..<11 * x).map { (0, $0) } + [(2, 8 * x)] + (0..<3 * x).map { (3, $0) }
        store(step2)
        var worst = attend(step2)
        if scale > 1 {
            // The same rows in another order (the sequences reversed, each one's tokens kept in order): every row must
            // get the bits it got beside its first neighbours (a GPU's f16 path too: its result may not depend on
            // which rows share its block).
            let qWidth = params.nHead * params.headDim
            let order = step2.indices.sorted { a, b in step2[a].s != step2[b].s ? step2[a].s > step2[b].s : a < b }
            let firstOut = lastOut, firstQ = lastQ
            _ = attend(order.map { step2[$0] }, queries: order.flatMap { Array(firstQ[$0 * qWidth..<($0 + 1) * qWidth]) })
            for (k, i) in order.enumerated() {
                let got = Array(lastOut[k * outWidth..<(k + 1) * outWidth]), want = Array(firstOut[i * outWidth..<(i + 1) * outWidth])
                if let d = firstBitDifference(got, want) {
                    Expect.fail("[\(name)] attention prefill: token \(i) (sequence \(step2[i].s), position \(step2[i].p)) regrouped: output \(d) is \(got[d]), beside its first neighbours \(want[d])")
                    break
                }
            }
        }
        // Step 3: one decode token.
        let step3: [(s: Int, p: Int)] = [(2, 8 * x + 1)]
        store(step3)
        worst = max(worst, attend(step3))
        return worst
    }

    // MARK: 10. moeSelect

    /// The router variants real checkpoints use (MoERouting's documentation), against a straightforward
    /// implementation of those semantics here: ids exactly, weights within 1e-6.
    /// `argmaxRows` (greedy decoding's choice on the device): each row's first index of its largest value, as the
    /// host's scan from element 0 gives it: ties (the first wins), a row of equal values, a NaN first value (0),
    /// NaNs elsewhere (never chosen), -inf rows, the largest value last; rows wider than a block's threads, a
    /// view at an offset, and nothing written past the rows.
    public func checkArgmaxRows() {
        let b = backend
        var rng = SplitMix64(seed: 21)
        let cols = 5000, rows = 7
        var x = rng.normals(rows * cols)
        x[cols + 100] = 9; x[cols + 4000] = 9                               // row 1: a tie, the first wins
        for i in 0..<cols { x[2 * cols + i] = 0.25 }                        // row 2: all equal
        x[3 * cols] = .nan; x[3 * cols + 7] = 50                            // row 3: a NaN first
        x[4 * cols + 3] = .nan; x[4 * cols + 4998] = .nan; x[4 * cols + 4999] = 60  // row 4: NaNs, the largest last
        for i in 0..<cols { x[5 * cols + i] = -.infinity }                  // row 5: -inf everywhere
        x[6 * cols + cols - 1] = 1e30                                       // row 6: the largest last
        func scan(_ r: Int) -> Int32 {
            var best = 0, bv = x[r * cols]
            for i in 1..<cols where x[r * cols + i] > bv { bv = x[r * cols + i]; best = i }
            return Int32(best)
        }
        let want = (0..<rows).map(scan)
        Expect.equal(Array(want[1...6]), [100, 0, 0, 4999, 0, 4999], "[\(name)] argmaxRows: the host scan's own cases")
        let xt = b.upload(x)
        let out = b.int32Tensor([Int32](repeating: -7, count: rows + 1))
        defer { b.release(xt); b.release(out) }
        b.argmaxRows(xt, rows: rows, cols: cols, out: out)
        Expect.equal(b.int32s(out, rows + 1), want + [-7], "[\(name)] argmaxRows of \(rows) rows of \(cols)")
        b.argmaxRows(xt.offset(cols), rows: 2, cols: cols, out: out.offset(1))
        Expect.equal(b.int32s(out, 4), [want[0], want[1], want[2], want[3]], "[\(name)] argmaxRows of a view at an offset")
        // Short rows (fewer values than a block's threads).
        let short = b.upload([3, 1, 3, -2, 0.5, 0.5, 0.25, -1])
        defer { b.release(short) }
        b.argmaxRows(short, rows: 2, cols: 4, out: out)
        Expect.equal(b.int32s(out, 2), [0, 0], "[\(name)] argmaxRows of rows of 4")
        b.argmaxRows(short, rows: 2, cols: 3, out: out)  // rows [3, 1, 3], [-2, 0.5, 0.5]: widths not a multiple of 4
        Expect.equal(b.int32s(out, 2), [0, 1], "[\(name)] argmaxRows of rows of 3")
        print("[\(name)] argmaxRows: \(rows) rows of \(cols), rows of 4 and of 3 as the host's scan")
    }

    public func checkMoESelect() {
        let b = backend
        var rng = SplitMix64(seed: 10)
        func routing(_ scoring: MoERouting.Scoring, topK: Int, normalize: Bool, scale: Float = 1, bias: [Float]? = nil,
                     groups: Int = 1, used: Int = 1, score: MoERouting.GroupScore = .max) -> MoERouting {
            var r = MoERouting(scoring: scoring, topK: topK, normalizeTopK: normalize)
            r.scale = scale
            r.selectionBias = bias
            r.groups = groups
            r.groupsUsed = used
            r.groupScore = score
            return r
        }
        let cases: [(String, nExpert: Int, MoERouting)] = [
            ("softmax top-2 normalized (Mixtral)", 8, routing(.softmax, topK: 2, normalize: true)),
            ("softmax top-4 (Qwen2-MoE)", 16, routing(.softmax, topK: 4, normalize: false)),
            ("softmax top-3 ×2.5, 2 of 4 groups by max (DeepSeek-V2)", 16,
             routing(.softmax, topK: 3, normalize: false, scale: 2.5, groups: 4, used: 2, score: .max)),
            ("sigmoid top-4 normalized ×2.5, bias, 2 of 4 groups by top-two sum (DeepSeek-V3)", 32,
             routing(.sigmoid, topK: 4, normalize: true, scale: 2.5, bias: rng.uniforms(32, -0.3, 0.3), groups: 4,
                     used: 2, score: .topTwoSum)),
            ("sigmoid top-4 normalized, bias, 3 of 8 groups by max", 32,
             routing(.sigmoid, topK: 4, normalize: true, bias: rng.uniforms(32, -0.3, 0.3), groups: 8, used: 3)),
            ("sigmoid top-2, no groups", 12, routing(.sigmoid, topK: 2, normalize: false)),
            ("softmax top-6 normalized ×1.5, bias, groups all used", 24,
             routing(.softmax, topK: 6, normalize: true, scale: 1.5, bias: rng.uniforms(24, -0.05, 0.05), groups: 4,
                     used: 4)),
        ]
        let n = 32
        for (label, nExpert, r) in cases {
            let logits = rng.normals(n * nExpert, scale: 2)
            let experts = b.allocate(n * r.topK + 1), weights = b.filled(n * r.topK + 1, BackendConformance.sentinel)
            b.moeSelect(logits: b.upload(logits), nExpert: nExpert, routing: r, experts: experts, weights: weights, n: n)
            let ids = b.int32s(experts, n * r.topK)
            let ws = b.floats(weights, n * r.topK + 1)
            var worst: Double = 0
            var wrongIds: [String] = []
            for t in 0..<n {
                let want = Self.route(logits[t * nExpert..<(t + 1) * nExpert], r)
                let got = Array(ids[t * r.topK..<(t + 1) * r.topK])
                if got != want.ids { wrongIds.append("token \(t): \(got), expected \(want.ids)") }
                for j in 0..<r.topK {
                    worst = max(worst, abs(Double(ws[t * r.topK + j]) - want.weights[j]))
                }
            }
            if !wrongIds.isEmpty {
                Expect.fail("[\(name)] moeSelect \(label): wrong experts for \(wrongIds.count) of \(n) tokens, e.g. \(wrongIds[0])")
            }
            expectUntouched(ws, n * r.topK..<n * r.topK + 1, "moeSelect \(label) weights")
            print("[\(name)] moeSelect \(label): \(n - wrongIds.count) of \(n) tokens' ids exact, worst |Δweight| \(sci(worst)) (bound 1e-6)")
            Expect.lessOrEqual(worst, 1e-6, "[\(name)] moeSelect \(label): weights")
            // The data must exercise what the case is about: with groups, the restriction changes some choice.
            if r.groups > 1 && r.groupsUsed < r.groups {
                var free = r
                free.groups = 1
                var other = r
                other.groupScore = r.groupScore == .max ? .topTwoSum : .max
                let chunks = (0..<n).map { logits[$0 * nExpert..<($0 + 1) * nExpert] }
                Expect.that(chunks.contains { Self.route($0, r).ids != Self.route($0, free).ids },
                          "moeSelect \(label): test data never hits the group restriction")
                Expect.that(chunks.contains { Self.route($0, r).ids != Self.route($0, other).ids },
                          "moeSelect \(label): test data does not tell the group scores apart")
            }
        }
    }

    /// The reference router: scores (softmax or sigmoid), selection on scores + bias within the `groupsUsed` best
    /// groups (ties: lower index), top-k best first, weights = unbiased scores, normalized, scaled.
    static func route(_ logits: ArraySlice<Float>, _ r: MoERouting) -> (ids: [Int32], weights: [Double]) {
        let l = logits.map(Double.init), nExpert = l.count
        let scores: [Double]
        switch r.scoring {
        case .softmax:
            let m = l.max()!
            let e = l.map { exp($0 - m) }
            let s = e.reduce(0, +)
            scores = e.map { $0 / s }
        case .sigmoid:
            scores = l.map { 1 / (1 + exp(-$0)) }
        }
        let choice = (0..<nExpert).map { scores[$0] + Double(r.selectionBias?[$0] ?? 0) }
        var allowed = [Bool](repeating: true, count: nExpert)
        if r.groups > 1 && r.groupsUsed < r.groups {
            let per = nExpert / r.groups
            let groupScore = (0..<r.groups).map { g -> Double in
                let s = choice[g * per..<(g + 1) * per].sorted(by: >)
                return r.groupScore == .max ? s[0] : s[0] + s[1]
            }
            let ranked = (0..<r.groups).sorted { groupScore[$0] != groupScore[$1] ? groupScore[$0] > groupScore[$1] : $0 < $1 }
            let kept = Set(ranked.prefix(r.groupsUsed))
            for e in 0..<nExpert where !kept.contains(e / per) { allowed[e] = false }
        }
        let ranked = (0..<nExpert).filter { allowed[$0] }.sorted { choice[$0] != choice[$1] ? choice[$0] > choice[$1] : $0 < $1 }
        let chosen = Array(ranked.prefix(r.topK))
        var w = chosen.map { scores[$0] }
        if r.normalizeTopK {
            let sum = max(w.reduce(0, +), 6.103515625e-5)
            w = w.map { $0 / sum }
        }
        w = w.map { $0 * Double(r.scale) }
        return (chosen.map { Int32($0) }, w)
    }

    // MARK: 11. expert executor

    /// `submit` + `wait` add `Σ_j w_j · down_e(silu(gate_e x) · up_e x)` to an output that already holds values,
    /// for n ∈ {1, 3, 16, 40}, against the reference in Double with the decoded weights; and each token's result in
    /// a batch of 40 has the bits of that token alone. Expert 3 is chosen by 36 of the 40 tokens (the CPU backend's
    /// tiled path for an expert with many rows; a device's tiles over each expert's pairs with more than one group).
    public func checkExpertExecutor() throws {
        try expertExecutorCases(label: "expert executor", prepare: { try backend.prepareStack($0) }) { n, d, f in
            backend.makeExpertExecutor(nExpert: n, dim: d, ff: f)
        }
    }

    /// The same with the expert weights on the CPU and the rest in this backend's memory (the hybrid path: the
    /// backend stages activations to the CPU executor and the result back, `makeStagedExpertExecutor`). Backends
    /// that need no staging (the CPU) skip it with a note.
    public func checkStagedExpertExecutor() throws {
        let cpu = CPUBackend(threads: 2)
        guard backend.device != .cpu,
              backend.makeStagedExpertExecutor(cpu.makeExpertExecutor(nExpert: 1, dim: 32, ff: 32), innerDevice: .cpu, dim: 32) != nil else {
            print("[\(name)] staged expert executor: not applicable (the experts are already in this backend's memory)")
            return
        }
        try expertExecutorCases(label: "staged expert executor (experts on cpu)", prepare: { try cpu.prepareStack($0) }) { n, d, f in
            backend.makeStagedExpertExecutor(cpu.makeExpertExecutor(nExpert: n, dim: d, ff: f), innerDevice: .cpu, dim: d)!
        }
    }

    func expertExecutorCases(label: String, prepare: (WeightRef) throws -> WeightStack,
                             make: (_ nExpert: Int, _ dim: Int, _ ff: Int) -> any ExpertExecutor) throws {
        let b = backend
        var rng = SplitMix64(seed: 11)
        let nExpert = 8, maxN = 40
        let cases: [(GGMLType, dim: Int, ff: Int, topK: Int, bound: Double)] = [
            (.q8_0, 64, 96, 2, Bound.q8),
            (.q4_K, 256, 256, 3, Bound.q8),
            (.q6_K, 256, 256, 2, Bound.q8),
            (.f16, 64, 32, 2, Bound.f32),
        ]
        for (type, dim, ff, topK, bound) in cases where Host.canMake(type) {
            let gateH = try Host.weight(type, name: "blk.1.ffn_gate_exps.weight", rows: ff, cols: dim, count: nExpert, rng: &rng)
            let upH = try Host.weight(type, name: "blk.1.ffn_up_exps.weight", rows: ff, cols: dim, count: nExpert, rng: &rng)
            let downH = try Host.weight(type, name: "blk.1.ffn_down_exps.weight", rows: dim, cols: ff, count: nExpert, rng: &rng)
            let experts = ExpertWeights(gate: try prepare(gateH.ref), up: try prepare(upH.ref), down: try prepare(downH.ref))
            let executor = make(nExpert, dim, ff)
            executor.reserve(maxTokens: maxN, topK: topK)

            let x = rng.normals(maxN * dim, scale: 0.1)
            var ids: [Int32] = []
            for t in 0..<maxN {
                var chosen = t < 36 ? [3] : []
                while chosen.count < topK {
                    let e = rng.int(nExpert)
                    if !chosen.contains(e) { chosen.append(e) }
                }
                if t % 2 == 1 { chosen.reverse() }
                ids += chosen.map { Int32($0) }
            }
            let weights = rng.uniforms(maxN * topK, 0.1, 1)

            // Reference: Σ_j w_j · down_e(silu(gate_e x) · up_e x), in Double.
            var added = [Double](repeating: 0, count: maxN * dim)
            let gates = (0..<nExpert).map { Array(gateH.matrix($0)) }, ups = (0..<nExpert).map { Array(upH.matrix($0)) }
            let downs = (0..<nExpert).map { Array(downH.matrix($0)) }
            for t in 0..<maxN {
                for j in 0..<topK {
                    let e = Int(ids[t * topK + j])
                    var h = [Double](repeating: 0, count: ff)
                    for r in 0..<ff {
                        var g = 0.0, u = 0.0
                        for c in 0..<dim {
                            g += Double(gates[e][r * dim + c]) * Double(x[t * dim + c])
                            u += Double(ups[e][r * dim + c]) * Double(x[t * dim + c])
                        }
                        h[r] = Reference.silu(g) * u
                    }
                    for r in 0..<dim {
                        var d = 0.0
                        for c in 0..<ff { d += Double(downs[e][r * ff + c]) * h[c] }
                        added[t * dim + r] += Double(weights[t * topK + j]) * d
                    }
                }
            }
            // What `out` holds before: values as large as what the experts add, so that overwriting instead of
            // adding, or adding twice, is an error of the order of the result.
            let rms = Float((added.reduce(0) { $0 + $1 * $1 } / Double(added.count)).squareRoot())
            let out0 = rng.normals(maxN * dim, scale: rms)
            let xt = b.upload(x), idt = b.int32Tensor(ids), wt = b.upload(weights)
            let out = b.allocate((maxN + 1) * dim)

            var worst = 0.0
            var batched: [Float] = []
            for n in [1, 3, 16, maxN] {
                b.set(out, out0 + [Float](repeating: Self.sentinel, count: dim))
                executor.submit(experts, x: xt, ids: idt, n: n, topK: topK)
                executor.wait(weights: wt, accumulateInto: out, n: n)
                let all = b.floats(out, (maxN + 1) * dim)
                // The error of what was added (the values already there would hide the error of the experts).
                let got = (0..<n * dim).map { all[$0] - out0[$0] }
                worst = max(worst, nmse(got, Array(added[0..<n * dim])))
                Expect.equal(Array(all[n * dim..<maxN * dim]), Array(out0[n * dim..<maxN * dim]),
                               "[\(name)] \(label) \(type) n=\(n): changed rows after n")
                expectUntouched(all, maxN * dim..<(maxN + 1) * dim, "\(label) \(type)")
                if n == maxN { batched = Array(all[0..<maxN * dim]) }
            }
            expect("\(label) \(type) dim \(dim) ff \(ff) top-\(topK) (added part)", worst: worst, bound: bound)

            // Batch invariance: each token alone has the bits it has in the whole batch (where the backend keeps it;
            // else within the bound).
            let single = b.allocate(dim)
            var aloneAdded: [Float] = []
            for t in 0..<maxN {
                b.set(single, Array(out0[t * dim..<(t + 1) * dim]))
                executor.submit(experts, x: xt.offset(t * dim), ids: idt.offset(t * topK), n: 1, topK: topK)
                executor.wait(weights: wt.offset(t * topK), accumulateInto: single, n: 1)
                let alone = b.floats(single, dim)
                if !b.batchInvariant {
                    aloneAdded += (0..<dim).map { alone[$0] - out0[t * dim + $0] }
                    continue
                }
                if let i = firstBitDifference(alone, Array(batched[t * dim..<(t + 1) * dim])) {
                    Expect.fail("[\(name)] \(label) \(type): token \(t) alone gives \(alone[i]) at \(i), "
                            + "\(batched[t * dim + i]) in a batch of \(maxN) (batch invariance)")
                    break
                }
            }
            b.release(single)
            if !b.batchInvariant {
                expect("\(label) \(type) each token alone (not batch invariant)", worst: nmse(aloneAdded, added),
                       bound: bound)
            }
        }
    }
}
