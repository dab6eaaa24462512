import Foundation
import Backend

/// Sampling settings of one request. `temperature == 0` is greedy.
public struct SamplingParams: Sendable, Equatable {
    public var temperature: Float = 0.8
    public var topK: Int = 40          // 0 = off
    public var topP: Float = 0.95      // 1 = off
    public var minP: Float = 0.05      // 0 = off
    public var seed: UInt64? = nil
    /// OpenAI penalties, subtracted from the logits of tokens already generated: presence once per token,
    /// frequency once per occurrence (0 = off).
    public var presencePenalty: Float = 0
    public var frequencyPenalty: Float = 0
    /// llama.cpp / Hugging Face repetition penalty over prompt and generated tokens (1 = off): positive
    /// logits are divided by it, negative ones multiplied.
    public var repetitionPenalty: Float = 1
    /// Added to the logits of these tokens before sampling (OpenAI `logit_bias`; -100 bans a token in practice).
    public var logitBias: [Int32: Float] = [:]

    public init(temperature: Float = 0.8, topK: Int = 40, topP: Float = 0.95, minP: Float = 0.05, seed: UInt64? = nil,
                presencePenalty: Float = 0, frequencyPenalty: Float = 0, repetitionPenalty: Float = 1,
                logitBias: [Int32: Float] = [:]) {
        self.logitBias = logitBias
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.minP = minP
        self.seed = seed
        self.presencePenalty = presencePenalty
        self.frequencyPenalty = frequencyPenalty
        self.repetitionPenalty = repetitionPenalty
    }

    /// Whether the row is changed before sampling (penalties or biases).
    public var hasPenalties: Bool {
        presencePenalty != 0 || frequencyPenalty != 0 || repetitionPenalty != 1 || !logitBias.isEmpty
    }

    /// Whether sampling truncates the distribution (top-k, top-p, min-p); without, it samples the whole row.
    public var truncates: Bool { topK > 0 || topP < 1 || minP > 0 }

    public static let greedy = SamplingParams(temperature: 0, topK: 1, topP: 1, minP: 0)

    public var isGreedy: Bool { temperature <= 0 || topK == 1 }
}

/// A small, fast, seedable generator (xoshiro256**), so a seed gives the same text on every platform.
public struct Xoshiro256: RandomNumberGenerator, Sendable {
    private var s: (UInt64, UInt64, UInt64, UInt64)

    public init(seed: UInt64) {
        var z = seed
        func splitmix() -> UInt64 {
            z &+= 0x9E37_79B9_7F4A_7C15
            var x = z
            x = (x ^ (x >> 30)) &* 0xBF58_476D_1CE4_E5B9
            x = (x ^ (x >> 27)) &* 0x94D0_49BB_1331_11EB
            return x ^ (x >> 31)
        }
        s = (splitmix(), splitmix(), splitmix(), splitmix())
    }

    public mutating func next() -> UInt64 {
        let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0
        s.3 ^= s.1
        s.1 ^= s.2
        s.0 ^= s.3
        s.2 ^= t
        s.3 = (s.3 << 45) | (s.3 >> 19)
        return result
    }
}

/// Picks the next token from a row of logits. Holds its candidate buffers so sampling allocates nothing in
/// the steady state.
public struct Sampler: Sendable {
    public let params: SamplingParams
    private var rng: Xoshiro256
    private var ids: [Int32] = []
    private var probs: [Float] = []
    /// Softmax weights of the row (constrained sampling).
    private var weights: [Float] = []

    public init(_ params: SamplingParams) {
        self.params = params
        rng = Xoshiro256(seed: params.seed ?? UInt64.random(in: 0...UInt64.max))
    }

    public static func argmax(_ logits: UnsafePointer<Float>, count: Int) -> Int32 {
        Int32(firstArgmax(logits, count: count))
    }

