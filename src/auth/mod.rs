//! Authentication: who is this request from?
//!
//! [`Authenticated`] can only be constructed in this module, so the forwarder (which takes
//! one to set identity headers) cannot be handed an identity nobody verified.
//! [`Rejection`] says precisely why authentication failed; that reason goes to the log
//! only. Clients get one uniform challenge whatever the reason, so a response never
//! reveals whether a username exists.

pub mod basic;
pub mod groups;
pub mod htpasswd;
pub mod idp_client;
pub mod jwks;
pub mod jwt;
pub mod oidc;

use std::sync::Arc;

use base64ct::{Base64, Encoding};
use http::HeaderMap;
use http::header::AUTHORIZATION;

use crate::clock::WallClock;
use crate::config::{AuthConfig, IdentityHeaders, OidcConfig};
use crate::metrics::Metrics;
use crate::respond::Challenge;
use crate::throttle::{Attempt, Throttled};
use basic::BasicAuth;
use jwt::{JwtAuth, MAX_TOKEN_BYTES, TokenError};
use oidc::{Oidc, SessionCheck, SessionOutcome, SessionProblem};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Basic,
    Bearer,
    /// An OIDC browser session.
    Session,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Basic => "basic",
            Scheme::Bearer => "bearer",
            Scheme::Session => "session",
        }
    }
}

/// A verified identity. Fields are private and there is no public constructor.
#[derive(Debug, Clone)]
pub struct Authenticated {
    user: String,
    groups: Vec<String>,
    scheme: Scheme,
    email: Option<String>,
    preferred_username: Option<String>,
    /// OAuth scopes (Bearer only).
    scopes: Vec<String>,
    /// `[headers] extra`: header and the claim value for it (Bearer only).
    extra: Vec<(http::HeaderName, String)>,
    /// The verified claims, for `require_claims` (Bearer only).
    claims: Option<Arc<serde_json::Value>>,
}

impl Authenticated {
    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn groups(&self) -> &[String] {
        &self.groups
    }

    pub fn email(&self) -> Option<&str> {
        self.email.as_deref()
    }

    pub fn preferred_username(&self) -> Option<&str> {
        self.preferred_username.as_deref()
    }

    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    pub fn extra(&self) -> &[(http::HeaderName, String)] {
        &self.extra
    }

    pub fn claims(&self) -> Option<&serde_json::Value> {
        self.claims.as_deref()
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// What `/.sallyport/userinfo` shows: who this is, never a credential.
    pub fn userinfo(&self) -> serde_json::Value {
        serde_json::json!({
            "user": self.user,
            "email": self.email,
            "preferred_username": self.preferred_username,
            "groups": self.groups,
            "scheme": self.scheme.as_str(),
        })
    }
}

/// What a scheme verified, before it becomes an [`Authenticated`].
pub struct Verified {
    user: String,
    groups: Vec<String>,
}

/// Why a request was not authenticated. For the log, never for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No credentials at all: the first step of every challenge, not an attack.
    Missing,
    /// A scheme no enabled authenticator accepts (e.g. Digest, or Bearer without JWT).
    UnsupportedScheme,
    /// Credentials that do not parse: bad base64, no colon, non-UTF-8 username, too long,
    /// or several Authorization fields.
    Malformed(&'static str),
    UnknownUser {
        user: String,
    },
    WrongPassword {
        user: String,
    },
    /// The verification could not run (shutting down, or the IdP's keys are unavailable).
    Unavailable,
    /// A Bearer token that does not verify.
    InvalidToken(TokenError),
    /// An `Authorization: Bearer` field that is not a token at all (RFC 6750
    /// `invalid_request`).
    BadBearerRequest(&'static str),
    /// The client or username spent its failure budget while this request waited.
    Throttled(Throttled),
    /// A session cookie that is not (or no longer) a session.
    Session(SessionProblem),
}

impl Rejection {
    /// The log's reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Missing => "missing",
            Rejection::UnsupportedScheme => "unsupported_scheme",
            Rejection::Malformed(_) => "malformed",
            Rejection::UnknownUser { .. } => "unknown_user",
            Rejection::WrongPassword { .. } => "invalid_password",
            Rejection::Unavailable => "unavailable",
            Rejection::InvalidToken(e) => e.reason(),
            Rejection::BadBearerRequest(_) => "malformed",
            Rejection::Throttled(t) => t.by.as_str(),
            Rejection::Session(p) => p.reason(),
        }
    }

