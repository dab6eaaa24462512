import Backend
import Foundation

/// How an MoE router turns its logits into the chosen experts and their weights (one struct per layer, the
/// variants real checkpoints use):
/// - Mixtral, Qwen2-MoE, Qwen3-MoE: `softmax` scores, top-k, `normalizeTopK` (Qwen3-MoE and Mixtral yes,
///   Qwen2-MoE no: HF `norm_topk_prob`);
/// - DeepSeek-V2: `softmax`, optionally group-limited greedy (`groups` > 1: keep the `groupsUsed` groups with the
///   best *max* score, HF `topk_method = group_limited_greedy`), weights scaled by `routed_scaling_factor`;
/// - DeepSeek-V3 / R1: `sigmoid` scores; selection on scores + `selectionBias` (`e_score_correction_bias`,
///   GGUF `exp_probs_b`) restricted to the `groupsUsed` groups with the best sum of their *top two* biased scores
///   (`noaux_tc`); weights are the unbiased scores of the chosen, normalized, times `scale`.
struct MoERouting {
    enum Scoring { case softmax, sigmoid }
    enum GroupScore { case max, topTwoSum }
    var scoring: Scoring
    var topK: Int
    var normalizeTopK: Bool
    /// `routed_scaling_factor` (GGUF `expert_weights_scale`); 1 = none.
    var scale: Float = 1
    var selectionBias: [Float]? = nil
    var groups = 1
    var groupsUsed = 1
    var groupScore = GroupScore.max

    /// Chooses `topK` experts for one token: reads `logits` `// [nExpert]`, writes expert ids and weights
    /// (`// [topK]` each, best first). `work` holds at least `2 * nExpert + groups` floats.
    func select(logits: UnsafePointer<Float>, nExpert: Int, experts: UnsafeMutablePointer<Int32>,
                weights: UnsafeMutablePointer<Float>, work: UnsafeMutablePointer<Float>) {
        let scores = work, choice = work + nExpert, groupBest = work + 2 * nExpert
        switch scoring {
        case .softmax:
            scores.update(from: logits, count: nExpert)
            Ops.softmax(scores, nExpert)
        case .sigmoid:
            for e in 0..<nExpert { scores[e] = 1 / (1 + expf(-logits[e])) }
        }
        if let b = selectionBias {
            for e in 0..<nExpert { choice[e] = scores[e] + b[e] }
        } else {
            choice.update(from: scores, count: nExpert)
        }
        if groups > 1 && groupsUsed < groups {
            let per = nExpert / groups
            for g in 0..<groups {
                let s = choice + g * per
                var best = -Float.infinity, second = -Float.infinity
                for i in 0..<per {
                    if s[i] > best { second = best; best = s[i] } else if s[i] > second { second = s[i] }
                }
                groupBest[g] = groupScore == .max ? best : best + second
            }
            // Keep the best `groupsUsed` groups (ties: lower index), mask the rest.
            for _ in 0..<groupsUsed {
                var bg = -1
                for g in 0..<groups where groupBest[g] != -Float.infinity && (bg < 0 || groupBest[g] > groupBest[bg]) {
                    bg = g
                }
                if bg >= 0 { groupBest[bg] = -Float.infinity }  // marked as kept
            }
            for g in 0..<groups where groupBest[g] != -Float.infinity {
                (choice + g * per).update(repeating: -Float.infinity, count: per)
            }
        }
        var sum: Float = 0
        for j in 0..<topK {
            var best = -1
            for e in 0..<nExpert where choice[e] != -Float.infinity && (best < 0 || choice[e] > choice[best]) { best = e }
            precondition(best >= 0, "MoE router: fewer than \(topK) selectable experts")
            experts[j] = Int32(best)
            weights[j] = scores[best]
            sum += scores[best]
            choice[best] = -Float.infinity
        }
        if normalizeTopK {
            // As llama.cpp: the sum is clamped to the smallest f16 normal so it never divides by 0.
            let inv = 1 / max(sum, 6.103515625e-5)
            for j in 0..<topK { weights[j] *= inv }
        }
        if scale != 1 && scale != 0 {
            for j in 0..<topK { weights[j] *= scale }
        }
    }
}

