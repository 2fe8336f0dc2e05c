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

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;

use crate::config::{JwksSource, JwtConfig};

/// A JWKS larger than this is not a JWKS.
const MAX_JWKS_BYTES: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
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
    url: Uri,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
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
        let jwks = config.jwks.as_ref().map(Fetcher::new).transpose()?;
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
        Ok(ring)
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
                match fetcher.fetch().await {
                    Ok((keys, source)) => {
                        self.install(keys, source);
                    }
                    Err(why) => {
                        tracing::warn!(target: "sallyport::jwt", url = %fetcher.url, error = %why, "JWKS fetch failed; keeping the previous keys");
                    }
                }
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
            match fetcher.fetch().await {
                Ok((keys, source)) => ring.install(keys, source),
                Err(why) => {
                    tracing::warn!(target: "sallyport::jwt", url = %fetcher.url, error = %why, "JWKS fetch failed; keeping the previous keys");
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

impl Fetcher {
    fn new(source: &JwksSource) -> Result<Fetcher, String> {
        let tls = crate::proxy::tls_client_config(&source.extra_roots, "auth.jwt.jwks_ca")?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(FETCH_TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Fetcher {
            url: source.url.clone(),
            client,
            refresh: source.refresh,
            last_unknown_kid_fetch: tokio::sync::Mutex::new(None),
        })
    }

    async fn fetch(&self) -> Result<(Vec<Key>, Bytes), String> {
        let request = Request::get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("sallyport/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let body = tokio::time::timeout(FETCH_TIMEOUT, async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            if response.status() != StatusCode::OK {
                return Err(format!("HTTP {}", response.status().as_u16()));
            }
            Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| format!("reading the body failed: {e}"))
        })
        .await
        .map_err(|_| "timed out".to_string())??;
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
