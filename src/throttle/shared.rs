//! Counters in Redis, so every replica spends one budget. Each operation is one Lua script,
//! atomic on the server, timed by the server's clock (replicas' clocks never disagree
//! about a window). Keys expire by themselves.
//!
//! Redis is an optimisation of the budget, never a dependency of serving: every call is
//! bounded by a short timeout, and after a failure Redis is left alone for a second while
//! the caller decides with local counters. Going down and coming back are each logged
//! once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::{Client, Script};

use super::{ClientKey, ThrottleStats, Throttled, ThrottledBy, Transitions, UserKey};
use crate::config::{RateLimit, RedisTarget};
use crate::redis_link::RedisLink;

/// Longest a request waits on Redis before deciding locally.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// How long Redis is left alone after a failure.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

pub fn check_redis_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("redis://")
        || url.starts_with("redis+unix://")
        || url.starts_with("unix://"))
    {
        return Err(
            "must be a redis://host:port/db or redis+unix:///path URL (TLS rediss:// is not supported)"
                .into(),
        );
    }
    // The parser's message could echo the URL, password included: say only that it failed.
    Client::open(url)
        .map(|_| ())
        .map_err(|_| "not a valid Redis URL".into())
}

/// Shared by the check scripts: how long until `fail`/`pend` (failures and guesses still
/// being checked, scored by time in ms) allow another attempt. Only settled failures
/// make a long wait; a budget filled by pending guesses frees up within a hash's time.
const WAIT_FN: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function wait(fail, pend, max, window)
  local from = now - window + 1
  local settled = redis.call('ZCOUNT', fail, from, '+inf')
  if settled >= max then
    local oldest = redis.call('ZRANGEBYSCORE', fail, from, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    return math.max(tonumber(oldest[2]) + window - now, 1)
  end
  if settled + redis.call('ZCOUNT', pend, from, '+inf') >= max then return 1000 end
  return 0
end
local client_max, client_window = tonumber(ARGV[1]), tonumber(ARGV[2])
local user_max, user_window = tonumber(ARGV[3]), tonumber(ARGV[4])
local client_wait, user_wait = 0, 0
local blocked = redis.call('PTTL', KEYS[1])
if blocked > 0 then
  client_wait = blocked
else
  client_wait = wait(KEYS[2], KEYS[3], client_max, client_window)
end
if client_wait == 0 and #KEYS >= 6 then
  user_wait = wait(KEYS[4], KEYS[5], user_max, user_window)
  if user_wait > 0 and redis.call('EXISTS', KEYS[6]) == 1 then user_wait = 0 end
end
"#;

/// KEYS: block, client failures, client pending, [user failures, user pending, known
/// pair]. ARGV: client max, window ms, user max, user window ms. Returns
/// `{client wait ms, user wait ms}`; 0 means allowed. Writes nothing.
fn check_script() -> String {
    format!("#!lua flags=no-writes\n{WAIT_FN}\nreturn {{client_wait, user_wait}}\n")
}

/// As the check, and an allowed guess is added to the pending sets (ARGV[5] = id).
fn reserve_script() -> String {
    format!(
        "{WAIT_FN}\n{}",
        r#"
if client_wait == 0 and user_wait == 0 then
  redis.call('ZADD', KEYS[3], 'NX', now, ARGV[5])
  redis.call('PEXPIRE', KEYS[3], client_window)
  if #KEYS >= 6 then
    redis.call('ZADD', KEYS[5], 'NX', now, ARGV[5])
    redis.call('PEXPIRE', KEYS[5], user_window)
  end
end
return {client_wait, user_wait}
"#
    )
}

/// Settles a guess as failed (or records a failure that reserved nothing). KEYS: block,
/// client failures, client pending, [user failures, user pending, reported marker].
/// Returns `{client blocked for ms, user throttled for ms}`, non-zero only for the
/// failure that started the block, so exactly one replica logs it.
const FAIL: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local client_max, client_window, block_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local user_max, user_window = tonumber(ARGV[4]), tonumber(ARGV[5])
local member = ARGV[6]
local client_out, user_out = 0, 0
redis.call('ZREM', KEYS[3], member)
if redis.call('PTTL', KEYS[1]) <= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - client_window)
  redis.call('ZADD', KEYS[2], 'NX', now, member)
  if redis.call('ZCARD', KEYS[2]) >= client_max then
    redis.call('SET', KEYS[1], '1', 'PX', block_ms)
    redis.call('DEL', KEYS[2])
    client_out = block_ms
  else
    redis.call('PEXPIRE', KEYS[2], client_window)
  end
