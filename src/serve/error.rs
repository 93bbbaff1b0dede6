//! Error answers: a status and a JSON body `{"error": KIND, "detail": MESSAGE}` (A1111's
//! handlers answer `{"error", "detail", ...}` too, so its clients print the message).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use stylus_core::StylusError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub detail: String,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// 400: a field or value the request may not have.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", detail)
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }
}

impl From<StylusError> for ApiError {
    fn from(err: StylusError) -> Self {
        let detail = err.to_string();
        match err {
            // The server's only input images are uploads (img2img): a bad one is the client's.
            StylusError::InvalidArgument(_) | StylusError::Image { .. } => {
                Self::bad_request(detail)
            }
            StylusError::MissingAdapters { .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "MissingAdapters", detail)
            }
            StylusError::Cancelled(_) => Self::new(StatusCode::CONFLICT, "Cancelled", detail),
            StylusError::MissingStage(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "NotConfigured", detail)
            }
            _ => {
                // The server's own trouble (a model file, the device): the client learns that
                // it failed; the log keeps the whole chain.
                tracing::error!(error = %detail, "request failed");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", detail)
            }
        }
    }
}

/// A body that is not the JSON the endpoint takes: 400 for broken syntax, 422 for wrong types
/// or missing fields, 413 over the body limit, 415 without a JSON content type.
impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let kind = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "PayloadTooLarge",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "UnsupportedMediaType",
            StatusCode::UNPROCESSABLE_ENTITY => "ValidationError",
            _ => "BadRequest",
        };
        Self::new(status, kind, rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.kind, "detail": self.detail });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
