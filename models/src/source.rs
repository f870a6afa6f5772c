//! Model-source resolution: one `--model` string becomes local files.
//!
//! - an existing directory: a Hugging Face checkpoint laid out on disk;
//! - an existing `*.gguf` file;
//! - otherwise `org/name[@revision]`: a Hugging Face hub id, fetched through hf-hub into
//!   its cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`; token from `HF_TOKEN` or
//!   `$HF_HOME/token`; `HF_ENDPOINT` for a mirror). With
//!   `HF_HUB_OFFLINE=1` only the local cache is read, and a missing file is an error naming
//!   the repository, revision and file.

use crate::{ModelError, Result};
use std::path::{Path, PathBuf};

/// Where a model comes from, before any file is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A local Hugging Face directory.
    Dir(PathBuf),
    /// A local GGUF file.
    Gguf(PathBuf),
    /// A hub repository and revision (default "main").
    Hub {
        /// `org/name`.
        repo: String,
        /// Branch, tag or commit.
        revision: String,
    },
}

/// The files of a Hugging Face checkpoint, resolved to local paths.
#[derive(Debug, Clone)]
pub struct HfFiles {
    /// config.json
    pub config: PathBuf,
    /// model.safetensors, or every shard listed in model.safetensors.index.json.
    pub weights: Vec<PathBuf>,
    /// tokenizer.json
    pub tokenizer: PathBuf,
    /// tokenizer_config.json, if present.
    pub tokenizer_config: Option<PathBuf>,
    /// generation_config.json, if present.
    pub generation_config: Option<PathBuf>,
    /// chat_template.jinja (where transformers v5 saves the chat template), if present.
    pub chat_template: Option<PathBuf>,
}

impl ModelSource {
    /// Interprets a `--model` value.
    pub fn parse(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(Self::Dir(path.to_path_buf()));
        }
        if path.is_file() {
            if spec.to_ascii_lowercase().ends_with(".gguf") {
                return Ok(Self::Gguf(path.to_path_buf()));
            }
            return Err(ModelError::invalid(
                "model",
                format!("{spec} is a file but not a .gguf; give a checkpoint directory, a .gguf file or a hub id"),
            ));
        }
        let (repo, revision) = match spec.split_once('@') {
            Some((r, rev)) => (r, rev),
            None => (spec, "main"),
        };
        let valid_part = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !s.starts_with('.')
        };
        match repo.split_once('/') {
            Some((org, name)) if valid_part(org) && valid_part(name) && !revision.is_empty() => Ok(Self::Hub {
                repo: repo.to_string(),
                revision: revision.to_string(),
            }),
            _ => Err(ModelError::Missing(format!(
                "model {spec:?}: no such directory or .gguf file, and not a hub id of the form org/name[@revision]"
            ))),
        }
    }
}

/// True when `HF_HUB_OFFLINE` asks for the local cache only.
pub fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// The hub cache directory: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub` (as huggingface_hub reads them).
pub fn hub_cache_dir() -> PathBuf {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => hf_hub::Cache::from_env().path().clone(),
    }
}

/// Something that turns a file name of a checkpoint into a local path.
trait FileSource {
    /// `Ok(None)` when the file does not exist there.
    fn get(&self, file: &str) -> Result<Option<PathBuf>>;
    /// Names the source in messages.
    fn describe(&self) -> String;
}

struct DirSource(PathBuf);

impl FileSource for DirSource {
    fn get(&self, file: &str) -> Result<Option<PathBuf>> {
        let p = self.0.join(file);
        Ok(p.is_file().then_some(p))
    }
    fn describe(&self) -> String {
        format!("directory {}", self.0.display())
    }
}

/// The hub's local cache, read directly (offline mode).
struct HubCacheSource {
    cache: PathBuf,
    repo: String,
    revision: String,
}

impl HubCacheSource {
    fn snapshot(&self) -> Option<PathBuf> {
        let repo_dir = self
            .cache
            .join(format!("models--{}", self.repo.replace('/', "--")));
        let commit = std::fs::read_to_string(repo_dir.join("refs").join(&self.revision))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| self.revision.clone());
        let dir = repo_dir.join("snapshots").join(commit);
        dir.is_dir().then_some(dir)
    }
}

impl FileSource for HubCacheSource {
    fn get(&self, file: &str) -> Result<Option<PathBuf>> {
        Ok(self
            .snapshot()
            .map(|d| d.join(file))
            .filter(|p| p.is_file()))
    }
    fn describe(&self) -> String {
        format!(
            "hub repository {}@{} in the local cache {} (HF_HUB_OFFLINE is set)",
            self.repo,
            self.revision,
            self.cache.display()
        )
    }
}

/// The hub through hf-hub: the cache first, then a download.
struct HubApiSource {
    api: hf_hub::api::sync::ApiRepo,
    repo: String,
    revision: String,
}