end
if #KEYS >= 6 then
  redis.call('ZREM', KEYS[5], member)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - user_window)
  redis.call('ZADD', KEYS[4], 'NX', now, member)
  local n = redis.call('ZCARD', KEYS[4])
  if n > user_max then
    redis.call('ZREMRANGEBYRANK', KEYS[4], 0, n - user_max - 1)
    n = user_max
  end
  redis.call('PEXPIRE', KEYS[4], user_window)
  if n >= user_max then
    local oldest = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
    local left = math.max(tonumber(oldest[2]) + user_window - now, 1)
    if redis.call('SET', KEYS[6], '1', 'NX', 'PX', left) then user_out = left end
  end
end
return {client_out, user_out}
"#;

/// Takes a reserved guess back and marks the client/user pair known. KEYS: client
/// pending, user pending, known pair.
const SUCCEED: &str = r#"
if ARGV[2] ~= '' then
  redis.call('ZREM', KEYS[1], ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[2])
end
redis.call('SET', KEYS[3], '1', 'PX', tonumber(ARGV[1]))
return {1}
"#;

pub struct SharedStore {
    /// Dropped on any error and re-established by the next call after the rest period.
    link: RedisLink,
    prefix: String,
    limits: RateLimit,
    check: Script,
    reserve: Script,
    fail: Script,
    succeed: Script,
    stats: Arc<ThrottleStats>,
    /// Milliseconds since `origin` before which Redis is not tried; 0 when healthy.
    resting_until: AtomicU64,
    origin: Instant,
}

impl SharedStore {
    pub fn new(
        target: &RedisTarget,
        limits: &RateLimit,
        stats: Arc<ThrottleStats>,
    ) -> Option<SharedStore> {
        let link = RedisLink::open(&target.url, CALL_TIMEOUT).ok()?;
        Some(SharedStore {
            link,
            prefix: target.prefix.clone(),
            limits: limits.clone(),
            check: Script::new(&check_script()),
            reserve: Script::new(&reserve_script()),
            fail: Script::new(FAIL),
            succeed: Script::new(SUCCEED),
            stats,
            resting_until: AtomicU64::new(0),
            origin: Instant::now(),
        })
    }

    /// block, client failures, client pending, then for a username: its failures, its
    /// pending guesses, and the known-pair key (`last` replaces it where a script needs
    /// another per-user key).
    fn keys(&self, client: ClientKey, user: Option<UserKey>, last: Option<&str>) -> Vec<String> {
        let p = &self.prefix;
        let c = client.storage_id();
        let mut keys = vec![
            format!("{p}block:{c}"),
            format!("{p}fail:{c}"),
            format!("{p}pend:{c}"),
        ];
        if let Some(user) = user {
            let u = user.storage_id();
            keys.push(format!("{p}ufail:{u}"));
            keys.push(format!("{p}upend:{u}"));
            keys.push(match last {
                Some(kind) => format!("{p}{kind}:{u}"),
                None => format!("{p}known:{u}:{c}"),
            });
        }
        keys
    }

