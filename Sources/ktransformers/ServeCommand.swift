import ArgumentParser
import Backend
import ChatTemplate
import Dispatch
import Engine
import Foundation
import Grammar
import GGUF
import Hummingbird
import Logging
import Models
import NIOCore
import SafeTensors
import Server
import ServiceLifecycle
import Tokenizer

/// `ktransformers serve`: the OpenAI-compatible HTTP server (docs/server.md lists every flag).
struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve a GGUF model over an OpenAI-compatible HTTP API.",
        discussion: """
        Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health. \
        Binds to 127.0.0.1 unless --host says otherwise. SIGINT/SIGTERM drain: no new connections, new requests \
        get 503, in-flight requests get --drain-timeout seconds to finish, then every stream still running ends \
        with a final chunk (finish_reason "abort"), an error event and [DONE], other requests get a 503 JSON error; \
        the exit status is 0. \
        The original KTransformers' flag names are accepted too (--model_path, --gguf_path, --cache_lens, \
        --max_batch_size, --chunk_size, --max_new_tokens).
        """)

    // Model
    @Option(name: [.customLong("model"), .customLong("model_path"), .customLong("gguf_path")],
            help: "GGUF model file, a folder holding one, or a Hugging Face checkpoint directory (config.json + *.safetensors) (default: the installed default model).")
    var model: String?

    @Option(name: .customLong("served-model-name"), help: "Model id in /v1/models and responses (default: the file name).")
    var servedModelName: String?

    @Option(name: .customLong("chat-template"), help: "Jinja chat template file overriding the GGUF's tokenizer.chat_template.")
    var chatTemplateFile: String?

    @Option(name: [.customShort("t"), .long], help: "Compute threads (default: physical cores).")
    var threads: Int?

    @OptionGroup var placementOptions: PlacementOptions

    @Option(name: .long, help: "The device that runs the model: cpu, cuda or cuda:N (default: cpu). On a GPU the KV cache (--kv-cache-tokens) is in GPU memory.")
    var device: String?

    @Flag(name: .customLong("no-cuda-graphs"), help: "Run every step op by op instead of replaying decode steps as CUDA graphs (debugging).")
    var noCudaGraphs = false

    @Flag(name: .customLong("batch-invariant"), help: ArgumentHelp(LoadOptions.batchInvariantHelp))
    var batchInvariant = false

    // Engine
    @Option(name: .customLong("ctx-size"), help: "Context length per sequence, prompt and output (default: the model's, at most 4096).")
    var contextSize: Int?

    @Option(name: [.customLong("kv-cache-tokens"), .customLong("cache_lens")], help: "KV cache capacity in tokens over all sequences.")
    var kvCacheTokens: Int = EngineConfig().kvCacheTokens

    @Option(name: .customLong("gpu-memory-fraction"), help: "On a GPU: size the KV cache to this fraction of the GPU memory left free after the weights (overrides --kv-cache-tokens).")
    var gpuMemoryFraction: Double?

    @Option(name: .customLong("page-size"), help: "Tokens per KV cache page.")
    var pageSize: Int = EngineConfig().pageSize

    @Option(name: [.customLong("max-batch-size"), .customLong("max_batch_size")], help: "Sequences running together at most.")
    var maxBatchSize: Int = EngineConfig().maxBatchSize

    @Option(name: [.customLong("chunk-size"), .customLong("chunk_size")], help: "Tokens per engine step at most (prompt chunks and decode tokens).")
    var chunkSize: Int = EngineConfig().chunkSize

    @Flag(name: .customLong("no-prefix-cache"), help: "Do not reuse the KV cache pages of prompt prefixes that earlier requests computed.")
    var noPrefixCache = false

    @Option(name: .customLong("max-queued"), help: "Requests waiting for a batch slot at most (those that can start at once are always taken); beyond, 503.")
    var maxQueued: Int = EngineConfig().maxQueued

    // Server
    @Option(help: "Address to bind (loopback by default; 0.0.0.0 exposes the server to the network).")
    var host: String = ServerConfig().host

    @Option(help: "TCP port (0: any free port, printed at start).")
    var port: Int = ServerConfig().port

    @Option(name: .customLong("api-key"), help: "Require 'Authorization: Bearer KEY' on every route but /health.")
    var apiKey: String?

    @Option(name: .customLong("cors-origins"), help: "Browser origins allowed to call the API (CORS), comma-separated, or '*' for any (default: none).")
    var corsOrigins: String?

    @Option(name: [.customLong("max-new-tokens"), .customLong("max_new_tokens")],
            help: "Tokens generated when a chat request sets no max_tokens (completions: 16, as OpenAI).")
    var maxNewTokens: Int = ServerConfig().maxNewTokens

    @Option(name: .customLong("max-body-bytes"), help: "Largest request body; larger ones get 413.")
    var maxBodyBytes: Int = ServerConfig().maxBodyBytes

    @Option(name: .customLong("request-timeout"), help: "Seconds a client may take to send a whole request.")
    var requestTimeout: Double = ServerConfig().requestTimeout

    @Option(name: .customLong("idle-timeout"), help: "Seconds a connection may stay open without a request (fresh, or between requests).")
    var idleTimeout: Double = ServerConfig().idleTimeout

    @Option(name: .customLong("max-connections"), help: "Open connections at most: a new one beyond closes the longest idle connection, or gets 503 when all are busy.")
    var maxConnections: Int = ServerConfig().maxConnections

    @Option(name: [.customLong("drain-timeout"), .customLong("shutdown-grace")], help: "Seconds in-flight requests get to finish on SIGINT/SIGTERM before they are ended (streams with a final chunk and [DONE], others with a 503 JSON error).")
    var drainTimeout: Double = ServerConfig().drainTimeout

    @Option(help: "How tool calls are read from chat answers: auto (from the chat template; Hermes <tool_call> blocks with a generic tool prompt when the template has no tool support), hermes, llama3_json, mistral, deepseek_v3, deepseek_v31.")
    var toolParser = "auto"

    @Option(help: "How reasoning is split from chat answers into reasoning_content: auto (from the chat template), deepseek_r1, qwen3, none.")
    var reasoningParser = ServerConfig().reasoningParser

    @Flag(help: "Start every chat answer inside the model's reasoning (<think>), as KTransformers' --force_think.")
    var forceThink = false

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    func validate() throws {
        if let threads, threads < 1 || threads > 1024 { throw ValidationError("--threads must be between 1 and 1024") }
        if let contextSize, contextSize < 2 { throw ValidationError("--ctx-size must be at least 2") }
        if let f = gpuMemoryFraction, !(f > 0 && f <= 0.98) {
            throw ValidationError("--gpu-memory-fraction must be in (0, 0.98]")
        }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("--log-level: unknown level '\(logLevel)'") }
        do {
            try engineConfig(modelContext: Int.max).validate()
            try serverConfig(fileName: "model.gguf").validate()
        } catch let e as EngineError {
            throw ValidationError(e.description)
        }
    }

    func engineConfig(modelContext: Int) -> EngineConfig {
        var c = EngineConfig()
        c.maxBatchSize = maxBatchSize
        c.chunkSize = chunkSize
        c.pageSize = pageSize
        c.kvCacheTokens = kvCacheTokens
        c.maxQueued = maxQueued
        c.prefixCaching = !noPrefixCache
        c.contextLength = min(contextSize ?? 4096, modelContext)
        return c
    }

    func serverConfig(fileName: String) -> ServerConfig {
        var s = ServerConfig()
        s.host = host
        s.port = port
        s.apiKey = apiKey
        s.corsOrigins = (corsOrigins ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        let stem = fileName.hasSuffix(".gguf") ? String(fileName.dropLast(5)) : fileName
        s.modelID = servedModelName ?? fileName
        s.modelAliases = Array(Set([fileName, stem]).subtracting([s.modelID])).sorted()
        s.maxNewTokens = maxNewTokens
        s.maxBodyBytes = maxBodyBytes
        s.requestTimeout = requestTimeout
        s.maxConnections = maxConnections
        s.idleTimeout = idleTimeout
        s.drainTimeout = drainTimeout
        s.toolParser = toolParser == "auto" ? nil : toolParser
        s.reasoningParser = reasoningParser
        s.forceThink = forceThink
        return s
    }

    func run() throws {
        // The root command is synchronous; the server runs on NIO's event loops and the cooperative pool while
        // this thread waits.
        let done = DispatchSemaphore(value: 0)
        let result = ResultBox()
        Task {
            do { try await serve() } catch { result.set(error) }
            done.signal()
        }
        done.wait()
        if let e = result.get() { throw e }
    }

    func serve() async throws {
        var log = Logger(label: "ktransformers.serve")
        log.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        let logger = log

        // The port is bound before the weights are loaded: /health says "loading" (503) until the server is ready.
        let options = LoadOptions(model: model, threads: threads, contextLength: contextSize, placement: placementOptions.spec,
                                  device: device, cudaGraphs: !noCudaGraphs, batchInvariant: batchInvariant)
        let source = try options.openSource()
        let config = serverConfig(fileName: (source.path as NSString).lastPathComponent)
        let responder = LoadingResponder()
        let slot = ServerSlot()
        let host = config.host
        let app = OpenAIServer.makeApplication(responder: responder, config: config, logger: logger) { channel in
            let port = channel.localAddress?.port ?? config.port
            slot.setAddress("http://\(host):\(port)")
            Output.err("ktransformers serve: listening on http://\(host):\(port); /health answers 503 until the model is loaded\n")
        }
        // Services stop in reverse order: the drain first (new requests get 503; after --drain-timeout what still
        // runs is ended properly), then the HTTP server (it stops accepting and waits for in-flight requests), then
        // the engine.
        var groupConfig = ServiceGroupConfiguration(
            services: [.init(service: EngineService(slot: slot)), .init(service: app),
                       .init(service: DrainService(slot: slot, timeout: config.drainTimeout))],
            gracefulShutdownSignals: [.sigterm, .sigint],
            cancellationSignals: [],
            logger: logger)
        // A backstop only: the drain ends every request itself after --drain-timeout.
        groupConfig.maximumGracefulShutdownDuration = .milliseconds(Int64((config.drainTimeout + 10) * 1000))
        groupConfig.maximumCancellationDuration = .seconds(5)
        let group = ServiceGroup(configuration: groupConfig)
        let failure = ResultBox()
        // The load blocks for seconds: on its own thread, not the cooperative pool's.
        let loader = Thread {
            do {
                let server = try self.build(source: source, options: options, config: config, responder: responder,
                                            logger: logger)
                slot.set(server)
                responder.ready(server)
                // The vocabulary trie of structured output, off the request path.
                Thread.detachNewThread { server.prepareConstraintVocabulary() }
                // NOTE: the bound address, not the configured one: with --port 0 the port is known only once the
                // server listens, which a small model's load can beat.
                let at = slot.address(waiting: 30).map { " on \($0)" } ?? ""
                Output.err("ktransformers serve: \(config.modelID) ready\(at) (\(server.summary))\n")
            } catch {
                failure.set(error)
                Task { await group.triggerGracefulShutdown() }
            }
        }
        loader.stackSize = 8 << 20
        loader.start()
        try await group.run()
        if let e = failure.get() { throw e }
        Output.err("ktransformers serve: stopped\n")
    }

    /// Loads the model and builds the engine and the server (on the loading thread).
    private func build(source: any TensorSource, options: LoadOptions, config: ServerConfig, responder: LoadingResponder,
                       logger: Logger) throws -> OpenAIServer {
        let loadStarted = Date()
        let loaded = try options.load(source: source, onProgress: { responder.setProgress($0) })
        let file = loaded.file, path = file.path
        guard let tokenizer = loaded.tokenizer else {
            let why = (file as? HFCheckpoint).map { $0.tokenizerProblem ?? "the directory has no tokenizer.json" }
                ?? "the file has no tokenizer.ggml.* metadata"
            throw CLIError("\(path): no tokenizer (\(why)); serve needs one")
        }

        let templateSource: String?
        if let chatTemplateFile {
            templateSource = try String(contentsOfFile: chatTemplateFile, encoding: .utf8)
        } else {
            templateSource = file["tokenizer.chat_template"]?.string
                ?? file.architecture.flatMap { BuiltinTemplates.template(forArchitecture: $0) }
        }
        let template: ChatTemplate?
        do {
            template = try templateSource.map { try ChatTemplate(source: $0) }
        } catch {
            throw CLIError("\(chatTemplateFile ?? path): chat template: \(error)")
        }
        if template == nil { logger.warning("the model has no chat template: /v1/chat/completions will answer 400") }

        var engineSettings = engineConfig(modelContext: loaded.model.info.contextLength)
        if let gpu = loaded.gpu {
            // The KV cache lives in GPU memory: size it by --gpu-memory-fraction, or check that --kv-cache-tokens fits.
            // A tensor-parallel model keeps a pool per shard: a GPU holding several shards (logical devices) holds
            // each one's, and the GPU with the least room per token decides.
            let info = loaded.model.info
            let shardBytes = max(1, zip(info.kvKeyDims, info.kvValueDims).reduce(0) { $0 + ($1.0 + $1.1) * 4 })
            let byGPU = Dictionary(grouping: loaded.gpus.isEmpty ? [gpu] : loaded.gpus, by: \.ordinal)
            let tightest = byGPU.values.map { (gpu: $0[0], free: $0[0].memoryInfo().free, bytes: shardBytes * $0.count) }
                .min { $0.free / $0.bytes < $1.free / $1.bytes }!
            let free = tightest.free, bytesPerToken = tightest.bytes
            let gib = { (b: Int) in String(format: "%.2f GiB", Double(b) / 1_073_741_824) }
            if let f = gpuMemoryFraction {
                let tokens = Int(Double(free) * f) / bytesPerToken / engineSettings.pageSize * engineSettings.pageSize
                guard tokens >= engineSettings.pageSize else {
                    throw CLIError("--gpu-memory-fraction \(f): \(gib(free)) free on \(tightest.gpu.device) after the weights hold no KV page (\(bytesPerToken) bytes per token)")
                }
                engineSettings.kvCacheTokens = tokens
            } else if engineSettings.kvCacheTokens * bytesPerToken > Int(Double(free) * 0.95) {
                throw CLIError("--kv-cache-tokens \(engineSettings.kvCacheTokens) needs \(gib(engineSettings.kvCacheTokens * bytesPerToken)) of KV cache on \(tightest.gpu.device), but \(gib(free)) are free after the weights: lower --kv-cache-tokens, or use --gpu-memory-fraction")
            }
            Output.err("KV cache on \(byGPU.count > 1 || loaded.gpus.count > 1 ? "each shard's GPU" : gpu.device.description): \(engineSettings.kvCacheTokens) tokens, \(gib(engineSettings.kvCacheTokens * bytesPerToken))\(loaded.gpus.count > 1 ? " on the fullest GPU" : "")\n")
        }
        let engine = try Engine(model: loaded.model, config: engineSettings)
        let server = OpenAIServer(engine: engine, tokenizer: tokenizer, chatTemplate: template, config: config)
        server.summary = "\(loaded.backend.summary), context \(engine.contextLength)"
        server.modelDescription = Self.describe(file, loadSeconds: Date().timeIntervalSince(loadStarted))
        let metrics = server.metrics
        engine.stepObserver = { metrics.observeStep(seconds: $0, sequences: $1, tokens: $2) }
        return server
    }
}

extension Serve {
    /// What Ollama's `/api/tags`, `/api/show` and `/api/ps` report: family, parameters, quantization, size, the
    /// scalar metadata.
    static func describe(_ file: any TensorSource, loadSeconds: Double) -> ModelDescription {
        var d = ModelDescription()
        d.family = file.architecture ?? "unknown"
        d.parameterCount = file.tensors.reduce(0) { $0 + $1.elementCount }
        d.quantization = file["general.file_type"]?.int.flatMap(ModelDescription.fileTypeName)
            ?? file.tensors.max { $0.byteCount < $1.byteCount }.map { "\($0.type)".uppercased() } ?? "unknown"
        let attrs = try? FileManager.default.attributesOfItem(atPath: file.path)
        d.sizeBytes = (attrs?[.size] as? Int) ?? file.tensors.reduce(0) { $0 + $1.byteCount }
        d.modifiedAt = (attrs?[.modificationDate] as? Date) ?? Date()
        // Not a content hash (that would read the whole file): a stable id of path, size and time.
        let key = "\(file.path)|\(d.sizeBytes)|\(d.modifiedAt.timeIntervalSince1970)"
        d.digest = (0..<4).map { seed -> String in
            var h: UInt64 = 0xcbf2_9ce4_8422_2325 ^ UInt64(seed)
            for b in key.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
            let hex = String(h, radix: 16)
            return String(repeating: "0", count: 16 - hex.count) + hex
        }.joined()
        d.loadSeconds = loadSeconds
        for k in file.metadata.keys.sorted() where !k.hasPrefix("tokenizer.") {
            switch file.metadata[k]! {
            case .string(let v): d.info.append((k, .string(v)))
            case .bool(let v): d.info.append((k, .bool(v)))
            case .float32(let v): d.info.append((k, .number(Double(v), "\(Double(v))")))
            case .float64(let v): d.info.append((k, .number(v, "\(v)")))
            case let v:
                if let i = v.int { d.info.append((k, .number(Double(i), String(i)))) }
            }
        }
        return d
    }
}

/// The server once the model is loaded (nil before), for the services that outlive the load.
final class ServerSlot: @unchecked Sendable {
    private let lock = NSCondition()
    private var server: OpenAIServer?
    private var boundAddress: String?
    func set(_ s: OpenAIServer) { lock.lock(); server = s; lock.unlock() }
    func get() -> OpenAIServer? { lock.lock(); defer { lock.unlock() }; return server }
    func setAddress(_ a: String) { lock.lock(); boundAddress = a; lock.broadcast(); lock.unlock() }
    /// The address the server listens on, once it is bound (a small model can be loaded first); nil after `timeout`.
    func address(waiting timeout: Double) -> String? {
        lock.lock()
        defer { lock.unlock() }
        let deadline = Date().addingTimeInterval(timeout)
        while boundAddress == nil && lock.wait(until: deadline) {}
        return boundAddress
    }
}

/// The shutdown drain: on SIGTERM/SIGINT the server refuses new requests at once; `timeout` seconds later it ends
/// whatever still runs (streams with a final chunk and [DONE], others with a 503 JSON error).
struct DrainService: Service {
    let slot: ServerSlot
    let timeout: Double

    func run() async throws {
        try? await gracefulShutdown()
        guard let server = slot.get() else { return }  // stopped while loading: nothing to drain
        server.beginDrain()
        let timeout = timeout
        Output.err("ktransformers serve: draining \(server.activeRequests) requests for up to \(timeout) s\n")
        Task.detached {
            try? await Task.sleep(nanoseconds: UInt64(timeout * 1e9))
            if server.activeRequests > 0 {
                Output.err("ktransformers serve: drain timeout: ending \(server.activeRequests) requests\n")
            }
            server.expireDrain()
        }
    }
}

/// Keeps the engine alive while the server runs and shuts it down (aborting what is left) after the server.
struct EngineService: Service {
    let slot: ServerSlot

    func run() async throws {
        try? await gracefulShutdown()
        (slot.get()?.engine as? Engine)?.shutdown()
    }
}

final class ResultBox: @unchecked Sendable {
    private let lock = NSLock()
    private var error: Error?
    func set(_ e: Error) { lock.lock(); error = e; lock.unlock() }
    func get() -> Error? { lock.lock(); defer { lock.unlock() }; return error }
}
