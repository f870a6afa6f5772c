//! The official `openai` Python package (installed by scripts/python-venv.sh into
//! .cache/venv) drives the server: sync and async clients, chat and completions,
//! streaming with include_usage, errors as the SDK's exception types; structured output
//! and constrained tool calls (`parse` with a Pydantic model, json_schema, vLLM's
//! `structured_outputs`/`guided_*`, `tool_choice` required and named, streamed).

use crate::support::Server;
use std::path::PathBuf;

fn python() -> PathBuf {
    let p = std::env::var("WICK_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| wick_test_support::repo_root().join(".cache/venv/bin/python"));
    assert!(
        p.is_file(),
        "{} is missing: run scripts/python-venv.sh (or set WICK_PYTHON to a python with `openai`)",
        p.display()
    );
    p
}

/// Runs tests/python/`script` with `args`; it must exit 0 and print `passed`.
pub async fn run_script(script: &str, args: &[&std::ffi::OsStr], passed: &str) {
    let path = wick_test_support::repo_root()
        .join("tests/python")
        .join(script);
    let out = tokio::process::Command::new(python())
        .arg(path)
        .args(args)
        .output()
        .await
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(passed),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_python_client() {
    let server = Server::start(&[]).await;
    let base = server.url("/v1");
    run_script(
        "openai_client.py",
        &[base.as_ref()],
        "openai client checks passed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_python_client_structured_output() {
    let server = Server::start(&[]).await;
    let base = server.url("/v1");
    run_script(
        "structured_client.py",
        &[base.as_ref()],
        "structured client checks passed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_python_client_selects_lora_adapters_by_model() {
    let golden = wick_test_support::tiny::TinyGolden::load();
    let m = golden.model("qwen3-added-tokens");
    let flags = crate::lora::lora_flags(m);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = Server::start_model(&m.dir(), "base", &flags).await;
    let base = server.url("/v1");
    let golden_json = wick_test_support::tiny::tiny_dir().join("golden.json");
    let args = [base.as_ref(), golden_json.as_os_str(), m.name.as_ref()];
    run_script("lora_client.py", &args, "openai lora client checks passed").await;
}
