#!/usr/bin/env bash
# The whole check on the GPU machine, in one command (it has no Swift toolchain: build here first).
#
# Here:   swift build -c release --static-swift-stdlib && mkdir -p .device-carry \
#           && strip -o .device-carry/ktransformers .build/release/ktransformers && xz -f -6 .device-carry/ktransformers
#         (.device-carry is ignored through .git/info/exclude; carry it with the device tool)
# There:  bash scripts/device-check.sh          # results under $OUT (or ./device-out)
#
# Runs: the CUDA probe (driver, NVRTC, a test kernel; fails if CUDA is not usable), then the backend conformance
# checks of every available backend at each CPU kernel level. Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-device-out}
mkdir -p "$out"
bin=.device-carry/ktransformers
if [ ! -x "$bin" ]; then xz -dkf "$bin.xz"; chmod +x "$bin"; fi
status=0
"$bin" devices --require-cuda 2>&1 | tee "$out/devices.txt" || status=1
"$bin" devices --json > "$out/devices.json" 2>&1 || true
for level in avx512 avx2 scalar; do
  if KTRANSFORMERS_SIMD=$level "$bin" devices --conformance > "$out/conformance-$level.txt" 2>&1; then
    echo "conformance at $level: all checks pass"
  else
    echo "conformance at $level: FAILED"; grep -A10 -E "^conformance .*failures" "$out/conformance-$level.txt" || true
    status=1
  fi
done
exit $status
