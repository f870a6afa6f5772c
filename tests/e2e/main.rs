//! End-to-end tests: a real `wick serve` process on loopback with SmolLM2, driven by
//! real clients (reqwest; the official `openai` Python package), over HTTP and HTTPS.
//! Compiled as the `wick` package's integration test so that the binary is built first
//! (`CARGO_BIN_EXE_wick`).
//!
//! Needs the model (scripts/fetch-test-model.sh) and, for the Python client, the venv
//! (scripts/python-venv.sh); both are set up by scripts/test.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod bench;
mod deploy;
mod errors;
mod failover;
mod faults;
mod fetch;
mod generate;
mod haproxy;
mod kubernetes;
mod lifecycle;
mod lora;
mod monitoring;
mod python_client;
mod support;
mod tls;
mod tools_qwen3;
mod version;
