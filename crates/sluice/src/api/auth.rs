//! Who a request is, decided before anything else reads it: the bearer
//! token parsed once, mapped to a tenant for the OpenAI endpoints (HTTP and
//! the WebSocket upgrade), compared with the admin key for `/admin/*`.
//! Keys are compared as SHA-256 digests in constant time, so neither the
//! map lookup nor the comparison tells a client how much of a guess was right.

use std::collections::HashSet;

use axum::http::{HeaderMap, HeaderName, header};
use ring::digest::{SHA256, digest};
use sluice_core::admission::DEFAULT_TENANT;
use sluice_core::config::{AdmissionConfig, ServerConfig};

use crate::openai::ApiError;

/// What the `Authorization` header holds.
enum Credential<'a> {
    Missing,
    /// Present but not `Bearer <token>` in ASCII.
    Malformed,
    Bearer(&'a str),
}

/// Parses `Authorization: Bearer <token>`; the scheme is matched
/// case-insensitively (RFC 9110 §11.1), the token trimmed.
fn credential(headers: &HeaderMap) -> Credential<'_> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Credential::Missing;
    };
    let Ok(value) = value.to_str() else {
        return Credential::Malformed;
    };
    match value.trim_start().split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Credential::Bearer(token.trim())
        }
        _ => Credential::Malformed,
    }
}

type KeyDigest = [u8; 32];

fn key_digest(key: &str) -> KeyDigest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, key.as_bytes()).as_ref());
    out
}

/// API key → tenant, from the configured tenants, and the policy for
/// requests that carry no key.
pub struct TenantKeys {
    keys: Vec<(KeyDigest, String)>,
    /// Requests without a key are refused (401) instead of going to the
    /// default tenant.
    require_key: bool,
    /// A header set by a trusted gateway naming the tenant it authenticated.
    trusted_header: Option<HeaderName>,
    tenant_names: HashSet<String>,
}

impl TenantKeys {
    pub fn new(server: &ServerConfig, admission: &AdmissionConfig) -> Self {
        let keys: Vec<_> = admission
            .tenants
            .iter()
            .flat_map(|tenant| {
                tenant
                    .api_keys
                    .iter()
                    .map(|key| (key_digest(key.trim()), tenant.name.clone()))
            })
            .collect();
        Self {
            require_key: server.require_api_key.unwrap_or(!keys.is_empty()),
            keys,
            trusted_header: server
                .trusted_tenant_header
                .as_deref()
                .and_then(|name| HeaderName::try_from(name).ok()),
            tenant_names: admission.tenants.iter().map(|t| t.name.clone()).collect(),
        }
    }

    /// The tenant a request belongs to. A trusted gateway's header wins (a
    /// name that is no configured tenant means the default tenant, so the
    /// header cannot grow the tenant table); then the bearer key. Without
    /// configured keys every request is the default tenant's. With them, a
    /// request without a key is the default tenant's unless keys are
    /// required; a malformed or unknown key is always refused.
    pub fn tenant(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        if let Some(name) = &self.trusted_header
            && let Some(value) = headers.get(name)
        {
            let tenant = value.to_str().unwrap_or_default().trim();
            return Ok(if self.tenant_names.contains(tenant) {
                tenant.to_owned()
            } else {
                DEFAULT_TENANT.to_owned()
            });
        }
        if self.keys.is_empty() {
            // No keys configured: whatever key a client sends (SDKs always
            // send one) names nobody.
            return Ok(DEFAULT_TENANT.to_owned());
        }
        match credential(headers) {
            Credential::Missing if !self.require_key => Ok(DEFAULT_TENANT.to_owned()),
            Credential::Missing => Err(ApiError::missing_api_key()),
            Credential::Malformed => Err(ApiError::invalid_api_key()),
            Credential::Bearer(token) => self
                .lookup(&key_digest(token))
                .map(str::to_owned)
                .ok_or_else(ApiError::invalid_api_key),
        }
    }

