#!/usr/bin/env python3
"""The markdown tables of a scripts/bench-llama-cpp-peer.sh run directory: per concurrency
level and server, output tok/s, TTFT and TPOT p50/p95 (ms), peak RSS (VmHWM); then the
ratios wick-auto / llama.cpp that issue 16 sets goals for."""

import csv
import json
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else ".cache/peer-bench"
rss = {}
with open(os.path.join(out, "rss.tsv")) as f:
    for row in csv.DictReader(f, delimiter="\t"):
        rss[(row["server"], row["concurrency"])] = row

runs = {}
for server, c in rss:
    path = os.path.join(out, f"{server}-c{c}.json")
    if os.path.exists(path):
        with open(path) as f:
            runs[(server, c)] = json.load(f)

print(
    "| concurrency | server | out tok/s | TTFT p50 / p95 (ms) | TPOT p50 / p95 (ms) "
    "| peak RSS | ok / short / failed | load before -> after |"
)
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
levels = sorted({c for _, c in rss}, key=int)
for c in levels:
    for server in ("wick-auto", "llama", "wick-none"):
        r = runs.get((server, c))
        row = rss.get((server, c))
        if r is None or row is None:
            continue
        print(
            f"| {c} | {server} | {r['output_throughput']:.1f} "
            f"| {r['ttft_ms']['p50']:.0f} / {r['ttft_ms']['p95']:.0f} "
            f"| {r['tpot_ms']['p50']:.1f} / {r['tpot_ms']['p95']:.1f} "
            f"| {int(row['vmhwm_kib']) / 1024:.0f} MiB "
            f"| {r['ok']} / {r['short_outputs']} / {r['failed']} "
            f"| {row['load_before']} -> {row['load_after']} |"
        )
print()
print("| concurrency | wick-auto / llama.cpp, out tok/s | peak RSS, wick-auto / llama.cpp |")
print("| --- | --- | --- |")
for c in levels:
    a, b = runs.get(("wick-auto", c)), runs.get(("llama", c))
    ra, rb = rss.get(("wick-auto", c)), rss.get(("llama", c))
    if a and b and ra and rb:
        print(
            f"| {c} | {a['output_throughput'] / b['output_throughput']:.2f}x "
            f"| {int(ra['vmhwm_kib']) / int(rb['vmhwm_kib']):.2f}x |"
        )
