//! Listeners and connections: TCP or TLS, HTTP/1.1 and HTTP/2 (hyper-util auto), the
//! connection cap, handshake / header-read / idle timeouts, and graceful shutdown.
//!
//! `Server::bind` does everything that can fail at start (sockets, TLS material,
//! upstream clients); `Server::run` then serves until the shutdown future resolves, stops
//! accepting, lets in-flight requests finish within `shutdown_grace`, and returns.
//!
//! Connections take their TLS setup and timeouts from the snapshot current when they are
//! accepted; each request takes the gate current when it arrives (see [`crate::reload`]).

pub(crate) mod activity;
pub mod admin;
pub mod tls;
mod workers;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::WallClock;
use crate::config::{Config, Limits, Timeouts};
use crate::gate::ConnInfo;
use crate::metrics::Metrics;
use crate::proxy::UpgradeRelay;
use crate::reload::{Reloader, Snapshot};
use activity::{Activity, ActivityIo, ExchangeBody};

pub use tls::acceptor as tls_acceptor;

pub struct Server {
    listeners: Vec<TcpListener>,
    admin: Option<TcpListener>,
    reloader: Arc<Reloader>,
    max_connections: usize,
}

impl Server {
    /// Binds every listen address and builds the TLS acceptor and upstream clients.
    pub async fn bind(config: &Config) -> Result<Server, String> {
        Server::bind_with_clock(config, WallClock::system()).await
    }

    /// As [`Server::bind`], with sessions timed by `clock`.
    pub async fn bind_with_clock(config: &Config, clock: WallClock) -> Result<Server, String> {
        let reloader = Arc::new(Reloader::new(config, clock, Arc::new(Metrics::new()))?);
        let snapshot = reloader.current();
        if snapshot.gate.authenticator().basic().is_some() && snapshot.tls.is_none() {
            tracing::warn!(
                "!!! HTTP Basic is enabled on a plain-HTTP listener: passwords cross the network in clear text. \
                 Configure [server.tls], or terminate TLS in front of sallyport and listen on loopback only. !!!"
            );
        }
        let mut listeners = Vec::new();
        for addr in &config.server.listen {
            listeners.push(
                bind_listener(*addr)
                    .map_err(|e| format!("server.listen: cannot listen on {addr}: {e}"))?,
            );
        }
        let admin = match &config.admin {
            Some(admin) => {
                if !admin.listen.ip().is_loopback() {
                    tracing::warn!(
                        addr = %admin.listen,
                        "the admin endpoints have no authentication: make sure only probes and Prometheus can reach this address"
                    );
                }
                Some(
                    bind_listener(admin.listen).map_err(|e| {
                        format!("admin.listen: cannot listen on {}: {e}", admin.listen)
                    })?,
                )
            }
            None => None,
        };
        reloader.watch()?;
        Ok(Server {
            listeners,
            admin,
            reloader,
            max_connections: config.server.limits.max_connections,
        })
    }

    /// The admin listener's address, when `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Reloads on demand (SIGHUP) and reports reload outcomes.
    pub fn reloader(&self) -> Arc<Reloader> {
        Arc::clone(&self.reloader)
    }

    /// The bound addresses (useful when the config asked for port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn is_tls(&self) -> bool {
        self.reloader.current().tls.is_some()
    }

    /// Serves on the runtime this is called from (tests: a paused clock reaches every
    /// connection) until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.serve(shutdown, None).await;
    }

    /// Serves connections on `threads` single-threaded runtimes of their own (see
    /// `workers`), keeping this runtime for accepting, the admin endpoints, reloads and
    /// background refreshes.
    pub async fn run_on_workers(self, shutdown: impl Future<Output = ()>, threads: usize) {
        match workers::Workers::start(threads) {
            Ok(pool) => {
                tracing::info!(
                    threads = pool.threads(),
                    "serving connections on worker threads"
                );
                self.serve(shutdown, Some(Arc::new(pool))).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start worker threads; serving on the main runtime");
                self.serve(shutdown, None).await;
            }
        }
    }

    async fn serve(self, shutdown: impl Future<Output = ()>, pool: Option<Arc<workers::Workers>>) {
        let stop = CancellationToken::new();
        let admin_stop = CancellationToken::new();
        let connections = TaskTracker::new();
        let limiter = Arc::new(Semaphore::new(self.max_connections));
        let admin = self.admin.map(|listener| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "admin endpoints listening: /healthz /readyz /metrics");
            }
            tokio::spawn(admin::serve(
                listener,
                Arc::clone(&self.reloader),
                stop.clone(),
                admin_stop.clone(),
            ))
        });
        let tls = self.reloader.current().tls.is_some();
        let mut accept_loops = Vec::new();
        for listener in self.listeners {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, tls, "listening");
            }
            accept_loops.push(tokio::spawn(accept_loop(
                listener,
                Arc::clone(&self.reloader),
                Arc::clone(&limiter),
                stop.clone(),
                connections.clone(),
                pool.clone(),
            )));
        }

        shutdown.await;
        let grace = self.reloader.current().shutdown_grace;
        tracing::info!(
            ?grace,
            "shutting down: no new connections, draining in-flight requests"
        );
        stop.cancel();
        for l in accept_loops {
            let _ = l.await;
        }
        connections.close();
        if tokio::time::timeout(grace, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = connections.len(),
                "shutdown grace period over; closing remaining connections"
            );
        }
        if let Some(pool) = pool.and_then(Arc::into_inner) {
            pool.stop().await;
        }
        admin_stop.cancel();
        if let Some(admin) = admin {
            let _ = admin.await;
        }
    }
}

fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = if addr.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        // So "0.0.0.0:8443" and "[::]:8443" can both be listed.
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

async fn accept_loop(
    listener: TcpListener,
    reloader: Arc<Reloader>,
    limiter: Arc<Semaphore>,
    stop: CancellationToken,
    connections: TaskTracker,
    pool: Option<Arc<workers::Workers>>,
) {
    loop {
        // Waiting for a permit before accepting leaves excess clients in the kernel's
        // backlog instead of accepting sockets we cannot serve.
        let permit = tokio::select! {
            permit = Arc::clone(&limiter).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            () = stop.cancelled() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning on the error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let snapshot = reloader.current();
        let open = reloader.metrics().connection_opened();
        let relay = UpgradeRelay {
            connection_slot: Arc::new((permit, open)),
            tracker: connections.clone(),
            idle: snapshot.timeouts.idle,
        };
        let reloader = Arc::clone(&reloader);
        let stop = stop.clone();
        match &pool {
            None => {
                connections.spawn(serve_connection(
                    stream, peer, snapshot, reloader, stop, relay,
                ));
            }
            Some(pool) => {
                // Tracked from now, not from when the worker picks it up: shutdown must
                // not overlook a connection still queued for a worker.
                let tracked = connections.token();
                pool.dispatch(stream, move |stream| async move {
                    serve_connection(stream, peer, snapshot, reloader, stop, relay).await;
                    drop(tracked);
                });
            }
        }
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    snapshot: Arc<Snapshot>,
    reloader: Arc<Reloader>,
    stop: CancellationToken,
    relay: UpgradeRelay,
) {
    let activity = Activity::new();
    let mut io = ActivityIo::new(stream, activity.clone());
    // Only these outlive the accept: a long-lived connection must not keep a replaced
    // snapshot (and its background refreshes) alive.
    let acceptor = snapshot.tls.as_ref().map(|s| s.acceptor.clone());
    let settings = (snapshot.timeouts, snapshot.limits);
    drop(snapshot);
    let conn = Connection {
        timeouts: settings.0,
        limits: settings.1,
        reloader: &reloader,
        stop: &stop,
        activity: &activity,
    };
    match acceptor {
        None => {
            let info = ConnInfo::new(peer, false);
            io.detect_http2();
            serve_http(io, info, conn, relay, Protocol::Detect).await;
        }
        Some(acceptor) => {
            let handshake = tokio::time::timeout(conn.timeouts.handshake, acceptor.accept(io));
            let tls = tokio::select! {
                result = handshake => match result {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
                () = stop.cancelled() => return,
            };
            activity.reset_head();
            // Over TLS, ALPN has settled the protocol (RFC 9113 3.2: h2 over TLS is always
            // negotiated), so hyper need not sniff the first bytes for a preface.
            let protocol = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                activity.serving_http2();
                Protocol::Http2
            } else {
                Protocol::Http1
            };
            let info = ConnInfo::new(peer, true);
            serve_http(tls, info, conn, relay, protocol).await;
        }
    }
}

/// What serving one connection needs besides its IO.
#[derive(Clone, Copy)]
struct Connection<'a> {
    /// From the snapshot current when the connection was accepted.
    timeouts: Timeouts,
    limits: Limits,
    reloader: &'a Arc<Reloader>,
    stop: &'a CancellationToken,
    activity: &'a Activity,
}

/// How a connection's protocol is known.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// Negotiated by ALPN.
    Http1,
    Http2,
    /// Plain TCP: HTTP/1.1, or HTTP/2 with prior knowledge, told apart by the first bytes.
    Detect,
}

