#!/usr/bin/env bash
# Runs on the GPU machine (NVIDIA driver with CUDA 13.0, python3 with PyTorch cu130 and
# transformers; no Rust, no network) with only what scripts/gpu-build.sh built:
#   1. nvidia-smi, and the cuBLAS/cudart/cuRAND .so.13 from PyTorch's nvidia/cu13/lib on
#      LD_LIBRARY_PATH; the binary starts;
#   2. the wick-kernels tests, CUDA kernels against their CPU reference (WICK_REQUIRE_GPU=1);
#   3. a random-weight Llama-3.2-1B-shaped model, bf16 safetensors, made by transformers,
#      with a byte-level BPE tokenizer trained on the spot;
#   4. wick's logits (ragged batch, chunked prefill + decode; bf16 and f32) against
#      transformers' on the same weights and GPU, teacher-forced on wick's greedy tokens;
#   5. `wick serve` sizing its KV cache from the GPU's memory (no --kv-cache-memory),
#      without and with --cuda-graphs (whose sizing sets aside the graphs' memory);
#   6. a short benchmark (prefill and single-stream decode, examples/forward_bench);
#   7. `wick serve` without and with --cuda-graphs, a random rank-16 LoRA adapter served
#      beside the base model: greedy completions compared (base, through the adapter, and
#      both in one batch), then `wick bench` at 32 concurrent streams on each, and the
#      graph counters of /metrics.
# Writes logs and results under $OUT (default ./gpu-out), with summary.txt listing each
# step as ok/FAILED; keeps going after a failed step, and each step has a time limit (a
# hang costs that step, not the GPU time of the rest). Exits non-zero if any step failed.
# Nothing reaches a hub (HF_HUB_OFFLINE=1). wick's kernels travel as sm_90 machine code
# (fatbins); candle's travel as PTX, which the driver compiles into a JIT cache kept in the
# work directory, so once per machine.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
OUT="${OUT:-$root/gpu-out}"
export OUT # the steps' functions run in child shells
mkdir -p "$OUT"
work="${WICK_GPU_WORK:-/tmp/wick-gpu}"
mkdir -p "$work"
summary="$OUT/summary.txt"
: >"$summary"
failed=0

# step NAME SECONDS CMD...: runs CMD (a command, or a function of this script) with
# output in $OUT/NAME.log, killed after SECONDS; records ok/FAILED/TIMED OUT and time.
step() {
  local name=$1 limit=$2 t0=$SECONDS rc=0
  shift 2
  echo "== $name"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
  if [ $rc -eq 0 ]; then
    echo "$name: ok ($((SECONDS - t0))s)" | tee -a "$summary"
  else
    local what="FAILED rc=$rc"
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && what="TIMED OUT after ${limit}s"
    echo "$name: $what ($((SECONDS - t0))s), see $name.log" | tee -a "$summary"
    tail -20 "$OUT/$name.log"
    failed=1
  fi
}
# Functions run under `timeout` in a child bash: each, and what it reads, is exported.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export CUDA_CACHE_PATH="$work/cuda-cache" CUDA_CACHE_MAXSIZE=4294967296

# The binaries, unpacked from the archive that travelled (or .device/bin as built).
bin="$root/.device/bin"
if [ -f "$root/.device/bin.tar.xz" ]; then
  tar -C "$work" -xJf "$root/.device/bin.tar.xz" && bin="$work/bin"
fi
[ -x "$bin/logits_dump" ] || { echo "no binaries in $bin: run scripts/gpu-build.sh first" | tee -a "$summary"; exit 1; }

# cuBLAS & co. come with PyTorch (nvidia/cu13/lib), or from wherever the system has them.
libdir=$(python3 - <<'PY' 2>/dev/null
import os
try:
    import nvidia
    for base in nvidia.__path__:
        d = os.path.join(base, "cu13", "lib")
        if os.path.exists(os.path.join(d, "libcublas.so.13")):
            print(d)
            break
except ImportError:
    pass
PY
)
if [ -z "$libdir" ]; then
  found=$(find / -name libcublas.so.13 -print -quit 2>/dev/null || true)
  [ -n "$found" ] && libdir=$(dirname "$found")
fi
export LD_LIBRARY_PATH="${libdir:+$libdir:}${LD_LIBRARY_PATH:-}"
export RUST_LOG="${RUST_LOG:-info}"

# Fails (each line is checked) when the GPU, a library or the Python side is missing.
env_check() {
  set -eo pipefail
  date -u +%FT%TZ
  nvidia-smi
  cat "$bin/MANIFEST"
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  [ -n "$libdir" ] || { echo "libcublas.so.13 not found (PyTorch's nvidia/cu13/lib or anywhere)"; return 1; }
  local libs
  libs=$(ldd "$bin/wick")
  echo "$libs" | grep -E 'cuda|cublas|curand|not found' || true
  if echo "$libs" | grep -q 'not found'; then
    echo "wick needs libraries this machine does not have (above)"
    return 1
  fi
  "$bin/wick" --version
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__, torch.cuda.get_device_name(0))'
}
export -f env_check
export bin libdir
step env 120 bash -c env_check
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$OUT/gpu.txt" 2>&1

