#!/usr/bin/env bash
# One pinned Python virtualenv: `scripts/pinned-venv.sh DIR PACKAGE==VERSION...` makes DIR
# a venv holding exactly those packages, unless a stamp of that list is already there
# (then it does nothing). Each test tool gets its own venv so that no tool's pins move
# another's. Used by scripts/ansible-venv.sh, deploy/prometheus/tests/venv.sh and
# deploy/kubernetes/tests/setup.sh.
set -euo pipefail
venv=$1
shift
stamp="$venv/installed-$(printf '%s\n' "$@" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  command -v python3 >/dev/null || { echo "python3 with the venv module is required" >&2; exit 1; }
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$@" >&2
  touch "$stamp"
fi
