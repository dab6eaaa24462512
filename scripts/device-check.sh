#!/usr/bin/env bash
# The whole GPU check on the GPU machine, in one command (it has no Swift toolchain: build here first).
#
# Here:   swift build -c release --static-swift-stdlib && mkdir -p .device-carry \
#           && strip -o .device-carry/ktransformers .build/release/ktransformers && xz -f -6 .device-carry/ktransformers
#         (.device-carry and .baseline are ignored through .git/info/exclude; carry them with the device tool)
#         Optional, in .baseline/: llama.cpp (../shared/tools/llamacpp-baseline.sh prepare .baseline/llama.cpp) for
#         the side-by-side figures and for gguf-py; make_random_gguf.py (../shared/tools) for the speed models;
#         gemma-3-270m-q4_k_m.gguf (the default model, for the reference comparison).
# There:  bash scripts/device-check.sh [stage ...]    # results under $OUT (or ./device-out); BIN=path overrides the binary
#
# Stages (all by default): probe, conformance, tiny, gemma, bench, baseline, hybrid; and, not in the default set,
# `tp` (tensor parallelism over logical devices of GPU 0: tiny references (all but MLA), batched = solo, the default model, NCCL's
# probe, Llama-3-8B-shaped speed against one device; TP_PP / TP_TG size the bench),
# `patterns` (scripts/microbench/matvec-patterns.cu: the batch-1 matvec's read bandwidth by access pattern), `ncu` (every kernel of a decode step timed alone by Nsight Compute: the step's kernel sum against its wall time
# with graphs, issue 12's item 5; NCU_BATCH (batch sizes, e.g. "1 32"), NCU_STEPS, NCU_MODELS (presets, default llama3-8b;
# others run all on the GPU); into $OUT/ncu-step[-<preset>][-b<N>].md;
# NCU_DETAIL="kernel:batch ..." adds Nsight Compute's sections of single kernels), `profile` (where the GPU time goes, bench --profile-kernels, on the Llama-3-8B shape, into $OUT/profile.md) and
# `serve` (serve on cuda + bench serve with 1, 8, 32 clients) and `deepseek` (a DeepSeek-V3-shaped model of
# DS_LAYERS=4 layers written by scripts/make_random_deepseek.py: hybrid and all-GPU logits against the CPU's, the
# routing spread, speed beside llama.cpp; ~20 GB on disk) and `serve-hybrid` (the Qwen3-30B-A3B shape, experts on
# the CPU, served to 1, 4, 8 clients) and `layerwise` (a traced layerwise prefill, stacks if it hangs) and `prefill` (the hybrid prefill at pp512 / pp4096,
# under PREFILL_VARS too, chunks of PREFILL_CHUNKS with the layerwise path on and off, llama.cpp -lm none beside it) and `moe-scaling` (the CPU expert kernel at 1 to all
# threads, SCALING_THREADS / SCALING_VARS, and hybrid / CPU-only decode by thread count). MOE=1 adds the Qwen3-30B-A3B shape all on the GPU to
# bench and baseline; HYBRID_SHORT=1 runs only pp512/tg of the hybrid stage; HYBRID_VARS="A=1 B=0,C=2" adds hybrid
# decode rows under those settings (commas join several into one row); HYBRID_AB=1 adds hybrid decode rows
# under each host-wait setting (KTRANSFORMERS_CUDA_SYNC, KTRANSFORMERS_POOL_SPINS, one core free) and with expert deferral; KERNEL_AB=1 adds bench rows with the streaming kernels off or capped; BATCH_AB_VARS="A=0 B=1,C=2" adds
# 8- and 32-sequence decode rows under those switches; DECODE_AB=1 batch-1
# decode rows under the one-token kernel switches (DECODE_AB_VARS picks them, DECODE_AB_MOE_VARS the MoE model's if they differ;
# commas join switches into one row); BENCH_SHORT=1 keeps only the batch-1 decode rows of bench; CPU_BASELINE=1
# also builds llama.cpp for the CPU (its hybrid-stage row). The gemma stage takes GEMMA_MODEL, or the default model
# carried in .baseline/ or assembled in /tmp/kt-parts by scripts/device-parts.sh. Each writes its lines to
# $OUT/summary.md and its details to $OUT/log.txt; exits non-zero if a correctness stage fails.
# SMOKE=1: a dry run of the whole flow on one-layer models with tiny sizes (e.g. here, on the CUDA emulator:
#   KTRANSFORMERS_CUDA_DRIVER=$(scripts/build-cuda-emulator.sh) KTRANSFORMERS_NVRTC=<same> SMOKE=1 \
#     bash scripts/device-check.sh probe tiny bench hybrid), so that a mistake in this script does not cost GPU time.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-device-out}
mkdir -p "$out"
summary=$out/summary.md
log=$out/log.txt
bin=${BIN:-.device-carry/ktransformers}
if [ ! -x "$bin" ]; then xz -dkf "$bin.xz"; chmod +x "$bin"; fi
stages=${*:-probe conformance tiny gemma bench baseline hybrid}
threads=$(nproc)
status=0
say() { echo "$*" | tee -a "$summary"; }
has() { [[ " $stages " == *" $1 "* ]]; }
export KTRANSFORMERS_CACHE_DIR=${KTRANSFORMERS_CACHE_DIR:-/tmp/kt-cache}
# The llama.cpp CUDA baseline builds in the background (at low priority) while the GPU-bound stages run; the
# baseline stage waits for it, and the CPU-heavy hybrid stage runs after that.
build_pid=
# BUILD_LLAMACPP=1 builds it without the baseline stage too (for the hybrid and moe-scaling stages' llama.cpp rows);
# CPU_BASELINE=1 also builds its CPU version (after the CUDA one, in the same background job).
if { has baseline || [ -n "${BUILD_LLAMACPP:-}" ]; } && [ -d .baseline/llama.cpp ] && [ -z "${SMOKE:-}" ] \
   && { [ ! -x .baseline/llama.cpp/build-cuda/bin/llama-bench ] \
        || { [ -n "${CPU_BASELINE:-}" ] && [ ! -x .baseline/llama.cpp/build/bin/llama-bench ]; }; }; then
  (
    [ -x .baseline/llama.cpp/build-cuda/bin/llama-bench ] || nice -n 19 bash .baseline/llamacpp-baseline.sh cuda .baseline/llama.cpp \
      || { echo "llama.cpp CUDA build FAILED"; exit 1; }
    if [ -n "${CPU_BASELINE:-}" ] && [ ! -x .baseline/llama.cpp/build/bin/llama-bench ]; then
      nice -n 19 bash .baseline/llamacpp-baseline.sh cpu .baseline/llama.cpp || { echo "llama.cpp CPU build FAILED"; exit 2; }
    fi
  ) > "$out/llamacpp-build.log" 2>&1 &
  build_pid=$!
