#!/usr/bin/env python3
"""Builds Tests/HFTests/Fixtures/spm.json: a small SentencePiece BPE model (byte fallback, Llama-style settings)
written as Hugging Face tokenizer.json files the way `transformers` converts SentencePiece models (its
LlamaConverter: vocabulary in id order, merges from every split of every piece ordered by the piece's score,
BPE with byte_fallback), and the ids SentencePiece itself gives for test strings.

- `legacy`: tokenizer.json of a Llama-2 / Mixtral checkpoint (normalizer Prepend("▁") + Replace(" ", "▁")).
- `metaspace`: the newer spelling (Mistral v3 and later; `legacy: false`): no normalizer, a Metaspace
  pre-tokenizer with prepend_scheme "first".
- `strings`, `ids[i]`: SentencePiece's encoding of strings[i] (no BOS); `hf[variant][i]`: what `tokenizers` gives
  for the same tokenizer.json. They are equal for `legacy` (checked below); with the Metaspace spelling
  `tokenizers` does not prepend "▁" to a text that starts with a space, where SentencePiece (and llama.cpp's
  add_space_prefix) does, so those strings differ (printed below).

Usage: pip install sentencepiece tokenizers transformers protobuf && python3 scripts/make_spm_fixture.py
"""
import json
import os
import tempfile

import sentencepiece as spm
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from transformers.convert_slow_tokenizer import generate_merges

CORPUS = """The quick brown fox jumps over the lazy dog. A tokenizer turns text into numbers.
Hello world! Hello, hello, HELLO. It's 2026 and the year after 2025; numbers like 3.14159 and 1,000,000.
def main():
    print("hi")  # code with  double  spaces
Mixture-of-experts models route each token to a few experts, and the experts run on the CPU.
naïve café résumé — “quotes” and ‘apostrophes’.
日本語のテキストも少し。中文也有一点。
"""

STRINGS = [
    "Hello world",
    " leading space",
    "two  spaces and   three",
    "trailing ",
    "line1\nline2\n\nline4",
    "naïve café résumé",
    "日本語のテキスト",
    "emoji 🦀 crab and ∑ sum",
    "numbers 12345 and 3.14159",
    " ",
    "def main():\n    print(\"hi\")",
    "The experts run on the CPU; the quick brown fox.",
    "ÆØÅ æøå ß",
    "tab\tseparated\tvalues",
]


def build(model_file, legacy):
    sp = spm.SentencePieceProcessor(model_file=model_file)
    vocab_scores = [(sp.id_to_piece(i), 0.0 if i < 3 else sp.get_score(i)) for i in range(sp.get_piece_size())]
    vocab = {p: i for i, (p, _) in enumerate(vocab_scores)}
    merges = generate_merges(vocab, vocab_scores)
    tok = Tokenizer(BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.add_tokens([AddedToken(sp.id_to_piece(i), normalized=False, special=True) for i in range(3)])
    if legacy:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return tok


def main():
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "corpus.txt"), "w") as f:
            f.write(CORPUS * 20)
        spm.SentencePieceTrainer.train(
            input=os.path.join(d, "corpus.txt"), model_prefix=os.path.join(d, "m"), vocab_size=600,
            model_type="bpe", byte_fallback=True, character_coverage=0.9995, normalization_rule_name="identity",
            remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True,
            allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
        model = os.path.join(d, "m.model")
        sp = spm.SentencePieceProcessor(model_file=model)
        out = {"strings": STRINGS, "ids": [sp.encode(s) for s in STRINGS], "hf": {}}
        for variant, legacy in [("legacy", True), ("metaspace", False)]:
            tok = build(model, legacy)
            out[variant] = json.loads(tok.to_str())
            hf = [tok.encode(s, add_special_tokens=False).ids for s in STRINGS]
            out["hf"][variant] = hf
            for s, a, b in zip(STRINGS, hf, out["ids"]):
                if a != b:
                    assert not legacy and s.startswith(" "), f"{variant}: tokenizers and SentencePiece differ on {s!r}"
                    print(f"{variant}: tokenizers {a} vs SentencePiece {b} for {s!r}")
    path = os.path.join(os.path.dirname(__file__), "..", "Tests", "HFTests", "Fixtures", "spm.json")
    with open(path, "w") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
    print(f"wrote {os.path.normpath(path)} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
