import ArgumentParser
import Dispatch
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

/// `ktransformers bench serve`: load generator for any OpenAI-compatible server (like `vllm bench serve`).
struct BenchServe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Load-test an OpenAI-compatible server: throughput, TTFT and inter-token latency.",
        discussion: """
        Sends --requests streaming requests from --concurrency clients, each with a synthetic prompt of about \
        --input-len tokens (cut to that many by the server's /tokenize where it has one) asking for exactly --output-len tokens (ignore_eos, --temperature 0). Reports output \
        tokens/s, requests/s, and p50/p90/p99 of time to first token (TTFT), time per output token after the \
        first (TPOT), inter-token latency (ITL, between streamed chunks) and end-to-end latency. Plain HTTP only.
        """)

    @Option(help: "Server base URL.")
    var url: String = "http://127.0.0.1:10002"

    @Option(help: "Endpoint: completions (/v1/completions) or chat (/v1/chat/completions).")
    var endpoint: String = "completions"

    @Option(help: "Model id to send (default: the first of the server's /v1/models).")
    var model: String?

    @Option(help: "Requests in flight at once.")
    var concurrency: Int = 4

    @Option(name: [.customLong("requests"), .customLong("num-prompts")], help: "Requests in total.")
    var requests: Int = 32

    @Option(name: [.customLong("input-len"), .customLong("prompt-tokens")], help: "Approximate prompt length in tokens.")
    var inputLen: Int = 128

    @Option(name: [.customLong("output-len"), .customLong("output-tokens")], help: "Tokens to generate per request.")
    var outputLen: Int = 128

    @Option(name: .customLong("api-key"), help: "Sent as 'Authorization: Bearer KEY'.")
    var apiKey: String?

    @Option(help: "Turns per conversation: with T > 1 each of --requests is a conversation of T requests, each resending the whole history (earlier user messages and the answers) plus a new user message of --input-len tokens; the report adds TTFT per turn and the prefix-cache hit rate.")
    var turns: Int = 1

    @Option(name: .customLong("first-input-len"), help: "Tokens of a conversation's first user message (default: --input-len), e.g. a long system prompt or document.")
    var firstInputLen: Int?

    @Option(help: "Seed of the synthetic prompts.")
    var seed: UInt64 = 0

    @Option(help: "Sampling temperature of every request (0: greedy).")
    var temperature: Double = 0

    @Option(name: .customLong("response-format"), help: "A JSON file whose object is sent as every chat request's response_format (structured output, e.g. {\"type\": \"json_schema\", \"json_schema\": {...}}); the requests then end where the JSON does.")
    var responseFormat: String?

    @Flag(help: "Print the results as one JSON object.")
    var json = false

    func validate() throws {
        guard concurrency >= 1, concurrency <= 4096 else { throw ValidationError("--concurrency must be between 1 and 4096") }
        guard requests >= 1 else { throw ValidationError("--requests must be at least 1") }
        guard inputLen >= 1, outputLen >= 1 else { throw ValidationError("--input-len and --output-len must be at least 1") }
        guard ["completions", "chat"].contains(endpoint) else { throw ValidationError("--endpoint must be completions or chat") }
        guard turns >= 1, turns <= 1000 else { throw ValidationError("--turns must be between 1 and 1000") }
        if let firstInputLen, firstInputLen < 1 { throw ValidationError("--first-input-len must be at least 1") }
        _ = try BenchTarget(url)
    }

    func run() throws {
        let done = DispatchSemaphore(value: 0)
        let result = ResultBox()
        Task {
            do { try await runAsync() } catch { result.set(error) }
            done.signal()
        }
        done.wait()
        if let e = result.get() { throw e }
    }

    func runAsync() async throws {
        let target = try BenchTarget(url)
        var h: [(String, String)] = [("Content-Type", "application/json")]
        if let apiKey { h.append(("Authorization", "Bearer \(apiKey)")) }
        let headers = h
        let modelID: String
        if let model {
            modelID = model
        } else {
            let r = try await BenchHTTP.request(target, method: .GET, path: target.basePath + "/v1/models", headers: headers, body: nil)
            guard r.status == 200, let obj = try? JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any],
                  let data = obj["data"] as? [[String: Any]], let id = data.first?["id"] as? String else {
                throw CLIError("\(url)/v1/models: HTTP \(r.status); pass --model")
            }
            modelID = id
        }
        var rng = SeededRNG(seed: seed)
        if turns > 1 { return try await conversations(target, headers: headers, modelID: modelID, rng: &rng) }
        var format: Any? = nil
        if let responseFormat {
            guard endpoint == "chat" else { throw CLIError("--response-format needs --endpoint chat") }
            guard let d = FileManager.default.contents(atPath: responseFormat),
                  let o = try? JSONSerialization.jsonObject(with: d), o is [String: Any] else {
                throw CLIError("--response-format \(responseFormat): not a readable JSON object")
            }
            format = o
        }
        let words = (0..<requests).map { _ in BenchServe.syntheticPrompt(tokens: inputLen, rng: &rng) }
        let prompts = await BenchServe.sized(words, tokens: inputLen, target, headers: headers)
        let bodies: [[UInt8]] = prompts.map { prompt in
            var obj: [String: Any] = ["model": modelID, "max_tokens": outputLen, "stream": true, "temperature": temperature,
                                      "ignore_eos": true, "stream_options": ["include_usage": true]]
            if let format { obj["response_format"] = format }
            if endpoint == "chat" {
                obj["messages"] = [["role": "user", "content": prompt]]
            } else {
                obj["prompt"] = prompt
            }
            return Array((try? JSONSerialization.data(withJSONObject: obj)) ?? Data())
        }
        let path = target.basePath + (endpoint == "chat" ? "/v1/chat/completions" : "/v1/completions")
        let chat = endpoint == "chat"
        let start = DispatchTime.now().uptimeNanoseconds
        let results = try await fanOut(bodies.count) { i in
            [await BenchServe.one(target, path: path, headers: headers, body: bodies[i], chat: chat)]
        }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        report(results, seconds: seconds, model: modelID)
    }

    /// `--turns T`: `requests` conversations from `concurrency` clients, each T requests in a row resending the
    /// whole history.
    func conversations(_ target: BenchTarget, headers: [(String, String)], modelID: String, rng: inout SeededRNG) async throws {
        let chat = endpoint == "chat"
        let path = target.basePath + (chat ? "/v1/chat/completions" : "/v1/completions")
        let lengths = (0..<turns).map { $0 == 0 ? (firstInputLen ?? inputLen) : inputLen }
        let words: [[String]] = (0..<requests).map { _ in lengths.map { BenchServe.syntheticPrompt(tokens: $0, rng: &rng) } }
        var sizedWords = words
        for t in 0..<turns {
            let column = await BenchServe.sized(words.map { $0[t] }, tokens: lengths[t], target, headers: headers)
            for c in 0..<requests { sizedWords[c][t] = column[c] }
        }
        let users = sizedWords
        let (model, maxTokens, temperature) = (modelID, outputLen, temperature)
        let start = DispatchTime.now().uptimeNanoseconds
        let results = try await fanOut(users.count) { c in
            var mine: [RequestResult] = []
            var messages: [[String: String]] = [], text = ""
            for (t, user) in users[c].enumerated() {
                var obj: [String: Any] = ["model": model, "max_tokens": maxTokens, "stream": true, "temperature": temperature,
                                          "ignore_eos": true, "stream_options": ["include_usage": true]]
                if chat {
                    messages.append(["role": "user", "content": user])
                    obj["messages"] = messages
                } else {
                    text += (text.isEmpty ? "" : "\n") + user
                    obj["prompt"] = text
                }
                let body = Array((try? JSONSerialization.data(withJSONObject: obj)) ?? Data())
                var r = await BenchServe.one(target, path: path, headers: headers, body: body, chat: chat)
                r.turn = t
                mine.append(r)
                guard r.ok else { break }
                if chat { messages.append(["role": "assistant", "content": r.text]) } else { text += r.text }
            }
            return mine
        }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        report(results, seconds: seconds, model: modelID)
    }

    /// Runs `work(i)` for every `i < count` from `--concurrency` clients at once (each client takes the next
    /// unclaimed `i`); returns every result.
    func fanOut(_ count: Int, _ work: @escaping @Sendable (Int) async -> [RequestResult]) async throws -> [RequestResult] {
        try await withThrowingTaskGroup(of: [RequestResult].self) { group in
            let next = Counter()
            for _ in 0..<concurrency {
                group.addTask {
                    var mine: [RequestResult] = []
                    while let i = next.take(below: count) { mine += await work(i) }
                    return mine
                }
            }
            var all: [RequestResult] = []
            for try await r in group { all += r }
            return all
        }
    }

    struct RequestResult: Sendable {
        var ok = false
        var error: String?
        var turn = 0
        var text = ""
        var cachedTokens = 0
        var promptTokens = 0
        var outputTokens = 0
        var ttft = 0.0
        var e2e = 0.0
        var itls: [Double] = []
    }

    static func one(_ target: BenchTarget, path: String, headers: [(String, String)], body: [UInt8], chat: Bool) async -> RequestResult {
        var r = RequestResult()
        let t0 = DispatchTime.now().uptimeNanoseconds
        var last: UInt64 = 0
        var sse = ""
        var chunks = 0
        var usageTokens: Int?
        do {
            let resp = try await BenchHTTP.request(target, method: .POST, path: path, headers: headers, body: body) { bytes in
                sse += String(decoding: bytes, as: UTF8.self)
                for payload in parseSSE(&sse) where payload != "[DONE]" {
                    guard let obj = try? JSONSerialization.jsonObject(with: Data(payload.utf8)) as? [String: Any] else { continue }
                    if let u = obj["usage"] as? [String: Any] {
                        usageTokens = u["completion_tokens"] as? Int
                        r.promptTokens = u["prompt_tokens"] as? Int ?? 0
                        r.cachedTokens = (u["prompt_tokens_details"] as? [String: Any])?["cached_tokens"] as? Int ?? 0
                    }
                    guard let c = (obj["choices"] as? [[String: Any]])?.first else { continue }
                    let text = chat ? ((c["delta"] as? [String: Any])?["content"] as? String) : (c["text"] as? String)
                    guard let text, !text.isEmpty else { continue }
                    r.text += text
                    let now = DispatchTime.now().uptimeNanoseconds
                    if chunks == 0 { r.ttft = Double(now - t0) / 1e9 } else { r.itls.append(Double(now - last) / 1e9) }
                    last = now
                    chunks += 1
                }
            }
            r.e2e = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            if resp.status != 200 {
                r.error = "HTTP \(resp.status): \(String(decoding: resp.body.prefix(200), as: UTF8.self))"
            } else {
                r.ok = chunks > 0
                r.outputTokens = usageTokens ?? chunks
                if !r.ok { r.error = "no tokens streamed" }
            }
        } catch {
            r.error = "\(error)"
        }
        return r
    }

    /// The synthetic texts cut to `tokens` tokens of the server's own tokenizer (`POST /tokenize`, then
    /// `/detokenize` of the first `tokens` ids: llama.cpp's server and this one have both), so that a prompt's
    /// length does not depend on how the vocabulary splits English words (a byte-level vocabulary gives several
    /// tokens a word). A server without them gets the texts as they are (about one token a word), said on stderr.
    static func sized(_ texts: [String], tokens: Int, _ target: BenchTarget, headers: [(String, String)]) async -> [String] {
        func post(_ path: String, _ obj: [String: Any]) async -> [String: Any]? {
            guard let body = try? JSONSerialization.data(withJSONObject: obj) else { return nil }
            var full: [UInt8] = []
            guard let r = try? await BenchHTTP.request(target, method: .POST, path: target.basePath + path, headers: headers,
                                                       body: Array(body), onBody: { full += $0 }),
                  r.status == 200 else { return nil }
            return (try? JSONSerialization.jsonObject(with: Data(full))) as? [String: Any]
        }
        var out: [String] = []
        for text in texts {
            var t = text, ids: [Int] = []
            // Words are at least a token each in any vocabulary seen so far; repeat the text if one merges them.
            for _ in 0..<4 {
                guard let r = await post("/tokenize", ["content": t]), let got = r["tokens"] as? [Int] else {
                    FileHandle.standardError.write(Data("bench serve: the server has no /tokenize; prompts are \(tokens) words (about one token each in most vocabularies)\n".utf8))
                    return texts
                }
                ids = got
                if ids.count >= tokens { break }
                t += " " + text
            }
            guard ids.count >= tokens, let r = await post("/detokenize", ["tokens": Array(ids.prefix(tokens))]),
                  let cut = r["content"] as? String else {
                FileHandle.standardError.write(Data("bench serve: /tokenize or /detokenize failed; prompts are \(tokens) words\n".utf8))
                return texts
            }
            out.append(cut)
        }
        return out
    }

    /// Words from a small list: most tokenizers give about one token per word (`sized` cuts them to an exact count).
    static func syntheticPrompt(tokens: Int, rng: inout SeededRNG) -> String {
        let words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "then", "runs", "far",
                     "away", "from", "home", "into", "a", "green", "forest", "where", "birds", "sing", "all", "day"]
        return (0..<tokens).map { _ in words[Int(rng.next() % UInt64(words.count))] }.joined(separator: " ")
    }

    static func parseSSE(_ buffer: inout String) -> [String] {
        var out: [String] = []
        while let r = buffer.range(of: "\n\n") {
            let block = buffer[buffer.startIndex..<r.lowerBound]
            buffer.removeSubrange(buffer.startIndex..<r.upperBound)
            for line in block.split(separator: "\n") where line.hasPrefix("data:") {
                out.append(line.dropFirst(5).trimmingCharacters(in: .whitespaces))
            }
        }
        return out
    }

    static func percentile(_ sorted: [Double], _ p: Double) -> Double {
        guard !sorted.isEmpty else { return 0 }
        let rank = p / 100 * Double(sorted.count - 1)
        let lo = Int(rank.rounded(.down)), hi = Int(rank.rounded(.up))
        return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - Double(lo))
    }

    func report(_ results: [RequestResult], seconds: Double, model: String) {
        let ok = results.filter(\.ok)
        let failed = results.count - ok.count
        let outTokens = ok.reduce(0) { $0 + $1.outputTokens }
        let inTokens = ok.reduce(0) { $0 + $1.promptTokens }
        let ttft = ok.map(\.ttft).sorted()
        let itl = ok.flatMap(\.itls).sorted()
        let tpot = ok.filter { $0.outputTokens > 1 }.map { ($0.e2e - $0.ttft) / Double($0.outputTokens - 1) }.sorted()
        let e2e = ok.map(\.e2e).sorted()
        let cached = ok.reduce(0) { $0 + $1.cachedTokens }
        // Per turn (conversations): TTFT and how much of the prompt came from the prefix cache.
        let perTurn: [[String: Any]] = turns <= 1 ? [] : (0..<turns).map { t in
            let r = ok.filter { $0.turn == t }
            let n = Double(max(r.count, 1))
            return ["turn": t + 1, "requests": r.count, "ttft_p50_ms": Self.percentile(r.map(\.ttft).sorted(), 50) * 1000,
                    "prompt_tokens_mean": Double(r.reduce(0) { $0 + $1.promptTokens }) / n,
                    "cached_tokens_mean": Double(r.reduce(0) { $0 + $1.cachedTokens }) / n]
        }
        func stats(_ v: [Double]) -> [String: Double] {
            ["mean_ms": v.isEmpty ? 0 : v.reduce(0, +) / Double(v.count) * 1000,
             "p50_ms": Self.percentile(v, 50) * 1000, "p90_ms": Self.percentile(v, 90) * 1000,
             "p99_ms": Self.percentile(v, 99) * 1000]
        }
        let summary: [String: Any] = [
            "url": url, "endpoint": endpoint, "model": model, "concurrency": concurrency,
            "requests": results.count, "completed": ok.count, "failed": failed,
            "duration_s": seconds, "input_tokens": inTokens, "output_tokens": outTokens,
            "request_throughput": Double(ok.count) / seconds,
            "output_throughput": Double(outTokens) / seconds,
            "total_token_throughput": Double(inTokens + outTokens) / seconds,
            "ttft": stats(ttft), "tpot": stats(tpot), "itl": stats(itl), "e2e": stats(e2e),
            "cached_tokens": cached, "prefix_cache_hit_rate": inTokens > 0 ? Double(cached) / Double(inTokens) : 0,
            "turns": perTurn,
            "errors": Array(Set(results.compactMap(\.error))).sorted().prefix(5).map { $0 },
        ]
        // NOTE: the parent `bench` command has a `--json` flag too, and ArgumentParser hands the flag to it even
        // after `serve`; so look at the command line as well.
        if json || CommandLine.arguments.dropFirst(2).contains("--json") {
            let data = (try? JSONSerialization.data(withJSONObject: summary, options: [.sortedKeys, .prettyPrinted])) ?? Data()
            Output.out(String(decoding: data, as: UTF8.self) + "\n")
            return
        }
        var s = "============ Serving Benchmark Result ============\n"
        func line(_ k: String, _ v: String) { s += k.padding(toLength: 40, withPad: " ", startingAt: 0) + v + "\n" }
        line("Successful requests:", "\(ok.count)")
        line("Failed requests:", "\(failed)")
        line("Concurrency:", "\(concurrency)")
        line("Benchmark duration (s):", String(format: "%.2f", seconds))
        line("Total input tokens:", "\(inTokens)")
        line("Total generated tokens:", "\(outTokens)")
        line("Request throughput (req/s):", String(format: "%.2f", Double(ok.count) / seconds))
        line("Output token throughput (tok/s):", String(format: "%.2f", Double(outTokens) / seconds))
        line("Total token throughput (tok/s):", String(format: "%.2f", Double(inTokens + outTokens) / seconds))
        line("Prompt tokens from the prefix cache:", String(format: "%d (%.1f%%)", cached, inTokens > 0 ? 100 * Double(cached) / Double(inTokens) : 0))
        for t in perTurn {
            line("  turn \(t["turn"]!): TTFT p50 (ms):", String(format: "%.2f  (prompt %.0f tokens, %.0f cached)",
                                                              t["ttft_p50_ms"] as! Double, t["prompt_tokens_mean"] as! Double,
                                                              t["cached_tokens_mean"] as! Double))
        }
        for (name, v) in [("Time to First Token", ttft), ("Time per Output Token (excl. 1st token)", tpot),
                          ("Inter-token Latency", itl), ("End-to-end Latency", e2e)] {
            s += "---" + name.padding(toLength: 47, withPad: "-", startingAt: 0) + "\n"
            let st = stats(v)
            for k in ["mean_ms", "p50_ms", "p90_ms", "p99_ms"] {
                line("  \(k.replacingOccurrences(of: "_ms", with: "")) (ms):", String(format: "%.2f", st[k] ?? 0))
            }
        }
        if let errors = summary["errors"] as? [String], !errors.isEmpty {
            s += "Errors (first \(errors.count) kinds):\n" + errors.map { "  " + $0 }.joined(separator: "\n") + "\n"
        }
        s += "==================================================\n"
        Output.out(s)
    }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func take(below limit: Int) -> Int? {
        lock.lock(); defer { lock.unlock() }
        guard n < limit else { return nil }
        n += 1
        return n - 1
    }
}

