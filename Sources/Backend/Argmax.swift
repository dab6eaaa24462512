/// The index of the largest of `count` values: the first of equal largest values, scanning from element 0 with
/// `>` (so a NaN is never chosen unless it is the first value, and then nothing beats it). Greedy decoding's choice:
/// `Sampler.argmax` on the host and every backend's `argmaxRows` give exactly this index.
public func firstArgmax(_ values: UnsafePointer<Float>, count: Int) -> Int {
    var best = 0
    var bv = values[0]
    for i in 1..<max(1, count) where values[i] > bv {
        bv = values[i]
        best = i
    }
    return best
}
