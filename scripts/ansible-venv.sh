#!/usr/bin/env bash
# A Python virtualenv in .cache/ansible-venv (ignored by git) with Ansible and ansible-lint,
# pinned, for deploy/ansible and its test (deploy/tests/run.py). Apart from .cache/venv:
# Ansible's dependencies must not move the openai client's. Idempotent: a second run
# only checks the versions. Prints the venv's bin directory.
#
# Usage: PATH="$(scripts/ansible-venv.sh):$PATH" ansible-playbook ...
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.cache/ansible-venv"
want=(ansible==12.3.0 ansible-core==2.19.14 ansible-lint==26.10.1)
stamp="$venv/installed-$(printf '%s\n' "${want[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  command -v python3 >/dev/null || { echo "python3 with the venv module is required" >&2; exit 1; }
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${want[@]}" >&2
  touch "$stamp"
fi
"$venv/bin/ansible-playbook" --version >/dev/null
echo "$venv/bin"
