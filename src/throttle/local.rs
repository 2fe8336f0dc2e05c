//! Counters in this process. Each table is a moka cache bounded by `max_tracked`: its
//! TinyLFU admission keeps entries that are hit often (an attacker's) when a flood of
//! one-off keys arrives, so flooding cannot flush a block. Entries also vanish once idle
//! for longer than they can matter. Times come from the [`Clock`](super::Clock), so
//! entries carry their own timestamps and are judged by them, not by moka's timers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use moka::sync::Cache;

use super::{ClientKey, Throttled, ThrottledBy, Transitions, UserKey};
use crate::config::RateLimit;

/// Guesses within a sliding window, oldest first: settled failures, and guesses still
/// being checked (pending). Pending ones take a slot, so concurrent guesses cannot exceed
/// the budget, but only settled failures start a block: correct logins that are merely
/// in flight never lock anyone out.
#[derive(Default)]
struct Log {
    attempts: VecDeque<Entry>,
    blocked_until: Option<Duration>,
    /// A username's throttle is logged once; this is when the logged one ends.
    reported_until: Duration,
}

struct Entry {
    at: Duration,
    /// Hash of the guess id (ids are strings because Redis shares them).
    id: u64,
    settled: bool,
}

/// While only pending guesses fill the budget, the client can retry as soon as they
/// finish, which takes a hash's time, not a window's.
const PENDING_RETRY: Duration = Duration::from_secs(1);

fn id_hash(id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

impl Log {
    fn prune(&mut self, now: Duration, window: Duration) {
        while self.attempts.front().is_some_and(|e| e.at + window <= now) {
            self.attempts.pop_front();
        }
    }

    fn settled(&self) -> usize {
        self.attempts.iter().filter(|e| e.settled).count()
    }

    /// How long until another attempt is allowed, if it is not allowed now.
    fn wait(&mut self, now: Duration, max: usize, window: Duration) -> Option<Duration> {
        if let Some(until) = self.blocked_until {
            if until > now {
                return Some(until - now);
            }
            self.blocked_until = None;
        }
        self.prune(now, window);
        if self.attempts.len() < max {
            return None;
        }
        if self.settled() >= max {
            let oldest = self
                .attempts
                .iter()
                .find(|e| e.settled)
                .map_or(now, |e| e.at);
            return Some((oldest + window).saturating_sub(now));
        }
        Some(PENDING_RETRY)
    }

    fn add_pending(&mut self, id: &str, now: Duration) {
        let id = id_hash(id);
        if !self.attempts.iter().any(|e| e.id == id) {
            self.attempts.push_back(Entry {
                at: now,
                id,
                settled: false,
            });
        }
    }

    /// Marks a reserved guess failed, or records a failure that had none.
    fn settle(&mut self, id: &str, now: Duration) {
        let id = id_hash(id);
        match self.attempts.iter_mut().find(|e| e.id == id) {
            Some(entry) => entry.settled = true,
            None => self.attempts.push_back(Entry {
                at: now,
                id,
                settled: true,
            }),
        }
    }

    fn remove(&mut self, id: &str) {
        let id = id_hash(id);
        self.attempts.retain(|e| e.id != id);
    }
}

type Slot = Arc<Mutex<Log>>;

fn lock(slot: &Slot) -> MutexGuard<'_, Log> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct LocalStore {
    clients: Cache<ClientKey, Slot>,
    users: Cache<UserKey, Slot>,
    /// Client/user pairs that authenticated recently, with the time they last did.
    known: Cache<(UserKey, ClientKey), Duration>,
    limits: RateLimit,
}

impl LocalStore {
    pub fn new(limits: &RateLimit) -> LocalStore {
        let client_idle = limits.window.max(limits.block_for);
        LocalStore {
            clients: Cache::builder()
                .max_capacity(limits.max_tracked)
                .time_to_idle(client_idle)
                .build(),
            users: Cache::builder()
                .max_capacity(limits.max_tracked)
                .time_to_idle(limits.user_window)
                .build(),
            known: Cache::builder()
                .max_capacity(limits.max_tracked)
                .time_to_live(limits.user_window)
                .build(),
            limits: limits.clone(),
        }
    }

    pub fn tracked(&self) -> (u64, u64) {
        self.clients.run_pending_tasks();
        self.users.run_pending_tasks();
        (self.clients.entry_count(), self.users.entry_count())
    }

    fn client_wait(&self, log: &mut Log, now: Duration) -> Option<Duration> {
        log.wait(now, self.limits.max_failures as usize, self.limits.window)
    }

    fn user_wait(&self, log: &mut Log, now: Duration) -> Option<Duration> {
        log.wait(
            now,
            self.limits.max_failures_per_user as usize,
            self.limits.user_window,
        )
    }

