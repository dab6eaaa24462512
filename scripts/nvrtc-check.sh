#!/usr/bin/env bash
# Compiles the CUDA backend's kernels for a GPU architecture with NVRTC, as the backend does at run time (the
# sources in order, C++17), without a GPU or a CUDA install: NVRTC and ptxas come from NVIDIA's PyPI wheels
# (downloaded once into .build/nvrtc). Prints compile errors, and with -v each kernel's registers, stack and spills.
#   bash scripts/nvrtc-check.sh [-v] [sm_90]
set -euo pipefail
cd "$(dirname "$0")/.."
verbose=; [ "${1:-}" = -v ] && { verbose=1; shift; }
arch=${1:-sm_90}
dir=.build/nvrtc
if [ ! -f "$dir/nvidia/cuda_nvrtc/lib/libnvrtc.so.12" ]; then
  mkdir -p "$dir/wheels"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 -d "$dir/wheels" nvidia-cuda-nvrtc-cu12
  (cd "$dir" && for w in wheels/*.whl; do python3 -m zipfile -e "$w" .; done)
fi
LD_LIBRARY_PATH=$dir/nvidia/cuda_nvrtc/lib python3 - "$arch" "$verbose" <<'PY'
import ctypes, re, sys
arch, verbose = sys.argv[1], sys.argv[2]
lib = ctypes.CDLL(".build/nvrtc/nvidia/cuda_nvrtc/lib/libnvrtc.so.12")
# The order of CUDAKernels.source.
files = ["common.cuh", "quant.cuh", "matvec.cu", "activations.cu", "ops.cu", "attention.cu", "moe.cu", "mmq.cu"]
src = "\n".join(open("Sources/BackendCUDA/Kernels/" + f).read() for f in files).encode()
prog = ctypes.c_void_p()
assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"ktransformers_kernels.cu", 0, None, None) == 0
opts = [b"--gpu-architecture=" + arch.encode(), b"--std=c++17", b"-default-device", b"--ptxas-options=-v"]
r = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
n = ctypes.c_size_t()
lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
buf = ctypes.create_string_buffer(n.value)
lib.nvrtcGetProgramLog(prog, buf)
log = buf.value.decode(errors="replace")
kernel, rows = None, []
for line in log.splitlines():
    m = re.search(r"Compiling entry function '(\w+)'", line)
    if m:
        kernel = m.group(1)
    elif "error" in line or ("warning" in line and "kt_smem_raw" not in line and "Remark" not in line):
        print(line)
    elif kernel and "Used" in line:
        rows.append((kernel, line.split(":", 1)[1].strip()))
    elif kernel and "spill" in line and not re.search(r"\b0 bytes spill stores, 0 bytes spill loads", line):
        print(f"{kernel}: {line.split(':', 1)[-1].strip()}")
if verbose:
    for k, info in rows:
        print(f"{k}: {info}")
print(f"{arch}: {len(rows)} kernels" + ("" if r == 0 else f", NVRTC result {r} (failed)"))
sys.exit(0 if r == 0 else 1)
PY
