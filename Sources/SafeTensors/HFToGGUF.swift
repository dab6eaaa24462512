import Dispatch
import Foundation
import GGUF
import Quant

/// `ktransformers convert`: the GGUF file llama.cpp's converter would write for this checkpoint (the same names,
/// metadata and transforms the model reads through `TensorSource`), written one tensor at a time so memory stays
/// near the size of the largest tensor; each chunk of rows is converted on all cores. Tokenizer metadata is written
/// where `HFTokenizer` converted tokenizer.json.
extension HFCheckpoint {
    /// The `--type` names and their ggml types.
    public static let conversionTypes: [String: GGMLType] = ["f32": .f32, "f16": .f16, "bf16": .bf16, "q8_0": .q8_0,
                                                              "q4_0": .q4_0, "q4_k": .q4_K, "q6_k": .q6_K]

    /// Writes this checkpoint as GGUF to `path` with matrices in `target` (see `outputType`); returns how many
    /// tensors went to each type.
    @discardableResult
    public func writeGGUF(to path: String, type target: GGMLType) throws -> [GGMLType: Int] {
        let hf = self
        guard Self.conversionTypes.values.contains(target) else {
            throw SafeTensorsError(path: path, "cannot convert to \(target) (supported: \(Self.conversionTypes.keys.sorted().joined(separator: ", ")))")
        }
        var w = GGUFWriter()
        for key in hf.metadataKeys {
            if let v = hf.metadata[key] { w.set(key, v) }
        }
        w.set("general.file_type", .uint32(Self.fileType(target)))
        if target.blockSize > 1 { w.set("general.quantization_version", .uint32(2)) }
        let infos = hf.tensors.map { (name: $0.name, shape: $0.shape, type: Self.outputType($0, target: target)) }
        var counts: [GGMLType: Int] = [:]
        for t in infos { counts[t.type, default: 0] += 1 }
        let workers = max(1, ProcessInfo.processInfo.activeProcessorCount)
        try w.write(to: path, streaming: infos) { i, sink in
            let t = hf.tensors[i], to = infos[i].type
            try hf.withData(of: t) { src in
                if t.type == to {
                    try sink(UnsafeRawBufferPointer(start: src, count: t.byteCount))
                    return
                }
                guard let from = QuantRegistry.kernels(for: t.type), let q = QuantRegistry.kernels(for: to)?.quantize else {
                    throw SafeTensorsError(path: hf.path, "cannot convert tensor '\(t.name)' from \(t.type) to \(to)")
                }
                // A chunk of whole rows at a time: ~4M elements of f32 scratch whatever the tensor's size.
                let cols = t.shape[0], rows = t.elementCount / cols
                let chunkRows = max(1, (1 << 22) / cols)
                let inRowBytes = t.type.byteCount(elements: cols)!, outRowBytes = to.byteCount(elements: cols)!
                let f = UnsafeMutablePointer<Float>.allocate(capacity: chunkRows * cols)
                let out = UnsafeMutableRawPointer.allocate(byteCount: chunkRows * outRowBytes, alignment: 64)
                defer { f.deallocate(); out.deallocate() }
                var r = 0
                while r < rows {
                    let n = min(chunkRows, rows - r), r0 = r
                    // Rows convert independently: split the chunk over the cores (the same bytes as in one go).
                    let parts = min(n, workers), per = (n + parts - 1) / parts
                    // The parts write disjoint rows of `f` and `out`.
                    nonisolated(unsafe) let (s, fs, o) = (src, f, out)
                    DispatchQueue.concurrentPerform(iterations: parts) { i in
                        let a = i * per, b = min(n, a + per)
                        guard a < b else { return }
                        from.dequantize(s + (r0 + a) * inRowBytes, fs + a * cols, (b - a) * cols)
                        q(fs + a * cols, o + a * outRowBytes, (b - a) * cols)
                    }
                    try sink(UnsafeRawBufferPointer(start: out, count: n * outRowBytes))
                    r += n
                }
            }
        }
        return counts
    }

    /// The type a tensor is stored in: 1-D tensors (norms, biases, `exp_probs_b`, `rope_freqs`) and MoE routers
    /// stay f32; matrices take `target` if their rows are whole blocks of it, else the next wider type that fits.
    public static func outputType(_ t: GGUFTensorInfo, target: GGMLType) -> GGMLType {
        let name = t.name
        if t.shape.count < 2 || name.hasSuffix("ffn_gate_inp.weight") || name.hasSuffix("ffn_gate_inp_shexp.weight") {
            return .f32
        }
        for candidate in [target, .q8_0, .f16] where t.shape[0] % candidate.blockSize == 0 {
            if candidate == .q8_0 && target.blockSize == 1 { continue }  // never narrower than asked
            return candidate
        }
        return .f16
    }

    /// llama.cpp's `llama_ftype` for the file's main type.
    public static func fileType(_ t: GGMLType) -> UInt32 {
        switch t {
        case .f32: 0
        case .f16: 1
        case .q4_0: 2
        case .q8_0: 7
        case .q4_K: 15  // Q4_K_M
        case .q6_K: 18
        case .bf16: 32
        default: 0
        }
    }
}
