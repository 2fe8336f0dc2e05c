//! File watching for live reload. Directories are watched, not files: editors save by
//! writing a new file and renaming it over the old one, and Kubernetes updates a mounted
//! Secret or ConfigMap by swapping a `..data` symlink, so a watch on the file itself would
//! see the first change and then nothing. Any change in a watched directory schedules one
//! reload after a short quiet period; the reload compares contents, so unrelated changes
//! in the same directory cost a read and nothing else.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

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
