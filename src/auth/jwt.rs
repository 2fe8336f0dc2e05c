//! Bearer tokens (JWT, RFC 7519) checked against pinned algorithms and the [`KeyRing`].
//!
//! - The algorithm is read from the header before anything else and must be one of the
//!   configured ones; `none` never is. Keys are chosen by `kid` *and* by the algorithm's
//!   family, so an HS256 token can never be checked with an RSA public key as its secret.
//! - `exp` is required and must be a number; `nbf`, `iss` and `aud` are checked with
//!   `leeway`.
//! - Verified tokens are cached by SHA-256 of the token until they expire (at most
//!   `cache_ttl`), so repeat requests skip the signature check. A cached token is trusted
//!   only while the key set it was verified against is unchanged.
//! - Each failure has a precise, non-secret description for the developer (RFC 6750
//!   `error_description`); only bad signatures and malformed or forged tokens count as
//!   attacks for throttling, not expired ones.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use base64ct::{Base64UrlUnpadded, Encoding};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use moka::sync::Cache;
use serde_json::Value;

use super::jwks::{KeyRing, Lookup};
use super::{Authenticated, Scheme};
use crate::config::{ClaimPaths, IdentityHeaders, JwksSource, JwtConfig};
use crate::metrics::CacheCounters;

/// Longest token we look at; real ones are a few KB at most.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
const CACHE_CAPACITY: u64 = 100_000;

/// Why a token was refused. The description is sent to the client (RFC 6750), so it says
/// what to fix without revealing anything about our keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    AlgorithmNotAllowed,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingClaim(&'static str),
    BadClaim(&'static str),
    NoUser,
    /// An OIDC ID token (it names a login `nonce`) presented as an access token.
    IdToken,
    /// No keys could be obtained from the IdP at all.
    KeysUnavailable,
}

impl TokenError {
    pub fn description(self) -> &'static str {
        match self {
            TokenError::Malformed => "The token is not a well-formed JWT.",
            TokenError::AlgorithmNotAllowed => "The token's signing algorithm is not accepted.",
            TokenError::UnknownKey => "The token was signed with an unknown key.",
            TokenError::BadSignature => "The token's signature is invalid.",
            TokenError::Expired => "The token has expired.",
            TokenError::NotYetValid => "The token is not valid yet (nbf).",
            TokenError::WrongIssuer => "The token's issuer (iss) is not accepted.",
            TokenError::WrongAudience => "The token's audience (aud) is not accepted.",
            TokenError::MissingClaim("exp") => "The token has no expiry (exp).",
            TokenError::MissingClaim("iss") => "The token has no issuer (iss).",
            TokenError::MissingClaim("aud") => "The token has no audience (aud).",
            TokenError::MissingClaim(_) => "The token lacks a required claim.",
            TokenError::BadClaim("exp") => "The token's exp claim is not a number.",
            TokenError::BadClaim("nbf") => "The token's nbf claim is not a number.",
            TokenError::BadClaim(_) => "The token has a malformed claim.",
            TokenError::NoUser => "The token does not name a user.",
            TokenError::IdToken => "The token is an ID token, not an access token.",
            TokenError::KeysUnavailable => {
                "The identity provider's signing keys are not available; try again later."
            }
        }
    }

    /// The log's reason code.
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed_token",
            TokenError::AlgorithmNotAllowed => "algorithm_not_allowed",
            TokenError::UnknownKey => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::BadClaim(_) => "bad_claim",
            TokenError::NoUser => "no_user_claim",
            TokenError::IdToken => "id_token_as_bearer",
            TokenError::KeysUnavailable => "keys_unavailable",
        }
    }

    /// Forgeries and garbage are guesses; tokens our IdP really signed (expired, for
    /// another audience...) are mistakes, not attacks, and do not count.
    pub fn counts_as_failure(self) -> bool {
        matches!(
            self,
            TokenError::Malformed
                | TokenError::AlgorithmNotAllowed
                | TokenError::UnknownKey
                | TokenError::BadSignature
        )
    }
}