    fn is_known(&self, user: UserKey, client: ClientKey, now: Duration) -> bool {
        self.known
            .get(&(user, client))
            .is_some_and(|at| at + self.limits.user_window > now)
    }

    pub fn check(
        &self,
        client: ClientKey,
        user: Option<UserKey>,
        now: Duration,
    ) -> Result<(), Throttled> {
        if let Some(slot) = self.clients.get(&client) {
            if let Some(wait) = self.client_wait(&mut lock(&slot), now) {
                return Err(throttled(wait, ThrottledBy::Client));
            }
        }
        if let Some(user) = user {
            if let Some(slot) = self.users.get(&user) {
                if let Some(wait) = self.user_wait(&mut lock(&slot), now) {
                    if !self.is_known(user, client, now) {
                        return Err(throttled(wait, ThrottledBy::User));
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks and reserves in one step under the entries' locks, so two concurrent
    /// guesses cannot both take the last slot.
    pub fn reserve(
        &self,
        client: ClientKey,
        user: Option<UserKey>,
        id: &str,
        now: Duration,
    ) -> Result<(), Throttled> {
        let client_slot = self.clients.get_with(client, Slot::default);
        let mut client_log = lock(&client_slot);
        if let Some(wait) = self.client_wait(&mut client_log, now) {
            return Err(throttled(wait, ThrottledBy::Client));
        }
        if let Some(user) = user {
            let user_slot = self.users.get_with(user, Slot::default);
            let mut user_log = lock(&user_slot);
            if let Some(wait) = self.user_wait(&mut user_log, now) {
                if !self.is_known(user, client, now) {
                    return Err(throttled(wait, ThrottledBy::User));
                }
            }
            user_log.add_pending(id, now);
        }
        client_log.add_pending(id, now);
        Ok(())
    }

    /// Records a guess Redis already admitted, so local counts stay close to the shared
    /// ones and take over without amnesty if Redis goes away.
    pub fn add_pending(&self, client: ClientKey, user: Option<UserKey>, id: &str, now: Duration) {
        lock(&self.clients.get_with(client, Slot::default)).add_pending(id, now);
        if let Some(user) = user {
            lock(&self.users.get_with(user, Slot::default)).add_pending(id, now);
        }
    }

    pub fn fail(
        &self,
        client: ClientKey,
        user: Option<UserKey>,
        id: &str,
        now: Duration,
    ) -> Transitions {
        let mut out = Transitions::default();
        {
            let slot = self.clients.get_with(client, Slot::default);
            let mut log = lock(&slot);
            let blocked = log.blocked_until.is_some_and(|until| until > now);
            if !blocked {
                log.prune(now, self.limits.window);
                log.settle(id, now);
                if log.settled() >= self.limits.max_failures as usize {
                    log.attempts.clear();
                    log.blocked_until = Some(now + self.limits.block_for);
                    out.client_blocked_for = Some(self.limits.block_for);
                }
            }
        }
        if let Some(user) = user {
            let slot = self.users.get_with(user, Slot::default);
            let mut log = lock(&slot);
            let max = self.limits.max_failures_per_user as usize;
            log.prune(now, self.limits.user_window);
            log.settle(id, now);
            // Only the newest `max` settled failures matter for when the throttle ends.
            while log.settled() > max {
                if let Some(i) = log.attempts.iter().position(|e| e.settled) {
                    log.attempts.remove(i);
                }
            }
            if log.settled() >= max && log.reported_until <= now {
                let oldest = log
                    .attempts
                    .iter()
                    .find(|e| e.settled)
                    .map_or(now, |e| e.at);
                let until = oldest + self.limits.user_window;
                log.reported_until = until;
                out.user_throttled_for = Some(until.saturating_sub(now));
            }
        }
        out
    }

    /// Returns the reserved guess and marks the pair known. Says whether the pair was new
    /// or stale, i.e. whether it is worth telling Redis.
    pub fn succeed(
        &self,
        client: ClientKey,
        user: UserKey,
        id: Option<&str>,
        now: Duration,
    ) -> bool {
        if let Some(id) = id {
            if let Some(slot) = self.clients.get(&client) {
                lock(&slot).remove(id);
            }
            if let Some(slot) = self.users.get(&user) {
                lock(&slot).remove(id);
            }
        }
        // Rewriting on every request would cost a write per request; a quarter window of
        // staleness is harmless.
        let refresh_after = self.limits.user_window / 4;
        let fresh = self
            .known
            .get(&(user, client))
            .is_some_and(|at| at + refresh_after > now);
        if !fresh {
            self.known.insert((user, client), now);
        }
        !fresh
    }
}

fn throttled(wait: Duration, by: ThrottledBy) -> Throttled {
    Throttled {
        // Never "retry after 0": the client would come straight back to the same answer.
        retry_after: wait.max(Duration::from_millis(1)),
        by,
    }
}
