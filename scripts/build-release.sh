#!/usr/bin/env bash
# Packs wick release tarballs for deploy/ansible: `<out>/wick-<release>.tar.gz` holding
# `<release>/bin/wick` (stripped) and `<release>/manifest.json`, the manifest also written
# beside it as `<out>/wick-<release>.manifest.json`. Prints each tarball's path.
#
# The manifest says what a node needs to run the binary, and the role's preflight checks it:
#   release, version, git_sha, features (cuda or cpu), built (UTC time),
#   cuda_version ("13.0") and compute_capability ("sm_90"), null for a CPU build,
#   cuda_libraries (the CUDA runtime libraries the binary links, libcuda.so.1 excepted: that
#   one is the driver's) and cuda_runtime_wheels (the pinned PyPI wheels that provide them,
#   those of scripts/install-cuda-toolchain.sh), empty for a CPU build,
#   glibc / glibcxx (the highest GLIBC_ / GLIBCXX_ symbol versions it needs, from
#   readelf -V; glibcxx null when it does not link libstdc++),
#   files ({"bin/wick": {"sha256", "size"}}).
#
# Usage:
#   scripts/build-release.sh [--release NAME] [--out DIR]
#       builds both: the CUDA binary (pinned CUDA 13.0 toolchain, sm_90, target-cuda/) as
#       release NAME-cuda and the CPU one (target/) as NAME-cpu. NAME defaults to
#       <version>-<git short sha>[-dirty]. About 15 minutes each on 2 cores.
#   scripts/build-release.sh --cuda-only | --cpu-only [--release NAME] [--out DIR]
#   scripts/build-release.sh --binary PATH --release NAME [--out DIR]
#       packs an existing binary as release NAME, built by nobody (the tests package one
#       debug build as several releases). Features: cuda when it links libcuda.so.1.
#       CUDA version and compute capability of such a binary: --cuda-version (default
#       that of the pinned toolchain, 13.0) and --compute-cap (default 90).
# --out defaults to target/releases.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

