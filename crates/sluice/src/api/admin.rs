//! `/admin/*`: run-time state and levers (protocol mode, feature flags),
//! behind `server.admin_api_key` (`auth::authorize_admin`). The levers
//! change the run-time knobs through their one owner
//! (`control::RuntimeKnobs`). The fault hooks (`/admin/fault/*`) exist only
//! with `server.fault_injection` on as well.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, OriginalUri, Path, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use sluice_core::admission::Admission;
use sluice_core::config::ServerConfig;
use sluice_core::flags::Flag;
use sluice_core::registry::{EndReason, Stage};

use super::ApiState;
use super::auth::authorize_admin;
use crate::control::qos::PolicyLog;
use crate::control::{FlagChangeError, RuntimeKnobs};
use crate::openai::ApiError;
use crate::openai::request::{from_value, parse_json};
use crate::pipeline::Pipeline;

/// What the admin endpoints read and change beside the pipeline.
pub struct AdminState {
    pub server: Arc<ServerConfig>,
    pub knobs: Arc<RuntimeKnobs>,
    pub admission: Arc<Admission>,
    pub policy_log: Arc<PolicyLog>,
}

/// An `/admin/*` request that carried the admin key: extracting it is the
/// check.
pub struct Authorized(Arc<AdminState>);

impl FromRequestParts<ApiState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        authorize_admin(&state.admin.server, &parts.headers, parts.uri.path())?;
        Ok(Self(Arc::clone(&state.admin)))
    }
}

pub async fn state(
    Authorized(admin): Authorized,
    State(pipeline): State<Arc<Pipeline>>,
) -> Result<Response, ApiError> {
    let admission = admin.admission.snapshot();
    let knobs = admin.knobs.values();
    Ok(axum::Json(json!({
        "protocol": {"http2_enabled": knobs.http2},
        "admission": {
            "limit": admission.limit,
            "active": admission.active,
            "queued": admission.queued,
            "policy_bound": knobs.limit_bound,
        },
        "engine": {"step_token_budget": pipeline.engine().step_budget()},
        "draining": pipeline.is_draining(),
        "flags": knobs.flags,
        "policy": {
            "breaker_open": admin.policy_log.breaker_open(),
            "recent_actions": admin.policy_log.recent(),
        },
    }))
    .into_response())
}

/// The stream registry: live streams by state and each live stream, ended
/// streams by reason.
pub async fn streams(
    _authorized: Authorized,
    State(pipeline): State<Arc<Pipeline>>,
) -> Result<Response, ApiError> {
    let counts = pipeline.streams().counts();
    let live: serde_json::Map<String, serde_json::Value> = Stage::ALL
        .into_iter()
        .map(|stage| (stage.as_str().to_owned(), counts.in_stage(stage).into()))
        .collect();
    let ended: serde_json::Map<String, serde_json::Value> = EndReason::ALL
        .into_iter()
        .map(|reason| (reason.as_str().to_owned(), counts.ended_with(reason).into()))
        .collect();
    let streams: Vec<serde_json::Value> = pipeline
        .streams()
        .snapshot()
        .into_iter()
        .map(|stream| {
            json!({
                "id": stream.request_id,
                "tenant": stream.tenant,
                "protocol": stream.protocol.as_str(),
                "state": stream.stage.as_str(),
                "age_ms": stream.age.as_millis() as u64,
                "tokens": stream.tokens,
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "active": counts.active(),
        "by_state": live,
        "ended": ended,
        "streams": streams,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProtocolUpdate {
    http2_enabled: bool,
}

/// A JSON body as `T`, with errors that name the field at fault.
fn read_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|rejection| {
        ApiError::bad_request(format!("Could not read the body: {rejection}"))
    })?;
    from_value(&parse_json(&body)?)
}

/// Switches whether new connections are offered HTTP/2; open connections
/// and their streams are not touched.
pub async fn set_protocol(
    Authorized(admin): Authorized,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let update: ProtocolUpdate = read_body(body)?;
    let previous = admin.knobs.set_http2(update.http2_enabled);
    tracing::info!(
        from = previous,
        to = update.http2_enabled,
        "admin: HTTP/2 for new connections"
    );
    Ok(axum::Json(json!({"protocol": {"http2_enabled": update.http2_enabled}})).into_response())
}

/// Replaces one feature flag (`enabled`, `rollout_percent`,
/// `kill_switch`; fields left out keep their defaults). Takes effect for
/// requests that arrive after it.
pub async fn set_flag(
    Authorized(admin): Authorized,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let flag: Flag = read_body(body)?;
    admin
        .knobs
        .set_flag(&name, flag.clone())
        .map_err(|err| match err {
            FlagChangeError::Unknown => {
                ApiError::invalid("name", format!("There is no flag '{name}'."))
            }
            FlagChangeError::Invalid(message) => ApiError::invalid("rollout_percent", message),
        })?;
    tracing::info!(flag = %name, ?flag, "admin: flag changed");
    Ok(axum::Json(json!({"flag": name, "value": flag})).into_response())
}

/// The longest engine stall `/admin/fault/stall` injects: long enough for
/// any chaos scenario, short enough that a typo cannot wedge a server.
const MAX_STALL_MS: u64 = 60_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StallFault {
    ms: u64,
}

/// Fault injection: the engine thread sleeps `ms` before its next step, as
/// a stuck kernel would hold it. Answers at once; the HTTP side keeps
/// serving meanwhile.
pub async fn inject_stall(
    State(admin): State<Arc<AdminState>>,
    State(pipeline): State<Arc<Pipeline>>,
    headers: HeaderMap,
    uri: OriginalUri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if !admin.server.fault_injection {
        return Err(ApiError::not_found(uri.path()));
    }
    authorize_admin(&admin.server, &headers, uri.path())?;
    let fault: StallFault = read_body(body)?;
    if !(1..=MAX_STALL_MS).contains(&fault.ms) {
        return Err(ApiError::invalid(
            "ms",
            format!("'ms' must be between 1 and {MAX_STALL_MS}."),
        ));
    }
    pipeline
        .engine()
        .inject_stall(Duration::from_millis(fault.ms));
    tracing::warn!(ms = fault.ms, "admin: engine stall injected");
    Ok(axum::Json(json!({"fault": "stall", "ms": fault.ms})).into_response())
}

/// Fault injection: the engine thread panics at its next step, as a bug
/// would make it. The engine fails (`/health` 503 with the reason), its
/// streams end with an error event, and the process exits non-zero once
/// drained. Answers at once.
pub async fn inject_panic(
    State(admin): State<Arc<AdminState>>,
    State(pipeline): State<Arc<Pipeline>>,
    headers: HeaderMap,
    uri: OriginalUri,
) -> Result<Response, ApiError> {
    if !admin.server.fault_injection {
        return Err(ApiError::not_found(uri.path()));
    }
    authorize_admin(&admin.server, &headers, uri.path())?;
    pipeline.engine().inject_panic();
    tracing::warn!("admin: engine panic injected");
    Ok(axum::Json(json!({"fault": "panic"})).into_response())
}
