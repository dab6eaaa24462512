import Foundation

/// Element-wise and per-row operations on f32 activations. Rows are contiguous; all loops are
/// allocation-free. Reductions accumulate in Double where the row is short enough that it costs nothing.
public enum Ops {
    /// `out = x / rms(x) * w` for each of `n` rows of `dim` (in place when out == x).
    public static func rmsNorm(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>,
                               rows n: Int, dim: Int, eps: Float) {
        for r in 0..<n {
            let xr = x + r * dim, o = out + r * dim
            var ss = 0.0
            for i in 0..<dim { ss += Double(xr[i]) * Double(xr[i]) }
            let scale = Float(1.0 / (ss / Double(dim) + Double(eps)).squareRoot())
            for i in 0..<dim { o[i] = xr[i] * scale * w[i] }
        }
    }

    /// In-place RMS norm of `count` consecutive vectors of `dim` (per-head QK-norm).
    public static func rmsNormHeads(_ x: UnsafeMutablePointer<Float>, _ w: UnsafePointer<Float>, count: Int, dim: Int, eps: Float) {
        rmsNorm(x, w, x, rows: count, dim: dim, eps: eps)
    }

    /// `y += x` over n floats.
    public static func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, _ n: Int) {
        axpy(1, x, y, n)
    }

    public static func scale(_ x: UnsafeMutablePointer<Float>, _ s: Float, _ n: Int) {
        for i in 0..<n { x[i] *= s }
    }

    /// GELU, tanh approximation (what Gemma's `gelu_pytorch_tanh` and ggml_gelu compute).
    @inline(__always)
    public static func gelu(_ x: Float) -> Float {
        let c: Float = 0.797_884_56  // sqrt(2/pi)
        return 0.5 * x * (1 + tanhf(c * (x + 0.044715 * x * x * x)))
    }

    @inline(__always)
    public static func silu(_ x: Float) -> Float { x / (1 + expf(-x)) }

    /// `gate[i] = act(gate[i]) * up[i]` over n floats.
    public static func gatedGELU(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, _ n: Int) {
        Activations.gatedGELU(gate, up, n)
    }

    public static func gatedSiLU(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, _ n: Int) {
        Activations.gatedSiLU(gate, up, n)
    }

    /// Numerically stable softmax in place over n floats.
    public static func softmax(_ x: UnsafeMutablePointer<Float>, _ n: Int) {
        var m = -Float.infinity
        for i in 0..<n { m = max(m, x[i]) }
        var s = 0.0
        for i in 0..<n {
            let e = expf(x[i] - m)
            x[i] = e
            s += Double(e)
        }
        let inv = Float(1 / s)
        for i in 0..<n { x[i] *= inv }
    }
}

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
