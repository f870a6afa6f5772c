#!/usr/bin/env bash
# CI's CUDA build (run by .ci/run): the CUDA path must keep compiling and linking (no GPU in
# CI: nothing CUDA runs), and a build without debug assertions must refuse fault injection.
# Installs the pinned CUDA 13.0 toolchain from PyPI (scripts/install-cuda-toolchain.sh), then
# builds in its own target dir (target-cuda), since its flags differ. Exits non-zero on any
# failure.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-cuda-toolchain.sh >/dev/null
# shellcheck disable=SC1091
source .cache/cuda/env.sh
export CARGO_TARGET_DIR=target-cuda
# The binary in an invocation of its own: with a test target beside it, cargo would turn
# on wick's dev-dependency features (fault injection), which wick-server refuses to
# compile in release builds.
kernels_out() { grep -o '"out_dir":"[^"]*/candle-kernels-[^"]*"' || true; }
bin_kernels=$(cargo build --profile ci-cuda --features cuda -p wick --bin wick \
  --message-format=json-render-diagnostics | kernels_out)
# The CUDA kernel tests are type-checked, not built (nothing here can run them;
# scripts/gpu-build.sh builds them for the GPU machine). candle-kernels' build script
# (nvcc over all of candle's kernels: about 20 minutes of CI's 2 cores) must run once, for
# the binary and this check both: it reruns whenever the features of its build
# dependencies differ, and the kernels' test graph alone lacks one (syn's "full").
# wick-server joins the selection only to resolve features as the binary's graph does;
# none of its targets is checked. The assertion below keeps it that way.
test_kernels=$(cargo check --profile ci-cuda --features wick-kernels/cuda -p wick-kernels -p wick-server \
  --test ops --message-format=json-render-diagnostics | kernels_out)
[ -n "$bin_kernels" ] && [ "$bin_kernels" = "$test_kernels" ] || {
  echo "candle-kernels built twice: $bin_kernels vs $test_kernels" >&2; exit 1
}
# Builds without debug assertions never carry fault injection: this binary (the release
# profile, unoptimised) must refuse the flag.
export LD_LIBRARY_PATH="$CUDA_HOME/lib:$PWD/.cache/cuda/stub"
target-cuda/ci-cuda/wick serve --help >/dev/null
if target-cuda/ci-cuda/wick serve --model none --fault-inject panic-at-step:1 2>target-cuda/fault-flag.err; then
  echo "the release binary accepted --fault-inject" >&2; exit 1
fi
grep -q -- "unexpected argument '--fault-inject'" target-cuda/fault-flag.err || {
  echo "the release binary failed on --fault-inject, but not as an unknown flag:" >&2
  cat target-cuda/fault-flag.err >&2; exit 1
}
echo "release binary refuses --fault-inject: ok"
