import ArgumentParser
import Foundation
import GGUF
import Quant

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a GGUF file's metadata and a summary of its tensors.")

    @Argument(help: "GGUF file (default: the installed default model).")
    var file: String?

    @Flag(help: "Also list every tensor.")
    var tensors = false

    func run() throws {
        let f = try LoadOptions(model: file).openGGUF()
        var s = "file: \(f.path)\nGGUF version: \(f.version), \(f.metadata.count) metadata keys, \(f.tensors.count) tensors, alignment \(f.alignment)\n\nmetadata:\n"
        for k in f.metadataKeys {
            s += "  \(k) = \(Inspect.describe(f.metadata[k]!))\n"
        }
        var byType: [GGMLType: (count: Int, bytes: Int, elements: Int)] = [:]
        for t in f.tensors {
            let e = byType[t.type] ?? (0, 0, 0)
            byType[t.type] = (e.count + 1, e.bytes + t.byteCount, e.elements + t.elementCount)
        }
        s += "\ntensors by type:\n"
        let totalBytes = f.tensors.reduce(0) { $0 + $1.byteCount }
        let totalElements = f.tensors.reduce(0) { $0 + $1.elementCount }
        for (type, e) in byType.sorted(by: { $0.value.bytes > $1.value.bytes }) {
            let supported = QuantRegistry.kernels(for: type) != nil ? "" : "  (no kernels)"
            s += "  \(type.description.padding(toLength: 7, withPad: " ", startingAt: 0)) \(String(e.count).leftPad(5)) tensors  \(Inspect.size(e.bytes).leftPad(10))\(supported)\n"
        }
        s += String(format: "  total   %5d tensors  %@  %.1f M parameters, %.2f bits per weight\n", f.tensors.count,
                    Inspect.size(totalBytes).leftPad(10), Double(totalElements) / 1e6,
                    Double(totalBytes) * 8 / Double(max(totalElements, 1)))
        if tensors {
            s += "\ntensors:\n"
            for t in f.tensors { s += "  \(t.name)  \(t.type)  \(t.shape)  \(Inspect.size(t.byteCount))\n" }
        }
        Output.out(s)
    }

    static func size(_ b: Int) -> String {
        b >= 1 << 30 ? String(format: "%.2f GiB", Double(b) / Double(1 << 30))
            : b >= 1 << 20 ? String(format: "%.2f MiB", Double(b) / Double(1 << 20))
            : String(format: "%.1f KiB", Double(b) / 1024)
    }

    static func describe(_ v: GGUFValue) -> String {
        switch v {
        case .string(let s): return s.count > 120 ? (String(s.prefix(120)) + "… (\(s.count) chars)").debugDescription : s.debugDescription
        case .array(let a):
            let head: [String]
            switch a {
            case .string(let x): head = x.prefix(5).map(\.debugDescription)
            case .float32(let x): head = x.prefix(5).map { "\($0)" }
            case .array: head = ["…"]
            default: head = (a.ints ?? []).prefix(5).map(String.init)
            }
            return "[\(a.elementType)] × \(a.count): [\(head.joined(separator: ", "))\(a.count > 5 ? ", …" : "")]"
        case .float32(let x): return "\(x)"
        case .float64(let x): return "\(x)"
        case .bool(let b): return "\(b)"
        default: return v.int.map(String.init) ?? "?"
        }
    }
}

extension String {
    func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}
