#!/usr/bin/env python3
"""Makes the MoE golden-output fixtures of Tests/ModelTests/Fixtures: tiny random Mixture-of-Experts models
written as GGUF with llama.cpp's tensor names and metadata keys (gguf-py's GGUFWriter, stacked experts as the
converter writes them), and the logits of an independent float64 NumPy implementation that follows the Hugging
Face modeling files (modeling_mixtral / modeling_qwen2_moe / modeling_qwen3_moe / modeling_deepseek_v2/v3).

Files (all matrices f32; norms, biases, routers f32):
  mixtral.gguf          `llama` with experts: softmax top-2 of 4, renormalized; NORM RoPE.
  qwen2moe.gguf         softmax top-2 of 8, not renormalized; one shared expert scaled by
                        sigmoid(ffn_gate_inp_shexp . x); Q/K/V biases; NeoX RoPE.
  qwen3moe.gguf         softmax top-3 of 8, renormalized (norm_topk_prob); per-head Q/K norm; NeoX RoPE.
  qwen3moe-q8_0.gguf    the same with Q8_0 experts (ffn_{gate,up,down}_exps; router and the rest f32): the reference
                        rounds the input of the gate/up experts to Q8_0 blocks as ggml (and the engine) do; the
                        down experts get f32 activations (the engine's choice), so their input is not rounded.
  deepseek2.gguf        DeepSeek-V2 style: MLA without q LoRA (attn_q, as V2-Lite), the older unsplit attn_kv_b,
                        softmax scores with group-limited greedy selection (4 groups, best 2 by group *max*),
                        routed_scaling_factor 1.5, one leading dense layer, one shared expert.
  deepseek2-v3.gguf     DeepSeek-V3 style: q LoRA with its norm, split attn_k_b / attn_v_b, YaRN RoPE (factor 4,
                        original context 16, mscale_all_dim 1 => softmax scale * mscale^2), sigmoid scores,
                        e_score_correction_bias (exp_probs_b) used for selection only, noaux_tc group selection
                        (4 groups, best 2 by the sum of their top-2 biased scores), top-3, renormalized, scale 2.5.
  <name>.json           {"tokens": [...], "logits": [[vocab floats] per position]}, 6 significant digits.

DeepSeek RoPE: HF de-interleaves q_pe/k_pe ((x0, x2, ...), (x1, x3, ...)) before rotate_half, which equals
rotating adjacent pairs (llama.cpp's NORM rope) up to one permutation applied to both q and k, so scores agree.
The reference computes MLA the HF way (decompress K/V with kv_b); the engine caches the compressed latent and
absorbs k_b / v_b into the query and output, so the two are independent formulations.

Every fixture is checked for routing margins: at each MoE layer and token the k-th and (k+1)-th selection scores
(and the kept / dropped expert groups) are at least 1e-3 apart, so float32 noise cannot flip an expert choice; and
the argmax of the logits is separated from the runner-up by 1e-3 of max |logit|. Seeds are retried until both hold.

Usage: python3 scripts/make_tiny_moe_models.py [output dir]  (default: Tests/ModelTests/Fixtures)
"""
import json
import math
import os
import sys

import numpy as np
import gguf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_tiny_models import rms_norm, rope, silu, sig6, q8_0_activations, Q8_MARGINS, TOKENS, VOCAB, CTX  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402

ROUTE_MARGINS = []


