//! OIDC browser login: authorization code flow with PKCE (S256), state and nonce, sealed
//! sessions with idle and absolute expiry, single-flight refresh, logout.
//!
//! - `/.sallyport/login?rd=` starts a login. Its state, nonce, PKCE verifier and target
//!   live in a sealed cookie named after the state, so several tabs can log in at once
//!   and a callback only completes in the browser that started it.
//! - `/.sallyport/callback` checks the state against that cookie (once: replays are
//!   refused), exchanges the code, verifies the ID token (signature via the IdP's JWKS,
//!   `iss`, `aud`, `exp`, `nonce`, `azp`) and issues a brand-new session.
//! - Each request with a session cookie is checked for idle and absolute expiry; past the
//!   access token's lifetime the session is refreshed, once per refresh token however many
//!   requests arrive together (IdPs that rotate refresh tokens revoke the whole session
//!   when one is used twice).
//! - `/.sallyport/logout` forgets the session and ends the IdP's session too when the IdP
//!   offers `end_session_endpoint`.

pub mod cookies;
pub mod discovery;
pub mod redirect;
pub mod seal;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use base64ct::{Base64, Base64UrlUnpadded, Encoding};
use http::HeaderMap;
use http::header::HeaderValue;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use subtle::ConstantTimeEq;
use tokio::sync::OnceCell;

use super::idp_client::IdpClient;
use super::jwks::KeyRing;
use super::jwt::{JwtAuth, TokenError, TokenVerifier};
use super::{Authenticated, Scheme};
use crate::clock::WallClock;
use crate::config::{IdentityHeaders, JwtConfig, OidcConfig, Secret};
use crate::metrics::CacheCounters;
use cookies::{CookieJar, request_cookies};
use discovery::{ClientAuth, Discovery, Metadata};
use redirect::RedirectPolicy;
use seal::Sealer;
use store::{Loaded, Reference, Session, Store, StoreError};

pub const LOGIN_PATH: &str = "/.sallyport/login";
pub const CALLBACK_PATH: &str = "/.sallyport/callback";
pub const LOGOUT_PATH: &str = "/.sallyport/logout";

/// How long a login may take from redirect to callback.
const LOGIN_TTL: u64 = 600;
/// Logins in progress one browser may hold; past this, the older ones are cleared so
/// abandoned logins cannot grow the Cookie header into a 431.
const MAX_PENDING_LOGINS: usize = 4;
const JWKS_REFRESH: Duration = Duration::from_secs(3600);
/// A refresh's outcome is remembered this long, for requests still carrying the cookie
/// from before it.
const REFRESH_MEMORY: Duration = Duration::from_secs(120);

/// A built-in endpoint's answer: where to send the browser, and the cookies to set.
#[derive(Debug)]
pub struct Redirect {
    pub location: String,
    pub set_cookies: Vec<HeaderValue>,
}

/// Why a login or logout step could not complete. The description goes to the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowError {
    BadRequest(&'static str),
    /// Discovery has not succeeded yet, or the session store is down.
    Unavailable,
    /// The IdP did not answer the token request.
    IdpUnreachable,
}

/// Why a session cookie did not authenticate (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionProblem {
    Tampered,
    IdleExpired,
    Expired,
    /// Logged out, or gone from the session store.
    Gone,
    RefreshFailed,
}

impl SessionProblem {
    pub fn reason(self) -> &'static str {
        match self {
            SessionProblem::Tampered => "session_tampered",
            SessionProblem::IdleExpired => "session_idle_expired",
            SessionProblem::Expired => "session_expired",
            SessionProblem::Gone => "session_gone",
            SessionProblem::RefreshFailed => "session_refresh_failed",
        }
    }
}

pub enum SessionOutcome {
    Valid(Authenticated),
    Rejected(SessionProblem),
    Unavailable,
}

/// A session check's result and the cookies the response must carry (a touched or
/// refreshed session, or the clearing of a dead one).
pub struct SessionCheck {
    pub outcome: SessionOutcome,
    pub set_cookies: Vec<HeaderValue>,
}

