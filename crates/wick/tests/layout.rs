//! The workspace's shape, checked instead of remembered: dependencies point one way
//! (`wick -> {wick-server, wick-bench} -> wick-engine -> wick-models -> wick-kernels ->
//! wick-core`), `cfg(feature = "cuda")` lives only in wick-kernels, no source file grows
//! past 600 lines, and every path README.md names exists.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Rank in the one-way chain: a crate may depend (normally, not dev) only on crates of a
/// lower rank. wick-server and wick-bench share a rank, so neither depends on the other.
fn rank(name: &str) -> Option<u32> {
    Some(match name {
        "wick-core" => 0,
        "wick-kernels" => 1,
        "wick-models" => 2,
        "wick-engine" => 3,
        "wick-server" | "wick-bench" => 4,
        "wick" => 5,
        _ => return None,
    })
}

#[test]
fn dependencies_point_one_way() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let mut edges = 0;
    let mut seen = Vec::new();
    for p in packages {
        let name = p["name"].as_str().unwrap();
        seen.push(name.to_string());
        if name == "wick-test-support" {
            continue; // dev-only: it may use anything (checked below: nothing ships it)
        }
        for d in p["dependencies"].as_array().unwrap() {
            let dep = d["name"].as_str().unwrap();
            let normal = d["kind"].is_null();
            if !dep.starts_with("wick") || !normal {
                continue;
            }
            assert_ne!(
                dep, "wick-test-support",
                "{name} depends on the test-support crate outside dev-dependencies"
            );
            let (Some(from), Some(to)) = (rank(name), rank(dep)) else {
                panic!("{name} -> {dep}: a workspace crate outside the known chain");
            };
            assert!(
                to < from,
                "{name} -> {dep} points the wrong way (wick -> server/bench -> engine -> \
                 models -> kernels -> core)"
            );
            edges += 1;
        }
    }
    for name in [
        "wick-core",
        "wick-kernels",
        "wick-models",
        "wick-engine",
        "wick-server",
        "wick-bench",
        "wick",
    ] {
        assert!(
            seen.iter().any(|s| s == name),
            "{name} not in the workspace"
        );
    }
    assert!(edges >= 6, "only {edges} workspace dependency edges found");
}

/// Every `.rs` file of the workspace, outside build output and caches.
fn rust_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                if !(name.starts_with("target") || name.starts_with('.')) {
                    walk(&path, out);
                }
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &mut out);
    assert!(out.len() > 50, "found only {} .rs files", out.len());
    out
}

#[test]
fn cuda_cfg_lives_only_in_wick_kernels() {
    let kernels = root().join("kernels");
    let mut found_in_kernels = 0;
    let mut outside = Vec::new();
    for path in rust_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        let hits = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .filter(|l| {
                let squeezed: String = l.chars().filter(|c| !c.is_whitespace()).collect();
                squeezed.contains("feature=\"cuda\"")
            })
            .count();
        if hits == 0 {
            continue;
        }
        if path.starts_with(&kernels) {
            found_in_kernels += hits;
        } else {
            outside.push(path.display().to_string());
        }
    }
    assert!(
        outside.is_empty(),
        "cfg(feature = \"cuda\") outside wick-kernels: {outside:?}"
    );
    assert!(
        found_in_kernels > 0,
        "the CUDA paths of wick-kernels are gone?"
    );
}

#[test]
fn no_source_file_over_600_lines() {
    let long: Vec<String> = rust_files()
        .into_iter()
        .filter_map(|p| {
            let n = std::fs::read_to_string(&p).unwrap().lines().count();
            (n > 600).then(|| format!("{} ({n} lines)", p.display()))
        })
        .collect();
    assert!(long.is_empty(), "files over 600 lines: {long:?}");
}

#[test]
fn every_path_the_readme_names_exists() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let tops = [
        "crates/", "models/", "kernels/", "tests/", "scripts/", "deploy/", "docs/", ".ci/",
    ];
    let mut checked = 0;
    let mut missing = Vec::new();
    for (i, quoted) in readme.split('`').enumerate() {
        // Odd pieces are inside backticks.
        // Skip prose and placeholders such as models/src/<family>.rs.
        if i % 2 == 0 || quoted.contains([' ', '<']) || !tops.iter().any(|t| quoted.starts_with(t))
        {
            continue;
        }
        let path = quoted.trim_end_matches('/');
        // Globs such as kernels/*.cu name a folder's files: check the folder.
        let path = path.split('*').next().unwrap().trim_end_matches('/');
        checked += 1;
        if !root().join(path).exists() {
            missing.push(quoted.to_string());
        }
    }
    assert!(checked >= 10, "README names only {checked} paths");
    assert!(
        missing.is_empty(),
        "README names missing paths: {missing:?}"
    );
}
