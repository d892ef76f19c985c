//! The one place where failures get their HTTP status and OpenAI's error
//! shape, `{"error": {"message", "type", "param", "code"}}`: every
//! transport (HTTP response, SSE error event, WebSocket error message)
//! shows the same `ApiError` for the same [`PipelineError`].

use std::time::Duration;

use http::StatusCode;
use serde::Serialize;
use sluice_core::admission::Rejection;
use sluice_engine::EngineError;

use crate::pipeline::PipelineError;

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
struct ErrorObject<'a> {
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

    /// 403: a `Host` or `Origin` this server does not answer for.
    pub fn forbidden_origin(what: &str, value: &str) -> Self {
        Self {
            code: Some("forbidden_origin"),
            ..Self::new(
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                format!(
                    "This server does not accept requests with {what} '{value}' (server.allowed_hosts)."
                ),
            )
        }
    }

    /// 415: a JSON endpoint got a body of another type.
    pub fn unsupported_media_type(content_type: Option<&str>) -> Self {
        let found = content_type.map_or_else(|| "none".to_owned(), |value| format!("'{value}'"));
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            format!("Content-Type must be application/json (found {found})."),
        )
    }

    /// 408: the body did not arrive within `server.limits.body_read_timeout_ms`.
    pub fn body_timeout(limit: Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!(
                "The request body did not arrive within {} ms (server.limits.body_read_timeout_ms).",
                limit.as_millis()
            ),
        )
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

    /// Says the server's limit, the model's, and what raises the first.
    pub fn context_length_exceeded(
        served: u32,
        trained: u32,
        prompt_tokens: usize,
        param: &str,
    ) -> Self {
        let which = if served < trained {
            format!(
                "This server serves at most {served} tokens per request (the model was trained for {trained}; the server's engine.max_model_len and engine.long_sequences raise the limit up to that)."
            )
        } else {
            format!("This model's maximum context length is {served} tokens.")
        };
        Self {
            param: Some(param.into()),
            code: Some("context_length_exceeded"),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!(
                    "{which} However, your prompt has {prompt_tokens} tokens, which leaves no room to generate."
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

    /// No `Authorization` header where a key is required.
    pub fn missing_api_key() -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
            )
        }
    }

    /// The client did not read a stream for `limit` (`engine.max_park_ms`),
    /// so the server ended it; sent as the stream's last event.
    pub fn slow_consumer(limit: Duration) -> Self {
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

    fn object(&self) -> ErrorObject<'_> {
        ErrorObject {
            message: &self.message,
            kind: self.kind,
            param: self.param.as_deref(),
            code: self.code,
        }
    }

    /// The inner `{"message",…}` object alone, for framings that wrap it.
    pub fn object_json(&self) -> String {
        serialize(&self.object())
    }

    /// The whole body: an HTTP error response, or an SSE `data:` payload
    /// for errors after streaming began.
    pub fn to_json(&self) -> String {
        serialize(&ErrorBody {
            error: self.object(),
        })
    }
}

/// Strings and optional strings only: serializing cannot fail, and an
/// empty object would still be valid JSON if it did.
fn serialize(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned())
}

impl From<PipelineError> for ApiError {
    fn from(err: PipelineError) -> Self {
        match err {
            PipelineError::ShuttingDown => Self::unavailable("The server is shutting down."),
            PipelineError::Engine(err) => Self::from(err),
            PipelineError::Prompt { param, message } => Self::invalid(param, message),
            PipelineError::ContextLength {
                served,
                trained,
                prompt_tokens,
                param,
            } => Self::context_length_exceeded(served, trained, prompt_tokens, param),
            PipelineError::Rejected { tenant, rejection } => Self::rejected(&tenant, &rejection),
            PipelineError::EngineFailed(message) => Self::internal(message),
            PipelineError::SlowConsumer(limit) => Self::slow_consumer(limit),
            PipelineError::SlowReader(rate) => Self {
                code: Some("stream_read_too_slowly"),
                ..Self::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "slow_consumer",
                    format!(
                        "The client read the stream slower than {rate} bytes per second (server.limits.min_read_bytes_per_second), so the server ended it."
                    ),
                )
            },
            PipelineError::Expired(limit) => Self {
                code: Some("stream_deadline_exceeded"),
                ..Self::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    format!(
                        "The stream ran longer than {} s (server.limits.max_stream_seconds), so the server ended it.",
                        limit.as_secs()
                    ),
                )
            },
            PipelineError::EndedUnexpectedly => {
                Self::internal("The engine ended the stream unexpectedly.")
            }
            PipelineError::Internal(message) => Self::internal(message),
        }
    }
}

