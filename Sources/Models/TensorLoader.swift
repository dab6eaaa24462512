import Backend
import GGUF
import Quant

/// Typed access to one architecture's hyper-parameters and tensors in a GGUF file (or any `TensorSource`, such
/// as a Hugging Face directory seen the GGUF way), with errors that name the file, the key or tensor, and
/// expected vs actual shape. Each weight is described (`WeightRef`) and handed to the backend of the device the
/// placement gives its name, which prepares it in its own form.
public struct TensorLoader {
    public let file: any TensorSource
    public let arch: String
    /// The backend that runs the model; norm weights, biases and every weight but routed experts live there.
    public let backend: any ComputeBackend
    /// A backend for each device the placement may name (the main one included).
    public let backends: [Device: any ComputeBackend]
    public let placement: Placement
    private let executors = ExecutorCache()
    /// Reports the share of the file's tensor bytes prepared so far (load progress).
    let progress: LoadProgress?
    /// The part of a tensor-parallel model this load builds, and the collective its shards sum through (nil: the
    /// whole model).
    public let parallel: ParallelRank?
    /// This load's shard (`TensorShard.whole` without tensor parallelism).
    public var shard: TensorShard { parallel?.shard ?? .whole }

    public init(file: any TensorSource, arch: String, backend: any ComputeBackend,
                backends: [Device: any ComputeBackend] = [:], placement: Placement = .cpu,
                progress: (@Sendable (_ done: Int, _ total: Int) -> Void)? = nil) {
        self.init(file: file, arch: arch, backend: backend, backends: backends, placement: placement,
                  progress: progress.map { LoadProgress(total: file.tensors.reduce(0) { $0 + $1.byteCount }, report: $0) },
                  parallel: nil)
    }

    init(file: any TensorSource, arch: String, backend: any ComputeBackend, backends: [Device: any ComputeBackend],
         placement: Placement, progress: LoadProgress?, parallel: ParallelRank?) {
        self.progress = progress
        self.parallel = parallel
        self.file = file
        self.arch = arch
        self.backend = backend
        var all = backends
        all[backend.device] = backend
        self.backends = all
        var p = placement
        p.main = backend.device
        self.placement = p
    }

    // MARK: hyper-parameters (`{arch}.{key}`)

    public func int(_ key: String) throws -> Int {
        guard let v = try optionalInt(key) else { throw ModelError("\(file.path): missing or non-integer metadata '\(arch).\(key)'") }
        return v
    }

    /// The integer `{arch}.{key}`, nil when absent. Every integer hyper-parameter is a size or a count, so a value
    /// below 0 or above 2^24 (a damaged or hostile file) is refused here, naming the key, before anything is sized
    /// by it.
    public func optionalInt(_ key: String) throws -> Int? {
        guard let v = file["\(arch).\(key)"]?.int else { return nil }
        guard v >= 0, v <= 1 << 24 else {
            throw ModelError("\(file.path): metadata '\(arch).\(key)' is \(v), outside 0...\(1 << 24)")
        }
        return v
    }

    /// A size or count that must be at least 1 (layers, widths, heads, context length).
    public func count(_ key: String) throws -> Int {
        let v = try int(key)
        guard v >= 1 else { throw ModelError("\(file.path): metadata '\(arch).\(key)' is \(v); it must be at least 1") }
        return v
    }

    public func float(_ key: String) throws -> Float {
        guard let v = optionalFloat(key) else { throw ModelError("\(file.path): missing or non-numeric metadata '\(arch).\(key)'") }
        return v
    }

    public func optionalFloat(_ key: String) -> Float? { file["\(arch).\(key)"]?.double.map(Float.init) }

    public func optionalBool(_ key: String) -> Bool? { file["\(arch).\(key)"]?.bool }

    /// A per-layer value that may be stored as one number or an array of `layers` numbers.
    public func perLayerInt(_ key: String, layers: Int) throws -> [Int] {
        guard let v = file["\(arch).\(key)"] else { throw ModelError("\(file.path): missing metadata '\(arch).\(key)'") }
        if let i = v.int { return Array(repeating: i, count: layers) }
        if let a = v.array?.ints, a.count == layers { return a }
        throw ModelError("\(file.path): metadata '\(arch).\(key)' must be an integer or an array of \(layers) integers")
    }

    // MARK: tensors

    public func has(_ name: String) -> Bool { file.tensor(named: name) != nil }

    func info(_ name: String) throws -> GGUFTensorInfo {
        guard let t = file.tensor(named: name) else { throw ModelError("\(file.path): missing tensor '\(name)'") }
        return t
    }

    /// The backend that prepares tensor `name`: its placement's device, which must be the main one except for
    /// routed experts.
    func backend(for name: String) throws -> any ComputeBackend {
        let d = placement.device(for: name)
        if d != placement.main && !Placement.isRoutedExpert(name) {
            throw ModelError("\(file.path): placement puts tensor '\(name)' on \(d), but only routed experts (blk.N.ffn_*_exps) may live off the main device \(placement.main)")
        }
        guard let b = backends[d] else {
            throw ModelError("\(file.path): placement puts tensor '\(name)' on \(d), which has no backend here")
        }
        return b
    }

