//! Bakes the git commit wick is built from into the binary as `WICK_GIT_SHA`: the
//! environment variable of that name when set (release builds from a source tree without
//! `.git`), else `git rev-parse HEAD` of the repository, else `unknown`.
//!
//! Cargo reruns this when HEAD or the checked-out branch's ref moves (a commit, a
//! checkout). It lives in the `wick` crate only, so a commit recompiles the small binary
//! crate and relinks, never candle or the model code.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=WICK_GIT_SHA");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let sha = match std::env::var("WICK_GIT_SHA") {
        Ok(s) if !s.trim().is_empty() => {
            let s = s.trim().to_ascii_lowercase();
            if !is_full_sha(&s) {
                panic!("WICK_GIT_SHA={s:?}: expected a full 40-hex-digit commit id");
            }
            s
        }
        _ => {
            watch_git(&dir);
            git(&dir, &["rev-parse", "HEAD"])
                .filter(|s| is_full_sha(s))
                .unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env=WICK_GIT_SHA={sha}");
}

fn is_full_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `git ARGS` run in `dir`: its trimmed output, or `None` (no git, not a repository).
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Tells cargo to rerun when HEAD or the branch it names changes. Only existing paths are
/// named (a missing one would make cargo rerun on every build).
fn watch_git(dir: &Path) {
    let path = |args: &[&str]| git(dir, args).map(|p| dir.join(p));
    let (Some(git_dir), Some(common)) = (
        path(&["rev-parse", "--git-dir"]),
        path(&["rev-parse", "--git-common-dir"]),
    ) else {
        return;
    };
    let mut watched = vec![git_dir.join("HEAD")];
    let head = std::fs::read_to_string(git_dir.join("HEAD")).unwrap_or_default();
    if let Some(branch) = head.trim().strip_prefix("ref: ") {
        let loose = common.join(branch);
        if loose.is_file() {
            watched.push(loose);
        } else {
            // A packed ref: watch the pack, and the branch directory where a commit
            // writes the branch's loose ref.
            watched.push(common.join("packed-refs"));
            if let Some(parent) = loose.parent() {
                watched.push(parent.to_path_buf());
            }
        }
    }
    for p in watched.into_iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}
