//! The first stop of every request: accepts connections and serves the
//! router on them: cleartext HTTP/1.1 and h2c (prior knowledge) on one
//! port, or TLS with ALPN choosing h2 or http/1.1. Whether new connections
//! are offered HTTP/2 is decided per connection from a flag the admin
//! endpoint (and the policy engine) flips at run time; open connections
//! keep the protocol they started with.
//!
//! Each connection is bounded (`server.limits`): a cap on open connections,
//! a deadline for the first byte and for the first complete request, an
//! idle limit and an optional maximum age. A client holds a connection only
//! while it sends or receives something.

use std::convert::Infallible;
use std::io;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use futures::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use sluice_core::config::{Http2Config, LimitsConfig, TlsConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::control::ProtocolMode;
use crate::telemetry::ConnectionMetrics;

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
    fn new(http2: &Http2Config, limits: &LimitsConfig) -> Self {
        let mut auto = auto::Builder::new(TokioExecutor::new());
        Self::limit_http1(&mut auto, limits);
        let mut h2 = auto.http2();
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(http2.max_concurrent_streams)
            .initial_stream_window_size(http2.stream_window_bytes)
            .initial_connection_window_size(http2.connection_window_bytes)
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            // WebSockets over HTTP/2 (RFC 8441) arrive as extended CONNECT.
            .enable_connect_protocol();
        if http2.keepalive_interval_ms > 0 {
            h2.keep_alive_interval(Duration::from_millis(http2.keepalive_interval_ms))
                .keep_alive_timeout(Duration::from_millis(http2.keepalive_timeout_ms));
        }
        let mut http1_only = auto::Builder::new(TokioExecutor::new()).http1_only();
        Self::limit_http1(&mut http1_only, limits);
        Self { auto, http1_only }
    }

    /// Header count and size over the limits get 431 from hyper.
    fn limit_http1(builder: &mut auto::Builder<TokioExecutor>, limits: &LimitsConfig) {
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
            .max_headers(limits.max_header_count)
            // A header block must fit the read buffer (hyper answers 431).
            .max_buf_size(limits.max_header_bytes);
    }

    fn pick(&self, http2: bool) -> &auto::Builder<TokioExecutor> {
        if http2 { &self.auto } else { &self.http1_only }
    }
}

/// What every connection is served with.
pub struct Serving {
    pub app: Router,
    pub tls: Option<TlsAcceptors>,
    pub http2: Http2Config,
    pub limits: LimitsConfig,
    pub mode: Arc<ProtocolMode>,
    pub metrics: Arc<ConnectionMetrics>,
}

/// The open-connection permit, carried in every request's extensions so a
/// WebSocket upgraded out of its connection keeps holding it.
#[derive(Clone)]
struct ConnectionPermit {
    _held: Arc<OwnedSemaphorePermit>,
}

