//! Brute-force protection: failed authentications are counted per client and per
//! presented username, and over-budget clients are refused with 429 before any hash runs.
//!
//! Counting rules:
//! - A *guess* is reserved before an expensive check runs (a hash), and counts as a failure
//!   from that moment; a success takes it back. So concurrent requests cannot slip more
//!   than `max_failures` guesses through while earlier ones are still hashing.
//! - Cheap failures (malformed credentials) are recorded after the fact.
//! - A missing credential, an unsupported scheme and an expired token never count.
//!
//! Clients (IPv4 /32, IPv6 /64): `max_failures` failures within `window` block the client
//! for `block_for`; every request it makes that needs authentication gets 429 meanwhile.
//!
//! Usernames: once `max_failures_per_user` failures sit within `user_window`, further
//! attempts on that name are refused until the oldest ages out. Names that do not exist
//! count exactly like names that do. The trade-off: an attacker who knows a username can
//! make it refuse logins for a while; to keep its owner working, a client (by /32 or /64)
//! that authenticated as that user within `user_window` stays exempt from the per-user
//! limit, though never from its own per-client limit. An attacker sharing the owner's
//! address (same NAT) therefore gets the per-client budget only, which is what any
//! client gets.
//!
//! Counters live in this process (`local`) or, with `redis`, in Redis (`shared`) so
//! all replicas spend one budget. When Redis fails, decisions fall back to local counters
//! until it answers again.

mod local;
mod shared;

use std::collections::BinaryHeap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::digest;
use tokio::sync::Notify;

use crate::config::RateLimit;
pub use shared::check_redis_url;

/// A client as the limiter sees it: IPv4 by address, IPv6 by /64, since one host usually
/// owns a whole /64 and could rotate through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4(u32),
    V6(u64),
}

impl ClientKey {
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => ClientKey::V6((u128::from(v6) >> 64) as u64),
        }
    }

    /// Stable across replicas, for Redis keys.
    fn storage_id(&self) -> String {
        match self {
            ClientKey::V4(a) => format!("4:{a:08x}"),
            ClientKey::V6(p) => format!("6:{p:016x}"),
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientKey::V4(a) => write!(f, "{}", std::net::Ipv4Addr::from(*a)),
            ClientKey::V6(p) => write!(f, "{}/64", std::net::Ipv6Addr::from(u128::from(*p) << 64)),
        }
    }
}

/// A presented username, hashed: entries stay small whatever length a client sends, and
/// Redis never holds the names themselves. Exact bytes, because the htpasswd lookup is
/// exact: `Alice` can never log in as `alice`, so guesses on it do not threaten `alice`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserKey([u8; 16]);

impl UserKey {
    pub fn of(user: &str) -> UserKey {
        let d = digest::digest(&digest::SHA256, user.as_bytes());
        let mut key = [0u8; 16];
        key.copy_from_slice(&d.as_ref()[..16]);
        UserKey(key)
    }

    fn storage_id(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Time as the limiter sees it, so tests can move it by hand.
pub trait Clock: Send + Sync {
    /// Time since a fixed origin.
    fn now(&self) -> Duration;
}

/// Tokio's clock: real in production, pausable in tests (`tokio::time::pause`).
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> TokioClock {
        TokioClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that moves only when told to.
#[derive(Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

/// Why a request was refused, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
    pub by: ThrottledBy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThrottledBy {
    Client,
    User,
}

impl ThrottledBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ThrottledBy::Client => "throttled_client",
            ThrottledBy::User => "throttled_user",
        }
    }

    /// What was throttled: `client` or `user`.
    pub fn short(self) -> &'static str {
        match self {
            ThrottledBy::Client => "client",
            ThrottledBy::User => "user",
        }
    }
}

/// What a recorded failure changed: set when this failure started a block.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Transitions {
    client_blocked_for: Option<Duration>,
    user_throttled_for: Option<Duration>,
}