def make_config(name):
    c = dict(name=name, vocab=VOCAB, dim=32, n_layer=2, n_head=4, n_kv=2, head_dim=16, eps=1e-6, rope_base=10000.0,
             qkv_bias=False, qk_norm=False, neox=True, n_expert=8, top_k=2, ff_exp=16, norm_topk=True, scale=1.0,
             scoring="softmax", groups=1, groups_used=1, group_score="max", bias=False, shared_ff=0,
             shared_gate=False, dense_lead=0, ff=32, mla=False, q8_experts=False)
    if name == "mixtral":
        c.update(arch="llama", neox=False, n_expert=4, top_k=2, ff_exp=32, eps=1e-5)
    elif name == "qwen2moe":
        c.update(arch="qwen2moe", qkv_bias=True, norm_topk=False, shared_ff=32, shared_gate=True, rope_base=1e6)
    elif name == "qwen3moe":
        c.update(arch="qwen3moe", qk_norm=True, top_k=3, rope_base=1e6)
    elif name == "qwen3moe-q8_0":
        c.update(arch="qwen3moe", qk_norm=True, top_k=3, rope_base=1e6, ff_exp=32, q8_experts=True)
    elif name == "deepseek2":
        c.update(arch="deepseek2", mla=True, n_layer=3, dense_lead=1, n_head=4, q_lora=0, kv_lora=16, nope=8,
                 rope_dim=8, v_dim=12, scale=1.5, norm_topk=False, groups=4, groups_used=2, group_score="max",
                 shared_ff=16, split_kv_b=False, yarn=None, neox=False)
    elif name == "deepseek2-v3":
        c.update(arch="deepseek2", mla=True, n_layer=3, dense_lead=1, n_head=4, q_lora=24, kv_lora=16, nope=8,
                 rope_dim=8, v_dim=12, scale=2.5, norm_topk=True, scoring="sigmoid", bias=True, top_k=3,
                 groups=4, groups_used=2, group_score="top2", shared_ff=16, split_kv_b=True, neox=False,
                 yarn=dict(factor=4.0, orig_ctx=16, beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0))
    else:
        raise ValueError(name)
    return c


def make_weights(c, seed):
    rng = np.random.default_rng(seed)
    dim = c["dim"]

    def mat(rows, cols, s=1.0):
        return s * rng.standard_normal((rows, cols)) / math.sqrt(cols)

    def normw(n):
        return 1.0 + 0.3 * rng.standard_normal(n)

    w = {"token_embd.weight": rng.standard_normal((c["vocab"], dim))}
    for i in range(c["n_layer"]):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = normw(dim)
        if c["mla"]:
            nh, hk = c["n_head"], c["nope"] + c["rope_dim"]
            if c["q_lora"]:
                w[p + "attn_q_a.weight"] = mat(c["q_lora"], dim)
                w[p + "attn_q_a_norm.weight"] = normw(c["q_lora"])
                w[p + "attn_q_b.weight"] = mat(nh * hk, c["q_lora"], 2.0)
            else:
                w[p + "attn_q.weight"] = mat(nh * hk, dim, 2.0)
            w[p + "attn_kv_a_mqa.weight"] = mat(c["kv_lora"] + c["rope_dim"], dim, 2.0)
            w[p + "attn_kv_a_norm.weight"] = normw(c["kv_lora"])
            # HF kv_b_proj: [n_head * (nope + v), kv_lora]; split (or not) when written.
            w[p + "attn_kv_b.weight"] = mat(nh * (c["nope"] + c["v_dim"]), c["kv_lora"], 1.5)
            w[p + "attn_output.weight"] = mat(dim, nh * c["v_dim"])
        else:
            nh, nkv, hd = c["n_head"], c["n_kv"], c["head_dim"]
            w[p + "attn_q.weight"] = mat(nh * hd, dim, 2.0)
            w[p + "attn_k.weight"] = mat(nkv * hd, dim, 2.0)
            w[p + "attn_v.weight"] = mat(nkv * hd, dim)
            w[p + "attn_output.weight"] = mat(dim, nh * hd)
            if c["qkv_bias"]:
                w[p + "attn_q.bias"] = 0.5 * rng.standard_normal(nh * hd)
                w[p + "attn_k.bias"] = 0.5 * rng.standard_normal(nkv * hd)
                w[p + "attn_v.bias"] = 0.5 * rng.standard_normal(nkv * hd)
            if c["qk_norm"]:
                w[p + "attn_q_norm.weight"] = normw(hd)
                w[p + "attn_k_norm.weight"] = normw(hd)
        w[p + "ffn_norm.weight"] = normw(dim)
        if i < c["dense_lead"]:
            w[p + "ffn_gate.weight"] = mat(c["ff"], dim)
            w[p + "ffn_up.weight"] = mat(c["ff"], dim)
            w[p + "ffn_down.weight"] = mat(dim, c["ff"])
            continue
        ne, fe = c["n_expert"], c["ff_exp"]
        # Router logits of order 1-3 so the choice matters; experts of different scales so it shows.
        w[p + "ffn_gate_inp.weight"] = mat(ne, dim, 3.0)
        w[p + "ffn_gate_exps.weight"] = np.stack([mat(fe, dim, 1 + 0.2 * e) for e in range(ne)])
        w[p + "ffn_up_exps.weight"] = np.stack([mat(fe, dim) for _ in range(ne)])
        w[p + "ffn_down_exps.weight"] = np.stack([mat(dim, fe, 1 + 0.1 * e) for e in range(ne)])
        if c["bias"]:
            w[p + "exp_probs_b.bias"] = 0.3 * rng.standard_normal(ne)
        if c["shared_ff"]:
            sf = c["shared_ff"]
            w[p + "ffn_gate_shexp.weight"] = mat(sf, dim)
            w[p + "ffn_up_shexp.weight"] = mat(sf, dim)
            w[p + "ffn_down_shexp.weight"] = mat(dim, sf)
            if c["shared_gate"]:
                w[p + "ffn_gate_inp_shexp.weight"] = 1.5 * rng.standard_normal(dim) / math.sqrt(dim)
    w["output_norm.weight"] = normw(dim)
    w["output.weight"] = mat(c["vocab"], dim, 2.0)
    return w


