//! `POST /v1/chat/completions` and `POST /v1/completions`: who asks (auth),
//! a place at the intake gate, the body read within its deadline, parsed
//! into the pipeline's request; then the pipeline runs and the generation
//! goes to the SSE or the JSON writer.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Version, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use futures::StreamExt;
use sluice_core::config::ServerConfig;
use sluice_core::registry::{EndReason, Protocol, StreamHandle};

use super::ApiState;
use super::auth::TenantKeys;
use super::intake::PendingGate;
use crate::openai::ApiError;
use crate::openai::request::parse_request;
use crate::pipeline::{Endpoint, Generation, Pipeline};
use crate::writers::{json, response_headers, sse};

/// The handler of one completion endpoint.
pub fn handler(endpoint: Endpoint) -> MethodRouter<ApiState> {
    post(
        move |State(pipeline): State<Arc<Pipeline>>,
              State(tenants): State<Arc<TenantKeys>>,
              State(intake): State<Arc<PendingGate>>,
              State(server): State<Arc<ServerConfig>>,
              version: Version,
              headers: HeaderMap,
              body: Body| async move {
            let request = HttpRequest {
                endpoint,
                version,
                headers,
                body,
            };
            let doors = Doors {
                tenants: &tenants,
                intake: &intake,
                server: &server,
            };
            respond(&pipeline, doors, request).await
        },
    )
}

struct HttpRequest {
    endpoint: Endpoint,
    version: Version,
    headers: HeaderMap,
    body: Body,
}

/// What a request passes before the pipeline sees it.
struct Doors<'a> {
    tenants: &'a TenantKeys,
    intake: &'a Arc<PendingGate>,
    server: &'a ServerConfig,
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
pub(super) fn is_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap_or("(not text)"));
    let media_type = value.map(|value| value.split(';').next().unwrap_or_default().trim());
    match media_type {
        Some(media_type) if media_type.eq_ignore_ascii_case("application/json") => Ok(()),
        _ => Err(ApiError::unsupported_media_type(value)),
    }
}

/// The whole body, within the size limit and the read deadline.
pub(super) async fn read_body(body: Body, server: &ServerConfig) -> Result<Bytes, ApiError> {
    let deadline = Duration::from_millis(server.limits.body_read_timeout_ms);
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, server.max_body_bytes)).await {
        Err(_) => Err(ApiError::body_timeout(deadline)),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(err)) => {
            let err = err.into_inner();
            if err.is::<http_body_util::LengthLimitError>() {
                Err(ApiError::body_too_large(server.max_body_bytes))
            } else {
                Err(ApiError::bad_request(format!(
                    "Could not read the request body: {err}"
                )))
            }
        }
    }
}

async fn respond(
    pipeline: &Arc<Pipeline>,
    doors: Doors<'_>,
    request: HttpRequest,
) -> Result<Response, ApiError> {
    let arrived_at = Instant::now();
    let server = doors.server;
    let tenant = doors.tenants.tenant(&request.headers)?;
    is_json(&request.headers)?;
    // Held until the pipeline has tokenized and admitted the request.
    let pending = doors.intake.enter(&tenant)?;
    let body = read_body(request.body, server).await?;
    let protocol = if request.version == Version::HTTP_2 {
        Protocol::Http2
    } else {
        Protocol::Http1
    };
    let stream = pipeline.register(request.endpoint, tenant, protocol, arrived_at);
    let start = Start {
        endpoint: request.endpoint,
        arrived_at,
        force_stream: false,
    };
    let generation = start.run(stream, pipeline, server, &body).await?;
    drop(pending);
    if generation.stream {
        let keepalive = Duration::from_millis(server.sse_keepalive_ms);
        Ok(sse_response(generation, keepalive))
    } else {
        let answer = json::collect(generation).await?;
        let content_type = [(header::CONTENT_TYPE, "application/json".to_owned())];
        Ok((content_type, answer.headers, answer.body).into_response())
    }
}

fn sse_response(generation: Generation, keepalive: Duration) -> Response {
    let headers = response_headers(&generation);
    let body = sse::sse_body(generation, keepalive).map(Ok::<Bytes, Infallible>);
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        headers,
        Body::from_stream(body),
    )
        .into_response()
}

/// A registered stream's body on its way into the pipeline, from HTTP or
/// a WebSocket.
pub(super) struct Start {
    pub endpoint: Endpoint,
    pub arrived_at: Instant,
    /// Streams whatever the request asked for (a WebSocket always streams).
    pub force_stream: bool,
}

impl Start {
    /// Parses the body and runs the pipeline. The registry accounts for
    /// the stream already: a body that does not parse ends it as rejected.
    pub async fn run(
        self,
        mut stream: StreamHandle,
        pipeline: &Arc<Pipeline>,
        server: &ServerConfig,
        body: &[u8],
    ) -> Result<Generation, ApiError> {
        let parsed = parse_request(
            self.endpoint,
            body,
            pipeline.served_name(),
            server,
            self.arrived_at,
        );
        let mut request = match parsed {
            Ok(request) => request,
            Err(error) => {
                stream.end(EndReason::Rejected);
                return Err(error);
            }
        };
        request.params.stream |= self.force_stream;
        Ok(pipeline.start(self.endpoint, stream, request).await?)
    }
}