/// Counters for the metrics endpoint.
#[derive(Debug, Default)]
pub struct ThrottleStats {
    pub failures: AtomicU64,
    pub refused: AtomicU64,
    pub clients_blocked: AtomicU64,
    pub users_throttled: AtomicU64,
    pub redis_errors: AtomicU64,
    /// Set while Redis is configured but unreachable.
    pub redis_degraded: AtomicBool,
}

pub struct Throttle {
    limits: RateLimit,
    local: local::LocalStore,
    shared: Option<shared::SharedStore>,
    clock: Arc<dyn Clock>,
    stats: Arc<ThrottleStats>,
    unblocks: Arc<UnblockLog>,
    /// Reservation ids: a random prefix per process so replicas never collide in Redis.
    id_prefix: u64,
    next_id: AtomicU64,
}

impl Throttle {
    pub fn new(limits: &RateLimit) -> Throttle {
        Self::with_clock(limits, Arc::new(TokioClock::new()))
    }

    pub fn with_clock(limits: &RateLimit, clock: Arc<dyn Clock>) -> Throttle {
        let stats = Arc::new(ThrottleStats::default());
        let mut prefix = [0u8; 8];
        // Falls back to a fixed prefix only if the OS has no randomness, in which case TLS
        // could not have started either.
        let _ = getrandom::fill(&mut prefix);
        Throttle {
            local: local::LocalStore::new(limits),
            shared: limits
                .redis
                .as_ref()
                .and_then(|target| shared::SharedStore::new(target, limits, stats.clone())),
            limits: limits.clone(),
            clock: clock.clone(),
            stats,
            unblocks: Arc::new(UnblockLog::new(limits.max_tracked as usize, clock)),
            id_prefix: u64::from_le_bytes(prefix),
            next_id: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> &ThrottleStats {
        &self.stats
    }

    /// Entries in the local client and username tables.
    pub fn tracked(&self) -> (u64, u64) {
        self.local.tracked()
    }

    /// The handle one request uses: its client and, once parsed, the username it presents.
    pub fn attempt(self: &Arc<Self>, client: IpAddr, user: Option<&str>) -> Attempt {
        Attempt {
            throttle: Some(Arc::clone(self)),
            client: ClientKey::of(client),
            user: user.map(|name| (name.to_string(), UserKey::of(name))),
            reservation: Mutex::new(None),
            tried_reserving: AtomicBool::new(false),
        }
    }

    fn new_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{n:x}", self.id_prefix)
    }

    async fn check(&self, client: ClientKey, user: Option<UserKey>) -> Result<(), Throttled> {
        let now = self.clock.now();
        // Local state first: it is free, and a client blocked here is refused without a
        // round trip (a flood from one client then costs Redis nothing).
        self.local.check(client, user, now)?;
        if let Some(shared) = &self.shared {
            // Redis calls are boxed here and below: their futures are large, and every
            // authenticated request would carry them inline even with no Redis configured.
            if let Some(verdict) = Box::pin(shared.check(client, user)).await {
                return verdict;
            }
        }
        Ok(())
    }

    async fn reserve(
        &self,
        client: ClientKey,
        user: Option<UserKey>,
        id: &str,
    ) -> Result<(), Throttled> {
        let now = self.clock.now();
        if let Some(shared) = &self.shared {
            if let Some(verdict) = Box::pin(shared.reserve(client, user, id)).await {
                // Mirror locally so a Redis outage mid-attack does not reset the count.
                if verdict.is_ok() {
                    self.local.add_pending(client, user, id, now);
                }
                return verdict;
            }
        }
        self.local.reserve(client, user, id, now)
    }

    async fn fail(&self, client: ClientKey, user: Option<(&str, UserKey)>, id: &str) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        let now = self.clock.now();
        let user_key = user.map(|(_, k)| k);
        let local = self.local.fail(client, user_key, id, now);
        let transitions = match &self.shared {
            Some(shared) => Box::pin(shared.fail(client, user_key, id))
                .await
                .unwrap_or(local),
            None => local,
        };
        if let Some(blocked_for) = transitions.client_blocked_for {
            self.stats.clients_blocked.fetch_add(1, Ordering::Relaxed);
            let name = user.map_or_else(|| "-".to_string(), |(name, _)| escape_for_log(name));
            tracing::warn!(
                target: "sallyport::throttle",
                client = %client,
                user = %name,
                failures = self.limits.max_failures,
                window_s = self.limits.window.as_secs(),
                blocked_s = blocked_for.as_secs(),
                "client blocked after repeated failed authentication",
            );
            self.unblocks
                .schedule(now + blocked_for, format!("client {client}"));
        }
        if let (Some(throttled_for), Some((name, _))) = (transitions.user_throttled_for, user) {
            self.stats.users_throttled.fetch_add(1, Ordering::Relaxed);
            let name = escape_for_log(name);
            tracing::warn!(
                target: "sallyport::throttle",
                client = %client,
                user = %name,
                failures = self.limits.max_failures_per_user,
                window_s = self.limits.user_window.as_secs(),
                throttled_s = throttled_for.as_secs(),
                "username throttled after repeated failed authentication",
            );
            self.unblocks
                .schedule(now + throttled_for, format!("user {name}"));
        }
    }