    /// A `[rows, cols]` matrix (ggml shape `[cols, rows]`).
    public func matrix(_ name: String, rows: Int, cols: Int) throws -> WeightMatrix {
        let t = try info(name)
        guard t.shape == [cols, rows] else {
            throw ModelError("\(file.path): tensor '\(name)' has shape \(t.shape), expected [\(cols), \(rows)]")
        }
        return try prepare(WeightRef(name: name, type: t.type, shape: t.shape, data: file.data(of: t), owner: file))
    }

    /// Rows `keepRows` of the `[rows, cols]` matrix `name` (a tensor-parallel shard's output features: its heads,
    /// its part of the feed-forward width), read in place.
    public func matrix(_ name: String, rows: Int, cols: Int, keepRows: Range<Int>) throws -> WeightMatrix {
        guard keepRows != 0..<rows else { return try matrix(name, rows: rows, cols: cols) }
        let t = try info(name)
        guard t.shape == [cols, rows] else {
            throw ModelError("\(file.path): tensor '\(name)' has shape \(t.shape), expected [\(cols), \(rows)]")
        }
        guard keepRows.lowerBound >= 0, keepRows.upperBound <= rows, let rowBytes = t.type.byteCount(elements: cols) else {
            throw ModelError("\(file.path): tensor '\(name)': rows \(keepRows) of \(rows) cannot be split off")
        }
        let data = file.data(of: t) + keepRows.lowerBound * rowBytes
        return try prepare(WeightRef(name: name, type: t.type, shape: [cols, keepRows.count], data: data, owner: file))
    }

    /// Columns `keepCols` of every row of the `[rows, cols]` matrix `name` (a tensor-parallel shard's input
    /// features: the attention output's and the down projection's part of their input), copied out at load. The
    /// range must fall on the type's block boundaries.
    public func matrix(_ name: String, rows: Int, cols: Int, keepCols: Range<Int>) throws -> WeightMatrix {
        guard keepCols != 0..<cols else { return try matrix(name, rows: rows, cols: cols) }
        let t = try info(name)
        guard t.shape == [cols, rows] else {
            throw ModelError("\(file.path): tensor '\(name)' has shape \(t.shape), expected [\(cols), \(rows)]")
        }
        let copy = try slice(t, name: name, count: 1, rows: rows, cols: cols, keepRows: 0..<rows, keepCols: keepCols)
        return try prepare(WeightRef(name: name, type: t.type, shape: [keepCols.count, rows], data: UnsafeRawPointer(copy.pointer),
                                     owner: copy))
    }

    /// `count` stacked `[rows, cols]` matrices (ggml shape `[cols, rows, count]`): MoE experts, MLA heads.
    public func stack(_ name: String, count: Int, rows: Int, cols: Int) throws -> WeightStack {
        let t = try info(name)
        guard t.shape == [cols, rows, count] else {
            throw ModelError("\(file.path): tensor '\(name)' has shape \(t.shape), expected [\(cols), \(rows), \(count)]")
        }
        return try prepareStack(WeightRef(name: name, type: t.type, shape: t.shape, data: file.data(of: t), owner: file))
    }

    /// `count` stacked `[rows, cols]` matrices keeping, of each, the rows `keepRows` (a tensor-parallel shard's part
    /// of every expert's width) or the columns `keepCols` (on the type's block boundaries), copied out at load.
    public func stack(_ name: String, count: Int, rows: Int, cols: Int, keepRows: Range<Int>? = nil,
                      keepCols: Range<Int>? = nil) throws -> WeightStack {
        let r = keepRows ?? 0..<rows, c = keepCols ?? 0..<cols
        guard r != 0..<rows || c != 0..<cols else { return try stack(name, count: count, rows: rows, cols: cols) }
        let t = try info(name)
        guard t.shape == [cols, rows, count] else {
            throw ModelError("\(file.path): tensor '\(name)' has shape \(t.shape), expected [\(cols), \(rows), \(count)]")
        }
        let copy = try slice(t, name: name, count: count, rows: rows, cols: cols, keepRows: r, keepCols: c)
        return try prepareStack(WeightRef(name: name, type: t.type, shape: [c.count, r.count, count],
                                          data: UnsafeRawPointer(copy.pointer), owner: copy))
    }

    /// Rows `r` and columns `c` (on the type's block boundaries) of each of the `count` `[rows, cols]` matrices of
    /// tensor `t`, copied into a buffer of their own.
    private func slice(_ t: GGUFTensorInfo, name: String, count: Int, rows: Int, cols: Int, keepRows r: Range<Int>,
                       keepCols c: Range<Int>) throws -> SliceBuffer {
        guard r.lowerBound >= 0, r.upperBound <= rows, c.lowerBound >= 0, c.upperBound <= cols,
              let rowBytes = t.type.byteCount(elements: cols), let skip = t.type.byteCount(elements: c.lowerBound),
              let keep = t.type.byteCount(elements: c.count) else {
            throw ModelError("\(file.path): tensor '\(name)' (\(t.type)): columns \(c) of \(cols) do not fall on its blocks, so tensor parallelism cannot split it there (use fewer shards)")
        }
        let copy = SliceBuffer(bytes: keep * r.count * count)
        let src = file.data(of: t)
        var dst = copy.pointer
        for e in 0..<count {
            for row in r {
                dst.copyMemory(from: src + (e * rows + row) * rowBytes + skip, byteCount: keep)
                dst += keep
            }
        }
        return copy
    }

