//! Deadlines for one connection, from the bytes it moves: a connection is idle once nothing
//! moved for the configured time and no request is waiting for its response, and an
//! HTTP/1 request head must be complete within `header_read` of its first byte. hyper has
//! no notion of the first (its own header timer, left off, also runs while a keep-alive
//! connection waits for its next request), so the IO is wrapped to record when bytes
//! last moved and when a head began.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

#[derive(Clone)]
pub struct Activity {
    inner: Arc<Inner>,
}

struct Inner {
    origin: Instant,
    last_millis: AtomicU64,
    /// Requests waiting for their response head.
    in_flight: AtomicUsize,
    /// Requests whose response body is not finished yet. Bytes the client sends meanwhile
    /// (the next request, pipelined) do not start a head's clock.
    open_exchanges: AtomicUsize,
    /// When the first byte of a request head arrived on an otherwise quiet connection
    /// ([`NO_HEAD`] when none is arriving).
    head_started_millis: AtomicU64,
    /// The client spoke HTTP/2, whose frames (PING, WINDOW_UPDATE, SETTINGS) arrive
    /// between and during requests and are no request head: `header_read` does not apply,
    /// and between requests those frames are not activity either (as in Go's server):
    /// otherwise a PING now and then would hold a connection, and its slot, for ever.
    http2: AtomicBool,
    /// HTTP/1 bytes arrived while a response body was still being sent: the next request,
    /// pipelined. Once that response is done they are a head in progress.
    read_during_exchange: AtomicBool,
}

const NO_HEAD: u64 = u64::MAX;

/// What an HTTP/2 client sends first (RFC 9113 3.4); hyper-util's protocol detection
/// decides on the same 24 bytes.
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Activity {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                origin: Instant::now(),
                last_millis: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
                open_exchanges: AtomicUsize::new(0),
                head_started_millis: AtomicU64::new(NO_HEAD),
                http2: AtomicBool::new(false),
                read_during_exchange: AtomicBool::new(false),
            }),
        }
    }

    fn now_millis(&self) -> u64 {
        u64::try_from(self.inner.origin.elapsed().as_millis()).unwrap_or(NO_HEAD - 1)
    }

    /// Something happened on the connection: a request began or ended, or it started to
    /// close.
    pub fn touch(&self) {
        self.inner
            .last_millis
            .store(self.now_millis(), Ordering::Relaxed);
    }

    /// Bytes moved on the connection.
    fn touch_io(&self) {
        let exchanges = self.inner.open_exchanges.load(Ordering::Relaxed);
        if exchanges > 0 || !self.inner.http2.load(Ordering::Relaxed) {
            self.touch();
        }
    }

    fn touch_read(&self) {
        self.touch_io();
        if self.inner.http2.load(Ordering::Relaxed) {
            return;
        }
        if self.inner.open_exchanges.load(Ordering::Relaxed) == 0 {
            self.start_head();
        } else if self.inner.in_flight.load(Ordering::Relaxed) == 0 {
            // After the response head: the next request, not this one's body (which the
            // upstream reads before it answers).
            self.inner
                .read_during_exchange
                .store(true, Ordering::Relaxed);
        }
    }

    /// A request head is arriving from now, unless one already was.
    fn start_head(&self) {
        let now = self.now_millis();
        let _ = self.inner.head_started_millis.compare_exchange(
            NO_HEAD,
            now,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The connection speaks HTTP/2: ALPN chose h2, or a plain connection began with the
    /// preface (see `http2`).
    pub fn serving_http2(&self) {
        self.inner.http2.store(true, Ordering::Relaxed);
    }

    /// Forgets bytes read so far (the TLS handshake's) as the start of a request head.
    pub fn reset_head(&self) {
        self.inner
            .head_started_millis
            .store(NO_HEAD, Ordering::Relaxed);
    }

    /// Resolves once a request head has been arriving for `limit` without completing.
    /// hyper's own header timer also runs while a keep-alive connection waits for its next
    /// request, which would make `idle` meaningless for HTTP/1.1; this one starts only
    /// when the client actually begins sending.
    pub async fn head_overdue(&self, limit: Duration) {
        loop {
            if self.inner.http2.load(Ordering::Relaxed) {
                return std::future::pending().await;
            }
            let started = self.inner.head_started_millis.load(Ordering::Relaxed);
            if started == NO_HEAD {
                tokio::time::sleep(limit).await;
                continue;
            }
            let deadline = self.inner.origin + Duration::from_millis(started) + limit;
            if Instant::now() < deadline {
                tokio::time::sleep_until(deadline).await;
                continue;
            }
            if self.inner.open_exchanges.load(Ordering::Relaxed) == 0
                && self.inner.head_started_millis.load(Ordering::Relaxed) == started
            {
                return;
            }
            tokio::time::sleep(limit).await;
        }
    }

    /// Marks a request as in flight until its response head is out (the first guard's
    /// drop) and its exchange open until the response body is done (the second's).
    pub fn begin_request(&self) -> (InFlight, Exchange) {
        self.inner.in_flight.fetch_add(1, Ordering::Relaxed);
        self.inner.open_exchanges.fetch_add(1, Ordering::Relaxed);
        // Whatever was read ahead was this request's head.
        self.inner
            .read_during_exchange
            .store(false, Ordering::Relaxed);
        self.reset_head();
        self.touch();
        (
            InFlight {
                activity: self.clone(),
            },
            Exchange {
                activity: self.clone(),
            },
        )
    }

    /// Resolves once the connection has been idle for `limit`.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.inner.last_millis.load(Ordering::Relaxed));
            let deadline = self.inner.origin + last + limit;
            if Instant::now() >= deadline {
                if self.inner.in_flight.load(Ordering::Relaxed) == 0 {
                    return;
                }
                // A request is waiting on the upstream, whose own timeout bounds it.
                tokio::time::sleep(limit).await;
            } else {
                tokio::time::sleep_until(deadline).await;
            }
        }
    }
}