def write_gguf(path, c, w):
    """Writes the model; returns the weights as the file stores them (float64), which the reference runs on."""
    stored = {k: v.astype(np.float32).astype(np.float64) for k, v in w.items()}
    g = gguf.GGUFWriter(path, c["arch"])
    g.add_name(f"tiny-{c['name']}")
    g.add_context_length(CTX)
    g.add_embedding_length(c["dim"])
    g.add_block_count(c["n_layer"])
    g.add_feed_forward_length(c["ff"])
    g.add_head_count(c["n_head"])
    g.add_layer_norm_rms_eps(c["eps"])
    g.add_rope_freq_base(c["rope_base"])
    g.add_vocab_size(c["vocab"])
    g.add_expert_count(c["n_expert"])
    g.add_expert_used_count(c["top_k"])
    if c["mla"]:
        g.add_head_count_kv(1)
        g.add_leading_dense_block_count(c["dense_lead"])
        if c["q_lora"]:
            g.add_q_lora_rank(c["q_lora"])
        g.add_kv_lora_rank(c["kv_lora"])
        g.add_key_length(c["kv_lora"] + c["rope_dim"])
        g.add_value_length(c["kv_lora"])
        g.add_key_length_mla(c["nope"] + c["rope_dim"])
        g.add_value_length_mla(c["v_dim"])
        g.add_rope_dimension_count(c["rope_dim"])
        g.add_expert_feed_forward_length(c["ff_exp"])
        g.add_expert_shared_count(c["shared_ff"] // c["ff_exp"])
        if c["scale"] != 1.0:
            g.add_expert_weights_scale(c["scale"])
        if c["norm_topk"]:
            g.add_expert_weights_norm(True)
        g.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID if c["scoring"] == "sigmoid"
                                 else gguf.ExpertGatingFuncType.SOFTMAX)
        if c["groups"] > 1:
            g.add_expert_group_count(c["groups"])
            g.add_expert_group_used_count(c["groups_used"])
        if c["yarn"]:
            y = c["yarn"]
            g.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            g.add_rope_scaling_factor(y["factor"])
            g.add_rope_scaling_orig_ctx_len(y["orig_ctx"])
            g.add_rope_scaling_yarn_log_mul(0.1 * y["mscale_all_dim"])  # as the converter writes it
    else:
        g.add_head_count_kv(c["n_kv"])
        g.add_key_length(c["head_dim"])
        g.add_value_length(c["head_dim"])
        g.add_rope_dimension_count(c["head_dim"])
        if c["arch"] != "llama":
            g.add_expert_feed_forward_length(c["ff_exp"])
        if c["shared_ff"]:
            g.add_expert_shared_feed_forward_length(c["shared_ff"])
    for name, a in w.items():
        if name.endswith("attn_kv_b.weight") and c.get("split_kv_b"):
            # As the converter: kv_b viewed [n_head, nope + v, kv_lora]; k_b transposed to [n_head, kv_lora, nope].
            kv = a.reshape(c["n_head"], c["nope"] + c["v_dim"], c["kv_lora"])
            g.add_tensor(name.replace("kv_b", "k_b"),
                         np.ascontiguousarray(kv[:, :c["nope"], :].transpose(0, 2, 1)).astype(np.float32))
            g.add_tensor(name.replace("kv_b", "v_b"), np.ascontiguousarray(kv[:, c["nope"]:, :]).astype(np.float32))
            continue
        if c["q8_experts"] and name.endswith("_exps.weight"):
            q = gguf.quants.quantize(a.astype(np.float32), T.Q8_0)
            g.add_tensor(name, q, raw_dtype=T.Q8_0)
            stored[name] = gguf.quants.dequantize(q, T.Q8_0).astype(np.float64).reshape(a.shape)
            continue
        g.add_tensor(name, a.astype(np.float32))
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_tensors_to_file()
    g.close()
    return stored


