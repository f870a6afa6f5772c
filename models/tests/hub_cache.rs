//! A hub id resolves through a Hugging Face cache directory laid out by the test (no
//! network): HF_HOME + HF_HUB_OFFLINE=1, by branch and by commit, and a missing file is
//! an error naming the repository and the file. One test in this binary because it sets
//! process-wide environment variables.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::tiny;

#[test]
fn hub_id_loads_from_local_cache_offline() {
    let home = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo_dir = home.path().join("hub/models--wick-test--tiny-qwen2");
    let snap = repo_dir.join("snapshots").join(commit);
    let cfg = tiny::config("qwen2");
    tiny::write_checkpoint(&snap, &cfg, &tiny::weights(&cfg, 11), 2);
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), commit).unwrap();
    // SAFETY (edition 2021: set_var is safe): this test binary runs one test, so no other
    // thread reads the environment concurrently.
    std::env::set_var("HF_HOME", home.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");

    let by_branch = tiny::load("wick-test/tiny-qwen2").unwrap();
    assert!(by_branch.source.contains("wick-test/tiny-qwen2@main"));
    assert!(by_branch.model.config().attention_bias);
    let by_commit = tiny::load(&format!("wick-test/tiny-qwen2@{commit}")).unwrap();
    assert_eq!(by_commit.model.config(), by_branch.model.config());

    let missing = tiny::load("wick-test/not-there").err().unwrap().to_string();
    assert!(
        missing.contains("config.json") && missing.contains("wick-test/not-there"),
        "{missing}"
    );

    std::fs::remove_file(snap.join("tokenizer.json")).unwrap();
    let msg = tiny::load("wick-test/tiny-qwen2")
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("tokenizer.json") && msg.contains("HF_HUB_OFFLINE"),
        "{msg}"
    );
}
