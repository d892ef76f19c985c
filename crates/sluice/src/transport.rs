//! Accepts connections and serves the router on them: cleartext HTTP/1.1 and
//! h2c (prior knowledge) on one port, or TLS with ALPN choosing h2 or
//! http/1.1. Whether new connections are offered HTTP/2 is decided per
//! connection from a flag the admin endpoint (and later the policy engine)
//! flips at run time; open connections keep the protocol they started with.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use sluice_core::config::{Http2Config, TlsConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::control::ProtocolMode;

/// Longest a TLS handshake may take before the connection is dropped, so a
/// client that opens sockets and sends nothing cannot pin tasks.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS server configurations: one offering h2 and http/1.1 by ALPN, one
/// offering only http/1.1 for when HTTP/2 is switched off.
#[derive(Clone)]
pub struct TlsAcceptors {
    with_h2: TlsAcceptor,
    http1_only: TlsAcceptor,
}

impl TlsAcceptors {
    pub fn load(config: &TlsConfig) -> io::Result<Self> {
        let certs = read_certs(&config.cert_path)?;
        let key = PrivateKeyDer::from_pem_file(&config.key_path).map_err(|err| {
            io::Error::other(format!(
                "cannot read TLS key {}: {err}",
                config.key_path.display()
            ))
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let base = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|err| io::Error::other(format!("invalid TLS certificate or key: {err}")))?;
        let mut with_h2 = base.clone();
        with_h2.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut http1_only = base;
        http1_only.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            with_h2: TlsAcceptor::from(Arc::new(with_h2)),
            http1_only: TlsAcceptor::from(Arc::new(http1_only)),
        })
    }
}

fn read_certs(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|err| {
            io::Error::other(format!(
                "cannot read TLS certificate {}: {err}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(io::Error::other(format!(
            "no certificate in {}",
            path.display()
        )));
    }
    Ok(certs)
}

/// Connection builders for both protocol modes, configured once.
struct Builders {
    auto: auto::Builder<TokioExecutor>,
    http1_only: auto::Builder<TokioExecutor>,
}

impl Builders {
    fn new(http2: &Http2Config) -> Self {
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1().timer(TokioTimer::new());
        let mut h2 = auto.http2();
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(http2.max_concurrent_streams)
            .initial_stream_window_size(http2.stream_window_bytes)
            .initial_connection_window_size(http2.connection_window_bytes)
            // WebSockets over HTTP/2 (RFC 8441) arrive as extended CONNECT.
            .enable_connect_protocol();
        if http2.keepalive_interval_ms > 0 {
            h2.keep_alive_interval(Duration::from_millis(http2.keepalive_interval_ms))
                .keep_alive_timeout(Duration::from_millis(http2.keepalive_timeout_ms));
        }
        let mut http1_only = auto::Builder::new(TokioExecutor::new()).http1_only();
        http1_only.http1().timer(TokioTimer::new());
        Self { auto, http1_only }
    }

    fn pick(&self, http2: bool) -> &auto::Builder<TokioExecutor> {
        if http2 { &self.auto } else { &self.http1_only }
    }
}

/// Serves `app` on `listener` until `stop` fires, then waits for open
/// connections to finish (they end when their streams do).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptors>,
    http2: &Http2Config,
    mode: Arc<ProtocolMode>,
    stop: CancellationToken,
) {
    let builders = Arc::new(Builders::new(http2));
    let graceful = GracefulShutdown::new();
    loop {
        let (socket, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead
                    // of spinning, keep serving the connections we have.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Streams are many small writes; Nagle would hold tokens back.
        if let Err(err) = socket.set_nodelay(true) {
            tracing::debug!(%err, %peer, "set_nodelay failed");
        }
        let http2 = mode.http2_enabled();
        let app = app.clone();
        let builders = Arc::clone(&builders);
        let watcher = graceful.watcher();
        match &tls {
            None => serve_connection(socket, app, &builders, http2, watcher),
            Some(acceptors) => {
                let acceptor = if http2 {
                    acceptors.with_h2.clone()
                } else {
                    acceptors.http1_only.clone()
                };
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await;
                    match handshake {
                        Ok(Ok(stream)) => {
                            let alpn_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                            serve_connection(stream, app, &builders, alpn_h2, watcher);
                        }
                        Ok(Err(err)) => tracing::debug!(%err, %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    // Waits for every watched connection, and for TLS handshakes still in
    // flight (bounded by their timeout).
    graceful.shutdown().await;
}

fn serve_connection<S>(io: S, app: Router, builders: &Builders, http2: bool, watcher: Watcher)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(
        app.map_request(|request: hyper::Request<Incoming>| request.map(axum::body::Body::new)),
    );
    let connection = builders
        .pick(http2)
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    let connection = watcher.watch(connection);
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(err = %err, "connection ended with an error");
        }
    });
}