/// Run state of the MoE layers of one model (shared by its layers, used by one forward at a time): router
/// logits, the choices, the routing, and the per-assignment activations. Grows to the largest batch seen.
final class MoEScratch: @unchecked Sendable {
    let nExpert: Int
    let topK: Int
    let ff: Int
    let dim: Int
    let routing: ExpertRouting
    /// Per pool thread: the router's work space.
    let perThread: ThreadScratch
    private(set) var capacity = 0
    private(set) var logits = UnsafeMutablePointer<Float>.allocate(capacity: 1)   // [n, nExpert]
    private(set) var experts = UnsafeMutablePointer<Int32>.allocate(capacity: 1)  // [n, topK]
    private(set) var weights = UnsafeMutablePointer<Float>.allocate(capacity: 1)  // [n, topK]
    private(set) var gate = UnsafeMutablePointer<Float>.allocate(capacity: 1)     // [n * topK, ff] sorted rows
    private(set) var up = UnsafeMutablePointer<Float>.allocate(capacity: 1)       // [n * topK, ff]
    private(set) var down = UnsafeMutablePointer<Float>.allocate(capacity: 1)     // [n * topK, dim]

    init(nExpert: Int, topK: Int, ff: Int, dim: Int, threads: Int, groups: Int) {
        self.nExpert = nExpert
        self.topK = topK
        self.ff = ff
        self.dim = dim
        routing = ExpertRouting(expertCount: nExpert)
        perThread = ThreadScratch(threads: threads, floatsPerThread: 2 * nExpert + max(1, groups))
    }

    deinit { [logits, weights, gate, up, down].forEach { $0.deallocate() }; experts.deallocate() }

    func reserve(tokens n: Int) {
        guard n > capacity else { return }
        [logits, weights, gate, up, down].forEach { $0.deallocate() }
        experts.deallocate()
        capacity = max(n, capacity * 2)
        let a = capacity * topK
        logits = .allocate(capacity: capacity * nExpert)
        experts = .allocate(capacity: a)
        weights = .allocate(capacity: a)
        gate = .allocate(capacity: a * ff)
        up = .allocate(capacity: a * ff)
        down = .allocate(capacity: a * dim)
    }
}

/// The Mixture-of-Experts feed-forward block of every MoE architecture:
/// `out = Σ_j w_j · down_e(silu(gate_e(x)) · up_e(x)) + [σ(g·x)] · shared(x)` over the token's chosen experts
/// `e = e_j` (router + `MoERouting`), with optional shared experts (DeepSeek: always added; Qwen2-MoE: scaled by
/// a sigmoid gate). Experts run through `matmulExperts`: tokens grouped by expert, each chosen expert's weights
/// read once per step.
struct MoEFeedForward: FeedForwardBlock {
    let router: WeightMatrix   // [nExpert, dim]      ffn_gate_inp
    let gate: WeightStack      // [nExpert][ff, dim]  ffn_gate_exps
    let up: WeightStack        // [nExpert][ff, dim]  ffn_up_exps
    let down: WeightStack      // [nExpert][dim, ff]  ffn_down_exps
    let routing: MoERouting
    let shared: GatedMLP?      // ffn_{gate,up,down}_shexp
    let sharedGate: [Float]?   // [dim] ffn_gate_inp_shexp (Qwen2-MoE)
    let scratch: MoEScratch

    var nExpert: Int { router.rows }
    var scratchWidth: Int { shared?.width ?? 1 }
    var maxInputWidth: Int { max(gate.rows, shared?.width ?? 0, router.cols) }

