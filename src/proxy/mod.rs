//! Forwarding to upstreams: pooled hyper clients for `http://`, `https://` and
//! `unix:` upstreams, the built-in echo upstream, streaming bodies both ways, and
//! protocol upgrades (WebSocket) bridged byte for byte.

mod echo;
pub mod headers;
mod unix;

use std::error::Error as StdError;
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty, Full, LengthLimitError, Limited, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;
use tokio::time::Instant;

use crate::config::{Timeouts, UpstreamTarget};
use crate::respond::Failure;
use crate::server::activity::{Activity, ActivityIo};
use headers::{ForwardedFacts, ManagedHeaders};

pub type BoxError = Box<dyn StdError + Send + Sync>;
/// One body type for everything the proxy sends or relays.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full_body(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty_body() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A connection pool per thread that forwards requests. The server runs one
/// single-threaded runtime per core; a pool shared between them would hand each request a
/// connection whose task lives on another core, and every request would cross threads
/// twice (callgrind and perf: the shared pool's lock and wakeups were the largest cost
/// left after TLS and the kernel).
pub struct PerThreadClient<C: Send> {
    connector: C,
    pools: thread_local::ThreadLocal<Client<C, ProxyBody>>,
}

impl<C> PerThreadClient<C>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    fn new(connector: C) -> Self {
        PerThreadClient {
            connector,
            pools: thread_local::ThreadLocal::new(),
        }
    }

    /// This thread's pool.
    fn get(&self) -> &Client<C, ProxyBody> {
        self.pools.get_or(|| {
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .build(self.connector.clone())
        })
    }
}

type HttpClient = PerThreadClient<HttpsConnector<HttpConnector>>;
type UnixClient = PerThreadClient<unix::UnixConnector>;

pub enum Upstream {
    Http {
        client: HttpClient,
        scheme: Scheme,
        authority: Authority,
        base_path: String,
    },
    Unix {
        client: UnixClient,
        label: String,
        socket: std::path::PathBuf,
    },
    Echo,
}

/// What an upgraded (WebSocket) connection keeps from the connection it arrived on: its
/// slot under `max_connections`, membership in the set graceful shutdown waits for, and
/// the idle bound. The server puts one in every request's extensions.
#[derive(Clone)]
pub struct UpgradeRelay {
    pub connection_slot: Arc<dyn std::any::Any + Send + Sync>,
    pub tracker: tokio_util::task::TaskTracker,
    pub idle: Duration,
}

/// Per-snapshot settings every forward needs.
pub struct ProxySettings {
    pub managed: ManagedHeaders,
    pub upstream_response: Duration,
    pub max_body_bytes: Option<u64>,
}

pub fn describe_upstream(target: &UpstreamTarget) -> String {
    match target {
        UpstreamTarget::Http {
            scheme,
            authority,
            base_path,
            ..
        } => format!("{scheme}://{authority}{base_path}"),
        UpstreamTarget::Unix { socket } => format!("unix:{}", socket.display()),
        UpstreamTarget::Echo => "builtin:echo".to_string(),
    }
}

/// System trust roots, read once: the OS store does not change under a running process
/// often enough to justify re-reading it per route.
fn native_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() {
            tracing::warn!("no system CA certificates found; https:// upstreams need upstream_ca");
        }
        found.certs
    })
}

