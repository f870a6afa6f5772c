#!/usr/bin/env bash
# A Python virtualenv in .cache/venv (ignored by git) with the official `openai` client,
# pinned, for the end-to-end tests. Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.cache/venv"
want="openai==1.109.1"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import openai, sys; sys.exit(openai.__version__ != "1.109.1")' 2>/dev/null; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "$want" >&2
"$venv/bin/python" -c 'import openai; print("openai", openai.__version__)' >&2
