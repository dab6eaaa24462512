import ArgumentParser
import Backend
import BackendCUDA
import Foundation
import GGUF
import Models
import SafeTensors
import Tokenizer

/// Everything that decides how a model is loaded, shared by every command that loads one (`serve`, `generate`,
/// `logits`, `bench`, `tokenize`, `inspect`): the one load path.
struct LoadOptions {
    /// A GGUF file, a folder holding exactly one, or a Hugging Face checkpoint folder (config.json +
    /// *.safetensors); nil: the installed default model.
    var model: String?
    /// Compute threads (nil: physical cores).
    var threads: Int?
    /// Context length of this run (nil: the model's, at most 4096).
    var contextLength: Int?
    /// Which device's backend prepares each weight (`--placement`, `--cpu-moe`, `--n-cpu-moe`).
    var placement = PlacementSpec()
    /// The main device, which runs the model: `cpu`, `cuda`, `cuda:N` (nil: cpu).
    var device: String?
    /// Replay decode steps as CUDA graphs (`--no-cuda-graphs` turns it off).
    var cudaGraphs = true
    /// Keep every step's arithmetic independent of what else it batches (`--batch-invariant`: the GPU's f16
    /// prefill paths off).
    var batchInvariant = false
    static let batchInvariantHelp = "Keep each step's arithmetic independent of what else is batched with it: on a GPU, prefill steps of 128+ tokens stay on the exact int8 / f32 kernels instead of f16 cuBLAS GEMMs and flash attention, and one-token decode steps on the integer matmuls and tensor-core down projection of larger steps instead of the fast persistent and 16-bit-input ones, so a request's greedy output never depends on concurrent requests (prefill several times slower, batch-1 decode slower)."
    /// The largest forward pass to size the model for (nil: `RunLimits.defaults`; the engine and the
    /// generator reserve what they need on top).
    var limits: RunLimits?

    /// The GGUF file (or the one in the folder), or the Hugging Face checkpoint folder seen as one.
    func openSource() throws -> any TensorSource {
        if let model, HFCheckpoint.isCheckpointDirectory(model) { return try HFCheckpoint(directory: model) }
        return try openGGUF()
    }

