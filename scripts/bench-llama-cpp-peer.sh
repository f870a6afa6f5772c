#!/usr/bin/env bash
# wick against llama.cpp's llama-server on SmolLM2-135M-Instruct Q4_1 (issue 16's peer
# benchmark, BENCHMARKS.md): `wick bench` with 64-token prompts and 64 output tokens at
# concurrency 1, 4 and 16 against three servers on the same 2 cores:
#   wick-auto  wick serve --quantization auto (weights stay Q4_1/Q8_0)
#   llama      llama-server --parallel 16 -t 2 (scripts/build-llama-cpp.sh)
#   wick-none  wick serve --quantization none (weights dequantized to f32)
# Interleaved for fairness: for each concurrency level, each server in turn is started
# fresh, warmed up, measured and stopped; its peak RSS (VmHWM) is read just before it
# stops. Both servers get the same KV capacity in tokens: wick's --kv-cache-memory
# (default 1GiB) over its f32 KV bytes per token, rounded down to whole 16-token blocks;
# llama-server gets that as --ctx-size in one unified buffer shared by its 16 slots
# (--kv-unified, as wick's block pool is shared), its KV in its default f16, and no
# host-memory prompt cache (--cache-ram 0: wick's prefix cache lives in its KV blocks).
#
# Needs: a release wick (cargo build --release -p wick --bin wick), llama-server
# (scripts/build-llama-cpp.sh), the GGUF (scripts/fetch-test-model.sh), curl. Output
# under $OUT (default .cache/peer-bench/): per run a wick bench JSON and report, the
# server's log and command line, rss.tsv, machine.txt; the markdown table on stdout
# (scripts/bench-llama-cpp-peer-table.py).
#
# Env: NUM_REQUESTS (32), WARMUP (2), LEVELS ("1 4 16"), SERVERS ("wick-auto llama
# wick-none"), KV_MEMORY (bytes, 1073741824), WICK, LLAMA_SERVER.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
wick=${WICK:-$root/target/release/wick}
llama=${LLAMA_SERVER:-$root/.cache/llama.cpp/build/bin/llama-server}
gguf=$("$root/scripts/fetch-test-model.sh")
out=${OUT:-$root/.cache/peer-bench}
num_requests=${NUM_REQUESTS:-32}
warmup=${WARMUP:-2}
levels=${LEVELS:-"1 4 16"}
servers=${SERVERS:-"wick-auto llama wick-none"}
kv_memory=${KV_MEMORY:-1073741824}
port=8311

# SmolLM2-135M: 30 layers, 3 KV heads of 64; wick's KV cache on the CPU is f32.
kv_bytes_per_token=$((2 * 30 * 3 * 64 * 4))
block_size=16
kv_tokens=$((kv_memory / (kv_bytes_per_token * block_size) * block_size))

mkdir -p "$out"
for f in "$wick" "$llama"; do
  [ -x "$f" ] || { echo "missing $f" >&2; exit 1; }
done

server_argv() {
  case $1 in
    wick-auto | wick-none)
      echo "$wick serve --model $gguf --served-model-name smollm2 --host 127.0.0.1" \
        "--port $port --quantization ${1#wick-} --kv-cache-memory $kv_memory"
      ;;
    llama)
      echo "$llama --model $gguf --alias smollm2 --host 127.0.0.1 --port $port" \
        "--threads 2 --threads-batch 2 --parallel 16 --ctx-size $kv_tokens --kv-unified" \
        "--cache-ram 0 --no-webui --metrics"
      ;;
  esac
}

wait_ready() {
  local pid=$1 path=$2
  for _ in $(seq 600); do
    kill -0 "$pid" 2>/dev/null || { echo "server $pid exited" >&2; return 1; }
    curl -sf "http://127.0.0.1:$port$path" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "server $pid not ready" >&2
  return 1
}

{
  date -u
  uname -srm
  grep -m1 "model name" /proc/cpuinfo
  echo "cores: $(nproc)"
  echo "kv: $kv_memory bytes = $kv_tokens tokens ($kv_bytes_per_token bytes/token in f32)"
  "$llama" --version 2>&1 | head -1
  echo "wick $(git -C "$root" rev-parse --short HEAD)"
} >"$out/machine.txt"
printf 'server\tconcurrency\tvmhwm_kib\tvmrss_kib\tload_before\tload_after\n' >"$out/rss.tsv"

for c in $levels; do
  for s in $servers; do
    name=$s-c$c
    argv=$(server_argv "$s")
    echo "$argv" >"$out/$name.cmd"
    # shellcheck disable=SC2086
    $argv >"$out/$name.log" 2>&1 &
    pid=$!
    if [ "$s" = llama ]; then ready=/health; else ready=/ready; fi
    wait_ready "$pid" "$ready"
    load_before=$(cut -d' ' -f1 /proc/loadavg)
    bench=("$wick" bench --url "http://127.0.0.1:$port" --model smollm2
      --input-len 64 --output-len 64 --seed 0 --concurrency "$c"
      --num-requests "$num_requests" --warmup "$warmup" --no-progress
      --json "$out/$name.json")
    echo "${bench[*]}" >>"$out/$name.cmd"
    "${bench[@]}" >"$out/$name.txt" 2>&1 || echo "bench $name failed" >&2
    load_after=$(cut -d' ' -f1 /proc/loadavg)
    hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "$c" "$hwm" "$rss" "$load_before" "$load_after" \
      >>"$out/rss.tsv"
    kill -TERM "$pid"
    wait "$pid" || true
    echo "$name: $(grep -m1 '^throughput' "$out/$name.txt"), VmHWM $hwm KiB," \
      "load $load_before -> $load_after" >&2
  done
done
date -u >>"$out/machine.txt"
python3 "$root/scripts/bench-llama-cpp-peer-table.py" "$out"
