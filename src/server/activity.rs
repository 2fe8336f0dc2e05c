//! Idle detection for one connection. hyper bounds the time to read request headers but
//! has no notion of a connection that sits silent between requests (or an HTTP/2
//! connection with no streams), so the IO is wrapped to record when bytes last moved, and
//! a connection is idle once nothing moved for the configured time and no request is
//! waiting for its response.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

#[derive(Clone)]
pub struct Activity {
    inner: Arc<Inner>,
}

struct Inner {
    origin: Instant,
    last_millis: AtomicU64,
    in_flight: AtomicUsize,
    /// When the first byte of a request head arrived on an otherwise quiet connection
    /// ([`NO_HEAD`] when none is arriving).
    head_started_millis: AtomicU64,
}

const NO_HEAD: u64 = u64::MAX;

impl Activity {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                origin: Instant::now(),
                last_millis: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
                head_started_millis: AtomicU64::new(NO_HEAD),
            }),
        }
    }

    fn now_millis(&self) -> u64 {
        u64::try_from(self.inner.origin.elapsed().as_millis()).unwrap_or(NO_HEAD - 1)
    }

    fn touch(&self) {
        self.inner
            .last_millis
            .store(self.now_millis(), Ordering::Relaxed);
    }

    fn touch_read(&self) {
        self.touch();
        if self.inner.in_flight.load(Ordering::Relaxed) == 0 {
            let now = self.now_millis();
            let _ = self.inner.head_started_millis.compare_exchange(
                NO_HEAD,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
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
            if self.inner.in_flight.load(Ordering::Relaxed) == 0
                && self.inner.head_started_millis.load(Ordering::Relaxed) == started
            {
                return;
            }
            tokio::time::sleep(limit).await;
        }
    }

    /// Marks a request as in flight until the guard is dropped.
    pub fn begin_request(&self) -> InFlight {
        self.inner.in_flight.fetch_add(1, Ordering::Relaxed);
        self.reset_head();
        self.touch();
        InFlight {
            activity: self.clone(),
        }
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

/// IO that records activity on every successful read or write.
pub struct ActivityIo<T> {
    io: T,
    activity: Activity,
}

impl<T> ActivityIo<T> {
    pub fn new(io: T, activity: Activity) -> Self {
        Self { io, activity }
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
            self.activity.touch();
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
            self.activity.touch();
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
