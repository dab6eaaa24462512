#!/usr/bin/env python3
"""Runs every tiny architecture fixture (Tests/ModelTests/Fixtures/*.gguf) through `ktransformers logits` on a
device and compares the logits with the fixture's reference (PyTorch / NumPy float64, the .json beside it).

Bounds (issue 12): float models max |error| <= 1e-2 of the logits' max |value| and the argmax at every position;
q8_0 models argmax agreement >= 95%. Prints one line per model and exits non-zero if any fails.

    scripts/check-tiny-models.py BIN [--device cuda] [--fixtures DIR] [--skip REGEX] [-- EXTRA FLAGS]

--skip leaves out the fixtures whose name matches (tensor parallelism, `-- --devices cuda:0,cuda:0`, does not split
MLA attention, nor the Q8_0 experts' one-block down projection: --skip 'deepseek|qwen3moe-q8_0').

Flags after `--` go to every `logits` run (e.g. `--n-cpu-moe 0` for all experts on the GPU; the default with
`--device cuda` is the hybrid placement, routed experts on the CPU).
"""
import argparse, glob, json, os, re, subprocess, sys

ap = argparse.ArgumentParser()
ap.add_argument("bin")
ap.add_argument("--device", default="cpu")
ap.add_argument("--skip", default=None)
ap.add_argument("--fixtures", default=os.path.join(os.path.dirname(__file__), "..", "Tests", "ModelTests", "Fixtures"))
argv = sys.argv[1:]
extra = argv[argv.index("--") + 1:] if "--" in argv else []
args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)

failed = 0
for gguf in sorted(glob.glob(os.path.join(args.fixtures, "*.gguf"))):
    ref_path = gguf[:-5] + ".json"
    if not os.path.exists(ref_path):
        continue
    ref = json.load(open(ref_path))
    tokens = ref["tokens"]
    name = os.path.basename(gguf)
    if args.skip and re.search(args.skip, name):
        continue
    p = subprocess.run([args.bin, "logits", "--model", gguf, "--device", args.device, "--tokens",
                        ",".join(map(str, tokens))] + extra, capture_output=True, text=True)
    if p.returncode != 0:
        print(f"{name}: FAILED to run: {p.stderr.strip()[-400:]}")
        failed += 1
        continue
    got = json.loads(p.stdout)["logits"]
    want = ref["logits"]
    peak = max(abs(v) for row in want for v in row)
    worst = max(abs(a - b) for gr, wr in zip(got, want) for a, b in zip(gr, wr))
    agree = sum(1 for gr, wr in zip(got, want) if gr.index(max(gr)) == wr.index(max(wr)))
    quantized = "q8_0" in name or "q4" in name
    if quantized:
        ok = agree >= 0.95 * len(want)
        bound = "argmax >= 95%"
    else:
        ok = worst <= 1e-2 * peak and agree == len(want)
        bound = "max err <= 1e-2 of max, argmax everywhere"
    print(f"{name} [{' '.join([args.device] + extra)}]: max |err| {worst:.2e} of max |logit| {peak:.2f} ({worst / peak:.1e}), "
          f"argmax {agree}/{len(want)} ({bound}): {'ok' if ok else 'FAIL'}")
    failed += 0 if ok else 1
sys.exit(1 if failed else 0)