#[derive(Clone)]
struct CachedToken {
    identity: Authenticated,
    expires_at: u64,
    generation: u64,
}

/// Signature, algorithm and registered-claim checks: what Bearer tokens and OIDC ID
/// tokens have in common.
pub struct TokenVerifier {
    keys: Arc<KeyRing>,
    /// One per pinned algorithm: the library refuses a validation whose algorithms span
    /// several key families, and each token is checked against its own algorithm only.
    validations: Vec<(Algorithm, Validation)>,
}

impl TokenVerifier {
    /// `audiences` empty: any audience is accepted.
    pub fn new(
        keys: Arc<KeyRing>,
        algorithms: &[Algorithm],
        issuer: Option<&str>,
        audiences: &[String],
        leeway: Duration,
    ) -> TokenVerifier {
        let mut validation = Validation::new(algorithms[0]);
        validation.leeway = leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(issuer) = issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        if audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(audiences);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        let validations = algorithms
            .iter()
            .map(|alg| {
                let mut v = validation.clone();
                v.algorithms = vec![*alg];
                (*alg, v)
            })
            .collect();
        TokenVerifier { keys, validations }
    }

    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    /// The token's claims, once its algorithm, signature, `exp`, `nbf`, `iss` and `aud`
    /// have checked out.
    pub async fn verify(&self, token: &str) -> Result<Value, TokenError> {
        let (alg, kid) = read_header(token)?;
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == alg) else {
            return Err(TokenError::AlgorithmNotAllowed);
        };
        let keys = match self.keys.find(kid.as_deref(), alg).await {
            Lookup::Keys(keys) => keys,
            Lookup::Unknown => return Err(TokenError::UnknownKey),
            Lookup::Unavailable => return Err(TokenError::KeysUnavailable),
        };
        let mut outcome = Err(TokenError::BadSignature);
        for key in &keys {
            match jsonwebtoken::decode::<Value>(token, &key.key, validation) {
                Ok(data) => {
                    outcome = Ok(data.claims);
                    break;
                }
                // Try the next key of the family (tokens or keys without an id).
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => {
                    outcome = Err(match map_error(e.kind()) {
                        // The library reports an `exp` that is not a number as missing.
                        TokenError::MissingClaim("exp") if has_claim(token, "exp") => {
                            TokenError::BadClaim("exp")
                        }
                        other => other,
                    });
                    break;
                }
            }
        }
        outcome
    }
}

pub struct JwtAuth {
    verifier: TokenVerifier,
    leeway: u64,
    claims: ClaimPaths,
    /// header -> claim path, from `[headers] extra`.
    extra: Vec<(http::HeaderName, String)>,
    cache: Option<Cache<[u8; 32], CachedToken>>,
    /// OIDC: ID tokens end up in browser history (logout's `id_token_hint`) and logs;
    /// they must not work as API credentials.
    refuse_id_tokens: bool,
    counters: CacheCounters,
    /// The JWKS the keys come from, when they come from nothing else: a reload with the
    /// same source keeps the fetched keys instead of starting without any.
    jwks_only: Option<JwksSource>,
}

impl JwtAuth {
    pub fn new(config: &JwtConfig, headers: &IdentityHeaders) -> Result<JwtAuth, String> {
        JwtAuth::build(config, headers, CacheCounters::default(), None)
    }

    /// `keys`: a ring to keep (from [`JwtAuth::keys_if_same_source`]) instead of a new one.
    pub fn build(
        config: &JwtConfig,
        headers: &IdentityHeaders,
        counters: CacheCounters,
        keys: Option<Arc<KeyRing>>,
    ) -> Result<JwtAuth, String> {
        if config.audiences.is_empty() {
            tracing::warn!(target: "sallyport::jwt", "auth.jwt.audiences is not set: tokens for any audience are accepted");
        }
        let keys = match keys {
            Some(keys) => keys,
            None => KeyRing::new(config)?,
        };
        let mut jwt = JwtAuth::with_keys(config, headers, keys).counting(counters);
        jwt.jwks_only = config
            .jwks
            .clone()
            .filter(|_| config.static_keys.is_empty());
        Ok(jwt)
    }

