#!/usr/bin/env python3
"""Builds Tests/TokenizerTests/Fixtures/bpe.json: a tiny byte-level BPE vocabulary trained with Hugging Face
`tokenizers`, and reference outputs for the Swift tokenizer tests.

- `vocab` (token strings by id, in the byte-level alphabet), `special` (ids of special tokens), `merges` ("a b").
- `encode[pre][i]`: ids that `tokenizers` gives for `strings[i]` with llama.cpp's pre-tokenizer `pre`
  (llama-bpe / qwen2 / deepseek-v3 / gpt-2), as a Split(regex, isolated) sequence + ByteLevel(use_regex=False).
- `splits[pattern][i]`: the pre-tokenizer words of `strings[i]`, from the Python `regex` module: each regex of
  the sequence cuts every piece into its matches and the unmatched stretches between them.

Usage: pip install tokenizers regex && python3 scripts/make_bpe_fixture.py
"""
import json
import os
import sys

import regex
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

# llama.cpp's regexes (src/llama-vocab.cpp), with (?i:...) contractions written out as llama.cpp does.
CONTRACTIONS_I = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = CONTRACTIONS_I + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = CONTRACTIONS_I + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
DEEPSEEK_V3 = [
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
]
DEFAULT = [r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"]

PATTERNS = {  # tokenizer.ggml.pre -> regex sequence
    "gpt-2": [GPT2],
    "llama-bpe": [LLAMA3],
    "qwen2": [QWEN2],
    "deepseek-v3": DEEPSEEK_V3,
    "default": DEFAULT,
}
IGNORE_MERGES = {"llama-bpe": True}

SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>"]

STRINGS = [
    "Hello, world! It's a test.",
    "I'M SURE THEY'LL DO IT; WE'VE SEEN IT'D WORK, YOU'RE RIGHT",
    "don't can't won't y'all 'tis o'clock rock'n'roll",
    "1234567890 12 345 6789 1,000,000",
    "3.14159, 2.71828; 1e-9 -42 +7 x=10**3",
    "Prices: $3.50 €12 £7.99 ¥1000 ₹250",
    "  leading spaces and trailing   ",
    "tabs\there\t\tand\tthere\t",
    "line1\nline2\n\n\nline5\r\nwindows\r\n",
    "   \n   \n  mixed whitespace  \n\t \n x",
    "日本語のテキストです。カタカナとひらがな、漢字123",
    "你好，世界！今天天气很好。",
    "한국어 문장입니다.",
    "Emoji: 🎉🔥👍🏽 family 👨\u200d👩\u200d👧!",
    "Ünïcödé àccents: naïve café façade",
    "combining e\u0301 and a\u0308 marks",
    "def f(x):\n    return x**2 + 1  # comment\n",
    "<html><body><p>Hello</p></body></html>",
    "snake_case_name CamelCase kebab-case __init__",
    "!!!??? ... --- *** ### @@@ ~~~",
    "Русский текст, и ещё 123 числа.",
    "hyphen\u2014dash \u2013 \u201cquotes\u201d \u2018single\u2019 \u00abguillemets\u00bb",
    "special <|eot_id|> token and <|im_start|>user\nhi<|im_end|>",
    "",
    "a",
    "\u00a0non-breaking\u00a0space and \u3000ideographic space",
]

CORPUS = """
The quick brown fox jumps over the lazy dog. It's a truth universally acknowledged that a single man in
possession of a good fortune must be in want of a wife. We've seen it, they'll do it, I'm sure you're right.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 12345 3.14159 2.71828 1,000,000 $3.50 42%.
def main(args):
    for i in range(10):
        print(i ** 2)  # squares
    return {"key": [1, 2, 3], 'other': None}
int main(void) { return 0; }
<html><body><p>Hello, world!</p></body></html>
日本語のテキストです。カタカナとひらがなと漢字。東京は日本の首都です。
你好，世界！今天天气很好。我们一起去公园吧。
한국어 문장입니다. 안녕하세요.
Русский текст с пунктуацией. Привет, мир!
Ünïcödé àccents: naïve café façade résumé über straße.
Emoji: 🎉🔥👍🏽 😀😃😄 family 👨‍👩‍👧
snake_case_name CamelCaseIdentifier kebab-case-name
    indented line
\t\ttabbed line
line one\nline two\r\nline three
"""


def split_sequence(text, patterns):
    pieces = [text] if text else []
    for p in patterns:
        out = []
        for piece in pieces:
            pos = 0
            for m in regex.finditer(p, piece):
                if m.start() > pos:
                    out.append(piece[pos:m.start()])
                if m.end() > m.start():
                    out.append(m.group())
                pos = m.end()
            if pos < len(piece):
                out.append(piece[pos:])
        pieces = out
    return pieces


def pre_tokenizer(patterns):
    steps = [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in patterns]
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    return pre_tokenizers.Sequence(steps)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_path = os.path.join(root, "Tests", "TokenizerTests", "Fixtures", "bpe.json")

    trainer = trainers.BpeTrainer(vocab_size=900, min_frequency=1, show_progress=False, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizer([LLAMA3])
    corpus = [line for line in CORPUS.split("\n") if line] * 3 + STRINGS
    base.train_from_iterator(corpus, trainer)

    model = json.loads(base.to_str())["model"]
    vocab_map = model["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    vocab = [None] * len(vocab_map)
    for t, i in vocab_map.items():
        vocab[i] = t
    assert all(v is not None for v in vocab)
    special_ids = [vocab_map[s] for s in SPECIAL]

    encode = {}
    for pre, patterns in PATTERNS.items():
        if pre == "default":
            continue
        tok = Tokenizer(models.BPE(vocab=vocab_map, merges=[tuple(m.split(" ")) for m in merges],
                                   ignore_merges=IGNORE_MERGES.get(pre, False)))
        tok.pre_tokenizer = pre_tokenizer(patterns)
        tok.add_special_tokens(SPECIAL)
        encode[pre] = [tok.encode(s, add_special_tokens=False).ids for s in STRINGS]

    splits = {pre: [split_sequence(s, patterns) for s in STRINGS] for pre, patterns in PATTERNS.items()}

    fixture = {
        "source": "scripts/make_bpe_fixture.py (tokenizers %s, regex %s)" % (
            __import__("tokenizers").__version__, regex.__version__),
        "vocab": vocab,
        "special": special_ids,
        "merges": merges,
        "strings": STRINGS,
        "encode": encode,
        "splits": splits,
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, separators=(",", ":"))
    print("wrote %s: %d tokens, %d merges, %d bytes" % (out_path, len(vocab), len(merges), os.path.getsize(out_path)),
          file=sys.stderr)


if __name__ == "__main__":
    main()
