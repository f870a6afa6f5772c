//! The error a request can meet anywhere in wick, with the kind the HTTP layer maps to a
//! status code.

use serde::{Deserialize, Serialize};

/// What went wrong, in terms a client can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request is invalid (HTTP 400).
    InvalidRequest,
    /// The request can never be served, e.g. longer than the context (HTTP 400).
    TooLong,
    /// The model (or LoRA adapter) it names is not served (HTTP 404).
    NotFound,
    /// The waiting queue is full (HTTP 429).
    Overloaded,
    /// The server is shutting down (HTTP 503).
    Unavailable,
    /// Something failed inside wick (HTTP 500).
    Internal,
}

/// An error tied to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct WickError {
    /// Category.
    pub kind: ErrorKind,
    /// Human-readable message.
    pub message: String,
    /// The request parameter at fault, if any.
    pub param: Option<String>,
}

impl WickError {
    /// A new error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            param: None,
        }
    }

    /// An invalid value of `param`.
    pub fn invalid_param(param: &str, message: impl std::fmt::Display) -> Self {
        Self {
            kind: ErrorKind::InvalidRequest,
            message: format!("{param}: {message}"),
            param: Some(param.to_string()),
        }
    }

    /// An internal failure.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}
