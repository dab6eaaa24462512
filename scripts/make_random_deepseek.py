#!/usr/bin/env python3
"""Writes a random-weight GGUF with DeepSeek-V3's shapes (llama.cpp's `deepseek2` architecture, MLA with the split
attn_k_b / attn_v_b tensors) for speed and real-shape correctness runs: only NumPy, no gguf package, written as
quantized blocks at disk speed.

DeepSeek-V3 (config.json of deepseek-ai/DeepSeek-V3): hidden 7168, 128 heads, q LoRA 1536, KV LoRA 512, nope 128 +
rope 64 key dims, value 128, YaRN (factor 40 over 4096 positions, mscale_all_dim 1), 256 routed experts of width
2048 and one shared, top-8 from the 4 best of 8 groups (sigmoid scores, e_score_correction_bias, noaux_tc),
renormalized and scaled by 2.5, dense FFN 18432 in the first layers, vocabulary 129280. The real model has 61
layers (3 dense); `--layers` keeps a few of them (default 4: 1 dense and 3 MoE, ~20 GB at Q4_K).

Weights (facts of the GGUF block formats, as in ggml):
  Q4_K  144 bytes / 256 weights: d, dmin (f16), 12 bytes of 6-bit scales and mins, 128 bytes of 4-bit quants;
        here every scale and min is 1 and dmin = 7.5 d, so w = d (q - 7.5) with q uniform in 0..15 (std 4.61 d).
  Q6_K  210 bytes / 256: ql[128], qh[64], int8 scales[16], d (f16): w = d sc (q - 32), q uniform in 0..63.
  Q8_0  34 bytes / 32: d (f16), 32 int8.
Each matrix is scaled so that a row times a unit-RMS input has std `--gain` (attn_output: `--attn-out-gain`, small,
so that the nearly uniform attention of random weights does not wash out the token-specific part of the hidden
state and every token routes alike; the embeddings have std `--embd-std`). Matrices are slices at random offsets of
a pool of random blocks, so a 20 GB file is written in seconds. Router weights and the selection bias are f32.

Check the routing spread on the model before trusting a batched or prefill number: `ktransformers bench` prints the
distinct experts per MoE layer and step against what independent random choices would give.

Usage: python3 scripts/make_random_deepseek.py --out /tmp/deepseek-v3.gguf [--layers 4] [--dense-lead 1]
       [--experts 256] [--vocab 129280] [--expert-type Q4_K] [--seed 1234]
"""
import argparse
import math
import struct
import sys
import time

import numpy as np

# ggml types: id, bytes per block, weights per block
TYPES = {"F32": (0, 4, 1), "F16": (1, 2, 1), "Q8_0": (8, 34, 32), "Q4_K": (12, 144, 256), "Q6_K": (14, 210, 256)}

V3 = dict(dim=7168, n_head=128, q_lora=1536, kv_lora=512, nope=128, rope=64, v_head=128, ff=18432, ff_exp=2048,
          experts=256, shared=1, top_k=8, groups=8, groups_used=4, scale=2.5, vocab=129280, ctx=163840,
          rope_base=10000.0, yarn_factor=40.0, yarn_orig=4096, mscale_all_dim=1.0, eps=1e-6)


