#!/usr/bin/env python3
"""Makes the golden-output fixtures of Tests/ModelTests/Fixtures: tiny random models of every registered dense
architecture, written as GGUF with llama.cpp's tensor names and metadata keys (gguf-py's GGUFWriter), and the
logits an independent float64 NumPy implementation of each architecture gives for a fixed token sequence.

Files, for each architecture A in llama, qwen2, qwen3, gemma3:
  A.gguf            matrices f32
  A-<qtype>.gguf    matrices Q8_0 (llama, qwen3) or F16 (qwen2, gemma3); norms and biases stay f32
  A.json, A-<qtype>.json   {"tokens": [...], "logits": [[vocab floats] per position]}, 6 significant digits
The reference of a quantized variant runs on the exactly dequantized weights (gguf-py's dequantize). F16
weights multiply f32 activations, so the only difference left is the engine's float32 arithmetic. Q8_0 weights
multiply activations rounded to Q8_0 blocks (ggml's CPU semantics: Q8_0's vec_dot_type is Q8_0, activations are
quantized with quantize_row_q8_0 before the integer dot), and the reference applies the same rounding to the
input of every Q8_0 matrix; a Q8_0 file keeps attn_output, ffn_down and output in F16 (the engine gives those
f32 activations by design). Rounding of an activation that lies within
float32 noise of a rounding boundary can go either way, so Q8_0 variants agree less tightly (see the tests).

What the GGUF semantics mean (and what the reference implements), per architecture:
  - llama: RMS norm, SwiGLU MLP, RoPE on adjacent pairs (llama.cpp LLAMA_ROPE_TYPE_NORM: the converter permutes
    HF's Q/K rows so that HF's rotate-half becomes rotation of (2i, 2i+1)), untied output.weight.
  - qwen2: llama shape plus Q/K/V biases, NeoX RoPE (pairs (i, i + d/2)), output tied to token_embd.
  - qwen3: llama shape plus per-head Q/K RMS norm (before RoPE), no biases, NeoX RoPE, untied output.
  - gemma3: embeddings * sqrt(dim), per-head Q/K RMS norm, NeoX RoPE, attention scale 1/sqrt(head_dim),
    post-attention and post-FFN RMS norms, GELU-tanh gated MLP, tied output; layer i is global when
    (i + 1) % sliding_window_pattern == 0 (RoPE base rope.freq_base, optional linear scaling), otherwise local
    (RoPE base 10000, unscaled; position p sees positions > p - sliding_window). Norm weights in GGUF already
    include Gemma's `1 +`.
All heads are grouped-query: query head h reads K/V head h // (n_head / n_head_kv).

Usage: python3 scripts/make_tiny_models.py [output dir]  (default: Tests/ModelTests/Fixtures)
Deterministic: the same gguf/numpy give the same files.
"""
import json
import math
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

VOCAB = 96
CTX = 64
TOKENS = [1, 17, 42, 5, 88, 63, 17, 30, 71, 2, 95, 54]


# ---------------------------------------------------------------------------------------------------------
# Model construction

def make_config(arch):
    c = dict(arch=arch, vocab=VOCAB, dim=32, n_layer=2, n_head=4, n_kv=2, head_dim=16, ff=64, eps=1e-6,
             rope_base=10000.0, tied=False, qkv_bias=False, qk_norm=False, neox=True, gemma=False,
             window=0, pattern=0, rope_scale=1.0)
    if arch == "llama":
        c.update(neox=False, eps=1e-5, rope_base=10000.0)
    elif arch == "qwen2":
        c.update(qkv_bias=True, tied=True, rope_base=1e6)
    elif arch == "qwen3":
        c.update(qk_norm=True, rope_base=1e6)
    elif arch == "gemma3":
        # Three layers with pattern 2: local, global, local.
        c.update(n_layer=3, qk_norm=True, tied=True, gemma=True, rope_base=1e6, window=4, pattern=2)
    else:
        raise ValueError(arch)
    return c