# ---------------------------------------------------------------------------------------------------------
# Float64 reference

def moe(c, w, p, h):
    """HF MoE block on h [n, dim]."""
    n = h.shape[0]
    ne, k = c["n_expert"], c["top_k"]
    logits = h @ w[p + "ffn_gate_inp.weight"].T
    if c["scoring"] == "softmax":
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        scores = e / e.sum(axis=1, keepdims=True)
    else:
        scores = 1.0 / (1.0 + np.exp(-logits))
    choice = scores + (w[p + "exp_probs_b.bias"] if c["bias"] else 0.0)
    out = np.zeros_like(h)
    for t in range(n):
        ch = choice[t].copy()
        if c["groups"] > 1:
            per = ne // c["groups"]
            grp = ch.reshape(c["groups"], per)
            if c["group_score"] == "max":
                gs = grp.max(axis=1)                          # group_limited_greedy
            else:
                gs = np.sort(grp, axis=1)[:, -2:].sum(axis=1)  # noaux_tc
            order = np.argsort(-gs, kind="stable")
            keep = order[:c["groups_used"]]
            if c["groups_used"] < c["groups"]:
                sg = np.sort(gs)[::-1]
                ROUTE_MARGINS.append(sg[c["groups_used"] - 1] - sg[c["groups_used"]])
            mask = np.full(c["groups"], True)
            mask[keep] = False
            grp = grp.copy()
            grp[mask] = -np.inf
            ch = grp.reshape(ne)
        idx = np.argsort(-ch, kind="stable")[:k]
        srt = np.sort(ch[np.isfinite(ch)])[::-1]
        if len(srt) > k:
            ROUTE_MARGINS.append(srt[k - 1] - srt[k])
        wt = scores[t, idx]
        if c["norm_topk"]:
            wt = wt / wt.sum()
        wt = wt * c["scale"]
        x = q8_0_activations(h[t]) if c["q8_experts"] else h[t]
        for j, e in enumerate(idx):
            g = w[p + "ffn_gate_exps.weight"][e] @ x
            u = w[p + "ffn_up_exps.weight"][e] @ x
            out[t] += wt[j] * (w[p + "ffn_down_exps.weight"][e] @ (silu(g) * u))
    if c["shared_ff"]:
        g = h @ w[p + "ffn_gate_shexp.weight"].T
        u = h @ w[p + "ffn_up_shexp.weight"].T
        s = (silu(g) * u) @ w[p + "ffn_down_shexp.weight"].T
        if c["shared_gate"]:
            s = s * (1.0 / (1.0 + np.exp(-(h @ w[p + "ffn_gate_inp_shexp.weight"]))))[:, None]
        out += s
    return out


