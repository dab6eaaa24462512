import Foundation

/// How the routed experts of a model were chosen, as recorded by an expert executor that sees the choices on the
/// host (the CPU executor, also inside the hybrid placement): per MoE layer, the (token, choice) pairs each expert
/// got; per step size, the distinct experts a layer read in one step.
///
/// Distinct experts per step is what a batched MoE step costs (each chosen expert's weights are read once), so a
/// benchmark on a random-weight model is only as real as its routing: if every token of a batch routes to the same
/// few experts, batched decode and prefill look far faster than with a trained model. `expectedDistinct` is what
/// independent uniform choices would read, the baseline to compare against.
public final class ExpertUsage: @unchecked Sendable {
    // NOTE: @unchecked: every access under `lock` (recorded by the expert thread, read by a benchmark).
    private let lock = NSLock()
    public let expertCount: Int
    private var layers: [String: [Int]] = [:]
    private var order: [String] = []
    private var steps: [Int: (layerSteps: Int, distinct: Int, pairs: Int)] = [:]

    public init(expertCount: Int) {
        self.expertCount = expertCount
    }

    /// Adds one layer-step: `routing` holds its (token, choice) pairs sorted by expert; `layer` names the layer
    /// (its gate stack).
    public func record(layer: String, routing: ExpertRouting) {
        lock.lock()
        defer { lock.unlock() }
        if layers[layer] == nil {
            layers[layer] = [Int](repeating: 0, count: expertCount)
            order.append(layer)
        }
        layers[layer]!.withUnsafeMutableBufferPointer { c in
            for i in 0..<routing.activeCount {
                let e = Int(routing.active[i])
                c[e] += routing.rows(of: e)
            }
        }
        var s = steps[routing.tokens] ?? (0, 0, 0)
        s.layerSteps += 1
        s.distinct += routing.activeCount
        s.pairs += routing.assignments
        steps[routing.tokens] = s
    }

    public func reset() {
        lock.lock()
        defer { lock.unlock() }
        layers = [:]
        order = []
        steps = [:]
    }

    /// Steps of one size: how many layer-steps, the mean distinct experts they read, and what independent uniform
    /// choices of `topK` distinct experts per token would read on average.
    public struct StepSummary: Sendable, Codable, Equatable {
        public let tokens: Int
        public let layerSteps: Int
        public let meanDistinct: Double
        public let expectedDistinct: Double
    }

    public func stepSummary() -> [StepSummary] {
        lock.lock()
        defer { lock.unlock() }
        return steps.keys.sorted().map { n in
            let s = steps[n]!
            let topK = s.pairs / max(1, s.layerSteps * n)
            return StepSummary(tokens: n, layerSteps: s.layerSteps, meanDistinct: Double(s.distinct) / Double(s.layerSteps),
                               expectedDistinct: Self.expectedDistinct(experts: expertCount, topK: topK, tokens: n))
        }
    }

    /// Pairs per expert of each layer seen, in the order first seen.
    public func perLayer() -> [(layer: String, counts: [Int])] {
        lock.lock()
        defer { lock.unlock() }
        return order.map { ($0, layers[$0]!) }
    }

    /// E · (1 − (1 − k/E)^n): the mean number of distinct experts that n tokens read when each picks k distinct
    /// experts of E uniformly at random, independently of the others.
    public static func expectedDistinct(experts e: Int, topK k: Int, tokens n: Int) -> Double {
        guard e > 0 else { return 0 }
        let miss = 1 - Double(min(k, e)) / Double(e)
        return Double(e) * (1 - pow(miss, Double(n)))
    }
}