def make_weights(c, seed):
    rng = np.random.default_rng(seed)
    dim, hd, nh, nkv, ff = c["dim"], c["head_dim"], c["n_head"], c["n_kv"], c["ff"]

    def mat(rows, cols):
        return rng.standard_normal((rows, cols)) / math.sqrt(cols)

    def normw(n):
        return 1.0 + 0.3 * rng.standard_normal(n)

    w = {"token_embd.weight": rng.standard_normal((c["vocab"], dim)) * (0.3 if c["gemma"] else 1.0)}
    for i in range(c["n_layer"]):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = normw(dim)
        w[p + "attn_q.weight"] = mat(nh * hd, dim) * 2.0   # larger Q/K so attention is far from uniform
        w[p + "attn_k.weight"] = mat(nkv * hd, dim) * 2.0
        w[p + "attn_v.weight"] = mat(nkv * hd, dim)
        w[p + "attn_output.weight"] = mat(dim, nh * hd)
        if c["qkv_bias"]:
            w[p + "attn_q.bias"] = 0.5 * rng.standard_normal(nh * hd)
            w[p + "attn_k.bias"] = 0.5 * rng.standard_normal(nkv * hd)
            w[p + "attn_v.bias"] = 0.5 * rng.standard_normal(nkv * hd)
        if c["qk_norm"]:
            w[p + "attn_q_norm.weight"] = normw(hd)
            w[p + "attn_k_norm.weight"] = normw(hd)
        if c["gemma"]:
            w[p + "post_attention_norm.weight"] = normw(dim)
            w[p + "post_ffw_norm.weight"] = normw(dim)
        w[p + "ffn_norm.weight"] = normw(dim)
        w[p + "ffn_gate.weight"] = mat(ff, dim)
        w[p + "ffn_up.weight"] = mat(ff, dim)
        w[p + "ffn_down.weight"] = mat(dim, ff)
    w["output_norm.weight"] = normw(dim)
    if not c["tied"]:
        w["output.weight"] = mat(c["vocab"], dim) * 2.0
    return w


def write_gguf(path, c, w, qtype):
    """Writes the model; returns the weights as the file stores them (dequantized, float64) and the names of
    the Q8_0 matrices."""
    arch = c["arch"]
    g = gguf.GGUFWriter(path, arch)
    g.add_name(f"tiny-{arch}")
    g.add_context_length(CTX)
    g.add_embedding_length(c["dim"])
    g.add_block_count(c["n_layer"])
    g.add_feed_forward_length(c["ff"])
    g.add_head_count(c["n_head"])
    g.add_head_count_kv(c["n_kv"])
    g.add_key_length(c["head_dim"])
    g.add_value_length(c["head_dim"])
    g.add_layer_norm_rms_eps(c["eps"])
    g.add_rope_freq_base(c["rope_base"])
    if arch == "llama":
        g.add_rope_dimension_count(c["head_dim"])
        g.add_vocab_size(c["vocab"])
    if c["gemma"]:
        g.add_sliding_window(c["window"])
        g.add_sliding_window_pattern(c["pattern"])
        if c["rope_scale"] != 1.0:
            g.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            g.add_rope_scaling_factor(c["rope_scale"])
    stored, q8 = {}, set()
    for name, a in w.items():
        a32 = a.astype(np.float32)
        # A Q8_0 file keeps attn_output, ffn_down and output in F16 (a mixed quantization, as llama.cpp's keep
        # some tensors in higher-precision formats): the engine multiplies those with f32 activations whatever
        # the weight format (their inputs have outliers), where ggml would round them to Q8_0. So only the
        # matrices whose inputs both round to Q8_0 (Q, K, V, gate, up) and the token embedding are Q8_0.
        keep_f16 = name == "output.weight" or name.endswith(("ffn_down.weight", "attn_output.weight"))
        t = T.F16 if qtype == T.Q8_0 and keep_f16 else qtype
        if a.ndim == 2 and t == T.Q8_0:
            q = gguf.quants.quantize(a32, T.Q8_0)
            g.add_tensor(name, q, raw_dtype=T.Q8_0)
            stored[name] = gguf.quants.dequantize(q, T.Q8_0).astype(np.float64).reshape(a.shape)
            q8.add(name)
        elif a.ndim == 2 and t == T.F16:
            a16 = a32.astype(np.float16)
            g.add_tensor(name, a16)
            stored[name] = a16.astype(np.float64)
        else:
            g.add_tensor(name, a32)
            stored[name] = a32.astype(np.float64)
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_tensors_to_file()
    g.close()
    return stored, q8


# ---------------------------------------------------------------------------------------------------------
# Float64 reference

