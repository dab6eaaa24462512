import Foundation
import GGUF
import Quant

/// A Hugging Face checkpoint directory (`config.json` + `*.safetensors`, sharded or not) seen exactly as the GGUF
/// file llama.cpp's `convert_hf_to_gguf.py` would make of it: `config.json` becomes GGUF metadata
/// (`general.architecture`, `{arch}.embedding_length`, `{arch}.rope.freq_base`, `{arch}.rope.scaling.*`, ...) and
/// the tensors get llama.cpp's names, ggml shapes and the converter's transforms (`HFMapping`): Llama/Mixtral Q/K
/// rows permuted for adjacent-pair RoPE, Gemma norm weights + 1, per-expert tensors stacked into
/// `ffn_*_exps` `[cols, rows, nExpert]`, DeepSeek's `kv_b_proj` split into `attn_k_b` / `attn_v_b`, Llama 3's
/// `rope_freqs` computed. So the model code reads both kinds of source the same way (`TensorSource`).
///
/// Tensors that need no transform are read in place from the mapping (F32, F16 and BF16 keep their type); the
/// others are built on first use, in their source type where they only move elements (F32 for Gemma's norms),
/// and kept as long as this object lives. `convert` uses `withData(of:)` instead, which does not keep them.
/// Everything is validated when the directory is opened, so `data(of:)` cannot fail.
public final class HFCheckpoint: TensorSource, @unchecked Sendable {
    public let path: String
    /// The `architectures[0]` of config.json (or its `model_type`).
    public let hfArchitecture: String
    public let config: HFConfig
    public let metadata: [String: GGUFValue]
    /// Metadata keys in the order llama.cpp's converter writes them.
    public let metadataKeys: [String]
    /// The GGUF view of the tensors, in writing order; `fileOffset` is the index into this array.
    public let tensors: [GGUFTensorInfo]
    public let checkpoint: SafeTensorsCheckpoint
    /// Why the directory's tokenizer.json could not be converted (nil: converted, or there is none).
    public let tokenizerProblem: String?
    let plans: [TensorPlan]
    private let index: [String: Int]
    private let lock = NSLock()
    private var built: [Int: Buffer] = [:]

