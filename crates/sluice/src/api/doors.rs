//! The doors a completion-shaped request passes before the pipeline sees
//! it, shared by the completion and render endpoints: who asks (auth), a
//! JSON body (415), a place at the intake gate, the body read within its
//! size limit and deadline.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use sluice_core::config::ServerConfig;

use super::ApiState;
use super::auth::TenantKeys;
use super::intake::{Pending, PendingGate};
use crate::openai::ApiError;
use crate::pipeline::Pipeline;

/// The sub-states the doors and the pipeline behind them use.
pub(super) struct Doors {
    pub pipeline: Arc<Pipeline>,
    pub tenants: Arc<TenantKeys>,
    pub intake: Arc<PendingGate>,
    pub server: Arc<ServerConfig>,
}

impl FromRequestParts<ApiState> for Doors {
    type Rejection = Infallible;

    async fn from_request_parts(_: &mut Parts, state: &ApiState) -> Result<Self, Infallible> {
        Ok(Self {
            pipeline: Arc::clone(&state.pipeline),
            tenants: Arc::clone(&state.tenants),
            intake: Arc::clone(&state.intake),
            server: Arc::clone(&state.server),
        })
    }
}

/// A request through the doors: its tenant, its place at the intake gate
/// (held until the pipeline has tokenized it) and its body.
pub(super) struct Entered {
    pub tenant: String,
    pub pending: Pending,
    pub body: Bytes,
}

impl Doors {
    pub async fn enter(&self, headers: &HeaderMap, body: Body) -> Result<Entered, ApiError> {
        let tenant = self.tenants.tenant(headers)?;
        is_json(headers)?;
        let pending = self.intake.enter(&tenant)?;
        let body = read_body(body, &self.server).await?;
        Ok(Entered {
            tenant,
            pending,
            body,
        })
    }
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn is_json(headers: &HeaderMap) -> Result<(), ApiError> {
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
async fn read_body(body: Body, server: &ServerConfig) -> Result<Bytes, ApiError> {
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