def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos, base, neox, scale=1.0):
    """x: [n, heads, hd]; rotates all hd dims at positions pos ([n]) (llama.cpp NORM or NEOX layout)."""
    hd = x.shape[-1]
    half = hd // 2
    inv = base ** (-2.0 * np.arange(half) / hd)             # [half]
    ang = (np.asarray(pos, dtype=np.float64) / scale)[:, None] * inv[None, :]  # [n, half]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    out = x.copy()
    if neox:
        a, b = x[..., :half], x[..., half:]
        out[..., :half] = a * cos - b * sin
        out[..., half:] = a * sin + b * cos
    else:
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
    return out


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def silu(x):
    return x / (1.0 + np.exp(-x))


def q8_0_activations(x):
    """x rounded as ggml's quantize_row_q8_0 stores it, per block of 32 along the last axis: d = amax / 127
    (kept as f16), q = round-half-away(x / d); returns d * q."""
    shape = x.shape
    b = x.reshape(-1, 32)
    amax = np.abs(b).max(axis=1, keepdims=True)
    d = amax / 127.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    v = b * inv
    q = np.sign(v) * np.floor(np.abs(v) + 0.5)
    dh = d.astype(np.float16)
    # How far this rounding is from going the other way: the distance of every x / d from a rounding tie (in
    # units of q) and of d from an f16 rounding midpoint (relative). The engine computes x in float32, so
    # where either is within float32 noise its rounding may differ from this one (by a whole quantum).
    frac = np.abs(v) - np.floor(np.abs(v))
    up = np.nextafter(dh, np.float16(np.inf)).astype(np.float64)
    down = np.nextafter(dh, np.float16(-np.inf)).astype(np.float64)
    h = dh.astype(np.float64)
    nz = d[:, 0] > 0
    d_margin = np.minimum(np.abs(d - (h + up) / 2), np.abs(d - (h + down) / 2))[nz] / d[nz]
    Q8_MARGINS.append((np.abs(frac - 0.5).min(), d_margin.min() if d_margin.size else np.inf))
    return (h * q).reshape(shape)


# (min distance of x / d from a tie, min relative distance of d from an f16 midpoint) of every
# q8_0_activations call since the last reset.
Q8_MARGINS = []


