//! Live reload. A reload reads the config file (and with it every file it refers to),
//! builds a whole new [`Snapshot`] and swaps it in atomically; when anything fails, the
//! running snapshot stays and the log says why. Requests already running finish on the
//! snapshot they started with; the next request, on any connection, uses the new one.
//!
//! Triggers: SIGHUP (`systemctl reload`), and changes to the watched files. Directories
//! are watched, not files: editors save by writing a new file and renaming it over the
//! old one, and Kubernetes updates a mounted Secret or ConfigMap by swapping a `..data`
//! symlink, so a watch on the file itself would see the first change and then nothing.
//! Any change in a watched directory schedules one reload after a short quiet period; a
//! watched reload first compares contents, so unrelated changes in the same directory
//! cost a read and nothing else.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::clock::WallClock;
use crate::config::{Admin, Config, Limits, LogFormat, Timeouts, TlsSource, TlsVersion};
use crate::gate::Gate;
use crate::metrics::Metrics;
use crate::server::tls::{self, Served};

/// Everything one config produces for connections and requests.
pub struct Snapshot {
    pub gate: Arc<Gate>,
    pub tls: Option<Served>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub shutdown_grace: Duration,
    pub admin: Option<Admin>,
    /// A self-signed setup is kept across reloads that leave it alone, so clients that
    /// pinned the development certificate keep working.
    self_signed: Option<(Vec<String>, TlsVersion)>,
    watched: Files,
    bound: Bound,
    log_level: String,
}

/// What only a restart can change: the sockets, the serving threads, the connection cap
/// and the logger.
#[derive(Debug, Clone, PartialEq)]
struct Bound {
    listen: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
    /// As configured (`None`: one per CPU), and resolved when this config was loaded.
    workers: (Option<usize>, usize),
    max_connections: usize,
    log_format: LogFormat,
}

impl Bound {
    fn of(config: &Config) -> Bound {
        Bound {
            listen: config.server.listen.clone(),
            admin: config.admin.as_ref().map(|a| a.listen),
            workers: (config.server.workers, config.server.worker_threads()),
            max_connections: config.server.limits.max_connections,
            log_format: config.log.format,
        }
    }

    /// The keys whose new values wait for a restart.
    fn changed_keys(&self, new: &Bound) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.listen != new.listen {
            keys.push("server.listen");
        }
        if self.admin != new.admin {
            keys.push("admin.listen");
        }
        let workers_changed = match (self.workers, new.workers) {
            // Both "one per CPU": what the process started with stands, even if its CPU
            // quota changed since.
            ((None, _), (None, _)) => false,
            // Otherwise compare counts, so spelling out the default is no change.
            ((_, running), (_, wanted)) => running != wanted,
        };
        if workers_changed {
            keys.push("server.workers");
        }
        if self.max_connections != new.max_connections {
            keys.push("server.limits.max_connections");
        }
        if self.log_format != new.log_format {
            keys.push("log.format");
        }
        keys
    }
}

/// The config file and the files it refers to, with a digest of their contents.
#[derive(Clone, PartialEq)]
struct Files {
    paths: Vec<PathBuf>,
    /// The contents the snapshot was built from, when known for certain; `None` makes the
    /// next watched change reload whatever the contents say.
    digest: Option<[u8; 32]>,
}

impl Files {
    /// `before`: the digest of the same files taken before the config was read. Only when
    /// nothing changed between that and now is the digest known to describe what was
    /// loaded; a write that raced the load must not make its own reload look redundant.
    fn of(config: &Config, before: Option<&Files>) -> Files {
        let mut paths = vec![config.source.clone()];
        paths.extend(config.files.iter().cloned());
        paths.sort();
        paths.dedup();
        let after = digest_of(&paths);
        let digest = before
            .filter(|b| b.paths == paths && b.digest.is_some() && b.digest == after)
            .and(after);
        Files { paths, digest }
    }
}