def causal_attention(q, k, v, scale):
    """q [n, H, d], k [n, H, d], v [n, H, dv] (K/V already expanded per query head)."""
    n, nh = q.shape[0], q.shape[1]
    allowed = np.arange(n)[None, :] <= np.arange(n)[:, None]
    o = np.zeros((n, nh, v.shape[2]))
    for hh in range(nh):
        s = (q[:, hh, :] @ k[:, hh, :].T) * scale
        s = np.where(allowed, s, -np.inf)
        s -= s.max(axis=1, keepdims=True)
        e = np.exp(s)
        o[:, hh, :] = (e / e.sum(axis=1, keepdims=True)) @ v[:, hh, :]
    return o


def yarn_get_mscale(scale, mscale):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def deepseek_rope(x, pos, base, yarn):
    """HF DeepSeek: inv_freq (YaRN-blended when configured), de-interleave, rotate_half; x [n, heads, d]."""
    d = x.shape[-1]
    inv = 1.0 / base ** (np.arange(0, d, 2) / d)
    mscale = 1.0
    if yarn:
        f = yarn["factor"]

        def corr_dim(rot):
            return (d * math.log(yarn["orig_ctx"] / (rot * 2 * math.pi))) / (2 * math.log(base))
        low = max(math.floor(corr_dim(yarn["beta_fast"])), 0)
        high = min(math.ceil(corr_dim(yarn["beta_slow"])), d - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(d // 2) - low) / (high - low), 0, 1)
        extra_mask = 1.0 - ramp
        inv = (inv / f) * (1 - extra_mask) + inv * extra_mask
        mscale = yarn_get_mscale(f, yarn["mscale"]) / yarn_get_mscale(f, yarn["mscale_all_dim"])
    ang = np.asarray(pos, dtype=np.float64)[:, None] * inv[None, :]
    emb = np.concatenate([ang, ang], axis=-1)
    cos, sin = (np.cos(emb) * mscale)[:, None, :], (np.sin(emb) * mscale)[:, None, :]
    xd = x.reshape(*x.shape[:-1], d // 2, 2).swapaxes(-1, -2).reshape(x.shape)
    rot = np.concatenate([-xd[..., d // 2:], xd[..., :d // 2]], axis=-1)
    return xd * cos + rot * sin


def mla(c, w, p, h, pos):
    n, nh = h.shape[0], c["n_head"]
    nope, rd, vd, r = c["nope"], c["rope_dim"], c["v_dim"], c["kv_lora"]
    if c["q_lora"]:
        q = rms_norm(h @ w[p + "attn_q_a.weight"].T, w[p + "attn_q_a_norm.weight"], c["eps"]) @ w[p + "attn_q_b.weight"].T
    else:
        q = h @ w[p + "attn_q.weight"].T
    q = q.reshape(n, nh, nope + rd)
    ckv = h @ w[p + "attn_kv_a_mqa.weight"].T
    cmp, k_pe = ckv[:, :r], ckv[:, r:]
    kv = (rms_norm(cmp, w[p + "attn_kv_a_norm.weight"], c["eps"]) @ w[p + "attn_kv_b.weight"].T).reshape(n, nh, nope + vd)
    k_nope, v = kv[..., :nope], kv[..., nope:]
    q_pe = deepseek_rope(q[..., nope:], pos, c["rope_base"], c["yarn"])
    k_pe = deepseek_rope(k_pe[:, None, :], pos, c["rope_base"], c["yarn"])
    qf = np.concatenate([q[..., :nope], q_pe], axis=-1)
    kf = np.concatenate([k_nope, np.repeat(k_pe, nh, axis=1)], axis=-1)
    scale = (nope + rd) ** -0.5
    if c["yarn"] and c["yarn"]["mscale_all_dim"]:
        m = yarn_get_mscale(c["yarn"]["factor"], c["yarn"]["mscale_all_dim"])
        scale = scale * m * m
    o = causal_attention(qf, kf, v, scale)
    return o.reshape(n, nh * vd) @ w[p + "attn_output.weight"].T


def gqa(c, w, p, h, pos):
    n, nh, nkv, hd = h.shape[0], c["n_head"], c["n_kv"], c["head_dim"]
    q = h @ w[p + "attn_q.weight"].T
    k = h @ w[p + "attn_k.weight"].T
    v = h @ w[p + "attn_v.weight"].T
    if c["qkv_bias"]:
        q, k, v = q + w[p + "attn_q.bias"], k + w[p + "attn_k.bias"], v + w[p + "attn_v.bias"]
    q, k, v = q.reshape(n, nh, hd), k.reshape(n, nkv, hd), v.reshape(n, nkv, hd)
    if c["qk_norm"]:
        q = rms_norm(q, w[p + "attn_q_norm.weight"], c["eps"])
        k = rms_norm(k, w[p + "attn_k_norm.weight"], c["eps"])
    q = rope(q, pos, c["rope_base"], c["neox"])
    k = rope(k, pos, c["rope_base"], c["neox"])
    g = nh // nkv
    o = causal_attention(q, np.repeat(k, g, axis=1), np.repeat(v, g, axis=1), 1 / math.sqrt(hd))
    return o.reshape(n, nh * hd) @ w[p + "attn_output.weight"].T


def reference_logits(c, w, tokens):
    n = len(tokens)
    pos = np.arange(n)
    x = w["token_embd.weight"][tokens].copy()
    for i in range(c["n_layer"]):
        p = f"blk.{i}."
        h = rms_norm(x, w[p + "attn_norm.weight"], c["eps"])
        x = x + (mla(c, w, p, h, pos) if c["mla"] else gqa(c, w, p, h, pos))
        h = rms_norm(x, w[p + "ffn_norm.weight"], c["eps"])
        if i < c["dense_lead"]:
            m = (silu(h @ w[p + "ffn_gate.weight"].T) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
        else:
            m = moe(c, w, p, h)
        x = x + m
    x = rms_norm(x, w["output_norm.weight"], c["eps"])
    return x @ w["output.weight"].T


# ---------------------------------------------------------------------------------------------------------

VARIANTS = [("mixtral", 501), ("qwen2moe", 601), ("qwen3moe", 701), ("qwen3moe-q8_0", 702), ("deepseek2", 801),
            ("deepseek2-v3", 901)]


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "Tests",
                                                                  "ModelTests", "Fixtures")
    os.makedirs(out_dir, exist_ok=True)
    for stem, seed in VARIANTS:
        c = make_config(stem)
        path = os.path.join(out_dir, stem + ".gguf")
        for attempt in range(50):
            s = seed + 1000 * attempt
            w = make_weights(c, s)
            stored = write_gguf(path, c, w)
            ROUTE_MARGINS.clear()
            Q8_MARGINS.clear()
            logits = reference_logits(c, stored, TOKENS)
            top2 = np.sort(logits, axis=1)[:, -2:]
            margin = (top2[:, 1] - top2[:, 0]).min() / np.abs(logits).max()
            route = min(ROUTE_MARGINS) if ROUTE_MARGINS else 1.0
            # Q8_0 activation rounding must be far from ties (as in make_tiny_models.py).
            tie, dm = (min(t for t, _ in Q8_MARGINS), min(x for _, x in Q8_MARGINS)) if Q8_MARGINS else (1, 1)
            if margin > 1e-3 and route > 1e-3 and tie > 2e-4 and dm > 2e-6:
                break
        else:
            raise SystemExit(f"{stem}: no seed gives well-separated argmaxes and routing choices")
        with open(os.path.join(out_dir, stem + ".json"), "w") as f:
            json.dump({"tokens": TOKENS, "logits": [[sig6(v) for v in row] for row in logits]}, f,
                      separators=(",", ":"))
            f.write("\n")
        print(f"{stem}: seed {s}, {os.path.getsize(path)} bytes, max|logit| {np.abs(logits).max():.3f}, "
              f"argmax {[int(i) for i in logits.argmax(axis=1)]}, min top-2 margin {margin:.3g}, "
              f"min routing margin {route:.3g}")


if __name__ == "__main__":
    main()
