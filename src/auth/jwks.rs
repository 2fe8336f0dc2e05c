//! The keys Bearer tokens are checked against: static PEM keys or an HMAC secret from the
//! config, and a JWKS fetched over HTTPS.
//!
//! The JWKS is fetched at start, refreshed in the background every `jwks_refresh`, and
//! refetched when a token names a key we do not have (at most once a minute, so a flood
//! of made-up `kid`s cannot turn us into a load generator against the IdP). When a fetch
//! fails, the last good set stays. Each change of the set bumps a generation, so cached
//! verifications made with a key that has since been removed are not trusted again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http::Uri;
use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;

use super::idp_client::IdpClient;
use crate::config::JwtConfig;

/// Least time between fetches triggered by unknown key ids.
const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(60);
const NO_KEYS_RETRY_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    /// Set when the JWK pins its algorithm.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

struct FetchedSet {
    keys: Vec<Key>,
    /// The raw document, to tell a real change from a refetch of the same set.
    source: Bytes,
}

pub struct KeyRing {
    static_keys: Vec<Key>,
    fetched: ArcSwap<FetchedSet>,
    generation: AtomicU64,
    jwks: Option<Fetcher>,
}

struct Fetcher {
    /// Unset until OIDC discovery has told us where the keys are.
    url: ArcSwapOption<Uri>,
    client: IdpClient,
    refresh: Duration,
    /// Serialises fetches, and remembers when the last one for an unknown `kid` started
    /// (background refreshes do not count: a rotation just after one must still be seen).
    last_unknown_kid_fetch: tokio::sync::Mutex<Option<Instant>>,
}

/// What a lookup found for a token's `kid` and `alg`.
pub enum Lookup {
    Keys(Vec<Key>),
    /// No key fits, and the set could not be refreshed to find one.
    Unknown,
    /// We have no keys at all: the IdP has never answered.
    Unavailable,
}

impl KeyRing {
    pub fn new(config: &JwtConfig) -> Result<Arc<KeyRing>, String> {
        let static_keys = config
            .static_keys
            .iter()
            .map(|(_, key)| Key {
                kid: None,
                alg: None,
                key: key.clone(),
            })
            .collect();
        let jwks = match &config.jwks {
            Some(source) => {
                let client = IdpClient::new(&source.extra_roots, "auth.jwt.jwks_ca")?;
                Some(Fetcher::new(
                    client,
                    Some(source.url.clone()),
                    source.refresh,
                ))
            }
            None => None,
        };
        Ok(KeyRing::start(static_keys, jwks))
    }

    /// A ring for a JWKS whose address discovery will tell ([`KeyRing::set_jwks_url`]).
    pub fn deferred(client: IdpClient, refresh: Duration) -> Arc<KeyRing> {
        KeyRing::start(Vec::new(), Some(Fetcher::new(client, None, refresh)))
    }

    /// Points the ring at the JWKS discovery found, and fetches it now if it moved.
    pub fn set_jwks_url(self: &Arc<Self>, url: Uri) {
        let Some(fetcher) = &self.jwks else { return };
        if fetcher.url.load().as_deref() == Some(&url) {
            return;
        }
        fetcher.url.store(Some(Arc::new(url)));
        let ring = Arc::clone(self);
        tokio::spawn(async move {
            let Some(fetcher) = &ring.jwks else { return };
            let _one_fetch_at_a_time = fetcher.last_unknown_kid_fetch.lock().await;
            ring.fetch_and_install(fetcher).await;
        });
    }

