#!/usr/bin/env bash
# Compares two builds of ktransformers side by side, alternating them round by round on the same machine (the
# way docs/performance.md's "before/after" figures are measured): pp512, tg128 and 4-sequence decode on the
# default model, and pp512, tg32 and 4-sequence decode on an MoE model (scripts/make_moe_bench_model.py).
# Prints one JSON line per (round, binary, test) and a table of medians.
#
#   scripts/compare-speed.sh OLD_BINARY NEW_BINARY [MOE_GGUF] [ROUNDS=3] [THREADS=2]
set -euo pipefail
old=$1 new=$2 moe=${3:-} rounds=${4:-3} threads=${5:-2}
out=$(mktemp)
run() {  # binary label args...
  local bin=$1 label=$2; shift 2
  "$bin" bench -t "$threads" --json "$@" | python3 -c '
import json, sys
for r in json.load(sys.stdin):
    print(json.dumps({"label": sys.argv[1], "model": r["model"], "test": r["test"], "tps": r["median_tokens_per_second"]}))
' "$label" >> "$out"
}
for round in $(seq 1 "$rounds"); do
  for pair in "old:$old" "new:$new"; do
    label=${pair%%:*} bin=${pair#*:}
    run "$bin" "$label" -r 5 -p 512 -n 128
    run "$bin" "$label" -r 5 -p 0 -n 128 -b 4
    if [ -n "$moe" ]; then
      run "$bin" "$label" --model "$moe" -r 3 -p 512 -n 32
      run "$bin" "$label" --model "$moe" -r 3 -p 0 -n 32 -b 4
    fi
  done
  echo "round $round done (load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
done
cat "$out"
python3 - "$out" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1])]
keys = sorted({(r["model"], r["test"]) for r in rows})
print("| model | test | old (rounds) | new (rounds) | old median | new median | new / old |")
print("|---|---|---|---|---|---|---|")
for m, t in keys:
    o = [r["tps"] for r in rows if r["label"] == "old" and (r["model"], r["test"]) == (m, t)]
    n = [r["tps"] for r in rows if r["label"] == "new" and (r["model"], r["test"]) == (m, t)]
    mo, mn = statistics.median(o), statistics.median(n)
    print(f"| {m} | {t} | {' / '.join(f'{x:.1f}' for x in o)} | {' / '.join(f'{x:.1f}' for x in n)} | {mo:.1f} | {mn:.1f} | {mn / mo:.3f} |")
PY
rm -f "$out"