    /// Whether this looks like a guess: wrong or malformed credentials count against the
    /// client's and the username's budget; no credential, a scheme we do not offer, or
    /// our own trouble do not.
    pub fn counts_as_failure(&self) -> bool {
        match self {
            Rejection::Malformed(_)
            | Rejection::BadBearerRequest(_)
            | Rejection::UnknownUser { .. }
            | Rejection::WrongPassword { .. } => true,
            Rejection::InvalidToken(e) => e.counts_as_failure(),
            // Sealed cookies cannot be guessed, so there is no brute force to slow down;
            // counting them would lock out a whole office after a cookie-secret rotation.
            Rejection::Session(_) => false,
            _ => false,
        }
    }

    /// The username presented, if any (for the log).
    pub fn presented_user(&self) -> Option<&str> {
        match self {
            Rejection::UnknownUser { user } | Rejection::WrongPassword { user } => Some(user),
            _ => None,
        }
    }
}

/// Longest Basic credential we decode. Real ones are far shorter; this bounds the work a
/// hostile header can cause (the header itself is already bounded by max_header_bytes).
const MAX_BASIC_TOKEN: usize = 4096;

pub struct Authenticator {
    challenge: Challenge,
    basic: Option<Arc<BasicAuth>>,
    jwt: Option<JwtAuth>,
    oidc: Option<Arc<Oidc>>,
    /// What `oidc` was built from: a reload with the same settings keeps it (discovery,
    /// keys, pending logins and in-flight refreshes).
    oidc_settings: Option<(OidcConfig, IdentityHeaders)>,
}

impl Authenticator {
    pub fn new(
        config: &AuthConfig,
        headers: &IdentityHeaders,
        clock: WallClock,
    ) -> Result<Authenticator, String> {
        Authenticator::build(config, headers, clock, &Metrics::new(), None)
    }

    /// As [`Authenticator::new`], keeping from `previous` whatever the config still
    /// describes the same way.
    pub fn build(
        config: &AuthConfig,
        headers: &IdentityHeaders,
        clock: WallClock,
        metrics: &Metrics,
        previous: Option<&Authenticator>,
    ) -> Result<Authenticator, String> {
        let basic = config.basic.as_ref().map(|b| {
            Arc::new(BasicAuth::new(
                b,
                metrics.cache_counters("basic"),
                previous.and_then(|p| p.basic.as_deref()),
            ))
        });
        let jwt = config
            .jwt
            .as_ref()
            .map(|j| {
                let keys = previous
                    .and_then(|p| p.jwt.as_ref())
                    .and_then(|old| old.keys_if_same_source(j));
                JwtAuth::build(j, headers, metrics.cache_counters("bearer"), keys)
            })
            .transpose()?;
        let oidc_settings = config.oidc.clone().map(|o| (o, headers.clone()));
        let reusable = previous
            .filter(|p| p.oidc_settings.is_some() && p.oidc_settings == oidc_settings)
            .and_then(|p| p.oidc.clone());
        let oidc = match (reusable, &config.oidc) {
            (Some(oidc), _) => Some(oidc),
            (None, Some(o)) => Some(Arc::new(Oidc::new(
                o,
                headers,
                clock,
                metrics.cache_counters("bearer"),
            )?)),
            (None, None) => None,
        };
        Ok(Authenticator {
            challenge: Challenge {
                realm: Arc::from(config.realm.as_str()),
                basic: basic.is_some(),
                bearer: jwt.is_some() || oidc.is_some(),
                bearer_error: None,
            },
            basic,
            jwt,
            oidc,
            oidc_settings,
        })
    }

