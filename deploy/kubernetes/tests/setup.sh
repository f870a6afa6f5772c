#!/usr/bin/env bash
# The validators of deploy/kubernetes/tests, pinned, under .cache/ (ignored by git):
#   .cache/kubernetes-venv: kubernetes-validate (PyPI; it ships the Kubernetes API's JSON
#     schemas, so it checks offline) and PyYAML, for validate.py;
#   .cache/kubernetes-npm: @kubernetes-models/keda and @kubernetes-models/prometheus-operator
#     (npm; their models validate against the CRDs' published OpenAPI schemas), for
#     validate-crds.mjs: `npm ci` of package.json and package-lock.json beside this script
#     (every package of the tree pinned, with its integrity hash).
# Needs python3 (venv) and node + npm (Debian's nodejs and npm: scripts/install-test-deps.sh);
# kubectl (for `kubectl kustomize`) comes from scripts/install-test-deps.sh too.
# Idempotent: a second run only checks the stamps. Prints the venv's python.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
venv="$root/.cache/kubernetes-venv"
npmdir="$root/.cache/kubernetes-npm"
py_want=(kubernetes-validate==1.37.0 PyYAML==6.0.3)

"$root/scripts/pinned-venv.sh" "$venv" "${py_want[@]}"
"$venv/bin/python" -c 'import kubernetes_validate, yaml'

stamp="$npmdir/installed-$(sha256sum <"$root/deploy/kubernetes/tests/package-lock.json" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  command -v npm >/dev/null || { echo "npm is required: run scripts/install-test-deps.sh (Debian's nodejs and npm)" >&2; exit 1; }
  rm -rf "$npmdir"
  mkdir -p "$npmdir"
  cp "$root/deploy/kubernetes/tests/package.json" "$root/deploy/kubernetes/tests/package-lock.json" "$npmdir/"
  (cd "$npmdir" && npm ci --silent --no-audit --no-fund >&2)
  touch "$stamp"
fi
echo "$venv/bin/python"
