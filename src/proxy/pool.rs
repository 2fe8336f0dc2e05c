//! Upstream HTTP/1.1 connections, kept per worker thread and reused.
//!
//! Each upstream gets its own pool, and each worker thread its own stack of idle
//! connections in it: a request takes the most recently used one that is ready and
//! leaves it on the thread whose runtime drives it. hyper-util's general-purpose client
//! did this job before; callgrind put it at an eighth of a proxied request's instructions
//! (a pool map hashed by scheme and authority twice per request, a boxed future, a timer
//! per checkout), all of which a single-origin, single-thread pool does not need.
//!
//! What it keeps from that client:
//! - a request that was never sent because a pooled connection had just been closed by
//!   the upstream is sent again on another connection;
//! - a connection goes back to the pool only once it can take another request: at once
//!   when the response was read whole, otherwise when its body has been relayed;
//! - idle connections are closed after [`IDLE_TIMEOUT`], and at most
//!   [`MAX_IDLE_PER_THREAD`] are kept per thread.
//!
//! And what it adds, as nginx and Go's client do: an idempotent request without a body,
//! sent on a connection that had been idle a while, is sent once more on a new
//! connection if the upstream closed or reset that connection before answering. That is
//! an upstream's keep-alive timeout (5 s in Node, Apache and uvicorn, 2 s in gunicorn)
//! crossing the request on the wire; RFC 9110, 9.2.2 allows the retry.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Method, Request, Response, Uri};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use thread_local::ThreadLocal;
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;
use tower_service::Service as _;

use super::{BoxError, ProxyBody};

/// How long an unused upstream connection is kept (hyper-util's default, which this
/// replaces; shorter than nginx's and most servers' own keep-alive limits would make
/// little difference, longer would hold sockets an idle upstream may already have shut).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per worker thread and upstream; more are closed when returned.
pub const MAX_IDLE_PER_THREAD: usize = 256;
/// How long a connection must have been idle for its requests to be kept for a replay.
/// Under load connections are reused within milliseconds, long before any upstream's
/// keep-alive timeout, and copying every request's head would cost for nothing.
const REPLAY_AFTER_IDLE: Duration = Duration::from_secs(1);

type UpstreamStream = Either<TcpStream, Either<TlsStream<TcpStream>, UnixStream>>;

/// How to open a new connection to the upstream.
pub enum Dial {
    Tcp {
        /// hyper-util's TCP connector, for what it does well: DNS off the runtime, each
        /// resolved address tried with a share of `upstream_connect`, IPv4 tried 300 ms
        /// after an IPv6 address that does not answer.
        tcp: HttpConnector,
        /// `http://host:port`: what `tcp` dials (TLS, if any, is added here).
        address: Uri,
        tls: Option<(TlsConnector, ServerName<'static>)>,
        /// `upstream_connect`, which also bounds the TLS handshake, as nginx's
        /// `proxy_connect_timeout` does: an upstream that accepts and never answers the
        /// handshake is a connect failure, not a slow response.
        connect_timeout: Duration,
    },
    Unix(PathBuf),
}

impl Dial {
    pub fn tcp(
        host: &str,
        port: u16,
        tls: Option<(TlsConnector, ServerName<'static>)>,
        connect_timeout: Duration,
    ) -> Result<Dial, String> {
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(connect_timeout));
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let address = Uri::try_from(format!("http://{host}:{port}"))
            .map_err(|e| format!("upstream {host}:{port}: {e}"))?;
        Ok(Dial::Tcp {
            tcp,
            address,
            tls,
            connect_timeout,
        })
    }

    async fn connect_tcp(tcp: &HttpConnector, address: &Uri) -> Result<TcpStream, BoxError> {
        Ok(tcp.clone().call(address.clone()).await?.into_inner())
    }

    /// A TCP or Unix connect, nothing sent (no TLS either).
    async fn probe(&self) -> Result<(), BoxError> {
        match self {
            Dial::Tcp { tcp, address, .. } => Dial::connect_tcp(tcp, address).await.map(drop),
            Dial::Unix(path) => Ok(UnixStream::connect(path).await.map(drop)?),
        }
    }

