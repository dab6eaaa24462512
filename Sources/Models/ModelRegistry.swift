import Backend
import GGUF

/// Architectures by `general.architecture`. Adding one is a file in `Architectures/` and a line here.
public enum ModelRegistry {
    typealias Loader = @Sendable (TensorLoader) throws -> LanguageModel

    static let loaders: [String: Loader] = [
        "deepseek2": DeepSeek2.load,
        "gemma3": Gemma3.load,
        "llama": Llama.load,
        "qwen2": Qwen2.load,
        "qwen2moe": Qwen2MoE.load,
        "qwen3": Qwen3.load,
        "qwen3moe": Qwen3MoE.load,
    ]

    public static var supportedArchitectures: [String] { loaders.keys.sorted() }

    /// Builds the model a GGUF file (or another `TensorSource`, such as a Hugging Face directory) describes, on
    /// `backend`, with each weight prepared by the backend of the device `placement` gives it (`backends`: the
    /// other devices' backends). The model is sized for `limits` (default: `RunLimits.defaults`).
    public static func load(_ file: any TensorSource, backend: any ComputeBackend,
                            backends: [Device: any ComputeBackend] = [:], placement: Placement = .cpu,
                            limits: RunLimits? = nil,
                            progress: (@Sendable (_ done: Int, _ total: Int) -> Void)? = nil) throws -> LanguageModel {
        guard let arch = file.architecture else {
            throw ModelError("\(file.path): missing metadata 'general.architecture'")
        }
        guard let loader = loaders[arch] else {
            throw ModelError("\(file.path): unsupported architecture '\(arch)' (supported: \(supportedArchitectures.joined(separator: ", ")))")
        }
        var available = backends
        available[backend.device] = backend
        for r in placement.rules where available[r.device] == nil {
            throw ModelError("placement rule '\(r.pattern)=\(r.device)': no backend for \(r.device) here (available: \(available.keys.map(\.description).sorted().joined(separator: ", ")))")
        }
        let model = try loader(TensorLoader(file: file, arch: arch, backend: backend, backends: available,
                                            placement: placement, progress: progress))
        progress?(1, 1)
        if let limits { model.reserve(limits) }
        return model
    }

    /// Builds the model split by tensor parallelism over `backends` (one shard each, in rank order; a backend
    /// appears once), summing the shards' block outputs through `collective` (`collective.ranks` == the backends).
    /// Every weight lives on its shard's backend: placement rules do not apply. With one backend this is `load`.
    public static func loadTensorParallel(_ file: any TensorSource, backends: [any ComputeBackend], collective: any Collective,
                                          limits: RunLimits? = nil,
                                          progress: (@Sendable (_ done: Int, _ total: Int) -> Void)? = nil) throws -> LanguageModel {
        precondition(!backends.isEmpty && collective.ranks == backends.count)
        if backends.count == 1 { return try load(file, backend: backends[0], limits: limits, progress: progress) }
        guard let arch = file.architecture else {
            throw ModelError("\(file.path): missing metadata 'general.architecture'")
        }
        guard let loader = loaders[arch] else {
            throw ModelError("\(file.path): unsupported architecture '\(arch)' (supported: \(supportedArchitectures.joined(separator: ", ")))")
        }
        // One progress over every shard's weights: each shard reads about 1/N of the file plus what it keeps whole,
        // so the sum passes the file's size a little before the end (LoadProgress holds it there).
        let shared = progress.map { LoadProgress(total: file.tensors.reduce(0) { $0 + $1.byteCount }, report: $0) }
        var shards: [DecoderModel] = []
        for (i, b) in backends.enumerated() {
            let rank = ParallelRank(shard: TensorShard(index: i, count: backends.count), collective: collective)
            let l = TensorLoader(file: file, arch: arch, backend: b, backends: [b.device: b], placement: Placement(main: b.device),
                                 progress: shared, parallel: rank)
            guard let m = try loader(l) as? DecoderModel else {
                throw ModelError("\(file.path): architecture '\(arch)' has no tensor-parallel form")
            }
            shards.append(m)
        }
        progress?(1, 1)
        let model = TensorParallelModel(shards: shards, collective: collective)
        if let limits { model.reserve(limits) }
        return model
    }
}
