//! Where sessions live: sealed in the browser's cookie (the default, nothing to run), or
//! in Redis with only a sealed random reference in the cookie (`session_store`), which
//! makes logout a real revocation and keeps cookies tiny. In Redis the session is stored
//! sealed too: a copy of the database alone yields no refresh tokens.

use std::time::Duration;

use aws_lc_rs::digest;
use base64ct::{Base64UrlUnpadded, Encoding};
use http::header::HeaderValue;
use serde::{Deserialize, Serialize};

use super::cookies::CookieJar;
use super::seal::Sealer;
use crate::config::RedisTarget;
use crate::redis_link::RedisLink;

const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Clone, Serialize, Deserialize)]
pub struct Session {
    /// Random; names the session in logs and keys refreshes.
    pub sid: String,
    pub id_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// When the IdP's access token expires: past it, the session is refreshed (if it can
    /// be) so a user disabled at the IdP does not stay in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_expires_at: Option<u64>,
    pub created_at: u64,
    pub last_seen: u64,
}

/// Tokens must never reach a log through `{:?}`.
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("sid", &self.sid)
            .field("created_at", &self.created_at)
            .field("last_seen", &self.last_seen)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub enum Loaded {
    /// No session cookie.
    None,
    /// A cookie we did not seal, or one that does not decode: tampering, or an old key.
    Tampered,
    /// The cookie is ours but the server-side session is gone (logged out or expired).
    Gone,
    Found(Session, Reference),
}

/// How the request's cookie points at its session: needed to save it in place.
#[derive(Debug, Clone)]
pub enum Reference {
    InCookie,
    Redis(String),
}

#[derive(Debug)]
pub enum StoreError {
    Unavailable,
    TooLarge,
    /// The server-side session was deleted (logout, expiry) while this request ran.
    Gone,
}

pub struct Store {
    backend: Backend,
    sealer: Sealer,
    jar: CookieJar,
}

enum Backend {
    Cookie,
    Redis {
        link: Box<RedisLink>,
        prefix: String,
    },
}

impl Store {
    pub fn new(
        target: Option<&RedisTarget>,
        sealer: Sealer,
        jar: CookieJar,
    ) -> Result<Store, String> {
        let backend = match target {
            None => Backend::Cookie,
            Some(t) => Backend::Redis {
                link: Box::new(
                    RedisLink::open(&t.url, REDIS_TIMEOUT)
                        .map_err(|e| format!("auth.oidc.session_store: {e}"))?,
                ),
                prefix: t.prefix.clone(),
            },
        };
        Ok(Store {
            backend,
            sealer,
            jar,
        })
    }

    pub async fn load(&self, cookies: &[(&str, &str)]) -> Result<Loaded, StoreError> {
        let (sealer, jar) = (&self.sealer, &self.jar);
        let Some(value) = jar.session_value(cookies) else {
            return Ok(Loaded::None);
        };
        match &self.backend {
            Backend::Cookie => Ok(open_session(sealer, &jar.session, &value)
                .map_or(Loaded::Tampered, |s| Loaded::Found(s, Reference::InCookie))),
            Backend::Redis { link, prefix } => {
                let Some(reference) = sealer.open(&reference_context(jar), &value) else {
                    return Ok(Loaded::Tampered);
                };
                let key = redis_key(prefix, &reference);
                let stored: Option<String> = redis_call(link, |mut c| {
                    let key = key.clone();
                    async move { redis::cmd("GET").arg(&key).query_async(&mut c).await }
                })
                .await?;
                Ok(match stored.and_then(|s| open_session(sealer, &key, &s)) {
                    Some(session) => Loaded::Found(session, Reference::Redis(key)),
                    None => Loaded::Gone,
                })
            }
        }
    }

