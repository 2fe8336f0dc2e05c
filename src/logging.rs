//! Log setup. `SALLYPORT_LOG` (an EnvFilter directive) overrides `log.level` for a quick
//! debugging session without editing the config; otherwise a reload applies a changed
//! `log.level` (see [`set_level`]).

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::{EnvFilter, reload};

use crate::config::{Log, LogFormat};

type LevelSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Set once by [`init`] when the level comes from the config (not `SALLYPORT_LOG`).
static LEVEL: OnceLock<LevelSetter> = OnceLock::new();

pub fn init(log: &Log) {
    let from_env = EnvFilter::try_from_env("SALLYPORT_LOG").ok();
    let pinned = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let setter: Option<LevelSetter> = match log.format {
        LogFormat::Json => {
            let builder = builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            builder.try_init().ok().map(|()| level_setter(handle))
        }
        LogFormat::Text => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.try_init().ok().map(|()| level_setter(handle))
        }
    };
    if let (Some(setter), false) = (setter, pinned) {
        let _ = LEVEL.set(setter);
    }
}

fn level_setter<S: 'static>(handle: reload::Handle<EnvFilter, S>) -> LevelSetter {
    Box::new(move |level: &str| {
        handle
            .reload(EnvFilter::new(level))
            .map_err(|e| e.to_string())
    })
}

/// Applies a reloaded `log.level`. Does nothing when `SALLYPORT_LOG` set the level for
/// this run, or when no logger was installed (tests, `explain`).
pub fn set_level(level: &str) {
    if let Some(set) = LEVEL.get() {
        if let Err(e) = set(level) {
            tracing::warn!(error = %e, "cannot apply the new log.level");
        }
    }
}
