//! GET /v1/models, POST /tokenize and /detokenize, GET /health, /ready, /version and
//! /metrics.

use super::OpenAiJson;
use crate::error::ApiError;
use crate::protocol::{flatten_messages, DetokenizeRequest, TokenizeRequest};
use crate::response_types::{DetokenizeResponse, ModelCard, ModelList, TokenizeResponse};
use crate::state::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;

/// GET /v1/models.
pub async fn models(State(state): State<Arc<AppState>>) -> Result<Json<ModelList>, ApiError> {
    let serving = state.serving()?;
    let max_model_len = serving.backend.info().max_model_len;
    let mut data: Vec<ModelCard> = state
        .served_model_names
        .iter()
        .map(|name| ModelCard {
            id: name.clone(),
            object: "model",
            created: serving.created,
            owned_by: "wick",
            root: name.clone(),
            parent: None,
            max_model_len,
        })
        .collect();
    data.extend(serving.backend.loras().into_iter().map(|l| ModelCard {
        id: l.name,
        object: "model",
        created: serving.created,
        owned_by: "wick",
        root: l.source,
        parent: Some(state.model_name().to_string()),
        max_model_len,
    }));
    Ok(Json(ModelList {
        object: "list",
        data,
    }))
}

/// POST /tokenize: `{"prompt": text}` or `{"messages": [...]}` -> ids.
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    OpenAiJson(req): OpenAiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let serving = state.serving()?;
    state.resolve_model(req.model.as_deref(), &serving)?;
    let s = serving.clone();
    let tokens = tokio::task::spawn_blocking(move || -> Result<Vec<u32>, ApiError> {
        match (req.prompt, req.messages) {
            (Some(text), None) => Ok(s
                .prompt
                .encode(&text, req.add_special_tokens.unwrap_or(true))?),
            (None, Some(messages)) => {
                let messages = flatten_messages(&messages)?;
                Ok(s.prompt.encode_chat(&messages, Default::default())?)
            }
            _ => Err(ApiError::invalid_param(
                "prompt",
                "give exactly one of `prompt` and `messages`",
            )),
        }
    })
    .await
    .map_err(|e| ApiError::from(wick_core::WickError::internal(e.to_string())))??;
    Ok(Json(TokenizeResponse {
        count: tokens.len(),
        max_model_len: serving.backend.info().max_model_len,
        tokens,
    }))
}

/// POST /detokenize: ids -> text.
pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    OpenAiJson(req): OpenAiJson<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    let serving = state.serving()?;
    state.resolve_model(req.model.as_deref(), &serving)?;
    let vocab = serving.backend.info().vocab_size;
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid_param(
            "tokens",
            format!("token id {bad} is outside the vocabulary of {vocab}"),
        ));
    }
    let prompt = serving.prompt.decode(&req.tokens, false)?;
    Ok(Json(DetokenizeResponse { prompt }))
}

/// GET /health (liveness): see [`AppState::liveness`].
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    let (status, body) = state.liveness();
    (status, Json(body)).into_response()
}

/// GET /ready (readiness): see [`AppState::readiness`].
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let (status, body) = state.readiness();
    (status, Json(body)).into_response()
}

/// GET /version: the build and the deployment's release (open, like the probes).
pub async fn version(State(state): State<Arc<AppState>>) -> Json<crate::build_info::VersionInfo> {
    Json(state.version.clone())
}

/// GET /metrics: Prometheus text.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let loaded = state.loaded();
    let stats = loaded.map(|s| s.backend.stats()).unwrap_or_default();
    let health = loaded.map(|s| s.backend.health());
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.metrics.render(&stats, health.as_ref()),
    )
        .into_response()
}