/// Serves on `listener` until `stop` fires, then asks every open
/// connection to finish (HTTP/2 GOAWAY, HTTP/1.1 closes once idle) and
/// waits for them: they end when their streams do.
pub async fn serve(listener: TcpListener, serving: Serving, stop: CancellationToken) {
    let serving = Arc::new(serving);
    let builders = Arc::new(Builders::new(&serving.http2, &serving.limits));
    let open = Arc::new(Semaphore::new(serving.limits.max_connections));
    let connections = TaskTracker::new();
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
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            // Over the cap: close at once, before any work or allocation.
            serving.metrics.refused.inc();
            drop(socket);
            continue;
        };
        // Streams are many small writes; Nagle would hold tokens back.
        if let Err(err) = socket.set_nodelay(true) {
            tracing::debug!(%err, %peer, "set_nodelay failed");
        }
        let connection = Connection {
            serving: Arc::clone(&serving),
            builders: Arc::clone(&builders),
            permit: ConnectionPermit {
                _held: Arc::new(permit),
            },
            stop: stop.clone(),
        };
        connections.spawn(async move {
            connection.serving.metrics.open.inc();
            let serving = Arc::clone(&connection.serving);
            connection.run(socket).await;
            serving.metrics.open.dec();
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    // WebSockets upgraded out of their connections still hold permits: all
    // permits back means every socket has closed too.
    let all = u32::try_from(serving.limits.max_connections).unwrap_or(u32::MAX);
    drop(open.acquire_many(all).await);
}

/// One accepted socket on its way to being served.
struct Connection {
    serving: Arc<Serving>,
    builders: Arc<Builders>,
    permit: ConnectionPermit,
    stop: CancellationToken,
}

impl Connection {
    async fn run(self, socket: TcpStream) {
        let limits = &self.serving.limits;
        let first_byte = Duration::from_millis(limits.first_byte_timeout_ms);
        let http2 = self.serving.mode.http2_enabled();
        match &self.serving.tls {
            None => {
                let mut first = [0u8; 1];
                match tokio::time::timeout(first_byte, socket.peek(&mut first)).await {
                    Ok(Ok(n)) if n > 0 => self.serve(socket, http2).await,
                    // Closed or failed before sending anything.
                    Ok(_) => {}
                    Err(_) => self.serving.metrics.closed("first_byte"),
                }
            }
            Some(acceptors) => {
                let acceptor = if http2 {
                    acceptors.with_h2.clone()
                } else {
                    acceptors.http1_only.clone()
                };
                match tokio::time::timeout(first_byte, acceptor.accept(socket)).await {
                    Ok(Ok(stream)) => {
                        let alpn_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                        self.serve(stream, alpn_h2).await;
                    }
                    Ok(Err(err)) => tracing::debug!(%err, "TLS handshake failed"),
                    Err(_) => self.serving.metrics.closed("first_byte"),
                }
            }
        }
    }

    /// Drives one connection: its requests, and the limits on the time it
    /// may hold the socket without one.
    async fn serve<S>(self, io: S, http2: bool)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::default());
        let service = {
            let activity = Arc::clone(&activity);
            let permit = self.permit.clone();
            let app = self.serving.app.clone();
            tower::service_fn(move |request: hyper::Request<Incoming>| {
                let mut request = request.map(axum::body::Body::new);
                request.extensions_mut().insert(permit.clone());
                let in_flight = activity.start();
                let app = app.clone();
                async move {
                    let response = app.oneshot(request).await?;
                    Ok::<_, Infallible>(track_body(response, in_flight))
                }
            })
        };
        let service = TowerToHyperService::new(service);
        let connection = self
            .builders
            .pick(http2)
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let mut connection = pin!(connection);
        let limits = &self.serving.limits;
        let started = Instant::now();
        let age_limit = (limits.max_connection_age_seconds > 0)
            .then(|| started + Duration::from_secs(limits.max_connection_age_seconds));
        // Until its first request a connection has the header deadline; then
        // the idle limit counts whenever no request is in flight.
        let mut idle_deadline = started + Duration::from_millis(limits.header_read_timeout_ms);
        let idle = Duration::from_millis(limits.idle_timeout_ms);
        let mut closing = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(%err, "connection ended with an error");
                    }
                    return;
                }
                () = self.stop.cancelled(), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = tokio::time::sleep_until(age_limit.unwrap_or(started)), if age_limit.is_some() && !closing => {
                    self.serving.metrics.closed("max_age");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = activity.changed() => {
                    if activity.in_flight() == 0 {
                        idle_deadline = Instant::now() + idle;
                    }
                }
                () = tokio::time::sleep_until(idle_deadline), if activity.in_flight() == 0 => {
                    // Nothing in flight: nothing is lost by closing now.
                    let limit = if activity.served() == 0 { "header" } else { "idle" };
                    self.serving.metrics.closed(limit);
                    return;
                }
            }
        }
    }
}

/// Requests in flight on one connection, counted from the request's
/// arrival at the router to the end of its response body.
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    served: AtomicUsize,
    changed: Notify,
}

impl Activity {
    fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_one();
        InFlight(Arc::clone(self))
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }

    async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// Held by a request and then by its response body.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.changed.notify_one();
    }
}

/// Moves the request's in-flight mark onto its response body, so a
/// connection streaming a response is not idle.
fn track_body(response: axum::response::Response, in_flight: InFlight) -> axum::response::Response {
    response.map(|body| {
        let stream = body.into_data_stream().map(move |frame| {
            let _held = &in_flight;
            frame
        });
        axum::body::Body::from_stream(stream)
    })
}