    async fn open(&self) -> Result<UpstreamStream, BoxError> {
        match self {
            Dial::Tcp {
                tcp,
                address,
                tls,
                connect_timeout,
            } => {
                let tcp = Dial::connect_tcp(tcp, address).await?;
                match tls {
                    None => Ok(Either::Left(tcp)),
                    Some((connector, name)) => {
                        let handshake = connector.connect(name.clone(), tcp);
                        let tls = tokio::time::timeout(*connect_timeout, handshake)
                            .await
                            .map_err(|_| {
                                io::Error::new(
                                    io::ErrorKind::TimedOut,
                                    "TLS handshake with the upstream timed out",
                                )
                            })??;
                        Ok(Either::Right(Either::Left(tls)))
                    }
                }
            }
            Dial::Unix(path) => {
                let unix = UnixStream::connect(path).await?;
                Ok(Either::Right(Either::Right(unix)))
            }
        }
    }
}

pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    dial: Dial,
    idle: ThreadLocal<RefCell<VecDeque<Idle>>>,
    /// Origin of the times kept in [`IdleMark`]s.
    epoch: Instant,
}

/// A connection that can take a request now.
struct Idle {
    sender: SendRequest<ProxyBody>,
    mark: Arc<IdleMark>,
    since: Instant,
}

/// When a connection last became idle, as the task driving it sees it, so that the task
/// can close it once it has been idle for [`IDLE_TIMEOUT`] even if no request comes to
/// notice. Milliseconds since the pool's epoch; `BUSY` while lent out.
struct IdleMark(AtomicU64);

const BUSY: u64 = u64::MAX;

/// A connection lent to one request.
struct Lease {
    sender: SendRequest<ProxyBody>,
    mark: Arc<IdleMark>,
    /// How long it had been idle; `None` for a new connection.
    idle_for: Option<Duration>,
}

impl Pool {
    pub fn new(dial: Dial) -> Pool {
        Pool {
            shared: Arc::new(Shared {
                dial,
                idle: ThreadLocal::new(),
                epoch: Instant::now(),
            }),
        }
    }

    /// Whether the upstream accepts a connection now (for `/readyz`).
    pub async fn probe(&self) -> Result<(), BoxError> {
        self.shared.dial.probe().await
    }

    /// Sends `request` (origin-form target, `Host` set) and returns the response head.
    pub async fn send(
        &self,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, BoxError> {
        let mut replayed = false;
        loop {
            let pooled = if replayed {
                None
            } else {
                self.shared.checkout()
            };
            let mut lease = match pooled {
                Some(lease) => lease,
                // Boxed: connecting (TCP, then maybe TLS) is a large future that requests
                // on pooled connections need not carry.
                None => Box::pin(self.shared.connect()).await?,
            };
            let replay = lease
                .idle_for
                .filter(|idle| *idle >= REPLAY_AFTER_IDLE)
                .and_then(|_| replayable_copy(&request));
            match lease.sender.try_send_request(request).await {
                Ok(response) => {
                    Shared::release(&self.shared, lease);
                    return Ok(response);
                }
                Err(mut failed) => match (failed.take_message(), replay) {
                    // The upstream closed a pooled connection before the request went
                    // out on it: nothing was sent, so sending it again is safe. A fresh
                    // connection failing the same way is the upstream's answer.
                    (Some(unsent), _) if lease.idle_for.is_some() => {
                        tracing::debug!(error = %failed.error(), "pooled upstream connection was closed; retrying");
                        request = unsent;
                    }
                    (None, Some(copy)) if closed_before_answering(failed.error()) => {
                        tracing::debug!(error = %failed.error(), "idle upstream connection closed under the request; sending it again");
                        request = copy;
                        replayed = true;
                    }
                    _ => return Err(failed.into_error().into()),
                },
            }
        }
    }
}

impl Shared {
    fn checkout(&self) -> Option<Lease> {
        let mut idle = self.idle.get()?.try_borrow_mut().ok()?;
        while let Some(entry) = idle.pop_back() {
            // A connection that is not ready now is closing or closed: it only went in
            // ready, and an idle one cannot become busy.
            let idle_for = entry.since.elapsed();
            if entry.sender.is_ready() && idle_for < IDLE_TIMEOUT {
                entry.mark.0.store(BUSY, Ordering::Relaxed);
                return Some(Lease {
                    sender: entry.sender,
                    mark: entry.mark,
                    idle_for: Some(idle_for),
                });
            }
        }
        None
    }

