#!/usr/bin/env bash
# Runs the whole test suite: installs the default model when missing (the end-to-end tests need it), runs
# `swift test`, then the server's end-to-end tests with the official `openai` Python client (scripts/e2e.sh).
# Extra arguments go to `swift test` (e.g. `scripts/test.sh --filter QuantTests`); with arguments, the
# Python end-to-end tests are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/default-model.sh >/dev/null
swift test "$@"
if [ $# -eq 0 ]; then
  scripts/e2e.sh
fi
