//! The one place where failures become HTTP responses in OpenAI's error
//! shape: `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after_seconds: Option<u64>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
pub(crate) struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after_seconds: None,
        }
    }

    /// 400: the request is malformed or a parameter is out of range.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.into()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    /// 400 without a single parameter to blame (e.g. malformed JSON).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn model_not_found(requested: &str, served: &str) -> Self {
        Self {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model `{requested}` does not exist. This server serves `{served}`."),
            )
        }
    }

    pub fn context_length_exceeded(limit: u32, prompt_tokens: usize, param: &str) -> Self {
        Self {
            param: Some(param.into()),
            code: Some("context_length_exceeded"),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!(
                    "This model's maximum context length is {limit} tokens. However, your prompt has {prompt_tokens} tokens, which leaves no room to generate."
                ),
            )
        }
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self {
            code: Some("request_too_large"),
            ..Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("The request body is larger than the limit of {limit} bytes."),
            )
        }
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("Unknown request URL: {path}."),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("Method {method} is not allowed on {path}."),
        )
    }

    /// 503: no capacity at all (model loading, server draining).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            retry_after_seconds: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_overloaded",
                message,
            )
        }
    }

    /// 429: admission could not take the request in time; `kind` says
    /// whether the server (`server_overloaded`) or the tenant
    /// (`rate_limit_exceeded`) is at its limit.
    pub fn too_many_requests(
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
        retry_after_seconds: u64,
    ) -> Self {
        Self {
            code: Some(code),
            retry_after_seconds: Some(retry_after_seconds),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, kind, message)
        }
    }

    pub fn invalid_api_key() -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "Incorrect API key provided.",
            )
        }
    }

    /// The client did not read a stream for `limit` (`engine.max_park_ms`),
    /// so the server ended it; sent as the stream's last event.
    pub fn slow_consumer(limit: std::time::Duration) -> Self {
        Self {
            code: Some("stream_not_read"),
            ..Self::new(
                StatusCode::REQUEST_TIMEOUT,
                "slow_consumer",
                format!(
                    "The client did not read the stream for {} ms, so the server ended it; the rest of the response was dropped.",
                    limit.as_millis()
                ),
            )
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    pub(crate) fn object(&self) -> ErrorObject<'_> {
        ErrorObject {
            message: &self.message,
            kind: self.kind,
            param: self.param.as_deref(),
            code: self.code,
        }
    }

    /// The inner `{"message",…}` object alone, for framings that wrap it.
    pub fn object_json(&self) -> String {
        serde_json::to_string(&self.object()).expect("error bodies serialize")
    }

    /// The body as an SSE `data:` payload, for errors after streaming began.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&ErrorBody {
            error: self.object(),
        })
        .expect("error bodies serialize")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.to_json(),
        )
            .into_response();
        if let Some(seconds) = self.retry_after_seconds {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