    async fn connect(&self) -> Result<Lease, BoxError> {
        let stream = self.dial.open().await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        let mark = Arc::new(IdleMark(AtomicU64::new(BUSY)));
        let watched = Arc::clone(&mark);
        let epoch = self.epoch;
        tokio::spawn(async move {
            tokio::select! {
                biased;
                result = connection.with_upgrades() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "upstream connection ended with an error");
                    }
                }
                () = idle_expiry(&watched, epoch) => {
                    tracing::debug!("closing an idle upstream connection");
                }
            }
        });
        Ok(Lease {
            sender,
            mark,
            idle_for: None,
        })
    }

    /// Returns a connection whose response head has arrived: now, if the whole response
    /// was already read; otherwise once its body has been relayed (until then the
    /// connection cannot take another request). Upgraded connections never come back.
    fn release(shared: &Arc<Shared>, mut lease: Lease) {
        if lease.sender.is_ready() {
            shared.put(lease);
        } else if !lease.sender.is_closed() {
            let shared = Arc::clone(shared);
            tokio::spawn(async move {
                if lease.sender.ready().await.is_ok() {
                    shared.put(lease);
                }
            });
        }
    }

    fn put(&self, lease: Lease) {
        let Ok(mut idle) = self.idle.get_or_default().try_borrow_mut() else {
            return;
        };
        let now = Instant::now();
        // The oldest first: expired, or closed by the upstream (whose entries would
        // otherwise hold their request channel until a burst pushes them out).
        while idle.front().is_some_and(|oldest| {
            now.saturating_duration_since(oldest.since) >= IDLE_TIMEOUT || !oldest.sender.is_ready()
        }) {
            idle.pop_front();
        }
        if idle.len() >= MAX_IDLE_PER_THREAD {
            idle.pop_front();
        }
        let millis = u64::try_from(now.duration_since(self.epoch).as_millis()).unwrap_or(BUSY - 1);
        lease.mark.0.store(millis, Ordering::Relaxed);
        idle.push_back(Idle {
            sender: lease.sender,
            mark: lease.mark,
            since: now,
        });
    }
}

/// A copy of `request` to send again if the connection fails before answering: only for
/// methods that are idempotent by definition, and only without a body (the body is a
/// stream, consumed as it is sent).
fn replayable_copy(request: &Request<ProxyBody>) -> Option<Request<ProxyBody>> {
    let idempotent = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    if !idempotent || !request.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(super::empty_body());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

/// The upstream closed or reset the connection before any response: what a keep-alive
/// timeout crossing the request looks like. Not a timeout, not a malformed answer.
fn closed_before_answering(error: &hyper::Error) -> bool {
    if error.is_incomplete_message() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            // UnexpectedEof: rustls, for a TLS upstream that closed without close_notify.
            return matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            );
        }
        source = e.source();
    }
    false
}

/// Resolves once the connection has sat idle for [`IDLE_TIMEOUT`]; wakes about once per
/// timeout, not per request.
async fn idle_expiry(mark: &IdleMark, epoch: Instant) {
    loop {
        let since = mark.0.load(Ordering::Relaxed);
        if since == BUSY {
            tokio::time::sleep(IDLE_TIMEOUT).await;
            continue;
        }
        let expires = epoch + Duration::from_millis(since) + IDLE_TIMEOUT;
        if Instant::now() >= expires {
            return;
        }
        tokio::time::sleep_until(expires).await;
    }
}