    /// The GGUF file, or the one in the folder.
    func openGGUF() throws -> GGUFFile {
        guard let model else {
            guard DefaultModel.isInstalled else { throw CLIError(DefaultModel.installHint) }
            return try GGUFFile(path: DefaultModel.path, populate: true)
        }
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: model, isDirectory: &isDir), isDir.boolValue {
            // The original's --gguf_path names a folder.
            let files = ((try? FileManager.default.contentsOfDirectory(atPath: model)) ?? []).filter { $0.hasSuffix(".gguf") }.sorted()
            guard files.count == 1 else {
                throw CLIError("\(model): expected one .gguf file in the folder (or a Hugging Face checkpoint: config.json + *.safetensors), found \(files.count) .gguf files")
            }
            return try GGUFFile(path: (model as NSString).appendingPathComponent(files[0]), populate: true)
        }
        return try GGUFFile(path: model, populate: true)
    }

    /// Opens the model and builds it on its backend; the tokenizer only where the source has one (`logits`
    /// needs none).
    func load() throws -> LoadedModel { try load(source: try openSource()) }

    /// Builds the model of an opened source; `onProgress` hears the share of weights prepared (0...1).
    func load(source file: any TensorSource, onProgress: (@Sendable (Double) -> Void)? = nil) throws -> LoadedModel {
        let main = try mainDevice()
        if let shards = try placement.shardDevices(main: main) {
            return try loadTensorParallel(source: file, devices: shards, onProgress: onProgress)
        }
        let cpu = CPUBackend(threads: threads ?? CPUInfo.physicalCores)
        var backends: [Device: any ComputeBackend] = [.cpu: cpu]
        var gpu: CUDABackend?
        if case .gpu(let i) = main {
            do {
                let g = try CUDABackend.make(ordinal: i)
                g.onConversion = { Output.err("\($0)\n") }
                g.graphsEnabled = cudaGraphs
                g.batchInvariant = batchInvariant
                let mem = g.memoryInfo()
                Output.err(String(format: "%@: %.1f GiB free; kernels %@; CUDA graphs %@; %@\n", g.summary,
                                  Double(mem.free) / 1_073_741_824, g.kernelOrigin,
                                  cudaGraphs ? "on (decode steps, one graph per batch-size bucket 1, 2, 4, ... up to the batch size)" : "off",
                                  batchInvariant ? "batch invariant (--batch-invariant): every step on the exact int8 / f32 kernels"
                                                 : g.gemmSummary + "; f16 flash attention from \(CUDABackend.flashMinTokens) tokens a step"))
                backends[main] = g
                gpu = g
            } catch {
                throw CLIError("--device \(main): \(error)")
            }
        }
        let backend = backends[main]!
        if placement.deferExperts > 0 {
            guard let gpu else { throw CLIError("--defer-experts needs the hybrid MoE (--device cuda, routed experts on the CPU)") }
            let used = file.architecture.flatMap { file["\($0).expert_used_count"]?.int }
            guard let used, placement.deferExperts < used else {
                throw CLIError("--defer-experts \(placement.deferExperts): the model routes each token to \(used.map { "\($0) experts" } ?? "no experts"); defer fewer than that")
            }
            gpu.deferredExperts = placement.deferExperts
        }
        let rules = try placement.placement(main: main, file: file)
        var placedOnCPU: Int?
        if main != .cpu {
            // Bytes of weights per device, as the rules put them.
            var bytes: [Device: Int] = [:]
            for t in file.tensors { bytes[rules.device(for: t.name), default: 0] += t.byteCount }
            let list = bytes.sorted { $0.key.description < $1.key.description }.map { d, b in
                b >= 1 << 30 ? String(format: "%@ %.2f GiB", d.description, Double(b) / 1_073_741_824)
                    : String(format: "%@ %.1f MiB", d.description, Double(b) / 1_048_576)
            }
            Output.err("placement (\(rules)): \(list.joined(separator: ", "))\n")
            placedOnCPU = bytes[.cpu]
            if let gpu, let host = bytes[.cpu], host > 0, pinExperts(gpu: gpu, bytes: host) {
                cpu.stackMemory = gpu.pageLockedStackMemory()
            }
        }
        let started = Date()
        let bar = ProgressPrinter(what: "loading \((file.path as NSString).lastPathComponent) on \(main)")
        let model = try ModelRegistry.load(file, backend: backend, backends: backends, placement: rules, limits: limits,
                                           progress: { bar.update(done: $0, total: $1); onProgress?(Double($0) / Double(max(1, $1))) })
        bar.finish(String(format: "loaded in %.1f s", Date().timeIntervalSince(started)))
        if let gpu, cpu.stackMemory != nil, let onCPU = placedOnCPU {
            // Less than was placed on the CPU where the driver refused a block (that stack is read from the mapping).
            Output.err(String(format: "routed experts copied to page-locked memory at load: %.2f of %.2f GiB on the CPU (the layerwise prefill copies them to the GPU at the link's speed; KTRANSFORMERS_PIN_EXPERTS=0 reads them from the file's mapping)\n",
                              Double(gpu.pageLockedBytes) / 1_073_741_824, Double(onCPU) / 1_073_741_824))
        }
        if let gpu {
            let mem = gpu.memoryInfo()
            Output.err(String(format: "placed on %@: %.2f GiB of weights (%.1f GiB free after load)\n", gpu.device.description,
                              Double(gpu.weightBytes) / 1_073_741_824, Double(mem.free) / 1_073_741_824))
        }
        let tokenizer = file.metadata["tokenizer.ggml.model"] == nil ? nil : try Tokenizer(metadata: file.metadata)
        return LoadedModel(file: file, backend: backend, cpu: cpu, gpu: gpu, model: model, tokenizer: tokenizer,
                           contextLength: min(contextLength ?? 4096, model.info.contextLength))
    }

    /// Whether the hybrid MoE's CPU-placed weights (`bytes`) go to page-locked memory at load: `KTRANSFORMERS_PIN_EXPERTS`
    /// 1 / 0, or by default when the layerwise prefill can run (not `--batch-invariant`) and they take at most half the
    /// host's (or its cgroup's) memory (page-locked memory cannot be swapped or dropped like the file's cached pages).
    func pinExperts(gpu: CUDABackend, bytes: Int) -> Bool {
        switch ProcessInfo.processInfo.environment["KTRANSFORMERS_PIN_EXPERTS"] {
        case "1": return true
        case "0": return false
        default:
            return gpu.layerwiseMinTokens > 0 && !gpu.batchInvariant && UInt64(bytes) <= HostMemory.usableBytes / 2
        }
    }

    /// The parsed `--device` (cpu by default).
    func mainDevice() throws -> Device {
        guard let device else { return .cpu }
        guard let d = Device(name: device) else {
            throw CLIError("--device \(device): expected cpu, cuda or cuda:N")
        }
        return d
    }
}

