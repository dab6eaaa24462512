import ArgumentParser
import Backend
import Foundation
import GGUF
import Yams

/// Which device holds which weights (KTransformers' optimize rules, llama.cpp's `-ot` / `--cpu-moe` /
/// `--n-cpu-moe`), for every command that loads a model.
struct PlacementOptions: ParsableArguments {
    @Option(name: .long, help: "Which device holds which weights: a YAML rules file (a list of {match: GLOB, device: cpu|cuda|cuda:N}), or comma-separated PATTERN=DEVICE rules over GGUF tensor names; first match wins, the rest on the main device. With --device cuda and an MoE model the default is the hybrid placement: routed experts on the CPU, the rest on the GPU.")
    var placement: String?

    @Flag(name: .customLong("cpu-moe"), help: "Keep every MoE layer's routed experts on the CPU (the default with --device cuda).")
    var cpuMoE = false

    @Option(name: .customLong("n-cpu-moe"), help: "Keep the routed experts of the first N MoE layers on the CPU and the rest on the GPU (0: all experts on the GPU).")
    var nCpuMoE: Int?

    @Option(name: .customLong("defer-experts"), help: "Hybrid MoE (--device cuda, experts on the CPU): run each token's N lowest-scored routed experts of a layer while the GPU goes on to the next layer, their sum joining one layer late (KTransformers' expert deferral; changes the outputs slightly). 0: none.")
    var deferExperts = 0

    func validate() throws {
        if deferExperts < 0 { throw ValidationError("--defer-experts must be 0 or more") }
        if let n = nCpuMoE, n < 0 { throw ValidationError("--n-cpu-moe must be 0 or more") }
        if cpuMoE && nCpuMoE != nil { throw ValidationError("--cpu-moe and --n-cpu-moe cannot be combined") }
    }

    var spec: PlacementSpec { PlacementSpec(rules: placement, cpuMoE: cpuMoE, nCpuMoE: nCpuMoE, deferExperts: deferExperts) }
}

/// The placement flags as `LoadOptions` keeps them; `rules(main:file:)` turns them into a `Placement`.
struct PlacementSpec {
    var rules: String?
    var cpuMoE = false
    var nCpuMoE: Int?
    var deferExperts = 0

    /// The layers whose routed experts the file holds, ascending.
    static func moeLayers(_ file: any TensorSource) -> [Int] {
        var layers = Set<Int>()
        for t in file.tensors where t.name.hasSuffix(".ffn_gate_exps.weight") {
            let parts = t.name.split(separator: ".")
            if parts.count > 2, parts[0] == "blk", let i = Int(parts[1]) { layers.insert(i) }
        }
        return layers.sorted()
    }

    func placement(main: Device, file: any TensorSource) throws -> Placement {
        let moe = Self.moeLayers(file)
        if let text = rules {
            if cpuMoE || nCpuMoE != nil { throw CLIError("--placement cannot be combined with --cpu-moe or --n-cpu-moe") }
            if FileManager.default.fileExists(atPath: text) || text.hasSuffix(".yaml") || text.hasSuffix(".yml") {
                return try Self.load(file: text, main: main)
            }
            do { return try Placement(main: main, parsing: text) } catch let e as BackendError {
                throw CLIError("--placement: \(e.description)")
            }
        }
        // On the CPU everything is there already; a dense model has no experts to place.
        guard main != .cpu, !moe.isEmpty else { return Placement(main: main) }
        // On a GPU: the hybrid placement by default (--cpu-moe), or the first N MoE layers' experts on the CPU.
        let onCPU = nCpuMoE.map { Array(moe.prefix($0)) } ?? moe
        if onCPU.count == moe.count { return Placement(main: main, rules: [.init(pattern: "blk.*.ffn_*_exps.*", device: .cpu)]) }
        return Placement(main: main, rules: onCPU.map { .init(pattern: "blk.\($0).ffn_*_exps.*", device: .cpu) })
    }

    /// A YAML rules file: a list of `{match: GLOB, device: DEVICE}` (also under a top-level `rules:` key). An
    /// invalid rule is an error naming the file, its line and the problem.
    static func load(file path: String, main: Device) throws -> Placement {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw CLIError("--placement \(path): cannot read the file")
        }
        let root: Node?
        do { root = try Yams.compose(yaml: text) } catch {
            throw CLIError("--placement \(path): not valid YAML: \(error)")
        }
        func at(_ n: Node?) -> String { n?.mark.map { "\(path):\($0.line)" } ?? path }
        var list = root
        if let m = root?.mapping {
            guard let rules = m["rules"], m.count == 1 else {
                throw CLIError("\(at(root)): expected a list of rules, or a mapping with only 'rules:'")
            }
            list = rules
        }
        guard let items = list?.sequence else {
            throw CLIError("\(at(list)): expected a list of rules ({match: GLOB, device: cpu|cuda|cuda:N})")
        }
        var rules: [Placement.Rule] = []
        for item in items {
            guard let m = item.mapping else { throw CLIError("\(at(item)): a rule must be a mapping with 'match' and 'device'") }
            for (k, _) in m where !["match", "device", "name"].contains(k.string ?? "") {
                throw CLIError("\(at(k)): unknown key '\(k.string ?? "?")' in a rule (match, device, and an optional name)")
            }
            guard let pattern = m["match"]?.string, !pattern.isEmpty else {
                throw CLIError("\(at(item)): the rule has no 'match' glob (e.g. \"blk.*.ffn_*_exps.*\")")
            }
            guard let d = m["device"]?.string else { throw CLIError("\(at(item)): the rule has no 'device'") }
            guard let device = Device(name: d) else {
                throw CLIError("\(at(m["device"])): unknown device '\(d)' (cpu, cuda, cuda:N)")
            }
            rules.append(.init(pattern: pattern, device: device))
        }
        return Placement(main: main, rules: rules)
    }
}
