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