    pub fn oidc(&self) -> Option<&Oidc> {
        self.oidc.as_deref()
    }

    pub fn jwt(&self) -> Option<&JwtAuth> {
        self.jwt.as_ref()
    }

    /// Bearer tokens go to `[auth.jwt]` when configured, else to the OIDC IdP's keys.
    fn bearer(&self) -> Option<&JwtAuth> {
        self.jwt
            .as_ref()
            .or(self.oidc.as_deref().and_then(Oidc::bearer))
    }

    /// Checks a session cookie; the response must carry `set_cookies` either way.
    pub async fn session(
        &self,
        headers: &HeaderMap,
    ) -> (Result<Authenticated, Rejection>, Vec<http::HeaderValue>) {
        let Some(oidc) = &self.oidc else {
            return (Err(Rejection::Missing), Vec::new());
        };
        let SessionCheck {
            outcome,
            set_cookies,
        } = oidc.session(headers).await;
        let result = match outcome {
            SessionOutcome::Valid(who) => Ok(who),
            SessionOutcome::Rejected(problem) => Err(Rejection::Session(problem)),
            SessionOutcome::Unavailable => Err(Rejection::Unavailable),
        };
        (result, set_cookies)
    }

    /// The 401 (or 400) for a rejection: every enabled scheme's challenge, with the RFC
    /// 6750 error when a Bearer token was the problem.
    pub fn challenge_for(&self, rejection: &Rejection) -> Challenge {
        match rejection {
            Rejection::InvalidToken(e) => self
                .challenge
                .with_bearer_error("invalid_token", e.description()),
            Rejection::BadBearerRequest(why) => {
                self.challenge.with_bearer_error("invalid_request", why)
            }
            _ => self.challenge.clone(),
        }
    }

    pub fn realm(&self) -> Arc<str> {
        self.challenge.realm.clone()
    }

    pub fn basic(&self) -> Option<&Arc<BasicAuth>> {
        self.basic.as_ref()
    }

    /// What the request presents, parsed but not verified: cheap, no cryptography, so the
    /// throttle can look at the username before any hash runs.
    pub fn credential(&self, headers: &HeaderMap) -> Credential {
        let mut fields = headers.get_all(AUTHORIZATION).iter();
        let Some(field) = fields.next() else {
            if self
                .oidc
                .as_ref()
                .is_some_and(|o| o.has_session_cookie(headers))
            {
                return Credential::Session;
            }
            return Credential::Missing;
        };
        if fields.next().is_some() {
            if self.bearer().is_some() {
                return Credential::BadBearer("The request has more than one Authorization field.");
            }
            return Credential::Malformed("more than one Authorization field");
        }
        let field = field.as_bytes();
        let (scheme, token) = match field.iter().position(|&b| b == b' ') {
            Some(i) => (&field[..i], trim_spaces(&field[i + 1..])),
            None => (field, &b""[..]),
        };
        if scheme.eq_ignore_ascii_case(b"basic") && self.basic.is_some() {
            return match parse_basic(token) {
                Ok((user, password)) => Credential::Basic { user, password },
                Err(Rejection::Malformed(why)) => Credential::Malformed(why),
                Err(_) => Credential::Malformed("Basic credentials do not parse"),
            };
        }
        if scheme.eq_ignore_ascii_case(b"bearer") && self.bearer().is_some() {
            return parse_bearer(token);
        }
        Credential::Unsupported
    }

