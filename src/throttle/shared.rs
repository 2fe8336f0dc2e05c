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

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Script};

use super::{ClientKey, ThrottleStats, Throttled, ThrottledBy, Transitions, UserKey};
use crate::config::{RateLimit, RedisTarget};

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

/// `{wait_ms for the client, wait_ms for the user}`; 0 means allowed. With ARGV[7] =
/// "reserve", an allowed attempt is also added to both logs.
const CHECK: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local client_max, client_window = tonumber(ARGV[1]), tonumber(ARGV[2])
local user_max, user_window = tonumber(ARGV[3]), tonumber(ARGV[4])
local member, mode = ARGV[5], ARGV[6]
local function wait(log, max, window)
  redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
  if redis.call('ZCARD', log) >= max then
    local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
    return math.max(tonumber(oldest[2]) + window - now, 1)
  end
  return 0
end
local blocked = redis.call('PTTL', KEYS[1])
if blocked > 0 then return {blocked, 0} end
local client_wait = wait(KEYS[2], client_max, client_window)
if client_wait > 0 then return {client_wait, 0} end
if #KEYS >= 4 then
  local user_wait = wait(KEYS[3], user_max, user_window)
  if user_wait > 0 and redis.call('EXISTS', KEYS[4]) == 0 then return {0, user_wait} end
  if mode == 'reserve' then
    redis.call('ZADD', KEYS[3], 'NX', now, member)
    redis.call('PEXPIRE', KEYS[3], user_window)
  end
end
if mode == 'reserve' then
  redis.call('ZADD', KEYS[2], 'NX', now, member)
  redis.call('PEXPIRE', KEYS[2], client_window)
end
return {0, 0}
"#;

/// Records a failure (keeping a reserved guess's original time). Returns
/// `{client blocked for ms, user throttled for ms}`, non-zero only for the failure that
/// started the block, so exactly one replica logs it.
const FAIL: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local client_max, client_window, block_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local user_max, user_window = tonumber(ARGV[4]), tonumber(ARGV[5])
local member = ARGV[6]
local client_out, user_out = 0, 0
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
if #KEYS >= 4 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - user_window)
  redis.call('ZADD', KEYS[3], 'NX', now, member)
  local n = redis.call('ZCARD', KEYS[3])
  if n > user_max then
    redis.call('ZREMRANGEBYRANK', KEYS[3], 0, n - user_max - 1)
    n = user_max
  end
  redis.call('PEXPIRE', KEYS[3], user_window)
  if n >= user_max then
    local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    local left = math.max(tonumber(oldest[2]) + user_window - now, 1)
    if redis.call('SET', KEYS[4], '1', 'NX', 'PX', left) then user_out = left end
  end
end
return {client_out, user_out}
"#;

/// Takes a reserved guess back and marks the client/user pair known.
const SUCCEED: &str = r#"
if ARGV[2] ~= '' then
  redis.call('ZREM', KEYS[1], ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[2])
end
redis.call('SET', KEYS[3], '1', 'PX', tonumber(ARGV[1]))
return {1}
"#;

pub struct SharedStore {
    client: Client,
    /// One multiplexed connection, shared by all requests; dropped on any error and
    /// re-established by the next call after the rest period.
    connection: ArcSwapOption<MultiplexedConnection>,
    connecting: tokio::sync::Mutex<()>,
    prefix: String,
    limits: RateLimit,
    check: Script,
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
        let client = Client::open(target.url.as_str()).ok()?;
        Some(SharedStore {
            client,
            connection: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            prefix: target.prefix.clone(),
            limits: limits.clone(),
            check: Script::new(CHECK),
            fail: Script::new(FAIL),
            succeed: Script::new(SUCCEED),
            stats,
            resting_until: AtomicU64::new(0),
            origin: Instant::now(),
        })
    }

    fn keys(&self, client: ClientKey, user: Option<UserKey>) -> Vec<String> {
        let p = &self.prefix;
        let c = client.storage_id();
        let mut keys = vec![format!("{p}block:{c}"), format!("{p}client:{c}")];
        if let Some(user) = user {
            let u = user.storage_id();
            keys.push(format!("{p}user:{u}"));
            keys.push(format!("{p}known:{u}:{c}"));
        }
        keys
    }

    fn available(&self) -> bool {
        let resting = self.resting_until.load(Ordering::Acquire);
        resting == 0 || self.origin.elapsed().as_millis() as u64 >= resting
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
            let mut connection = self.connect().await?;
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
                self.connection.store(None);
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

    /// The shared connection, connecting first if there is none (one connect at a time).
    async fn connect(&self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(c) = self.connection.load_full() {
            return Ok((*c).clone());
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(c) = self.connection.load_full() {
            return Ok((*c).clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT));
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        self.connection.store(Some(Arc::new(connection.clone())));
        Ok(connection)
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

    fn check_args(&self, id: &str, mode: &str) -> Vec<String> {
        vec![
            self.limits.max_failures.to_string(),
            self.limits.window.as_millis().to_string(),
            self.limits.max_failures_per_user.to_string(),
            self.limits.user_window.as_millis().to_string(),
            id.to_string(),
            mode.to_string(),
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
                &self.keys(client, user),
                &self.check_args("", "check"),
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
                &self.check,
                &self.keys(client, user),
                &self.check_args(id, "reserve"),
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
        let mut keys = self.keys(client, user);
        if let Some(user) = user {
            // The user's fourth key is its "throttle already reported" marker here.
            keys[3] = format!("{}reported:{}", self.prefix, user.storage_id());
        }
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
        let keys = self.keys(client, Some(user));
        let keys = vec![keys[1].clone(), keys[2].clone(), keys[3].clone()];
        let args = vec![
            self.limits.user_window.as_millis().to_string(),
            id.unwrap_or("").to_string(),
        ];
        let _ = self.run(&self.succeed, &keys, &args).await;
    }
}
