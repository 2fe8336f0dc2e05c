//! HTTP Basic against an htpasswd file (plus an optional Apache group file).
//!
//! Speed without weakening anything:
//! - a verified-credential cache, keyed by HMAC-SHA256 over the length-prefixed username
//!   and password under a key generated at start, so the cache never holds a password or
//!   anything that could be brute-forced offline, and `("ab","c")` never collides with
//!   `("a","bc")`; only successes are cached, each for at most `cache_ttl`;
//! - concurrent identical verifications share one hash computation (moka's
//!   `try_get_with` runs one initialiser per key);
//! - hashing runs on the blocking pool behind a semaphore sized to half the CPUs, so a
//!   flood of wrong passwords queues there while cached credentials skip the queue.
//!
//! A changed or removed user stops working at once: every cache hit is checked against
//! the fingerprint of the user's current hash. A reload builds a new `BasicAuth` around the
//! new files and hands it the old cache, whose entries that fingerprint check keeps honest. An unknown user is checked against a dummy
//! hash of the file's cost, so it takes as long as a wrong password.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use moka::future::Cache;
use tokio::sync::Semaphore;

use super::Rejection;
use super::groups::GroupFile;
use super::htpasswd::HtpasswdFile;
use crate::config::BasicConfig;
use crate::metrics::CacheCounters;
use crate::throttle::{Attempt, Throttled};

/// The parsed files; a reload builds a new one.
pub struct UserDb {
    htpasswd: HtpasswdFile,
    groups: GroupFile,
    /// How long checking the file's most expensive hash takes. Every failed verification
    /// takes at least this long, so a wrong password for a user with a cheap hash answers
    /// no faster than an unknown user (who is checked against a dummy of that hash).
    failure_floor: Duration,
}

impl UserDb {
    pub fn users(&self) -> usize {
        self.htpasswd.len()
    }

    pub fn warnings(&self) -> &[String] {
        self.htpasswd.warnings()
    }
}

/// Counts only: the entries hold every hash (and any {PLAIN} password).
impl std::fmt::Debug for UserDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserDb")
            .field("users", &self.htpasswd.len())
            .finish_non_exhaustive()
    }
}

/// Which file failed to load, and why (never quoting its content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadFailure {
    Htpasswd(String),
    Groups(String),
}

pub fn load_user_db(
    htpasswd: &Path,
    groups: Option<&Path>,
    allow_plain: bool,
) -> Result<UserDb, LoadFailure> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let users_bytes = read(htpasswd).map_err(LoadFailure::Htpasswd)?;
    let users_text = std::str::from_utf8(&users_bytes)
        .map_err(|_| LoadFailure::Htpasswd(format!("{}: not UTF-8 text", htpasswd.display())))?;
    let file = HtpasswdFile::parse(users_text, allow_plain)
        .map_err(|e| LoadFailure::Htpasswd(format!("{}: {e}", htpasswd.display())))?;
    let group_file = match groups {
        None => GroupFile::default(),
        Some(path) => {
            let bytes = read(path).map_err(LoadFailure::Groups)?;
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| LoadFailure::Groups(format!("{}: not UTF-8 text", path.display())))?;
            GroupFile::parse(text)
                .map_err(|e| LoadFailure::Groups(format!("{}: {e}", path.display())))?
        }
    };
    // The NUL user cannot exist (control characters are refused at load), so this times
    // exactly the dummy-hash path an unknown user takes.
    let probe = std::time::Instant::now();
    let _ = file.verify("\0", b"timing probe");
    let failure_floor = probe.elapsed();
    Ok(UserDb {
        htpasswd: file,
        groups: group_file,
        failure_floor,
    })
}

#[derive(Clone, Copy)]
struct CachedCredential {
    fingerprint: u64,
}

/// Shared by every request waiting on the same verification, hence `Copy`.
#[derive(Debug, Clone, Copy)]
enum Failed {
    UnknownUser,
    WrongPassword,
    Unavailable,
    /// The guess budget was spent while this request waited.
    Throttled(Throttled),
}

pub struct BasicAuth {
    db: Arc<UserDb>,
    /// The cache and the per-process HMAC key its keys are made with.
    cache: Option<CredentialCache>,
    hashing: Arc<Semaphore>,
    counters: CacheCounters,
}

