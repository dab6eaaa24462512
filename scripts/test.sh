#!/usr/bin/env bash
# Runs the whole test suite: installs the default model when missing (the end-to-end tests need it), then
# `swift test`. Extra arguments go to `swift test` (e.g. `scripts/test.sh --filter QuantTests`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/default-model.sh >/dev/null
exec swift test "$@"