class Writer:
    """GGUF version 3: header, metadata, tensor infos, then the data at 32-byte aligned offsets."""

    ALIGN = 32

    def __init__(self):
        self.kv = []
        self.tensors = []  # (name, ne, type, nbytes)

    @staticmethod
    def _str(s):
        b = s.encode()
        return struct.pack("<Q", len(b)) + b

    def add(self, key, value, kind=None):
        if kind is None:
            kind = {bool: "bool", int: "u32", float: "f32", str: "str"}[type(value)]
        self.kv.append((key, kind, value))

    def _value(self, kind, v):
        if kind == "u32":
            return struct.pack("<I", 4) + struct.pack("<I", v)
        if kind == "i32":
            return struct.pack("<I", 5) + struct.pack("<i", v)
        if kind == "f32":
            return struct.pack("<I", 6) + struct.pack("<f", v)
        if kind == "bool":
            return struct.pack("<I", 7) + struct.pack("<B", 1 if v else 0)
        if kind == "str":
            return struct.pack("<I", 8) + self._str(v)
        if kind == "str[]":
            return struct.pack("<IIQ", 9, 8, len(v)) + b"".join(self._str(s) for s in v)
        if kind == "f32[]":
            return struct.pack("<IIQ", 9, 6, len(v)) + np.asarray(v, dtype="<f4").tobytes()
        if kind == "i32[]":
            return struct.pack("<IIQ", 9, 5, len(v)) + np.asarray(v, dtype="<i4").tobytes()
        raise ValueError(kind)

    def tensor(self, name, ne, qtype):
        _, bpb, wpb = TYPES[qtype]
        n = math.prod(ne)
        assert ne[0] % wpb == 0, (name, ne, qtype)
        self.tensors.append((name, tuple(ne), qtype, n // wpb * bpb))

    def header(self):
        out = [b"GGUF", struct.pack("<IQQ", 3, len(self.tensors), len(self.kv))]
        for key, kind, v in self.kv:
            out.append(self._str(key) + self._value(kind, v))
        offset = 0
        for name, ne, qtype, nbytes in self.tensors:
            out.append(self._str(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
                       + struct.pack("<IQ", TYPES[qtype][0], offset))
            offset += (nbytes + self.ALIGN - 1) // self.ALIGN * self.ALIGN
        h = b"".join(out)
        return h + b"\0" * (-len(h) % self.ALIGN)


def random_blocks(qtype, n_blocks, std, rng):
    """n_blocks random blocks whose weights have mean 0 and standard deviation `std`."""
    _, bpb, _ = TYPES[qtype]
    blk = rng.integers(0, 256, size=(n_blocks, bpb), dtype=np.uint8)
    f16 = lambda x: np.frombuffer(np.float16(x).tobytes(), dtype=np.uint8)  # noqa: E731
    if qtype == "Q4_K":
        d = std / 4.61
        blk[:, 0:2] = f16(d)
        blk[:, 2:4] = f16(7.5 * d)
        blk[:, 4:16] = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0x11, 0x11, 0x11, 0x11], dtype=np.uint8)
    elif qtype == "Q6_K":
        blk[:, 192:208] = 1
        blk[:, 208:210] = f16(std / 18.47)
    elif qtype == "Q8_0":
        blk[:, 0:2] = f16(std / 73.9)
    else:
        raise ValueError(qtype)
    return blk


class Pools:
    """A pool of random blocks per (type, std); a tensor is a run of slices at random offsets of its pool."""

    def __init__(self, rng, pool_bytes):
        self.rng, self.pool_bytes, self.pools = rng, pool_bytes, {}

    def write(self, f, qtype, std, nbytes):
        key = (qtype, round(std, 12))
        bpb = TYPES[qtype][1]
        if key not in self.pools:
            self.pools[key] = random_blocks(qtype, max(1, self.pool_bytes // bpb), std, self.rng).reshape(-1)
        pool = self.pools[key]
        left = nbytes
        while left > 0:
            off = int(self.rng.integers(0, pool.size // bpb)) * bpb
            take = min(left, pool.size - off)
            f.write(memoryview(pool[off:off + take]))
            left -= take


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=4, help="layers kept (DeepSeek-V3 has 61)")
    ap.add_argument("--dense-lead", type=int, default=1, help="leading dense layers (DeepSeek-V3 has 3)")
    ap.add_argument("--experts", type=int, default=V3["experts"], help="routed experts per layer (a multiple of 8)")
    ap.add_argument("--vocab", type=int, default=V3["vocab"])
    ap.add_argument("--expert-type", default="Q4_K", choices=["Q4_K", "Q8_0"])
    ap.add_argument("--type", default="Q4_K", choices=["Q4_K", "Q8_0"], help="attention, dense and shared-expert weights")
    ap.add_argument("--gain", type=float, default=1.0)
    ap.add_argument("--attn-out-gain", type=float, default=0.1)
    ap.add_argument("--embd-std", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--pool-mib", type=int, default=128)
    a = ap.parse_args()
    p = dict(V3)
    p["experts"], p["vocab"] = a.experts, a.vocab
    if a.experts % p["groups"] or a.experts // p["groups"] * p["groups_used"] < p["top_k"]:
        sys.exit(f"--experts {a.experts}: must be a multiple of {p['groups']} with top-{p['top_k']} inside "
                 f"{p['groups_used']} groups")
    if not 1 <= a.layers or not 0 <= a.dense_lead < a.layers:
        sys.exit("--dense-lead must leave at least one MoE layer of --layers")
    D, H, X, F = p["dim"], p["n_head"], p["experts"], p["ff_exp"]
    qk = p["nope"] + p["rope"]
    rng = np.random.default_rng(a.seed)
    t0 = time.time()

    w = Writer()
    arch = "deepseek2"
    w.add("general.architecture", arch)
    w.add("general.name", f"random-DeepSeek-V3-{a.layers}-layers")
    w.add("general.alignment", Writer.ALIGN)
    w.add("general.file_type", 15)
    w.add("general.quantization_version", 2)
    for key, v in [("context_length", p["ctx"]), ("embedding_length", D), ("block_count", a.layers),
                   ("feed_forward_length", p["ff"]), ("attention.head_count", H), ("attention.head_count_kv", 1),
                   ("attention.q_lora_rank", p["q_lora"]), ("attention.kv_lora_rank", p["kv_lora"]),
                   ("attention.key_length", p["kv_lora"] + p["rope"]), ("attention.value_length", p["kv_lora"]),
                   ("attention.key_length_mla", qk), ("attention.value_length_mla", p["v_head"]),
                   ("rope.dimension_count", p["rope"]), ("leading_dense_block_count", a.dense_lead),
                   ("expert_feed_forward_length", F), ("expert_count", X), ("expert_used_count", p["top_k"]),
                   ("expert_shared_count", p["shared"]), ("expert_gating_func", 2),
                   ("expert_group_count", p["groups"]), ("expert_group_used_count", p["groups_used"]),
                   ("rope.scaling.original_context_length", p["yarn_orig"]), ("vocab_size", p["vocab"])]:
        w.add(f"{arch}.{key}", v)
    w.add(f"{arch}.attention.layer_norm_rms_epsilon", p["eps"])
    w.add(f"{arch}.rope.freq_base", p["rope_base"])
    w.add(f"{arch}.expert_weights_scale", p["scale"])
    w.add(f"{arch}.expert_weights_norm", True)
    w.add(f"{arch}.rope.scaling.type", "yarn")
    w.add(f"{arch}.rope.scaling.factor", p["yarn_factor"])
    w.add(f"{arch}.rope.scaling.yarn_log_multiplier", 0.1 * p["mscale_all_dim"])
    # A SentencePiece-style vocabulary every tokenizer loads: unknown, BOS, EOS, the 256 byte tokens, filler pieces.
    V = p["vocab"]
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    toks += [f"\u2581t{i}" for i in range(len(toks), V)]
    types += [1] * (V - len(types))
    w.add("tokenizer.ggml.model", "llama")
    w.add("tokenizer.ggml.tokens", toks[:V], "str[]")
    w.add("tokenizer.ggml.scores", [-float(i) for i in range(V)], "f32[]")
    w.add("tokenizer.ggml.token_type", types[:V], "i32[]")
    w.add("tokenizer.ggml.bos_token_id", 1)
    w.add("tokenizer.ggml.eos_token_id", 2)
    w.add("tokenizer.ggml.unknown_token_id", 0)
    w.add("tokenizer.ggml.add_bos_token", True)

    # (name, ggml ne, type, init): init is the weights' std for quantized types, or "ones" / ("randn", std) for f32
    g = a.gain
    plan = [("token_embd.weight", (D, V), a.type, a.embd_std)]
    for i in range(a.layers):
        b = f"blk.{i}."
        plan += [(b + "attn_norm.weight", (D,), "F32", "ones"),
                 (b + "attn_q_a.weight", (D, p["q_lora"]), a.type, g / math.sqrt(D)),
                 (b + "attn_q_a_norm.weight", (p["q_lora"],), "F32", "ones"),
                 (b + "attn_q_b.weight", (p["q_lora"], H * qk), a.type, g / math.sqrt(p["q_lora"])),
                 (b + "attn_kv_a_mqa.weight", (D, p["kv_lora"] + p["rope"]), a.type, g / math.sqrt(D)),
                 (b + "attn_kv_a_norm.weight", (p["kv_lora"],), "F32", "ones"),
                 # k_b [head][kv_lora rows of nope], v_b [head][v_head rows of kv_lora]: row lengths 128 and 512
                 (b + "attn_k_b.weight", (p["nope"], p["kv_lora"], H), "Q8_0", g / math.sqrt(p["kv_lora"])),
                 (b + "attn_v_b.weight", (p["kv_lora"], p["v_head"], H), "Q8_0", g / math.sqrt(p["kv_lora"])),
                 (b + "attn_output.weight", (H * p["v_head"], D), a.type, a.attn_out_gain / math.sqrt(H * p["v_head"])),
                 (b + "ffn_norm.weight", (D,), "F32", "ones")]
        if i < a.dense_lead:
            plan += [(b + "ffn_gate.weight", (D, p["ff"]), a.type, g / math.sqrt(D)),
                     (b + "ffn_up.weight", (D, p["ff"]), a.type, g / math.sqrt(D)),
                     (b + "ffn_down.weight", (p["ff"], D), a.type, g / math.sqrt(p["ff"]))]
        else:
            S = F * p["shared"]
            plan += [(b + "ffn_gate_inp.weight", (D, X), "F32", ("randn", g / math.sqrt(D))),
                     (b + "exp_probs_b.bias", (X,), "F32", ("randn", 0.01)),
                     (b + "ffn_gate_exps.weight", (D, F, X), a.expert_type, g / math.sqrt(D)),
                     (b + "ffn_up_exps.weight", (D, F, X), a.expert_type, g / math.sqrt(D)),
                     (b + "ffn_down_exps.weight", (F, D, X), a.expert_type, g / math.sqrt(F)),
                     (b + "ffn_gate_shexp.weight", (D, S), a.type, g / math.sqrt(D)),
                     (b + "ffn_up_shexp.weight", (D, S), a.type, g / math.sqrt(D)),
                     (b + "ffn_down_shexp.weight", (S, D), a.type, g / math.sqrt(S))]
    plan += [("output_norm.weight", (D,), "F32", "ones"), ("output.weight", (D, V), "Q6_K", g / math.sqrt(D))]
    for name, ne, qtype, _ in plan:
        w.tensor(name, ne, qtype)

    pools = Pools(rng, a.pool_mib << 20)
    total = 0
    with open(a.out, "wb") as f:
        f.write(w.header())
        for (name, ne, qtype, init), (_, _, _, nbytes) in zip(plan, w.tensors):
            if qtype == "F32":
                n = math.prod(ne)
                arr = (1.0 + 0.01 * rng.standard_normal(n)) if init == "ones" else rng.standard_normal(n) * init[1]
                f.write(arr.astype("<f4").tobytes())
            else:
                pools.write(f, qtype, init, nbytes)
            total += nbytes
            f.write(b"\0" * (-nbytes % Writer.ALIGN))
    print(f"{a.out}: {len(plan)} tensors, {total / 1e9:.2f} GB of weights, {a.layers} layers "
          f"({a.dense_lead} dense), {X} experts, vocab {V}, {time.time() - t0:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
