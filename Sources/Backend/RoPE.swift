import Foundation

/// Rotary position embedding. `neox` rotates the two halves of each head (GPT-NeoX, Gemma, Qwen);
/// otherwise adjacent pairs (the original GPT-J / llama.cpp "norm" layout, used for Llama GGUFs).
public struct RoPE: Sendable {
    public let dims: Int          // rotated dimensions per head (<= headDim)
    public let base: Double
    public let neox: Bool
    /// Linear position scaling (positions are divided by it).
    public let linearScale: Double
    private let invFreq: [Double]

    /// Multiplier of every cos/sin (YaRN's magnitude correction; 1 otherwise).
    public let mscale: Double

    /// - Parameter freqFactors: per-frequency divisors (`rope_freqs.weight`, Llama 3.1+ long-context scaling).
    /// - Parameter yarn: YaRN frequency interpolation (DeepSeek-V2/V3 long context).
    public init(dims: Int, base: Double, neox: Bool, linearScale: Double = 1, freqFactors: [Float]? = nil,
                yarn: YaRN? = nil) {
        self.dims = dims
        self.base = base
        self.neox = neox
        self.linearScale = linearScale
        var freqs = (0..<dims / 2).map { i in
            pow(base, -2.0 * Double(i) / Double(dims)) / Double(freqFactors?[i] ?? 1)
        }
        if let yarn {
            let (low, high) = yarn.correctionRange(dims: dims, base: base)
            for i in freqs.indices {
                let extrapolated = freqs[i], interpolated = freqs[i] / yarn.factor
                let y = (Double(i) - low) / max(0.001, high - low)
                let mix = (1 - min(1, max(0, y))) * yarn.extFactor
                freqs[i] = interpolated * (1 - mix) + extrapolated * mix
            }
        }
        invFreq = freqs
        mscale = yarn?.mscale ?? 1
    }

    /// Fills `cs` with `[cos, sin]` pairs for position `pos`: `// [dims/2][2]`.
    public func table(position pos: Int, into cs: UnsafeMutablePointer<Float>) {
        let p = Double(pos) / linearScale
        for i in 0..<dims / 2 {
            let a = p * invFreq[i]
            cs[2 * i] = Float(cos(a) * mscale)
            cs[2 * i + 1] = Float(sin(a) * mscale)
        }
    }

    /// Rotates `heads` vectors of `headDim` in place with a table from `table(position:into:)`.
    public func apply(_ x: UnsafeMutablePointer<Float>, heads: Int, headDim: Int, table cs: UnsafePointer<Float>) {
        let half = dims / 2
        for h in 0..<heads {
            let v = x + h * headDim
            if neox {
                for i in 0..<half {
                    let c = cs[2 * i], s = cs[2 * i + 1]
                    let a = v[i], b = v[i + half]
                    v[i] = a * c - b * s
                    v[i + half] = a * s + b * c
                }
            } else {
                for i in 0..<half {
                    let c = cs[2 * i], s = cs[2 * i + 1]
                    let a = v[2 * i], b = v[2 * i + 1]
                    v[2 * i] = a * c - b * s
                    v[2 * i + 1] = a * s + b * c
                }
            }
        }
    }
}

/// YaRN RoPE scaling as ggml's `rope_yarn` computes it: pair i rotates at
/// `freq_i * ((1 - mix_i) / factor + mix_i)`, where `mix_i = extFactor * (1 - clamp((i - low) / (high - low)))`
/// and [low, high] is the band of pairs between `betaFast` and `betaSlow` rotations over the original context;
/// cos/sin are multiplied by `mscale`.
public struct YaRN: Sendable {
    public var factor: Double
    public var originalContext: Int
    public var betaFast: Double
    public var betaSlow: Double
    public var extFactor: Double
    public var mscale: Double

    public init(factor: Double, originalContext: Int, betaFast: Double = 32, betaSlow: Double = 1, extFactor: Double = 1,
                mscale: Double = 1) {
        self.factor = factor
        self.originalContext = originalContext
        self.betaFast = betaFast
        self.betaSlow = betaSlow
        self.extFactor = extFactor
        self.mscale = mscale
    }

    /// ggml_rope_yarn_corr_dims: `[max(0, floor(d(betaFast))), min(dims - 1, ceil(d(betaSlow)))]` with
    /// `d(r) = dims * ln(originalContext / (2π r)) / (2 ln base)`.
    func correctionRange(dims: Int, base: Double) -> (Double, Double) {
        func d(_ rotations: Double) -> Double {
            Double(dims) * log(Double(originalContext) / (rotations * 2 * Double.pi)) / (2 * log(base))
        }
        return (max(0, floor(d(betaFast))), min(Double(dims - 1), ceil(d(betaSlow))))
    }
}