fi
# CONFORMANCE_LEVELS: the CPU kernel levels the conformance stage runs at (all three by default).
levels=${CONFORMANCE_LEVELS:-avx512 avx2 scalar}
if [ -n "${SMOKE:-}" ]; then
  pp=8; tg=2; reps=1; long=16; tgb=2; smoke=(--layers 1 --vocab 4096); sfx=-smoke
else
  pp=512; tg=128; reps=3; long=4096; tgb=64; smoke=(); sfx=
fi

if has probe; then
  say "## probe"
  "$bin" devices --require-cuda >>"$log" 2>&1 && say "cuda: usable ($(grep -m1 '^gpu 0' "$log"))" || { say "cuda: NOT usable"; status=1; }
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader >>"$summary" 2>/dev/null || true
  # The host: cores, threads per core, caches, flags (for reading the CPU-side figures).
  lscpu >>"$log" 2>&1 || true
  say "host: $(lscpu 2>/dev/null | grep -E '^(Model name|Socket|Core|Thread|NUMA node\(s\))' | tr -s ' ' | tr '\n' ';')" \
      "amx: $(grep -q amx_int8 /proc/cpuinfo && echo yes || echo no); $(free -g | awk '/Mem:/ {print $2 " GiB"}')" 
fi

if has conformance; then
  say "## conformance"
  for level in $levels; do
    if KTRANSFORMERS_SIMD=$level "$bin" devices --conformance > "$out/conformance-$level.txt" 2>&1; then
      say "conformance at cpu level $level (cpu and cuda backends): all checks pass"
    else
      say "conformance at $level: FAILED"; grep -E "failures|FAIL|error" "$out/conformance-$level.txt" | head -20 | tee -a "$summary"
      status=1
    fi
    [ "$level" = avx512 ] && grep "conformance \[cuda\]" "$out/conformance-$level.txt" | tee -a "$summary"
    [ "$level" = avx512 ] || rm -f "$out/conformance-$level.txt"
  done
fi

if has tiny; then
  say "## tiny models vs PyTorch references"
  say "(hybrid placement: MoE models' routed experts on the CPU, the default on cuda)"
  python3 scripts/check-tiny-models.py "$bin" --device cuda >>"$summary" 2>&1 || status=1
  say "(all on the GPU: --n-cpu-moe 0)"
  python3 scripts/check-tiny-models.py "$bin" --device cuda -- --n-cpu-moe 0 >>"$summary" 2>&1 || status=1
  # Batched greedy decoding equals solo decoding on the GPU with --batch-invariant, also with prompts of ~50 tokens
  # (alone each stays under the f16 GEMM / flash threshold of 128 tokens a step, batched the first step holds them
  # all); by default those prompts' batched prefill takes the f16 paths, whose rounding flips near-ties of this
  # random model: that count is reported, not checked.
  for words in 0 40; do
    python3 scripts/check-batched.py "$bin" --device cuda --prompt-words $words --server-args=--batch-invariant \
      ${SMOKE:+--clients 2 --tokens 3} >>"$summary" 2>&1 || status=1
  done
  # Without the flag one-token decode steps also take their own kernels (the f32-activation down projection on the
  # FP32 cores), so a request decoded alone may differ in the last bits from the same request batched: reported.
  for words in 0 40; do
    python3 scripts/check-batched.py "$bin" --device cuda --prompt-words $words --report-only ${SMOKE:+--clients 2 --tokens 3} >>"$summary" 2>&1
  done
fi

if has gemma; then
  # The default model: GEMMA_MODEL, or carried in .baseline/, or assembled from parts by scripts/device-parts.sh.
  model=${GEMMA_MODEL:-.baseline/gemma-3-270m-q4_k_m.gguf}
  [ -f "$model" ] || [ ! -f /tmp/kt-parts/gemma-3-270m-q4_k_m.gguf ] || model=/tmp/kt-parts/gemma-3-270m-q4_k_m.gguf
  if [ -f "$model" ]; then
    say "## default model, teacher-forced vs float64 (mean |Δlogprob| bound 0.12; CPU 0.065, llama.cpp 0.104)"
    for dev in cuda cpu; do
      r=$("$bin" logits --model "$model" --device $dev --reference Tests/EndToEndTests/Fixtures/ref_f64.jsonl 2>>"$log")
      say "$dev: $r"
    done
    r=$("$bin" logits --model "$model" --device cuda --batch-invariant --reference Tests/EndToEndTests/Fixtures/ref_f64.jsonl 2>>"$log")
    say "cuda --batch-invariant: $r"
    python3 - "$summary" <<'PY' || status=1
