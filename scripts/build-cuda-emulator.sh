#!/usr/bin/env bash
# Builds the CUDA emulator (Tests/CUDAEmulator): a CPU stand-in for libcuda and NVRTC that lets the CUDA backend's
# kernels and code paths run on machines without a GPU. Prints the library's path. Use it with
#   KTRANSFORMERS_CUDA_DRIVER=$(scripts/build-cuda-emulator.sh) KTRANSFORMERS_NVRTC=<same path> ...
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/.build/cuda-emulator
mkdir -p "$out"
lib=$out/libcuda-emu.so
src=Tests/CUDAEmulator/cuda_emu.cpp
if [ ! -f "$lib" ] || [ "$src" -nt "$lib" ] || [ Tests/CUDAEmulator/emu_prelude.h -nt "$lib" ] || [ Tests/CUDAEmulator/emu_half.h -nt "$lib" ]; then
  ${CXX:-g++} -std=c++17 -O2 -shared -fPIC -DEMU_PRELUDE="\"$root/Tests/CUDAEmulator/emu_prelude.h\"" "$src" -o "$lib.tmp" -ldl
  mv "$lib.tmp" "$lib"
fi
echo "$lib"
