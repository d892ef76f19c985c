//! `/admin/*`: run-time state and levers (protocol mode, feature flags),
//! behind `server.admin_api_key`.
//! Without a configured key the endpoints do not exist (404), so an
//! unconfigured server exposes nothing. The fault hooks (`/admin/fault/*`)
//! exist only with `server.fault_injection` on as well.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use sluice_core::flags::Flag;
use sluice_core::registry::{EndReason, Stage};

use crate::api::error::ApiError;
use crate::api::openai::{from_value, parse_json};
use crate::server::AppState;

fn authorize(state: &AppState, headers: &HeaderMap, uri: &OriginalUri) -> Result<(), ApiError> {
    let Some(expected) = state.limits.admin_api_key.as_deref() else {
        return Err(ApiError::not_found(uri.path()));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(key) if constant_time_eq(key.as_bytes(), expected.trim().as_bytes()) => Ok(()),
        _ => Err(ApiError::invalid_api_key()),
    }
}

/// Compares without an early exit, so response time does not reveal how
/// much of a guessed key was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn state(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: OriginalUri,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &uri)?;
    let admission = state.admission.snapshot();
    Ok(axum::Json(json!({
        "protocol": {"http2_enabled": state.protocol.http2_enabled()},
        "admission": {
            "limit": admission.limit,
            "active": admission.active,
            "queued": admission.queued,
            "policy_bound": state.limit_bound.load(std::sync::atomic::Ordering::Relaxed),
        },
        "engine": {"step_token_budget": state.engine.step_budget()},
        "draining": state.is_draining(),
        "flags": *state.flags.snapshot(),
        "policy": {
            "breaker_open": state.policy_log.breaker_open(),
            "recent_actions": state.policy_log.recent(),
        },
    }))
    .into_response())
}

/// The stream registry: live streams by state and each live stream, ended
/// streams by reason.
pub async fn streams(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: OriginalUri,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &uri)?;
    let counts = state.streams.counts();
    let live: serde_json::Map<String, serde_json::Value> = Stage::ALL
        .into_iter()
        .map(|stage| (stage.as_str().to_owned(), counts.in_stage(stage).into()))
        .collect();
    let ended: serde_json::Map<String, serde_json::Value> = EndReason::ALL
        .into_iter()
        .map(|reason| (reason.as_str().to_owned(), counts.ended_with(reason).into()))
        .collect();
    let streams: Vec<serde_json::Value> = state
        .streams
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
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: OriginalUri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &uri)?;
    let update: ProtocolUpdate = read_body(body)?;
    let previous = state.protocol.http2_enabled();
    state.protocol.set_http2(update.http2_enabled);
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
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: OriginalUri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers, &uri)?;
    let flag: Flag = read_body(body)?;
    let mut flags = (*state.flags.snapshot()).clone();
    let Some(slot) = flags.get_mut(&name) else {
        return Err(ApiError::invalid(
            "name",
            format!("There is no flag '{name}'."),
        ));
    };
    *slot = flag.clone();
    flags
        .validate()
        .map_err(|message| ApiError::invalid("rollout_percent", message))?;
    state.flags.replace(flags);
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
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: OriginalUri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if !state.limits.fault_injection {
        return Err(ApiError::not_found(uri.path()));
    }
    authorize(&state, &headers, &uri)?;
    let fault: StallFault = read_body(body)?;
    if !(1..=MAX_STALL_MS).contains(&fault.ms) {
        return Err(ApiError::invalid(
            "ms",
            format!("'ms' must be between 1 and {MAX_STALL_MS}."),
        ));
    }
    state.engine.inject_stall(Duration::from_millis(fault.ms));
    tracing::warn!(ms = fault.ms, "admin: engine stall injected");
    Ok(axum::Json(json!({"fault": "stall", "ms": fault.ms})).into_response())
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn keys_compare_by_content_and_length() {
        assert!(constant_time_eq(b"secret-admin-key", b"secret-admin-key"));
        assert!(!constant_time_eq(b"secret-admin-key", b"secret-admin-kez"));
        assert!(!constant_time_eq(b"secret", b"secret-admin-key"));
    }
}
