#!/usr/bin/env python3
"""Batched greedy decoding must equal solo decoding: serves a model on a device, asks N prompts one at a time, then
all at once (continuous batching puts them in the same steps), and compares the texts.

    scripts/check-batched.py BIN [--device cuda] [--model FILE] [--clients 8] [--tokens 32]

Without --model it writes a small random model with .baseline/make_random_gguf.py (2 layers of the Llama-3-8B shape,
4096-token vocabulary). Exits non-zero on any difference.
"""
import argparse, json, os, subprocess, sys, threading, time, urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("bin")
ap.add_argument("--device", default="cpu")
ap.add_argument("--model")
ap.add_argument("--clients", type=int, default=8)
ap.add_argument("--tokens", type=int, default=32)
ap.add_argument("--port", type=int, default=18123)
ap.add_argument("--server-args", default="", help="extra arguments for `serve` (e.g. --batch-invariant)")
ap.add_argument("--report-only", action="store_true", help="print the count, exit 0 whatever it is")
ap.add_argument("--prompt-words", type=int, default=0,
                help="prompts of this many extra words each (long enough that the batched prefill step crosses the "
                     "GPU's f16 GEMM / flash threshold while each prompt alone stays under it)")
args = ap.parse_args()

model = args.model
if not model:
    model = "/tmp/check-batched.gguf"
    if not os.path.exists(model):
        here = os.path.dirname(os.path.abspath(__file__))
        root = os.path.dirname(here)
        subprocess.run([sys.executable, os.path.join(root, ".baseline", "make_random_gguf.py"), "--preset", "llama3-8b",
                        "--layers", "2", "--vocab", "4096", "--out", model,
                        "--gguf-py", os.path.join(root, ".baseline", "gguf-py")], check=True,
                       stdout=subprocess.DEVNULL)

server = subprocess.Popen([args.bin, "serve", "--model", model, "--device", args.device, "--port", str(args.port),
                           "--max-batch-size", str(args.clients)] + args.server_args.split(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
base = f"http://127.0.0.1:{args.port}"
try:
    for _ in range(600):
        try:
            urllib.request.urlopen(base + "/health", timeout=1)
            break
        except Exception:
            if server.poll() is not None:
                sys.exit("server exited: " + server.stderr.read().decode()[-2000:])
            time.sleep(0.2)

    def complete(prompt):
        body = json.dumps({"prompt": prompt, "max_tokens": args.tokens, "temperature": 0}).encode()
        req = urllib.request.Request(base + "/v1/completions", body, {"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(req, timeout=600).read())["choices"][0]["text"]

    words = ["river", "stone", "light", "seven", "garden", "cloud", "paper", "orange"]
    prompts = [f"prompt number {i} " + ("abc " * (3 * i + 1) if args.prompt_words == 0 else
                                        " ".join(words[(i + j * 3) % len(words)] for j in range(args.prompt_words)))
               for i in range(args.clients)]
    solo = [complete(p) for p in prompts]
    together = [None] * len(prompts)

    def run(i):
        together[i] = complete(prompts[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    same = sum(1 for a, b in zip(solo, together) if a == b)
    ok = same == len(prompts)
    what = (f", prompts of {args.prompt_words} extra words" if args.prompt_words else "") + \
           (f", serve {args.server_args}" if args.server_args else "")
    print(f"batched = solo on {args.device}{what}: {same}/{len(prompts)} greedy answers of {args.tokens} tokens equal: "
          f"{'ok' if ok else ('(reported only)' if args.report_only else 'FAIL')}")
    sys.exit(0 if ok or args.report_only else 1)
finally:
    server.terminate()
    server.wait()
