#!/usr/bin/env bash
# The test command: fetches the test model, the Python `openai` client and Ansible (once), installs
# the Debian packages the deploy test starts (sshd, supervisord, systemd-analyze) if missing, then
# checks formatting, lints, rustdoc (warnings are errors) and runs every test of the workspace.
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-test-model.sh >/dev/null
./scripts/python-venv.sh
./scripts/fetch-qwen3-template.sh >/dev/null
./scripts/ansible-venv.sh >/dev/null
./deploy/prometheus/tests/venv.sh >/dev/null
./scripts/install-test-deps.sh
./deploy/kubernetes/tests/setup.sh >/dev/null
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
RUSTDOCFLAGS='-D warnings' cargo doc --workspace --no-deps --quiet
cargo test --workspace
