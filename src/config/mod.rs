//! Configuration: the TOML file is parsed once into raw serde structs (`raw`) and then
//! validated into the runtime types below. Nothing past this module sees a raw string:
//! addresses are parsed, durations are [`Duration`]s, files are loaded and checked.
//!
//! Relative file paths are resolved against the directory of the config file, so a config
//! works the same whatever directory the proxy is started from.

mod error;
mod raw;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use http::uri::{Authority, Scheme, Uri};
use ipnet::IpNet;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use toml::Spanned;

use error::SourceMap;
pub use error::{ConfigError, ConfigErrors};
use raw::*;

use crate::auth::basic::{LoadFailure, UserDb, load_user_db};
use crate::routes::{self, HostPattern};

#[derive(Debug)]
pub struct Config {
    pub source: PathBuf,
    /// Every file the config refers to, as read during validation: what a reload watches.
    pub files: Vec<PathBuf>,
    pub server: Server,
    pub admin: Option<Admin>,
    pub log: Log,
    pub headers: IdentityHeaders,
    pub auth: AuthConfig,
    /// `None` when `[rate_limit] enabled = false`.
    pub rate_limit: Option<RateLimit>,
    pub cors: Cors,
    pub routes: Vec<RouteConfig>,
}

/// The operations listener: health, readiness and metrics, apart from traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub listen: SocketAddr,
    /// `/readyz` also needs every route's upstream to accept a connection.
    pub check_upstreams: bool,
}

/// Failed-authentication throttling. A security control, so it is on unless turned off.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// Failures per client (IPv4 /32, IPv6 /64) within `window` before it is blocked.
    pub max_failures: u32,
    pub window: Duration,
    pub block_for: Duration,
    /// Failures per presented username, from any client, within `user_window`.
    pub max_failures_per_user: u32,
    pub user_window: Duration,
    /// Entries per table (clients, usernames, known client/user pairs).
    pub max_tracked: u64,
    pub redis: Option<RedisTarget>,
}

/// Where shared counters live. The URL may carry a password, so it is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub url: String,
    /// Namespaces the keys, so deployments can share one Redis.
    pub prefix: String,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field("url", &"<redacted>")
            .field("prefix", &self.prefix)
            .finish()
    }
}

#[derive(Debug)]
pub struct AuthConfig {
    /// Checked at load: printable ASCII without `"` or `\`, so it can be quoted as is.
    pub realm: String,
    pub basic: Option<BasicConfig>,
    pub jwt: Option<JwtConfig>,
    pub oidc: Option<OidcConfig>,
}

/// Bytes that must never reach a log: `Debug` prints their length only. `PartialEq` is
/// for telling whether a reload changed the config, never for checking a credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

/// OIDC browser login (authorization code + PKCE) and Bearer tokens from the same IdP.
#[derive(Debug, Clone, PartialEq)]
pub struct OidcConfig {
    /// Exactly as configured: discovery must report the very same string.
    pub issuer: String,
    pub discovery_url: Uri,
    /// Extra roots to trust for the IdP's TLS (a private CA).
    pub extra_roots: Vec<CertificateDer<'static>>,
    pub client_id: String,
    /// `None`: a public client, authenticated by PKCE alone.
    pub client_secret: Option<Secret>,
    pub scopes: Vec<String>,
    pub cookie_secret: Secret,
    pub session_idle: Duration,
    pub session_max: Duration,
    /// Server-side sessions in Redis; the cookie then holds only an encrypted id.
    pub session_store: Option<RedisTarget>,
    /// Bearer tokens from this IdP must be for one of these; empty: no Bearer tokens
    /// through OIDC (an ID token is not an access token).
    pub audiences: Vec<String>,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub leeway: Duration,
    pub claims: ClaimPaths,
    /// Hosts (exact, or `.example.com` for subdomains) a post-login `rd` may point to,
    /// besides `public_url`'s own.
    pub allowed_redirect_hosts: Vec<String>,
    /// `server.public_url`: redirect_uri and cookies belong to it.
    pub public_url: Uri,
    /// Most a session may take in cookies (from `server.limits.max_header_bytes`).
    pub max_cookie_bytes: usize,
}

/// Bearer tokens (JWT). Keys come from a JWKS URL, static PEM public keys, or an HMAC
/// secret; asymmetric and HMAC keys never mix, so no token can switch between them.
#[derive(Debug)]
pub struct JwtConfig {
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub jwks: Option<JwksSource>,
    /// Static keys: PEM public keys, or the HMAC secret.
    pub static_keys: Vec<(String, jsonwebtoken::DecodingKey)>,
    pub leeway: Duration,
    pub cache_ttl: Duration,
    pub claims: ClaimPaths,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JwksSource {
    pub url: Uri,
    pub extra_roots: Vec<CertificateDer<'static>>,
    pub refresh: Duration,
}

/// Where identity lives in a token's claims: dotted paths into nested objects (a key
/// that itself contains dots, like `https://example.com/groups`, is found as is first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPaths {
    pub user: String,
    pub email: String,
    pub groups: String,
    pub preferred_username: String,
}

#[derive(Debug)]
pub struct BasicConfig {
    pub htpasswd: PathBuf,
    pub groups: Option<PathBuf>,
    pub cache_ttl: Duration,
    pub allow_plain: bool,
    /// The files as loaded and checked during validation.
    pub users: Arc<UserDb>,
}

/// More serving threads than this is a typo, not a machine.
const MAX_WORKERS: u64 = 1024;

