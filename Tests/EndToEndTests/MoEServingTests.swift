import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import GGUF
import XCTest

/// `generate` and `serve` on a Mixture-of-Experts model work as on dense ones. The tiny random qwen3moe
/// fixture (checked against a float64 reference in ModelTests) gets a 96-token byte-level vocabulary so the
/// text commands can run it; greedy text from `generate` and from the server must agree.
final class MoEServingTests: XCTestCase {
    /// The ModelTests fixture plus `tokenizer.ggml.*` metadata: GPT-2 byte-level symbols for '!'...'~', 'Ġ' (space)
    /// and 'Ċ' (newline), no merges.
    static func tinyMoEWithTokenizer(at path: String) throws {
        let src = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../ModelTests/Fixtures/qwen3moe.gguf").standardized.path
        let f = try GGUFFile(path: src)
        var w = GGUFWriter()
        for k in f.metadataKeys where !k.hasPrefix("tokenizer.") { w.set(k, f.metadata[k]!) }
        var tokens = (33...126).map { String(UnicodeScalar(UInt8($0))) }
        tokens += ["\u{120}", "\u{10A}"]
        XCTAssertEqual(tokens.count, 96)
        w.set("tokenizer.ggml.model", .string("gpt2"))
        w.set("tokenizer.ggml.pre", .string("qwen2"))
        w.set("tokenizer.ggml.tokens", .array(.string(tokens)))
        w.set("tokenizer.ggml.token_type", .array(.int32(Array(repeating: 1, count: 96))))
        w.set("tokenizer.ggml.merges", .array(.string([])))
        w.set("tokenizer.ggml.bos_token_id", .uint32(0))
        w.set("tokenizer.ggml.eos_token_id", .uint32(95))
        w.set("tokenizer.ggml.add_bos_token", .bool(false))
        for t in f.tensors {
            w.addTensor(name: t.name, shape: t.shape, type: t.type,
                        data: Array(UnsafeRawBufferPointer(start: f.data(of: t), count: t.byteCount)))
        }
        try w.write(to: path)
    }

    func testGenerateAndServeAgreeOnAnMoEModel() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("moe-serving-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let model = dir.appendingPathComponent("tiny-qwen3moe.gguf").path
        try Self.tinyMoEWithTokenizer(at: model)
        let gen = try CLITests.execute(["generate", "--model", model, "--prompt", "hello world", "-n", "12", "--temperature", "0",
                               "--ignore-eos"])
        XCTAssertEqual(gen.status, 0, gen.stderr)
        XCTAssertTrue(gen.stderr.contains("generation: 12 tokens"), gen.stderr)
        let generated = String(gen.stdout.dropLast())  // generate ends with a newline

        // The server on a free port; stderr names the port. It goes to a file: a pipe nobody reads would fill up
        // with the load progress and access log lines and block the server.
        let logURL = dir.appendingPathComponent("serve.log")
        FileManager.default.createFile(atPath: logURL.path, contents: nil)
        let log = try FileHandle(forWritingTo: logURL)
        defer { try? log.close() }
        let p = Process()
        p.executableURL = CLITests.binary
        p.arguments = ["serve", "--model", model, "--port", "0", "--threads", "2"]
        p.standardError = log
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        defer { p.terminate(); p.waitUntilExit() }
        var port: Int?
        var seen = ""
        let deadline = Date().addingTimeInterval(60)
        while port == nil && Date() < deadline && p.isRunning {
            seen = (try? String(contentsOf: logURL, encoding: .utf8)) ?? ""
            if let r = seen.range(of: #"listening on http://127\.0\.0\.1:(\d+)"#, options: .regularExpression) {
                port = Int(seen[r].split(separator: ":").last!)
            } else {
                Thread.sleep(forTimeInterval: 0.05)
            }
        }
        let serverPort = try XCTUnwrap(port, "server did not report its port: \(seen)")
        // The server binds before it loads the model (`/health` answers 503 "loading" meanwhile): wait for 200.
        var ready = false
        let readyBy = Date().addingTimeInterval(60)
        while !ready && Date() < readyBy {
            var probe = URLRequest(url: URL(string: "http://127.0.0.1:\(serverPort)/health")!)
            probe.timeoutInterval = 5
            let answered = expectation(description: "health")
            nonisolated(unsafe) var status = 0
            URLSession.shared.dataTask(with: probe) { _, response, _ in
                status = (response as? HTTPURLResponse)?.statusCode ?? 0
                answered.fulfill()
            }.resume()
            wait(for: [answered], timeout: 10)
            ready = status == 200
            if !ready { Thread.sleep(forTimeInterval: 0.05) }
        }
        XCTAssertTrue(ready, "server never became ready: \((try? String(contentsOf: logURL, encoding: .utf8)) ?? "")")
        var req = URLRequest(url: URL(string: "http://127.0.0.1:\(serverPort)/v1/completions")!)
        req.httpMethod = "POST"
        req.setValue("application/json", forHTTPHeaderField: "Content-Type")
        req.httpBody = try JSONSerialization.data(withJSONObject: [
            "prompt": "hello world", "max_tokens": 12, "temperature": 0, "ignore_eos": true,
        ])
        let done = expectation(description: "response")
        nonisolated(unsafe) var body: [String: Any]?
        URLSession.shared.dataTask(with: req) { data, _, _ in
            body = data.flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] }
            done.fulfill()
        }.resume()
        wait(for: [done], timeout: 60)
        let choice = try XCTUnwrap((body?["choices"] as? [[String: Any]])?.first, "\(String(describing: body))")
        print("generate: \(generated.debugDescription), serve: \(String(describing: choice["text"]).debugDescription)")
        XCTAssertEqual(choice["text"] as? String, generated)
        XCTAssertEqual((body?["usage"] as? [String: Any])?["completion_tokens"] as? Int, 12)

        // bench serve against it: this byte-level vocabulary splits each English word into several tokens, and the
        // prompts still have the asked length (cut with the server's /tokenize and /detokenize).
        let bench = try CLITests.execute(["bench", "serve", "--url", "http://127.0.0.1:\(serverPort)", "--concurrency", "1",
                                          "--requests", "2", "--input-len", "20", "--output-len", "2",
                                          "--endpoint", "completions", "--json"], timeout: 120)
        XCTAssertEqual(bench.status, 0, bench.stderr)
        let report = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(bench.stdout.utf8)) as? [String: Any], bench.stdout)
        XCTAssertEqual(report["completed"] as? Int, 2, bench.stdout)
        let inputTokens = try XCTUnwrap(report["input_tokens"] as? Int, bench.stdout)
        XCTAssert((2 * 19...2 * 21).contains(inputTokens), "prompts of \(inputTokens) tokens for 2 requests of --input-len 20")
    }
}