/// `None` when a file cannot be read right now (mid-rename): a reload will tell.
fn digest_of(paths: &[PathBuf]) -> Option<[u8; 32]> {
    use aws_lc_rs::digest;
    let mut ctx = digest::Context::new(&digest::SHA256);
    for path in paths {
        let bytes = std::fs::read(path).ok()?;
        ctx.update(&(path.as_os_str().len() as u64).to_be_bytes());
        ctx.update(path.as_os_str().as_encoded_bytes());
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(&bytes);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Some(out)
}

impl Snapshot {
    /// `read_before`: the watched files' digest taken before `config` was read.
    fn build(
        config: &Config,
        clock: WallClock,
        metrics: &Arc<Metrics>,
        previous: Option<&Snapshot>,
        read_before: Option<&Files>,
    ) -> Result<Snapshot, String> {
        if let Some(p) = previous {
            if p.tls.is_some() != config.server.tls.is_some() {
                // A listener must not switch between TLS and plain HTTP under its clients
                // (a deleted [server.tls] would put Basic passwords on the wire).
                return Err(
                    "adding or removing [server.tls] needs a restart; the running config stays"
                        .into(),
                );
            }
        }
        let self_signed = config.server.tls.as_ref().and_then(|t| match &t.source {
            TlsSource::SelfSigned(names) => Some((names.clone(), t.min_version)),
            TlsSource::Files { .. } => None,
        });
        let kept_tls = previous
            .filter(|p| self_signed.is_some() && p.self_signed == self_signed)
            .and_then(|p| p.tls.clone());
        let tls = match (kept_tls, &config.server.tls) {
            (Some(kept), _) => Some(kept),
            (None, Some(t)) => Some(tls::served(t)?),
            (None, None) => None,
        };
        let gate = Gate::build(
            config,
            clock,
            Arc::clone(metrics),
            previous.map(|p| p.gate.as_ref()),
        )?;
        Ok(Snapshot {
            gate: Arc::new(gate),
            tls,
            timeouts: config.server.timeouts,
            limits: config.server.limits,
            shutdown_grace: config.server.shutdown_grace,
            admin: config.admin.clone(),
            self_signed,
            watched: Files::of(config, read_before),
            bound: Bound::of(config),
            log_level: config.log.level.clone(),
        })
    }
}

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP, or a caller that wants a reload whatever the files say.
    Signal,
    /// A watched directory changed: reload only if a watched file's contents did.
    FileChange,
}

/// Reload attempts so far, published for tests and `sallyport check`-style tooling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Reloads tried (a watched change that changed no watched file is not one).
    pub attempts: u64,
    pub successes: u64,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
}

/// Owns the current snapshot and replaces it.
pub struct Reloader {
    path: PathBuf,
    clock: WallClock,
    metrics: Arc<Metrics>,
    current: ArcSwap<Snapshot>,
    /// What the listeners were started with.
    bound: Bound,
    /// One reload at a time: a burst of triggers must not interleave two builds.
    serial: Mutex<()>,
    status: watch::Sender<ReloadStatus>,
    watcher: Mutex<Option<(Vec<PathBuf>, FileWatcher)>>,
}

impl Reloader {
    pub fn new(
        config: &Config,
        clock: WallClock,
        metrics: Arc<Metrics>,
    ) -> Result<Reloader, String> {
        // The config was read before we could take a digest: the first watched change
        // reloads unconditionally.
        let snapshot = Snapshot::build(config, clock.clone(), &metrics, None, None)?;
        if let Some(expiry) = snapshot.tls.as_ref().and_then(|t| t.not_after) {
            metrics.set_certificate_expiry(expiry);
        }
        Ok(Reloader {
            path: config.source.clone(),
            clock,
            metrics,
            bound: snapshot.bound.clone(),
            current: ArcSwap::from_pointee(snapshot),
            serial: Mutex::new(()),
            status: watch::Sender::new(ReloadStatus::default()),
            watcher: Mutex::new(None),
        })
    }

