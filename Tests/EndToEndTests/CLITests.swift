import Foundation
import GGUF
import Quant
import XCTest

/// The `ktransformers` binary as a user runs it: real model, real files, exit codes and messages.
final class CLITests: XCTestCase {
    struct Run {
        /// The exit status, or 128 + the signal number when a signal ended the process.
        let status: Int32
        let stdout: String
        let stderr: String
        /// Killed after the time limit `execute` was given.
        var timedOut = false
    }

    /// The binary `swift build` / `swift test` put beside the test bundle.
    static var binary: URL {
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        if dir.pathExtension == "xctest" { dir = dir.deletingLastPathComponent() }  // Darwin bundle layout
        return dir.appendingPathComponent("ktransformers")
    }

    func run(_ args: [String]) throws -> Run { try CLITests.execute(args) }

    /// Runs the binary to completion and captures its output.
    static func execute(_ args: [String], timeout: Double? = nil, environment: [String: String] = [:]) throws -> Run {
        let bin = CLITests.binary
        guard FileManager.default.isExecutableFile(atPath: bin.path) else {
            XCTFail("ktransformers binary not found at \(bin.path); build the package first")
            throw CocoaError(.fileNoSuchFile)
        }
        let p = Process()
        p.executableURL = bin
        p.arguments = args
        if !environment.isEmpty {
            p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        // stderr goes to a file, stdout through a pipe read to the end before waiting, so nothing can block.
        let errURL = FileManager.default.temporaryDirectory.appendingPathComponent("cli-stderr-\(UUID().uuidString)")
        FileManager.default.createFile(atPath: errURL.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: errURL) }
        let out = Pipe()
        let errHandle = try FileHandle(forWritingTo: errURL)
        p.standardOutput = out
        p.standardError = errHandle
        try p.run()
        let killed = TimeoutFlag()
        let timer = DispatchWorkItem { if p.isRunning { killed.set(); p.terminate() } }
        if let timeout { DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: timer) }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        timer.cancel()
        try errHandle.close()
        let errData = try Data(contentsOf: errURL)
        let status = p.terminationReason == .uncaughtSignal ? 128 + p.terminationStatus : p.terminationStatus
        return Run(status: status, stdout: String(decoding: outData, as: UTF8.self),
                   stderr: String(decoding: errData, as: UTF8.self), timedOut: killed.isSet)
    }

    private var tmp: URL!

    override func setUpWithError() throws {
        tmp = FileManager.default.temporaryDirectory.appendingPathComponent("cli-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: tmp) }

    /// Asserts a clean failure: non-zero exit by status (not a signal), a message containing `text`.
    func assertCleanFailure(_ r: Run, contains text: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertNotEqual(r.status, 0, file: file, line: line)
        XCTAssertLessThan(r.status, 128, "exit status \(r.status) looks like a crash", file: file, line: line)
        XCTAssertTrue(r.stderr.contains(text), "stderr lacks '\(text)': \(r.stderr)", file: file, line: line)
    }

    /// `--device cuda` where there is no CUDA driver (CI), an unknown device, and a GPU number the driver does not
    /// have: a message naming the problem and exit status 1, never a crash or a hang.
    func testDeviceWithoutCUDAIsAClearError() throws {
        let noDriver = try Self.execute(["logits", "--device", "cuda", "--tokens", "1"], timeout: 60,
                                        environment: ["KTRANSFORMERS_CUDA_DRIVER": "/nonexistent/libcuda.so.1"])
        XCTAssertEqual(noDriver.status, 1, noDriver.stderr)
        XCTAssertTrue(noDriver.stderr.contains("--device cuda: CUDA is not usable on this machine"), noDriver.stderr)
        let bogus = try Self.execute(["logits", "--device", "tpu", "--tokens", "1"], timeout: 60)
        XCTAssertEqual(bogus.status, 1, bogus.stderr)
        XCTAssertTrue(bogus.stderr.contains("--device tpu: expected cpu, cuda or cuda:N"), bogus.stderr)
        if ProcessInfo.processInfo.environment["KTRANSFORMERS_CUDA_DRIVER"] != nil {
            let missing = try Self.execute(["logits", "--device", "cuda:7", "--tokens", "1"], timeout: 60)
            XCTAssertEqual(missing.status, 1, missing.stderr)
            XCTAssertTrue(missing.stderr.contains("cuda:7"), missing.stderr)
        }
    }

    func testTruncatedModelFileIsAClearError() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: DefaultModel.path))
        let cut = tmp.appendingPathComponent("truncated.gguf")
        try data.prefix(data.count / 2).write(to: cut)
        let r = try run(["generate", "--model", cut.path, "--prompt", "hi", "-n", "2"])
        assertCleanFailure(r, contains: "truncated file")
        XCTAssertTrue(r.stderr.contains(cut.path), r.stderr)
    }

    func testRandomBytesAreAClearError() throws {
        let f = tmp.appendingPathComponent("random.gguf")
        try Data((0..<100_000).map { _ in UInt8.random(in: 0...255) }).write(to: f)
        assertCleanFailure(try run(["generate", "--model", f.path, "--prompt", "hi"]), contains: "not a GGUF file")
        assertCleanFailure(try run(["inspect", f.path]), contains: "not a GGUF file")
    }

    func testUnknownQuantTypeIsAClearError() throws {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.addTensor(name: "token_embd.weight", shape: [32, 4], type: .f32, data: [UInt8](repeating: 0, count: 512))
        var bytes = w.encoded()
        // The tensor's type field: after the header (24), name (8 + 17 bytes), n_dims (4), dims (16),
        // and the one metadata pair (8 + 20 key, 4 type, 8 + 5 value).
        let typeOffset = 24 + (8 + 20 + 4 + 8 + 5) + (8 + 17) + 4 + 16
        XCTAssertEqual(bytes[typeOffset], 0)
        bytes[typeOffset] = 77
        let f = tmp.appendingPathComponent("unknown-type.gguf")
        try Data(bytes).write(to: f)
        assertCleanFailure(try run(["generate", "--model", f.path, "--prompt", "hi"]),
                           contains: "tensor 'token_embd.weight' has unknown ggml type 77")
    }

    /// A YAML placement rules file: bad rules are errors naming the file and line; a valid one loads (on the CPU
    /// every tensor is on the CPU anyway, so the rules change nothing there).
    func testPlacementRulesFileErrorsNameTheLine() throws {
        let model = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../ModelTests/Fixtures/qwen3moe.gguf").standardized.path
        let cases: [(String, String)] = [
            ("- match: \"blk.*.ffn_*_exps.*\"\n  devise: cpu\n", "rules.yaml:2: unknown key 'devise'"),
            ("- match: \"blk.*\"\n  device: tpu\n", "rules.yaml:2: unknown device 'tpu'"),
            ("- device: cpu\n", "rules.yaml:1: the rule has no 'match' glob"),
            ("rules: 5\n", "rules.yaml:1: expected a list of rules"),
            ("- [unclosed\n", "rules.yaml: not valid YAML"),
        ]
        for (text, message) in cases {
            let f = tmp.appendingPathComponent("rules.yaml")
            try Data(text.utf8).write(to: f)
            assertCleanFailure(try run(["logits", "--model", model, "--tokens", "1 2", "--placement", f.path]), contains: message)
        }
        let good = tmp.appendingPathComponent("good.yaml")
        try Data("rules:\n  - match: \"blk.*.ffn_*_exps.*\"\n    device: cpu\n    name: experts\n".utf8).write(to: good)
        let r = try run(["logits", "--model", model, "--tokens", "1 2", "--placement", good.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        let flags = try run(["logits", "--model", model, "--tokens", "1 2", "--cpu-moe", "--n-cpu-moe", "1"])
        XCTAssertNotEqual(flags.status, 0)
        XCTAssertTrue(flags.stderr.contains("cannot be combined"), flags.stderr)
        // Expert deferral is a property of the hybrid MoE: on the CPU it is refused, not ignored.
        let deferred = try run(["logits", "--model", model, "--tokens", "1 2", "--defer-experts", "1"])
        assertCleanFailure(deferred, contains: "--defer-experts needs the hybrid MoE")
        assertCleanFailure(try run(["logits", "--model", model, "--tokens", "1 2", "--defer-experts=-1"]),
                           contains: "--defer-experts must be 0 or more")
    }

    func testKnownButUnsupportedQuantTypeAndArchitectureAreNamed() throws {
        var w = GGUFWriter()
        w.set("general.architecture", .string("llama"))
        w.set("llama.embedding_length", .uint32(256))
        w.set("llama.block_count", .uint32(1))
        w.set("llama.feed_forward_length", .uint32(256))
        w.set("llama.attention.head_count", .uint32(2))
        w.set("llama.attention.layer_norm_rms_epsilon", .float32(1e-5))
        w.set("llama.context_length", .uint32(64))
        w.addTensor(name: "token_embd.weight", shape: [256, 4], type: .iq2_xxs,
                    data: [UInt8](repeating: 0, count: 4 * GGMLType.iq2_xxs.typeSize))
        let f = tmp.appendingPathComponent("iq2.gguf")
        try w.write(to: f.path)
        assertCleanFailure(try run(["logits", "--model", f.path, "--tokens", "1 2"]),
                           contains: "'token_embd.weight' has type IQ2_XXS, which has no kernels")

        w.set("general.architecture", .string("mamba"))
        try w.write(to: f.path)
        let r = try run(["logits", "--model", f.path, "--tokens", "1"])
        assertCleanFailure(r, contains: "unsupported architecture 'mamba'")
        XCTAssertTrue(r.stderr.contains("gemma3") && r.stderr.contains("qwen3"), r.stderr)

        // `serve` binds its port before loading the weights: a model that fails to load still ends the process with
        // the message and status 1, not a server that stays up answering "loading".
        let s = try Self.execute(["serve", "--model", f.path, "--port", "0"], timeout: 60)
        XCTAssertFalse(s.timedOut, s.stderr)
        XCTAssertEqual(s.status, 1, s.stderr)
        XCTAssertTrue(s.stderr.contains("unsupported architecture 'mamba'"), s.stderr)
    }

    func testMissingModelFileAndBadArguments() throws {
        assertCleanFailure(try run(["generate", "--model", tmp.appendingPathComponent("nope.gguf").path, "--prompt", "x"]),
                           contains: "cannot open")
        assertCleanFailure(try run(["generate", "--prompt", "x", "--temperature", "-1"]), contains: "--temperature")
        assertCleanFailure(try run(["logits", "--tokens", "1 banana"]), contains: "'banana' is not a token id")
        assertCleanFailure(try run(["logits", "--tokens", "999999999"]), contains: "outside the vocabulary")
    }

    /// Every command loads through one path: a folder holding one .gguf works for bench as for generate, `serve`
    /// opens a Hugging Face checkpoint (this tiny one has no tokenizer, which serve names), and placement rules
    /// are validated with the rule named.
    func testOneLoadPathFoldersCheckpointsAndPlacement() throws {
        let folder = tmp.appendingPathComponent("one-model")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(at: folder.appendingPathComponent("gemma.gguf"),
                                                   withDestinationURL: URL(fileURLWithPath: DefaultModel.path))
        let b = try run(["bench", "--model", folder.path, "-p", "8", "-n", "4", "-r", "1", "--json"])
        XCTAssertEqual(b.status, 0, b.stderr)
        XCTAssertTrue(b.stdout.contains("\"pp8\"") && b.stdout.contains("\"tg4\""), b.stdout)

        let hf = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../HFTests/Fixtures/qwen3").standardized.path
        assertCleanFailure(try run(["serve", "--model", hf, "--port", "0"]), contains: "no tokenizer")
        let l = try run(["logits", "--model", hf, "--tokens", "1 2 3", "--top", "1"])
        XCTAssertEqual(l.status, 0, l.stderr)

        assertCleanFailure(try run(["generate", "--prompt", "hi", "--placement", "output.weight=cuda"]),
                           contains: "placement rule 'output.weight=cuda'")
        assertCleanFailure(try run(["generate", "--prompt", "hi", "--placement", "blk.*=tpu"]),
                           contains: "unknown device 'tpu'")
        assertCleanFailure(try run(["logits", "--tokens", "1", "--placement", "nonsense"]),
                           contains: "expected PATTERN=DEVICE")
    }

    func testTokenizeMatchesReference() throws {
        let r = try run(["tokenize", "--text", "Good evening, Sam.", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let obj = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        XCTAssertEqual(obj["ids"] as? [Int], [2, 11947, 9137, 236764, 6687, 236761])
        let noBOS = try run(["tokenize", "--text", "Good evening, Sam.", "--json", "--no-bos"])
        XCTAssertEqual((try JSONSerialization.jsonObject(with: Data(noBOS.stdout.utf8)) as! [String: Any])["ids"] as? [Int],
                       [11947, 9137, 236764, 6687, 236761])
    }

    /// Greedy generation prints the reference continuation's first token and a timing line.
    func testGenerateGreedyStreamsTextAndTiming() throws {
        let r = try run(["generate", "--prompt", "My favourite season is autumn because", "-n", "8", "--temperature", "0",
                         "--threads", "2"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.hasPrefix(" it"), r.stdout)  // the reference's first token (625, " it"; gap 0.75)
        XCTAssertTrue(r.stderr.contains("prompt: 7 tokens"), r.stderr)
        XCTAssertTrue(r.stderr.contains("generation: 8 tokens"), r.stderr)
    }

    /// `--devices cpu,cpu` splits the default model over two tensor-parallel shards: the same greedy text as one
    /// device (up to the reference's first near-tie: the split adds in another order), the split said in the log;
    /// what cannot be split or combined is refused with the reason.
    func testTensorParallelFlags() throws {
        // ref_f64.jsonl's first near-tie (top-1/top-2 gap < 0.5) on this prompt is at step 8.
        let args = ["generate", "--prompt", "Water boils at", "-n", "8", "--temperature", "0"]
        let one = try run(args + ["--threads", "2"])
        let two = try run(args + ["--threads", "2", "--devices", "cpu,cpu"])
        XCTAssertEqual(one.status, 0, one.stderr)
        XCTAssertEqual(two.status, 0, two.stderr)
        XCTAssertEqual(two.stdout, one.stdout)
        XCTAssertTrue(two.stderr.contains("tensor parallel over 2 shards"), two.stderr)
        XCTAssertTrue(two.stderr.contains("all-reduce after each attention and feed-forward: host memory"), two.stderr)
        assertCleanFailure(try run(["logits", "--tokens", "1", "--tensor-parallel", "2"]),
                           contains: "--tensor-parallel 2 splits the model over GPUs: add --device cuda")
        assertCleanFailure(try run(["logits", "--tokens", "1", "--devices", "cpu,cpu,cpu"]),
                           contains: "4 attention heads cannot be split over 3 tensor-parallel shards")
        assertCleanFailure(try run(["logits", "--tokens", "1", "--devices", "cpu,cpu", "--tensor-parallel", "4"]),
                           contains: "--tensor-parallel 4 but --devices names 2 device(s)")
        assertCleanFailure(try run(["logits", "--tokens", "1", "--devices", "cpu,cpu", "--cpu-moe"]),
                           contains: "do not combine with tensor parallelism")
        assertCleanFailure(try run(["logits", "--tokens", "1", "--devices", "cpu,tpu"]), contains: "--devices: unknown device 'tpu'")
        assertCleanFailure(try run(["logits", "--tokens", "1", "--devices", "cpu,cuda"]), contains: "the shards must all be GPUs")
    }

    func testLogitsTopKIsValidJSONWithOneRowPerToken() throws {
        let r = try run(["logits", "--tokens", "2 4754 17797 3409 563 16273 1547", "--top", "5"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let obj = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        let top = obj["top"] as! [[[String: Any]]]
        XCTAssertEqual(top.count, 7)
        XCTAssertEqual(top.last?.first?["id"] as? Int, 625)  // " it", as in ref_f64.jsonl
        let lp = top.last!.map { $0["logprob"] as! Double }
        XCTAssertEqual(lp, lp.sorted(by: >))
        XCTAssertEqual(lp[0], -0.8839, accuracy: 0.15)
    }

    func testInspectSummarisesTheDefaultModel() throws {
        let r = try run(["inspect"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("general.architecture = \"gemma3\""), r.stdout)
        XCTAssertTrue(r.stdout.contains("236 tensors"), r.stdout)
        for line in ["Q5_0       81 tensors", "Q4_K       27 tensors", "Q6_K        9 tensors", "Q8_0       10 tensors",
                     "F32       109 tensors"] {
            XCTAssertTrue(r.stdout.contains(line), "missing '\(line)' in:\n\(r.stdout)")
        }
    }
}

final class TimeoutFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.lock(); value = true; lock.unlock() }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
}
