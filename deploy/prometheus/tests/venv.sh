#!/usr/bin/env bash
# A Python virtualenv in .cache/monitoring-venv (ignored by git) with a real PromQL parser
# (promql-parser, the Python binding of the promql-parser crate), the Prometheus text
# format parser of prometheus-client and PyYAML, pinned, for check_metric_names.py beside
# this script. Apart from .cache/venv and .cache/ansible-venv: nothing here moves their
# pins. Idempotent: a second run only checks the stamp. Prints the venv's python.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
venv="$root/.cache/monitoring-venv"
"$root/scripts/pinned-venv.sh" "$venv" promql-parser==0.11.0 prometheus-client==0.26.0 PyYAML==6.0.3
"$venv/bin/python" -c 'import promql_parser, prometheus_client, yaml'
echo "$venv/bin/python"
