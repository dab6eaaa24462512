import Backend

/// Activation buffers of one forward pass, sized for a number of tokens and grown (outside the steady state)
/// when a larger batch arrives. Owned by one model; used by one forward at a time.
final class Workspace {
    private(set) var capacity = 0
    private var buffers: [UnsafeMutablePointer<Float>] = []
    private let widths: [Int]

    /// `widths[i]` floats per token for buffer i.
    init(widths: [Int]) { self.widths = widths }

    deinit { buffers.forEach { $0.deallocate() } }

    func reserve(tokens n: Int) {
        guard n > capacity else { return }
        buffers.forEach { $0.deallocate() }
        capacity = max(n, capacity * 2)
        buffers = widths.map { w in
            let p = UnsafeMutablePointer<Float>.allocate(capacity: max(1, capacity * w))
            p.initialize(repeating: 0, count: max(1, capacity * w))
            return p
        }
    }

    subscript(_ i: Int) -> UnsafeMutablePointer<Float> { buffers[i] }
}
