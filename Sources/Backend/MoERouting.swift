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
public struct MoERouting: Sendable {
    public enum Scoring: Sendable { case softmax, sigmoid }
    public enum GroupScore: Sendable { case max, topTwoSum }
    public var scoring: Scoring
    public var topK: Int
    public var normalizeTopK: Bool
    /// `routed_scaling_factor` (GGUF `expert_weights_scale`); 1 = none.
    public var scale: Float = 1
    public var selectionBias: [Float]? = nil
    public var groups = 1
    public var groupsUsed = 1
    public var groupScore = GroupScore.max

    /// Chooses `topK` experts for one token: reads `logits` `// [nExpert]`, writes expert ids and weights
    /// (`// [topK]` each, best first). `work` holds at least `2 * nExpert + groups` floats.
    public init(scoring: Scoring, topK: Int, normalizeTopK: Bool) {
        self.scoring = scoring
        self.topK = topK
        self.normalizeTopK = normalizeTopK
    }

    /// Floats of `work` that `select` needs.
    public func workFloats(nExpert: Int) -> Int { 2 * nExpert + max(1, groups) }

    /// With `margins`, also returns how near the selection was to choosing otherwise: `group`, the last kept group's
    /// score minus the best dropped group's (infinity without group limits), and `expert`, the last chosen expert's
    /// biased score minus the best one left among the kept groups (infinity when none is left). A difference in the
    /// router's input smaller than these cannot change the choice; `KTRANSFORMERS_ROUTING_MARGINS=1` prints them.
    /// Without it (the hot path) nothing extra is computed and the result is nil.
    @discardableResult
    public func select(logits: UnsafePointer<Float>, nExpert: Int, experts: UnsafeMutablePointer<Int32>,
                       weights: UnsafeMutablePointer<Float>, work: UnsafeMutablePointer<Float>,
                       margins: Bool = false) -> (group: Float, expert: Float)? {
        var groupMargin = Float.infinity, expertMargin = Float.infinity
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
            var lastKept = Float.infinity
            for _ in 0..<groupsUsed {
                var bg = -1
                for g in 0..<groups where groupBest[g] != -Float.infinity && (bg < 0 || groupBest[g] > groupBest[bg]) {
                    bg = g
                }
                if bg >= 0 { lastKept = groupBest[bg]; groupBest[bg] = -Float.infinity }  // marked as kept
            }
            var bestDropped = -Float.infinity
            for g in 0..<groups where groupBest[g] != -Float.infinity {
                bestDropped = max(bestDropped, groupBest[g])
                (choice + g * per).update(repeating: -Float.infinity, count: per)
            }
            groupMargin = lastKept - bestDropped
        }
        var sum: Float = 0
        for j in 0..<topK {
            var best = -1
            for e in 0..<nExpert where choice[e] != -Float.infinity && (best < 0 || choice[e] > choice[best]) { best = e }
            precondition(best >= 0, "MoE router: fewer than \(topK) selectable experts")
            experts[j] = Int32(best)
            weights[j] = scores[best]
            sum += scores[best]
            if j == topK - 1 { expertMargin = choice[best] }
            choice[best] = -Float.infinity
        }
        if margins {
            var bestLeft = -Float.infinity
            for e in 0..<nExpert { bestLeft = max(bestLeft, choice[e]) }
            expertMargin = bestLeft == -Float.infinity ? .infinity : expertMargin - bestLeft
        }
        if normalizeTopK {
            // As llama.cpp: the sum is clamped to the smallest f16 normal so it never divides by 0.
            let inv = 1 / max(sum, 6.103515625e-5)
            for j in 0..<topK { weights[j] *= inv }
        }
        if scale != 1 && scale != 0 {
            for j in 0..<topK { weights[j] *= scale }
        }
        return margins ? (groupMargin, expertMargin) : nil
    }

    /// `KTRANSFORMERS_ROUTING_MARGINS=1`: the CPU backend prints each token's selection margins (stderr).
    public static let traceMargins = ProcessInfo.processInfo.environment["KTRANSFORMERS_ROUTING_MARGINS"] == "1"
}
