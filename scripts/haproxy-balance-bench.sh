#!/usr/bin/env bash
# HAProxy's balance algorithm under requests of very different lengths (BENCHMARKS.md,
# "HAProxy: leastconn against roundrobin"). For each of roundrobin and leastconn: starts
# wick replicas r0, r1, ... (three by default; one compute thread each), renders
# deploy/haproxy/haproxy.cfg.j2 through deploy/ansible/haproxy.yml with haproxy_balance
# set (render and validate only), starts HAProxy and runs `wick bench --workload mix`
# through it, with the same seed; then prints TTFT and e2e p50/p95 of each run (and the
# TTFT of the shorter prompts), the most requests in flight on one replica at once, and
# the requests and work each replica got. Fresh replicas per run: the second run's prompts (same seed)
# must not hit the first run's prefix cache.
#
# Usage: scripts/haproxy-balance-bench.sh [OUT_DIR]   (default: a new temporary directory)
# Env: WICK (default target/debug/wick), MODEL (default the SmolLM2 test GGUF), REQUESTS
#   (24), CONCURRENCY (6), SEED (0), REPLICAS (3, at most 9), BASE_PORT (18300: replicas
#   on +1.., HAProxy on +10 and +11), ANSIBLE_BIN (.cache/ansible-venv/bin), KV (KV cache per replica, 1GiB),
#   BUDGET (--max-num-batched-tokens, 512: the same on every replica and run, where the
#   CPU default would measure each replica's step cost at start, under varying load).
# Needs haproxy (scripts/install-test-deps.sh), the Ansible venv (scripts/ansible-venv.sh),
# curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WICK=${WICK:-$ROOT/target/debug/wick}
MODEL=${MODEL:-$ROOT/.cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
REQUESTS=${REQUESTS:-24}
CONCURRENCY=${CONCURRENCY:-6}
SEED=${SEED:-0}
BASE_PORT=${BASE_PORT:-18300}
BUDGET=${BUDGET:-512}
REPLICAS=${REPLICAS:-3}
ANSIBLE_BIN=${ANSIBLE_BIN:-$ROOT/.cache/ansible-venv/bin}
KV=${KV:-1GiB}
OUT=${1:-$(mktemp -d)}
mkdir -p "$OUT"
for need in "$WICK" "$MODEL" "$ANSIBLE_BIN/ansible-playbook" /usr/sbin/haproxy; do
  [ -e "$need" ] || { echo "missing: $need" >&2; exit 1; }
done

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
trap stop_all EXIT

wait_ready() { # url what
  for _ in $(seq 600); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.2
  done
  echo "$2 never became ready ($1)" >&2
  exit 1
}

cat >"$OUT/inventory.ini" <<'EOF'
[wick_lb]
lb ansible_connection=local ansible_python_interpreter=/usr/bin/python3
EOF

for balance in roundrobin leastconn; do
  echo "== $balance: $REPLICAS replicas, $REQUESTS requests of --workload mix at concurrency $CONCURRENCY, seed $SEED" >&2
  servers=""
  for i in $(seq 0 $((REPLICAS - 1))); do
    port=$((BASE_PORT + 1 + i))
    RAYON_NUM_THREADS=1 "$WICK" serve --model "$MODEL" --served-model-name smollm2 \
      --port "$port" --replica-id "r$i" --kv-cache-memory "$KV" --max-num-batched-tokens "$BUDGET" \
      >"$OUT/$balance-r$i.log" 2>&1 &
    pids+=($!)
    servers+="${servers:+,}{\"name\": \"r$i\", \"address\": \"127.0.0.1\", \"port\": $port}"
  done
  for i in $(seq 0 $((REPLICAS - 1))); do wait_ready "http://127.0.0.1:$((BASE_PORT + 1 + i))/ready" "replica r$i"; done
  cat >"$OUT/$balance-vars.json" <<EOF
{"haproxy_service_manager": "none", "haproxy_balance": "$balance",
 "haproxy_config": "$OUT/$balance-haproxy.cfg", "haproxy_admin_socket": "$OUT/admin.sock",
 "haproxy_server_state_file": "$OUT/server-state",
 "haproxy_bind": "127.0.0.1:$((BASE_PORT + 10))", "haproxy_stats_bind": "127.0.0.1:$((BASE_PORT + 11))",
 "haproxy_check_interval": "500ms", "haproxy_servers": [$servers]}
EOF
  ANSIBLE_NOCOLOR=1 "$ANSIBLE_BIN/ansible-playbook" -i "$OUT/inventory.ini" \
    -e "@$OUT/$balance-vars.json" deploy/ansible/haproxy.yml >"$OUT/$balance-ansible.log"
  grep -q "balance $balance" "$OUT/$balance-haproxy.cfg"
  /usr/sbin/haproxy -W -db -f "$OUT/$balance-haproxy.cfg" >"$OUT/$balance-haproxy.log" 2>&1 &
  pids+=($!)
  wait_ready "http://127.0.0.1:$((BASE_PORT + 10))/ready" "HAProxy"
  sleep 2 # every server UP (rise 2 at 500 ms)
  "$WICK" bench --url "http://127.0.0.1:$((BASE_PORT + 10))" --model smollm2 --workload mix \
    --num-requests "$REQUESTS" --concurrency "$CONCURRENCY" --seed "$SEED" \
    --tokenizer server --no-server-metrics --no-progress --json "$OUT/$balance.json" |
    tee "$OUT/$balance.txt"
  stop_all
done

python3 - "$OUT" <<'EOF'
import json, sys
out = sys.argv[1]
def pct(v, p):  # numpy's linear interpolation, as wick bench
    v = sorted(v)
    if not v:
        return float("nan")
    k = (len(v) - 1) * p / 100
    f = int(k)
    c = min(f + 1, len(v) - 1)
    return v[f] + (v[c] - v[f]) * (k - f)
def peak(xs):  # most requests in flight at once
    events = sorted([(x["start_s"], 1) for x in xs] + [(x["start_s"] + x["e2e_s"], -1) for x in xs])
    cur = most = 0
    for _, d in events:
        cur += d
        most = max(most, cur)
    return most
print("| balance | ok / failed | duration s | TTFT p50 / p95 s | e2e p50 / p95 s "
      "| TTFT p50 / p95 s, prompts < 700 tokens | most in flight on a replica "
      "| requests per replica | tokens (prompt + output) per replica |")
print("|---|---|---|---|---|---|---|---|---|")
for balance in ["roundrobin", "leastconn"]:
    r = json.load(open(f"{out}/{balance}.json"))
    recs = r["records"]
    names = sorted({x.get("replica") or "?" for x in recs})
    mine = {n: [x for x in recs if (x.get("replica") or "?") == n] for n in names}
    short = [x["ttft_s"] for x in recs if x["prompt_tokens"] < 700 and x.get("ttft_s") is not None]
    each = lambda f: ", ".join(f"{n} {f(mine[n])}" for n in names)
    print(f"| {balance} | {r['ok']} / {r['failed']} | {r['duration_s']:.0f} "
          f"| {r['ttft_ms']['p50'] / 1e3:.1f} / {r['ttft_ms']['p95'] / 1e3:.1f} "
          f"| {r['e2e_ms']['p50'] / 1e3:.1f} / {r['e2e_ms']['p95'] / 1e3:.1f} "
          f"| {pct(short, 50):.1f} / {pct(short, 95):.1f} | {each(peak)} | {each(len)} "
          f"| {each(lambda xs: sum(x['prompt_tokens'] + x['output_tokens'] for x in xs))} |")
EOF
echo "outputs in $OUT" >&2