impl FileSource for HubApiSource {
    fn get(&self, file: &str) -> Result<Option<PathBuf>> {
        match self.api.get(file) {
            Ok(p) => Ok(Some(p)),
            Err(hf_hub::api::sync::ApiError::RequestError(e))
                if matches!(*e, ureq::Error::Status(404, _)) =>
            {
                Ok(None)
            }
            Err(e) => Err(ModelError::Hub(format!(
                "{}@{}: {file}: {e}",
                self.repo, self.revision
            ))),
        }
    }
    fn describe(&self) -> String {
        format!("hub repository {}@{}", self.repo, self.revision)
    }
}

/// Where the files of a non-GGUF source are read from.
fn file_source(source: &ModelSource) -> Result<Box<dyn FileSource>> {
    match source {
        ModelSource::Dir(d) => Ok(Box::new(DirSource(d.clone()))),
        ModelSource::Hub { repo, revision } if hub_offline() => Ok(Box::new(HubCacheSource {
            cache: hub_cache_dir(),
            repo: repo.clone(),
            revision: revision.clone(),
        })),
        ModelSource::Hub { repo, revision } => {
            let token = std::env::var("HF_TOKEN")
                .ok()
                .or_else(|| hf_hub::Cache::from_env().token());
            let mut builder =
                hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(hub_cache_dir()));
            if let Some(endpoint) = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()) {
                builder = builder.with_endpoint(endpoint);
            }
            let api = builder
                .with_token(token)
                .build()
                .map_err(|e| ModelError::Hub(e.to_string()))?;
            let api = api.repo(hf_hub::Repo::with_revision(
                repo.clone(),
                hf_hub::RepoType::Model,
                revision.clone(),
            ));
            Ok(Box::new(HubApiSource {
                api,
                repo: repo.clone(),
                revision: revision.clone(),
            }))
        }
        ModelSource::Gguf(p) => Err(ModelError::invalid(
            "model",
            format!("{} is a GGUF file, not a checkpoint directory", p.display()),
        )),
    }
}

/// Resolves a non-GGUF source into local checkpoint files.
pub fn resolve_hf_files(source: &ModelSource) -> Result<HfFiles> {
    resolve_with(file_source(source)?.as_ref())
}

/// Resolves `files` of a non-GGUF source (a directory or a hub repository, as for a
/// model) to local paths, each required: a missing one is an error naming it and the
/// source. Used for LoRA adapters (`adapter_config.json`, `adapter_model.safetensors`).
pub fn resolve_files(source: &ModelSource, files: &[&str]) -> Result<Vec<PathBuf>> {
    let src = file_source(source)?;
    files
        .iter()
        .map(|f| {
            src.get(f)?
                .ok_or_else(|| ModelError::Missing(format!("{f} in {}", src.describe())))
        })
        .collect()
}

fn resolve_with(src: &dyn FileSource) -> Result<HfFiles> {
    let required = |file: &str| -> Result<PathBuf> {
        src.get(file)?
            .ok_or_else(|| ModelError::Missing(format!("{file} in {}", src.describe())))
    };
    let config = required("config.json")?;
    let tokenizer = required("tokenizer.json")?;
    let weights = match src.get("model.safetensors.index.json")? {
        Some(index) => {
            let text = std::fs::read_to_string(&index).map_err(|source| ModelError::Io {
                what: "safetensors index".into(),
                path: index.clone(),
                source,
            })?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ModelError::invalid("model.safetensors.index.json", e.to_string()))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    ModelError::invalid("model.safetensors.index.json", "no weight_map object")
                })?;
            let mut shards: Vec<String> = map
                .values()
                .filter_map(|f| f.as_str().map(String::from))
                .collect();
            shards.sort();
            shards.dedup();
            if shards.is_empty() {
                return Err(ModelError::invalid(
                    "model.safetensors.index.json",
                    "weight_map is empty",
                ));
            }
            shards
                .iter()
                .map(|s| {
                    if s.contains("..") || s.starts_with('/') {
                        return Err(ModelError::invalid(
                            "model.safetensors.index.json",
                            format!("bad shard name {s:?}"),
                        ));
                    }
                    required(s)
                })
                .collect::<Result<Vec<_>>>()?
        }
        None => vec![src.get("model.safetensors")?.ok_or_else(|| {
            ModelError::Missing(format!(
                "model.safetensors (or model.safetensors.index.json) in {}",
                src.describe()
            ))
        })?],
    };
    Ok(HfFiles {
        config,
        weights,
        tokenizer,
        tokenizer_config: src.get("tokenizer_config.json")?,
        generation_config: src.get("generation_config.json")?,
        chat_template: src.get("chat_template.jinja")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hub_ids_and_rejects_nonsense() {
        assert_eq!(
            ModelSource::parse("HuggingFaceTB/SmolLM2-135M-Instruct@v1.0").unwrap(),
            ModelSource::Hub {
                repo: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
                revision: "v1.0".into()
            }
        );
        assert!(
            matches!(ModelSource::parse("org/name").unwrap(), ModelSource::Hub { revision, .. } if revision == "main")
        );
        for bad in [
            "no-slash",
            "a/b/c",
            "/definitely/not/here.gguf",
            "org/",
            "org/name@",
        ] {
            assert!(ModelSource::parse(bad).is_err(), "{bad}");
        }
    }
}
