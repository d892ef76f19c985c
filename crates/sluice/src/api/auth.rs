//! Who a request is: the bearer token parsed once, mapped to a tenant for
//! the OpenAI endpoints, compared with the admin key for `/admin/*`.

use std::collections::HashMap;

use axum::http::{HeaderMap, header};
use sluice_core::admission::DEFAULT_TENANT;
use sluice_core::config::{AdmissionConfig, ServerConfig};

use crate::openai::ApiError;

/// The token of an `Authorization: Bearer …` header, trimmed.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
}

/// API key → tenant name, from the configured tenants.
pub struct TenantKeys {
    by_key: HashMap<String, String>,
}

impl TenantKeys {
    pub fn new(admission: &AdmissionConfig) -> Self {
        let by_key = admission
            .tenants
            .iter()
            .flat_map(|tenant| {
                tenant
                    .api_keys
                    .iter()
                    .map(|key| (key.clone(), tenant.name.clone()))
            })
            .collect();
        Self { by_key }
    }

    /// The tenant a request belongs to, from its bearer token. Without
    /// configured keys every request is the default tenant's; with them, a
    /// request carrying an unknown key is refused.
    pub fn tenant(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        if self.by_key.is_empty() {
            return Ok(DEFAULT_TENANT.to_owned());
        }
        match bearer_token(headers) {
            None => Ok(DEFAULT_TENANT.to_owned()),
            Some(key) => self
                .by_key
                .get(key)
                .cloned()
                .ok_or_else(ApiError::invalid_api_key),
        }
    }
}

/// Admits an `/admin/*` request carrying the admin key. Without a
/// configured key the endpoints do not exist (404), so an unconfigured
/// server exposes nothing.
pub fn authorize_admin(
    server: &ServerConfig,
    headers: &HeaderMap,
    path: &str,
) -> Result<(), ApiError> {
    let Some(expected) = server.admin_api_key.as_deref() else {
        return Err(ApiError::not_found(path));
    };
    match bearer_token(headers) {
        Some(key) if constant_time_eq(key.as_bytes(), expected.trim().as_bytes()) => Ok(()),
        _ => Err(ApiError::invalid_api_key()),
    }
}

/// Compares without an early exit, so response time does not reveal how
/// much of a guessed key was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