kernel_tests() {
  local t rc=0
  for t in "$bin"/test-*; do
    echo "-- $t"
    WICK_REQUIRE_GPU=1 "$t" || rc=1
  done
  return $rc
}
export -f kernel_tests
step kernel-tests 300 bash -c kernel_tests

model="$work/llama-3.2-1b-random"
step make-model 300 python3 "$root/scripts/gpu-check.py" make-model "$model"
adapter="$work/lora-random"
step make-adapter 120 python3 "$root/scripts/gpu-check.py" make-adapter "$model" "$adapter" 16

# Prompts: a few tokens (decode only), one tile and a bit, several tiles, several 256-key
# partitions; all in one ragged batch.
python3 -c 'import json, random; r = random.Random(0); print(json.dumps([[r.randrange(3, 8000) for _ in range(n)] for n in (5, 77, 300, 1100)]))' >"$work/prompts.json"
step logits-bf16 300 "$bin/logits_dump" "$model" "$work/prompts.json" "$work/wick-bf16" 16 256 bf16
step compare-bf16 300 python3 "$root/scripts/gpu-check.py" compare "$model" "$work/wick-bf16" "$OUT/compare-bf16.json"
step logits-f32 300 "$bin/logits_dump" "$model" "$work/prompts.json" "$work/wick-f32" 16 100 f32
step compare-f32 300 python3 "$root/scripts/gpu-check.py" compare "$model" "$work/wick-f32" "$OUT/compare-f32.json"

# `wick serve` with no --kv-cache-memory: the KV cache sized from the GPU (profiled
# activation peak, --gpu-memory-utilization 0.9); the log's figures beside nvidia-smi's.
# Then the same with --cuda-graphs, whose sizing also sets aside an estimate of the
# graphs' memory (graph_pool_estimate_bytes; the cuda-graphs step logs what they use).
kv_sizing() {
  local mode pid ok=0
  for mode in eager graphs; do
    local log="$OUT/kv-sizing-$mode-serve.log" flags=() started=1
    [ "$mode" = graphs ] && flags=(--cuda-graphs)
    "$bin/wick" serve --model "$model" --port 18411 "${flags[@]}" >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 240); do
      grep -q "KV cache allocated" "$log" && { started=0; break; }
      kill -0 "$pid" 2>/dev/null || break
      sleep 1
    done
    echo "$mode:"
    nvidia-smi --query-gpu=memory.used,memory.total --format=csv
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    grep -E "KV cache|activation|utilization|graph_pool" "$log" || true
    [ $started -eq 0 ] || ok=1
  done
  return $ok
}
export -f kv_sizing
export model
step kv-sizing 420 bash -c kv_sizing

bench() {
  nvidia-smi --query-gpu=name --format=csv,noheader
  "$bin/forward_bench" "$model" 512 128 bf16
  "$bin/forward_bench" "$model" 2048 256 bf16
  python3 "$root/scripts/gpu-check.py" bench "$model" 512 128
}
export -f bench
export root model
step bench 300 bash -c bench

# Decode steps as CUDA graphs: the same greedy completions as eager steps (one at a time),
# graphs actually replayed (/metrics), and throughput at 32 streams side by side.
cuda_graphs() {
  local mode pid url=http://127.0.0.1:18412 rc=0
  for mode in eager graphs; do
    local flags=()
    [ "$mode" = graphs ] && flags=(--cuda-graphs)
    "$bin/wick" serve --model "$model" --port 18412 --max-model-len 4096 \
      --kv-cache-memory 8GiB --lora-modules "ad=$adapter" --max-loras 2 "${flags[@]}" \
      >"$OUT/cuda-graphs-$mode-serve.log" 2>&1 &
    pid=$!
    for _ in $(seq 240); do
      python3 -c "import urllib.request as u; u.urlopen('$url/ready', timeout=2)" 2>/dev/null && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 1
    done
    python3 "$root/scripts/gpu-check.py" greedy "$url" "$OUT/greedy-$mode.json" ad || rc=1
    "$bin/wick" bench --url "$url" --input-len 256 --output-len 128 --concurrency 32 \
      --num-requests 128 --tokenizer none --json "$OUT/bench-$mode.json" || rc=1
    python3 -c "import urllib.request as u; print(u.urlopen('$url/metrics').read().decode())" \
      >"$OUT/metrics-$mode.txt" || rc=1
    grep -E "^wick:engine_graph|^wick:engine_step_phase_duration_seconds_(sum|count)" \
      "$OUT/metrics-$mode.txt" || true
    # Graphs keep memory of their own (their allocations' pool): compare with eager.
    echo "$mode: GPU memory used after the run:"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  done
  grep -E "captured|graphs off|cannot capture" "$OUT/cuda-graphs-graphs-serve.log" | head -20 || true
  python3 "$root/scripts/gpu-check.py" same-greedy "$OUT/greedy-eager.json" "$OUT/greedy-graphs.json" || rc=1
  grep -q "graphs off" "$OUT/cuda-graphs-graphs-serve.log" && { echo "capture failed: graphs were turned off"; rc=1; }
  grep -qE '^wick:engine_graph_steps_total\{[^}]*\} [1-9]' "$OUT/metrics-graphs.txt" \
    || { echo "no step ran through a graph"; rc=1; }
  return $rc
}
export -f cuda_graphs
export adapter
step cuda-graphs 420 bash -c cuda_graphs

echo "results in $OUT"
cat "$summary"
exit $failed
