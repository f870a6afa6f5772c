#!/usr/bin/env bash
# Where an engine step's time goes (issue 11's figures, BENCHMARKS.md "Engine step by
# phase"): starts `wick serve` on SmolLM2 and runs `wick bench` at concurrency 1, 4, 16
# and 64 (temperature 1, top-p 0.9, every request the same length), each point on a fresh
# server. Each point's report ends with an `engine` line read from the server's
# /metrics: the steps it ran, the milliseconds per step in each phase (schedule,
# prepare_inputs, forward, sample, postprocess) and the bytes read back to the host per
# step; the script prints those lines together at the end.
#
# Usage: scripts/bench-step-phases.sh [OUT_DIR]   (default: a new temporary directory)
# Env: WICK (default target/release/wick: `cargo build --release -p wick`), MODEL (default
#   the SmolLM2 test GGUF), QUANTIZATION (auto), LEVELS ("1 4 16 64"), INPUT_LEN (64),
#   OUTPUT_LEN (64), DURATION (20s of counted requests per level), BUDGET
#   (--max-num-batched-tokens, 256: fixed, where the CPU default would measure the step
#   cost at start), PORT (18390).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WICK=${WICK:-$ROOT/target/release/wick}
MODEL=${MODEL:-$ROOT/.cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
QUANTIZATION=${QUANTIZATION:-auto}
LEVELS=${LEVELS:-1 4 16 64}
INPUT_LEN=${INPUT_LEN:-64}
OUTPUT_LEN=${OUTPUT_LEN:-64}
DURATION=${DURATION:-20s}
BUDGET=${BUDGET:-256}
PORT=${PORT:-18390}
OUT=${1:-$(mktemp -d)}
mkdir -p "$OUT"
for need in "$WICK" "$MODEL"; do
  [ -e "$need" ] || { echo "missing: $need" >&2; exit 1; }
done

server=
stop() {
  [ -n "$server" ] || return 0
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  server=
}
trap stop EXIT

for c in $LEVELS; do
  "$WICK" serve --model "$MODEL" --served-model-name smollm2 --port "$PORT" \
    --quantization "$QUANTIZATION" --max-num-seqs "$c" --max-num-batched-tokens "$BUDGET" \
    >"$OUT/serve-c$c.log" 2>&1 &
  server=$!
  for _ in $(seq 600); do
    curl -sf -o /dev/null "http://127.0.0.1:$PORT/ready" && break
    kill -0 "$server" 2>/dev/null || { cat "$OUT/serve-c$c.log" >&2; exit 1; }
    sleep 0.2
  done
  "$WICK" bench --url "http://127.0.0.1:$PORT" --model smollm2 --tokenizer server \
    --input-len "$INPUT_LEN" --output-len "$OUTPUT_LEN" --temperature 1 --top-p 0.9 \
    --concurrency "$c" --warmup "$c" --duration "$DURATION" --seed 1 --no-progress \
    --json "$OUT/c$c.json" >"$OUT/c$c.txt"
  stop
done

echo "$("$WICK" --version 2>/dev/null | head -1); $(nproc) cores; $(date -u)"
for c in $LEVELS; do
  echo "concurrency $c: $(grep -E '^ *engine' "$OUT/c$c.txt" | sed 's/^ *engine *//')"
  grep -E '^(throughput|TPOT)' "$OUT/c$c.txt" | sed 's/^/    /'
done
echo "reports: $OUT"