/// A TLS client trusting the system roots plus `extra_roots` (`setting` names the config
/// key they came from, for the error).
pub(crate) fn tls_client_config(
    extra_roots: &[CertificateDer<'static>],
    setting: &str,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(native_roots().iter().cloned());
    for ca in extra_roots {
        roots
            .add(ca.clone())
            .map_err(|e| format!("{setting}: unusable CA certificate: {e}"))?;
    }
    tls_client_config_with(roots)
}

fn tls_client_config_with(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Upstream {
    /// Whether the upstream accepts a connection right now (for `/readyz`): a TCP or Unix
    /// connect, nothing sent.
    pub async fn probe(&self, timeout: Duration) -> Result<(), String> {
        let connect = async {
            match self {
                Upstream::Echo => Ok(()),
                Upstream::Http {
                    scheme, authority, ..
                } => {
                    let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
                    let port = authority.port_u16().unwrap_or(default_port);
                    let host = authority
                        .host()
                        .trim_start_matches('[')
                        .trim_end_matches(']');
                    tokio::net::TcpStream::connect((host, port))
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                }
                Upstream::Unix { socket, .. } => tokio::net::UnixStream::connect(socket)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
            }
        };
        tokio::time::timeout(timeout, connect)
            .await
            .unwrap_or_else(|_| Err(format!("no connection within {timeout:?}")))
    }

    /// Where requests go, for operators: `http://host:port`, `unix:/path`, `builtin:echo`.
    pub fn describe(&self) -> String {
        match self {
            Upstream::Http {
                scheme, authority, ..
            } => format!("{scheme}://{authority}"),
            Upstream::Unix { label, .. } => label.clone(),
            Upstream::Echo => "builtin:echo".to_string(),
        }
    }

    pub fn build(target: &UpstreamTarget, timeouts: &Timeouts) -> Result<Upstream, String> {
        match target {
            UpstreamTarget::Echo => Ok(Upstream::Echo),
            UpstreamTarget::Unix { socket } => {
                let client = PerThreadClient::new(unix::UnixConnector::new(socket.clone()));
                Ok(Upstream::Unix {
                    client,
                    label: describe_upstream(target),
                    socket: socket.clone(),
                })
            }
            UpstreamTarget::Http {
                scheme,
                authority,
                base_path,
                extra_roots,
            } => {
                let tls = if *scheme == Scheme::HTTPS {
                    tls_client_config(extra_roots, "upstream_ca")?
                } else {
                    // Never used for plain http://, but the connector wants one.
                    tls_client_config_with(rustls::RootCertStore::empty())?
                };
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_nodelay(true);
                http.set_connect_timeout(Some(timeouts.upstream_connect));
                // HTTP/1.1 only upstream: that is what every backend speaks, and it is the
                // only version over which a WebSocket upgrade can be relayed.
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http);
                let client = PerThreadClient::new(connector);
                Ok(Upstream::Http {
                    client,
                    scheme: scheme.clone(),
                    authority: authority.clone(),
                    base_path: base_path.clone(),
                })
            }
        }
    }
}

/// The upstream's answer, plus how long it took to produce its headers.
pub struct Forwarded {
    pub response: Response<ProxyBody>,
    pub upstream_latency: Duration,
}

/// Forwards one request. `path` is the normalised path the route was matched on; it is
/// the path the upstream receives.
pub async fn forward(
    upstream: &Upstream,
    settings: &ProxySettings,
    mut request: Request<Incoming>,
    path: &str,
    facts: &ForwardedFacts<'_>,
) -> Result<Forwarded, Failure> {
    if let Some(limit) = settings.max_body_bytes {
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Err(Failure::PayloadTooLarge);
        }
    }

    let wants_upgrade = request.version() == Version::HTTP_11
        && headers::is_websocket_upgrade(request.method(), request.headers());
    let client_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut request));
    let relay = request.extensions_mut().remove::<UpgradeRelay>();

    let (mut parts, body) = request.into_parts();
    headers::rewrite_request(&mut parts.headers, &settings.managed, facts, wants_upgrade);
    let body = body.map_err(|e| Box::new(ClientBodyError(e)) as BoxError);
    let body: ProxyBody = match settings.max_body_bytes {
        Some(limit) => {
            Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).boxed_unsync()
        }
        None => body.boxed_unsync(),
    };
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    parts.version = Version::HTTP_11;

    let started = Instant::now();
    let result = match upstream {
        Upstream::Echo => {
            parts.uri = Uri::try_from(path_and_query)
                .map_err(|_| Failure::BadRequest("The request target is malformed."))?;
            echo::respond(Request::from_parts(parts, body))
                .await
                .map_err(|e| classify(&*e))
        }
        Upstream::Http {
            client,
            scheme,
            authority,
            base_path,
        } => {
            parts.uri = Uri::builder()
                .scheme(scheme.clone())
                .authority(authority.clone())
                .path_and_query(format!("{base_path}{path_and_query}"))
                .build()
                .map_err(|_| Failure::BadRequest("The request target is malformed."))?;
            send(
                client,
                Request::from_parts(parts, body),
                settings.upstream_response,
            )
            .await
        }
        Upstream::Unix { client, label, .. } => {
            parts.uri = Uri::builder()
                .scheme(Scheme::HTTP)
                .authority("localhost")
                .path_and_query(path_and_query)
                .build()
                .map_err(|_| Failure::BadRequest("The request target is malformed."))?;
            send(
                client,
                Request::from_parts(parts, body),
                settings.upstream_response,
            )
            .await
            .inspect_err(|_| {
                tracing::debug!(upstream = %label, "unix upstream failed");
            })
        }
    };
    let upstream_latency = started.elapsed();
    let mut response = result?;

    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    match (switching, client_upgrade) {
        (true, Some(client_upgrade)) => {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            match relay {
                Some(relay) => {
                    let slot = relay.connection_slot;
                    relay.tracker.spawn(async move {
                        bridge(client_upgrade, upstream_upgrade, relay.idle).await;
                        drop(slot);
                    });
                }
                None => {
                    tokio::spawn(bridge(
                        client_upgrade,
                        upstream_upgrade,
                        Duration::from_secs(60),
                    ));
                }
            }
        }
        (true, None) => {
            tracing::warn!("upstream switched protocols without being asked to");
            return Err(Failure::BadGateway);
        }
        (false, _) => {}
    }
    headers::strip_hop_by_hop(response.headers_mut(), switching);
    Ok(Forwarded {
        response,
        upstream_latency,
    })
}

