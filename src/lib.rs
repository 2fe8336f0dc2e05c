//! sallyport: an authenticating reverse proxy.
//!
//! # Layout
//!
//! - [`config`]: the TOML file -> validated runtime types (the request path never sees a
//!   raw string).
//! - [`server`]: listeners, TLS, HTTP/1.1 + HTTP/2, timeouts, connection cap, graceful
//!   shutdown.
//! - [`gate`]: the request pipeline, readable top to bottom as one story.
//! - [`auth`]: who is this? htpasswd Basic, JWT Bearer, OIDC sessions; the
//!   `Authenticated` type only it can build.
//! - [`clock`]: injectable wall-clock time for sessions.
//! - [`redis_link`]: the shared Redis connection (throttling, sessions).
//! - [`throttle`]: failed-authentication counting per client and username, local or
//!   in Redis.
//! - [`forward_auth`]: `/.sallyport/auth` for nginx, Traefik and Caddy in front of us.
//! - [`policy`]: route rules for an authenticated identity (403).
//! - [`reload`]: snapshots of the whole config, swapped on SIGHUP or file change.
//! - [`metrics`]: the Prometheus registry; [`server::admin`] serves it with health and
//!   readiness.
//! - [`explain`]: `sallyport explain`, a request's decision step by step.
//! - [`client_ip`]: trusted-proxy aware client address.
//! - [`routes`]: path normalisation and the route table.
//! - [`proxy`]: upstream clients, header rewriting, streaming, upgrades, `builtin:echo`.
//! - [`respond`]: the one place failures become 4xx/5xx responses.
//! - [`logging`]: tracing subscriber setup (text or JSON).
#![forbid(unsafe_code)]

pub mod auth;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod explain;
pub mod forward_auth;
pub mod gate;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod redis_link;
pub mod reload;
pub mod respond;
pub mod routes;
pub mod server;
pub mod throttle;

/// Installs aws-lc-rs as the process-wide rustls provider, for any code path that asks
/// for the default; our own configs name the provider explicitly anyway.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
