#!/usr/bin/env bash
# End-to-end tests of `ktransformers serve` with the official `openai` and `ollama` Python packages (Tests/e2e); /metrics is
# parsed with the official Prometheus client's parser.
# Installs the Python dependencies and the default model when missing, builds the debug binary, runs pytest.
# Extra arguments go to pytest (e.g. `scripts/e2e.sh -k soak`). Set KTRANSFORMERS_BIN to test another binary.
# All traffic goes to 127.0.0.1; takes about 2-4 minutes on 2 cores after the build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3=${PYTHON:-python3}
if ! "$python3" -c 'import openai, pytest, prometheus_client, websocket, sglang_router, ollama, jsonschema' 2>/dev/null; then
  "$python3" -m pip install --quiet --disable-pip-version-check openai pytest prometheus-client websocket-client \
    sglang-router ollama jsonschema >&2
fi
# The web page test drives a real browser: Debian's chromium, installed where we may (root with apt); without it
# that test is skipped with a message.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -q && apt-get install -y -q chromium) >/dev/null 2>&1 || echo "could not install chromium: the web page test will be skipped" >&2
fi
scripts/default-model.sh >/dev/null
if [ -z "${KTRANSFORMERS_BIN:-}" ]; then
  swift build --product ktransformers
  export KTRANSFORMERS_BIN="$PWD/.build/debug/ktransformers"
fi
exec "$python3" -m pytest -q Tests/e2e "$@"