release="" out="$root/target/releases" binary="" flavors="cuda cpu"
cuda_version="" compute_cap="${CUDA_COMPUTE_CAP:-90}"
while [ $# -gt 0 ]; do
  case "$1" in
    --release) release=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --cuda-only) flavors="cuda"; shift ;;
    --cpu-only) flavors="cpu"; shift ;;
    --cuda-version) cuda_version=$2; shift 2 ;;
    --compute-cap) compute_cap=${2#sm_}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$release" in
  */*|.*) echo "--release $release: a release name is a directory name (no '/', no leading '.')" >&2; exit 2 ;;
esac
mkdir -p "$out"
out=$(cd "$out" && pwd)

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
git_sha=$(git rev-parse HEAD 2>/dev/null || echo unknown)
dirty=""
git diff --quiet HEAD -- 2>/dev/null || dirty="-dirty"
[ -n "$release" ] || release="$version-${git_sha:0:12}$dirty"

# The wheels that carry the CUDA runtime libraries, as pinned by the toolchain script.
cuda_wheels() {
  grep -oE 'nvidia-(cublas|cuda-runtime|curand)==[0-9.]+' scripts/install-cuda-toolchain.sh
}
toolchain_cuda_version() {
  grep -oE 'nvidia-cuda-runtime==[0-9]+\.[0-9]+' scripts/install-cuda-toolchain.sh | cut -d= -f3
}

# pack BINARY RELEASE FEATURES [CUDA_VERSION]
pack() {
  local bin=$1 name=$2 features=$3 cuda=${4:-}
  local stage
  stage=$(mktemp -d)
  mkdir -p "$stage/$name/bin"
  cp "$bin" "$stage/$name/bin/wick"
  strip "$stage/$name/bin/wick"
  chmod 0755 "$stage/$name/bin/wick"
  local wheels=""
  [ "$features" = cuda ] && wheels=$(cuda_wheels | tr '\n' ' ')
  python3 - "$stage/$name" "$name" "$version" "$git_sha" "$features" "$cuda" "$compute_cap" "$wheels" <<'PY'
import datetime, hashlib, json, os, re, subprocess, sys

rel_dir, name, version, git_sha, features, cuda, cap, wheels = sys.argv[1:]
exe = os.path.join(rel_dir, "bin/wick")
needs = subprocess.run(["readelf", "-V", "--wide", exe], check=True, capture_output=True, text=True).stdout
dyn = subprocess.run(["readelf", "-d", exe], check=True, capture_output=True, text=True).stdout
needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dyn)

def highest(prefix):
    found = set(re.findall(r"Name: " + prefix + r"_([0-9.]+)", needs))
    return max(found, key=lambda v: [int(x) for x in v.split(".")]) if found else None

system = re.compile(r"^(libc|libm|libdl|librt|libpthread|libgcc_s|libstdc\+\+|ld-linux.*|libcuda)\.so")
cuda_libs = [lib for lib in needed if not system.match(lib)] if features == "cuda" else []
manifest = {
    "release": name,
    "version": version,
    "git_sha": git_sha,
    "features": [features],
    "built": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "cuda_version": cuda or None,
    "compute_capability": f"sm_{cap}" if features == "cuda" else None,
    "cuda_libraries": cuda_libs,
    "cuda_runtime_wheels": wheels.split(),
    "glibc": highest("GLIBC"),
    "glibcxx": highest("GLIBCXX"),
    "files": {},
}
for rel in ["bin/wick"]:
    path = os.path.join(rel_dir, rel)
    with open(path, "rb") as f:
        manifest["files"][rel] = {"sha256": hashlib.sha256(f.read()).hexdigest(), "size": os.path.getsize(path)}
with open(os.path.join(rel_dir, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=2)
    f.write("\n")
PY
  tar -C "$stage" --owner=0 --group=0 --numeric-owner -czf "$out/wick-$name.tar.gz.part" "$name"
  mv "$out/wick-$name.tar.gz.part" "$out/wick-$name.tar.gz"
  cp "$stage/$name/manifest.json" "$out/wick-$name.manifest.json"
  rm -rf "$stage"
  echo "$out/wick-$name.tar.gz"
}

if [ -n "$binary" ]; then
  [ -f "$binary" ] || { echo "--binary $binary: no such file" >&2; exit 1; }
  [ "$(head -c4 "$binary" | od -An -c | tr -d ' ')" = '177ELF' ] || { echo "--binary $binary: not an ELF executable" >&2; exit 1; }
  features=cpu
  readelf -d "$binary" | grep -q 'Shared library: \[libcuda.so.1\]' && features=cuda
  # A binary that runs here says which commit it is (`wick 0.1.0 (git 0123456789ab, ...)`).
  if line=$("$binary" --version 2>/dev/null); then
    v=$(sed -n 's/^wick \([^ ]*\) .*/\1/p' <<<"$line")
    short=$(sed -n 's/.*(git \([0-9a-f]*\),.*/\1/p' <<<"$line")
    [ -n "$v" ] && version=$v
    if [ -n "$short" ] && [ "${git_sha#"$short"}" = "$git_sha" ]; then git_sha=$short; fi
  fi
  cuda=""
  [ "$features" = cuda ] && cuda=${cuda_version:-$(toolchain_cuda_version)}
  pack "$binary" "$release" "$features" "$cuda"
  exit 0
fi

for flavor in $flavors; do
  if [ "$flavor" = cuda ]; then
    # Its own cargo invocation and target dir, as in .ci/run: the CUDA flags differ, and a
    # test target beside the binary would turn on test-only features.
    (
      # shellcheck disable=SC1090
      source "$(scripts/install-cuda-toolchain.sh)"
      export CUDA_COMPUTE_CAP="$compute_cap"
      CARGO_TARGET_DIR="${CUDA_TARGET_DIR:-$root/target-cuda}" \
        cargo build --release --features cuda -p wick --bin wick >&2
      nvcc --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p' >"$out/.cuda-version"
    )
    cuda=${cuda_version:-$(cat "$out/.cuda-version")}
    rm -f "$out/.cuda-version"
    pack "${CUDA_TARGET_DIR:-$root/target-cuda}/release/wick" "$release-cuda" cuda "$cuda"
  else
    cargo build --release -p wick --bin wick >&2
    pack "${CARGO_TARGET_DIR:-$root/target}/release/wick" "$release-cpu" cpu
  fi
done
