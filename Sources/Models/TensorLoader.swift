import Backend
import GGUF
import Quant

/// Typed access to one architecture's hyper-parameters and tensors in a GGUF file (or any `TensorSource`, such
/// as a Hugging Face directory seen the GGUF way), with errors that name the file, the key or tensor, and
/// expected vs actual shape.
public struct TensorLoader {
    public let file: any TensorSource
    public let arch: String

    public init(file: any TensorSource, arch: String) {
        self.file = file
        self.arch = arch
    }

    // MARK: hyper-parameters (`{arch}.{key}`)

    public func int(_ key: String) throws -> Int {
        guard let v = optionalInt(key) else { throw ModelError("\(file.path): missing or non-integer metadata '\(arch).\(key)'") }
        return v
    }

    public func optionalInt(_ key: String) -> Int? { file["\(arch).\(key)"]?.int }

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

    /// A `[rows, cols]` matrix (ggml shape `[cols, rows]`).
    public func matrix(_ name: String, rows: Int, cols: Int) throws -> WeightMatrix {
        let t = try info(name)
        guard t.shape == [cols, rows] else {
            throw ModelError("\(file.path): tensor '\(name)' has shape \(t.shape), expected [\(cols), \(rows)]")
        }
        do {
            return try WeightMatrix(name: name, type: t.type, rows: rows, cols: cols, data: file.data(of: t), owner: file)
        } catch let e as BackendError {
            throw ModelError("\(file.path): \(e.description)")
        }
    }

    /// `count` stacked `[rows, cols]` matrices (ggml shape `[cols, rows, count]`): MoE experts, MLA heads.
    public func stack(_ name: String, count: Int, rows: Int, cols: Int) throws -> WeightStack {
        let t = try info(name)
        guard t.shape == [cols, rows, count] else {
            throw ModelError("\(file.path): tensor '\(name)' has shape \(t.shape), expected [\(cols), \(rows), \(count)]")
        }
        do {
            return try WeightStack(name: name, type: t.type, count: count, rows: rows, cols: cols, data: file.data(of: t),
                                   owner: file)
        } catch let e as BackendError {
            throw ModelError("\(file.path): \(e.description)")
        }
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
}