pub struct InFlight {
    activity: Activity,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity
            .inner
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
        self.activity.touch();
    }
}

pub struct Exchange {
    activity: Activity,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let inner = &self.activity.inner;
        let last = inner.open_exchanges.fetch_sub(1, Ordering::Relaxed) == 1;
        self.activity.touch();
        // A pipelined head, whole or not: if whole, the next request begins at once and
        // resets the clock; if not, `header_read` bounds the rest of it.
        if last && inner.read_during_exchange.swap(false, Ordering::Relaxed) {
            self.activity.start_head();
        }
    }
}

/// A response body that keeps its exchange open until hyper is done with it (sent whole,
/// or dropped with the connection).
pub struct ExchangeBody<B> {
    body: B,
    _exchange: Exchange,
}

impl<B> ExchangeBody<B> {
    pub fn new(body: B, exchange: Exchange) -> Self {
        Self {
            body,
            _exchange: exchange,
        }
    }
}

impl<B: Body + Unpin> Body for ExchangeBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// IO that records activity on every successful read or write.
pub struct ActivityIo<T> {
    io: T,
    activity: Activity,
    /// How much of [`HTTP2_PREFACE`] the first bytes matched, while that is undecided.
    preface_matched: Option<usize>,
}

impl<T> ActivityIo<T> {
    pub fn new(io: T, activity: Activity) -> Self {
        Self {
            io,
            activity,
            preface_matched: None,
        }
    }

    /// For a connection whose protocol hyper will detect (plain TCP): watch the first
    /// bytes for the HTTP/2 preface. Over TLS, ALPN has already told.
    pub fn detect_http2(&mut self) {
        self.preface_matched = Some(0);
    }

    fn sniff(&mut self, read: &[u8]) {
        let Some(matched) = self.preface_matched else {
            return;
        };
        let expected = &HTTP2_PREFACE[matched..];
        let compared = expected.len().min(read.len());
        if read[..compared] != expected[..compared] {
            self.preface_matched = None;
        } else if matched + compared == HTTP2_PREFACE.len() {
            self.activity.serving_http2();
            self.preface_matched = None;
        } else {
            self.preface_matched = Some(matched + compared);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ActivityIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.sniff(&buf.filled()[before..]);
            self.activity.touch_read();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActivityIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch_io();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch_io();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
