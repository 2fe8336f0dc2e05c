//! One single-threaded runtime per core, each serving the connections handed to it.
//!
//! With tokio's work-stealing runtime every request crossed threads: the connection task,
//! the upstream connection's task and the timers ran wherever a worker was free, so each
//! request paid for cross-core wakeups, lock hand-offs and cache misses. Here a connection
//! lives on one thread from accept to close, with everything it spawns (HTTP/2 streams,
//! upstream connections from that thread's pool, WebSocket relays). On the 2-core benchmark
//! machine this took the CPU time per Basic-authenticated request from about 57 to 37 µs
//! and throughput from about 19,000 to 30,000 requests/s (bench/).
//!
//! The acceptor hands each connection to the worker serving the fewest, so long-lived
//! connections do not pile up on one core the way a round-robin or `SO_REUSEPORT` hash
//! would let them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

type Serve = Pin<Box<dyn Future<Output = ()> + Send>>;
/// Runs on the worker's thread, inside its runtime: registers the socket there.
type Job = Box<dyn FnOnce() -> Option<Serve> + Send>;

struct Worker {
    jobs: mpsc::UnboundedSender<Job>,
    /// Connections handed to this worker and not yet closed.
    open: Arc<AtomicUsize>,
}

pub(crate) struct Workers {
    workers: Vec<Worker>,
    /// Where the search for the least-loaded worker starts, so ties rotate.
    next: AtomicUsize,
    abort: CancellationToken,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` worker threads. Every runtime is built before any thread starts, so
    /// a failure is reported at start, not as connections silently dropped later.
    pub(crate) fn start(count: usize) -> std::io::Result<Workers> {
        let runtimes = (0..count.max(1))
            .map(|_| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .thread_name("sallyport-blocking")
                    .on_thread_start(lower_priority)
                    .build()
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let abort = CancellationToken::new();
        let mut workers = Vec::with_capacity(runtimes.len());
        let mut threads = Vec::with_capacity(runtimes.len());
        for (index, runtime) in runtimes.into_iter().enumerate() {
            let (jobs, mut received) = mpsc::unbounded_channel::<Job>();
            let open = Arc::new(AtomicUsize::new(0));
            let worker_open = Arc::clone(&open);
            let abort = abort.clone();
            let thread = std::thread::Builder::new()
                .name(format!("sallyport-worker-{index}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let serve_jobs = async {
                            while let Some(job) = received.recv().await {
                                let Some(serve) = job() else {
                                    worker_open.fetch_sub(1, Ordering::Relaxed);
                                    continue;
                                };
                                let closed = OnClose(Arc::clone(&worker_open));
                                tokio::spawn(async move {
                                    serve.await;
                                    drop(closed);
                                });
                            }
                        };
                        tokio::select! {
                            () = serve_jobs => abort.cancelled().await,
                            () = abort.cancelled() => {}
                        }
                    });
                    // Dropping the runtime here cancels whatever it still runs: only after
                    // the server's shutdown grace is over.
                })?;
            workers.push(Worker { jobs, open });
            threads.push(thread);
        }
        Ok(Workers {
            workers,
            next: AtomicUsize::new(0),
            abort,
            threads,
        })
    }

    pub(crate) fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Hands an accepted connection to the least-loaded worker, which registers it with
    /// its own runtime and runs `serve` there.
    pub(crate) fn dispatch<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "accepted connection could not be handed over");
                return;
            }
        };
        let job: Job = Box::new(move || match TcpStream::from_std(stream) {
            Ok(stream) => Some(Box::pin(serve(stream)) as Serve),
            Err(e) => {
                tracing::debug!(error = %e, "accepted connection could not be registered");
                None
            }
        });
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.workers.len();
        let chosen = (0..count)
            .map(|i| &self.workers[(start + i) % count])
            .min_by_key(|w| w.open.load(Ordering::Relaxed));
        let Some(worker) = chosen else { return };
        worker.open.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::error::SendError(job)) = worker.jobs.send(job) {
            // Only if that worker's thread died; its peers can still serve.
            worker.open.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("a worker thread has stopped; serving on another");
            let alive = self.workers.iter().find(|w| !w.jobs.is_closed());
            if let Some(worker) = alive {
                worker.open.fetch_add(1, Ordering::Relaxed);
                if worker.jobs.send(job).is_err() {
                    worker.open.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Stops every worker, cancelling what they still serve, and waits for their threads.
    pub(crate) async fn stop(self) {
        self.abort.cancel();
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

/// How much lower than serving the blocking threads of a worker's runtime run: nice +10,
/// a scheduler weight of 110 against 1024.
///
/// Blocking work there is, in practice, password hashing (now and then a DNS lookup for
/// a new upstream connection). A flood of wrong passwords costs one bcrypt or argon2 run
/// per guess; at equal priority those runs took a core from the event loops and
/// legitimate requests, which need no hash once their credentials are cached, waited
/// behind them (bench/, row 8). At lower priority the hashing still gets every idle
/// cycle, but yields a busy core to the requests.
#[cfg(target_os = "linux")]
const BLOCKING_NICE: i32 = 10;

/// Runs on each blocking thread as it starts. Linux keeps a nice value per thread, so
/// this leaves the serving threads alone. Failing to lower it (a seccomp filter, say)
/// costs only the preference.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::nice(BLOCKING_NICE) {
        tracing::debug!(error = %e, "cannot lower the priority of a blocking thread");
    }
}

/// Counts a connection as closed however its task ends (finished, or cancelled at stop).
struct OnClose(Arc<AtomicUsize>);

impl Drop for OnClose {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Accepted loopback connections, with their clients kept open.
    async fn connections(count: usize) -> (Vec<TcpStream>, Vec<TcpStream>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        let mut accepted = Vec::new();
        for _ in 0..count {
            clients.push(TcpStream::connect(addr).await.unwrap());
            accepted.push(listener.accept().await.unwrap().0);
        }
        (accepted, clients)
    }

    #[tokio::test]
    async fn each_connection_goes_to_the_least_loaded_worker() {
        let workers = Workers::start(3).unwrap();
        let (release, released) = tokio::sync::watch::channel(false);
        let (seen_tx, mut seen) = mpsc::unbounded_channel::<(String, u16)>();
        let (accepted, _clients) = connections(6).await;
        for stream in accepted {
            let seen_tx = seen_tx.clone();
            let mut released = released.clone();
            workers.dispatch(stream, move |stream| async move {
                let thread = std::thread::current().name().unwrap_or("?").to_string();
                let _ = seen_tx.send((thread, stream.peer_addr().unwrap().port()));
                let _ = released.wait_for(|r| *r).await;
            });
        }
        let mut per_thread: HashMap<String, usize> = HashMap::new();
        for _ in 0..6 {
            let (thread, _) = tokio::time::timeout(std::time::Duration::from_secs(10), seen.recv())
                .await
                .unwrap()
                .unwrap();
            *per_thread.entry(thread).or_default() += 1;
        }
        assert_eq!(per_thread.len(), 3, "{per_thread:?}");
        assert!(per_thread.values().all(|&n| n == 2), "{per_thread:?}");
        assert!(
            per_thread
                .keys()
                .all(|t| t.starts_with("sallyport-worker-"))
        );
        for worker in &workers.workers {
            assert_eq!(worker.open.load(Ordering::Relaxed), 2);
        }

        // Finished connections no longer count against their worker.
        release.send(true).unwrap();
        for _ in 0..200 {
            if workers
                .workers
                .iter()
                .all(|w| w.open.load(Ordering::Relaxed) == 0)
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            workers
                .workers
                .iter()
                .all(|w| w.open.load(Ordering::Relaxed) == 0)
        );
        workers.stop().await;
    }

    #[tokio::test]
    async fn stopping_cancels_what_the_workers_still_serve() {
        let workers = Workers::start(2).unwrap();
        let (dropped_tx, mut dropped) = mpsc::unbounded_channel::<()>();
        let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
        let (accepted, _clients) = connections(2).await;
        for stream in accepted {
            let dropped_tx = dropped_tx.clone();
            let started_tx = started_tx.clone();
            workers.dispatch(stream, move |_stream| async move {
                struct Report(mpsc::UnboundedSender<()>);
                impl Drop for Report {
                    fn drop(&mut self) {
                        let _ = self.0.send(());
                    }
                }
                let _report = Report(dropped_tx);
                let _ = started_tx.send(());
                std::future::pending::<()>().await;
            });
        }
        drop(dropped_tx);
        for _ in 0..2 {
            started.recv().await.unwrap();
        }
        workers.stop().await;
        for _ in 0..2 {
            assert!(
                dropped.recv().await.is_some(),
                "each serving task was dropped"
            );
        }
    }
}
