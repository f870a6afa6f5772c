#!/usr/bin/env bash
# The test command: fetches the test model, the Python `openai` client and Ansible (once), installs
# the Debian packages the deploy test starts (sshd, supervisord, systemd-analyze) if missing, then
# checks formatting, lints, rustdoc (warnings are errors) and runs every test of the workspace.
# The fetching and installing runs while cargo checks and builds; the tests wait for it.
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache
setup_log=.cache/test-setup.log
(
  ./scripts/fetch-test-model.sh >/dev/null
  ./scripts/python-venv.sh
  ./scripts/fetch-qwen3-template.sh >/dev/null
  ./scripts/ansible-venv.sh >/dev/null
  ./deploy/prometheus/tests/venv.sh >/dev/null
  ./scripts/install-test-deps.sh
  ./deploy/kubernetes/tests/setup.sh >/dev/null
) >"$setup_log" 2>&1 &
setup=$!
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
RUSTDOCFLAGS='-D warnings' cargo doc --workspace --no-deps --quiet
cargo test --workspace --no-run
if ! wait "$setup"; then
  echo "test setup failed (fetching the model, the venvs or the Debian packages):" >&2
  cat "$setup_log" >&2
  exit 1
fi
cat "$setup_log"
cargo test --workspace