def reference_logits(c, w, tokens, q8=frozenset()):
    """Float64 forward pass. For a matrix in `q8`, the input activations are first rounded to Q8_0 as ggml's
    CPU backend does before an integer dot with Q8_0 weights (vec_dot_type of Q8_0 is Q8_0)."""
    def mm(x, name):
        return (q8_0_activations(x) if name in q8 else x) @ w[name].T

    n = len(tokens)
    dim, hd, nh, nkv, eps = c["dim"], c["head_dim"], c["n_head"], c["n_kv"], c["eps"]
    group = nh // nkv
    pos = np.arange(n)
    x = w["token_embd.weight"][tokens].copy()
    if c["gemma"]:
        x *= math.sqrt(dim)
    for i in range(c["n_layer"]):
        p = f"blk.{i}."
        h = rms_norm(x, w[p + "attn_norm.weight"], eps)
        q = mm(h, p + "attn_q.weight")
        k = mm(h, p + "attn_k.weight")
        v = mm(h, p + "attn_v.weight")
        if c["qkv_bias"]:
            q += w[p + "attn_q.bias"]
            k += w[p + "attn_k.bias"]
            v += w[p + "attn_v.bias"]
        q = q.reshape(n, nh, hd)
        k = k.reshape(n, nkv, hd)
        v = v.reshape(n, nkv, hd)
        if c["qk_norm"]:
            q = rms_norm(q, w[p + "attn_q_norm.weight"], eps)
            k = rms_norm(k, w[p + "attn_k_norm.weight"], eps)
        window = 0
        base, scale = c["rope_base"], 1.0
        if c["gemma"]:
            is_global = (i + 1) % c["pattern"] == 0
            if is_global:
                scale = c["rope_scale"]
            else:
                base, window = 10000.0, c["window"]
        q = rope(q, pos, base, c["neox"], scale)
        k = rope(k, pos, base, c["neox"], scale)
        # Mask: causal, and with a window a query at p sees keys at positions > p - window.
        qp, kp = pos[:, None], pos[None, :]
        allowed = kp <= qp
        if window > 0:
            allowed &= kp > qp - window
        o = np.zeros((n, nh, hd))
        for hh in range(nh):
            kh = k[:, hh // group, :]
            vh = v[:, hh // group, :]
            s = (q[:, hh, :] @ kh.T) / math.sqrt(hd)
            s = np.where(allowed, s, -np.inf)
            s -= s.max(axis=1, keepdims=True)
            e = np.exp(s)
            a = e / e.sum(axis=1, keepdims=True)
            o[:, hh, :] = a @ vh
        attn = mm(o.reshape(n, nh * hd), p + "attn_output.weight")
        if c["gemma"]:
            attn = rms_norm(attn, w[p + "post_attention_norm.weight"], eps)
        x = x + attn
        h = rms_norm(x, w[p + "ffn_norm.weight"], eps)
        g = mm(h, p + "ffn_gate.weight")
        u = mm(h, p + "ffn_up.weight")
        act = gelu_tanh(g) if c["gemma"] else silu(g)
        m = mm(act * u, p + "ffn_down.weight")
        if c["gemma"]:
            m = rms_norm(m, w[p + "post_ffw_norm.weight"], eps)
        x = x + m
    x = rms_norm(x, w["output_norm.weight"], eps)
    return mm(x, "token_embd.weight" if c["tied"] else "output.weight")


# ---------------------------------------------------------------------------------------------------------

VARIANTS = [
    # (arch, file stem, matrix type, seed, config overrides)
    ("llama", "llama", T.F32, 101, {}),
    ("llama", "llama-q8_0", T.Q8_0, 102, {}),
    ("qwen2", "qwen2", T.F32, 201, {}),
    ("qwen2", "qwen2-f16", T.F16, 202, {}),
    ("qwen3", "qwen3", T.F32, 301, {}),
    ("qwen3", "qwen3-q8_0", T.Q8_0, 302, {}),
    ("gemma3", "gemma3", T.F32, 401, {}),
    # Gemma 3 4B+ style linear RoPE scaling of the global layers (factor 8).
    ("gemma3", "gemma3-f16", T.F16, 402, {"rope_scale": 8.0}),
]


def sig6(v):
    return float(f"{v:.6g}")


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "Tests",
                                                                  "ModelTests", "Fixtures")
    os.makedirs(out_dir, exist_ok=True)
    for arch, stem, qtype, seed, overrides in VARIANTS:
        c = make_config(arch)
        c.update(overrides)
        path = os.path.join(out_dir, stem + ".gguf")
        # The argmax at every position must be separated from the runner-up by well over twice the test's
        # tolerance (1e-4 * max|logit|), so the argmax check cannot flip on rounding, and Q8_0 activation
        # rounding must be far from ties (below): the first seed of seed, seed + 1000, ... that gives such
        # weights is used.
        for attempt in range(20):
            w = make_weights(c, seed + 1000 * attempt)
            stored, q8 = write_gguf(path, c, w, qtype)
            logits = reference_logits(c, stored, TOKENS, q8)
            top2 = np.sort(logits, axis=1)[:, -2:]
            margin = (top2[:, 1] - top2[:, 0]).min() / np.abs(logits).max()
            # Q8_0: no activation may be near a rounding decision (float32 noise is ~1e-5 of a quantum and
            # ~1e-7 relative): a flipped quantum moves these tiny models' logits by ~1%.
            tie, dm = (min(t for t, _ in Q8_MARGINS), min(x for _, x in Q8_MARGINS)) if Q8_MARGINS else (1, 1)
            Q8_MARGINS.clear()
            if margin > 1e-3 and tie > 2e-4 and dm > 2e-6:
                break
        else:
            raise SystemExit(f"{stem}: no seed gives well-separated argmaxes and Q8_0 roundings")
        with open(os.path.join(out_dir, stem + ".json"), "w") as f:
            json.dump({"tokens": TOKENS, "logits": [[sig6(v) for v in row] for row in logits]}, f,
                      separators=(",", ":"))
            f.write("\n")
        print(f"{stem}: seed {seed + 1000 * attempt}, {os.path.getsize(path)} bytes, "
              f"max|logit| {np.abs(logits).max():.3f}, argmax {[int(i) for i in logits.argmax(axis=1)]}, "
              f"min top-2 margin {margin:.3g}" + (f", Q8_0 tie margin {tie:.2g}, f16 scale margin {dm:.2g}"
                                                  if qtype == T.Q8_0 else ""))


if __name__ == "__main__":
    main()
