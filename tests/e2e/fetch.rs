//! `wick fetch` against a Hugging Face cache laid out by the test (HF_HOME,
//! HF_HUB_OFFLINE=1, no network; as models/tests/hub_cache.rs): a good model and its LoRA
//! adapter by hub id check out, one `ok` line each, from HF_HOME or HF_HUB_CACHE; a
//! tensor missing from the weights, a
//! truncated weights file, or a missing tokenizer fail, naming what is wrong.

use std::path::Path;
use std::process::{Command, Output};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// `repo` (org/name) in the hub cache under `home`, its snapshot a copy of the files of
/// `src` (no subdirectories), `refs/main` pointing at it. Returns the snapshot directory.
fn cache_repo(home: &Path, repo: &str, src: &Path) -> std::path::PathBuf {
    let dir = home
        .join("hub")
        .join(format!("models--{}", repo.replace('/', "--")));
    let snap = dir.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snap).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let to = snap.join(path.file_name().unwrap());
            std::fs::write(&to, std::fs::read(&path).unwrap()).unwrap();
        }
    }
    std::fs::create_dir_all(dir.join("refs")).unwrap();
    std::fs::write(dir.join("refs/main"), COMMIT).unwrap();
    snap
}

/// `wick fetch ARGS` with only the cache under `home` (HF_HOME), offline.
fn fetch(home: &Path, args: &[&str]) -> Output {
    fetch_env(args, &[("HF_HOME", home)])
}

/// `wick fetch ARGS` offline with the hub variables `env` (the others unset).
fn fetch_env(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wick"));
    cmd.arg("fetch").args(args);
    for var in ["HF_HOME", "HF_HUB_CACHE", "HF_TOKEN"] {
        cmd.env_remove(var);
    }
    for (var, value) in env {
        cmd.env(var, value);
    }
    cmd.env("HF_HUB_OFFLINE", "1")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Renames tensor `from` in the header of safetensors file `path` (same length, so the
/// offsets stay valid): the file is well-formed but `from` is missing.
fn rename_tensor(path: &Path, from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    let quoted = format!("\"{from}\"");
    assert_eq!(header.matches(&quoted).count(), 1, "{from} in {header}");
    let renamed = header.replace(&quoted, &format!("\"{to}\""));
    bytes[8..8 + n].copy_from_slice(renamed.as_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn wick_fetch_checks_a_cached_hub_model_and_its_adapter() {
    let golden = wick_test_support::tiny::TinyGolden::load();
    let m = golden.model("qwen2-yarn");
    let home = tempfile::tempdir().unwrap();
    let snap = cache_repo(home.path(), "wick-test/tiny-qwen2", &m.dir());
    cache_repo(home.path(), "wick-test/tiny-lora", &m.adapter_dir("all-r8"));

    let args = [
        "wick-test/tiny-qwen2",
        "--lora-modules",
        "sql=wick-test/tiny-lora",
    ];
    let out = fetch(home.path(), &args);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.iter().all(|l| l.starts_with("ok ")), "{stdout}");
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        let want = format!("ok file {}", snap.join(file).display());
        assert!(lines.contains(&want.as_str()), "{want}:\n{stdout}");
    }
    for want in [
        "ok config: Qwen2, 2 layers",
        "ok tokenizer: ",
        "ok weights: every tensor present",
        "ok chat template: compiled",
        "ok lora sql=wick-test/tiny-lora: rank 8, 7 target modules",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(want)),
            "{want}:\n{stdout}"
        );
    }
    assert_eq!(
        lines.last(),
        Some(&"ok wick-test/tiny-qwen2 is ready to serve")
    );

    // HF_HUB_CACHE names the cache directory itself (HF_HOME elsewhere).
    let elsewhere = tempfile::tempdir().unwrap();
    let hub = home.path().join("hub");
    let env = [
        ("HF_HOME", elsewhere.path()),
        ("HF_HUB_CACHE", hub.as_path()),
    ];
    let out = fetch_env(&["wick-test/tiny-qwen2"], &env);
    assert!(out.status.success(), "{:?}", text(&out));

    // An adapter that is not in the cache: an error naming it.
    let out = fetch(
        home.path(),
        &[
            "wick-test/tiny-qwen2",
            "--lora-modules",
            "x=wick-test/no-lora",
        ],
    );
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("x=wick-test/no-lora") && stderr.contains("adapter_config.json"),
        "{stderr}"
    );
}

#[test]
fn wick_fetch_fails_naming_a_missing_tensor_a_truncated_file_or_a_missing_tokenizer() {
    let golden = wick_test_support::tiny::TinyGolden::load();
    let src = golden.model("qwen2-yarn").dir();
    let home = tempfile::tempdir().unwrap();

    let snap = cache_repo(home.path(), "wick-test/missing-tensor", &src);
    let tensor = "model.layers.1.mlp.down_proj.weight";
    rename_tensor(
        &snap.join("model.safetensors"),
        tensor,
        "model.layers.1.mlp.down_proj.weighX",
    );
    let out = fetch(home.path(), &["wick-test/missing-tensor"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(stderr.contains(tensor), "{stderr}");
    assert!(!stdout.contains("ready to serve"), "{stdout}");

    let snap = cache_repo(home.path(), "wick-test/truncated", &src);
    let weights = snap.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 1000]).unwrap();
    let out = fetch(home.path(), &["wick-test/truncated"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains(&weights.display().to_string()), "{stderr}");

    let snap = cache_repo(home.path(), "wick-test/no-tokenizer", &src);
    std::fs::remove_file(snap.join("tokenizer.json")).unwrap();
    let out = fetch(home.path(), &["wick-test/no-tokenizer"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("tokenizer.json") && stderr.contains("wick-test/no-tokenizer"),
        "{stderr}"
    );
}