    func forward(_ xn: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, n: Int, ctx: ForwardContext,
                 g: UnsafeMutablePointer<Float>, u: UnsafeMutablePointer<Float>) {
        let pool = ctx.pool
        let s = scratch
        s.reserve(tokens: n)
        let ne = nExpert, k = routing.topK, dim = router.cols, ff = gate.rows
        // Router: f32 activations, so that no expert choice hinges on activation rounding.
        pool.matmul(router, xn, s.logits, n: n, scratch: ctx.scratch, f32Activations: true)
        let logits = UnsafePointer(s.logits), experts = s.experts, weights = s.weights
        let r = routing, work = s.perThread
        pool.parallelFor(n) { t, thread in
            r.select(logits: logits + t * ne, nExpert: ne, experts: experts + t * k, weights: weights + t * k,
                     work: work.buffer(thread))
        }
        s.routing.set(experts: experts, tokens: n, perToken: k)

        // Routed experts, rows in sorted order: gate and up in one pass, then silu(gate)·up, then down.
        pool.matmulExperts(gate, s.gate, also: up, s.up, x: xn, gather: true, routing: s.routing, scratch: ctx.scratch)
        let a = s.routing.assignments
        let gb = s.gate, ub = UnsafePointer(s.up)
        pool.parallelFor(a) { p, _ in Ops.gatedSiLU(gb + p * ff, ub + p * ff, ff) }
        // NOTE: precise (16-bit or f32) activations into the down projection, as the dense MLP: its input is
        // heavy-tailed, and 8-bit rounding of it costs accuracy (docs/architecture.md).
        pool.matmulExperts(down, s.down, x: s.gate, gather: false, routing: s.routing, scratch: ctx.scratch,
                           precise: true)

        // Shared experts write `out` first; the routed ones are added in each token's choice order.
        if let shared {
            shared.forward(xn, out: out, n: n, ctx: ctx, g: g, u: u)
            if let sg = sharedGate {
                sg.withUnsafeBufferPointer { sgp in
                    let w = sgp.baseAddress!
                    pool.parallelFor(n) { t, _ in
                        let z = dotProduct(w, xn + t * dim, dim)
                        Ops.scale(out + t * dim, 1 / (1 + expf(-z)), dim)
                    }
                }
            }
        } else {
            out.update(repeating: 0, count: n * dim)
        }
        let pos = UnsafePointer(s.routing.positionOf), db = UnsafePointer(s.down), wts = UnsafePointer(weights)
        pool.parallelFor(n) { t, _ in
            for j in 0..<k {
                let i = t * k + j
                axpy(wts[i], db + Int(pos[i]) * dim, out + t * dim, dim)
            }
        }
    }
}

extension MoEFeedForward {
    /// What an architecture file says about its MoE layers besides the tensors.
    struct Options {
        var routing: MoERouting
        /// Width of the shared experts' MLP (0: none).
        var sharedWidth = 0
        /// Qwen2-MoE: the shared expert's output is scaled by `sigmoid(ffn_gate_inp_shexp · x)`.
        var sharedGate = false
    }

    /// Loads layer `i`'s MoE tensors: `ffn_gate_inp`, `ffn_{gate,up,down}_exps`, optional `exp_probs_b`, and
    /// the shared expert `ffn_{gate,up,down}_shexp` (+ `ffn_gate_inp_shexp`) when `options` has one.
    static func load(_ l: TensorLoader, layer i: Int, dim: Int, nExpert: Int, ff: Int, options o: Options,
                     scratch: MoEScratch) throws -> MoEFeedForward {
        let p = "blk.\(i)."
        var routing = o.routing
        routing.selectionBias = try l.optionalVector(p + "exp_probs_b.bias", count: nExpert)
        guard routing.topK >= 1, routing.topK <= nExpert else {
            throw ModelError("\(l.file.path): expert_used_count \(routing.topK) must be in 1...\(nExpert)")
        }
        guard routing.groups >= 1, nExpert % routing.groups == 0, routing.groupsUsed >= 1,
              routing.groupsUsed <= routing.groups,
              routing.groupsUsed * (nExpert / routing.groups) >= routing.topK else {
            throw ModelError("\(l.file.path): expert groups \(routing.groups) (used \(routing.groupsUsed)) do not fit \(nExpert) experts, top-\(routing.topK)")
        }
        var shared: GatedMLP?
        if o.sharedWidth > 0 {
            shared = GatedMLP(gate: try l.matrix(p + "ffn_gate_shexp.weight", rows: o.sharedWidth, cols: dim),
                              up: try l.matrix(p + "ffn_up_shexp.weight", rows: o.sharedWidth, cols: dim),
                              down: try l.matrix(p + "ffn_down_shexp.weight", rows: dim, cols: o.sharedWidth),
                              activation: .silu)
        }
        return MoEFeedForward(
            router: try l.matrix(p + "ffn_gate_inp.weight", rows: nExpert, cols: dim),
            gate: try l.stack(p + "ffn_gate_exps.weight", count: nExpert, rows: ff, cols: dim),
            up: try l.stack(p + "ffn_up_exps.weight", count: nExpert, rows: ff, cols: dim),
            down: try l.stack(p + "ffn_down_exps.weight", count: nExpert, rows: dim, cols: ff),
            routing: routing, shared: shared,
            sharedGate: o.sharedGate ? try l.vector(p + "ffn_gate_inp_shexp.weight", count: dim) : nil,
            scratch: scratch)
    }
}
