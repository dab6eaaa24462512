#!/usr/bin/env python3
"""Writes a random-weight Hugging Face Qwen3-MoE checkpoint with the layer shapes of Qwen3-30B-A3B (hidden 2048,
32 query / 4 KV heads of 128, 128 experts of width 768, top-8) but only a few layers and a small vocabulary, for
measuring MoE decoding at real shapes (docs/performance.md). Nothing is downloaded; the weights are noise
(N(0, 1/fan_in), f16), so the text it generates is meaningless, but every tensor has its real size and format.

    pip install numpy safetensors
    python3 scripts/make_moe_bench_model.py OUT_DIR [LAYERS=4]
    ktransformers convert --input OUT_DIR --output model.gguf --type q4_k

The tokenizer is the small SentencePiece vocabulary of Tests/HFTests/Fixtures/spm.json filled up to the model's
vocabulary with words "▁w<id>" (so every generated id decodes to text, and servers stream something).
"""
import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file

H, HEADS, KV, HD, E, K, FF, VOCAB = 2048, 32, 4, 128, 128, 8, 768, 32000


def main():
    out = sys.argv[1]
    layers = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols), dtype=np.float32) / np.sqrt(cols)).astype(np.float16)

    def norm(n):
        return (1 + 0.1 * rng.standard_normal(n, dtype=np.float32)).astype(np.float16)

    config = {
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": H,
        "intermediate_size": 6144, "moe_intermediate_size": FF, "num_experts": E, "num_experts_per_tok": K,
        "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [], "num_attention_heads": HEADS,
        "num_key_value_heads": KV, "head_dim": HD, "num_hidden_layers": layers, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "max_position_embeddings": 40960, "vocab_size": VOCAB,
        "tie_word_embeddings": False, "torch_dtype": "float16", "bos_token_id": 1, "eos_token_id": 2,
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)

    weight_map = {}

    def shard(name, tensors):
        save_file(tensors, os.path.join(out, name))
        for k in tensors:
            weight_map[k] = name

    shard("embed.safetensors", {"model.embed_tokens.weight": mat(VOCAB, H), "model.norm.weight": norm(H),
                                "lm_head.weight": mat(VOCAB, H)})
    for i in range(layers):
        p = f"model.layers.{i}."
        t = {p + "input_layernorm.weight": norm(H), p + "post_attention_layernorm.weight": norm(H),
             p + "self_attn.q_proj.weight": mat(HEADS * HD, H), p + "self_attn.k_proj.weight": mat(KV * HD, H),
             p + "self_attn.v_proj.weight": mat(KV * HD, H), p + "self_attn.o_proj.weight": mat(H, HEADS * HD),
             p + "self_attn.q_norm.weight": norm(HD), p + "self_attn.k_norm.weight": norm(HD),
             p + "mlp.gate.weight": mat(E, H)}
        for e in range(E):
            q = f"{p}mlp.experts.{e}."
            t[q + "gate_proj.weight"] = mat(FF, H)
            t[q + "up_proj.weight"] = mat(FF, H)
            t[q + "down_proj.weight"] = mat(H, FF)
        shard(f"layer-{i:03d}.safetensors", t)
        print(f"layer {i + 1}/{layers}", flush=True)
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)

    spm = json.load(open(os.path.join(os.path.dirname(__file__), "..", "Tests", "HFTests", "Fixtures", "spm.json")))
    tok = spm["legacy"]
    vocab = tok["model"]["vocab"]
    for i in range(len(vocab), VOCAB):  # fill the vocabulary with words, so that every id decodes to text
        vocab[f"\u2581w{i}"] = i
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tok, f, ensure_ascii=False)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": True, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, f)


if __name__ == "__main__":
    main()