impl Server {
    /// How many threads serve connections: `workers`, or one per CPU the process may use
    /// (`available_parallelism` honours a container's cgroup CPU quota).
    pub fn worker_threads(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

#[derive(Debug)]
pub struct Server {
    pub listen: Vec<SocketAddr>,
    pub trusted_proxies: Vec<IpNet>,
    /// Scheme and authority used to build absolute redirects; never taken from `Host`.
    pub public_url: Option<Uri>,
    pub shutdown_grace: Duration,
    /// Threads serving connections; `None`: one per CPU the process may use.
    pub workers: Option<usize>,
    pub tls: Option<Tls>,
    pub timeouts: Timeouts,
    pub limits: Limits,
}

#[derive(Debug, PartialEq)]
pub struct Tls {
    pub source: TlsSource,
    pub min_version: TlsVersion,
}

#[derive(Debug, PartialEq)]
pub enum TlsSource {
    Files {
        cert_path: PathBuf,
        key_path: PathBuf,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    },
    SelfSigned(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub handshake: Duration,
    pub header_read: Duration,
    pub idle: Duration,
    pub upstream_connect: Duration,
    pub upstream_response: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_header_bytes: usize,
    /// `None` means unlimited (and streamed).
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Log {
    pub format: LogFormat,
    pub level: String,
    pub access_log: bool,
}

/// The headers through which the upstream learns who the user is. Client-supplied copies
/// of every one of them are stripped on every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeaders {
    pub user: HeaderName,
    pub email: HeaderName,
    pub groups: HeaderName,
    pub preferred_username: HeaderName,
    pub forward_authorization: bool,
    /// header -> claim
    pub extra: Vec<(HeaderName, String)>,
}

impl IdentityHeaders {
    pub fn all_names(&self) -> impl Iterator<Item = &HeaderName> {
        [
            &self.user,
            &self.email,
            &self.groups,
            &self.preferred_username,
        ]
        .into_iter()
        .chain(self.extra.iter().map(|(h, _)| h))
    }
}

#[derive(Debug)]
pub struct RouteConfig {
    pub host: Option<HostPattern>,
    /// Normalised prefix, without a trailing slash unless it is `/`.
    pub path: String,
    pub upstream: UpstreamTarget,
    pub auth: RouteAuth,
    pub rules: RouteRules,
}

/// Who may use a route once authenticated. Evaluated by [`crate::policy`].
#[derive(Debug, Clone, Default)]
pub struct RouteRules {
    /// Identity allowlists: when any is set, the identity must match at least one.
    pub allow_users: Vec<String>,
    pub allow_groups: Vec<String>,
    /// Lowercase; matched exactly against the part after the single `@` of the email.
    pub allow_email_domains: Vec<String>,
    /// Requirements: all must hold. OAuth scopes a Bearer token must carry.
    pub require_scopes: Vec<String>,
    /// Claim path -> accepted values (the claim, or one element of it, must equal one).
    pub require_claims: Vec<(String, Vec<String>)>,
    /// When set, other methods get 403.
    pub methods: Option<Vec<http::Method>>,
}

impl RouteRules {
    pub fn is_empty(&self) -> bool {
        self.allow_users.is_empty()
            && self.allow_groups.is_empty()
            && self.allow_email_domains.is_empty()
            && self.require_scopes.is_empty()
            && self.require_claims.is_empty()
            && self.methods.is_none()
    }
}

/// Cross-origin rules for our own answers and for preflights.
#[derive(Debug, Clone)]
pub struct Cors {
    /// Exact origins (`https://app.example.com`) that may read our 401/403/429s.
    pub allowed_origins: Vec<String>,
    /// OPTIONS with `Origin` and `Access-Control-Request-Method` pass unauthenticated.
    pub skip_preflight: bool,
}

#[derive(Debug)]
pub enum UpstreamTarget {
    Http {
        scheme: Scheme,
        authority: Authority,
        /// Prepended to the forwarded path; empty when the URL has no path.
        base_path: String,
        extra_roots: Vec<CertificateDer<'static>>,
    },
    Unix {
        socket: PathBuf,
    },
    Echo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAuth {
    Required,
    Public,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: None,
                key: String::new(),
                message: format!("cannot read config file: {e}"),
            }])
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates `text` as if it had been read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let map = SourceMap::new(path, text);
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigErrors(vec![map.toml_error(&e)]))?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut v = Validator {
            map,
            base_dir,
            errors: Vec::new(),
            files: Vec::new(),
        };
        let config = v.config(raw);
        if v.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(v.errors))
        }
    }
}

struct Validator<'a> {
    map: SourceMap<'a>,
    base_dir: PathBuf,
    errors: Vec<ConfigError>,
    files: Vec<PathBuf>,
}

fn span_of<T>(s: &Spanned<T>) -> Option<Range<usize>> {
    Some(s.span())
}