#[derive(Clone)]
struct CredentialCache {
    entries: Cache<[u8; 32], CachedCredential>,
    key: Arc<hmac::Key>,
    ttl: Duration,
}

/// Bound on cached credentials; each entry is a few dozen bytes.
const CACHE_CAPACITY: u64 = 100_000;

impl BasicAuth {
    /// `previous`: the `BasicAuth` this one replaces on reload; its cache (when the TTL is
    /// unchanged) and its hashing slots carry over.
    pub fn new(
        config: &BasicConfig,
        counters: CacheCounters,
        previous: Option<&BasicAuth>,
    ) -> BasicAuth {
        let inherited = previous
            .and_then(|p| p.cache.clone())
            .filter(|c| c.ttl == config.cache_ttl);
        let cache = match inherited {
            Some(cache) => Some(cache),
            // Without a random key there is no safe cache key; verify every time instead.
            None if !config.cache_ttl.is_zero() => {
                hmac::Key::generate(hmac::HMAC_SHA256, &aws_lc_rs::rand::SystemRandom::new())
                    .ok()
                    .map(|key| CredentialCache {
                        entries: Cache::builder()
                            .max_capacity(CACHE_CAPACITY)
                            .time_to_live(config.cache_ttl)
                            .build(),
                        key: Arc::new(key),
                        ttl: config.cache_ttl,
                    })
            }
            None => None,
        };
        let hashing = previous.map_or_else(
            || {
                // Half the cores: a flood of wrong passwords (each a full bcrypt or argon2
                // run) then leaves the other half to cached traffic. With every core
                // hashing, legitimate p99 doubled under a flood (bench/, row 8).
                let hashers =
                    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
                Arc::new(Semaphore::new(hashers))
            },
            |p| Arc::clone(&p.hashing),
        );
        for warning in config.users.warnings() {
            tracing::warn!(file = %config.htpasswd.display(), "{warning}");
        }
        BasicAuth {
            db: Arc::clone(&config.users),
            cache,
            hashing,
            counters,
        }
    }

    pub fn users(&self) -> usize {
        self.db.users()
    }

    /// `attempt` is charged a guess before any hash is computed (not for cache hits).
    pub async fn verify(
        &self,
        user: String,
        password: Vec<u8>,
        attempt: &Attempt,
    ) -> Result<super::Verified, Rejection> {
        if let Some(cache) = &self.cache {
            let key = cache_key(&cache.key, &user, &password);
            let hit = cache.entries.get(&key).await;
            if hit.is_some_and(|c| Some(c.fingerprint) == self.db.htpasswd.fingerprint(&user)) {
                self.counters.hit();
                return Ok(verified(&self.db, user));
            }
        }
        // Boxed: the hashing path is a large future that cache hits need not carry (see
        // `Gate::pipeline`).
        Box::pin(self.verify_with_hashing(user, password, attempt)).await
    }