import json, sys
lines = [l for l in open(sys.argv[1]) if l.startswith("cuda: {")]
r = json.loads(lines[-1][6:])
ok = r["mean_abs_logprob_diff"] <= 0.12 and r["decisive_argmax_agree"] == r["decisive_steps"]
print("gemma on cuda:", "ok" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY
  else
    say "## default model: $model not carried, skipped"
  fi
fi

gguf_py=.baseline/gguf-py; [ -d "$gguf_py/gguf" ] || gguf_py=.baseline/llama.cpp/gguf-py
make_model() {  # preset out
  [ -f "$2" ] || python3 .baseline/make_random_gguf.py --preset "$1" --out "$2" --gguf-py "$gguf_py" "${smoke[@]}" >>"$log" 2>&1
}

if has bench; then
  say "## speed (ours), $(date -u +%FT%TZ)"
  m=/tmp/llama3-8b$sfx.gguf
  make_model llama3-8b $m
  if [ -n "${BENCH_SHORT:-}" ]; then
    # BENCH_SHORT=1: batch-1 decode alone (the A/B rows' baseline), no prefill, graphs-off or batched rows.
    "$bin" bench --model $m --device cuda -p 0 -n $tg -r $reps 2>>"$log" | tee -a "$summary"
  else
  "$bin" bench --model $m --device cuda -p $pp -n $tg -r $reps 2>>"$log" | tee -a "$summary"
  "$bin" bench --model $m --device cuda -p 0 -n $tg -r $reps --no-cuda-graphs 2>>"$log" | tail -1 | sed 's/$/ (CUDA graphs off)/' | tee -a "$summary"
  for b in 8 32; do
    "$bin" bench --model $m --device cuda -p 0 -n $tgb -b $b -r $reps 2>>"$log" | tail -1 | tee -a "$summary"
  done
  fi
  # BATCH_AB_VARS="A=0 B=1,C=2": batched decode rows (8 and 32 sequences) under those switches (commas join several).
  for v in ${BATCH_AB_VARS:-}; do
    for b in 8 32; do
      env ${v//,/ } "$bin" bench --model $m --device cuda -p 0 -n $tgb -b $b -r $reps 2>>"$log" | tail -1 | sed "s/\$/ ($v)/" | tee -a "$summary"
    done
  done
  if [ -n "${KERNEL_AB:-}" ]; then
    # The kernel choices against each other (same bits, different speed): the streaming kernels off; prefill on the
    # 64x64 int8 block tiles instead of the streaming ones; prefill's tf32 matmul streaming instead of block-tiled.
    kab() { env "$@" "$bin" bench --model $m --device cuda -p $pp -n $tg -r 1 2>>"$log" | tail -2 | sed "s/\$/ ($*)/" | tee -a "$summary"; }
    kab KTRANSFORMERS_CUDA_STREAM_MATVEC=0
    kab KTRANSFORMERS_CUDA_STREAM_TILES_MAX=63
    kab KTRANSFORMERS_CUDA_MMF_STREAM_MAX=100000
    kab KTRANSFORMERS_CUDA_GEMM_MIN=0
    kab KTRANSFORMERS_CUDA_FLASH_MIN=0
    "$bin" bench --model $m --device cuda -p 2048 -n 0 -r 1 --chunk-size 2048 2>>"$log" | tail -1 | tee -a "$summary"
    KTRANSFORMERS_CUDA_FLASH_MIN=0 "$bin" bench --model $m --device cuda -p 2048 -n 0 -r 1 --chunk-size 2048 2>>"$log" | tail -1 \
      | sed 's/$/ (KTRANSFORMERS_CUDA_FLASH_MIN=0)/' | tee -a "$summary"
    # Where prefill's cuBLAS GEMMs start to pay (their f16 decode of the weights costs the same for any step).
    for p in 32 64 128 256; do
      for g in 1 0; do
        KTRANSFORMERS_CUDA_GEMM_MIN=$g "$bin" bench --model $m --device cuda -p $p -n 0 -r 2 2>>"$log" | tail -1 \
          | sed "s/\$/ (KTRANSFORMERS_CUDA_GEMM_MIN=$g)/" | tee -a "$summary"
      done
    done
    for b in 8 32; do
      KTRANSFORMERS_CUDA_STREAM_MATVEC=0 "$bin" bench --model $m --device cuda -p 0 -n $tgb -b $b -r 1 2>>"$log" | tail -1 \
        | sed 's/$/ (KTRANSFORMERS_CUDA_STREAM_MATVEC=0)/' | tee -a "$summary"
    done
  fi
  if [ -n "${DECODE_AB:-}" ]; then
    # Batch-1 decode under the kernel switches (same bits, different speed): the general kernels instead of the
    # one-token forms, and the f32-activation down projection's general kernel alone.
    kdec() { env "$@" "$bin" bench --model $m --device cuda -p 0 -n $tg -r 2 2>>"$log" | tail -1 | sed "s/\$/ ($*)/" | tee -a "$summary"; }
    # DECODE_AB_VARS: the switches (space-separated; commas join several into one row), default all of them.
    for v in ${DECODE_AB_VARS:-KTRANSFORMERS_CUDA_PDL=0 KTRANSFORMERS_CUDA_MVP=0 KTRANSFORMERS_CUDA_MV1=0 KTRANSFORMERS_CUDA_MMF_ONE=0 KTRANSFORMERS_CUDA_ATTENTION_GROUP_MIN=1 KTRANSFORMERS_CUDA_F32_ONE=0 KTRANSFORMERS_CUDA_F32_ONE=2 KTRANSFORMERS_CUDA_F32_ONE_LB=1 KTRANSFORMERS_CUDA_MV1=2}; do
      kdec ${v//,/ }
    done
  fi
  if [ -n "${MOE:-}" ]; then
    make_model qwen3-30b-a3b /tmp/qwen3-30b-a3b$sfx.gguf
    "$bin" bench --model /tmp/qwen3-30b-a3b$sfx.gguf --device cuda --n-cpu-moe 0 -p $([ -n "${BENCH_SHORT:-}" ] && echo 0 || echo $pp) -n $tg -r $reps 2>>"$log" | tail -$([ -n "${BENCH_SHORT:-}" ] && echo 1 || echo 2) | sed 's/$/ (all on the GPU)/' | tee -a "$summary"
    if [ -n "${DECODE_AB:-}" ]; then
      # DECODE_AB_MOE_VARS: this model's switches, when they differ from the dense model's.
      for v in ${DECODE_AB_MOE_VARS:-${DECODE_AB_VARS:-KTRANSFORMERS_CUDA_PDL=0 KTRANSFORMERS_CUDA_MVP=0 KTRANSFORMERS_CUDA_F32_ONE=0 KTRANSFORMERS_CUDA_F32_ONE=2 KTRANSFORMERS_CUDA_F32_ONE_LB=1 KTRANSFORMERS_CUDA_MV1=2 KTRANSFORMERS_CUDA_MVS_EXPERTS=0 KTRANSFORMERS_CUDA_F32_ONE_ROWS=2}}; do
        env ${v//,/ } "$bin" bench --model /tmp/qwen3-30b-a3b$sfx.gguf --device cuda --n-cpu-moe 0 -p 0 -n $tg -r 2 2>>"$log" | tail -1 \
          | sed "s/\$/ (all on the GPU, $v)/" | tee -a "$summary"
      done
    fi
  fi
fi

if has baseline && [ -d .baseline/llama.cpp ] && [ -z "${SMOKE:-}" ]; then
  say "## llama.cpp (same files, same sitting)"
  command -v cmake >/dev/null || say "no cmake here: llama.cpp cannot be built"
  if [ -n "$build_pid" ]; then wait "$build_pid" || { say "llama.cpp build FAILED: $(grep FAILED "$out/llamacpp-build.log")"; tail -20 "$out/llamacpp-build.log" >> "$log"; }; build_pid=; fi
  if [ ! -x .baseline/llama.cpp/build-cuda/bin/llama-bench ]; then
    bash .baseline/llamacpp-baseline.sh cuda .baseline/llama.cpp >>"$log" 2>&1 || say "llama.cpp CUDA build FAILED"
  fi
  lb=.baseline/llama.cpp/build-cuda/bin
  make_model llama3-8b /tmp/llama3-8b.gguf
  "$lb/llama-bench" -m /tmp/llama3-8b.gguf -ngl 99 -fa 1 -p 512 -n 128 -r 3 2>>"$log" | tee -a "$summary"
  "$lb/llama-batched-bench" -m /tmp/llama3-8b.gguf -ngl 99 -fa 1 -c 8192 -npp 0 -ntg 64 -npl 1,8,32 2>>"$log" | grep -E "^\|" | tee -a "$summary"
  if [ -n "${MOE:-}" ]; then
    make_model qwen3-30b-a3b /tmp/qwen3-30b-a3b.gguf
    "$lb/llama-bench" -m /tmp/qwen3-30b-a3b.gguf -ngl 99 -fa 1 -p 512 -n 128 -r 3 2>>"$log" | tee -a "$summary"
  fi
fi
# Serves model $1 (the rest of the serve flags in SERVE_FLAGS) on port $2, waits up to $3 s for /health, then runs
# bench serve with each client count after $4 ($5 output tokens each), one summary line per count; the server's log
# and each report go to $out/$6*.
serve_clients() {
  local m=$1 port=$2 wait=$3 counts=$4 tokens=$5 name=$6 up= spid c i
  # shellcheck disable=SC2086
  "$bin" serve --model "$m" --port "$port" $SERVE_FLAGS >"$out/$name.log" 2>&1 &
  spid=$!
  for i in $(seq 1 "$wait"); do
    python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=2)" 2>/dev/null \
      && { up=1; break; }
    sleep 1
  done
  [ -n "$up" ] || { say "serve did not become healthy in $wait s (see $name.log)"; status=1; }
  for c in $counts; do
    [ -n "$up" ] || break
    "$bin" bench serve --url http://127.0.0.1:$port --concurrency $c --requests $((c * 2)) --input-len ${SERVE_INPUT:-128} \
      --output-len "$tokens" > "$out/$name-c$c.txt" 2>>"$log"
    say "clients $c: $(grep -E 'Output token throughput|Failed requests' "$out/$name-c$c.txt" | tr -s ' ' | tr '\n' ';')" \
        "TPOT p50 $(grep -A2 'Time per Output Token' "$out/$name-c$c.txt" | grep p50 | tr -s ' ' | cut -d' ' -f4) ms"
  done
  kill $spid 2>/dev/null; wait $spid 2>/dev/null
}

if has tp; then
  # Issue 18 on one GPU: tensor parallelism over logical devices of GPU 0 (each shard a backend, stream and thread of
  # its own, summing through device copies): the tiny models but MLA over 2 and 4 shards against their references,
  # batched = solo, the default model teacher-forced, NCCL's probe, and the cost of the split against one device.
  say "## tensor parallelism on logical devices of one GPU, $(date -u +%FT%TZ)"
  "$bin" devices 2>>"$log" | grep nccl | tee -a "$summary"
  for devs in cuda:0,cuda:0 cuda:0,cuda:0,cuda:0,cuda:0; do
    python3 scripts/check-tiny-models.py "$bin" --device cuda --skip 'deepseek|qwen3moe-q8_0' -- --devices $devs >>"$summary" 2>&1 || status=1
  done
  python3 scripts/check-batched.py "$bin" --device cuda --server-args="--devices cuda:0,cuda:0 --batch-invariant" \
    ${SMOKE:+--clients 2 --tokens 3} >>"$summary" 2>&1 || status=1
  model=${GEMMA_MODEL:-.baseline/gemma-3-270m-q4_k_m.gguf}
  [ -f "$model" ] || [ ! -f /tmp/kt-parts/gemma-3-270m-q4_k_m.gguf ] || model=/tmp/kt-parts/gemma-3-270m-q4_k_m.gguf
  if [ -f "$model" ]; then
    r=$("$bin" logits --model "$model" --devices cuda:0,cuda:0 --reference Tests/EndToEndTests/Fixtures/ref_f64.jsonl 2>>"$log")
    say "default model teacher-forced over cuda:0,cuda:0: $r"
  fi
  m=/tmp/llama3-8b$sfx.gguf
  make_model llama3-8b $m
  for flags in "--device cuda" "--device cuda --no-cuda-graphs" "--devices cuda:0,cuda:0"; do
    "$bin" bench --model $m $flags -p ${TP_PP:-512} -n ${TP_TG:-64} -r 2 2>>"$log" | tail -2 | sed "s/\$/ ($flags)/" | tee -a "$summary"
  done
fi

if has serve; then
  # Issue 12, acceptance 4: serving on the GPU, 1, 8 and 32 concurrent streaming clients (bench serve), greedy.
  say "## serving (Llama-3-8B shape on cuda), $(date -u +%FT%TZ)"
  m=/tmp/llama3-8b$sfx.gguf
  make_model llama3-8b $m
  SERVE_FLAGS="--device ${SERVE_DEVICE:-cuda} --max-batch-size 32 --ctx-size 1024 --kv-cache-tokens 40000" \
    serve_clients $m 18123 120 "1 8 32" ${SERVE_TOKENS:-128} serve
fi

# The CPU-heavy stages wait for a llama.cpp build still running in the background (it would take their cores).
wait_build() { if [ -n "$build_pid" ]; then wait "$build_pid" || say "llama.cpp build FAILED: $(grep FAILED "$out/llamacpp-build.log")"; build_pid=; fi; }

if has hybrid; then
  wait_build
  # Issue 13: Qwen3-30B-A3B-shaped, Q4_K, all threads: hybrid (experts on the CPU) against llama.cpp's
  # -ngl 99 -ot exps=CPU, same file, same sitting; plus our CPU-only and all-on-GPU rows.
  say "## hybrid MoE (Qwen3-30B-A3B shape), $(date -u +%FT%TZ), $threads threads"
  m=/tmp/qwen3-30b-a3b$sfx.gguf
  make_model qwen3-30b-a3b $m
  "$bin" bench --model $m --device cuda -t $threads -p $pp -n $tg -r $reps 2>>"$log" | tail -2 | sed 's/$/ (hybrid)/' | tee -a "$summary"
  # HYBRID_VARS: decode rows under other settings (space-separated; commas join several into one row).
  for v in ${HYBRID_VARS:-}; do
    env ${v//,/ } "$bin" bench --model $m --device cuda -t $threads -p 0 -n $tg -r $reps 2>>"$log" | tail -1 \
      | sed "s/\$/ (hybrid, $v)/" | tee -a "$summary"
  done
  if [ -n "${HYBRID_AB:-}" ]; then
    # How the host waits and idles (A/B of the defaults): the engine thread's wait for the GPU (spin or blocking),
    # the expert threads' idle spins before sleeping, and one core left free.
    ab() { local t=$1; shift; env "$@" "$bin" bench --model $m --device cuda -t $t -p 0 -n $tgb -r 1 2>>"$log" | tail -1 \
      | sed "s/\$/ (hybrid, $* -t $t)/" | tee -a "$summary"; }
    ab $threads KTRANSFORMERS_CUDA_SYNC=spin KTRANSFORMERS_POOL_SPINS=20000
    ab $threads KTRANSFORMERS_CUDA_SYNC=spin
    ab $threads KTRANSFORMERS_POOL_SPINS=20000
    ab $threads KTRANSFORMERS_POOL_SPINS=1000000
    ab $((threads - 1)) KTRANSFORMERS_POOL_SPINS=1000000
    # Expert deferral: 1 and 2 of each token's 8 experts one layer late (overlapping the GPU's next layer).
    for d in 1 2; do
      "$bin" bench --model $m --device cuda -t $threads -p 0 -n $tgb -r 1 --defer-experts $d 2>>"$log" | tail -1 \
        | sed "s/\$/ (hybrid, --defer-experts $d)/" | tee -a "$summary"
    done
    # (The layerwise prefill's rows: the `prefill` stage.)
  fi
  if [ -z "${HYBRID_SHORT:-}" ]; then
  "$bin" bench --model $m --device cuda -t $threads -p $long -n 0 -r 1 --chunk-size $long 2>>"$log" | tail -1 | sed 's/$/ (hybrid)/' | tee -a "$summary"
  for b in 4 8; do
    "$bin" bench --model $m --device cuda -t $threads -p 0 -n $tgb -b $b -r $reps 2>>"$log" | tail -1 | sed 's/$/ (hybrid)/' | tee -a "$summary"
  done
  "$bin" bench --model $m --device cuda -t $threads -p 0 -n $tg -r $reps --no-cuda-graphs 2>>"$log" | tail -1 | sed 's/$/ (hybrid, graphs off)/' | tee -a "$summary"
  "$bin" bench --model $m --device cpu -t $threads -p $pp -n $tg -r $reps 2>>"$log" | tail -2 | sed 's/$/ (cpu only)/' | tee -a "$summary"
  for t in 1 8 16; do
    "$bin" bench --moe --moe-shape 128,8,2048,768 -t $t 2>>"$log" | tail -3 | sed "s/\$/ (bench --moe, $t threads)/" | tee -a "$summary"
  done
  fi
  if [ -x .baseline/llama.cpp/build-cuda/bin/llama-bench ] && [ -z "${SMOKE:-}" ]; then
    lb=.baseline/llama.cpp/build-cuda/bin
    "$lb/llama-bench" -m $m -ngl 99 -ot exps=CPU -t $threads -fa 1 -p 512 -n 128 -r 3 2>>"$log" | tee -a "$summary"
    # Its prefill in its best configuration (the issue's): the model read into memory (-lm none), not mmap'd, and
    # the whole prompt as one micro-batch (its experts then run on the GPU, copied layer by layer).
    "$lb/llama-bench" -m $m -ngl 99 -ot exps=CPU -t $threads -fa 1 -lm none -p 512 -n 0 -r 2 2>>"$log" | grep -E "^\| (model|qwen)" | tee -a "$summary"
    [ -n "${HYBRID_SHORT:-}" ] || "$lb/llama-bench" -m $m -ngl 99 -ot exps=CPU -t $threads -fa 1 -lm none -p 4096 -n 0 -ub 4096 -b 4096 -r 1 2>>"$log" | grep -E "^\| (model|qwen)" | tee -a "$summary"
  fi
  if [ -x .baseline/llama.cpp/build/bin/llama-bench ] && [ -z "${SMOKE:-}" ]; then
    .baseline/llama.cpp/build/bin/llama-bench -m $m -t $threads -p 512 -n 128 -r 3 2>>"$log" | tee -a "$summary"
  fi
fi
if has moe-scaling; then
  wait_build
  # Issue 13's first lever: how the CPU expert kernel scales with threads at batch 1 and 8 (bench --moe, the
  # Qwen3-30B-A3B layer shape), each row against the bandwidth it measured; then hybrid and CPU-only decode of
  # the Qwen3-30B-A3B shape at 8 and all threads, and llama.cpp's -ot exps=CPU decode beside it (when built).
  say "## CPU expert kernel scaling, $(date -u +%FT%TZ), $threads cores"
  for t in ${SCALING_THREADS:-1 2 4 8 12 $threads}; do
    KTRANSFORMERS_MOE_DIAG=1 "$bin" bench --moe -t $t -r 3 2>>"$log" | grep moe- | sed "s/\$/ (-t $t)/" | tee -a "$summary"
  done
  for v in ${SCALING_VARS:-KTRANSFORMERS_PIN_THREADS=0 KTRANSFORMERS_POOL_SPINS=1000000}; do
    env ${v//,/ } "$bin" bench --moe -t $threads -r 3 2>>"$log" | grep moe-b | sed "s/\$/ (-t $threads, $v)/" | tee -a "$summary"
  done
  m=/tmp/qwen3-30b-a3b$sfx.gguf
  make_model qwen3-30b-a3b $m
  # The hand-over between the GPU and the expert thread (mailbox or host functions), graphs on and off: the same
  # greedy tokens (the arithmetic is the same; only who signals whom differs).
  gen() { local mb=$1; shift; KTRANSFORMERS_HYBRID_MAILBOX=$mb timeout 120 "$bin" generate --model $m --device cuda -t $threads \
    -p "the quick brown fox" -n 48 --temperature 0 --ignore-eos "$@" 2>>"$log"; }
  gen 1 > "$out/hybrid-gen-mailbox.txt"
  KTRANSFORMERS_MOE_FUSED=0 gen 0 > "$out/hybrid-gen-hostfn.txt"   # also the CPU experts' four-region path
  gen 1 --no-cuda-graphs > "$out/hybrid-gen-mailbox-eager.txt"
  if [ -s "$out/hybrid-gen-mailbox.txt" ] && cmp -s "$out/hybrid-gen-mailbox.txt" "$out/hybrid-gen-hostfn.txt" \
     && cmp -s "$out/hybrid-gen-mailbox.txt" "$out/hybrid-gen-mailbox-eager.txt"; then
    say "hybrid greedy 48 tokens: mailbox (fused experts) = host functions (four-region experts) = mailbox without graphs: ok"
  else
    say "hybrid greedy 48 tokens: mailbox, host functions and eager DIFFER (or failed): see hybrid-gen-*.txt"; status=1
  fi
  for t in ${SCALING_HYBRID_THREADS:-8 $threads}; do
    "$bin" bench --model $m --device cuda -t $t -p 0 -n $tgb -r 2 2>>"$log" | tail -1 | sed "s/\$/ (hybrid, -t $t)/" | tee -a "$summary"
  done
  for v in ${SCALING_HYBRID_VARS:-}; do
    env ${v//,/ } "$bin" bench --model $m --device cuda -t $threads -p 0 -n $tgb -r 2 2>>"$log" | tail -1 \
      | sed "s/\$/ (hybrid, -t $threads, $v)/" | tee -a "$summary"
  done
  "$bin" bench --model $m --device cpu -t $threads -p 0 -n 32 -r 2 2>>"$log" | tail -1 | sed "s/\$/ (cpu only, -t $threads)/" | tee -a "$summary"
  if [ -x .baseline/llama.cpp/build-cuda/bin/llama-bench ] && [ -z "${SMOKE:-}" ]; then
    .baseline/llama.cpp/build-cuda/bin/llama-bench -m $m -ngl 99 -ot exps=CPU -t $threads -fa 1 -p 0 -n $tgb -r 2 2>>"$log" | tee -a "$summary"
  fi
fi
if has prefill; then
  # Issue 13, item 3: the hybrid MoE's prefill (defaults: layerwise from 128-token steps, the routed experts in
  # page-locked memory) at pp512 and pp4096 in one chunk, under PREFILL_VARS settings too, and where the layerwise
  # path starts to pay (chunks of PREFILL_CHUNKS tokens with it on and off); llama.cpp's best configuration beside
  # it when built.
  wait_build
  say "## hybrid MoE prefill (Qwen3-30B-A3B shape), $(date -u +%FT%TZ), $threads threads"
  m=/tmp/qwen3-30b-a3b$sfx.gguf
  make_model qwen3-30b-a3b $m
  for v in defaults ${PREFILL_VARS:-}; do
    e=(); [ "$v" = defaults ] || e=(${v//,/ })
    for p in $pp $long; do
      env "${e[@]}" timeout 180 "$bin" bench --model $m --device cuda -t $threads -p $p -n 0 -r 2 --chunk-size $p 2>>"$log" | tail -1 \
        | sed "s/\$/ (hybrid, $v)/" | tee -a "$summary"
    done
  done
  for c in ${PREFILL_CHUNKS:-64 128}; do
    for lw in $c 0; do
      KTRANSFORMERS_LAYERWISE_MIN=$lw timeout 180 "$bin" bench --model $m --device cuda -t $threads -p $((4 * c)) -n 0 -r 1 --chunk-size $c \
        2>>"$log" | tail -1 | sed "s/\$/ (hybrid, chunks of $c, layerwise from $lw, 0 = off)/" | tee -a "$summary"
    done
  done
  grep -m1 "page-locked memory at load" "$log" | tee -a "$summary"
  if [ -x .baseline/llama.cpp/build-cuda/bin/llama-bench ] && [ -z "${SMOKE:-}" ]; then
    lb=.baseline/llama.cpp/build-cuda/bin
    "$lb/llama-bench" -m $m -ngl 99 -ot exps=CPU -t $threads -fa 1 -lm none -p 512 -n 0 -r 2 2>>"$log" | grep -E "^\| (model|qwen)" | tee -a "$summary"
    "$lb/llama-bench" -m $m -ngl 99 -ot exps=CPU -t $threads -fa 1 -lm none -p 4096 -n 0 -ub 4096 -b 4096 -r 1 2>>"$log" | grep -E "^\| (model|qwen)" | tee -a "$summary"
  fi
fi
if has layerwise; then
  # The layerwise prefill's diagnosis: one pp512 with a trace of each staging step, host weights pageable, then
  # page-locked, each at most 90 s; a run that does not finish gets its threads' stacks (gdb, where installed).
  say "## layerwise prefill trace (Qwen3-30B-A3B shape), $(date -u +%FT%TZ)"
  m=/tmp/qwen3-30b-a3b$sfx.gguf
  make_model qwen3-30b-a3b $m
  for pin in ${LAYERWISE_PINS:-0 1}; do
    KTRANSFORMERS_LAYERWISE_MIN=64 KTRANSFORMERS_LAYERWISE_TRACE=1 KTRANSFORMERS_LAYERWISE_PIN=$pin KTRANSFORMERS_PIN_EXPERTS=0 \
      "$bin" bench --model $m --device cuda -t $threads -p $pp -n 0 -r 1 > "$out/layerwise-$pin.txt" 2> "$out/layerwise-$pin.err" &
    lpid=$!
    for i in $(seq 1 90); do kill -0 $lpid 2>/dev/null || break; sleep 1; done
    if kill -0 $lpid 2>/dev/null; then
      say "pin=$pin: still running after 90 s; last trace lines:"
      grep "^\[layerwise" "$out/layerwise-$pin.err" | tail -8 | tee -a "$summary"
      if command -v gdb >/dev/null; then
        timeout 60 gdb -p $lpid -batch -ex "thread apply all bt 12" > "$out/layerwise-$pin-stacks.txt" 2>&1
        grep -E "^#[0-9]" "$out/layerwise-$pin-stacks.txt" | grep -v "in ?? ()" | head -40 | tee -a "$summary"
      else
        for t in /proc/$lpid/task/*; do echo "$(cat $t/comm) $(cat $t/wchan 2>/dev/null) $(cat $t/stat | cut -d' ' -f3)"; done | sort | uniq -c | tee -a "$summary"
      fi
      kill -9 $lpid; wait $lpid 2>/dev/null
    else
      wait $lpid
      say "pin=$pin: $(tail -1 "$out/layerwise-$pin.txt") ($(grep -c "not prefetched" "$out/layerwise-$pin.err") not prefetched, $(grep -c "prefetched in" "$out/layerwise-$pin.err") prefetched)"
      { grep "^\[layerwise" "$out/layerwise-$pin.err" | head -6; grep "^\[layerwise" "$out/layerwise-$pin.err" | tail -3; } | tee -a "$summary"
    fi
  done
  # Its speed: the `prefill` stage.
fi

if has deepseek; then
  # Issue 13: a DeepSeek-V3-shaped model (MLA, 256 experts of 2048, group-limited sigmoid routing; DS_LAYERS of its
  # 61 layers, the first dense): the logits of the hybrid placement and of all on the GPU against the CPU's on the
  # same tokens, the routing spread (bench's routing lines), and timing rows beside llama.cpp's -ot exps=CPU.
  say "## DeepSeek-V3 shape, ${DS_LAYERS:-4} layers, $(date -u +%FT%TZ), $threads threads"
  m=/tmp/deepseek-v3$sfx.gguf
  if [ -n "${SMOKE:-}" ]; then dsm=(--layers 2 --experts 16 --vocab 4096); else dsm=(--layers "${DS_LAYERS:-4}"); fi
  [ -f "$m" ] || python3 scripts/make_random_deepseek.py --out "$m" "${dsm[@]}" >>"$log" 2>&1
  toks="1 4242 977 31337 12 555 8080 4096 77 1024 3 65000 2718 16 9000 123 42 7777 300 12345 88 5000 64000 19 1500 250 99999 31 4000 777 120000 6"
  [ -n "${SMOKE:-}" ] && toks="1 424 977 313 12 555 808 409"
  # The CPU run also prints each token's routing margins (KTRANSFORMERS_ROUTING_MARGINS=1): with 256 experts in 8
  # groups a token's last kept group or last chosen expert can lead the next by less than the GPU's rounding moves
  # the router's input (2026-12-06: 5e-5 and 6.5e-4 at the two positions that differed), and a flipped group changes
  # that token's whole MoE output. Positions with a margin under 1e-3 in any MoE layer are reported, not checked.
  for run in "cpu" "cuda" "cuda --n-cpu-moe 0"; do
    # shellcheck disable=SC2086
    KTRANSFORMERS_ROUTING_MARGINS=$([ "$run" = cpu ] && echo 1 || echo 0) "$bin" logits --model $m --device $run -t $threads \
      --tokens "$toks" --top 10 > "$out/ds-logits-${run// /_}.json" 2> "$out/ds-logits-${run// /_}.err"
    grep -v "^routing margins" "$out/ds-logits-${run// /_}.err" >> "$log"
  done
  python3 - "$out" >>"$summary" 2>&1 <<'PY' || status=1
import json, re, sys
d = sys.argv[1]
def load(name):
    return json.load(open(f"{d}/ds-logits-{name}.json"))["top"]
cpu = load("cpu")
margin = {}
for line in open(f"{d}/ds-logits-cpu.err"):
    m = re.match(r"routing margins: token (\d+) of \d+: group (\S+), expert (\S+)", line)
    if m:
        t = int(m.group(1))
        margin[t] = min(margin.get(t, float("inf")), float(m.group(2)), float(m.group(3)))
near = sorted(t for t, v in margin.items() if v < 1e-3)
print(f"routing near-ties on the CPU (a margin under 1e-3 in some MoE layer): positions {near} of {len(cpu)}"
      + ("" if margin else " (no margins printed: nothing excluded)"))
# A check over less than half the positions says too little: then it fails (more tokens, or another seed, are needed).
ok = 2 * len(near) <= len(cpu)
if not ok:
    print("FAIL: more than half the positions are near-ties")
for name in ["cuda", "cuda_--n-cpu-moe_0"]:
    other = load(name)
    diffs, decisive, agree, nearDiff = [], 0, 0, []
    for p, (a, b) in enumerate(zip(cpu, other)):
        lb = {e["id"]: e["logprob"] for e in b}
        ds = [abs(e["logprob"] - lb[e["id"]]) for e in a if e["id"] in lb]
        if p in near:
            nearDiff.append(f"{p}: {sum(ds) / max(1, len(ds)):.3f}{'' if a[0]['id'] == b[0]['id'] else ' (argmax differs)'}")
            continue
        diffs += ds
        if a[0]["logprob"] - a[1]["logprob"] >= 0.05:
            decisive += 1
            agree += a[0]["id"] == b[0]["id"]
    mean = sum(diffs) / max(1, len(diffs))
    good = agree == decisive and mean <= 0.05 and len(cpu) == len(other)
    ok &= good
    label = "hybrid (experts on the CPU)" if name == "cuda" else "all on the GPU"
    print(f"{label} vs cpu: argmax {agree}/{decisive} decisive positions, mean |Δlogprob| {mean:.4f}, "
          f"max {max(diffs, default=0):.4f} over the top-10: {'ok' if good else 'FAIL'}; "
          f"near-tie positions (mean |Δlogprob|): {', '.join(nearDiff) or 'none'}")
sys.exit(0 if ok else 1)
PY
  "$bin" bench --model $m --device cuda -t $threads -p $pp -n $tg -r $reps 2>"$out/ds-bench.err" | tail -2 | sed 's/$/ (hybrid)/' | tee -a "$summary"
  grep "^routing" "$out/ds-bench.err" | tee -a "$summary"
  "$bin" bench --model $m --device cuda -t $threads -p 0 -n $tgb -b 8 -r 1 2>"$out/ds-bench.err" | tail -1 | sed 's/$/ (hybrid)/' | tee -a "$summary"
  grep "^routing" "$out/ds-bench.err" | tee -a "$summary"
  "$bin" bench --model $m --device cuda --n-cpu-moe 0 -p $pp -n $tg -r $reps 2>>"$log" | tail -2 | sed 's/$/ (all on the GPU)/' | tee -a "$summary"
  if [ -x .baseline/llama.cpp/build-cuda/bin/llama-bench ] && [ -z "${SMOKE:-}" ]; then
    lb=.baseline/llama.cpp/build-cuda/bin
    "$lb/llama-bench" -m $m -ngl 99 -ot exps=CPU -t $threads -fa 1 -p 512 -n 128 -r 3 2>>"$log" | tee -a "$summary"
    "$lb/llama-bench" -m $m -ngl 99 -fa 1 -p 512 -n 128 -r 3 2>>"$log" | tail -3 | tee -a "$summary"
  fi
  rm -f "$out/ds-bench.err"
fi

if has profile; then
  say "## kernel profile (Llama-3-8B shape), $(date -u +%FT%TZ)"
  m=/tmp/llama3-8b$sfx.gguf
  make_model llama3-8b $m
  "$bin" bench --model $m --device cuda -p $pp -n $tgb -r 1 --profile-kernels 2>>"$log" > "$out/profile.md"
  "$bin" bench --model $m --device cuda -p 0 -n $tgb -b 32 -r 1 --profile-kernels 2>>"$log" >> "$out/profile.md"
  grep -E "^(pp|tg).*kernels" "$out/profile.md" | tee -a "$summary"
  # Issue 12, item 5: decode with CUDA graphs against the sum of its kernels' GPU time, measured by Nsight Systems
  # (no event around each kernel): wall time per token / kernel time per token.
  nsys=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
  if [ -n "$nsys" ]; then
    n=$((tg * 2))
    "$nsys" profile --trace=cuda --cuda-graph-trace=node --force-overwrite true -o /tmp/kt-nsys-tg \
      "$bin" bench --model $m --device cuda -p 0 -n $n -r 1 --json > /tmp/kt-nsys-bench.json 2>>"$log"
    "$nsys" stats --report cuda_gpu_kern_sum --format csv --output /tmp/kt-nsys /tmp/kt-nsys-tg.nsys-rep >>"$log" 2>&1
    python3 - /tmp/kt-nsys-bench.json /tmp/kt-nsys_cuda_gpu_kern_sum.csv $n >>"$summary" 2>&1 <<'PY' || true
import csv, json, sys
runs = json.load(open(sys.argv[1]))
tps = [r for r in runs if r["test"].startswith("tg")][0]["tokens_per_second"]
rows = list(csv.DictReader(open(sys.argv[2])))
total_ns = sum(float(r["Total Time (ns)"]) for r in rows)
# The profile holds the warm-up run and the measured one: 2 * n decode steps.
per_token_kernels = total_ns / 1e6 / (2 * int(sys.argv[3]))
wall = 1000 / tps
print(f"graphs on, batch 1 (nsys): {wall:.3f} ms per token wall, {per_token_kernels:.3f} ms of kernels: "
      f"ratio {wall / per_token_kernels:.3f} (bar 1.1)")
PY
  else
    say "nsys not found: graph step vs kernel time not measured here (the ncu stage measures it)"
  fi
fi

if has patterns; then
  # How fast a batch-1 Q4_K matvec can read its matrix here, by the order the warps walk the rows
  # (scripts/microbench/matvec-patterns.cu, compiled with the machine's nvcc).
  say "## matvec access patterns (nvcc microbenchmark)"
  if nvcc -O3 -arch=native -std=c++17 -o /tmp/matvec-patterns scripts/microbench/matvec-patterns.cu >>"$log" 2>&1; then
    /tmp/matvec-patterns ${PATTERN_REPS:-50} > "$out/patterns.txt" 2>&1 || say "patterns: FAILED"
    cat "$out/patterns.txt" >> "$summary"
  else
    say "patterns: nvcc FAILED (see log.txt)"
  fi
fi

if has ncu; then
  # Issue 12, item 5 without Nsight Systems: every kernel of a few decode steps timed alone by Nsight Compute
  # (gpu__time_duration: no launch gaps, no event overhead), so the sum of a step's kernels is their GPU time; the
  # step's wall time with graphs comes from bench in the same call. Per-kernel table into $OUT/ncu-step.md.
  ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  if [ -n "$ncu" ]; then
    for preset in ${NCU_MODELS:-llama3-8b}; do
    m=/tmp/$preset$sfx.gguf
    make_model $preset $m
    place=(); launches=3000; tag=""
    if [ "$preset" != llama3-8b ]; then place=(--n-cpu-moe 0); launches=8000; tag="-$preset"; fi
    for nb in ${NCU_BATCH:-1}; do
    nf=$out/ncu-step$tag.md; [ "$nb" = 1 ] || nf=$out/ncu-step$tag-b$nb.md
    say "## decode step kernels by Nsight Compute ($preset shape, batch $nb), $(date -u +%FT%TZ)"
    wall=$("$bin" bench --model $m --device cuda "${place[@]}" -p 0 -n 128 -b $nb -r 2 --json 2>>"$log")
    timeout ${NCU_TIMEOUT:-240} "$ncu" --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv \
      --print-units base --launch-count $launches \
      "$bin" bench --model $m --device cuda "${place[@]}" -p 0 -n ${NCU_STEPS:-3} -b $nb -r 1 --no-cuda-graphs \
      > /tmp/kt-ncu.csv 2>>"$log"
    python3 - /tmp/kt-ncu.csv "$wall" $nb > "$nf" 2>>"$log" <<'PY' || true
import csv, io, json, sys
text = open(sys.argv[1]).read()
start = text.find('"ID"')
rows = [r for r in csv.DictReader(io.StringIO(text[start:])) if r.get("Metric Name") == "gpu__time_duration.sum"]
steps, cur = [], []
for r in rows:
    name = r["Kernel Name"]
    if name.startswith("embed_") and cur:
        steps.append(cur); cur = []
    cur.append((name.split("(")[0], float(r["Metric Value"].replace(",", "")) / 1000.0))
steps.append(cur)
last = steps[-3:-1] if len(steps) > 3 else steps[-1:]   # whole decode steps (not the last, cut at the end)
per = sum(sum(d for _, d in s) for s in last) / len(last)
runs = json.loads(sys.argv[2])
tps = [r for r in runs if r["test"].startswith("tg")][0]["tokens_per_second"]
batch = int(sys.argv[3])
wall = 1e6 * batch / tps  # µs per step (bench reports the batch's total tokens/s)
print(f"batch {batch}: {len(last[0])} kernels per step, {per:.1f} µs of kernels; step wall with graphs {wall:.1f} µs "
      f"({tps:.1f} t/s): wall / kernels = {wall / per:.3f} (bar 1.1)\n")
agg = {}
for s in last:
    for n, d in s:
        a = agg.setdefault(n, [0, 0.0]); a[0] += 1; a[1] += d
print("| kernel | calls per step | µs per call | µs per step | share |\n|---|---|---|---|---|")
for n, (c, t) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
    print(f"| {n[:60]} | {c / len(last):.0f} | {t / c:.2f} | {t / len(last):.1f} | {100 * t / len(last) / per:.1f}% |")
# One layer in launch order (from the step's 3rd add_rms_norm to its 5th: a layer of a middle block), so that calls
# of one kernel with different shapes (q/k/v, output projection, gate/up) are told apart.
s = last[0]
norms = [i for i, (n, _) in enumerate(s) if n == "add_rms_norm"]
if len(norms) >= 5:
    print("\n| one layer, in order | µs |\n|---|---|")
    for n, d in s[norms[2]:norms[4]]:
        print(f"| {n[:60]} | {d:.2f} |")
PY
    head -1 "$nf" | tee -a "$summary"
    done
    done
    m=/tmp/llama3-8b$sfx.gguf
    # Details (speed of light, occupancy, warp states, memory) of single kernels: NCU_DETAIL="kernel:batch ...".
    for kb in ${NCU_DETAIL:-}; do
      k=${kb%%:*}; b=${kb##*:}
      timeout 120 "$ncu" --clock-control none --kernel-name "$k" --launch-skip 20 --launch-count 1 --section SpeedOfLight --section Occupancy \
        --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis --section SchedulerStats --section InstructionStats \
        "$bin" bench --model $m --device cuda -p 0 -n 8 -b $b -r 1 --no-cuda-graphs > "$out/ncu-$k-b$b.txt" 2>>"$log"
      grep -E "Duration|Registers Per|Achieved Occupancy|DRAM Throughput|Warp Cycles Per Issued|Block Limit (Registers|Shared)" "$out/ncu-$k-b$b.txt" \
        | sed "s/^/$k b$b: /" >> "$summary"
    done
  else
    say "ncu not found: decode step kernels not timed"
  fi
fi

if has serve-hybrid; then
  # Issue 13, item 4: the hybrid MoE served to 1, 4 and 8 streaming clients (total output tokens/s).
  say "## serving the hybrid MoE (Qwen3-30B-A3B shape, experts on $threads CPU threads), $(date -u +%FT%TZ)"
  m=/tmp/qwen3-30b-a3b$sfx.gguf
  make_model qwen3-30b-a3b $m
  SERVE_FLAGS="--device cuda -t $threads --max-batch-size 16 --ctx-size 1024 --kv-cache-tokens 20000" \
    serve_clients $m 18124 180 "1 4 8" ${SERVE_TOKENS:-64} serve-hybrid
fi

say "exit status $status"
# What comes back from a device call is at most 8 files: the details go in one archive.
(cd "$out" && ls | grep -v -E '^(summary.md|log.txt|profile.md|stdout.txt|details.tgz)$' > .details \
  && [ -s .details ] && tar czf details.tgz -T .details && xargs rm -f < .details; rm -f .details) 2>/dev/null
exit $status