    /// This ring, if `config` takes its keys from exactly the same JWKS and nothing else.
    /// Static keys are always re-read, so a removed key stops working on reload.
    pub fn keys_if_same_source(&self, config: &JwtConfig) -> Option<Arc<KeyRing>> {
        let same = config.static_keys.is_empty()
            && self.jwks_only.is_some()
            && self.jwks_only == config.jwks;
        same.then(|| Arc::clone(&self.verifier.keys))
    }

    /// Bearer tokens checked against an existing key ring (OIDC shares its IdP's).
    pub fn with_keys(config: &JwtConfig, headers: &IdentityHeaders, keys: Arc<KeyRing>) -> JwtAuth {
        let verifier = TokenVerifier::new(
            keys,
            &config.algorithms,
            config.issuer.as_deref(),
            &config.audiences,
            config.leeway,
        );
        let cache = (!config.cache_ttl.is_zero()).then(|| {
            Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(config.cache_ttl)
                .build()
        });
        JwtAuth {
            verifier,
            leeway: config.leeway.as_secs(),
            claims: config.claims.clone(),
            extra: headers.extra.clone(),
            cache,
            refuse_id_tokens: false,
            counters: CacheCounters::default(),
            jwks_only: None,
        }
    }

    /// Counts cache hits and misses into `counters`.
    pub fn counting(mut self, counters: CacheCounters) -> JwtAuth {
        self.counters = counters;
        self
    }

    /// Refuses tokens carrying a `nonce`: the ID tokens of browser logins.
    pub fn refusing_id_tokens(mut self) -> JwtAuth {
        self.refuse_id_tokens = true;
        self
    }

    pub async fn verify(&self, token: &str) -> Result<Authenticated, TokenError> {
        let cache_key = cache_key(token);
        let now = unix_now();
        if let Some(cache) = &self.cache {
            if let Some(hit) = cache.get(&cache_key) {
                if hit.generation == self.verifier.keys.generation()
                    && hit.expires_at.saturating_add(self.leeway) >= now
                {
                    self.counters.hit();
                    return Ok(hit.identity);
                }
                cache.invalidate(&cache_key);
            }
            self.counters.miss();
        }
        let generation = self.verifier.keys.generation();
        // Boxed: key lookup may fetch a JWKS, a large future every cached request would
        // otherwise carry (see `Gate::pipeline`).
        let claims = Box::pin(self.verifier.verify(token)).await?;
        if self.refuse_id_tokens && claims.get("nonce").is_some() {
            return Err(TokenError::IdToken);
        }
        let identity = self.identity(&claims, Scheme::Bearer)?;
        if let Some(cache) = &self.cache {
            let expires_at = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
            cache.insert(
                cache_key,
                CachedToken {
                    identity: identity.clone(),
                    expires_at,
                    generation,
                },
            );
        }
        Ok(identity)
    }