    /// Applies the penalties in place: presence/frequency over `generated` (token → occurrences),
    /// repetition over `generated` and `prompt`.
    public func applyPenalties(_ logits: UnsafeMutablePointer<Float>, count: Int, prompt: [Int32], generated: [Int32: Int]) {
        let p = params
        guard p.hasPenalties else { return }
        if p.repetitionPenalty != 1 {
            var seen = Set<Int32>(generated.keys)
            for t in prompt where t >= 0 && Int(t) < count { seen.insert(t) }
            for t in seen where Int(t) < count {
                let l = logits[Int(t)]
                logits[Int(t)] = l > 0 ? l / p.repetitionPenalty : l * p.repetitionPenalty
            }
        }
        if p.presencePenalty != 0 || p.frequencyPenalty != 0 {
            for (t, n) in generated where Int(t) < count {
                logits[Int(t)] -= p.presencePenalty + p.frequencyPenalty * Float(n)
            }
        }
        for (t, b) in p.logitBias where t >= 0 && Int(t) < count { logits[Int(t)] += b }
    }

    /// Samples a token that `constraint` allows, exactly as if every other logit were -inf. Greedy and untruncated
    /// sampling first try the unmasked choice and remove refused tokens one by one (a refused draw followed by a
    /// fresh draw from the rest is exact rejection sampling); after `tries` refusals, or when top-k/top-p/min-p
    /// truncate the distribution (whose cut-off depends on the mask), the full mask is computed. Returns nil when
    /// the constraint allows no token at all. The row is modified.
    public mutating func sample(_ logits: UnsafeMutablePointer<Float>, count: Int, constraint: any SamplingConstraint,
                                tries: Int = 16) -> Int32? {
        if params.isGreedy {
            for _ in 0..<tries {
                let t = Sampler.argmax(logits, count: count)
                guard logits[Int(t)] > -Float.infinity else { return nil }
                if constraint.allows(t) { return t }
                logits[Int(t)] = -Float.infinity
            }
        } else if !params.truncates {
            // The softmax weights once; a refused token's weight leaves the total and the next draw rescans.
            var m = -Float.infinity
            for i in 0..<count { m = max(m, logits[i]) }
            guard m > -Float.infinity else { return nil }
            if weights.count < count { weights = [Float](repeating: 0, count: count) }
            let t = params.temperature
            var z: Double = 0
            weights.withUnsafeMutableBufferPointer { w in
                for i in 0..<count {
                    let e = expf((logits[i] - m) / t)
                    w[i] = e
                    z += Double(e)
                }
            }
            for _ in 0..<tries {
                guard z > 0 else { return nil }
                var r = Double(rng.next() >> 11) / Double(1 << 53) * z
                var t = -1
                weights.withUnsafeBufferPointer { w in
                    for i in 0..<count where w[i] > 0 {
                        t = i
                        r -= Double(w[i])
                        if r <= 0 { break }
                    }
                }
                guard t >= 0 else { return nil }
                if constraint.allows(Int32(t)) { return Int32(t) }
                z -= Double(weights[t])
                weights[t] = 0
                logits[t] = -Float.infinity
            }
        }
        constraint.mask(logits, count: count)
        var any = false
        for i in 0..<count where logits[i] > -Float.infinity { any = true; break }
        guard any else { return nil }
        return sample(logits, count: count)
    }

