#!/usr/bin/env bash
# Runs the whole test suite: installs the default model when missing (the end-to-end tests need it), runs
# `swift test`, then the server's end-to-end tests with the official `openai` Python client (scripts/e2e.sh).
# Extra arguments go to `swift test` (e.g. `scripts/test.sh --filter QuantTests`); with arguments, the
# Python end-to-end tests are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/default-model.sh >/dev/null
# The CUDA backend's tests (conformance, every tiny architecture, batching) run on the real driver where there is a
# GPU, else on the CUDA emulator (Tests/CUDAEmulator, needs a C++ compiler); without either they are skipped.
if [ -z "${KTRANSFORMERS_CUDA_DRIVER:-}" ] && ! ldconfig -p 2>/dev/null | grep -q 'libcuda.so.1'; then
  if emu=$(scripts/build-cuda-emulator.sh); then
    export KTRANSFORMERS_CUDA_DRIVER=$emu KTRANSFORMERS_NVRTC=$emu KTRANSFORMERS_CUBLAS=$emu
    echo "CUDA backend tests: on the CUDA emulator ($emu)"
  else
    echo "CUDA backend tests: no GPU and no C++ compiler for the emulator: skipped"
  fi
fi
swift test "$@"
if [ $# -eq 0 ]; then
  scripts/e2e.sh
fi
