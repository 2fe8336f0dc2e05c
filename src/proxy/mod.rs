//! Forwarding to upstreams: pooled HTTP/1.1 connections to `http://`, `https://` and
//! `unix:` upstreams, the built-in echo upstream, streaming bodies both ways, and
//! protocol upgrades (WebSocket) bridged byte for byte.

mod echo;
pub mod headers;
mod pool;

use std::error::Error as StdError;
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty, Full, LengthLimitError, Limited, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::time::Instant;

use crate::config::{Timeouts, UpstreamTarget};
use crate::respond::Failure;
use crate::server::activity::{Activity, ActivityIo};
use headers::{ForwardedFacts, ManagedHeaders};
use pool::{Dial, Pool};

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

pub enum Upstream {
    Http {
        pool: Pool,
        scheme: Scheme,
        authority: Authority,
        /// `Host` for requests that arrive without one (HTTP/1.0): the upstream's.
        default_host: HeaderValue,
        base_path: String,
    },
    Unix {
        pool: Pool,
        label: String,
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
                Upstream::Http { pool, .. } | Upstream::Unix { pool, .. } => {
                    pool.probe().await.map_err(|e| e.to_string())
                }
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
                let pool = Pool::new(Dial::Unix(socket.clone()));
                Ok(Upstream::Unix {
                    pool,
                    label: describe_upstream(target),
                })
            }
            UpstreamTarget::Http {
                scheme,
                authority,
                base_path,
                extra_roots,
            } => {
                let https = *scheme == Scheme::HTTPS;
                let host = authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
                // HTTP/1.1 only upstream: that is what every backend speaks, and the only
                // version over which a WebSocket upgrade can be relayed. No ALPN is
                // offered, as before: a server that lists only h2 would refuse the
                // handshake over it.
                let tls = if https {
                    let config = tls_client_config(extra_roots, "upstream_ca")?;
                    let name = ServerName::try_from(host.clone())
                        .map_err(|e| format!("upstream {authority}: {e}"))?;
                    Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
                } else {
                    None
                };
                // As clients write it: no port when it is the scheme's default.
                let default_port = authority.port_u16() == Some(if https { 443 } else { 80 });
                let host_value = if default_port {
                    authority.host()
                } else {
                    authority.as_str()
                };
                let default_host = HeaderValue::from_str(host_value)
                    .map_err(|_| format!("upstream {authority}: not a valid Host value"))?;
                let pool = Pool::new(Dial::tcp(&host, port, tls, timeouts.upstream_connect)?);
                Ok(Upstream::Http {
                    pool,
                    scheme: scheme.clone(),
                    authority: authority.clone(),
                    default_host,
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
            pool,
            default_host,
            base_path,
            ..
        } => {
            // Origin-form: the upstream is reached directly, never through a proxy.
            parts.uri = Uri::try_from(format!("{base_path}{path_and_query}"))
                .map_err(|_| Failure::BadRequest("The request target is malformed."))?;
            if !parts.headers.contains_key(HOST) {
                parts.headers.insert(HOST, default_host.clone());
            }
            send(
                pool,
                Request::from_parts(parts, body),
                settings.upstream_response,
            )
            .await
        }
        Upstream::Unix { pool, label, .. } => {
            parts.uri = Uri::try_from(path_and_query)
                .map_err(|_| Failure::BadRequest("The request target is malformed."))?;
            if !parts.headers.contains_key(HOST) {
                parts
                    .headers
                    .insert(HOST, HeaderValue::from_static("localhost"));
            }
            send(
                pool,
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

async fn send(
    pool: &Pool,
    request: Request<ProxyBody>,
    deadline: Duration,
) -> Result<Response<ProxyBody>, Failure> {
    match tokio::time::timeout(deadline, pool.send(request)).await {
        Err(_) => Err(Failure::GatewayTimeout),
        Ok(Err(e)) => {
            let failure = classify(&*e);
            if matches!(failure, Failure::BadRequest(_)) {
                tracing::debug!(error = %error_chain(&*e), "the client's request body failed");
            } else {
                tracing::warn!(error = %error_chain(&*e), "upstream request failed");
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