#[derive(Serialize, Deserialize)]
struct LoginState {
    state: String,
    nonce: String,
    verifier: String,
    /// Already validated.
    rd: String,
    issued_at: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<Value>,
}

#[derive(Clone)]
enum Refreshed {
    Renewed(Session),
    /// The IdP said no (revoked, expired, user disabled): log in again.
    Refused,
    /// The IdP could not be asked: keep the session, try again on the next request.
    Unreachable,
}

pub struct Oidc {
    issuer: String,
    client_id: String,
    client_secret: Option<Secret>,
    scope: String,
    /// `audiences` configured: API clients may use the IdP's access tokens.
    accepts_bearer: bool,
    idle: u64,
    max: u64,
    callback_url: String,
    http: IdpClient,
    discovery: Arc<Discovery>,
    id_tokens: TokenVerifier,
    bearer: JwtAuth,
    logins: Sealer,
    jar: CookieJar,
    store: Store,
    redirects: RedirectPolicy,
    /// States whose callback has run (hash -> ()), so a replayed callback is refused even
    /// before the IdP would refuse the spent code.
    used_states: moka::sync::Cache<[u8; 32], ()>,
    /// Refresh token hash -> the one refresh made with it.
    refreshes: moka::sync::Cache<[u8; 32], Arc<OnceCell<Refreshed>>>,
    clock: WallClock,
}

