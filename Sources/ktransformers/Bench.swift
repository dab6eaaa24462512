import ArgumentParser
import Backend
import Foundation
import Models
import Quant

/// Model throughput like llama-bench: prompt processing (pp) and token generation (tg), optionally with B
/// sequences decoding together in one batch.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure prompt-processing and generation speed (like llama-bench).",
        discussion: "Tests: ppP reads P prompt tokens in one batch (chunked by --chunk-size); tgN generates N tokens one step at a time from an empty context, starting from a random token; with --batch B, tgN runs B sequences decoding together (each from its own random token) and reports their total tokens/s. Each test runs -r times after one warm-up run. `bench serve` load-tests an OpenAI-compatible server instead.",
        subcommands: [BenchServe.self])

    @Option(name: .long, help: "GGUF model file (default: the installed default model).")
    var model: String?

    @Option(name: [.customShort("p"), .customLong("n-prompt")], help: "Prompt tokens per pp test (0 = skip).")
    var nPrompt: Int = 512

    @Option(name: [.customShort("n"), .customLong("n-gen")], help: "Tokens per tg test (0 = skip).")
    var nGen: Int = 128

    @Option(name: [.customShort("t"), .long], help: "Compute threads (default: physical cores).")
    var threads: Int?

    @Option(name: .long, help: "The device that runs the model: cpu, cuda or cuda:N (default: cpu).")
    var device: String?

    @Flag(name: .customLong("no-cuda-graphs"), help: "Run every step op by op instead of replaying decode steps as CUDA graphs.")
    var noCudaGraphs = false

    @Flag(name: .customLong("batch-invariant"), help: ArgumentHelp(LoadOptions.batchInvariantHelp))
    var batchInvariant = false

    @OptionGroup var placementOptions: PlacementOptions

    @Flag(name: .customLong("profile-kernels"), help: "With --device cuda: time every kernel (CUDA events; graphs off) and print, per test, where the GPU time goes and the kernels' share of the wall time.")
    var profileKernels = false

    @Option(name: [.customShort("r"), .long], help: "Repetitions of each test.")
    var repetitions: Int = 5

    @Option(name: [.customShort("b"), .long], help: "Sequences decoding together in the tg test.")
    var batch: Int = 1

    @Option(name: .customLong("chunk-size"), help: "Tokens per forward pass in the pp test.")
    var chunkSize: Int = 512

    @Flag(help: "Print a JSON array with one object per test.")
    var json = false

    @Flag(name: .long, help: "Instead of a model: the MoE expert kernel on one synthetic layer (random routing) at batch 1 and 8 (and --batch), in GB/s of distinct expert weights read, against the measured memory bandwidth (docs/performance.md).")
    var moe = false

    @Option(name: .customLong("moe-shape"), help: "experts,top-k,hidden,expert-width of the --moe layer.")
    var moeShape = "128,8,2048,768"

    @Option(name: .customLong("moe-type"), help: "Weight format of the --moe experts (q4_K, q8_0, ...).")
    var moeType = "q4_K"

    func validate() throws {
        guard nPrompt >= 0, nGen >= 0, nPrompt + nGen > 0 else { throw ValidationError("-p and -n must be >= 0, not both 0") }
        guard repetitions >= 1 else { throw ValidationError("--repetitions must be >= 1") }
        guard batch >= 1, batch <= 256 else { throw ValidationError("--batch must be between 1 and 256") }
        guard chunkSize >= 1 else { throw ValidationError("--chunk-size must be >= 1") }
        if let threads, threads < 1 { throw ValidationError("--threads must be >= 1") }
        if profileKernels, !(device ?? "cpu").hasPrefix("cuda") { throw ValidationError("--profile-kernels needs --device cuda") }
    }

    struct Result: Codable {
        var model: String
        var test: String
        var n_prompt: Int
        var n_gen: Int
        var batch: Int
        var threads: Int
        var isa: String
        var device: String
        var repetitions: Int
        var tokens_per_second: Double
        var median_tokens_per_second: Double
        var stddev_tokens_per_second: Double
        var samples_tokens_per_second: [Double]
        /// MoE models whose experts run on the CPU: distinct experts per layer-step by step size, against
        /// independent random choices (the routing-spread check of a random-weight model).
        var routing: [ExpertUsage.StepSummary]?
    }

    /// One line on the routing of a test's steps: distinct experts read per MoE layer-step against independent
    /// random choices.
    static func routingLine(test: String, _ steps: [ExpertUsage.StepSummary], experts: Int) -> String {
        let parts = steps.map {
            String(format: "%d-token steps %.1f of %d (random choices: %.1f)", $0.tokens, $0.meanDistinct, experts,
                   $0.expectedDistinct)
        }
        return "routing, \(test): distinct experts per MoE layer-step: " + parts.joined(separator: "; ") + "\n"
    }

    func run() throws {
        if moe { return try runMoE() }
        let ctx = max(nPrompt, nGen)
        let seqs = max(batch, 1)
        let loaded = try LoadOptions(model: model, threads: threads, placement: placementOptions.spec, device: device,
                                     cudaGraphs: !noCudaGraphs, batchInvariant: batchInvariant,
                                     limits: RunLimits(maxTokens: max(chunkSize, seqs), maxSequences: seqs, maxLogitsRows: seqs,
                                                       contextLength: ctx)).load()
        let lm = loaded.model, pool = loaded.cpu.pool
        if profileKernels { loaded.gpu?.profiling = true }
        var profiles = ""
        let deviceName = loaded.gpus.count > 1
            ? "\(loaded.gpus.map(\.device.description).joined(separator: ",")) \(loaded.gpus[0].gpuName) (tensor parallel)"
            : loaded.gpu.map { "\($0.device) \($0.gpuName)" } ?? "cpu"
        let name = URL(fileURLWithPath: loaded.file.path).lastPathComponent
        guard ctx <= lm.info.contextLength else {
            throw CLIError("a test needs \(ctx) positions, the model's context is \(lm.info.contextLength)")
        }
        let pageSize = 256
        let pagesPerSeq = (ctx + pageSize - 1) / pageSize
        let cache = lm.makeKVCache(pageSize: pageSize, numPages: pagesPerSeq * seqs)
        let tables = (0..<seqs).map { s in (0..<pagesPerSeq).map { Int32(s * pagesPerSeq + $0) } }
        let vocab = lm.info.vocabSize
        var rng = SystemRandomNumberGenerator()
        var results: [Result] = []

        func measure(_ test: String, tokens: Int, _ body: () throws -> Void) throws {
            try body()  // warm-up
            loaded.gpu?.resetKernelProfile()
            for u in lm.expertUsage { u.reset() }
            var samples: [Double] = []
            for _ in 0..<repetitions {
                let t0 = DispatchTime.now().uptimeNanoseconds
                try body()
                let s = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
                samples.append(Double(tokens) / s)
            }
            if profileKernels, let gpu = loaded.gpu {
                let wall = samples.map { Double(tokens) / $0 * 1000 }.reduce(0, +)
                profiles += Self.profileTable(test: test, gpu.kernelProfile(), wallMs: wall, tokens: tokens * repetitions)
            }
            let mean = samples.reduce(0, +) / Double(samples.count)
            let sd = (samples.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(max(samples.count - 1, 1))).squareRoot()
            let median = samples.sorted()[samples.count / 2]
            // NOTE: one record per executor; with experts split over devices only the CPU's steps are in it.
            let routing = lm.expertUsage.first.map { $0.stepSummary() }
            if let routing, !routing.isEmpty, let u = lm.expertUsage.first {
                Output.err(Self.routingLine(test: test, routing, experts: u.expertCount))
            }
            results.append(Result(model: name, test: test, n_prompt: test.hasPrefix("pp") ? nPrompt : 0,
                                  n_gen: test.hasPrefix("tg") ? nGen : 0, batch: test.hasPrefix("tg") ? batch : 1,
                                  threads: pool.threadCount, isa: KernelDispatch.isa, device: deviceName, repetitions: repetitions,
                                  tokens_per_second: mean, median_tokens_per_second: median,
                                  stddev_tokens_per_second: sd, samples_tokens_per_second: samples,
                                  routing: routing?.isEmpty == false ? routing : nil))
        }

        if nPrompt > 0 {
            let prompt = (0..<nPrompt).map { _ in Int32.random(in: 0..<Int32(vocab), using: &rng) }
            try measure("pp\(nPrompt)", tokens: nPrompt) {
                var done = 0
                while done < nPrompt {
                    let n = min(chunkSize, nPrompt - done)
                    var b = ForwardBatch(pageSize: pageSize)
                    b.addSequence(tokens: Array(prompt[done..<done + n]), startPosition: done, blockTable: tables[0],
                                  logits: done + n == nPrompt ? .last : .none)
                    let out = try lm.forward(b, cache: cache)
                    done += n
                    // Reading the last logits waits for a device backend's queued work.
                    if done == nPrompt { _ = lm.backend.read(out, count: 1) }
                }
            }
        }
        if nGen > 0 {
            let test = batch > 1 ? "tg\(nGen)x\(batch)" : "tg\(nGen)"
            // Each sequence starts from its own random token, so the sequences differ as real requests do (with
            // one start token they would decode identically, and an MoE model would route every sequence to the
            // same experts).
            let starts = (0..<batch).map { _ in Int32.random(in: 0..<Int32(vocab), using: &rng) }
            // Greedy choices on the backend (argmaxRows, as the engine's greedy requests): one int a sequence read.
            let chosen = lm.backend.allocate(batch)
            defer { lm.backend.release(chosen) }
            try measure(test, tokens: nGen * batch) {
                var next = starts
                for pos in 0..<nGen {
                    var b = ForwardBatch(pageSize: pageSize)
                    for s in 0..<batch {
                        b.addSequence(tokens: [next[s]], startPosition: pos, blockTable: tables[s], logits: .last)
                    }
                    lm.backend.argmaxRows(try lm.forward(b, cache: cache), rows: batch, cols: vocab, out: chosen)
                    let ids = UnsafeRawPointer(lm.backend.read(chosen, count: batch))
                    for s in 0..<batch { next[s] = ids.load(fromByteOffset: 4 * s, as: Int32.self) }
                }
            }
        }

        if json {
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            Output.out(String(decoding: try enc.encode(results), as: UTF8.self) + "\n")
        } else {
            var s = "| model | device | threads | isa | test | t/s (mean ± sd) | median |\n|---|---|---|---|---|---|---|\n"
            for r in results {
                s += String(format: "| %@ | %@ | %d | %@ | %@ | %.2f ± %.2f | %.2f |\n", r.model, r.device, r.threads, r.isa, r.test,
                            r.tokens_per_second, r.stddev_tokens_per_second, r.median_tokens_per_second)
            }
            Output.out(s + profiles)
        }
    }

    /// Where a test's GPU time went: kernels by total time, their share, and the kernels' sum against the wall time.
    static func profileTable(test: String, _ rows: [(name: String, calls: Int, ms: Double)], wallMs: Double, tokens: Int) -> String {
        let total = rows.reduce(0) { $0 + $1.ms }
        var s = String(format: "\n%@: kernels %.2f ms of %.2f ms wall (%.0f%%), %.3f ms GPU per token\n\n", test, total, wallMs,
                       100 * total / max(wallMs, 1e-9), total / Double(max(tokens, 1)))
        s += "| kernel | calls | total ms | µs per call | share |\n|---|---|---|---|---|\n"
        for r in rows.prefix(25) {
            s += String(format: "| %@ | %d | %.2f | %.1f | %.1f%% |\n", r.name, r.calls, r.ms, 1000 * r.ms / Double(max(r.calls, 1)),
                        100 * r.ms / max(total, 1e-9))
        }
        return s
    }

    private func runMoE() throws {
        let shape = moeShape.split(separator: ",").compactMap { Int($0) }
        guard shape.count == 4, shape.allSatisfy({ $0 > 0 }) else {
            throw CLIError("--moe-shape wants four positive integers: experts,top-k,hidden,expert-width")
        }
        guard let type = GGMLType(name: moeType) else { throw CLIError("--moe-type: unknown format '\(moeType)'") }
        let bench = MoEBench(experts: shape[0], topK: shape[1], dim: shape[2], ff: shape[3], type: type,
                             threads: threads ?? CPUInfo.physicalCores, repetitions: repetitions)
        let results = try bench.run(batches: Array(Set([1, 8, batch])).sorted())
        if json {
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            Output.out(String(decoding: try enc.encode(results), as: UTF8.self) + "\n")
        } else {
            Output.out(MoEBench.table(results))
            if ProcessInfo.processInfo.environment["KTRANSFORMERS_MOE_DIAG"] == "1" {
                Output.out(MemoryBandwidth.diagnostics(pool: ThreadPool(threads: threads ?? CPUInfo.physicalCores)))
            }
        }
    }

}
