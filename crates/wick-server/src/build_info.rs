//! Which wick is running: the build's identity ([`BuildInfo`]: version, git commit,
//! compiled-in features), which the binary bakes in and hands to [`crate::run`], and the
//! release a deployment installed it as ([`release_name`]). `GET /version` answers them
//! as a [`VersionInfo`]; `wick serve` logs them once at start-up.
//!
//! The release comes from `--release-name` (env `WICK_RELEASE_NAME`), else from the
//! `"release"` string of `manifest.json` in the parent of the directory holding the
//! executable: a release is installed as `/opt/wick/releases/<release>/bin/wick` beside
//! `/opt/wick/releases/<release>/manifest.json` (on Linux the executable's path has its
//! symlinks resolved, so `/opt/wick/current/bin/wick` finds the release it points to).
//! No manifest: no release (`null`). A manifest that cannot be read, does not parse or
//! has no `"release"` string is an error naming the file.

use serde::Serialize;
use std::path::{Path, PathBuf};

/// The release manifest's file name, in the release directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// What this build of wick is (fixed when it was compiled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// The crate version (`0.1.0`).
    pub version: String,
    /// The full git commit id it was built from, or `unknown`.
    pub git_sha: String,
    /// Compiled-in features: `cuda` or `cpu`, and `fault-injection` in test builds.
    pub features: Vec<String>,
}

impl Default for BuildInfo {
    /// This crate's version, commit `unknown`, no features (for tests that need a state).
    fn default() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").into(),
            git_sha: "unknown".into(),
            features: vec![],
        }
    }
}

impl BuildInfo {
    /// The first 12 digits of the commit id (all of `unknown`).
    pub fn short_sha(&self) -> &str {
        self.git_sha.get(..12).unwrap_or(&self.git_sha)
    }
}

/// The body of `GET /version`: `{"version", "git_sha", "features", "release"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionInfo {
    /// The crate version.
    pub version: String,
    /// The full git commit id, or `unknown`.
    pub git_sha: String,
    /// Compiled-in features.
    pub features: Vec<String>,
    /// The deployment's release name; `None` (null) outside a release directory.
    pub release: Option<String>,
}

impl VersionInfo {
    /// A build installed as `release`.
    pub fn new(build: &BuildInfo, release: Option<String>) -> Self {
        Self {
            version: build.version.clone(),
            git_sha: build.git_sha.clone(),
            features: build.features.clone(),
            release,
        }
    }
}

impl Default for VersionInfo {
    fn default() -> Self {
        Self::new(&BuildInfo::default(), None)
    }
}

/// Why the release name could not be found.
#[derive(Debug, thiserror::Error)]
#[error("release manifest {}: {reason}", path.display())]
pub struct ManifestError {
    /// The manifest.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// The release: `flag` when given and not empty, else the manifest's beside `exe`
/// ([`manifest_path`]), else `None`.
pub fn release_name(
    flag: Option<&str>,
    exe: Option<&Path>,
) -> Result<Option<String>, ManifestError> {
    if let Some(name) = flag.map(str::trim).filter(|s| !s.is_empty()) {
        return Ok(Some(name.to_string()));
    }
    match exe.and_then(manifest_path) {
        Some(path) => read_manifest(&path),
        None => Ok(None),
    }
}

/// Where the manifest of the release holding executable `exe` would be:
/// `<exe's directory>/../manifest.json`.
pub fn manifest_path(exe: &Path) -> Option<PathBuf> {
    Some(exe.parent()?.parent()?.join(MANIFEST_FILE))
}

/// The `"release"` string of the manifest at `path`; `None` when there is no such file.
pub fn read_manifest(path: &Path) -> Result<Option<String>, ManifestError> {
    let error = |reason: String| ManifestError {
        path: path.to_path_buf(),
        reason,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(error(e.to_string())),
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| error(format!("not valid JSON: {e}")))?;
    match v.get("release").and_then(|r| r.as_str()) {
        Some(r) if !r.trim().is_empty() => Ok(Some(r.to_string())),
        _ => Err(error("no non-empty \"release\" string".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `<root>/releases/<name>/bin/wick`, with `manifest` (if any) as its manifest.
    fn release(root: &Path, name: &str, manifest: Option<&str>) -> PathBuf {
        let dir = root.join("releases").join(name);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        if let Some(m) = manifest {
            std::fs::write(dir.join(MANIFEST_FILE), m).unwrap();
        }
        dir.join("bin/wick")
    }

    #[test]
    fn the_flag_wins_then_the_manifest_then_none() {
        let root = tempfile::tempdir().unwrap();
        let exe = release(
            root.path(),
            "B",
            Some(r#"{"release": "B", "git_sha": "x"}"#),
        );
        assert_eq!(
            release_name(Some("A"), Some(&exe)).unwrap().as_deref(),
            Some("A")
        );
        assert_eq!(
            release_name(Some(" "), Some(&exe)).unwrap().as_deref(),
            Some("B")
        );
        assert_eq!(
            release_name(None, Some(&exe)).unwrap().as_deref(),
            Some("B")
        );
        let bare = release(root.path(), "C", None);
        assert_eq!(release_name(None, Some(&bare)).unwrap(), None);
        assert_eq!(release_name(None, None).unwrap(), None);
        assert_eq!(release_name(None, Some(Path::new("/wick"))).unwrap(), None);
    }

    #[test]
    fn a_bad_manifest_is_an_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("junk", "{not json"),
            ("number", r#"{"release": 3}"#),
            ("empty", r#"{"release": ""}"#),
            ("absent", r#"{"version": "0.1.0"}"#),
        ] {
            let exe = release(root.path(), name, Some(text));
            let e = release_name(None, Some(&exe)).unwrap_err().to_string();
            assert!(
                e.contains(&format!("releases/{name}/{MANIFEST_FILE}")),
                "{name}: {e}"
            );
        }
    }

    #[test]
    fn version_info_has_exactly_the_documented_fields() {
        let build = BuildInfo {
            version: "0.1.0".into(),
            git_sha: "0123456789abcdef0123456789abcdef01234567".into(),
            features: vec!["cpu".into()],
        };
        assert_eq!(build.short_sha(), "0123456789ab");
        let v = serde_json::to_value(VersionInfo::new(&build, None)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "version": "0.1.0",
                "git_sha": "0123456789abcdef0123456789abcdef01234567",
                "features": ["cpu"],
                "release": null,
            })
        );
        assert_eq!(BuildInfo::default().short_sha(), "unknown");
    }
}
