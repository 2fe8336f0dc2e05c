//! The config file exactly as written. Every struct denies unknown keys, and every value
//! that validation can reject keeps its span so the error can name the line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: Option<Spanned<RawServer>>,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub headers: RawHeaders,
    pub admin: Option<Spanned<RawAdmin>>,
    pub auth: Option<Spanned<RawAuth>>,
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    pub cors: Option<Spanned<RawCors>>,
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<Spanned<String>>,
    pub check_upstreams: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    pub public_url: Option<Spanned<String>>,
    pub shutdown_grace: Option<Spanned<String>>,
    pub workers: Option<Spanned<u64>>,
    pub tls: Option<Spanned<RawTls>>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub limits: RawLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub self_signed: Option<Spanned<Vec<Spanned<String>>>>,
    pub min_version: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub handshake: Option<Spanned<String>>,
    pub header_read: Option<Spanned<String>>,
    pub idle: Option<Spanned<String>>,
    pub upstream_connect: Option<Spanned<String>>,
    pub upstream_response: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<Spanned<u64>>,
    pub max_header_bytes: Option<Spanned<u64>>,
    pub max_body_bytes: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<Spanned<String>>,
    pub level: Option<Spanned<String>>,
    pub access_log: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaders {
    pub user: Option<Spanned<String>>,
    pub email: Option<Spanned<String>>,
    pub groups: Option<Spanned<String>>,
    pub preferred_username: Option<Spanned<String>>,
    pub forward_authorization: Option<bool>,
    pub extra: Option<Spanned<BTreeMap<String, String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub upstream: Option<Spanned<String>>,
    /// PEM file of extra CA certificates trusted for an `https://` upstream.
    pub upstream_ca: Option<Spanned<String>>,
    pub auth: Option<Spanned<String>>,
    pub allow_users: Option<Spanned<Vec<Spanned<String>>>>,
    pub allow_groups: Option<Spanned<Vec<Spanned<String>>>>,
    pub allow_email_domains: Option<Spanned<Vec<Spanned<String>>>>,
    pub require_scopes: Option<Spanned<Vec<Spanned<String>>>>,
    pub require_claims: Option<Spanned<BTreeMap<String, RawClaimValue>>>,
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `require_claims = { tenant = "acme", role = ["admin", "owner"] }`
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawClaimValue {
    One(String),
    AnyOf(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    pub allowed_origins: Option<Vec<Spanned<String>>>,
    pub skip_preflight: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub enabled: Option<bool>,
    pub max_failures: Option<Spanned<i64>>,
    pub window: Option<Spanned<String>>,
    pub block_for: Option<Spanned<String>>,
    pub max_failures_per_user: Option<Spanned<i64>>,
    pub user_window: Option<Spanned<String>>,
    pub max_tracked: Option<Spanned<i64>>,
    pub redis: Option<Spanned<String>>,
    pub redis_prefix: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub realm: Option<Spanned<String>>,
    pub basic: Option<Spanned<RawBasic>>,
    pub jwt: Option<Spanned<RawJwt>>,
    pub oidc: Option<Spanned<RawOidc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    pub issuer: Option<Spanned<String>>,
    pub issuer_ca: Option<Spanned<String>>,
    pub client_id: Option<Spanned<String>>,
    pub client_secret_file: Option<Spanned<String>>,
    pub scopes: Option<Spanned<Vec<Spanned<String>>>>,
    pub cookie_secret_file: Option<Spanned<String>>,
    pub session_idle: Option<Spanned<String>>,
    pub session_max: Option<Spanned<String>>,
    pub session_store: Option<Spanned<String>>,
    pub audiences: Option<Vec<Spanned<String>>>,
    pub algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    pub leeway: Option<Spanned<String>>,
    pub allowed_redirect_hosts: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub claims: RawClaims,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub issuer: Option<Spanned<String>>,
    pub audiences: Option<Vec<Spanned<String>>>,
    pub algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    pub jwks_url: Option<Spanned<String>>,
    pub jwks_ca: Option<Spanned<String>>,
    pub jwks_refresh: Option<Spanned<String>>,
    pub keys: Option<Vec<Spanned<String>>>,
    pub hs_secret_file: Option<Spanned<String>>,
    pub leeway: Option<Spanned<String>>,
    pub cache_ttl: Option<Spanned<String>>,
    #[serde(default)]
    pub claims: RawClaims,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClaims {
    pub user: Option<Spanned<String>>,
    pub email: Option<Spanned<String>>,
    pub groups: Option<Spanned<String>>,
    pub preferred_username: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBasic {
    pub htpasswd: Option<Spanned<String>>,
    pub groups: Option<Spanned<String>>,
    pub cache_ttl: Option<Spanned<String>>,
    /// `{PLAIN}` entries are refused unless this is set.
    pub allow_plain: Option<bool>,
}
