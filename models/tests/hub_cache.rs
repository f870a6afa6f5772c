//! A hub id resolves through a Hugging Face cache directory laid out by the test (no
//! network): HF_HOME + HF_HUB_OFFLINE=1, by branch and by commit, and a missing file is
//! an error naming the repository and the file; a LoRA adapter by hub id the same way.
//! One test in this binary because it sets process-wide environment variables.
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

    // A LoRA adapter by hub id, from the same cache.
    let golden = wick_test_support::tiny::TinyGolden::load();
    let m = golden.model("qwen2-yarn");
    let lora_dir = home.path().join("hub/models--wick-test--tiny-lora");
    let lora_snap = lora_dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&lora_snap).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(m.adapter_dir("all-r8").join(f), lora_snap.join(f)).unwrap();
    }
    std::fs::create_dir_all(lora_dir.join("refs")).unwrap();
    std::fs::write(lora_dir.join("refs/main"), commit).unwrap();
    let base = m.load(candle_core::DType::F32).model;
    let adapter = wick_models::LoraAdapter::load("wick-test/tiny-lora", base.config(), 64).unwrap();
    assert_eq!((adapter.rank, adapter.target_modules.len()), (8, 7));
    let e = wick_models::LoraAdapter::load("wick-test/no-lora", base.config(), 64)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("adapter_config.json") && e.contains("wick-test/no-lora"),
        "{e}"
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