    /// Compares with every configured key, without an early exit.
    fn lookup(&self, presented: &KeyDigest) -> Option<&str> {
        self.keys.iter().fold(None, |found, (key, tenant)| {
            if constant_time_eq(key, presented) {
                Some(tenant.as_str())
            } else {
                found
            }
        })
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
    match credential(headers) {
        Credential::Bearer(key)
            if constant_time_eq(&key_digest(key), &key_digest(expected.trim())) =>
        {
            Ok(())
        }
        Credential::Missing => Err(ApiError::missing_api_key()),
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
    use axum::http::{HeaderMap, HeaderValue, header};
    use sluice_core::config::{AdmissionConfig, ServerConfig, TenantConfig};

    use super::{TenantKeys, constant_time_eq};

    #[test]
    fn keys_compare_by_content_and_length() {
        assert!(constant_time_eq(b"secret-admin-key", b"secret-admin-key"));
        assert!(!constant_time_eq(b"secret-admin-key", b"secret-admin-kez"));
        assert!(!constant_time_eq(b"secret", b"secret-admin-key"));
    }

    fn keys(server: ServerConfig) -> TenantKeys {
        let admission = AdmissionConfig {
            tenants: vec![TenantConfig {
                name: "acme".to_owned(),
                api_keys: vec!["sk-acme".to_owned()],
                weight: 1.0,
                max_concurrent: None,
                tokens_per_minute: None,
                priority: Default::default(),
            }],
            ..AdmissionConfig::default()
        };
        TenantKeys::new(&server, &admission)
    }

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    name.parse().unwrap(),
                    HeaderValue::from_bytes(value).unwrap(),
                )
            })
            .collect()
    }

    fn status(keys: &TenantKeys, pairs: &[(&str, &[u8])]) -> Result<String, u16> {
        keys.tenant(&headers(pairs))
            .map_err(|err| err.status.as_u16())
    }

    #[test]
    fn configured_keys_make_a_key_required() {
        let keys = keys(ServerConfig::default());
        let auth = header::AUTHORIZATION.as_str();
        assert_eq!(status(&keys, &[]), Err(401));
        assert_eq!(status(&keys, &[(auth, b"Bearer sk-other")]), Err(401));
        assert_eq!(status(&keys, &[(auth, b"Basic c2stYWNtZQ==")]), Err(401));
        assert_eq!(status(&keys, &[(auth, b"Bearer sk-acm\xc3\xa9")]), Err(401));
        assert_eq!(status(&keys, &[(auth, b"Bearer ")]), Err(401));
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let value = format!("{scheme} sk-acme");
            assert_eq!(
                status(&keys, &[(auth, value.as_bytes())]),
                Ok("acme".to_owned())
            );
        }
    }

    #[test]
    fn without_configured_keys_any_key_is_the_default_tenant() {
        let keys = TenantKeys::new(&ServerConfig::default(), &AdmissionConfig::default());
        let auth = header::AUTHORIZATION.as_str();
        assert_eq!(status(&keys, &[]), Ok("default".to_owned()));
        assert_eq!(
            status(&keys, &[(auth, b"Bearer sk-whatever")]),
            Ok("default".to_owned())
        );
    }

    #[test]
    fn an_open_default_tenant_is_explicit() {
        let keys = keys(ServerConfig {
            require_api_key: Some(false),
            ..ServerConfig::default()
        });
        assert_eq!(status(&keys, &[]), Ok("default".to_owned()));
        let auth = header::AUTHORIZATION.as_str();
        assert_eq!(status(&keys, &[(auth, b"Bearer sk-other")]), Err(401));
    }

    #[test]
    fn a_trusted_gateway_header_names_known_tenants_only() {
        let keys = keys(ServerConfig {
            trusted_tenant_header: Some("x-gateway-tenant".to_owned()),
            ..ServerConfig::default()
        });
        assert_eq!(
            status(&keys, &[("x-gateway-tenant", b"acme")]),
            Ok("acme".to_owned())
        );
        assert_eq!(
            status(&keys, &[("x-gateway-tenant", b"unheard-of")]),
            Ok("default".to_owned())
        );
        assert_eq!(status(&keys, &[]), Err(401));
    }
}