    pub async fn authenticate(
        &self,
        credential: &Credential,
        attempt: &Attempt,
    ) -> Result<Authenticated, Rejection> {
        match (credential, &self.basic) {
            (Credential::Missing, _) => Err(Rejection::Missing),
            (Credential::Malformed(why), _) => Err(Rejection::Malformed(why)),
            (Credential::Basic { user, password }, Some(basic)) => {
                let verified = basic
                    .verify(user.clone(), password.clone(), attempt)
                    .await?;
                Ok(Authenticated {
                    user: verified.user,
                    groups: verified.groups,
                    scheme: Scheme::Basic,
                    email: None,
                    preferred_username: None,
                    scopes: Vec::new(),
                    extra: Vec::new(),
                    claims: None,
                })
            }
            (Credential::Basic { .. } | Credential::Unsupported, _) => {
                Err(Rejection::UnsupportedScheme)
            }
            (Credential::BadBearer(why), _) => Err(Rejection::BadBearerRequest(why)),
            // Sessions are checked by `session`, which also produces cookies.
            (Credential::Session, _) => Err(Rejection::Missing),
            (Credential::Bearer(token), _) => match self.bearer() {
                Some(jwt) => jwt.verify(token).await.map_err(|e| match e {
                    TokenError::KeysUnavailable => Rejection::Unavailable,
                    e => Rejection::InvalidToken(e),
                }),
                None => Err(Rejection::UnsupportedScheme),
            },
        }
    }
}

/// Credentials as presented. The password is only ever read by the verifier.
pub enum Credential {
    Missing,
    Basic {
        user: String,
        password: Vec<u8>,
    },
    Malformed(&'static str),
    Bearer(String),
    /// `Authorization: Bearer` without a usable token.
    BadBearer(&'static str),
    /// A scheme no enabled authenticator takes.
    Unsupported,
    /// No Authorization field, but an OIDC session cookie.
    Session,
}

impl Credential {
    /// The scheme the client tried, for metrics: `none` when it tried none we offer.
    pub fn scheme_label(&self) -> &'static str {
        match self {
            Credential::Basic { .. } | Credential::Malformed(_) => "basic",
            Credential::Bearer(_) | Credential::BadBearer(_) => "bearer",
            Credential::Session => "session",
            Credential::Missing | Credential::Unsupported => "none",
        }
    }

    /// The username the client claims, before anything is verified.
    pub fn presented_user(&self) -> Option<&str> {
        match self {
            Credential::Basic { user, .. } => Some(user),
            _ => None,
        }
    }
}

/// The password must never reach a log through `{:?}`.
impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Missing => f.write_str("Missing"),
            Credential::Basic { user, .. } => f
                .debug_struct("Basic")
                .field("user", user)
                .finish_non_exhaustive(),
            Credential::Malformed(why) => f.debug_tuple("Malformed").field(why).finish(),
            Credential::Bearer(_) => f.write_str("Bearer(..)"),
            Credential::BadBearer(why) => f.debug_tuple("BadBearer").field(why).finish(),
            Credential::Unsupported => f.write_str("Unsupported"),
            Credential::Session => f.write_str("Session"),
        }
    }
}

/// A byte of a token68 before its `=` padding: `A-Z a-z 0-9 - . _ ~ + /`.
fn is_token68_body(b: u8) -> bool {
    // Non-short-circuit `|` and wrapping range tests: no branch per byte, so the scan in
    // `parse_bearer` compiles to vector compares.
    let letter = (b | 0x20).wrapping_sub(b'a') < 26;
    let digit = b.wrapping_sub(b'0') < 10;
    letter
        | digit
        | (b == b'-')
        | (b == b'.')
        | (b == b'_')
        | (b == b'~')
        | (b == b'+')
        | (b == b'/')
}

/// RFC 6750 2.1: `Bearer` then one token68 (`A-Z a-z 0-9 - . _ ~ + /`, then `=`s).
/// `token` is what follows the scheme and its space. Public for the fuzz targets.
pub fn parse_bearer(token: &[u8]) -> Credential {
    if token.is_empty() {
        return Credential::BadBearer("The Bearer token is missing.");
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Credential::BadBearer("The Bearer token is too long.");
    }
    let body_end = token.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    // Tokens run to hundreds of bytes, and a byte-at-a-time scan was a fifth of the Bearer
    // path's own instructions: chunks folded without an early exit vectorize.
    let token68 = body_end > 0
        && token[..body_end]
            .chunks(64)
            .all(|chunk| chunk.iter().fold(true, |ok, &b| ok & is_token68_body(b)));
    if !token68 {
        return Credential::BadBearer("The Bearer token has characters a token cannot have.");
    }
    // token68 is ASCII, so this cannot fail.
    match std::str::from_utf8(token) {
        Ok(t) => Credential::Bearer(t.to_string()),
        Err(_) => Credential::BadBearer("The Bearer token has characters a token cannot have."),
    }
}