    /// The identity claims name, mapped by `claims` and `[headers] extra`.
    pub(crate) fn identity(
        &self,
        claims: &Value,
        scheme: Scheme,
    ) -> Result<Authenticated, TokenError> {
        let user = claim(claims, &self.claims.user)
            .and_then(scalar_string)
            .filter(|u| !u.is_empty())
            .ok_or(TokenError::NoUser)?;
        let email = claim(claims, &self.claims.email).and_then(scalar_string);
        let preferred_username =
            claim(claims, &self.claims.preferred_username).and_then(scalar_string);
        let groups = claim(claims, &self.claims.groups)
            .map(string_list)
            .unwrap_or_default();
        // OAuth scopes: `scope` is a space-separated string (RFC 8693), `scp` a list
        // (Azure AD, Okta).
        let mut scopes = claims.get("scope").map(string_list).unwrap_or_default();
        if let Some(scp) = claims.get("scp") {
            scopes.extend(string_list(scp));
        }
        let extra = self
            .extra
            .iter()
            .filter_map(|(header, path)| {
                let value = claim(claims, path)?;
                let text = scalar_string(value).or_else(|| {
                    let list = string_list(value);
                    (!list.is_empty()).then(|| list.join(","))
                })?;
                Some((header.clone(), text))
            })
            .collect();
        Ok(Authenticated {
            user,
            groups,
            scheme,
            email,
            preferred_username,
            scopes,
            extra,
            claims: Some(Arc::new(claims.clone())),
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

fn cache_key(token: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(d.as_ref());
    key
}

/// The header's `alg` and `kid`, read ourselves so that `alg: none` (which the library
/// cannot even represent) is reported as a refused algorithm, not as garbage.
fn read_header(token: &str) -> Result<(Algorithm, Option<String>), TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let bytes = Base64UrlUnpadded::decode_vec(header).map_err(|_| TokenError::Malformed)?;
    let header: Value = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(TokenError::Malformed)?;
    let alg = alg
        .parse::<Algorithm>()
        .map_err(|_| TokenError::AlgorithmNotAllowed)?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(TokenError::Malformed),
    };
    Ok((alg, kid))
}

/// Whether the (already signature-checked) payload has this claim at all.
fn has_claim(token: &str, name: &str) -> bool {
    token
        .split('.')
        .nth(1)
        .and_then(|p| Base64UrlUnpadded::decode_vec(p).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|claims| claims.get(name).is_some())
}

fn map_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            TokenError::AlgorithmNotAllowed
        }
        ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(match c.as_str() {
            "exp" => "exp",
            "iss" => "iss",
            "aud" => "aud",
            _ => "other",
        }),
        ErrorKind::InvalidClaimFormat(c) => TokenError::BadClaim(match c.as_str() {
            "exp" => "exp",
            "nbf" => "nbf",
            _ => "other",
        }),
        _ => TokenError::Malformed,
    }
}

/// A claim by path: the whole path as one key first (namespaced claims such as
/// `https://example.com/groups` contain dots), then dot-separated into nested objects.
pub fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut current = claims;
    for segment in path.split('.') {
        current = current.get(segment)?;
    }
    Some(current)
}

/// A claim that is one value (string, number or boolean), as text.
pub fn scalar_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Groups and scopes: a JSON array of strings, or one string separated by spaces or
/// commas.
fn string_list(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items.iter().filter_map(scalar_string).collect(),
        Value::String(s) => s
            .split([' ', ','])
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claims_are_found_by_literal_key_then_by_dotted_path() {
        let claims = json!({
            "https://example.com/groups": ["a"],
            "realm_access": {"roles": ["admin", "ops"]},
        });
        assert_eq!(
            claim(&claims, "https://example.com/groups"),
            Some(&json!(["a"]))
        );
        assert_eq!(
            string_list(claim(&claims, "realm_access.roles").unwrap()),
            ["admin", "ops"]
        );
        assert_eq!(claim(&claims, "realm_access.missing"), None);
    }

    #[test]
    fn groups_and_scopes_come_as_lists_or_strings() {
        assert_eq!(string_list(&json!("read write")), ["read", "write"]);
        assert_eq!(string_list(&json!("a,b, c")), ["a", "b", "c"]);
        assert_eq!(string_list(&json!(["x", 1])), ["x", "1"]);
        assert!(string_list(&json!({"a": 1})).is_empty());
    }

    #[test]
    fn headers_are_read_without_trusting_the_library_with_alg_none() {
        let enc = |v: &Value| Base64UrlUnpadded::encode_string(v.to_string().as_bytes());
        let none = format!("{}.{}.", enc(&json!({"alg": "none"})), enc(&json!({})));
        assert_eq!(
            read_header(&none).unwrap_err(),
            TokenError::AlgorithmNotAllowed
        );
        let rs = format!(
            "{}.{}.sig",
            enc(&json!({"alg": "RS256", "kid": "k1"})),
            enc(&json!({}))
        );
        assert_eq!(
            read_header(&rs).unwrap(),
            (Algorithm::RS256, Some("k1".into()))
        );
        for bad in ["", "a.b", "a.b.c.d", "!!.e30.x", "e30.e30.x"] {
            assert_eq!(
                read_header(bad).unwrap_err(),
                TokenError::Malformed,
                "{bad}"
            );
        }
    }
}
