//! Which names a request may address the server by: `Host` (HTTP/2's
//! `:authority`) and, when a browser sends it, `Origin`, checked before any
//! handler runs. A server on loopback answers only loopback names, so a web
//! page cannot reach it through DNS rebinding or open a cross-site WebSocket.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sluice_core::config::ServerConfig;

use crate::openai::ApiError;

const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The accepted host names, lowercase, without port; `None` accepts all.
pub struct HostAllowlist {
    names: Option<Vec<String>>,
}

impl HostAllowlist {
    pub fn new(server: &ServerConfig) -> Self {
        let names = match &server.allowed_hosts {
            Some(names) => Some(names.iter().map(|name| name.to_ascii_lowercase()).collect()),
            None if binds_loopback(&server.host) => Some(
                LOOPBACK_NAMES
                    .iter()
                    .map(|name| (*name).to_owned())
                    .collect(),
            ),
            None => None,
        };
        Self { names }
    }

    fn allows(&self, host: &str) -> bool {
        self.names
            .as_ref()
            .is_none_or(|names| names.iter().any(|name| name.eq_ignore_ascii_case(host)))
    }
}

fn binds_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The host of an authority (`name[:port]`, `[v6]:port`), without port.
fn host_of(authority: &str) -> &str {
    if let Some(bracketed) = authority.strip_prefix('[') {
        return bracketed.split(']').next().unwrap_or_default();
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

/// Refuses a request whose `Host` or `Origin` names another site (403).
pub async fn check(
    State(allowlist): State<Arc<HostAllowlist>>,
    request: Request,
    next: Next,
) -> Response {
    if allowlist.names.is_none() {
        return next.run(request).await;
    }
    let host = request
        .uri()
        .authority()
        .map(|authority| authority.as_str().to_owned())
        .or_else(|| {
            let value = request.headers().get(header::HOST)?;
            value.to_str().ok().map(str::to_owned)
        });
    if let Some(host) = host
        && !allowlist.allows(host_of(&host))
    {
        return ApiError::forbidden_origin("Host", &host).into_response();
    }
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("(not text)");
        let authority = origin.split_once("://").map_or("", |(_, rest)| rest);
        if !allowlist.allows(host_of(authority)) {
            return ApiError::forbidden_origin("Origin", origin).into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use sluice_core::config::ServerConfig;

    use super::{HostAllowlist, host_of};

    #[test]
    fn hosts_lose_their_port_and_brackets() {
        assert_eq!(host_of("localhost:8080"), "localhost");
        assert_eq!(host_of("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_of("[::1]:8080"), "::1");
        assert_eq!(host_of("evil.example"), "evil.example");
    }

    #[test]
    fn loopback_binds_answer_loopback_names_only() {
        let loopback = HostAllowlist::new(&ServerConfig::default());
        assert!(loopback.allows("LOCALHOST"));
        assert!(loopback.allows("::1"));
        assert!(!loopback.allows("rebound.example"));
        let public = HostAllowlist::new(&ServerConfig {
            host: "0.0.0.0".to_owned(),
            ..ServerConfig::default()
        });
        assert!(public.allows("anything.example"));
        let listed = HostAllowlist::new(&ServerConfig {
            host: "0.0.0.0".to_owned(),
            allowed_hosts: Some(vec!["llm.example".to_owned()]),
            ..ServerConfig::default()
        });
        assert!(listed.allows("llm.example"));
        assert!(!listed.allows("other.example"));
    }
}
