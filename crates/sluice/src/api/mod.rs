//! The API layer, the only module that knows axum: the router, auth, and
//! thin handlers that read a request, hand it to the pipeline and give the
//! generation to a writer. Each handler takes the narrow state it uses
//! (axum `FromRef` sub-states of [`ApiState`]), never the whole app.

mod admin;
mod auth;
mod completions;
mod doors;
mod intake;
mod ops;
mod origin;
mod render;
mod ws;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRef};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use axum::{Router, middleware};
use sluice_core::config::ServerConfig;

use crate::openai::ApiError;
use crate::pipeline::{Endpoint, Pipeline};

pub use admin::AdminState;
pub use auth::TenantKeys;
pub use intake::PendingGate;
pub use ops::OpsState;
pub use origin::HostAllowlist;
pub use ws::{ClientCommand, parse_client_message};

/// Everything the handlers use, split into the sub-states they take.
#[derive(Clone)]
pub struct ApiState {
    pub pipeline: Arc<Pipeline>,
    pub tenants: Arc<TenantKeys>,
    pub intake: Arc<PendingGate>,
    pub hosts: Arc<HostAllowlist>,
    pub server: Arc<ServerConfig>,
    pub ops: Arc<OpsState>,
    pub admin: Arc<AdminState>,
}

impl FromRef<ApiState> for Arc<Pipeline> {
    fn from_ref(state: &ApiState) -> Self {
        Arc::clone(&state.pipeline)
    }
}

impl FromRef<ApiState> for Arc<TenantKeys> {
    fn from_ref(state: &ApiState) -> Self {
        Arc::clone(&state.tenants)
    }
}

impl FromRef<ApiState> for Arc<PendingGate> {
    fn from_ref(state: &ApiState) -> Self {
        Arc::clone(&state.intake)
    }
}

impl FromRef<ApiState> for Arc<ServerConfig> {
    fn from_ref(state: &ApiState) -> Self {
        Arc::clone(&state.server)
    }
}

impl FromRef<ApiState> for Arc<OpsState> {
    fn from_ref(state: &ApiState) -> Self {
        Arc::clone(&state.ops)
    }
}

impl FromRef<ApiState> for Arc<AdminState> {
    fn from_ref(state: &ApiState) -> Self {
        Arc::clone(&state.admin)
    }
}

pub fn router(state: ApiState) -> Router {
    let body_limit = state.server.max_body_bytes;
    let hosts = Arc::clone(&state.hosts);
    Router::new()
        .route("/v1/chat/completions", completions::handler(Endpoint::Chat))
        .route(
            "/v1/completions",
            completions::handler(Endpoint::Completion),
        )
        .route(
            "/v1/chat/completions/render",
            render::handler(Endpoint::Chat),
        )
        .route(
            "/v1/completions/render",
            render::handler(Endpoint::Completion),
        )
        // `any`: WebSockets over HTTP/2 (RFC 8441) arrive as CONNECT.
        .route("/v1/ws", any(ws::upgrade))
        .route("/admin/state", get(admin::state))
        .route("/admin/streams", get(admin::streams))
        .route("/admin/protocol", put(admin::set_protocol))
        .route("/admin/flags/{name}", put(admin::set_flag))
        .route("/admin/fault/stall", post(admin::inject_stall))
        .route("/admin/fault/panic", post(admin::inject_panic))
        .route("/v1/models", get(ops::models))
        .route("/health", get(ops::health))
        .route("/health/live", get(ops::live))
        .route("/health/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(hosts, origin::check))
        .with_state(state)
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