    async fn succeed(&self, client: ClientKey, user: UserKey, id: Option<&str>) {
        let now = self.clock.now();
        let first_sighting = self.local.succeed(client, user, id, now);
        if let Some(shared) = &self.shared {
            // The pair's exemption is written to Redis at most a few times per
            // user_window, not on every request.
            if first_sighting || id.is_some() {
                Box::pin(shared.succeed(client, user, id)).await;
            }
        }
    }
}

/// One request's dealings with the limiter.
///
/// A guess still reserved when the attempt is dropped (the client went away mid-hash, or
/// the request ended some other way) is recorded as a failure: disconnecting early must
/// not be a way to guess without it counting.
pub struct Attempt {
    throttle: Option<Arc<Throttle>>,
    client: ClientKey,
    /// The presented username and its key, hashed once per request.
    user: Option<(String, UserKey)>,
    /// The guess this request reserved, if it ran an expensive check.
    reservation: Mutex<Option<String>>,
    tried_reserving: AtomicBool,
}

impl Attempt {
    /// For when throttling is off.
    pub fn unthrottled() -> Attempt {
        Attempt {
            throttle: None,
            client: ClientKey::V4(0),
            user: None,
            reservation: Mutex::new(None),
            tried_reserving: AtomicBool::new(false),
        }
    }

    fn user_key(&self) -> Option<UserKey> {
        self.user.as_ref().map(|(_, key)| *key)
    }

    /// Whether this request itself asked to reserve a guess (a request that joined
    /// another's identical verification did not).
    pub fn tried_reserving(&self) -> bool {
        self.tried_reserving.load(Ordering::Acquire)
    }

    /// Step 6: refuse a blocked client or username before anything else happens.
    pub async fn check(&self) -> Result<(), Throttled> {
        let Some(t) = &self.throttle else {
            return Ok(());
        };
        let verdict = t.check(self.client, self.user_key()).await;
        if verdict.is_err() {
            t.stats.refused.fetch_add(1, Ordering::Relaxed);
        }
        verdict
    }