    /// Samples a token id (penalties must already be applied).
    public mutating func sample(_ logits: UnsafePointer<Float>, count: Int) -> Int32 {
        if params.isGreedy { return Sampler.argmax(logits, count: count) }
        let t = params.temperature
        var maxLogit = -Float.infinity
        for i in 0..<count { maxLogit = max(maxLogit, logits[i]) }
        // The full softmax normalizer, so candidate probabilities are exact fractions of the whole distribution.
        // The weights are kept, so the draw below is one pass of additions (no second exp per token).
        if weights.count < count { weights = [Float](repeating: 0, count: count) }
        var z: Double = 0
        weights.withUnsafeMutableBufferPointer { w in
            for i in 0..<count {
                let e = expf((logits[i] - maxLogit) / t)
                w[i] = e
                z += Double(e)
            }
        }
        let uniform = Double(rng.next() >> 11) / Double(1 << 53)
        if params.topK <= 0 && params.topP >= 1 && params.minP <= 0 {
            var r = uniform * z
            return weights.withUnsafeBufferPointer { w in
                for i in 0..<count {
                    r -= Double(w[i])
                    if r <= 0 { return Int32(i) }
                }
                return Int32(count - 1)
            }
        }
        // Take the k best by partial selection; without top-k, grow k until top-p and min-p are decided.
        var k = params.topK > 0 ? min(params.topK, count) : min(256, count)
        while true {
            selectTop(logits, count: count, k: k)
            for i in 0..<ids.count { probs[i] = Float(Double(expf((logits[Int(ids[i])] - maxLogit) / t)) / z) }
            if params.topK > 0 || k == count { break }
            let mass = probs.reduce(0, +)
            let tailBelowMinP = params.minP > 0 && probs[ids.count - 1] < params.minP * probs[0]
            if mass >= params.topP || tailBelowMinP { break }
            k = min(count, k * 16)
        }
        var n = ids.count
        if params.minP > 0 {
            let cut = params.minP * probs[0]
            while n > 1 && probs[n - 1] < cut { n -= 1 }
        }
        if params.topP < 1 {
            let total = probs[0..<n].reduce(0, +)
            var acc: Float = 0
            for i in 0..<n {
                acc += probs[i]
                if acc >= params.topP * total { n = i + 1; break }
            }
        }
        var r = Float(uniform) * probs[0..<n].reduce(0, +)
        for i in 0..<n {
            r -= probs[i]
            if r <= 0 { return ids[i] }
        }
        return ids[n - 1]
    }

    /// Fills `ids` with the `k` largest logits' ids, best first (and sizes `probs` to match).
    private mutating func selectTop(_ logits: UnsafePointer<Float>, count: Int, k: Int) {
        ids.removeAll(keepingCapacity: true)
        if k >= count {
            ids.append(contentsOf: (0..<Int32(count)))
        } else {
            // A min-heap of the k best would do too; a threshold scan plus a final sort is simpler and as fast
            // for small k.
            var threshold = -Float.infinity
            for i in 0..<count where ids.count < k || logits[i] > threshold {
                ids.append(Int32(i))
                if ids.count >= 2 * k {
                    ids.sort { logits[Int($0)] > logits[Int($1)] }
                    ids.removeLast(ids.count - k)
                    threshold = logits[Int(ids[k - 1])]
                }
            }
        }
        ids.sort { logits[Int($0)] > logits[Int($1)] || (logits[Int($0)] == logits[Int($1)] && $0 < $1) }
        if ids.count > k { ids.removeLast(ids.count - k) }
        if probs.count != ids.count { probs = [Float](repeating: 0, count: ids.count) }
    }

    /// Log-probability of `id` under the raw logits, and the `top` most likely tokens (nil top when 0).
    public static func logprobs(_ logits: UnsafePointer<Float>, count: Int, chosen id: Int32, top: Int) -> TokenLogprob {
        var m = -Float.infinity
        for i in 0..<count { m = max(m, logits[i]) }
        var s = 0.0
        for i in 0..<count { s += exp(Double(logits[i] - m)) }
        let lse = Double(m) + log(s)
        var best: [Int32] = []
        if top > 0 {
            var threshold = -Float.infinity
            for i in 0..<count where best.count < top || logits[i] > threshold {
                var j = best.count
                best.append(Int32(i))
                while j > 0 && logits[Int(best[j - 1])] < logits[i] {
                    best[j] = best[j - 1]
                    j -= 1
                }
                best[j] = Int32(i)
                if best.count > top { best.removeLast() }
                if best.count == top { threshold = logits[Int(best[top - 1])] }
            }
        }
        return TokenLogprob(id: id, logprob: Float(Double(logits[Int(id)]) - lse),
                            top: best.map { .init(id: $0, logprob: Float(Double(logits[Int($0)]) - lse)) })
    }
}