impl Validator<'_> {
    fn fail(&mut self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) {
        let e = self.map.error(span, key, message);
        self.errors.push(e);
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let admin = raw.admin.map(|a| self.admin(a));
        let cors = self.cors(raw.cors);
        let server = match raw.server {
            Some(s) => self.server(s.into_inner()),
            None => self.server(RawServer {
                listen: None,
                trusted_proxies: Vec::new(),
                public_url: None,
                shutdown_grace: None,
                workers: None,
                tls: None,
                timeouts: RawTimeouts::default(),
                limits: RawLimits::default(),
            }),
        };
        let log = self.log(raw.log);
        let headers = self.headers(raw.headers);
        let auth = self.auth(raw.auth, &server);
        let rate_limit = self.rate_limit(raw.rate_limit);
        let has_scheme = auth.basic.is_some() || auth.jwt.is_some() || auth.oidc.is_some();
        let mut routes = Vec::new();
        for (i, r) in raw.route.into_iter().enumerate() {
            if let Some(route) = self.route(i, r, has_scheme) {
                routes.push(route);
            }
        }
        if routes.is_empty() && self.errors.is_empty() {
            self.fail(None, "route", "at least one [[route]] is required");
        }
        let admin = admin.flatten();
        if let Some(admin) = &admin {
            // Port 0 asks the kernel for a free port, which never clashes.
            let overlaps = |l: &&SocketAddr| {
                l.port() != 0
                    && l.port() == admin.listen.port()
                    && (l.ip() == admin.listen.ip()
                        || l.ip().is_unspecified()
                        || admin.listen.ip().is_unspecified())
            };
            if let Some(clash) = server.listen.iter().find(overlaps) {
                self.fail(
                    None,
                    "admin.listen",
                    format!(
                        "{} overlaps server.listen {clash}: the admin endpoints need a port of their own",
                        admin.listen
                    ),
                );
            }
        }
        Config {
            source: self.map.file.to_path_buf(),
            files: std::mem::take(&mut self.files),
            server,
            admin,
            log,
            headers,
            auth,
            rate_limit,
            cors,
            routes,
        }
    }

    fn cors(&mut self, raw: Option<Spanned<RawCors>>) -> Cors {
        let Some(raw) = raw.map(Spanned::into_inner) else {
            return Cors {
                allowed_origins: Vec::new(),
                skip_preflight: true,
            };
        };
        let mut allowed_origins = Vec::new();
        for origin in raw.allowed_origins.iter().flatten() {
            let text = origin.get_ref().trim().trim_end_matches('/');
            // An origin is scheme://host[:port], nothing more (RFC 6454).
            let valid = text
                .parse::<Uri>()
                .ok()
                .filter(|u| {
                    matches!(u.scheme_str(), Some("http" | "https"))
                        && u.authority().is_some_and(|a| !a.as_str().contains('@'))
                        && matches!(u.path(), "" | "/")
                        && u.query().is_none()
                })
                .is_some();
            if valid {
                allowed_origins.push(text.to_ascii_lowercase());
            } else {
                self.fail(
                    span_of(origin),
                    "cors.allowed_origins",
                    "not an origin (write \"https://app.example.com\", no path; \"*\" is not accepted because these answers carry credentials)",
                );
            }
        }
        Cors {
            allowed_origins,
            skip_preflight: raw.skip_preflight.unwrap_or(true),
        }
    }
    fn rate_limit(&mut self, raw: Option<Spanned<RawRateLimit>>) -> Option<RateLimit> {
        let raw = raw.map(Spanned::into_inner).unwrap_or(RawRateLimit {
            enabled: None,
            max_failures: None,
            window: None,
            block_for: None,
            max_failures_per_user: None,
            user_window: None,
            max_tracked: None,
            redis: None,
            redis_prefix: None,
        });
        let max_failures = self.count(raw.max_failures, "rate_limit.max_failures", 5, 1_000);
        let window =
            self.positive_duration(raw.window, "rate_limit.window", Duration::from_secs(60));
        let block_for = self.positive_duration(
            raw.block_for,
            "rate_limit.block_for",
            Duration::from_secs(15 * 60),
        );
        let max_failures_per_user = self.count(
            raw.max_failures_per_user,
            "rate_limit.max_failures_per_user",
            20,
            10_000,
        );
        let user_window = self.positive_duration(
            raw.user_window,
            "rate_limit.user_window",
            Duration::from_secs(3600),
        );
        let max_tracked = self.count(
            raw.max_tracked,
            "rate_limit.max_tracked",
            100_000,
            100_000_000,
        );
        let prefix = match raw.redis_prefix {
            None => "sallyport:".to_string(),
            Some(p) => {
                let text = p.get_ref().clone();
                if text.is_empty() || text.len() > 64 || text.chars().any(char::is_control) {
                    self.fail(
                        span_of(&p),
                        "rate_limit.redis_prefix",
                        "must be 1 to 64 printable characters",
                    );
                }
                text
            }
        };
        let redis = raw.redis.and_then(|url| {
            let text = url.get_ref().trim();
            match crate::throttle::check_redis_url(text) {
                Ok(()) => Some(RedisTarget {
                    url: text.to_string(),
                    prefix,
                }),
                Err(why) => {
                    self.fail(span_of(&url), "rate_limit.redis", why);
                    None
                }
            }
        });
        if raw.enabled == Some(false) {
            return None;
        }
        Some(RateLimit {
            max_failures: max_failures as u32,
            window,
            block_for,
            max_failures_per_user: max_failures_per_user as u32,
            user_window,
            max_tracked,
            redis,
        })
    }

    /// An integer in `1..=max`.
    fn count(&mut self, raw: Option<Spanned<i64>>, key: &str, default: u64, max: u64) -> u64 {
        let Some(raw) = raw else { return default };
        match u64::try_from(*raw.get_ref()) {
            Ok(n) if (1..=max).contains(&n) => n,
            _ => {
                self.fail(
                    span_of(&raw),
                    key,
                    format!("must be a whole number from 1 to {max}"),
                );
                default
            }
        }
    }

    fn auth(&mut self, raw: Option<Spanned<RawAuth>>, server: &Server) -> AuthConfig {
        let Some(raw) = raw else {
            return AuthConfig {
                realm: "Restricted".into(),
                basic: None,
                jwt: None,
                oidc: None,
            };
        };
        let raw = raw.into_inner();
        let realm = match raw.realm {
            None => "Restricted".to_string(),
            Some(r) => {
                let text = r.get_ref().trim().to_string();
                let printable = text
                    .bytes()
                    .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
                if text.is_empty() || !printable {
                    self.fail(
                        span_of(&r),
                        "auth.realm",
                        "must be non-empty printable ASCII without '\"' or '\\'",
                    );
                }
                text
            }
        };
        let basic = raw.basic.and_then(|b| self.basic(b));
        let jwt = raw.jwt.and_then(|j| self.jwt(j));
        let oidc = raw.oidc.and_then(|o| self.oidc(o, server));
        AuthConfig {
            realm,
            basic,
            jwt,
            oidc,
        }
    }

    fn audiences(&mut self, raw: &Option<Vec<Spanned<String>>>, key: &str) -> Vec<String> {
        let mut audiences = Vec::new();
        for a in raw.iter().flatten() {
            let text = a.get_ref().trim();
            if text.is_empty() {
                self.fail(span_of(a), key, "must not be empty");
            } else {
                audiences.push(text.to_string());
            }
        }
        audiences
    }

    /// Pinned signature algorithms; `default` when the key is absent.
    fn algorithms(
        &mut self,
        raw: &Option<Spanned<Vec<Spanned<String>>>>,
        key: &str,
        default: jsonwebtoken::Algorithm,
    ) -> Vec<jsonwebtoken::Algorithm> {
        let mut algorithms = Vec::new();
        match raw {
            None => algorithms.push(default),
            Some(list) => {
                for a in list.get_ref() {
                    match a.get_ref().trim().parse::<jsonwebtoken::Algorithm>() {
                        Ok(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
                        Ok(_) => {}
                        Err(_) => self.fail(
                            span_of(a),
                            key,
                            "unknown algorithm (RS256/384/512, PS256/384/512, ES256/384, EdDSA, HS256/384/512; \"none\" is never accepted)",
                        ),
                    }
                }
                if list.get_ref().is_empty() {
                    self.fail(span_of(list), key, "list at least one algorithm");
                }
            }
        }
        algorithms
    }

    fn claim_paths(&mut self, raw: RawClaims, section: &str) -> ClaimPaths {
        let mut claim = |raw: Option<Spanned<String>>, field: &str, default: &str| match raw {
            None => default.to_string(),
            Some(c) if c.get_ref().trim().is_empty() => {
                self.fail(
                    span_of(&c),
                    &format!("{section}.claims.{field}"),
                    "must name a claim",
                );
                default.to_string()
            }
            Some(c) => c.get_ref().trim().to_string(),
        };
        ClaimPaths {
            user: claim(raw.user, "user", "sub"),
            email: claim(raw.email, "email", "email"),
            groups: claim(raw.groups, "groups", "groups"),
            preferred_username: claim(
                raw.preferred_username,
                "preferred_username",
                "preferred_username",
            ),
        }
    }

    /// A secret from a file, without the trailing newline editors and `echo` add.
    fn secret_file(
        &mut self,
        raw: &Spanned<String>,
        key: &str,
        min_len: usize,
        hint: &str,
    ) -> Option<Secret> {
        let path = self.file(raw, key)?;
        match std::fs::read(&path) {
            Ok(mut bytes) => {
                while bytes.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
                    bytes.pop();
                }
                if bytes.len() < min_len {
                    self.fail(
                        span_of(raw),
                        key,
                        format!("needs at least {min_len} bytes; {hint}"),
                    );
                    return None;
                }
                Some(Secret(Arc::from(bytes)))
            }
            Err(e) => {
                self.fail(
                    span_of(raw),
                    key,
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        }
    }

    fn ca_roots(
        &mut self,
        raw: &Option<Spanned<String>>,
        key: &str,
    ) -> Vec<CertificateDer<'static>> {
        let Some(ca) = raw else { return Vec::new() };
        let Some(path) = self.file(ca, key) else {
            return Vec::new();
        };
        match load_cert_chain(&path) {
            Ok(certs) => certs,
            Err(why) => {
                self.fail(span_of(ca), key, why);
                Vec::new()
            }
        }
    }

    fn oidc(&mut self, raw: Spanned<RawOidc>, server: &Server) -> Option<OidcConfig> {
        let public_url = server.public_url.as_ref();
        use jsonwebtoken::AlgorithmFamily;
        let span = raw.span();
        let raw = raw.into_inner();
        let before = self.errors.len();
        let required =
            |this: &mut Self, value: &Option<Spanned<String>>, key: &str, what: &str| match value {
                Some(v) if !v.get_ref().trim().is_empty() => Some(v.get_ref().trim().to_string()),
                Some(v) => {
                    this.fail(span_of(v), key, "must not be empty");
                    None
                }
                None => {
                    this.fail(Some(span.clone()), key, format!("missing: {what}"));
                    None
                }
            };
        let issuer = required(
            self,
            &raw.issuer,
            "auth.oidc.issuer",
            "the IdP's issuer URL, e.g. \"https://idp.example.com\"",
        );
        let discovery_url = issuer.as_deref().and_then(|issuer| {
            let valid = issuer
                .parse::<Uri>()
                .ok()
                .filter(|u| {
                    u.scheme_str() == Some("https")
                        && u.authority().is_some_and(|a| !a.as_str().contains('@'))
                        && u.query().is_none()
                })
                .is_some();
            let url = format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            );
            match url.parse::<Uri>() {
                Ok(uri) if valid => Some(uri),
                _ => {
                    self.fail(
                        raw.issuer.as_ref().and_then(span_of),
                        "auth.oidc.issuer",
                        "must be an https:// URL without query, e.g. \"https://idp.example.com/realms/main\"",
                    );
                    None
                }
            }
        });
        let extra_roots = self.ca_roots(&raw.issuer_ca, "auth.oidc.issuer_ca");
        let client_id = required(
            self,
            &raw.client_id,
            "auth.oidc.client_id",
            "the client id registered at the IdP",
        );
        let client_secret = raw.client_secret_file.as_ref().and_then(|f| {
            self.secret_file(f, "auth.oidc.client_secret_file", 1, "the file is empty")
        });
        let cookie_secret = match &raw.cookie_secret_file {
            Some(f) => self.secret_file(
                f,
                "auth.oidc.cookie_secret_file",
                32,
                "generate one with `openssl rand -base64 48`",
            ),
            None => {
                self.fail(
                    Some(span.clone()),
                    "auth.oidc.cookie_secret_file",
                    "missing: a file with at least 32 random bytes (`openssl rand -base64 48`), which encrypts the session cookies",
                );
                None
            }
        };
        let scopes = match &raw.scopes {
            None => vec!["openid".to_string(), "email".into(), "profile".into()],
            Some(list) => {
                let mut scopes = Vec::new();
                for s in list.get_ref() {
                    let text = s.get_ref().trim();
                    let valid = !text.is_empty()
                        && text
                            .bytes()
                            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
                    if valid {
                        if !scopes.iter().any(|have| have == text) {
                            scopes.push(text.to_string());
                        }
                    } else {
                        self.fail(
                            span_of(s),
                            "auth.oidc.scopes",
                            "a scope is one printable word",
                        );
                    }
                }
                if !scopes.iter().any(|s| s == "openid") {
                    self.fail(
                        span_of(list),
                        "auth.oidc.scopes",
                        "must include \"openid\" (without it the IdP issues no ID token)",
                    );
                }
                scopes
            }
        };
        let session_idle = self.positive_duration(
            raw.session_idle.clone(),
            "auth.oidc.session_idle",
            Duration::from_secs(30 * 60),
        );
        let session_max = self.positive_duration(
            raw.session_max.clone(),
            "auth.oidc.session_max",
            Duration::from_secs(12 * 3600),
        );
        if session_idle > session_max {
            self.fail(
                raw.session_idle.as_ref().and_then(span_of),
                "auth.oidc.session_idle",
                "must not be longer than session_max",
            );
        }
        let session_store = raw.session_store.as_ref().and_then(|url| {
            let text = url.get_ref().trim();
            match crate::throttle::check_redis_url(text) {
                Ok(()) => Some(RedisTarget {
                    url: text.to_string(),
                    prefix: "sallyport:".to_string(),
                }),
                Err(why) => {
                    self.fail(span_of(url), "auth.oidc.session_store", why);
                    None
                }
            }
        });
        let algorithms = self.algorithms(
            &raw.algorithms,
            "auth.oidc.algorithms",
            jsonwebtoken::Algorithm::RS256,
        );
        if algorithms
            .iter()
            .any(|a| a.family() == AlgorithmFamily::Hmac)
        {
            self.fail(
                raw.algorithms.as_ref().and_then(span_of),
                "auth.oidc.algorithms",
                "ID tokens are checked with the IdP's public keys: use RS*, PS*, ES* or EdDSA",
            );
        }
        let audiences = self.audiences(&raw.audiences, "auth.oidc.audiences");
        if raw.audiences.as_ref().is_some_and(Vec::is_empty) {
            self.fail(
                None,
                "auth.oidc.audiences",
                "an empty list would accept tokens the IdP issued for anyone; list the API audiences, or leave the key out to accept no Bearer tokens",
            );
        }
        let leeway = self.duration(
            raw.leeway.clone(),
            "auth.oidc.leeway",
            Duration::from_secs(30),
        );
        let mut allowed_redirect_hosts = Vec::new();
        for h in raw.allowed_redirect_hosts.iter().flatten() {
            let text = h.get_ref().trim().to_ascii_lowercase();
            let bare = text.strip_prefix('.').unwrap_or(&text);
            let valid = !bare.is_empty()
                && bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':'));
            if valid {
                allowed_redirect_hosts.push(text);
            } else {
                self.fail(
                    span_of(h),
                    "auth.oidc.allowed_redirect_hosts",
                    "a host name (\"app.example.com\", with a port if not the default), or \".example.com\" for its subdomains",
                );
            }
        }
        let claims = self.claim_paths(raw.claims, "auth.oidc");
        let public_url = match public_url {
            Some(u) if u.scheme_str() == Some("https") || is_loopback_url(u) => Some(u.clone()),
            Some(_) => {
                self.fail(
                    None,
                    "server.public_url",
                    "must be https:// with [auth.oidc] (session cookies are Secure); plain http is allowed for localhost only",
                );
                None
            }
            None => {
                self.fail(
                    Some(span.clone()),
                    "server.public_url",
                    "[auth.oidc] needs server.public_url (e.g. \"https://app.example.com\"): the IdP sends users back to <public_url>/.sallyport/callback",
                );
                None
            }
        };
        if self.errors.len() > before {
            return None;
        }
        Some(OidcConfig {
            issuer: issuer?,
            discovery_url: discovery_url?,
            extra_roots,
            client_id: client_id?,
            client_secret,
            scopes,
            cookie_secret: cookie_secret?,
            session_idle,
            session_max,
            session_store,
            audiences,
            algorithms,
            leeway,
            claims,
            allowed_redirect_hosts,
            public_url: public_url?,
            // Leave room for the rest of the request head, or a session cookie that
            // grew past it would lock its browser out with 431s until it expires.
            max_cookie_bytes: server.limits.max_header_bytes.saturating_sub(4096),
        })
    }

    fn jwt(&mut self, raw: Spanned<RawJwt>) -> Option<JwtConfig> {
        use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
        let span = raw.span();
        let raw = raw.into_inner();
        let before = self.errors.len();

        let algorithms = self.algorithms(&raw.algorithms, "auth.jwt.algorithms", Algorithm::RS256);
        let hmac = algorithms
            .iter()
            .any(|a| a.family() == AlgorithmFamily::Hmac);
        let asymmetric = algorithms
            .iter()
            .any(|a| a.family() != AlgorithmFamily::Hmac);
        if hmac && asymmetric {
            self.fail(
                raw.algorithms.as_ref().and_then(span_of),
                "auth.jwt.algorithms",
                "HMAC (HS*) and public-key algorithms cannot be mixed: a verifier that accepts both can be fooled into checking an HMAC made with a public key",
            );
        }

        let jwks = raw
            .jwks_url
            .as_ref()
            .and_then(|u| match u.get_ref().trim().parse::<Uri>() {
                Ok(uri) if uri.scheme_str() == Some("https") && uri.authority().is_some() => {
                    Some(uri)
                }
                _ => {
                    self.fail(span_of(u), "auth.jwt.jwks_url", "must be an https:// URL");
                    None
                }
            });
        let extra_roots = self.ca_roots(&raw.jwks_ca, "auth.jwt.jwks_ca");
        let refresh = self.positive_duration(
            raw.jwks_refresh,
            "auth.jwt.jwks_refresh",
            Duration::from_secs(300),
        );
        let jwks = jwks.map(|url| JwksSource {
            url,
            extra_roots,
            refresh,
        });

        let mut static_keys = Vec::new();
        for k in raw.keys.iter().flatten() {
            let Some(path) = self.file(k, "auth.jwt.keys") else {
                continue;
            };
            let pem = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    self.fail(
                        span_of(k),
                        "auth.jwt.keys",
                        format!("cannot read {}: {e}", path.display()),
                    );
                    continue;
                }
            };
            let key = DecodingKey::from_rsa_pem(&pem)
                .or_else(|_| DecodingKey::from_ec_pem(&pem))
                .or_else(|_| DecodingKey::from_ed_pem(&pem));
            match key {
                Ok(key) if algorithms.iter().any(|a| a.family() == key.family()) => {
                    static_keys.push((path.display().to_string(), key));
                }
                Ok(_) => self.fail(
                    span_of(k),
                    "auth.jwt.keys",
                    "this key's type matches none of the configured algorithms",
                ),
                Err(_) => self.fail(
                    span_of(k),
                    "auth.jwt.keys",
                    format!(
                        "{}: no PEM public key (RSA, EC P-256/P-384 or Ed25519) found",
                        path.display()
                    ),
                ),
            }
        }
        if let Some(secret) = &raw.hs_secret_file {
            if let Some(path) = self.file(secret, "auth.jwt.hs_secret_file") {
                match std::fs::read(&path) {
                    Ok(mut bytes) => {
                        // Secret files usually end with a newline the secret never had.
                        while bytes.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
                            bytes.pop();
                        }
                        if bytes.len() < 32 {
                            self.fail(
                                span_of(secret),
                                "auth.jwt.hs_secret_file",
                                "an HMAC secret needs at least 32 bytes (RFC 7518 3.2); generate one with `openssl rand -base64 48`",
                            );
                        } else if !hmac {
                            self.fail(
                                span_of(secret),
                                "auth.jwt.hs_secret_file",
                                "an HMAC secret needs HS256, HS384 or HS512 in auth.jwt.algorithms",
                            );
                        } else {
                            static_keys.push((
                                "hs_secret_file".to_string(),
                                DecodingKey::from_secret(&bytes),
                            ));
                        }
                    }
                    Err(e) => self.fail(
                        span_of(secret),
                        "auth.jwt.hs_secret_file",
                        format!("cannot read {}: {e}", path.display()),
                    ),
                }
            }
        }
        if hmac && (jwks.is_some() || raw.keys.as_ref().is_some_and(|k| !k.is_empty())) {
            self.fail(
                Some(span.clone()),
                "auth.jwt.algorithms",
                "HS* algorithms go with hs_secret_file only, not with jwks_url or keys",
            );
        }
        if jwks.is_none() && raw.keys.is_none() && raw.hs_secret_file.is_none() {
            self.fail(
                Some(span),
                "auth.jwt",
                "needs a key source: jwks_url, keys = [\"public.pem\"] or hs_secret_file",
            );
        }

        let issuer = raw.issuer.as_ref().map(|i| i.get_ref().trim().to_string());
        if raw
            .issuer
            .as_ref()
            .is_some_and(|i| i.get_ref().trim().is_empty())
        {
            self.fail(
                raw.issuer.as_ref().and_then(span_of),
                "auth.jwt.issuer",
                "must not be empty",
            );
        }
        let audiences = self.audiences(&raw.audiences, "auth.jwt.audiences");
        let leeway = self.duration(raw.leeway, "auth.jwt.leeway", Duration::from_secs(30));
        let cache_ttl = self.duration(
            raw.cache_ttl,
            "auth.jwt.cache_ttl",
            Duration::from_secs(300),
        );
        let claims = self.claim_paths(raw.claims, "auth.jwt");
        if self.errors.len() > before {
            return None;
        }
        Some(JwtConfig {
            issuer,
            audiences,
            algorithms,
            jwks,
            static_keys,
            leeway,
            cache_ttl,
            claims,
        })
    }

    fn basic(&mut self, raw: Spanned<RawBasic>) -> Option<BasicConfig> {
        let span = raw.span();
        let raw = raw.into_inner();
        let cache_ttl = self.duration(
            raw.cache_ttl,
            "auth.basic.cache_ttl",
            Duration::from_secs(300),
        );
        let allow_plain = raw.allow_plain.unwrap_or(false);
        let Some(htpasswd_raw) = raw.htpasswd else {
            self.fail(
                Some(span),
                "auth.basic.htpasswd",
                "missing: the path of an htpasswd file",
            );
            return None;
        };
        let htpasswd = self.file(&htpasswd_raw, "auth.basic.htpasswd");
        let groups = match &raw.groups {
            Some(g) => Some(self.file(g, "auth.basic.groups")?),
            None => None,
        };
        let htpasswd = htpasswd?;
        match load_user_db(&htpasswd, groups.as_deref(), allow_plain) {
            Ok(db) => Some(BasicConfig {
                htpasswd,
                groups,
                cache_ttl,
                allow_plain,
                users: Arc::new(db),
            }),
            Err(LoadFailure::Htpasswd(why)) => {
                self.fail(span_of(&htpasswd_raw), "auth.basic.htpasswd", why);
                None
            }
            Err(LoadFailure::Groups(why)) => {
                self.fail(
                    raw.groups.as_ref().and_then(span_of),
                    "auth.basic.groups",
                    why,
                );
                None
            }
        }
    }

    fn duration(&mut self, raw: Option<Spanned<String>>, key: &str, default: Duration) -> Duration {
        let Some(raw) = raw else { return default };
        // Past a year a setting is a typo, and some timers cannot represent it at all.
        const MAX: Duration = Duration::from_secs(365 * 24 * 3600);
        match humantime::parse_duration(raw.get_ref().trim()) {
            Ok(d) if d > MAX => {
                self.fail(span_of(&raw), key, "must be at most a year");
                default
            }
            Ok(d) => d,
            Err(_) => {
                self.fail(
                    span_of(&raw),
                    key,
                    "not a duration (write e.g. \"90s\", \"15m\", \"12h\")",
                );
                default
            }
        }
    }

    fn positive_duration(
        &mut self,
        raw: Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let span = raw.as_ref().map(|r| r.span());
        let d = self.duration(raw, key, default);
        if d.is_zero() {
            self.fail(span, key, "must be greater than zero");
            return default;
        }
        d
    }

    fn file(&mut self, raw: &Spanned<String>, key: &str) -> Option<PathBuf> {
        let path = self.base_dir.join(raw.get_ref());
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {
                self.files.push(path.clone());
                Some(path)
            }
            Ok(_) => {
                self.fail(
                    span_of(raw),
                    key,
                    format!("{} is not a regular file", path.display()),
                );
                None
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.fail(
                    span_of(raw),
                    key,
                    format!("file not found: {}", path.display()),
                );
                None
            }
            Err(e) => {
                self.fail(
                    span_of(raw),
                    key,
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        }
    }

    fn server(&mut self, raw: RawServer) -> Server {
        let listen = match raw.listen {
            None => vec![SocketAddr::from(([0, 0, 0, 0], 8443))],
            Some(list) => {
                let span = list.span();
                let mut out = Vec::new();
                for addr in list.into_inner() {
                    match addr.get_ref().trim().parse::<SocketAddr>() {
                        Ok(a) if !out.contains(&a) => out.push(a),
                        Ok(_) => self.fail(span_of(&addr), "server.listen", "address listed twice"),
                        Err(_) => self.fail(
                            span_of(&addr),
                            "server.listen",
                            "not an IP:port address (write \"0.0.0.0:8443\" or \"[::]:8443\")",
                        ),
                    }
                }
                if out.is_empty() && self.errors.is_empty() {
                    self.fail(
                        Some(span),
                        "server.listen",
                        "at least one address is required",
                    );
                }
                out
            }
        };

        let mut trusted_proxies = Vec::new();
        for cidr in &raw.trusted_proxies {
            let text = cidr.get_ref().trim();
            let parsed = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => trusted_proxies.push(net.trunc()),
                Err(_) => self.fail(
                    span_of(cidr),
                    "server.trusted_proxies",
                    "not a CIDR or IP address",
                ),
            }
        }

        let public_url = raw.public_url.and_then(|u| {
            match u.get_ref().trim().parse::<Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.authority().is_some()
                        && matches!(uri.path(), "" | "/")
                        && uri.query().is_none() =>
                {
                    Some(uri)
                }
                _ => {
                    self.fail(
                        span_of(&u),
                        "server.public_url",
                        "must be an absolute http(s) URL with no path, e.g. \"https://app.example.com\"",
                    );
                    None
                }
            }
        });

        let shutdown_grace = self.duration(
            raw.shutdown_grace,
            "server.shutdown_grace",
            Duration::from_secs(30),
        );
        let workers = match raw.workers {
            None => None,
            Some(v) if !(1..=MAX_WORKERS).contains(v.get_ref()) => {
                self.fail(
                    span_of(&v),
                    "server.workers",
                    format!("must be between 1 and {MAX_WORKERS}"),
                );
                None
            }
            Some(v) => usize::try_from(*v.get_ref()).ok(),
        };
        let tls = raw.tls.and_then(|t| self.tls(t));
        let t = raw.timeouts;
        let timeouts = Timeouts {
            handshake: self.positive_duration(
                t.handshake,
                "server.timeouts.handshake",
                Duration::from_secs(10),
            ),
            header_read: self.positive_duration(
                t.header_read,
                "server.timeouts.header_read",
                Duration::from_secs(10),
            ),
            idle: self.positive_duration(t.idle, "server.timeouts.idle", Duration::from_secs(60)),
            upstream_connect: self.positive_duration(
                t.upstream_connect,
                "server.timeouts.upstream_connect",
                Duration::from_secs(5),
            ),
            upstream_response: self.positive_duration(
                t.upstream_response,
                "server.timeouts.upstream_response",
                Duration::from_secs(60),
            ),
        };
        let limits = self.limits(raw.limits);
        Server {
            listen,
            trusted_proxies,
            public_url,
            shutdown_grace,
            workers,
            tls,
            timeouts,
            limits,
        }
    }

    fn tls(&mut self, raw: Spanned<RawTls>) -> Option<Tls> {
        let table_span = raw.span();
        let raw = raw.into_inner();
        let min_version = match raw.min_version.as_ref().map(|v| v.get_ref().trim()) {
            None | Some("1.2") => TlsVersion::Tls12,
            Some("1.3") => TlsVersion::Tls13,
            Some(_) => {
                self.fail(
                    raw.min_version.as_ref().and_then(span_of),
                    "server.tls.min_version",
                    "must be \"1.2\" or \"1.3\"",
                );
                TlsVersion::Tls12
            }
        };
        let source = match (raw.cert, raw.key, raw.self_signed) {
            (None, None, Some(names)) => {
                let span = names.span();
                let mut out = Vec::new();
                for n in names.into_inner() {
                    let name = n.get_ref().trim().to_ascii_lowercase();
                    if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '/') {
                        self.fail(
                            span_of(&n),
                            "server.tls.self_signed",
                            "not a DNS name or IP address",
                        );
                    } else {
                        out.push(name);
                    }
                }
                if out.is_empty() {
                    self.fail(
                        Some(span),
                        "server.tls.self_signed",
                        "list at least one name, e.g. [\"localhost\"]",
                    );
                    return None;
                }
                TlsSource::SelfSigned(out)
            }
            (Some(cert), Some(key), None) => {
                let cert_path = self.file(&cert, "server.tls.cert");
                let key_path = self.file(&key, "server.tls.key");
                let (cert_path, key_path) = (cert_path?, key_path?);
                let chain = match load_cert_chain(&cert_path) {
                    Ok(c) => c,
                    Err(m) => {
                        self.fail(span_of(&cert), "server.tls.cert", m);
                        return None;
                    }
                };
                let key_der = match PrivateKeyDer::from_pem_file(&key_path) {
                    Ok(k) => k,
                    Err(_) => {
                        // The parser's error could quote key material; say only what is wrong.
                        self.fail(
                            span_of(&key),
                            "server.tls.key",
                            "no PEM private key (PKCS#8, PKCS#1 or SEC1) found in file",
                        );
                        return None;
                    }
                };
                TlsSource::Files {
                    cert_path,
                    key_path,
                    chain,
                    key: key_der,
                }
            }
            (Some(_), Some(_), Some(s)) => {
                self.fail(
                    span_of(&s),
                    "server.tls.self_signed",
                    "give either cert + key or self_signed, not both",
                );
                return None;
            }
            (Some(_), None, _) => {
                self.fail(
                    Some(table_span),
                    "server.tls.key",
                    "cert is set but key is missing",
                );
                return None;
            }
            (None, Some(_), _) => {
                self.fail(
                    Some(table_span),
                    "server.tls.cert",
                    "key is set but cert is missing",
                );
                return None;
            }
            (None, None, None) => {
                self.fail(
                    Some(table_span),
                    "server.tls",
                    "set cert and key, or self_signed = [\"localhost\"] for development (remove the section for plain HTTP)",
                );
                return None;
            }
        };
        Some(Tls {
            source,
            min_version,
        })
    }

    fn limits(&mut self, raw: RawLimits) -> Limits {
        let max_connections = match raw.max_connections {
            None => 10_000,
            // The upper bound is far above what one process can hold open, and below
            // what the connection semaphore can count.
            Some(v) if !(1..=10_000_000).contains(v.get_ref()) => {
                self.fail(
                    span_of(&v),
                    "server.limits.max_connections",
                    "must be between 1 and 10000000",
                );
                10_000
            }
            Some(v) => usize::try_from(*v.get_ref()).unwrap_or(usize::MAX),
        };
        let max_header_bytes = match raw.max_header_bytes {
            None => 16_384,
            // hyper cannot parse with a read buffer under 8 KiB.
            Some(v) if !(8192..=1 << 20).contains(v.get_ref()) => {
                self.fail(
                    span_of(&v),
                    "server.limits.max_header_bytes",
                    "must be between 8192 and 1048576",
                );
                16_384
            }
            Some(v) => *v.get_ref() as usize,
        };
        let max_body_bytes = raw.max_body_bytes.map(|v| *v.get_ref()).filter(|&v| v > 0);
        Limits {
            max_connections,
            max_header_bytes,
            max_body_bytes,
        }
    }

    fn admin(&mut self, raw: Spanned<RawAdmin>) -> Option<Admin> {
        let span = raw.span();
        let raw = raw.into_inner();
        let Some(listen) = raw.listen else {
            self.fail(
                Some(span),
                "admin.listen",
                "is required: the address for /healthz, /readyz and /metrics, e.g. \"127.0.0.1:9090\"",
            );
            return None;
        };
        match listen.get_ref().trim().parse::<SocketAddr>() {
            Ok(addr) => Some(Admin {
                listen: addr,
                check_upstreams: raw.check_upstreams.unwrap_or(true),
            }),
            Err(_) => {
                self.fail(
                    span_of(&listen),
                    "admin.listen",
                    "not an address: write IP:PORT, e.g. \"127.0.0.1:9090\" or \"[::1]:9090\"",
                );
                None
            }
        }
    }

    fn log(&mut self, raw: RawLog) -> Log {
        let format = match raw.format.as_ref().map(|f| f.get_ref().trim()) {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(_) => {
                self.fail(
                    raw.format.as_ref().and_then(span_of),
                    "log.format",
                    "must be \"text\" or \"json\"",
                );
                LogFormat::Text
            }
        };
        let level = match raw.level {
            None => "info".to_string(),
            Some(l) => {
                let text = l.get_ref().trim().to_string();
                if tracing_subscriber::EnvFilter::try_new(&text).is_err() {
                    self.fail(
                        span_of(&l),
                        "log.level",
                        "not a level (error, warn, info, debug, trace) or filter directive",
                    );
                    "info".to_string()
                } else {
                    text
                }
            }
        };
        Log {
            format,
            level,
            access_log: raw.access_log.unwrap_or(true),
        }
    }

    fn header_name(
        &mut self,
        raw: Option<Spanned<String>>,
        key: &str,
        default: &'static str,
    ) -> HeaderName {
        let Some(raw) = raw else {
            return HeaderName::from_static(default);
        };
        match HeaderName::try_from(raw.get_ref().trim()) {
            Ok(h) => h,
            Err(_) => {
                self.fail(span_of(&raw), key, "not a valid HTTP header name");
                HeaderName::from_static(default)
            }
        }
    }

    fn headers(&mut self, raw: RawHeaders) -> IdentityHeaders {
        let user = self.header_name(raw.user, "headers.user", "x-forwarded-user");
        let email = self.header_name(raw.email, "headers.email", "x-forwarded-email");
        let groups = self.header_name(raw.groups, "headers.groups", "x-forwarded-groups");
        let preferred_username = self.header_name(
            raw.preferred_username,
            "headers.preferred_username",
            "x-forwarded-preferred-username",
        );
        let mut extra = Vec::new();
        if let Some(map) = raw.extra {
            let span = map.span();
            let map: BTreeMap<String, String> = map.into_inner();
            for (header, claim) in map {
                match HeaderName::try_from(header.trim()) {
                    Ok(h) if !claim.trim().is_empty() => extra.push((h, claim.trim().to_string())),
                    Ok(_) => self.fail(
                        Some(span.clone()),
                        "headers.extra",
                        format!("{header}: claim name is empty"),
                    ),
                    Err(_) => self.fail(
                        Some(span.clone()),
                        "headers.extra",
                        format!("{header}: not a valid HTTP header name"),
                    ),
                }
            }
        }
        IdentityHeaders {
            user,
            email,
            groups,
            preferred_username,
            forward_authorization: raw.forward_authorization.unwrap_or(false),
            extra,
        }
    }

    fn route(
        &mut self,
        index: usize,
        raw: Spanned<RawRoute>,
        has_scheme: bool,
    ) -> Option<RouteConfig> {
        let route_span = raw.span();
        let raw = raw.into_inner();
        let key = |field: &str| format!("route[{index}].{field}");
        let mut ok = true;

        let path = match &raw.path {
            None => {
                self.fail(
                    Some(route_span.clone()),
                    &key("path"),
                    "missing (use \"/\" to match everything)",
                );
                None
            }
            Some(p) => match routes::normalize_route_prefix(p.get_ref()) {
                Ok(norm) => Some(norm),
                Err(why) => {
                    self.fail(span_of(p), &key("path"), why);
                    None
                }
            },
        };

        let host = raw
            .host
            .as_ref()
            .and_then(|h| match HostPattern::parse(h.get_ref()) {
                Ok(p) => Some(p),
                Err(why) => {
                    self.fail(span_of(h), &key("host"), why);
                    ok = false;
                    None
                }
            });

        let auth = match raw.auth.as_ref().map(|a| a.get_ref().trim()) {
            None | Some("required") if !has_scheme => {
                self.fail(
                    raw.auth.as_ref().map(|a| a.span()).or(Some(route_span.clone())),
                    &key("auth"),
                    "auth = \"required\" (the default) needs an authentication scheme such as [auth.basic] or [auth.jwt]; use auth = \"public\" for an open route",
                );
                ok = false;
                RouteAuth::Required
            }
            None | Some("required") => RouteAuth::Required,
            Some("public") => RouteAuth::Public,
            Some(_) => {
                self.fail(
                    raw.auth.as_ref().and_then(span_of),
                    &key("auth"),
                    "must be \"required\" or \"public\"",
                );
                ok = false;
                RouteAuth::Required
            }
        };

        let upstream = match &raw.upstream {
            None => {
                self.fail(
                    Some(route_span.clone()),
                    &key("upstream"),
                    "missing (http://, https://, unix:/path.sock or builtin:echo)",
                );
                None
            }
            Some(u) => self.upstream(
                u,
                raw.upstream_ca.as_ref(),
                &key("upstream"),
                &key("upstream_ca"),
            ),
        };
        if raw.upstream_ca.is_some()
            && !matches!(upstream, Some(UpstreamTarget::Http { ref scheme, .. }) if *scheme == Scheme::HTTPS)
        {
            self.fail(
                raw.upstream_ca.as_ref().and_then(span_of),
                &key("upstream_ca"),
                "only applies to an https:// upstream",
            );
            ok = false;
        }
        let rules = self.route_rules(&raw, &key);
        if let Some(rules) = &rules {
            let identity_rules = !rules.allow_users.is_empty()
                || !rules.allow_groups.is_empty()
                || !rules.allow_email_domains.is_empty()
                || !rules.require_scopes.is_empty()
                || !rules.require_claims.is_empty();
            if auth == RouteAuth::Public && identity_rules {
                self.fail(
                    Some(route_span.clone()),
                    &key("auth"),
                    "a public route has no identity to check allow_* or require_* rules against",
                );
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        Some(RouteConfig {
            host,
            path: path?,
            upstream: upstream?,
            auth,
            rules: rules?,
        })
    }

    /// The route's authorization rules; `None` (with errors recorded) if any is invalid.
    fn route_rules(&mut self, raw: &RawRoute, key: &dyn Fn(&str) -> String) -> Option<RouteRules> {
        let before = self.errors.len();
        let mut names = |list: &Option<Spanned<Vec<Spanned<String>>>>, field: &str| {
            let mut out = Vec::new();
            for item in list.iter().flat_map(|l| l.get_ref()) {
                let text = item.get_ref().trim();
                if text.is_empty() {
                    self.fail(span_of(item), &key(field), "must not be empty");
                } else {
                    out.push(text.to_string());
                }
            }
            out
        };
        let allow_users = names(&raw.allow_users, "allow_users");
        let allow_groups = names(&raw.allow_groups, "allow_groups");
        let domains = names(&raw.allow_email_domains, "allow_email_domains");
        let scopes = names(&raw.require_scopes, "require_scopes");
        let mut allow_email_domains = Vec::new();
        for d in domains {
            if d.contains('@') || d.contains(char::is_whitespace) || d.starts_with('.') {
                let span = raw.allow_email_domains.as_ref().and_then(span_of);
                self.fail(
                    span,
                    &key("allow_email_domains"),
                    "write bare domains such as \"example.com\" (matched exactly, subdomains not included)",
                );
            } else {
                allow_email_domains.push(d.to_ascii_lowercase());
            }
        }
        let mut require_scopes = Vec::new();
        for token in scopes {
            // RFC 6749 3.3 scope-token: printable ASCII except space, '"' and '\\'.
            let valid = token
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
            if valid {
                require_scopes.push(token);
            } else {
                self.fail(
                    raw.require_scopes.as_ref().and_then(span_of),
                    &key("require_scopes"),
                    "not an OAuth scope (printable ASCII without spaces, '\"' or '\\')",
                );
            }
        }
        let mut require_claims = Vec::new();
        if let Some(table) = &raw.require_claims {
            for (claim, value) in table.get_ref() {
                let accepted = match value {
                    RawClaimValue::One(v) => vec![v.clone()],
                    RawClaimValue::AnyOf(list) => list.clone(),
                };
                if claim.trim().is_empty() || accepted.is_empty() {
                    self.fail(
                        span_of(table),
                        &key("require_claims"),
                        "write claim = \"value\" or claim = [\"one\", \"other\"]",
                    );
                } else {
                    require_claims.push((claim.trim().to_string(), accepted));
                }
            }
        }
        let methods = match &raw.methods {
            None => None,
            Some(list) => {
                let mut out = Vec::new();
                for m in list.get_ref() {
                    let text = m.get_ref().trim().to_ascii_uppercase();
                    match http::Method::from_bytes(text.as_bytes()) {
                        Ok(method) if !text.is_empty() => out.push(method),
                        _ => self.fail(span_of(m), &key("methods"), "not an HTTP method"),
                    }
                }
                if list.get_ref().is_empty() {
                    self.fail(
                        span_of(list),
                        &key("methods"),
                        "list at least one method, or remove the key",
                    );
                }
                Some(out)
            }
        };
        if self.errors.len() > before {
            return None;
        }
        Some(RouteRules {
            allow_users,
            allow_groups,
            allow_email_domains,
            require_scopes,
            require_claims,
            methods,
        })
    }

    fn upstream(
        &mut self,
        raw: &Spanned<String>,
        ca: Option<&Spanned<String>>,
        key: &str,
        ca_key: &str,
    ) -> Option<UpstreamTarget> {
        let text = raw.get_ref().trim();
        if text == "builtin:echo" {
            return Some(UpstreamTarget::Echo);
        }
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                self.fail(
                    span_of(raw),
                    key,
                    "unix: needs a socket path, e.g. unix:/run/app.sock",
                );
                return None;
            }
            // The socket may not exist yet at start (the app starts beside us); a missing
            // socket is a 502 at request time, like a refused TCP port.
            return Some(UpstreamTarget::Unix {
                socket: self.base_dir.join(path),
            });
        }
        let uri = match text.parse::<Uri>() {
            Ok(u) => u,
            Err(_) => {
                self.fail(
                    span_of(raw),
                    key,
                    "not a URL (http://, https://, unix:/path.sock or builtin:echo)",
                );
                return None;
            }
        };
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => {
                self.fail(
                    span_of(raw),
                    key,
                    "scheme must be http://, https://, unix: or builtin:echo",
                );
                return None;
            }
        };
        let Some(authority) = uri.authority().cloned() else {
            self.fail(span_of(raw), key, "URL has no host");
            return None;
        };
        if authority.as_str().contains('@') {
            self.fail(
                span_of(raw),
                key,
                "credentials in the upstream URL are not supported",
            );
            return None;
        }
        if uri.query().is_some() {
            self.fail(span_of(raw), key, "an upstream URL cannot have a query");
            return None;
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        let mut extra_roots = Vec::new();
        if let Some(ca) = ca {
            if let Some(path) = self.file(ca, ca_key) {
                match load_cert_chain(&path) {
                    Ok(c) => extra_roots = c,
                    Err(m) => self.fail(span_of(ca), ca_key, m),
                }
            }
        }
        Some(UpstreamTarget::Http {
            scheme,
            authority,
            base_path,
            extra_roots,
        })
    }
}

/// `http://localhost...` or a loopback address: plain HTTP is tolerable for development.
fn is_loopback_url(uri: &Uri) -> bool {
    match uri.host() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

fn load_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = match CertificateDer::pem_file_iter(path) {
        Ok(iter) => iter.collect(),
        Err(_) => return Err("cannot read PEM certificates from file".into()),
    };
    match certs {
        Ok(c) if !c.is_empty() => Ok(c),
        Ok(_) => Err("no PEM CERTIFICATE block found in file".into()),
        Err(_) => Err("malformed PEM certificate in file".into()),
    }
}
