//! The one mapping from every error a request can meet to an HTTP response in OpenAI's
//! shape: `{"error": {"message", "type", "param", "code"}}` with the right status.

use crate::response_types::{ErrorDetail, ErrorResponse};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use wick_core::{ErrorKind, WickError};

/// An error answered to the client.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message.
    pub message: String,
    /// The request parameter at fault, if any.
    pub param: Option<String>,
    /// Machine-readable code (OpenAI's, where one exists).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// 400 for an invalid value of `param`.
    pub fn invalid_param(param: &str, message: impl std::fmt::Display) -> Self {
        WickError::invalid_param(param, message).into()
    }

    /// 400 for a body that is not the JSON we expect.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404 for a model this server does not serve.
    pub fn model_not_found(model: &str) -> Self {
        Self {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                format!("The model `{model}` does not exist."),
            )
        }
    }

    /// 503 while the model loads or the server drains.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// OpenAI's error `type` for this status.
    pub fn error_type(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 404 | 405 | 413 => "invalid_request_error",
            401 => "authentication_error",
            429 => "rate_limit_error",
            503 => "service_unavailable",
            _ => "internal_error",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorResponse<'_> {
        ErrorResponse {
            error: ErrorDetail {
                message: &self.message,
                r#type: self.error_type(),
                param: self.param.as_deref(),
                code: self.code,
            },
        }
    }
}

impl From<WickError> for ApiError {
    fn from(e: WickError) -> Self {
        let (status, code) = match e.kind {
            ErrorKind::InvalidRequest => (StatusCode::BAD_REQUEST, None),
            ErrorKind::TooLong => (StatusCode::BAD_REQUEST, Some("context_length_exceeded")),
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, Some("model_not_found")),
            ErrorKind::Overloaded => (StatusCode::TOO_MANY_REQUESTS, None),
            ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, None),
            ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, None),
        };
        Self {
            status,
            message: e.message,
            param: e.param,
            code,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() && self.status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(status = self.status.as_u16(), message = %self.message, "request failed");
        }
        (self.status, axum::Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wick_errors_map_to_statuses_and_openai_json() {
        let json = |e: &ApiError| serde_json::to_value(e.body()).unwrap();
        let e: ApiError = WickError::invalid_param("top_p", "2 is not in (0, 1]").into();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let body = json(&e);
        assert_eq!(body["error"]["param"], "top_p");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"]["code"].is_null());
        let e: ApiError = WickError::new(ErrorKind::Overloaded, "busy").into();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(json(&e)["error"]["type"], "rate_limit_error");
        let e: ApiError = WickError::new(ErrorKind::TooLong, "long").into();
        assert_eq!(json(&e)["error"]["code"], "context_length_exceeded");
        assert_eq!(ApiError::model_not_found("x").status, StatusCode::NOT_FOUND);
    }
}
