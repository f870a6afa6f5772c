//! POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's runtime LoRA API),
//! routed only with `--enable-lora-runtime-updates`, behind the API key like every `/v1`
//! route. A path must lie inside `--lora-root` when it is set (hub ids are then refused).
//! Loading reads files off the async runtime; a bad adapter is a 400 naming what is wrong,
//! and the server keeps serving. Unloading lets requests in flight on it finish.

use super::OpenAiJson;
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::State;
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;
use wick_core::WickError;

/// Body of POST /v1/load_lora_adapter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadLoraRequest {
    /// The name requests will use in `model`.
    pub lora_name: String,
    /// A local PEFT directory (or, without `--lora-root`, a hub id).
    pub lora_path: String,
}

/// Body of POST /v1/unload_lora_adapter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnloadLoraRequest {
    /// The adapter's name.
    pub lora_name: String,
    /// Accepted for vLLM compatibility; unused.
    #[serde(default, rename = "lora_int_id")]
    _lora_int_id: Option<serde::de::IgnoredAny>,
}

/// POST /v1/load_lora_adapter.
pub async fn load(
    State(state): State<Arc<AppState>>,
    OpenAiJson(req): OpenAiJson<LoadLoraRequest>,
) -> Result<String, ApiError> {
    let serving = state.serving()?;
    let name = req.lora_name.trim().to_string();
    if name.is_empty() {
        return Err(ApiError::invalid_param("lora_name", "must not be empty"));
    }
    if state.served_model_names.contains(&name) {
        return Err(ApiError::invalid_param(
            "lora_name",
            format!("{name:?} is the base model's name"),
        ));
    }
    let source = confine(state.lora_root.as_deref(), &req.lora_path)?;
    let backend = serving.backend.clone();
    let n = name.clone();
    tokio::task::spawn_blocking(move || backend.load_lora(&n, &source))
        .await
        .map_err(|e| ApiError::from(WickError::internal(format!("adapter loading task: {e}"))))??;
    Ok(format!(
        "Success: LoRA adapter '{name}' added successfully."
    ))
}

/// POST /v1/unload_lora_adapter.
pub async fn unload(
    State(state): State<Arc<AppState>>,
    OpenAiJson(req): OpenAiJson<UnloadLoraRequest>,
) -> Result<String, ApiError> {
    let serving = state.serving()?;
    serving.backend.unload_lora(&req.lora_name)?;
    Ok(format!(
        "Success: LoRA adapter '{}' removed successfully.",
        req.lora_name
    ))
}

/// `path` as given, or, with a `root`, its canonical form, which must lie inside the
/// canonical root (so `..` and symlinks cannot leave it).
fn confine(root: Option<&Path>, path: &str) -> Result<String, ApiError> {
    let Some(root) = root else {
        return Ok(path.to_string());
    };
    let outside = || {
        ApiError::invalid_param(
            "lora_path",
            format!("{path} is not a directory inside the server's --lora-root"),
        )
    };
    let root = root.canonicalize().map_err(|_| outside())?;
    let p = Path::new(path);
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    };
    let p = p.canonicalize().map_err(|_| outside())?;
    if !p.starts_with(&root) || !p.is_dir() {
        return Err(outside());
    }
    Ok(p.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_root() {
        let dir = std::env::temp_dir().join(format!("wick-lora-root-{}", std::process::id()));
        let inside = dir.join("root/adapter");
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::create_dir_all(dir.join("elsewhere")).unwrap();
        let root = dir.join("root");
        assert!(confine(Some(&root), "adapter").is_ok());
        assert!(confine(Some(&root), inside.to_str().unwrap()).is_ok());
        for bad in ["../elsewhere", "/etc", "org/name", "missing"] {
            assert!(confine(Some(&root), bad).is_err(), "{bad}");
        }
        assert_eq!(confine(None, "org/name").unwrap(), "org/name");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