    /// Called right before an expensive verification: counts it as a failure unless it
    /// later succeeds, and refuses it if the budget is spent.
    pub async fn reserve_guess(&self) -> Result<(), Throttled> {
        let Some(t) = &self.throttle else {
            return Ok(());
        };
        self.tried_reserving.store(true, Ordering::Release);
        if self
            .reservation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            // A second check of the same credential (the user's hash changed under a
            // cached entry) is the same guess.
            return Ok(());
        }
        let id = t.new_id();
        let verdict = t.reserve(self.client, self.user_key(), &id).await;
        match verdict {
            Ok(()) => {
                *self.reservation.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
            }
            Err(_) => {
                t.stats.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        verdict
    }

    /// The credentials were wrong (or malformed): count it.
    pub async fn failed(&self) {
        let Some(t) = &self.throttle else { return };
        let id = self
            .reservation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| t.new_id());
        let user = self.user.as_ref().map(|(name, key)| (name.as_str(), *key));
        t.fail(self.client, user, &id).await;
    }

    /// The request authenticated as `user`: return the reserved guess, and remember this
    /// client as one that user really uses.
    pub async fn succeeded(&self, user: &str) {
        let Some(t) = &self.throttle else { return };
        let id = self
            .reservation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let key = match &self.user {
            Some((presented, key)) if presented == user => *key,
            _ => UserKey::of(user),
        };
        t.succeed(self.client, key, id.as_deref()).await;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let Some(throttle) = self.throttle.take() else {
            return;
        };
        let reservation = self
            .reservation
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(id) = reservation else { return };
        let (client, user) = (self.client, self.user.take());
        let record = async move {
            let user = user.as_ref().map(|(name, key)| (name.as_str(), *key));
            throttle.fail(client, user, &id).await;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(record);
        }
    }
}

/// Usernames are attacker-chosen: escape control characters and quotes so a name cannot
/// forge log lines, and cap the length.
pub fn escape_for_log(name: &str) -> String {
    const MAX_CHARS: usize = 64;
    let mut out: String = name
        .chars()
        .take(MAX_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if name.chars().nth(MAX_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

/// Logs each block's end once, when it happens. One task and a heap bounded like every
/// other table, rather than a timer task per block.
struct UnblockLog {
    due: Mutex<BinaryHeap<std::cmp::Reverse<(Duration, String)>>>,
    capacity: usize,
    wake: Notify,
    clock: Arc<dyn Clock>,
    started: AtomicBool,
}

impl UnblockLog {
    fn new(capacity: usize, clock: Arc<dyn Clock>) -> UnblockLog {
        UnblockLog {
            due: Mutex::new(BinaryHeap::new()),
            capacity,
            wake: Notify::new(),
            clock,
            started: AtomicBool::new(false),
        }
    }

    fn schedule(self: &Arc<Self>, at: Duration, what: String) {
        {
            let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
            if due.len() >= self.capacity {
                tracing::warn!(
                    target: "sallyport::throttle",
                    "too many blocks pending to log each unblock; {what} will not be logged"
                );
                return;
            }
            due.push(std::cmp::Reverse((at, what)));
        }
        self.wake.notify_one();
        if !self.started.swap(true, Ordering::AcqRel) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                // A weak handle: the task ends when the throttle is dropped (config reload
                // replacing it, or shutdown), not when the heap is empty.
                let log = Arc::downgrade(self);
                runtime.spawn(async move { UnblockLog::run(log).await });
            }
        }
    }

    async fn run(log: std::sync::Weak<UnblockLog>) {
        loop {
            let Some(this) = log.upgrade() else { return };
            let now = this.clock.now();
            let next = {
                let mut due = this.due.lock().unwrap_or_else(|e| e.into_inner());
                while due.peek().is_some_and(|d| d.0.0 <= now) {
                    let std::cmp::Reverse((_, what)) = due.pop().expect("peeked");
                    tracing::info!(target: "sallyport::throttle", "{what} unblocked");
                }
                due.peek().map(|d| d.0.0)
            };
            // Wait for the next due time or a new entry; re-check at least every minute
            // so a dropped throttle lets this task end.
            let wait = next.map_or(Duration::from_secs(60), |at| at.saturating_sub(now));
            let wait = wait.min(Duration::from_secs(60));
            // `this` is held across the wait (at most a minute past the throttle's end).
            let notified = this.wake.notified();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = notified => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