    /// Whether `path` is a directory holding `config.json`.
    public static func isCheckpointDirectory(_ path: String) -> Bool {
        var isDir: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &isDir) && isDir.boolValue
            && FileManager.default.fileExists(atPath: URL(fileURLWithPath: path).appendingPathComponent("config.json").path)
    }

    public init(directory: String) throws {
        path = directory
        let cfgPath = URL(fileURLWithPath: directory).appendingPathComponent("config.json").path
        guard let data = FileManager.default.contents(atPath: cfgPath) else {
            throw SafeTensorsError(path: directory, "not a Hugging Face checkpoint directory (no readable config.json)")
        }
        let root = try JSONValue.parse(data, what: cfgPath)
        guard root.object != nil else { throw SafeTensorsError(path: cfgPath, "is not a JSON object") }
        checkpoint = try SafeTensorsCheckpoint(directory: directory)
        let mapping = try HFMapping(root: root, configPath: cfgPath, checkpoint: checkpoint,
                                    name: URL(fileURLWithPath: directory).standardizedFileURL.lastPathComponent)
        hfArchitecture = mapping.hfArchitecture
        config = mapping.config
        var md = mapping.metadata, keys = mapping.metadataKeys
        do {
            for (k, v) in try HFTokenizer.metadata(directory: directory, config: mapping.config.json) ?? [] where md[k] == nil {
                md[k] = v
                keys.append(k)
            }
            tokenizerProblem = nil
        } catch {
            tokenizerProblem = "\(error)"
        }
        metadata = md
        metadataKeys = keys
        plans = mapping.plans
        var infos: [GGUFTensorInfo] = []
        var idx: [String: Int] = [:]
        for (i, p) in plans.enumerated() {
            infos.append(GGUFTensorInfo(name: p.name, shape: p.shape, type: p.type, sourceIndex: i,
                                        byteCount: p.type.byteCount(elements: p.shape.reduce(1, *)) ?? 0))
            idx[p.name] = i
        }
        tensors = infos
        index = idx
    }

    public func tensor(named name: String) -> GGUFTensorInfo? { index[name].map { tensors[$0] } }

    public func data(of t: GGUFTensorInfo) -> UnsafeRawPointer {
        let i = index[t.name]!
        if case .direct(let src) = plans[i].op, let p = checkpoint.data(src), Int(bitPattern: p) % 32 == 0 {
            return p
        }
        lock.lock()
        defer { lock.unlock() }
        if let b = built[i] { return UnsafeRawPointer(b.p) }
        let b = build(plans[i])
        built[i] = b
        return UnsafeRawPointer(b.p)
    }

    /// Calls `body` with the tensor's data without keeping a built copy (for streaming conversion).
    public func withData<R>(of t: GGUFTensorInfo, _ body: (UnsafeRawPointer) throws -> R) rethrows -> R {
        let i = index[t.name]!
        if case .direct(let src) = plans[i].op, let p = checkpoint.data(src) { return try body(p) }
        lock.lock()
        let cached = built[i]
        lock.unlock()
        if let cached { return try body(UnsafeRawPointer(cached.p)) }
        let b = build(plans[i])
        return try withExtendedLifetime(b) { try body(UnsafeRawPointer(b.p)) }
    }

    /// The HF tensors a GGUF tensor is made of (for messages and `inspect`).
    public func sources(of name: String) -> [String] {
        guard let i = index[name] else { return [] }
        switch plans[i].op {
        case .direct(let s), .addOne(let s): return [s]
        case .rows(let segs): return segs.map(\.source).reduce(into: []) { if $0.last != $1 { $0.append($1) } }
        case .kvbK(let s, _, _, _, _): return [s]
        case .values: return []
        }
    }

    private func build(_ plan: TensorPlan) -> Buffer {
        let count = plan.shape.reduce(1, *)
        let bytes = plan.type.byteCount(elements: count) ?? 0
        let b = Buffer(bytes: bytes)
        switch plan.op {
        case .direct(let s):
            b.p.copyMemory(from: checkpoint.data(s)!, byteCount: bytes)
        case .rows(let segs):
            var at = 0
            for s in segs {
                let info = checkpoint.tensor(named: s.source)!
                // A 1-D tensor's rows are its elements (Q/K biases are permuted like the weight rows).
                let rowBytes = (info.shape.count >= 2 ? info.rowLength : 1) * info.dtype.size
                let n = s.count * rowBytes
                (b.p + at).copyMemory(from: checkpoint.data(s.source)! + s.start * rowBytes, byteCount: n)
                at += n
            }
            precondition(at == bytes, "\(plan.name): built \(at) bytes, expected \(bytes)")
        case .kvbK(let s, let nHead, let nope, let vHead, let kvLora):
            // k_b[h][c][i] = kv_b[h * (nope + vHead) + i][c]: the K part of each head, transposed.
            let es = checkpoint.tensor(named: s)!.dtype.size
            let src = checkpoint.data(s)!
            for h in 0..<nHead {
                for c in 0..<kvLora {
                    for i in 0..<nope {
                        let from = ((h * (nope + vHead) + i) * kvLora + c) * es
                        let to = ((h * kvLora + c) * nope + i) * es
                        (b.p + to).copyMemory(from: src + from, byteCount: es)
                    }
                }
            }
        case .addOne(let s):
            let info = checkpoint.tensor(named: s)!
            let f = b.p.assumingMemoryBound(to: Float.self)
            // Validated at open: the dtype decodes.
            try! SafeTensorsFile.decode(checkpoint.data(s)!, info.dtype, f, count, name: s, path: path)
            for i in 0..<count { f[i] += 1 }
        case .values(let v):
            v.withUnsafeBytes { b.p.copyMemory(from: $0.baseAddress!, byteCount: bytes) }
        }
        return b
    }
}

/// One GGUF tensor of an `HFCheckpoint`: its name, ggml shape and type, and how it is made from the HF tensors.
struct TensorPlan {
    enum Op {
        /// The HF tensor's bytes as they are.
        case direct(String)
        /// Rows (`shape.last` elements each, 1-D tensors: single elements) of HF tensors of one dtype, concatenated.
        case rows([RowSegment])
        /// DeepSeek `attn_k_b` from `kv_b_proj`: per head, the first `nope` rows, transposed.
        case kvbK(String, nHead: Int, nope: Int, vHead: Int, kvLora: Int)
        /// Gemma's norm weights: decoded to f32, plus 1.
        case addOne(String)
        /// Computed f32 values (Llama 3's `rope_freqs`).
        case values([Float])
    }
    let name: String
    let shape: [Int]
    let type: GGMLType
    let op: Op
}

struct RowSegment {
    let source: String
    let start: Int
    let count: Int
}

/// An owned, 64-byte aligned buffer that built tensors live in.
final class Buffer: @unchecked Sendable {
    let p: UnsafeMutableRawPointer
    init(bytes: Int) {
        p = .allocate(byteCount: max(bytes, 1), alignment: 64)
        p.initializeMemory(as: UInt8.self, repeating: 0, count: max(bytes, 1))
    }
    deinit { p.deallocate() }
}
