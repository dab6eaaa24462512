#!/usr/bin/env bash
# Decode speed with and without a JSON schema (structured output), side by side in one sitting: starts
# `ktransformers serve` on the default model and runs `bench serve` on the chat endpoint at temperature 1 and 0,
# 1 and 4 concurrent clients, plain and with --response-format (a nested schema of objects, arrays, strings,
# integers). Prints mean TPOT (ms per output token after the first) for each and the ratio.
# Usage: scripts/bench-structured.sh [BIN]   (default .build/release/ktransformers)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-.build/release/ktransformers}
PORT=${PORT:-18123}
FORMAT=$(mktemp)
cat > "$FORMAT" <<'JSON'
{"type": "json_schema", "json_schema": {"name": "list", "schema": {"type": "object", "properties": {
  "title": {"type": "string"},
  "items": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"},
    "count": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["name", "count"]}}},
  "required": ["title", "items"]}}}
JSON
"$BIN" serve --port "$PORT" --max-batch-size 8 > /tmp/bench-structured-serve.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; rm -f "$FORMAT"' EXIT
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.5; done
tpot() {  # concurrency temperature [format]
  local extra=()
  [ -n "${3:-}" ] && extra=(--response-format "$3")
  "$BIN" bench serve --url "http://127.0.0.1:$PORT" --endpoint chat --concurrency "$1" --requests $((6 * $1)) \
    --input-len 64 --output-len 128 --temperature "$2" --json "${extra[@]}" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["failed"] == 0, d["errors"]; print("%.2f %d" % (d["tpot"]["mean_ms"], d["output_tokens"]))'
}
# Warm-up: builds the vocabulary trie once.
tpot 1 0 "$FORMAT" >/dev/null
printf "%-12s %-11s %12s %12s %14s %14s %8s\n" temperature concurrency "plain ms" "schema ms" "plain tokens" "schema tokens" ratio
for t in 1 0; do
  for c in 1 4; do
    p=$(tpot "$c" "$t"); s=$(tpot "$c" "$t" "$FORMAT")
    python3 - "$t" "$c" "$p" "$s" <<'PY'
import sys
t, c, p, s = sys.argv[1], sys.argv[2], float(sys.argv[3].split()[0]), float(sys.argv[4].split()[0])
# ratio: decode speed with the schema relative to without (plain TPOT / schema TPOT).
pt, st = sys.argv[3].split()[1], sys.argv[4].split()[1]
print("%-12s %-11s %12.2f %12.2f %14s %14s %8.3f" % (t, c, p, s, pt, st, p / s))
PY
  done
done
