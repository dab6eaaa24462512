import Backend
import BackendCUDA
@testable import Engine
import GGUF
import Models
import XCTest

/// The engine on the CUDA backend (a GPU, or the CUDA emulator): a step mixing plain greedy rows (their choice by
/// argmaxRows on the device) with rows that read their own logits from device memory (log-probabilities, seeded
/// sampling, a penalty) gives each request exactly what it gets alone.
final class CUDAEngineTests: XCTestCase {
    nonisolated(unsafe) static var shared: Result<CUDABackend?, Error>?

    func testMixedSamplingInOneBatchEqualsAlone() async throws {
        let gpu = try sharedCUDABackend(&Self.shared)
        let model = try ModelRegistry.load(GGUFFile(path: TinyModels.path("llama", "gguf")), backend: gpu)
        let requests: [(SamplingParams, Int?)] = [
            (.greedy, nil),
            (.greedy, 2),
            (SamplingParams(temperature: 0.8, topK: 0, topP: 1, minP: 0, seed: 7), nil),
            (SamplingParams(temperature: 0, topK: 1, topP: 1, minP: 0, presencePenalty: 0.7), nil),
            (.greedy, nil),
        ]
        let prompts = requests.indices.map { i in (0..<(4 + 3 * i)).map { Int32(((20 + i) * 31 + $0 * 7) % 96) } }
        @Sendable func run(_ e: Engine, _ i: Int) async throws -> [String] {
            var out: [String] = []
            let (params, k) = requests[i]
            for await o in try e.submit(EngineRequest(id: "m\(i)", promptTokens: prompts[i], sampling: params,
                                                      maxTokens: 6, logprobs: k)) {
                if let t = o.token { out.append("\(t)") }
                if let l = o.logprob { out.append("\(l)") }
            }
            return out
        }
        func engine(_ batch: Int) throws -> Engine {
            var c = EngineConfig()
            c.maxBatchSize = batch
            return try Engine(model: model, config: c)
        }
        var alone: [[String]] = []
        for i in requests.indices {
            let e = try engine(1)
            alone.append(try await run(e, i))
            e.shutdown()
        }
        let e = try engine(8)
        defer { e.shutdown() }
        let together = try await withThrowingTaskGroup(of: (Int, [String]).self) { g in
            for i in requests.indices { g.addTask { (i, try await run(e, i)) } }
            var out = [[String]](repeating: [], count: requests.count)
            for try await (i, r) in g { out[i] = r }
            return out
        }
        for i in requests.indices {
            XCTAssertEqual(together[i], alone[i], "request \(i)")
            XCTAssertGreaterThanOrEqual(alone[i].count, 6, "request \(i)")
        }
    }
}
