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

    @Option(name: .long, help: "Split the model by tensor parallelism over these devices, one shard each, in this order (comma-separated: cuda:0,cuda:1,...). Naming one GPU twice makes logical devices on it (a test of the multi-GPU path on one GPU); cpu entries split it over CPU backends (tests). Llama, Qwen2/3, Gemma 3, and MoE models without MLA (each expert's width split).")
    var devices: String?

    @Option(name: .customLong("tensor-parallel"), help: "Split the model by tensor parallelism over N GPUs (attention heads and feed-forward columns; one all-reduce after each attention and feed-forward): GPUs --device's number onwards, or those --devices names (then N must equal their count). Default 1: no split.")
    var tensorParallel: Int?

    func validate() throws {
        if let n = tensorParallel, n < 1 || n > 8 { throw ValidationError("--tensor-parallel must be between 1 and 8") }
        if deferExperts < 0 { throw ValidationError("--defer-experts must be 0 or more") }
        if let n = nCpuMoE, n < 0 { throw ValidationError("--n-cpu-moe must be 0 or more") }
        if cpuMoE && nCpuMoE != nil { throw ValidationError("--cpu-moe and --n-cpu-moe cannot be combined") }
    }

    var spec: PlacementSpec {
        PlacementSpec(rules: placement, cpuMoE: cpuMoE, nCpuMoE: nCpuMoE, deferExperts: deferExperts, devices: devices,
                      tensorParallel: tensorParallel)
    }
}

/// The placement flags as `LoadOptions` keeps them; `rules(main:file:)` turns them into a `Placement`.
struct PlacementSpec {
    var rules: String?
    var cpuMoE = false
    var nCpuMoE: Int?
    var deferExperts = 0
    /// `--devices`, `--tensor-parallel`.
    var devices: String?
    var tensorParallel: Int?

    /// The devices of a tensor-parallel load's shards, in rank order; nil without tensor parallelism (one device).
    func shardDevices(main: Device) throws -> [Device]? {
        var list: [Device]?
        if let devices {
            list = try devices.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }.map {
                guard let d = Device(name: $0) else { throw CLIError("--devices: unknown device '\($0)' (cpu, cuda, cuda:N)") }
                return d
            }
            if list!.isEmpty { throw CLIError("--devices: no device named") }
            if let n = tensorParallel, n != list!.count {
                throw CLIError("--tensor-parallel \(n) but --devices names \(list!.count) device(s): give one shard per device")
            }
        } else if let n = tensorParallel, n > 1 {
            guard case .gpu(let first) = main else {
                throw CLIError("--tensor-parallel \(n) splits the model over GPUs: add --device cuda (GPUs 0..<\(n)), or name the devices with --devices")
            }
            list = (first ..< first + n).map { .gpu($0) }
        }
        guard let list, list.count > 1 else { return nil }
        if rules != nil || cpuMoE || nCpuMoE != nil || deferExperts > 0 {
            throw CLIError("--placement, --cpu-moe, --n-cpu-moe and --defer-experts do not combine with tensor parallelism (--devices / --tensor-parallel) yet: every shard keeps its part of every layer")
        }
        let kinds = Set(list.map { $0 == .cpu })
        guard kinds.count == 1 else { throw CLIError("--devices \(devices ?? ""): the shards must all be GPUs (or all CPUs, for tests)") }
        return list
    }

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