/// The engine cannot serve: every case is 503, the server's state rather
/// than the request's fault, so a client or balancer retries elsewhere.
impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        match err {
            EngineError::Loading => Self::unavailable("The model is still loading."),
            EngineError::QueueFull { waiting } => Self::unavailable(format!(
                "The server is at capacity: {waiting} requests are already waiting."
            )),
            EngineError::Stopped => Self::unavailable("The engine has stopped."),
            EngineError::Load(message) => {
                Self::unavailable(format!("The model failed to load: {message}"))
            }
            EngineError::Failed(reason) => Self::unavailable(sentence(&reason)),
        }
    }
}

/// `reason` as a sentence: capitalised, with a full stop.
fn sentence(reason: &str) -> String {
    let mut chars = reason.chars();
    let mut text: String = chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default();
    if !text.ends_with('.') {
        text.push('.');
    }
    text
}

impl ApiError {
    /// 429 with the admission's `Retry-After` (503 while draining).
    fn rejected(tenant: &str, rejection: &Rejection) -> Self {
        let retry_after = rejection
            .retry_after()
            .map_or(1, |wait| wait.as_secs().max(1));
        match rejection {
            Rejection::QueueFull { .. } => Self::too_many_requests(
                "server_overloaded",
                "queue_full",
                "The server's admission queue is full; retry after the Retry-After delay.",
                retry_after,
            ),
            Rejection::WaitTimedOut { booked, .. } => Self::too_many_requests(
                "server_overloaded",
                "admission_timeout",
                if *booked {
                    "The request waited for admission longer than the server's limit; retry \
                     after the Retry-After delay, when a place is held for it."
                } else {
                    "The request waited for admission longer than the server's limit; retry \
                     after the Retry-After delay."
                },
                retry_after,
            ),
            Rejection::TenantQueueFull { .. } => Self::too_many_requests(
                "rate_limit_exceeded",
                "tenant_concurrency_limit",
                format!(
                    "Tenant '{tenant}' is at its concurrent stream limit and the queue is full."
                ),
                retry_after,
            ),
            Rejection::TokenRateExceeded {
                tokens_per_minute, ..
            } => Self::too_many_requests(
                "rate_limit_exceeded",
                "tenant_tokens_per_minute",
                format!(
                    "Tenant '{tenant}' is over its limit of {tokens_per_minute} tokens per minute \
                     (each request reserves its prompt plus max_tokens); retry after the \
                     Retry-After delay."
                ),
                retry_after,
            ),
            Rejection::Shed { booked, .. } => Self::too_many_requests(
                "server_overloaded",
                "deadline_unmeetable",
                if *booked {
                    "The server cannot start this request within its first-token deadline; \
                     retry after the Retry-After delay, when a place is held for it."
                } else {
                    "The server cannot start this request within its first-token deadline; \
                     retry after the Retry-After delay at the earliest."
                },
                retry_after,
            ),
            Rejection::QuotaStoreUnavailable { .. } => Self {
                code: Some("quota_store_unavailable"),
                retry_after_seconds: Some(retry_after),
                ..Self::unavailable(
                    "The store of shared token rates is unreachable and this server refuses \
                     requests it cannot count (admission.shared_quota.when_unreachable: reject); \
                     retry after the Retry-After delay.",
                )
            },
            Rejection::Closed => PipelineError::ShuttingDown.into(),
        }
    }
}