    /// Whether to call Redis now. After a failure Redis rests; when the rest is over,
    /// exactly one request probes it (and pushes the rest further out meanwhile), so a
    /// dead Redis costs one timeout per second, not one per request.
    fn available(&self) -> bool {
        let resting = self.resting_until.load(Ordering::Acquire);
        if resting == 0 {
            return true;
        }
        let now = self.origin.elapsed().as_millis() as u64;
        if now < resting {
            return false;
        }
        let next = now + RETRY_AFTER_FAILURE.as_millis() as u64;
        self.resting_until
            .compare_exchange(resting, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    async fn run(&self, script: &Script, keys: &[String], args: &[String]) -> Option<Vec<i64>> {
        if !self.available() {
            return None;
        }
        let mut invocation = script.prepare_invoke();
        for k in keys {
            invocation.key(k);
        }
        for a in args {
            invocation.arg(a);
        }
        let outcome = tokio::time::timeout(CALL_TIMEOUT, async {
            let mut connection = self.link.connection().await?;
            invocation.invoke_async::<Vec<i64>>(&mut connection).await
        })
        .await;
        match outcome {
            Ok(Ok(values)) => {
                if self.resting_until.swap(0, Ordering::AcqRel) != 0 {
                    self.stats.redis_degraded.store(false, Ordering::Release);
                    tracing::info!(target: "sallyport::throttle", "Redis reachable again; throttling counters are shared");
                }
                Some(values)
            }
            failed => {
                self.link.reset();
                self.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
                let until = (self.origin.elapsed() + RETRY_AFTER_FAILURE).as_millis() as u64;
                if self.resting_until.swap(until, Ordering::AcqRel) == 0 {
                    self.stats.redis_degraded.store(true, Ordering::Release);
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_string(),
                    };
                    tracing::warn!(target: "sallyport::throttle", error = %why, "Redis unreachable; throttling with this replica's counters until it returns");
                }
                None
            }
        }
    }

    fn verdict(values: &[i64]) -> Result<(), Throttled> {
        let ms = |i: usize| values.get(i).copied().unwrap_or(0).max(0) as u64;
        match (ms(0), ms(1)) {
            (0, 0) => Ok(()),
            (0, user) => Err(Throttled {
                retry_after: Duration::from_millis(user),
                by: ThrottledBy::User,
            }),
            (client, _) => Err(Throttled {
                retry_after: Duration::from_millis(client),
                by: ThrottledBy::Client,
            }),
        }
    }

    fn check_args(&self, id: &str) -> Vec<String> {
        vec![
            self.limits.max_failures.to_string(),
            self.limits.window.as_millis().to_string(),
            self.limits.max_failures_per_user.to_string(),
            self.limits.user_window.as_millis().to_string(),
            id.to_string(),
        ]
    }

    /// `None` when Redis could not answer.
    pub async fn check(
        &self,
        client: ClientKey,
        user: Option<UserKey>,
    ) -> Option<Result<(), Throttled>> {
        let values = self
            .run(
                &self.check,
                &self.keys(client, user, None),
                &self.check_args(""),
            )
            .await?;
        Some(Self::verdict(&values))
    }

    pub async fn reserve(
        &self,
        client: ClientKey,
        user: Option<UserKey>,
        id: &str,
    ) -> Option<Result<(), Throttled>> {
        let values = self
            .run(
                &self.reserve,
                &self.keys(client, user, None),
                &self.check_args(id),
            )
            .await?;
        Some(Self::verdict(&values))
    }

    pub async fn fail(
        &self,
        client: ClientKey,
        user: Option<UserKey>,
        id: &str,
    ) -> Option<Transitions> {
        let args = vec![
            self.limits.max_failures.to_string(),
            self.limits.window.as_millis().to_string(),
            self.limits.block_for.as_millis().to_string(),
            self.limits.max_failures_per_user.to_string(),
            self.limits.user_window.as_millis().to_string(),
            id.to_string(),
        ];
        let keys = self.keys(client, user, Some("reported"));
        let values = self.run(&self.fail, &keys, &args).await?;
        let ms = |i: usize| {
            let v = values.get(i).copied().unwrap_or(0);
            (v > 0).then(|| Duration::from_millis(v as u64))
        };
        Some(Transitions {
            client_blocked_for: ms(0),
            user_throttled_for: ms(1),
        })
    }

    pub async fn succeed(&self, client: ClientKey, user: UserKey, id: Option<&str>) {
        let keys = self.keys(client, Some(user), None);
        let keys = vec![keys[2].clone(), keys[4].clone(), keys[5].clone()];
        let args = vec![
            self.limits.user_window.as_millis().to_string(),
            id.unwrap_or("").to_string(),
        ];
        let _ = self.run(&self.succeed, &keys, &args).await;
    }
}
