//! `POST /v1/chat/completions` and `POST /v1/completions`: through the
//! doors (auth, intake gate, body), parsed into the pipeline's request;
//! then the pipeline runs and the generation goes to the SSE or the JSON
//! writer.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Version, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use futures::StreamExt;
use sluice_core::config::ServerConfig;
use sluice_core::registry::{EndReason, Protocol, StreamHandle};

use super::ApiState;
use super::doors::{Doors, Entered};
use crate::openai::ApiError;
use crate::openai::request::parse_request;
use crate::pipeline::{Endpoint, Generation, Pipeline};
use crate::writers::{json, response_headers, sse};

/// The handler of one completion endpoint.
pub fn handler(endpoint: Endpoint) -> MethodRouter<ApiState> {
    post(
        move |doors: Doors, version: Version, headers: HeaderMap, body: Body| async move {
            let request = HttpRequest {
                endpoint,
                version,
                headers,
                body,
            };
            respond(doors, request).await
        },
    )
}

struct HttpRequest {
    endpoint: Endpoint,
    version: Version,
    headers: HeaderMap,
    body: Body,
}

async fn respond(doors: Doors, request: HttpRequest) -> Result<Response, ApiError> {
    let arrived_at = Instant::now();
    let Doors {
        pipeline, server, ..
    } = &doors;
    let Entered {
        tenant,
        pending,
        body,
    } = doors.enter(&request.headers, request.body).await?;
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