    fn start(static_keys: Vec<Key>, jwks: Option<Fetcher>) -> Arc<KeyRing> {
        let ring = Arc::new(KeyRing {
            static_keys,
            fetched: ArcSwap::from_pointee(FetchedSet {
                keys: Vec::new(),
                source: Bytes::new(),
            }),
            generation: AtomicU64::new(0),
            jwks,
        });
        if let Some(fetcher) = &ring.jwks {
            // `sallyport check` builds this outside a runtime; only a running proxy fetches.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let refresh = fetcher.refresh;
                runtime.spawn(refresh_forever(Arc::downgrade(&ring), refresh));
            }
        }
        ring
    }

    async fn fetch_and_install(&self, fetcher: &Fetcher) {
        let Some(url) = fetcher.url.load_full() else {
            return;
        };
        match fetcher.fetch(&url).await {
            Ok((keys, source)) => self.install(keys, source),
            Err(why) => {
                tracing::warn!(target: "sallyport::jwt", url = %url, error = %why, "JWKS fetch failed; keeping the previous keys");
            }
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<Key> {
        let fetched = self.fetched.load();
        self.static_keys
            .iter()
            .chain(fetched.keys.iter())
            .filter(|k| k.key.family() == alg.family())
            .filter(|k| k.alg.is_none_or(|a| a == alg))
            // A token naming a key gets only that key; a token or key without an id may
            // be checked against each key of its family.
            .filter(|k| match (kid, &k.kid) {
                (Some(wanted), Some(have)) => wanted == have,
                _ => true,
            })
            .cloned()
            .collect()
    }

    /// Keys that may have signed a token with this `kid` and `alg`, refetching the JWKS
    /// (rate-limited) when none fits.
    pub async fn find(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        let found = self.candidates(kid, alg);
        if !found.is_empty() {
            return Lookup::Keys(found);
        }
        let Some(fetcher) = &self.jwks else {
            return Lookup::Unknown;
        };
        let fetched_any = {
            let mut last = fetcher.last_unknown_kid_fetch.lock().await;
            // A fetch that finished while we waited may have brought the key.
            let found = self.candidates(kid, alg);
            if !found.is_empty() {
                return Lookup::Keys(found);
            }
            // With no keys at all (the IdP has not answered yet) retry sooner, but still
            // not per request.
            let interval = if self.fetched.load().keys.is_empty() {
                NO_KEYS_RETRY_INTERVAL
            } else {
                UNKNOWN_KID_INTERVAL
            };
            let due = last.is_none_or(|at| at.elapsed() >= interval);
            if due {
                *last = Some(Instant::now());
                self.fetch_and_install(fetcher).await;
            }
            !self.fetched.load().keys.is_empty()
        };
        let found = self.candidates(kid, alg);
        if !found.is_empty() {
            Lookup::Keys(found)
        } else if !fetched_any && self.static_keys.is_empty() {
            Lookup::Unavailable
        } else {
            Lookup::Unknown
        }
    }

    fn install(&self, keys: Vec<Key>, source: Bytes) {
        if self.fetched.load().source == source {
            return;
        }
        tracing::info!(
            target: "sallyport::jwt",
            keys = keys.len(),
            kids = %keys.iter().filter_map(|k| k.kid.as_deref()).collect::<Vec<_>>().join(","),
            "JWKS loaded",
        );
        self.fetched.store(Arc::new(FetchedSet { keys, source }));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

async fn refresh_forever(ring: Weak<KeyRing>, every: Duration) {
    loop {
        {
            let Some(ring) = ring.upgrade() else { return };
            let Some(fetcher) = &ring.jwks else { return };
            let _one_fetch_at_a_time = fetcher.last_unknown_kid_fetch.lock().await;
            ring.fetch_and_install(fetcher).await;
        }
        tokio::time::sleep(every).await;
    }
}

impl Fetcher {
    fn new(client: IdpClient, url: Option<Uri>, refresh: Duration) -> Fetcher {
        Fetcher {
            url: ArcSwapOption::from(url.map(Arc::new)),
            client,
            refresh,
            last_unknown_kid_fetch: tokio::sync::Mutex::new(None),
        }
    }

    async fn fetch(&self, url: &Uri) -> Result<(Vec<Key>, Bytes), String> {
        let body = self.client.get_json(url).await?;
        let keys = parse_jwks(&body)?;
        Ok((keys, body))
    }
}

/// Usable signature keys from a JWKS document. Keys we cannot use (encryption keys,
/// unsupported curves or types) are skipped rather than failing the whole set: IdPs
/// publish such keys alongside the ones that matter.
pub fn parse_jwks(body: &[u8]) -> Result<Vec<Key>, String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document =
        serde_json::from_slice(body).map_err(|_| "not a JWKS document".to_string())?;
    let mut keys = Vec::new();
    for value in document.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        // A shared secret published in a JWKS is no secret.
        if key.family() == jsonwebtoken::AlgorithmFamily::Hmac {
            continue;
        }
        let alg = jwk.common.key_algorithm.and_then(signing_algorithm);
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    if keys.is_empty() {
        return Err("the JWKS has no usable signature keys".into());
    }
    Ok(keys)
}

fn signing_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}