impl Oidc {
    /// `bearer_cache`: where the Bearer-token cache counts its hits and misses.
    pub fn new(
        config: &OidcConfig,
        headers: &IdentityHeaders,
        clock: WallClock,
        bearer_cache: CacheCounters,
    ) -> Result<Oidc, String> {
        let http = IdpClient::new(&config.extra_roots, "auth.oidc.issuer_ca")?;
        let keys = KeyRing::deferred(http.clone(), JWKS_REFRESH);
        let discovery = Discovery::new(
            config.discovery_url.clone(),
            config.issuer.clone(),
            config.client_secret.is_some(),
            http.clone(),
            Arc::clone(&keys),
        );
        let id_tokens = TokenVerifier::new(
            Arc::clone(&keys),
            &config.algorithms,
            Some(&config.issuer),
            std::slice::from_ref(&config.client_id),
            config.leeway,
        );
        let bearer_config = JwtConfig {
            issuer: Some(config.issuer.clone()),
            audiences: config.audiences.clone(),
            algorithms: config.algorithms.clone(),
            jwks: None,
            static_keys: Vec::new(),
            leeway: config.leeway,
            cache_ttl: Duration::from_secs(300),
            claims: config.claims.clone(),
        };
        let bearer = JwtAuth::with_keys(&bearer_config, headers, keys)
            .refusing_id_tokens()
            .counting(bearer_cache);
        let accepts_bearer = !config.audiences.is_empty();
        let redirects = RedirectPolicy::new(&config.public_url, &config.allowed_redirect_hosts);
        let secret = config.cookie_secret.expose();
        let jar = CookieJar::new(
            config.public_url.scheme_str() == Some("https"),
            config.max_cookie_bytes,
        );
        Ok(Oidc {
            issuer: config.issuer.clone(),
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            scope: config.scopes.join(" "),
            accepts_bearer,
            idle: config.session_idle.as_secs().max(1),
            max: config.session_max.as_secs().max(1),
            callback_url: redirects.url_for(CALLBACK_PATH),
            http,
            discovery,
            id_tokens,
            bearer,
            logins: Sealer::new(secret, "login v1")?,
            store: Store::new(
                config.session_store.as_ref(),
                Sealer::new(secret, "session v1")?,
                jar.clone(),
            )?,
            jar,
            redirects,
            used_states: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(LOGIN_TTL))
                .build(),
            refreshes: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(REFRESH_MEMORY)
                .build(),
            clock,
        })
    }

    /// Discovery has succeeded: logins can start.
    pub fn is_ready(&self) -> bool {
        self.discovery.metadata().is_some()
    }

    /// Bearer tokens issued by this IdP, when `audiences` says which to accept.
    pub fn bearer(&self) -> Option<&JwtAuth> {
        self.accepts_bearer.then_some(&self.bearer)
    }

    pub fn has_session_cookie(&self, headers: &HeaderMap) -> bool {
        self.jar.has_session(&request_cookies(headers))
    }

    /// Where to send a browser that needs to log in to reach `rd` (a path and query, or
    /// an absolute URL on an allowed host).
    pub fn login_url(&self, rd: &str) -> String {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("rd", rd)
            .finish();
        self.redirects.url_for(&format!("{LOGIN_PATH}?{query}"))
    }

    /// Whether a request for this host can be sent to log in: the session cookie is
    /// `public_url`'s (host-only), so a login for any other host would come back without
    /// it and loop.
    pub fn serves_host(&self, host: Option<&str>) -> bool {
        host.is_none_or(|h| self.redirects.is_public_host(h))
    }

    pub async fn session(&self, headers: &HeaderMap) -> SessionCheck {
        let cookies = request_cookies(headers);
        let rejected = |problem: SessionProblem| SessionCheck {
            outcome: SessionOutcome::Rejected(problem),
            set_cookies: self.jar.clear_session(&cookies),
        };
        let (mut session, reference) = match self.store.load(&cookies).await {
            Err(_) => {
                return SessionCheck {
                    outcome: SessionOutcome::Unavailable,
                    set_cookies: Vec::new(),
                };
            }
            Ok(Loaded::None | Loaded::Gone) => return rejected(SessionProblem::Gone),
            Ok(Loaded::Tampered) => return rejected(SessionProblem::Tampered),
            Ok(Loaded::Found(session, reference)) => (session, reference),
        };
        let now = self.clock.now();
        let expired = if now >= session.created_at.saturating_add(self.max) {
            Some(SessionProblem::Expired)
        } else if now >= session.last_seen.saturating_add(self.idle) {
            Some(SessionProblem::IdleExpired)
        } else {
            None
        };
        if let Some(problem) = expired {
            let _ = self.store.delete(&reference).await;
            return rejected(problem);
        }
        let mut changed = false;
        let access_expired = session.access_expires_at.is_some_and(|at| now >= at);
        if access_expired && session.refresh_token.is_some() {
            match self.refresh(&session).await {
                Refreshed::Renewed(renewed) => {
                    session = renewed;
                    changed = true;
                }
                Refreshed::Refused => {
                    let _ = self.store.delete(&reference).await;
                    return rejected(SessionProblem::RefreshFailed);
                }
                // An IdP outage must not log everyone out whose token expires during it.
                Refreshed::Unreachable => {
                    return SessionCheck {
                        outcome: SessionOutcome::Unavailable,
                        set_cookies: Vec::new(),
                    };
                }
            }
        }
        // Re-issuing the cookie on every request would cost a seal and a Set-Cookie each
        // time; idle expiry only needs to be as precise as a quarter of its length.
        let touch_every = (self.idle / 4).min(60);
        if now.saturating_sub(session.last_seen) >= touch_every {
            session.last_seen = now;
            changed = true;
        }
        let Some(identity) = self.identity(&session) else {
            return rejected(SessionProblem::Tampered);
        };
        let mut set_cookies = Vec::new();
        if changed {
            match self.save(&session, Some(&reference), &cookies).await {
                Ok(set) => set_cookies = set,
                Err(StoreError::Unavailable) => {
                    return SessionCheck {
                        outcome: SessionOutcome::Unavailable,
                        set_cookies,
                    };
                }
                Err(StoreError::TooLarge | StoreError::Gone) => {
                    return rejected(SessionProblem::Gone);
                }
            }
        }
        SessionCheck {
            outcome: SessionOutcome::Valid(identity),
            set_cookies,
        }
    }

    async fn save(
        &self,
        session: &Session,
        reference: Option<&Reference>,
        cookies: &[(&str, &str)],
    ) -> Result<Vec<HeaderValue>, StoreError> {
        let now = self.clock.now();
        let remaining = session
            .created_at
            .saturating_add(self.max)
            .saturating_sub(now);
        let ttl = remaining.min(self.idle);
        self.store
            .save(session, reference, ttl, remaining, cookies)
            .await
    }

    /// The identity the session's ID token names. Its signature was checked when it was
    /// issued to us; the sealed cookie (or store) is what vouches for it now.
    fn identity(&self, session: &Session) -> Option<Authenticated> {
        let payload = session.id_token.split('.').nth(1)?;
        let claims: Value =
            serde_json::from_slice(&Base64UrlUnpadded::decode_vec(payload).ok()?).ok()?;
        self.bearer.identity(&claims, Scheme::Session).ok()
    }

    /// One refresh per refresh token: concurrent requests wait for the first one's
    /// outcome, and requests arriving later with the old cookie get the same result. An
    /// unreachable IdP is not remembered, so the next request tries again.
    async fn refresh(&self, session: &Session) -> Refreshed {
        let Some(token) = session.refresh_token.as_deref() else {
            return Refreshed::Refused;
        };
        let key = sha256(token.as_bytes());
        let cell = self.refreshes.get_with(key, || Arc::new(OnceCell::new()));
        let outcome = cell
            .get_or_init(|| self.redeem_refresh_token(session, token))
            .await
            .clone();
        if matches!(outcome, Refreshed::Unreachable) {
            self.refreshes.invalidate(&key);
        }
        outcome
    }

    async fn redeem_refresh_token(&self, session: &Session, token: &str) -> Refreshed {
        let Some(metadata) = self.discovery.metadata() else {
            return Refreshed::Unreachable;
        };
        let form = vec![
            ("grant_type", "refresh_token".to_string()),
            ("refresh_token", token.to_string()),
        ];
        let response = match self.token_request(&metadata, form).await {
            Ok(r) => r,
            Err(TokenRequestError::Unreachable(why)) => {
                tracing::warn!(target: "sallyport::oidc", sid = %session.sid, error = %why, "session refresh could not reach the IdP; will retry");
                return Refreshed::Unreachable;
            }
            Err(why) => {
                tracing::info!(target: "sallyport::oidc", sid = %session.sid, error = %why, "session refresh refused; the user must log in again");
                return Refreshed::Refused;
            }
        };
        let id_token = match response.id_token {
            Some(new) => {
                // OIDC Core 12.2: a refreshed ID token is for the same user from the same
                // issuer.
                let claims = match self.id_tokens.verify(&new).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(target: "sallyport::oidc", sid = %session.sid, reason = e.reason(), "refreshed ID token rejected");
                        return Refreshed::Refused;
                    }
                };
                let old_sub = self
                    .claims_of(&session.id_token)
                    .and_then(|c| c.get("sub").cloned());
                let azp_ok = claims
                    .get("azp")
                    .and_then(Value::as_str)
                    .is_none_or(|azp| azp == self.client_id);
                if claims.get("sub") != old_sub.as_ref() || !azp_ok {
                    tracing::warn!(target: "sallyport::oidc", sid = %session.sid, "refreshed ID token names another subject or client");
                    return Refreshed::Refused;
                }
                new
            }
            None => session.id_token.clone(),
        };
        let now = self.clock.now();
        Refreshed::Renewed(Session {
            sid: session.sid.clone(),
            id_token,
            refresh_token: response
                .refresh_token
                .or_else(|| session.refresh_token.clone()),
            access_expires_at: expires_at(now, response.expires_in.as_ref()),
            created_at: session.created_at,
            last_seen: now,
        })
    }

    fn claims_of(&self, id_token: &str) -> Option<Value> {
        let payload = id_token.split('.').nth(1)?;
        serde_json::from_slice(&Base64UrlUnpadded::decode_vec(payload).ok()?).ok()
    }

    /// `/.sallyport/login`: off to the IdP with a fresh state, nonce and PKCE verifier.
    pub fn login(&self, query: Option<&str>, headers: &HeaderMap) -> Result<Redirect, FlowError> {
        let metadata = self.discovery.metadata().ok_or(FlowError::Unavailable)?;
        let rd = query_param(query, "rd");
        let state = random_token();
        let nonce = random_token();
        let verifier = random_token();
        let challenge = Base64UrlUnpadded::encode_string(&sha256(verifier.as_bytes()));
        let login = LoginState {
            state: state.clone(),
            nonce: nonce.clone(),
            verifier,
            rd: self.redirects.target(rd.as_deref()),
            issued_at: self.clock.now(),
        };
        let name = self.login_cookie_name(&state);
        let json = serde_json::to_vec(&login).map_err(|_| FlowError::Unavailable)?;
        let value = self.logins.seal(&name, &json);

        let cookies = request_cookies(headers);
        let pending = self.jar.login_cookies(&cookies);
        let mut set_cookies = Vec::new();
        if pending.len() >= MAX_PENDING_LOGINS {
            set_cookies.extend(pending.iter().map(|(n, _)| self.jar.clear(n)));
        }
        set_cookies.push(self.jar.set(&name, &value, LOGIN_TTL));

        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.callback_url)
            .append_pair("scope", &self.scope)
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        Ok(Redirect {
            location: with_query(&metadata.authorization_endpoint.to_string(), &query),
            set_cookies,
        })
    }

    fn login_cookie_name(&self, state: &str) -> String {
        let hash = sha256(state.as_bytes());
        let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}{hex}", self.jar.login_prefix)
    }

    /// `/.sallyport/callback`: the IdP sends the browser back with a code.
    pub async fn callback(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Redirect, FlowError> {
        let state = query_param(query, "state")
            .filter(|s| !s.is_empty() && s.len() <= 256)
            .ok_or(FlowError::BadRequest(
                "The login callback has no usable state parameter.",
            ))?;
        let cookies = request_cookies(headers);
        let name = self.login_cookie_name(&state);
        let login: LoginState = cookies
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| self.logins.open(&name, v))
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(FlowError::BadRequest(
                "No login was started for this state in this browser (or it expired). Open the page you wanted again.",
            ))?;
        if !bool::from(login.state.as_bytes().ct_eq(state.as_bytes())) {
            return Err(FlowError::BadRequest("The login state does not match."));
        }
        if self.clock.now() > login.issued_at.saturating_add(LOGIN_TTL) {
            return Err(FlowError::BadRequest(
                "The login took too long. Open the page you wanted again.",
            ));
        }
        let first_use = self
            .used_states
            .entry(sha256(state.as_bytes()))
            .or_insert(())
            .is_fresh();
        if !first_use {
            return Err(FlowError::BadRequest("This login was already completed."));
        }
        let mut set_cookies = vec![self.jar.clear(&name)];

        if let Some(error) = query_param(query, "error") {
            let printable: String = error
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(64)
                .collect();
            tracing::info!(target: "sallyport::oidc", error = %printable, "the identity provider ended the login with an error");
            return Err(FlowError::BadRequest(
                "The identity provider did not complete the login.",
            ));
        }
        // RFC 9207: when the IdP names itself, it must be ours (mix-up attacks).
        if query_param(query, "iss").is_some_and(|iss| iss != self.issuer) {
            return Err(FlowError::BadRequest(
                "The login response comes from another issuer.",
            ));
        }
        let code = query_param(query, "code")
            .filter(|c| !c.is_empty())
            .ok_or(FlowError::BadRequest("The login callback has no code."))?;
        let metadata = self.discovery.metadata().ok_or(FlowError::Unavailable)?;
        let form = vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code),
            ("redirect_uri", self.callback_url.clone()),
            ("code_verifier", login.verifier.clone()),
        ];
        let response = self.token_request(&metadata, form).await.map_err(|why| {
            tracing::warn!(target: "sallyport::oidc", error = %why, "code exchange failed");
            match why {
                TokenRequestError::Unreachable(_) => FlowError::IdpUnreachable,
                TokenRequestError::Refused(_) => FlowError::BadRequest(
                    "The identity provider refused to complete the login. Open the page you wanted again.",
                ),
            }
        })?;
        let id_token = response.id_token.ok_or(FlowError::BadRequest(
            "The identity provider returned no ID token.",
        ))?;
        let claims = self.verify_id_token(&id_token, &login.nonce).await?;
        let now = self.clock.now();
        let session = Session {
            sid: random_token(),
            id_token,
            refresh_token: response.refresh_token,
            access_expires_at: expires_at(now, response.expires_in.as_ref()),
            created_at: now,
            last_seen: now,
        };
        if self.identity(&session).is_none() {
            return Err(FlowError::BadRequest("The ID token does not name a user."));
        }
        match self.save(&session, None, &cookies).await {
            Ok(set) => set_cookies.extend(set),
            Err(StoreError::Unavailable | StoreError::Gone) => return Err(FlowError::Unavailable),
            Err(StoreError::TooLarge) => {
                tracing::error!(target: "sallyport::oidc", "the session is too large for cookies; set auth.oidc.session_store to keep sessions in Redis");
                return Err(FlowError::Unavailable);
            }
        }
        let sub: String = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or("-")
            .chars()
            .take(64)
            .collect();
        tracing::info!(target: "sallyport::oidc", sid = %session.sid, sub = ?sub, "login completed");
        Ok(Redirect {
            location: login.rd,
            set_cookies,
        })
    }

    async fn verify_id_token(&self, id_token: &str, nonce: &str) -> Result<Value, FlowError> {
        let claims = self.id_tokens.verify(id_token).await.map_err(|e| {
            tracing::warn!(target: "sallyport::oidc", reason = e.reason(), "ID token rejected");
            match e {
                TokenError::KeysUnavailable => FlowError::Unavailable,
                _ => FlowError::BadRequest("The identity provider's ID token did not verify."),
            }
        })?;
        let nonce_ok = claims
            .get("nonce")
            .and_then(Value::as_str)
            .is_some_and(|n| bool::from(n.as_bytes().ct_eq(nonce.as_bytes())));
        if !nonce_ok {
            tracing::warn!(target: "sallyport::oidc", "ID token nonce does not match the login");
            return Err(FlowError::BadRequest(
                "The ID token does not belong to this login.",
            ));
        }
        // OIDC Core 3.1.3.7: with several audiences there must be an azp, and an azp must
        // be us.
        let several_audiences = claims
            .get("aud")
            .and_then(Value::as_array)
            .is_some_and(|a| a.len() > 1);
        match claims.get("azp").and_then(Value::as_str) {
            Some(azp) if azp != self.client_id => {
                return Err(FlowError::BadRequest(
                    "The ID token was issued to another client (azp).",
                ));
            }
            None if several_audiences => {
                return Err(FlowError::BadRequest(
                    "The ID token has several audiences and no azp.",
                ));
            }
            _ => {}
        }
        Ok(claims)
    }

    /// `/.sallyport/logout`: forget the session here and, if the IdP can, there.
    pub async fn logout(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Redirect, FlowError> {
        let cookies = request_cookies(headers);
        // With server-side sessions, a logout that cannot reach the store would only look
        // like one: say so instead.
        let id_token = match self.store.load(&cookies).await {
            Ok(Loaded::Found(session, reference)) => {
                self.store
                    .delete(&reference)
                    .await
                    .map_err(|_| FlowError::Unavailable)?;
                tracing::info!(target: "sallyport::oidc", sid = %session.sid, "logout");
                Some(session.id_token)
            }
            Ok(_) => None,
            Err(_) => return Err(FlowError::Unavailable),
        };
        let target = self.redirects.target(query_param(query, "rd").as_deref());
        let location = match self
            .discovery
            .metadata()
            .and_then(|m| m.end_session_endpoint.clone())
        {
            Some(end_session) => {
                let mut params = form_urlencoded::Serializer::new(String::new());
                if let Some(hint) = &id_token {
                    params.append_pair("id_token_hint", hint);
                }
                params
                    .append_pair("client_id", &self.client_id)
                    .append_pair(
                        "post_logout_redirect_uri",
                        &self.redirects.absolute(&target),
                    );
                with_query(&end_session.to_string(), &params.finish())
            }
            None => target,
        };
        Ok(Redirect {
            location,
            set_cookies: self.jar.clear_session(&cookies),
        })
    }

    async fn token_request(
        &self,
        metadata: &Metadata,
        mut form: Vec<(&'static str, String)>,
    ) -> Result<TokenResponse, TokenRequestError> {
        let mut authorization = None;
        match metadata.client_auth {
            ClientAuth::Basic => {
                // RFC 6749 2.3.1: both parts are form-encoded before base64.
                let secret = self.client_secret.as_ref().map_or(&[][..], Secret::expose);
                let pair = format!(
                    "{}:{}",
                    form_urlencoded::byte_serialize(self.client_id.as_bytes()).collect::<String>(),
                    form_urlencoded::byte_serialize(secret).collect::<String>()
                );
                let value = format!("Basic {}", Base64::encode_string(pair.as_bytes()));
                let mut value = HeaderValue::from_str(&value).map_err(|_| {
                    TokenRequestError::Refused("client credentials are not header-safe".into())
                })?;
                value.set_sensitive(true);
                authorization = Some(value);
            }
            ClientAuth::Post => {
                let secret = self.client_secret.as_ref().map_or(&[][..], Secret::expose);
                form.push(("client_id", self.client_id.clone()));
                form.push((
                    "client_secret",
                    String::from_utf8_lossy(secret).into_owned(),
                ));
            }
            ClientAuth::None => {
                form.push(("client_id", self.client_id.clone()));
            }
        }
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let response = self
            .http
            .post_form(&metadata.token_endpoint, body, authorization)
            .await
            .map_err(TokenRequestError::Unreachable)?;
        if response.status.is_server_error() {
            return Err(TokenRequestError::Unreachable(format!(
                "HTTP {}",
                response.status.as_u16()
            )));
        }
        if !response.status.is_success() {
            // OAuth errors are JSON with an `error` code; nothing else of the body is
            // trusted into the log.
            let code = serde_json::from_slice::<Value>(&response.body)
                .ok()
                .and_then(|v| {
                    v.get("error")
                        .and_then(Value::as_str)
                        .map(|s| s.chars().take(64).collect::<String>())
                })
                .unwrap_or_default();
            return Err(TokenRequestError::Refused(format!(
                "HTTP {} {code}",
                response.status.as_u16()
            )));
        }
        serde_json::from_slice(&response.body)
            .map_err(|_| TokenRequestError::Refused("the token response is not JSON".into()))
    }
}

#[derive(Debug)]
enum TokenRequestError {
    Unreachable(String),
    Refused(String),
}

impl std::fmt::Display for TokenRequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenRequestError::Unreachable(why) => write!(f, "token endpoint unreachable: {why}"),
            TokenRequestError::Refused(why) => write!(f, "token endpoint refused: {why}"),
        }
    }
}

/// `expires_in` is a number of seconds; some IdPs send it as a string.
fn expires_at(now: u64, expires_in: Option<&Value>) -> Option<u64> {
    let seconds = match expires_in? {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) => s.parse().ok()?,
        _ => return None,
    };
    Some(now.saturating_add(seconds))
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn with_query(endpoint: &str, query: &str) -> String {
    let separator = if endpoint.contains('?') { '&' } else { '?' };
    format!("{endpoint}{separator}{query}")
}

/// 256 random bits, base64url: state, nonce, PKCE verifier (43 characters, RFC 7636),
/// session id.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // The system RNG failing is not something to serve through.
    aws_lc_rs::rand::fill(&mut bytes).expect("system random number generator");
    Base64UrlUnpadded::encode_string(&bytes)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
