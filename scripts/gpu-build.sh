#!/usr/bin/env bash
# Builds, on a machine without a GPU, everything scripts/gpu-run.sh needs on the GPU
# machine (which has no Rust toolchain): with --features cuda, the release `wick` binary,
# the wick-kernels test executable (CUDA kernels against their CPU reference) and the
# wick-models examples logits_dump and forward_bench. They land stripped in .device/bin
# (ignored by git), packed into .device/bin.tar.xz too (PTX compresses well; only 64 MiB
# travel to the GPU machine), with a manifest.
#
# Usage: scripts/gpu-build.sh   then carry .device/bin.tar.xz (gpu-run.sh unpacks it).
# Uses the pinned CUDA 13.0 toolchain of scripts/install-cuda-toolchain.sh, and
# CARGO_TARGET_DIR (default target-cuda, apart from the CPU builds' target/).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck disable=SC1090
source "$(scripts/install-cuda-toolchain.sh)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target-cuda}"
cargo_() { nice -n 19 cargo "$@"; }
out="$root/.device"
rm -rf "$out/bin" "$out/bin.tar.xz"
mkdir -p "$out/bin"
start=$SECONDS

# The binary in a cargo invocation of its own: with test or example targets beside it,
# cargo turns on wick's dev-dependency features (test-only fault injection), which
# wick-server refuses to compile in release builds. Candle's build is shared by both.
pkgs=(-p wick-models -p wick-kernels)
targets=(--example logits_dump --example forward_bench --test ops)
cargo_ build --release --features cuda -p wick --bin wick
cargo_ build --release --features cuda "${pkgs[@]}" "${targets[@]}"
cp "$CARGO_TARGET_DIR/release/wick" "$out/bin/"
cp "$CARGO_TARGET_DIR/release/examples/logits_dump" "$CARGO_TARGET_DIR/release/examples/forward_bench" "$out/bin/"
# The test executable (already built above): cargo prints its path as JSON.
cargo_ test --release --features cuda "${pkgs[@]}" --test ops --no-run --message-format=json \
  | python3 -c '
import json, sys, shutil, os
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    exe = msg.get("executable")
    if msg.get("reason") == "compiler-artifact" and exe and msg.get("profile", {}).get("test"):
        name = "test-" + msg["target"]["name"] + "-" + msg["target"]["kind"][0]
        shutil.copy(exe, os.path.join(sys.argv[1], name))
        print("test executable:", name)
' "$out/bin"
strip "$out/bin/"*

{
  echo "built $(date -u +%FT%TZ) from $(git rev-parse --short HEAD)$(git diff --quiet -- kernels models || echo '+changes')"
  nvcc --version | tail -1
  (cd "$out/bin" && ls -l)
  # What each binary needs of the GPU machine's C and C++ runtimes.
  for f in "$out/bin"/*; do
    [ -f "$f" ] && [ -x "$f" ] || continue
    versions=$(readelf -V "$f" 2>/dev/null || true)
    glibc=$(grep -oE 'Name: GLIBC_[0-9.]+' <<<"$versions" | sed 's/.*GLIBC_//' | sort -V | tail -1)
    glibcxx=$(grep -oE 'Name: GLIBCXX_[0-9.]+' <<<"$versions" | sed 's/.*GLIBCXX_//' | sort -V | tail -1)
    echo "$(basename "$f") needs GLIBC_${glibc:-none} GLIBCXX_${glibcxx:-none}"
  done
} >"$out/bin/MANIFEST"
tar -C "$out" -cJf "$out/bin.tar.xz" bin
echo "built in $((SECONDS - start))s:"
cat "$out/bin/MANIFEST"
ls -l "$out/bin.tar.xz"
# What travels to the GPU machine is limited (../shared/GPU.md): 64 MiB.
size=$(stat -c %s "$out/bin.tar.xz")
if [ "$size" -gt $((64 * 1024 * 1024)) ]; then
  echo "$out/bin.tar.xz is $size bytes, over the 64 MiB that travel to the GPU machine" >&2
  exit 1
fi