async fn send<C>(
    client: &PerThreadClient<C>,
    request: Request<ProxyBody>,
    deadline: Duration,
) -> Result<Response<ProxyBody>, Failure>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    match tokio::time::timeout(deadline, client.get().request(request)).await {
        Err(_) => Err(Failure::GatewayTimeout),
        Ok(Err(e)) => {
            let failure = classify(&e);
            if matches!(failure, Failure::BadRequest(_)) {
                tracing::debug!(error = %error_chain(&e), "the client's request body failed");
            } else {
                tracing::warn!(error = %error_chain(&e), "upstream request failed");
            }
            Err(failure)
        }
        Ok(Ok(response)) => {
            Ok(response.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()))
        }
    }
}

/// Reading the client's request body failed (bad chunk framing, a client gone
/// mid-upload): the client's fault, told apart from the upstream's.
#[derive(Debug)]
struct ClientBodyError(hyper::Error);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "reading the request body: {}", self.0)
    }
}

impl StdError for ClientBodyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

/// Maps a failed upstream exchange to the status the client gets: our own body limit is
/// a 413, a broken request body a 400, any timeout a 504, anything else (refused, reset,
/// TLS, protocol) a 502.
fn classify(err: &(dyn StdError + 'static)) -> Failure {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.is::<LengthLimitError>() {
            return Failure::PayloadTooLarge;
        }
        if e.is::<ClientBodyError>() {
            return Failure::BadRequest("The request body is malformed or ended early.");
        }
        if e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
        {
            return Failure::GatewayTimeout;
        }
        current = e.source();
    }
    Failure::BadGateway
}

fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut current = err.source();
    while let Some(e) = current {
        out.push_str(": ");
        out.push_str(&e.to_string());
        current = e.source();
    }
    out
}

/// Relays an upgraded connection (e.g. WebSocket) until either side closes or nothing has
/// moved in either direction for `idle`.
async fn bridge(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle: Duration,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "protocol upgrade did not complete");
            return;
        }
    };
    let activity = Activity::new();
    let mut client = ActivityIo::new(TokioIo::new(client), activity.clone());
    let mut upstream = TokioIo::new(upstream);
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
            }
        }
        () = activity.idle_for(idle) => tracing::debug!("upgraded connection idle; closing"),
    }
}