    /// A cache miss: one hash computation per distinct credential at a time.
    async fn verify_with_hashing(
        &self,
        user: String,
        password: Vec<u8>,
        attempt: &Attempt,
    ) -> Result<super::Verified, Rejection> {
        let started = tokio::time::Instant::now();
        let db = Arc::clone(&self.db);
        let outcome = match &self.cache {
            None => {
                self.verify_uncached(Arc::clone(&db), user.clone(), password, attempt)
                    .await
            }
            Some(CredentialCache {
                entries: cache,
                key,
                ..
            }) => {
                let key = cache_key(key, &user, &password);
                let current = db.htpasswd.fingerprint(&user);
                let mut computed = false;
                let cached = cache
                    .try_get_with(key, async {
                        computed = true;
                        self.verify_uncached(
                            Arc::clone(&db),
                            user.clone(),
                            password.clone(),
                            attempt,
                        )
                        .await
                    })
                    .await
                    .map_err(|e| *e);
                // A request that waited on another's identical verification did no
                // hashing of its own: for the cache, a hit, when it stands.
                match &cached {
                    Ok(c) if !computed && Some(c.fingerprint) == current => self.counters.hit(),
                    _ => self.counters.miss(),
                }
                match cached {
                    Ok(c) if Some(c.fingerprint) == current => Ok(c),
                    Ok(_) => {
                        // Cached against a hash the user no longer has (changed, or removed
                        // and re-added): forget it and check against the current file.
                        cache.invalidate(&key).await;
                        self.verify_uncached(Arc::clone(&db), user.clone(), password, attempt)
                            .await
                    }
                    // This request joined an identical verification that the *other*
                    // request's budget refused; it has a budget of its own.
                    Err(Failed::Throttled(_)) if !attempt.tried_reserving() => {
                        self.verify_uncached(Arc::clone(&db), user.clone(), password, attempt)
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        if matches!(outcome, Err(Failed::UnknownUser | Failed::WrongPassword)) {
            tokio::time::sleep_until(started + db.failure_floor).await;
        }
        match outcome {
            Ok(_) => Ok(verified(&db, user)),
            Err(Failed::UnknownUser) => Err(Rejection::UnknownUser { user }),
            Err(Failed::WrongPassword) => Err(Rejection::WrongPassword { user }),
            Err(Failed::Unavailable) => Err(Rejection::Unavailable),
            Err(Failed::Throttled(t)) => Err(Rejection::Throttled(t)),
        }
    }

    async fn verify_uncached(
        &self,
        db: Arc<UserDb>,
        user: String,
        password: Vec<u8>,
        attempt: &Attempt,
    ) -> Result<CachedCredential, Failed> {
        attempt.reserve_guess().await.map_err(Failed::Throttled)?;
        let permit = Arc::clone(&self.hashing)
            .acquire_owned()
            .await
            .map_err(|_| Failed::Unavailable)?;
        let fingerprint = db.htpasswd.fingerprint(&user);
        let verified = tokio::task::spawn_blocking(move || {
            // The permit travels with the work: if the client goes away mid-hash, the
            // slot stays taken until the hash is really done.
            let _permit = permit;
            db.htpasswd.verify(&user, &password)
        })
        .await
        .map_err(|_| Failed::Unavailable)?;
        match (verified, fingerprint) {
            (true, Some(fingerprint)) => Ok(CachedCredential { fingerprint }),
            (_, Some(_)) => Err(Failed::WrongPassword),
            (_, None) => Err(Failed::UnknownUser),
        }
    }
}

fn verified(db: &UserDb, user: String) -> super::Verified {
    super::Verified {
        groups: db.groups.groups_of(&user).to_vec(),
        user,
    }
}

fn cache_key(key: &hmac::Key, user: &str, password: &[u8]) -> [u8; 32] {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(&(user.len() as u64).to_be_bytes());
    ctx.update(user.as_bytes());
    ctx.update(&(password.len() as u64).to_be_bytes());
    ctx.update(password);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn every_failure_takes_at_least_the_most_expensive_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let dear = crate::auth::htpasswd::hash_password(
            b"pw",
            crate::auth::htpasswd::NewHash::Bcrypt { cost: 6 },
        );
        // {SHA} of "password": cheap, checked in microseconds.
        std::fs::write(
            &path,
            format!(
                "cheap:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\ndear:{}\n",
                dear.unwrap()
            ),
        )
        .unwrap();
        let users = Arc::new(load_user_db(&path, None, false).unwrap());
        let floor = users.failure_floor;
        assert!(floor > Duration::ZERO);
        let basic = BasicAuth::new(
            &BasicConfig {
                htpasswd: path,
                groups: None,
                cache_ttl: Duration::ZERO,
                allow_plain: false,
                users,
            },
            CacheCounters::default(),
            None,
        );
        for (user, password) in [("cheap", "wrong"), ("nobody", "wrong"), ("dear", "wrong")] {
            let started = tokio::time::Instant::now();
            assert!(
                basic
                    .verify(user.into(), password.into(), &Attempt::unthrottled())
                    .await
                    .is_err()
            );
            assert!(
                started.elapsed() >= floor,
                "{user}: {:?} < {floor:?}",
                started.elapsed()
            );
        }
        assert!(
            basic
                .verify(
                    "cheap".into(),
                    b"password".to_vec(),
                    &Attempt::unthrottled()
                )
                .await
                .is_ok()
        );
    }

    #[test]
    fn cache_keys_are_length_prefixed() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"k");
        assert_ne!(cache_key(&key, "ab", b"c"), cache_key(&key, "a", b"bc"));
        assert_eq!(cache_key(&key, "a", b"bc"), cache_key(&key, "a", b"bc"));
    }
}