fn trim_spaces(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != b' ').unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// RFC 7617: base64 of `user-id ":" password`; the username is UTF-8 (we announce
/// `charset="UTF-8"`) and cannot contain a colon; the password may be any bytes.
/// `token` is what follows the scheme and its space. Public for the fuzz targets.
pub fn parse_basic(token: &[u8]) -> Result<(String, Vec<u8>), Rejection> {
    if token.is_empty() {
        return Err(Rejection::Malformed("empty Basic credentials"));
    }
    if token.len() > MAX_BASIC_TOKEN {
        return Err(Rejection::Malformed("Basic credentials too long"));
    }
    let text = std::str::from_utf8(token)
        .map_err(|_| Rejection::Malformed("Basic credentials are not base64"))?;
    let decoded = Base64::decode_vec(text)
        .map_err(|_| Rejection::Malformed("Basic credentials are not base64"))?;
    let colon = decoded
        .iter()
        .position(|&b| b == b':')
        .ok_or(Rejection::Malformed(
            "Basic credentials have no ':' separator",
        ))?;
    let user = std::str::from_utf8(&decoded[..colon])
        .map_err(|_| Rejection::Malformed("Basic username is not UTF-8"))?
        .to_string();
    if user.is_empty() {
        return Err(Rejection::Malformed("empty Basic username"));
    }
    Ok((user, decoded[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_token68() {
        let ok = |t: &[u8]| matches!(parse_bearer(t), Credential::Bearer(_));
        assert!(ok(b"abcXYZ019-._~+/=="));
        assert!(ok(b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"));
        for byte in 0..=255u8 {
            let allowed = byte.is_ascii_alphanumeric() || b"-._~+/".contains(&byte);
            assert_eq!(ok(&[b'a', byte, b'a']), allowed, "byte {byte:#04x}");
        }
        // Long tokens are checked in chunks: a bad byte in any of them counts.
        let mut long = vec![b'a'; 300];
        assert!(ok(&long));
        for at in [0, 63, 64, 150, 299] {
            long[at] = b'!';
            assert!(!ok(&long), "bad byte at {at}");
            long[at] = b'a';
        }
        // `=` only as trailing padding, and never the whole token.
        assert!(ok(b"ab=="));
        assert!(!ok(b"a=b"));
        assert!(!ok(b"=="));
        assert!(!ok(b""));
    }

    #[test]
    fn basic_credentials_parse_per_rfc_7617() {
        assert_eq!(
            parse_basic(b"YWxpY2U6c2VjcmV0").unwrap(),
            ("alice".to_string(), b"secret".to_vec())
        );
        // Passwords may contain colons and arbitrary bytes; usernames are UTF-8.
        let token = Base64::encode_string("jörg:a:b\u{0}\u{ff}".as_bytes());
        let (user, password) = parse_basic(token.as_bytes()).unwrap();
        assert_eq!(user, "jörg");
        assert_eq!(password, "a:b\u{0}\u{ff}".as_bytes());
        let latin1_user = Base64::encode_string(b"j\xf6rg:pw");
        assert_eq!(
            parse_basic(latin1_user.as_bytes()),
            Err(Rejection::Malformed("Basic username is not UTF-8"))
        );
    }

    #[test]
    fn malformed_basic_is_rejected_not_panicking() {
        let long = "A".repeat(MAX_BASIC_TOKEN + 4);
        for bad in [
            &b""[..],
            b"!!!",
            b"YWxpY2U",
            b"YWxpY2U=",
            b"\xff\xfe",
            long.as_bytes(),
            b"OnBhc3M=",
        ] {
            assert!(
                matches!(parse_basic(bad), Err(Rejection::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
