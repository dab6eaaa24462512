/// Which token rows go to which expert in one MoE step: the `n * k` (token, choice) assignments sorted by expert
/// (counting sort, tokens ascending within an expert). Position `p` of the sorted order is the row of every
/// per-assignment buffer (`// [nAssignments, width]`), so each expert's rows are contiguous.
/// Grows to the largest batch seen; the steady state allocates nothing. One forward at a time.
public final class ExpertRouting: @unchecked Sendable {
    public let expertCount: Int
    /// `n * k` of the last `set`.
    public private(set) var assignments = 0
    public private(set) var tokens = 0
    public private(set) var perToken = 0
    /// `// [expertCount + 1]` sorted rows of expert e are `offsets[e] ..< offsets[e + 1]`.
    public let offsets: UnsafeMutablePointer<Int32>
    /// `// [expertCount]` experts with at least one row, ascending; `activeCount` of them.
    public let active: UnsafeMutablePointer<Int32>
    public private(set) var activeCount = 0
    /// `// [assignments]` token of each sorted row.
    public private(set) var tokenOf: UnsafeMutablePointer<Int32>
    /// `// [assignments]` sorted row of assignment `t * k + j`.
    public private(set) var positionOf: UnsafeMutablePointer<Int32>
    private var capacity = 0
    /// Quantized (or f32) activation rows: the token rows, then the same rows gathered into sorted order.
    let activations = ActivationBuffer(capacity: 64)
    let gathered = ActivationBuffer(capacity: 64)
    /// The sorted rows in a tile kernel's layout, then per-thread tile scratch.
    let tiles = ActivationBuffer(capacity: 64)
    /// `ThreadPool.expertsFused`: the Q16_K rows of SiLU·up and the per-expert counters.
    let fused = ActivationBuffer(capacity: 64)

    public init(expertCount: Int) {
        self.expertCount = expertCount
        offsets = .allocate(capacity: expertCount + 1)
        active = .allocate(capacity: max(1, expertCount))
        tokenOf = .allocate(capacity: 1)
        positionOf = .allocate(capacity: 1)
    }

    deinit {
        offsets.deallocate()
        active.deallocate()
        tokenOf.deallocate()
        positionOf.deallocate()
    }

    /// Makes room for `assignments` (token, choice) pairs (load time: `CPUExpertExecutor.reserve`).
    public func reserve(assignments a: Int) {
        guard a > capacity else { return }
        tokenOf.deallocate()
        positionOf.deallocate()
        capacity = max(a, capacity * 2)
        tokenOf = .allocate(capacity: capacity)
        positionOf = .allocate(capacity: capacity)
        RunMemory.noteAllocation()
    }

    /// Routes `n` tokens, each to the `k` experts `experts[t * k ..< t * k + k]` (distinct per token).
    public func set(experts: UnsafePointer<Int32>, tokens n: Int, perToken k: Int) {
        let a = n * k
        reserve(assignments: a)
        assignments = a
        tokens = n
        perToken = k
        offsets.update(repeating: 0, count: expertCount + 1)
        for i in 0..<a {
            let e = Int(experts[i])
            precondition(e >= 0 && e < expertCount, "expert id \(e) out of range 0..<\(expertCount)")
            offsets[e + 1] += 1
        }
        activeCount = 0
        for e in 0..<expertCount {
            if offsets[e + 1] > 0 {
                active[activeCount] = Int32(e)
                activeCount += 1
            }
            offsets[e + 1] += offsets[e]
        }
        // Fill: `offsets[e]` is used as the cursor, then shifted back.
        for i in 0..<a {
            let e = Int(experts[i])
            let p = Int(offsets[e])
            tokenOf[p] = Int32(i / k)
            positionOf[i] = Int32(p)
            offsets[e] += 1
        }
        for e in stride(from: expertCount, to: 0, by: -1) { offsets[e] = offsets[e - 1] }
        offsets[0] = 0
    }

    /// Number of rows routed to expert `e`.
    @inline(__always)
    public func rows(of e: Int) -> Int { Int(offsets[e + 1] - offsets[e]) }
}
