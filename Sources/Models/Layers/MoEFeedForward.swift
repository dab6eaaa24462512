import Backend
import Foundation

/// The Mixture-of-Experts feed-forward block of every MoE architecture:
/// `out = Σ_j w_j · down_e(silu(gate_e(x)) · up_e(x)) + [σ(g·x)] · shared(x)` over the token's chosen experts
/// `e = e_j` (router + `MoERouting`), with optional shared experts (DeepSeek: always added; Qwen2-MoE: scaled by
/// a sigmoid gate). The routed experts run on an `ExpertExecutor` (the backend of the device the expert weights
/// were placed on): submitted after the router, waited for after the shared experts, so that a hybrid backend
/// runs the two at once.
struct MoEFeedForward: FeedForwardBlock {
    let router: WeightMatrix   // [nExpert, dim]      ffn_gate_inp
    let experts: ExpertWeights // [nExpert][ff, dim] ×2, [nExpert][dim, ff]  ffn_{gate,up,down}_exps
    let routing: MoERouting
    let shared: GatedMLP?      // ffn_{gate,up,down}_shexp
    let sharedGate: Tensor?    // [dim] ffn_gate_inp_shexp (Qwen2-MoE)
    let executor: any ExpertExecutor

    var nExpert: Int { router.rows }
    var scratchWidth: Int { shared?.width ?? 1 }
    var moe: MoEShape? { MoEShape(nExpert: nExpert, topK: routing.topK, routerWork: routing.workFloats(nExpert: nExpert)) }

    func reserve(maxTokens: Int) { executor.reserve(maxTokens: maxTokens, topK: routing.topK) }

    func forward(_ xn: Tensor, out: Tensor, ctx: ForwardContext, g: Tensor, u: Tensor) {
        let b = ctx.backend, n = ctx.n, dim = router.cols
        // Router: f32 activations, so that no expert choice hinges on activation rounding.
        b.matmul(router, xn, ctx.moeLogits, n: n, precision: .f32Activations)
        b.moeSelect(logits: ctx.moeLogits, nExpert: nExpert, routing: routing, experts: ctx.moeExperts,
                    weights: ctx.moeWeights, n: n)
        executor.submit(experts, x: xn, ids: ctx.moeExperts, n: n, topK: routing.topK)
        // Shared experts write `out` first (while the routed ones run); the routed ones are added in each token's
        // choice order.
        if let shared {
            shared.forward(xn, out: out, ctx: ctx, g: g, u: u)
            if let sharedGate { b.sigmoidGate(out, gate: sharedGate, x: xn, width: dim, n: n) }
        } else {
            if executor.wait(weights: ctx.moeWeights, storeInto: out, n: n) { return }
            b.fill(out, count: n * dim, value: 0)
        }
        executor.wait(weights: ctx.moeWeights, accumulateInto: out, n: n)
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
    static func load(_ l: TensorLoader, layer i: Int, dim: Int, nExpert: Int, ff: Int, options o: Options)
        throws -> MoEFeedForward {
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
        // A tensor-parallel shard keeps its share of every expert's width (and of the shared expert's), the router
        // whole: every shard routes each token to the same experts, and its partial outputs join the others' in the
        // all-reduce after the block.
        var shared: GatedMLP?
        if o.sharedWidth > 0 {
            let part = try l.feedForwardPart(o.sharedWidth, down: p + "ffn_down_shexp.weight")
            shared = GatedMLP(gate: try l.matrix(p + "ffn_gate_shexp.weight", rows: o.sharedWidth, cols: dim, keepRows: part),
                              up: try l.matrix(p + "ffn_up_shexp.weight", rows: o.sharedWidth, cols: dim, keepRows: part),
                              down: try l.matrix(p + "ffn_down_shexp.weight", rows: dim, cols: o.sharedWidth, keepCols: part),
                              activation: .silu)
        }
        let part = try l.feedForwardPart(ff, down: p + "ffn_down_exps.weight")
        let experts = ExpertWeights(gate: try l.stack(p + "ffn_gate_exps.weight", count: nExpert, rows: ff, cols: dim, keepRows: part),
                                    up: try l.stack(p + "ffn_up_exps.weight", count: nExpert, rows: ff, cols: dim, keepRows: part),
                                    down: try l.stack(p + "ffn_down_exps.weight", count: nExpert, rows: dim, cols: ff, keepCols: part))
        // NOTE: gate and up run in one pass over the same quantized activations, which needs one format.
        guard experts.gate.type == experts.up.type else {
            throw ModelError("\(l.file.path): tensors '\(p)ffn_gate_exps.weight' (\(experts.gate.type)) and '\(p)ffn_up_exps.weight' (\(experts.up.type)) must have the same type")
        }
        return MoEFeedForward(
            router: try l.matrix(p + "ffn_gate_inp.weight", rows: nExpert, cols: dim),
            experts: experts,
            routing: routing, shared: shared,
            sharedGate: o.sharedGate ? try l.constant(p + "ffn_gate_inp_shexp.weight", count: dim) : nil,
            executor: try l.expertExecutor(layer: i, nExpert: nExpert, dim: dim, ff: part.count))
    }
}

/// One MoE feed-forward block on its own, outside a model: `bench --moe` measures the models' own MoE code path
/// (router, expert executor, combine) through it.
public final class StandaloneMoELayer {
    private let block: MoEFeedForward
    public let backend: any ComputeBackend
    /// The executor of the routed experts (a `CPUExpertExecutor` on the CPU backend).
    public let executor: any ExpertExecutor
    /// `// [maxTokens, topK]` i32: the experts the last `forward` chose for each token.
    public let chosenExperts: Tensor
    private let logits: Tensor
    private let weights: Tensor
    private let cache: KVCache
    private let empty: Tensor
    public let maxTokens: Int

    public init(backend: any ComputeBackend, router: WeightMatrix, experts: ExpertWeights, routing: MoERouting,
                maxTokens: Int) {
        self.backend = backend
        self.maxTokens = maxTokens
        let nExpert = router.rows
        executor = backend.makeExpertExecutor(nExpert: nExpert, dim: router.cols, ff: experts.gate.rows)
        block = MoEFeedForward(router: router, experts: experts, routing: routing, shared: nil, sharedGate: nil,
                               executor: executor)
        logits = backend.allocate(maxTokens * nExpert)
        chosenExperts = backend.allocate(maxTokens * routing.topK)
        weights = backend.allocate(maxTokens * routing.topK)
        empty = backend.allocate(1)
        cache = backend.makeKVCache(pageSize: 1, numPages: 1, kDims: [], vDims: [])
        backend.reserve(ForwardPlan(maxTokens: maxTokens, contextLength: 1, maxQueryGroup: 1,
                                    routerWork: routing.workFloats(nExpert: nExpert)))
        block.reserve(maxTokens: maxTokens)
    }

    /// `out = MoE(x)` for `n` rows: `x`, `out` `// [n, dim]`.
    public func forward(_ x: Tensor, out: Tensor, n: Int) {
        precondition(n <= maxTokens, "StandaloneMoELayer: \(n) tokens, sized for \(maxTokens)")
        let meta = BatchMetadata(tokens: n, positions: empty, slotMapping: empty, sequenceOfToken: empty,
                                 blockTables: empty, blockTableStride: 0, pageSize: 1)
        let ctx = ForwardContext(backend: backend, cache: cache, meta: meta, ropes: [], moeLogits: logits,
                                 moeExperts: chosenExperts, moeWeights: weights)
        block.forward(x, out: out, ctx: ctx, g: empty, u: empty)
    }
}
