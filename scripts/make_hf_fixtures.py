#!/usr/bin/env python3
"""Tiny random-weight Hugging Face checkpoints of every architecture the engine supports, with reference logits.

Each fixture is a directory as `save_pretrained(safe_serialization=True)` writes it (config.json + *.safetensors;
`llama` is sharded, so `model.safetensors.index.json` is exercised) plus `reference.json`:
`{"architecture": ..., "transformers": version, "tokens": [...], "logits": [[vocab] per position]}` with float32
logits of the model reloaded from that directory (eager attention, float32, CPU).

Weights are random but not trivial: matrices ~ N(0, 1/fan_in), norm weights 1 + N(0, 0.3) (Gemma: stored offsets
N(0, 0.3), the model adds 1), biases, router weights and DeepSeek-V3's `e_score_correction_bias` non-zero, so a
missing norm, bias, permutation or routing bias shows in the logits. Seeds are searched so that the reference's
top-2 logits (2% of max |logit|; MoE: 1%) and every MoE router's k-th/(k+1)-th choice and group choice (0.02
in probability) are well separated: an engine within
float32 noise of the reference then has the same argmax and picks the same experts.

Run where PyTorch and transformers are installed (the device machine):
    python3 scripts/make_hf_fixtures.py OUT_DIR
then copy OUT_DIR/* into Tests/HFTests/Fixtures/ (without the generation_config.json files, which nothing reads).
The tests need neither PyTorch nor transformers.
"""
import inspect
import json
import math
import os
import sys

import torch
import transformers

VOCAB = 128
SEQ = 24
SEEDS = 300
MOE_SEEDS = 1500


def tokens():
    g = torch.Generator().manual_seed(1234)
    return torch.randint(0, VOCAB, (SEQ,), generator=g).tolist()


def rope_kwargs(cls, theta, scaling=None):
    """rope_theta / rope_scaling for transformers 4.x, rope_parameters for 5.x."""
    params = inspect.signature(cls.__init__).parameters
    if "rope_parameters" in params:
        rp = {"rope_type": "default", "rope_theta": theta}
        if scaling:
            rp.update(scaling)
        return {"rope_parameters": rp}
    kw = {"rope_theta": theta}
    if scaling:
        kw["rope_scaling"] = dict(scaling)
    return kw


COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def specs():
    T = transformers
    out = []

    def add(name, cls_name, cfg_name, kw, shard=None):
        cls, cfg = getattr(T, cls_name, None), getattr(T, cfg_name, None)
        if cls is None or cfg is None:
            print(f"SKIP {name}: transformers {T.__version__} has no {cls_name}/{cfg_name}", flush=True)
            return
        out.append((name, cls, cfg, kw, shard))

    add("llama", "LlamaForCausalLM", "LlamaConfig",
        lambda c: dict(COMMON, intermediate_size=256, tie_word_embeddings=False,
                       **rope_kwargs(c, 10000.0, {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 32})),
        shard="200KB")
    add("qwen2", "Qwen2ForCausalLM", "Qwen2Config",
        lambda c: dict(COMMON, intermediate_size=128, tie_word_embeddings=True,
                       **rope_kwargs(c, 1000000.0, {"rope_type": "linear", "factor": 2.0})))
    add("qwen3", "Qwen3ForCausalLM", "Qwen3Config",
        lambda c: dict(COMMON, intermediate_size=128, head_dim=32, tie_word_embeddings=False,
                       **rope_kwargs(c, 1000000.0)))
    add("gemma3", "Gemma3ForCausalLM", "Gemma3TextConfig",
        lambda c: dict(COMMON, intermediate_size=128, head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
                       layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True,
                       final_logit_softcapping=None, attn_logit_softcapping=None, rms_norm_eps=1e-6,
                       hidden_activation="gelu_pytorch_tanh",
                       **gemma_rope(c)))
    add("mixtral", "MixtralForCausalLM", "MixtralConfig",
        lambda c: dict(COMMON, intermediate_size=64, num_local_experts=4, num_experts_per_tok=2,
                       tie_word_embeddings=False, **rope_kwargs(c, 1000000.0)))
    add("qwen2_moe", "Qwen2MoeForCausalLM", "Qwen2MoeConfig",
        lambda c: dict(COMMON, intermediate_size=128, moe_intermediate_size=32, shared_expert_intermediate_size=64,
                       num_experts=4, num_experts_per_tok=2, norm_topk_prob=False, decoder_sparse_step=1,
                       mlp_only_layers=[], tie_word_embeddings=False, qkv_bias=True, **rope_kwargs(c, 1000000.0)))
    add("qwen3_moe", "Qwen3MoeForCausalLM", "Qwen3MoeConfig",
        lambda c: dict(COMMON, intermediate_size=128, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
                       head_dim=16, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                       tie_word_embeddings=False, **rope_kwargs(c, 1000000.0)))
    mla = dict(COMMON, num_key_value_heads=4, intermediate_size=128, moe_intermediate_size=32, kv_lora_rank=32,
               qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, first_k_dense_replace=1,
               num_experts_per_tok=2, n_shared_experts=1, tie_word_embeddings=False, rms_norm_eps=1e-6)
    add("deepseek_v2", "DeepseekV2ForCausalLM", "DeepseekV2Config",
        lambda c: dict(mla, q_lora_rank=None, n_routed_experts=4, topk_method="greedy", n_group=1, topk_group=1,
                       routed_scaling_factor=1.5, norm_topk_prob=False, **rope_kwargs(c, 10000.0)))
    add("deepseek_v3", "DeepseekV3ForCausalLM", "DeepseekV3Config",
        lambda c: dict(mla, q_lora_rank=32, n_routed_experts=8, n_group=2, topk_group=1, routed_scaling_factor=2.5,
                       norm_topk_prob=True, max_position_embeddings=64,
                       **rope_kwargs(c, 10000.0, {"rope_type": "yarn", "factor": 4.0,
                                                  "original_max_position_embeddings": 16, "beta_fast": 32.0,
                                                  "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0})))
    return out


def gemma_rope(cfg_cls):
    params = inspect.signature(cfg_cls.__init__).parameters
    if "rope_parameters" in params:
        return {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}
    return {"rope_theta": 1000000.0, "rope_local_base_freq": 10000.0}


def randomize(model, gemma, tied, seed):
    g = torch.Generator().manual_seed(seed)
    buffers = [(n, b) for n, b in model.named_buffers() if "e_score_correction_bias" in n]
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + buffers:
            if not p.is_floating_point():
                continue
            shape = p.shape
            r = torch.randn(shape, generator=g, dtype=torch.float32)
            if "e_score_correction_bias" in name:
                v = 0.3 * r
            elif p.dim() == 1 and "norm" in name:
                v = 0.3 * r if gemma else 1.0 + 0.3 * r
            elif p.dim() == 1:
                v = 0.2 * r
            elif "embed_tokens" in name:
                # Tied embeddings of N(0, 1) would dominate the residual stream and make every argmax the
                # input token itself; smaller ones let the layers decide.
                # Gemma also multiplies them by sqrt(dim), hence its smaller scale.
                v = r * (0.25 if gemma else 1.0) / math.sqrt(shape[-1]) if tied else r
            elif name.endswith("gate.weight") or "shared_expert_gate" in name:
                v = 2.0 * r / math.sqrt(shape[-1])   # routers: spread-out choices
            else:
                v = r / math.sqrt(shape[-1])
            p.copy_(v.to(p.dtype))


def make_model(cls, config):
    try:
        m = cls(config)
    except TypeError:
        m = cls._from_config(config)
    m = m.float().eval()
    if hasattr(m, "set_attn_implementation"):
        try:
            m.set_attn_implementation("eager")
        except Exception as e:  # noqa: BLE001
            print("  set_attn_implementation failed:", e)
    return m


def router_margin(model, cfg, toks):
    """Smallest gap, over tokens and MoE layers, between the k-th and (k+1)-th routing choice (and group choice)."""
    captured = []
    hooks = []
    for name, mod in model.named_modules():
        if hasattr(mod, "gate") and hasattr(mod, "experts"):
            hooks.append(mod.register_forward_hook(
                lambda m, inp, out, name=name: captured.append((m, inp[0].detach().reshape(-1, inp[0].shape[-1])))))
    with torch.no_grad():
        model(torch.tensor([toks]))
    for h in hooks:
        h.remove()
    if not captured:
        return math.inf
    k = cfg.num_experts_per_tok
    best = math.inf
    mt = cfg.model_type
    for m, x in captured:
        logits = x.float() @ m.gate.weight.float().t()
        if mt == "deepseek_v3":
            s = torch.sigmoid(logits) + m.gate.e_score_correction_bias.float()
            ng, tg = cfg.n_group, cfg.topk_group
            gs = s.view(s.shape[0], ng, -1).topk(2, dim=-1)[0].sum(-1)
            if tg < ng:
                gsorted = gs.sort(dim=-1, descending=True)[0]
                best = min(best, (gsorted[:, tg - 1] - gsorted[:, tg]).min().item())
            idx = gs.topk(tg, dim=-1)[1]
            mask = torch.zeros_like(gs).scatter_(1, idx, 1).bool()
            mask = mask.unsqueeze(-1).expand(-1, ng, s.shape[1] // ng).reshape(s.shape[0], -1)
            s = s.masked_fill(~mask, -1e9)
        else:
            s = torch.softmax(logits, dim=-1)
        ss = s.sort(dim=-1, descending=True)[0]
        best = min(best, (ss[:, k - 1] - ss[:, k]).min().item())
    return best


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "hf_fixtures"
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(4)
    print("torch", torch.__version__, "transformers", transformers.__version__, flush=True)
    toks = tokens()
    for name, cls, cfg_cls, kw, shard in specs():
        try:
            kwargs = kw(cfg_cls)
            try:
                config = cfg_cls(**kwargs, attn_implementation="eager")
            except TypeError:
                config = cfg_cls(**kwargs)
            best = None
            moe = getattr(config, "num_experts_per_tok", None) is not None
            for seed in range(MOE_SEEDS if moe else SEEDS):
                torch.manual_seed(seed)
                model = make_model(cls, config)
                randomize(model, name == "gemma3", bool(getattr(config, "tie_word_embeddings", False)),
                          1000 * seed + 7)
                with torch.no_grad():
                    logits = model(torch.tensor([toks])).logits[0].float()
                top2 = logits.topk(2, dim=-1)[0]
                margin = ((top2[:, 0] - top2[:, 1]).min() / logits.abs().max()).item()
                route = router_margin(model, config, toks)
                # MoE: router choices well apart, so that 8-bit quantization rarely flips an expert either.
                score = min(margin / 0.01, route / 0.02) if moe else margin / 0.02
                if best is None or score > best[0]:
                    best = (score, seed, margin, route, model, logits)
                if score >= 1:
                    break
            score, seed, margin, route, model, logits = best
            d = os.path.join(out_dir, name)
            os.makedirs(d, exist_ok=True)
            save_kw = {"max_shard_size": shard} if shard else {}
            try:
                model.save_pretrained(d, safe_serialization=True, **save_kw)
            except TypeError:
                model.save_pretrained(d, **save_kw)
            # The reference comes from the model as reloaded from the directory, so it is what the files hold.
            try:
                re = cls.from_pretrained(d, attn_implementation="eager", dtype=torch.float32)
            except TypeError:
                re = cls.from_pretrained(d, attn_implementation="eager", torch_dtype=torch.float32)
            re = re.float().eval()
            with torch.no_grad():
                ref = re(torch.tensor([toks])).logits[0].float()
            drift = (ref - logits).abs().max().item()
            if drift > 1e-5 * ref.abs().max().item():
                print(f"WARNING {name}: the reloaded model's logits differ by {drift}", flush=True)
            with open(os.path.join(d, "reference.json"), "w") as f:
                json.dump({"architecture": cls.__name__, "transformers": transformers.__version__,
                           "tokens": toks, "logits": [[float(v) for v in row] for row in ref.tolist()]}, f)
            from safetensors import safe_open
            names = []
            for fn in sorted(os.listdir(d)):
                if fn.endswith(".safetensors"):
                    with safe_open(os.path.join(d, fn), "pt") as sf:
                        for k in sf.keys():
                            names.append(f"{fn}:{k}{list(sf.get_slice(k).get_shape())}")
            size = sum(os.path.getsize(os.path.join(d, fn)) for fn in os.listdir(d))
            print(f"{name}: seed {seed} score {score:.2f} top2 margin {margin:.4f} route margin {route:.4g} "
                  f"reload drift {drift:.3g} max|logit| {ref.abs().max().item():.3f} size {size} "
                  f"argmax {ref.argmax(-1).tolist()}", flush=True)
            print("  files:", sorted(os.listdir(d)))
            print("  config:", open(os.path.join(d, "config.json")).read().replace("\n", " "))
            print("  tensors:", " ".join(names), flush=True)
        except Exception as e:  # noqa: BLE001
            import traceback
            traceback.print_exc()
            print(f"FAIL {name}: {e}", flush=True)


if __name__ == "__main__":
    main()
