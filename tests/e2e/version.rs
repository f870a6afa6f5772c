//! Build identity: `wick --version` names the version, the commit and the features;
//! `GET /version` (open, like the probes) answers them with the release, from
//! `--release-name` or from manifest.json of the release directory the executable is
//! installed in (found through a `current` symlink too); a manifest that does not parse
//! stops start-up, naming it.

use crate::support::Server;
use std::path::{Path, PathBuf};
use std::process::Command;

const WICK: &str = env!("CARGO_BIN_EXE_wick");

/// The commit the binary should carry: `git rev-parse HEAD` of the repository, unless
/// the build was told one (`WICK_GIT_SHA`) or there is no git.
fn expected_sha() -> Option<String> {
    if std::env::var("WICK_GIT_SHA").is_ok_and(|s| !s.is_empty()) {
        return None;
    }
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(wick_test_support::repo_root())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn is_sha(s: &str) -> bool {
    s == "unknown" || (s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[test]
fn wick_version_names_version_commit_and_features() {
    let out = Command::new(WICK).arg("--version").output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    let sha = expected_sha().map(|s| s[..12].to_string());
    let want_sha = sha.as_deref().unwrap_or("");
    // Test builds carry the fault-injection flag (wick's dev-dependencies turn it on).
    let want = format!(
        "wick {} (git {want_sha}, features: cpu, fault-injection)\n",
        env!("CARGO_PKG_VERSION")
    );
    if sha.is_some() {
        assert_eq!(line, want);
    } else {
        assert!(line.starts_with("wick 0.1.0 (git "), "{line}");
    }
    assert!(!line.contains("release"), "{line}");
}

/// `<root>/releases/<name>/bin/wick` (a hard link to the test binary, or a copy) with
/// `manifest` as its manifest.json, and `<root>/current -> releases/<name>`.
fn install_release(root: &Path, name: &str, manifest: &str) -> PathBuf {
    let dir = root.join("releases").join(name);
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let exe = dir.join("bin/wick");
    if std::fs::hard_link(WICK, &exe).is_err() {
        std::fs::copy(WICK, &exe).unwrap();
    }
    std::fs::write(dir.join("manifest.json"), manifest).unwrap();
    let current = root.join("current");
    let _ = std::fs::remove_file(&current);
    std::os::unix::fs::symlink(Path::new("releases").join(name), &current).unwrap();
    current.join("bin/wick")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_version_reports_the_build_and_the_release() {
    let golden = wick_test_support::tiny::TinyGolden::load();
    let model = golden.model("llama3-tied").dir();
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let manifest = r#"{"release": "20250101-abc", "git_sha": "ignored here"}"#;
    let exe = install_release(root.path(), "20250101-abc", manifest);
    let check = |v: &serde_json::Value, release: serde_json::Value| {
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["version", "git_sha", "features", "release"], "{v}");
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        let sha = v["git_sha"].as_str().unwrap();
        assert!(is_sha(sha), "{v}");
        if let Some(want) = expected_sha() {
            assert_eq!(sha, want);
        }
        assert_eq!(v["features"], serde_json::json!(["cpu", "fault-injection"]));
        assert_eq!(v["release"], release, "{v}");
    };

    // Through the `current` symlink: the manifest of the release it points to. Open to
    // clients without the API key, like the probes.
    let server = Server::launch(&exe, &model, "tiny", &["--api-key", "k"], None).await;
    let r = server.get("/version").await;
    assert_eq!(r.status(), 200);
    check(&r.json().await.unwrap(), serde_json::json!("20250101-abc"));
    let logs = server.logs.lock().unwrap().join("\n");
    assert!(logs.contains("release=20250101-abc"), "{logs}");
    drop(server);

    // The flag wins over the manifest.
    let flag = ["--release-name", "blue"];
    let server = Server::launch(&exe, &model, "tiny", &flag, None).await;
    check(
        &server.get_json("/version").await,
        serde_json::json!("blue"),
    );
    drop(server);

    // Outside a release directory: null.
    let server = Server::start_model(&model, "tiny", &[]).await;
    check(&server.get_json("/version").await, serde_json::Value::Null);
}

#[test]
fn a_manifest_that_does_not_parse_stops_start_up_naming_it() {
    let golden = wick_test_support::tiny::TinyGolden::load();
    let model = golden.model("llama3-tied").dir();
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let exe = install_release(root.path(), "broken", "{\"release\": ");
    let out = Command::new(&exe)
        .args(["serve", "--port", "0", "--model"])
        .arg(&model)
        .env_remove("WICK_RELEASE_NAME")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("releases/broken/manifest.json") && err.contains("not valid JSON"),
        "{err}"
    );
}