struct SeededRNG: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// `http://host:port/base` split up.
struct BenchTarget: Sendable {
    var host: String
    var port: Int
    var basePath: String

    init(_ url: String) throws {
        guard let u = URLComponents(string: url), u.scheme == "http", let host = u.host, !host.isEmpty else {
            throw ValidationError("--url must be http://HOST[:PORT][/PATH] (plain HTTP)")
        }
        self.host = host
        port = u.port ?? 80
        basePath = u.path.hasSuffix("/") ? String(u.path.dropLast()) : u.path
    }
}

/// A minimal HTTP/1.1 client on NIO: one connection per request, the body handed over as it arrives.
enum BenchHTTP {
    struct Response: Sendable {
        var status: Int
        var body: [UInt8]
    }

    static func request(_ t: BenchTarget, method: HTTPMethod, path: String, headers: [(String, String)], body: [UInt8]?,
                        onBody: ([UInt8]) -> Void = { _ in }) async throws -> Response {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(10))
            .connect(host: t.host, port: t.port) { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHTTPClientHandlers()
                    return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(wrappingChannelSynchronously: ch)
                }
            }
        return try await channel.executeThenClose { inbound, outbound in
            var h = HTTPHeaders(headers)
            h.add(name: "Host", value: "\(t.host):\(t.port)")
            h.add(name: "Connection", value: "close")
            if let body { h.add(name: "Content-Length", value: String(body.count)) }
            try await outbound.write(.head(HTTPRequestHead(version: .http1_1, method: method, uri: path, headers: h)))
            if let body { try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body)))) }
            try await outbound.write(.end(nil))
            var r = Response(status: 0, body: [])
            loop: for try await part in inbound {
                switch part {
                case .head(let head):
                    r.status = Int(head.status.code)
                case .body(var buf):
                    let bytes = buf.readBytes(length: buf.readableBytes) ?? []
                    if r.status == 200 { onBody(bytes) }
                    if r.body.count < 4096 { r.body += bytes.prefix(4096 - r.body.count) }
                case .end:
                    break loop
                }
            }
            return r
        }
    }
}
