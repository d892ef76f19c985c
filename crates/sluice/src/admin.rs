//! `/admin/*`: run-time state and levers (protocol mode, feature flags),
//! behind `server.admin_api_key`.
//! Without a configured key the endpoints do not exist (404), so an
//! unconfigured server exposes nothing.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use sluice_core::flags::Flag;

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
        },
        "draining": state.is_draining(),
        "flags": *state.flags.snapshot(),
        "policy": {
            "breaker_open": state.policy_log.breaker_open(),
            "recent_actions": state.policy_log.recent(),
        },
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
