//! Wall-clock time in Unix seconds, for what outlives the process (session cookies carry
//! their creation and last-use times). Injectable, so tests can move a session past its
//! idle or absolute expiry without waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Default)]
pub struct WallClock {
    /// `None`: the system clock.
    manual: Option<Arc<AtomicU64>>,
}

impl WallClock {
    pub fn system() -> WallClock {
        WallClock { manual: None }
    }

    /// A clock that starts at the current time and moves only when told to.
    pub fn manual() -> WallClock {
        WallClock {
            manual: Some(Arc::new(AtomicU64::new(system_now()))),
        }
    }

    pub fn now(&self) -> u64 {
        match &self.manual {
            Some(t) => t.load(Ordering::Acquire),
            None => system_now(),
        }
    }

    /// Moves a manual clock forward; the system clock cannot be moved.
    pub fn advance(&self, seconds: u64) {
        if let Some(t) = &self.manual {
            t.fetch_add(seconds, Ordering::AcqRel);
        }
    }
}

fn system_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
