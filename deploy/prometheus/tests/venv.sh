#!/usr/bin/env bash
# A Python virtualenv in .cache/monitoring-venv (ignored by git) with a real PromQL parser
# (promql-parser, the Python binding of the promql-parser crate), the Prometheus text
# format parser of prometheus-client and PyYAML, pinned, for check_metric_names.py beside
# this script. Apart from .cache/venv and .cache/ansible-venv: nothing here moves their
# pins. Idempotent: a second run only checks the stamp. Prints the venv's python.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
venv="$root/.cache/monitoring-venv"
want=(promql-parser==0.11.0 prometheus-client==0.26.0 PyYAML==6.0.3)
stamp="$venv/installed-$(printf '%s\n' "${want[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  command -v python3 >/dev/null || { echo "python3 with the venv module is required" >&2; exit 1; }
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${want[@]}" >&2
  touch "$stamp"
fi
"$venv/bin/python" -c 'import promql_parser, prometheus_client, yaml'
echo "$venv/bin/python"
