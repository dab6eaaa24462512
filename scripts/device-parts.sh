#!/usr/bin/env bash
# Carries a file larger than one device call may carry (64 MiB with the working tree: the default model's GGUF is
# ~250 MB) in parts, over back-to-back calls to one warm device machine, which keeps /tmp between calls while it
# is warm (the next call must come before its idle release, ~30 s).
#
# Here:   bash scripts/device-parts.sh split FILE [MiB]     # → .device-parts/1 .. N (git-ignored), 48 MiB each
# There:  call k (carry [".device-parts/k"]):   bash scripts/device-parts.sh stash k
#         the last call, after its stash:        bash scripts/device-parts.sh join   # → /tmp/kt-parts/<FILE's name>
# `join` checks the SHA-256 recorded by `split` and prints the file's path; `status` says which parts are there.
set -euo pipefail
cd "$(dirname "$0")/.."
parts=.device-parts
there=/tmp/kt-parts
case "${1:-}" in
split)
  file=${2:?file to split}; mib=${3:-48}
  rm -rf "$parts"; mkdir -p "$parts/tmp"
  split -b "${mib}M" -d -a 3 "$file" "$parts/tmp/part."
  n=0
  for p in "$parts"/tmp/part.*; do
    n=$((n + 1)); mkdir -p "$parts/$n"; mv "$p" "$parts/$n/"
  done
  rmdir "$parts/tmp"
  { echo "name=$(basename "$file")"; echo "parts=$n"; echo "sha256=$(sha256sum "$file" | cut -d' ' -f1)"; } > "$parts/1/manifest"
  echo "$n parts of $(basename "$file") in $parts/1 .. $parts/$n: one device call each, carry [\"$parts/k\"]"
  ;;
stash)
  k=${2:?part number}
  mkdir -p "$there"
  cp "$parts/$k"/* "$there/"
  echo "stashed part $k: $(ls "$there" | grep -c '^part\.') part(s) in $there"
  ;;
status)
  ls -la "$there" 2>/dev/null || echo "no parts here"
  ;;
join)
  # shellcheck disable=SC1091
  . "$there/manifest"
  have=$(ls "$there" | grep -c '^part\.' || true)
  [ "$have" = "$parts" ] || { echo "have $have of $parts parts" >&2; exit 1; }
  cat "$there"/part.* > "$there/$name"
  [ "$(sha256sum "$there/$name" | cut -d' ' -f1)" = "$sha256" ] || { echo "$name: SHA-256 mismatch" >&2; exit 1; }
  rm -f "$there"/part.*
  echo "$there/$name"
  ;;
*)
  sed -n 2,11p "$0"; exit 2 ;;
esac
