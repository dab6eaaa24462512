import Foundation

/// Sampling settings of one request. `temperature == 0` is greedy.
public struct SamplingParams: Sendable, Equatable {
    public var temperature: Float = 0.8
    public var topK: Int = 40          // 0 = off
    public var topP: Float = 0.95      // 1 = off
    public var minP: Float = 0.05      // 0 = off
    public var seed: UInt64? = nil

    public init(temperature: Float = 0.8, topK: Int = 40, topP: Float = 0.95, minP: Float = 0.05, seed: UInt64? = nil) {
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.minP = minP
        self.seed = seed
    }

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

/// Picks the next token from a row of logits. Holds its candidate buffer so sampling allocates nothing
/// after the first call.
public struct Sampler: Sendable {
    public let params: SamplingParams
    private var rng: Xoshiro256
    private var candidates: [(id: Int32, logit: Float)] = []

    public init(_ params: SamplingParams) {
        self.params = params
        rng = Xoshiro256(seed: params.seed ?? UInt64.random(in: 0...UInt64.max))
    }

    public static func argmax(_ logits: UnsafePointer<Float>, count: Int) -> Int32 {
        var best = 0
        var bv = logits[0]
        for i in 1..<count where logits[i] > bv {
            bv = logits[i]
            best = i
        }
        return Int32(best)
    }

    public mutating func sample(_ logits: UnsafePointer<Float>, count: Int) -> Int32 {
        if params.isGreedy { return Sampler.argmax(logits, count: count) }
        // Top-k first (a partial selection), then temperature, min-p, top-p over the survivors.
        let k = params.topK > 0 ? min(params.topK, count) : count
        candidates.removeAll(keepingCapacity: true)
        if k == count {
            for i in 0..<count { candidates.append((Int32(i), logits[i])) }
            candidates.sort { $0.logit > $1.logit }
        } else {
            // Keep a sorted list of the k best.
            var threshold = -Float.infinity
            for i in 0..<count {
                let v = logits[i]
                if candidates.count < k || v > threshold {
                    var j = candidates.count
                    candidates.append((Int32(i), v))
                    while j > 0 && candidates[j - 1].logit < v {
                        candidates[j] = candidates[j - 1]
                        j -= 1
                    }
                    candidates[j] = (Int32(i), v)
                    if candidates.count > k { candidates.removeLast() }
                    threshold = candidates.count == k ? candidates[k - 1].logit : -Float.infinity
                }
            }
        }
        let t = params.temperature
        let maxLogit = candidates[0].logit
        var probs = [Float](repeating: 0, count: candidates.count)
        var sum: Float = 0
        for i in 0..<candidates.count {
            let p = expf((candidates[i].logit - maxLogit) / t)
            probs[i] = p
            sum += p
        }
        var n = candidates.count
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
        sum = probs[0..<n].reduce(0, +)
        var r = Float(Double(rng.next() >> 11) / Double(1 << 53)) * sum
        for i in 0..<n {
            r -= probs[i]
            if r <= 0 { return candidates[i].id }
        }
        return candidates[n - 1].id
    }
}