    /// The snapshot new connections and requests use.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn status(&self) -> watch::Receiver<ReloadStatus> {
        self.status.subscribe()
    }

    /// Reads and builds everything again and swaps it in; blocking (file reads, hashing
    /// setup), so async callers run it on the blocking pool. Returns whether a new
    /// snapshot is in place.
    pub fn reload(self: &Arc<Self>, trigger: Trigger) -> bool {
        {
            let _serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
            let current = self.current.load_full();
            let before = Files {
                paths: current.watched.paths.clone(),
                digest: digest_of(&current.watched.paths),
            };
            if trigger == Trigger::FileChange
                && before.digest.is_some()
                && before.digest == current.watched.digest
            {
                return false;
            }
            let built = Config::load(&self.path)
                .map_err(|errors| errors.to_string())
                .and_then(|config| {
                    Snapshot::build(
                        &config,
                        self.clock.clone(),
                        &self.metrics,
                        Some(&current),
                        Some(&before),
                    )
                });
            match built {
                Ok(snapshot) => {
                    let restart = self.bound.changed_keys(&snapshot.bound);
                    if !restart.is_empty() {
                        tracing::warn!(
                            keys = ?restart,
                            "these settings changed but only take effect after a restart; the rest of the new config is in use"
                        );
                    }
                    if let Some(expiry) = snapshot.tls.as_ref().and_then(|t| t.not_after) {
                        self.metrics.set_certificate_expiry(expiry);
                    }
                    if snapshot.log_level != current.log_level {
                        crate::logging::set_level(&snapshot.log_level);
                    }
                    self.current.store(Arc::new(snapshot));
                    // Still serialised: two overlapping reloads cannot leave the watcher on
                    // the older file set.
                    if let Err(why) = self.watch() {
                        tracing::warn!(error = %why, "cannot watch the new config's files; SIGHUP still reloads");
                    }
                    self.metrics.reloaded(true);
                    self.status.send_modify(|s| {
                        s.attempts += 1;
                        s.successes += 1;
                        s.last_error = None;
                    });
                    // Logged once the new config is in use and counted: whoever reads
                    // this line and then looks at /metrics or sends a request sees it.
                    tracing::info!(?trigger, file = %self.path.display(), "config reloaded");
                    true
                }
                Err(why) => {
                    tracing::error!(?trigger, error = %why, "reload failed; still serving the previous config");
                    self.metrics.reloaded(false);
                    self.status.send_modify(|s| {
                        s.attempts += 1;
                        s.last_error = Some(why);
                    });
                    false
                }
            }
        }
    }

    /// Watches the current snapshot's files (again, when a reload changed which).
    pub fn watch(self: &Arc<Self>) -> Result<(), String> {
        let paths = self.current.load().watched.paths.clone();
        let mut slot = self.watcher.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|(watched, _)| *watched == paths) {
            return Ok(());
        }
        let weak = Arc::downgrade(self);
        let watcher = FileWatcher::start(&paths, Duration::from_millis(200), move || {
            if let Some(reloader) = weak.upgrade() {
                reloader.reload(Trigger::FileChange);
            }
        })?;
        *slot = Some((paths, watcher));
        Ok(())
    }
}

pub struct FileWatcher {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FileWatcher {
    /// Calls `on_change` (on the blocking pool: reloads parse and hash) once the watched
    /// files' directories have been quiet for `debounce` after a change.
    pub fn start(
        files: &[PathBuf],
        debounce: Duration,
        on_change: impl Fn() + Send + Sync + 'static,
    ) -> Result<FileWatcher, String> {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event {
                    // Our own reads must not schedule reloads.
                    if !matches!(event.kind, EventKind::Access(_)) {
                        let _ = tx.try_send(());
                    }
                }
            })
            .map_err(|e| format!("cannot start the file watcher: {e}"))?;

        let dirs: BTreeSet<PathBuf> = files.iter().map(|f| parent_dir(f)).collect();
        for dir in &dirs {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        }

        let on_change = Arc::new(on_change);
        let task = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // Let a burst of events (write, rename, chmod) settle into one reload.
                loop {
                    match tokio::time::timeout(debounce, rx.recv()).await {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
                let on_change = Arc::clone(&on_change);
                let _ = tokio::task::spawn_blocking(move || on_change()).await;
            }
        });
        Ok(FileWatcher {
            _watcher: watcher,
            task,
        })
    }
}

fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_racing_the_load_leaves_the_digest_unknown_so_it_is_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sallyport.toml");
        let text = "[[route]]\npath = \"/\"\nupstream = \"builtin:echo\"\nauth = \"public\"\n";
        std::fs::write(&path, text).unwrap();
        let before = Files {
            paths: vec![path.clone()],
            digest: digest_of(std::slice::from_ref(&path)),
        };
        let config = Config::load(&path).unwrap();
        assert_eq!(Files::of(&config, Some(&before)).digest, before.digest);
        assert_eq!(Files::of(&config, None).digest, None);

        // Written after the digest was taken but (as far as anyone knows) before the read.
        std::fs::write(&path, format!("{text}# edited\n")).unwrap();
        assert_eq!(Files::of(&config, Some(&before)).digest, None);
    }

    #[test]
    fn a_changed_worker_count_is_named_as_waiting_for_a_restart() {
        let bound = |server: &str| {
            let text = format!(
                "[server]\nlisten = [\"127.0.0.1:0\"]\n{server}\n\
                 [[route]]\npath = \"/\"\nupstream = \"builtin:echo\"\nauth = \"public\"\n"
            );
            Bound::of(&Config::parse(Path::new("sallyport.toml"), &text).unwrap())
        };
        let two = bound("workers = 2");
        assert_eq!(two.changed_keys(&bound("workers = 4")), ["server.workers"]);
        assert_eq!(two.changed_keys(&bound("workers = 2")), Vec::<&str>::new());
        // The default is one per CPU: writing that number out changes nothing.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let default = bound("");
        assert_eq!(
            default.changed_keys(&bound(&format!("workers = {cpus}"))),
            Vec::<&str>::new()
        );
        assert_eq!(
            default.changed_keys(&bound(&format!("workers = {}", cpus + 1))),
            ["server.workers"]
        );
    }
}