    /// Saves `session`, alive for `ttl` more seconds; returns the Set-Cookie values the
    /// response must carry (none when only the server side changed).
    pub async fn save(
        &self,
        session: &Session,
        reference: Option<&Reference>,
        ttl: u64,
        cookie_max_age: u64,
        cookies: &[(&str, &str)],
    ) -> Result<Vec<HeaderValue>, StoreError> {
        let (sealer, jar) = (&self.sealer, &self.jar);
        let json = serde_json::to_vec(session).map_err(|_| StoreError::TooLarge)?;
        match &self.backend {
            Backend::Cookie => {
                let value = sealer.seal(&jar.session, &json);
                jar.store_session(&value, cookie_max_age, cookies)
                    .ok_or(StoreError::TooLarge)
            }
            Backend::Redis { link, prefix } => {
                let (key, set_cookies) = match reference {
                    Some(Reference::Redis(key)) => (key.clone(), Vec::new()),
                    _ => {
                        // A new session always gets a new reference: a cookie from
                        // before the login never becomes a logged-in one.
                        let mut raw = [0u8; 32];
                        aws_lc_rs::rand::fill(&mut raw).map_err(|_| StoreError::Unavailable)?;
                        let reference = Base64UrlUnpadded::encode_string(&raw);
                        let cookie_value =
                            sealer.seal(&reference_context(jar), reference.as_bytes());
                        let set = jar
                            .store_session(&cookie_value, cookie_max_age, cookies)
                            .ok_or(StoreError::TooLarge)?;
                        (redis_key(prefix, reference.as_bytes()), set)
                    }
                };
                let value = sealer.seal(&key, &json);
                // An existing session is only ever updated in place (XX): a request that
                // loaded it before a logout must not bring it back.
                let existing = matches!(reference, Some(Reference::Redis(_)));
                let written: Option<String> = redis_call(link, |mut c| {
                    let key = key.clone();
                    let value = value.clone();
                    async move {
                        let mut set = redis::cmd("SET");
                        set.arg(&key).arg(&value).arg("EX").arg(ttl.max(1));
                        if existing {
                            set.arg("XX");
                        }
                        set.query_async(&mut c).await
                    }
                })
                .await?;
                if written.is_none() {
                    return Err(StoreError::Gone);
                }
                Ok(set_cookies)
            }
        }
    }

    /// Forgets a session server-side (cookies are cleared by the caller).
    pub async fn delete(&self, reference: &Reference) -> Result<(), StoreError> {
        match (&self.backend, reference) {
            (Backend::Redis { link, .. }, Reference::Redis(key)) => {
                redis_call(link, |mut c| {
                    let key = key.clone();
                    async move { redis::cmd("DEL").arg(&key).query_async::<()>(&mut c).await }
                })
                .await
            }
            _ => Ok(()),
        }
    }
}

/// A sealed session cookie value, or `None` for anything we did not seal for `context`.
pub fn open_session(sealer: &Sealer, context: &str, sealed: &str) -> Option<Session> {
    let json = sealer.open(context, sealed)?;
    serde_json::from_slice(&json).ok()
}

fn reference_context(jar: &CookieJar) -> String {
    format!("{}:ref", jar.session)
}

/// Keyed by a hash of the reference: reading the key names from Redis gives nothing that
/// could be put in a cookie.
fn redis_key(prefix: &str, reference: &[u8]) -> String {
    let hash = digest::digest(&digest::SHA256, reference);
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}session:{hex}")
}

async fn redis_call<T, F, Fut>(link: &RedisLink, call: F) -> Result<T, StoreError>
where
    F: FnOnce(redis::aio::MultiplexedConnection) -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    let outcome = tokio::time::timeout(REDIS_TIMEOUT, async {
        let connection = link.connection().await?;
        call(connection).await
    })
    .await;
    match outcome {
        Ok(Ok(value)) => Ok(value),
        failed => {
            link.reset();
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_string(),
            };
            tracing::warn!(target: "sallyport::oidc", error = %why, "session store (Redis) unavailable");
            Err(StoreError::Unavailable)
        }
    }
}
