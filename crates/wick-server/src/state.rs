//! What the handlers share: the server's fixed settings, the model once it has loaded
//! ([`Serving`]), the draining flag, and the count of generation requests in flight;
//! and what `/health` and `/ready` answer from them.
//!
//! Lifecycle: `loading` (health 503, ready 503, generation 503) -> `serving` ->
//! `draining` after SIGTERM (health 200, ready 503, new requests 503, in-flight ones
//! finish). Whenever the backend is not healthy (its engine died or stalled), health and
//! ready answer 503 with the backend's reason.

use crate::backend::Backend;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::prompt::PromptBuilder;
use crate::protocol::ModelDefaults;
use crate::response_types::HealthResponse;
use axum::http::StatusCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use wick_engine::EngineHealth;

/// The loaded model and the backend generating with it.
pub struct Serving {
    /// The backend (the engine, or a fake in handler tests).
    pub backend: Arc<dyn Backend>,
    /// Tokenizer, chat template, special tokens.
    pub prompt: PromptBuilder,
    /// Sampling defaults from the model's generation_config.json.
    pub defaults: ModelDefaults,
    /// Shared with [`AppState`].
    pub metrics: Arc<Metrics>,
    /// Unix time the model was loaded (`created` in /v1/models).
    pub created: u64,
    /// `system_fingerprint` of responses: wick's version and the model's dtype/device.
    pub fingerprint: String,
    /// How tool calls are parsed from output (`--tool-call-parser`); `None`: never.
    pub tool_parser: Option<crate::tool_parser::ToolParserKind>,
    /// Compiles the grammars of constrained requests (structured output, forced tool
    /// calls) for this model's tokenizer.
    pub grammars: crate::structured::Grammars,
}

/// The model a request runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelChoice {
    /// The name responses report: the adapter's, or the base model's first served name.
    pub name: String,
    /// The LoRA adapter, when `name` is one.
    pub lora: Option<String>,
}

/// State shared by every handler.
pub struct AppState {
    /// Names clients may use in `model` (the first is reported).
    pub served_model_names: Vec<String>,
    /// Accepted API keys; empty: no authentication.
    pub api_keys: Vec<String>,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// LoRA adapters may be loaded and unloaded through the API; paths confined to
    /// `lora_root` when set.
    pub lora_runtime_updates: bool,
    /// The directory runtime-loaded adapter paths must be inside.
    pub lora_root: Option<std::path::PathBuf>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// What `GET /version` answers: the build and the deployment's release.
    pub version: crate::build_info::VersionInfo,
    /// This replica's name, in every response's `x-wick-replica` header (`--replica-id`,
    /// default the host name).
    pub replica_id: String,
    serving: OnceLock<Arc<Serving>>,
    draining: AtomicBool,
    in_flight: AtomicUsize,
}

impl AppState {
    /// A server still loading its model.
    pub fn new(
        served_model_names: Vec<String>,
        api_keys: Vec<String>,
        max_body_bytes: usize,
    ) -> Self {
        let metrics = Arc::new(Metrics::new(
            served_model_names
                .first()
                .map(String::as_str)
                .unwrap_or("model"),
        ));
        Self {
            served_model_names,
            api_keys,
            max_body_bytes,
            lora_runtime_updates: false,
            lora_root: None,
            metrics,
            version: Default::default(),
            replica_id: host_name(),
            serving: OnceLock::new(),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// The model has loaded: start serving.
    pub fn set_serving(&self, serving: Arc<Serving>) {
        let _ = self.serving.set(serving);
    }

    /// The model, if loaded (also while draining).
    pub fn loaded(&self) -> Option<&Arc<Serving>> {
        self.serving.get()
    }

    /// The model for a new request: 503 while loading or draining.
    pub fn serving(&self) -> Result<Arc<Serving>, ApiError> {
        if self.is_draining() {
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        self.serving
            .get()
            .cloned()
            .ok_or_else(|| ApiError::unavailable("the model is still loading"))
    }

    /// Stop taking new requests.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Liveness (`/health`): 200 while the process and its backend are alive and making
    /// progress, loading and draining included (a liveness probe must not restart a
    /// process mid-load); 503 when the backend is not healthy.
    pub fn liveness(&self) -> (StatusCode, HealthResponse) {
        let Some(serving) = self.loaded() else {
            return (
                StatusCode::OK,
                HealthResponse {
                    status: "loading",
                    reason: None,
                },
            );
        };
        if let Some(sick) = unhealthy(serving.backend.health()) {
            return sick;
        }
        let status = if self.is_draining() { "draining" } else { "ok" };
        (
            StatusCode::OK,
            HealthResponse {
                status,
                reason: None,
            },
        )
    }

    /// Readiness (`/ready`): 200 only when loaded, not draining and healthy; 503 with
    /// the reason otherwise.
    pub fn readiness(&self) -> (StatusCode, HealthResponse) {
        let Some(serving) = self.loaded() else {
            return unavailable("loading", None);
        };
        if let Some(sick) = unhealthy(serving.backend.health()) {
            return sick;
        }
        if self.is_draining() {
            return unavailable("draining", None);
        }
        (
            StatusCode::OK,
            HealthResponse {
                status: "ok",
                reason: None,
            },
        )
    }

    /// Generation requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Counts a generation request until the guard drops.
    pub fn track(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// What a request's `model` names: the base model (absent, or one of the served
    /// names) or one of `serving`'s LoRA adapters; 404 otherwise.
    pub fn resolve_model(
        &self,
        model: Option<&str>,
        serving: &Serving,
    ) -> Result<ModelChoice, ApiError> {
        let Some(m) = model.filter(|m| !self.served_model_names.iter().any(|n| n == m)) else {
            return Ok(ModelChoice {
                name: self.model_name().to_string(),
                lora: None,
            });
        };
        if serving.backend.loras().iter().any(|l| l.name == m) {
            return Ok(ModelChoice {
                name: m.to_string(),
                lora: Some(m.to_string()),
            });
        }
        Err(ApiError::model_not_found(m))
    }

    /// The name responses report.
    pub fn model_name(&self) -> &str {
        self.served_model_names
            .first()
            .map(String::as_str)
            .unwrap_or("model")
    }
}

fn unavailable(status: &'static str, reason: Option<String>) -> (StatusCode, HealthResponse) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        HealthResponse { status, reason },
    )
}

/// 503 `stalled`/`dead` with the reason, unless `health` is healthy.
fn unhealthy(health: EngineHealth) -> Option<(StatusCode, HealthResponse)> {
    let status = match health {
        EngineHealth::Healthy => return None,
        EngineHealth::Stalled { .. } => "stalled",
        EngineHealth::Dead { .. } => "dead",
    };
    Some(unavailable(status, Some(health.to_string())))
}

/// A generation request in flight; see [`AppState::track`].
pub struct InFlight(Arc<AppState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The machine's host name (Linux), else `wick`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && axum::http::HeaderValue::from_str(h).is_ok())
        .unwrap_or_else(|| "wick".into())
}
