//! GET /v1/models, POST /tokenize and /detokenize, GET /health and /metrics.

use super::OpenAiJson;
use crate::error::ApiError;
use crate::protocol::{flatten_messages, DetokenizeRequest, TokenizeRequest};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

/// GET /v1/models.
pub async fn models(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let serving = state.serving()?;
    let max_model_len = serving.engine.info().max_model_len;
    let data: Vec<Value> = state
        .served_model_names
        .iter()
        .map(|name| {
            json!({
                "id": name,
                "object": "model",
                "created": serving.created,
                "owned_by": "wick",
                "root": name,
                "max_model_len": max_model_len,
            })
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// POST /tokenize: `{"prompt": text}` or `{"messages": [...]}` -> ids.
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    OpenAiJson(req): OpenAiJson<TokenizeRequest>,
) -> Result<Json<Value>, ApiError> {
    state.check_model(req.model.as_deref())?;
    let serving = state.serving()?;
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
    Ok(Json(json!({
        "count": tokens.len(),
        "max_model_len": serving.engine.info().max_model_len,
        "tokens": tokens,
    })))
}

/// POST /detokenize: ids -> text.
pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    OpenAiJson(req): OpenAiJson<DetokenizeRequest>,
) -> Result<Json<Value>, ApiError> {
    state.check_model(req.model.as_deref())?;
    let serving = state.serving()?;
    let vocab = serving.engine.info().vocab_size;
    if let Some(bad) = req.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid_param(
            "tokens",
            format!("token id {bad} is outside the vocabulary of {vocab}"),
        ));
    }
    let text = serving.prompt.decode(&req.tokens, false)?;
    Ok(Json(json!({ "prompt": text })))
}

/// GET /health: 200 while serving, 503 while loading or draining.
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    let status = if state.is_draining() {
        "draining"
    } else if state.loaded().is_some() {
        return (StatusCode::OK, Json(json!({"status": "ok"}))).into_response();
    } else {
        "loading"
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "status": status })),
    )
        .into_response()
}

/// GET /metrics: Prometheus text.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let stats = state.loaded().map(|s| s.engine.stats()).unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(&stats),
    )
        .into_response()
}