    /// A weight made at load (not a tensor of the file as it is), prepared by the backend of its name's device.
    func prepare(_ ref: WeightRef) throws -> WeightMatrix {
        defer { progress?.add(ref.byteCount ?? 0) }
        do { return try backend(for: ref.name).prepare(ref) } catch let e as BackendError {
            throw ModelError("\(file.path): \(e.description)")
        }
    }

    func prepareStack(_ ref: WeightRef) throws -> WeightStack {
        defer { progress?.add(ref.byteCount ?? 0) }
        do { return try backend(for: ref.name).prepareStack(ref) } catch let e as BackendError {
            throw ModelError("\(file.path): \(e.description)")
        }
    }

    /// The executor of the routed experts of layer `layer` (one per device, shared by the layers placed there).
    func expertExecutor(layer: Int, nExpert: Int, dim: Int, ff: Int) throws -> any ExpertExecutor {
        let b = try backend(for: "blk.\(layer).ffn_gate_exps.weight")
        if let e = executors.byDevice[b.device] { return e }
        var e = b.makeExpertExecutor(nExpert: nExpert, dim: dim, ff: ff)
        if b.device != backend.device {
            // Experts on another device than the model (the hybrid path: routed experts on the CPU, the rest on
            // the GPU): the model's backend stages the activations across and the result back.
            guard let staged = backend.makeStagedExpertExecutor(e, innerDevice: b.device, dim: dim) else {
                throw ModelError("\(file.path): placement puts the routed experts of layer \(layer) on \(b.device) while the model runs on \(backend.device), and \(backend.device) cannot stage experts to \(b.device)")
            }
            e = staged
        }
        executors.byDevice[b.device] = e
        return e
    }

    public func optionalMatrix(_ name: String, rows: Int, cols: Int) throws -> WeightMatrix? {
        has(name) ? try matrix(name, rows: rows, cols: cols) : nil
    }

    /// A vector of `count` values decoded to f32 (norm weights, biases).
    public func vector(_ name: String, count: Int) throws -> [Float] {
        let t = try info(name)
        guard t.elementCount == count else {
            throw ModelError("\(file.path): tensor '\(name)' has shape \(t.shape), expected \(count) elements")
        }
        guard let k = QuantRegistry.kernels(for: t.type) else {
            throw ModelError("\(file.path): tensor '\(name)' has type \(t.type), which has no kernels")
        }
        var out = [Float](repeating: 0, count: count)
        out.withUnsafeMutableBufferPointer { k.dequantize(file.data(of: t), $0.baseAddress!, count) }
        return out
    }

    public func optionalVector(_ name: String, count: Int) throws -> [Float]? {
        has(name) ? try vector(name, count: count) : nil
    }

    /// A vector (norm weight, bias) decoded to f32 and put in the main backend's memory.
    public func constant(_ name: String, count: Int) throws -> Tensor {
        backend.upload(try vector(name, count: count))
    }

    /// Elements `keep` of the vector `name` (a shard's part of a bias), in the main backend's memory.
    public func constant(_ name: String, count: Int, keep: Range<Int>) throws -> Tensor {
        backend.upload(Array(try vector(name, count: count)[keep]))
    }

    public func optionalConstant(_ name: String, count: Int) throws -> Tensor? {
        has(name) ? try constant(name, count: count) : nil
    }
}

/// A copy of part of a weight made at load (a tensor-parallel shard's columns), alive as long as its weight.
final class SliceBuffer: @unchecked Sendable {
    let pointer: UnsafeMutableRawPointer
    init(bytes: Int) { pointer = UnsafeMutableRawPointer.allocate(byteCount: max(1, bytes), alignment: 64) }
    deinit { pointer.deallocate() }
}

/// One shard of a tensor-parallel load: which part it builds and the collective its model sums through.
public struct ParallelRank: Sendable {
    public let shard: TensorShard
    public let collective: any Collective
    public init(shard: TensorShard, collective: any Collective) {
        precondition(collective.ranks == shard.count)
        self.shard = shard
        self.collective = collective
    }
}

/// The expert executors one load made, by device.
private final class ExecutorCache {
    var byDevice: [Device: any ExpertExecutor] = [:]
}

/// Bytes of weights prepared so far out of the file's total, reported as they grow.
final class LoadProgress: @unchecked Sendable {
    // NOTE: @unchecked: a model is loaded on one thread.
    let total: Int
    private var done = 0
    private let report: @Sendable (Int, Int) -> Void

    init(total: Int, report: @escaping @Sendable (Int, Int) -> Void) {
        self.total = max(1, total)
        self.report = report
    }

    func add(_ bytes: Int) {
        done += bytes
        report(min(done, total), total)
    }
}
