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
"$root/scripts/pinned-venv.sh" "$venv" ansible==12.3.0 ansible-core==2.19.14 ansible-lint==26.10.1
"$venv/bin/ansible-playbook" --version >/dev/null
echo "$venv/bin"