/// The command-line form of `LoadOptions` for the commands that only need a model.
struct ModelOptions: ParsableArguments {
    @Option(name: .long, help: "GGUF model file, a folder holding one, or a Hugging Face checkpoint directory (config.json + *.safetensors) (default: the installed default model, see scripts/default-model.sh).")
    var model: String?

    @Option(name: [.customShort("t"), .long], help: "Compute threads (default: physical cores).")
    var threads: Int?

    @Option(name: .customLong("ctx-size"), help: "Context length for this run (default: the model's, at most 4096).")
    var contextSize: Int?

    @OptionGroup var placementOptions: PlacementOptions

    @Option(name: .long, help: "The device that runs the model: cpu, cuda or cuda:N (default: cpu).")
    var device: String?

    @Flag(name: .customLong("no-cuda-graphs"), help: "Run every step op by op instead of replaying decode steps as CUDA graphs (debugging).")
    var noCudaGraphs = false

    @Flag(name: .customLong("batch-invariant"), help: ArgumentHelp(LoadOptions.batchInvariantHelp))
    var batchInvariant = false

    func validate() throws {
        if let threads, threads < 1 || threads > 1024 { throw ValidationError("--threads must be between 1 and 1024") }
        if let contextSize, contextSize < 1 { throw ValidationError("--ctx-size must be positive") }
    }

    var loadOptions: LoadOptions {
        LoadOptions(model: model, threads: threads, contextLength: contextSize, placement: placementOptions.spec, device: device,
                    cudaGraphs: !noCudaGraphs, batchInvariant: batchInvariant)
    }

    func openSource() throws -> any TensorSource { try loadOptions.openSource() }

    /// Opens the model, builds it and its tokenizer.
    func load() throws -> LoadedModel {
        let m = try loadOptions.load()
        guard m.tokenizer != nil else {
            let why = (m.file as? HFCheckpoint).map { $0.tokenizerProblem ?? "the directory has no tokenizer.json" }
                ?? "the file has no tokenizer.ggml.* metadata"
            throw CLIError("\(m.file.path): no tokenizer (\(why)); only `logits` works without one")
        }
        return m
    }

    /// Opens the model and builds it; the tokenizer only where the source has one (`logits` needs none).
    func loadModel() throws -> LoadedModel { try loadOptions.load() }
}

struct LoadedModel {
    let file: any TensorSource
    /// The main device's backend (runs the model).
    let backend: any ComputeBackend
    /// The CPU backend (its thread pool), always there.
    let cpu: CPUBackend
    /// The GPU backend when the main device is a GPU (a tensor-parallel model's: shard 0's).
    let gpu: CUDABackend?
    /// A tensor-parallel model's GPU backends, one per shard (empty otherwise).
    var gpus: [CUDABackend] = []
    let model: LanguageModel
    let tokenizer: Tokenizer?
    let contextLength: Int
}

struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// Unbuffered-enough writes to stdout/stderr for streaming.
enum Output {
    static func out(_ s: String) {
        FileHandle.standardOutput.write(Data(s.utf8))
    }

    static func err(_ s: String) {
        FileHandle.standardError.write(Data(s.utf8))
    }
}

/// Load progress on stderr: a bar redrawn in place on a terminal, else one line per 10% once the load has taken
/// more than 2 s (a quick load prints only its last line).
final class ProgressPrinter: @unchecked Sendable {
    // NOTE: @unchecked: updated from the loading thread only.
    private let what: String
    private let started = Date()
    private let terminal = isatty(2) != 0
    private var lastShown = -1
    private var lastTotal = 0

    init(what: String) { self.what = what }

    func update(done: Int, total: Int) {
        lastTotal = total
        let percent = Int(Double(done) / Double(max(1, total)) * 100)
        if terminal {
            guard percent != lastShown else { return }
            lastShown = percent
            let filled = percent * 30 / 100
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: 30 - filled)
            Output.err(String(format: "\r%@ [%@] %3d%% (%.2f of %.2f GB)", what, bar, percent, Double(done) / 1e9, Double(total) / 1e9))
        } else {
            let step = percent / 10 * 10
            guard step > lastShown, Date().timeIntervalSince(started) > 2 else { return }
            lastShown = step
            Output.err(String(format: "%@: %d%% (%.2f of %.2f GB)\n", what, step, Double(done) / 1e9, Double(total) / 1e9))
        }
    }

    func finish(_ message: String) {
        Output.err(terminal ? "\r\(what): \(message)\u{1B}[K\n" : "\(what): \(message)\n")
    }
}