async fn serve_http<IO>(
    io: IO,
    info: ConnInfo,
    conn: Connection<'_>,
    relay: UpgradeRelay,
    protocol: Protocol,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Connection {
        timeouts,
        limits,
        reloader,
        stop,
        activity,
    } = conn;
    let info = Arc::new(info);
    let service = {
        let reloader = Arc::clone(reloader);
        let activity = activity.clone();
        let info = Arc::clone(&info);
        service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            // The gate current now: a reload between two requests on one keep-alive
            // connection applies to the second.
            let gate = Arc::clone(&reloader.current().gate);
            let (in_flight, exchange) = activity.begin_request();
            // An upgraded connection outlives this service call; it takes the connection's
            // slot and shutdown tracking with it. Only a request asking to upgrade can
            // become one (and extensions cost an allocation on every other request).
            if request.headers().contains_key(hyper::header::UPGRADE) {
                request.extensions_mut().insert(relay.clone());
            }
            // Boxed: hyper keeps a slot the size of this future in every connection, busy
            // or idle; unboxed, the whole pipeline's state (3.7 KB) would sit in each idle
            // keep-alive connection (bench/, idle-connection memory row).
            let info = Arc::clone(&info);
            Box::pin(async move {
                let response = gate.handle(request, &info).await;
                drop(in_flight);
                Ok::<_, Infallible>(response.map(|body| ExchangeBody::new(body, exchange)))
            })
        })
    };

    // hyper's own header timer stays off: `Activity::head_overdue` enforces header_read
    // from the first byte of a head and `idle` the wait between keep-alive requests, while
    // hyper's would allocate and register a timer for every request (about 1% of a
    // request's instructions, bench/).
    let read_buffer = limits.max_header_bytes.max(8192);
    let header_list = u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX);
    const MAX_STREAMS: u32 = 250;
    let io = TokioIo::new(io);
    let lifetime = Lifetime {
        info: &info,
        timeouts,
        stop,
        activity,
    };
    // HTTP/2 clients send SETTINGS, PINGs and WINDOW_UPDATEs between requests, so the
    // request-head deadline applies to HTTP/1 only.
    match protocol {
        Protocol::Http1 => {
            let mut http1 = hyper::server::conn::http1::Builder::new();
            http1
                .header_read_timeout(None)
                .max_buf_size(read_buffer)
                .keep_alive(true);
            let connection = http1.serve_connection(io, service).with_upgrades();
            lifetime
                .drive(connection, |c| c.graceful_shutdown(), true)
                .await;
        }
        Protocol::Http2 => {
            let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            http2
                .timer(TokioTimer::new())
                .max_header_list_size(header_list)
                .max_concurrent_streams(MAX_STREAMS);
            let connection = http2.serve_connection(io, service);
            lifetime
                .drive(connection, |c| c.graceful_shutdown(), false)
                .await;
        }
        Protocol::Detect => {
            // The same settings as the two above, through hyper-util's sniffing builder.
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .header_read_timeout(None)
                .max_buf_size(read_buffer)
                .keep_alive(true);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_header_list_size(header_list)
                .max_concurrent_streams(MAX_STREAMS);
            let connection = builder.serve_connection_with_upgrades(io, service);
            lifetime
                .drive(connection, |c| c.graceful_shutdown(), true)
                .await;
        }
    }
}

/// What ends a served connection besides the client: shutdown, a late request head, idle.
struct Lifetime<'a> {
    info: &'a ConnInfo,
    timeouts: Timeouts,
    stop: &'a CancellationToken,
    activity: &'a Activity,
}

impl Lifetime<'_> {
    async fn drive<C, E>(
        &self,
        connection: C,
        graceful_shutdown: impl Fn(std::pin::Pin<&mut C>),
        head_deadline: bool,
    ) where
        C: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let Lifetime {
            info,
            timeouts,
            stop,
            activity,
        } = self;
        tokio::pin!(connection);
        let mut draining = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(peer = %info.peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = stop.cancelled(), if !draining => {
                    graceful_shutdown(connection.as_mut());
                    draining = true;
                    // The polite close gets a full `idle` before the connection is dropped.
                    activity.touch();
                }
                () = activity.head_overdue(timeouts.header_read), if head_deadline => {
                    tracing::debug!(peer = %info.peer, "request head not complete within header_read; closing");
                    return;
                }
                () = activity.idle_for(timeouts.idle) => {
                    if draining {
                        // Asked to close politely once and still silent: drop it.
                        return;
                    }
                    graceful_shutdown(connection.as_mut());
                    draining = true;
                    activity.touch();
                }
            }
        }
    }
}
