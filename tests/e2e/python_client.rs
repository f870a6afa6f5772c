//! The official `openai` Python package (installed by scripts/python-venv.sh into
//! .cache/venv) drives the server: sync and async clients, chat and completions,
//! streaming with include_usage, errors as the SDK's exception types.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_python_client() {
    let python = python();
    let server = Server::start(&[]).await;
    let script = wick_test_support::repo_root().join("tests/python/openai_client.py");
    let base = server.url("/v1");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(base)
        .output()
        .await
        .expect("run python");
    assert!(
        out.status.success(),
        "openai client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("openai client checks passed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_python_client_selects_lora_adapters_by_model() {
    let python = python();
    let golden = wick_test_support::tiny::TinyGolden::load();
    let m = golden.model("qwen3-added-tokens");
    let mut flags = vec!["--lora-modules".to_string()];
    for a in &m.adapters {
        flags.push(format!("{}={}", a.name, m.adapter_dir(&a.name).display()));
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = Server::start_model(&m.dir(), "base", &flags).await;
    let script = wick_test_support::repo_root().join("tests/python/lora_client.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(server.url("/v1"))
        .arg(wick_test_support::tiny::tiny_dir().join("golden.json"))
        .arg(&m.name)
        .output()
        .await
        .expect("run python");
    assert!(
        out.status.success(),
        "openai lora client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("openai lora client checks passed"));
}
