//! `sallyport explain`: the answer to "why am I getting 401?" from one command. It runs
//! a request described on the command line through the same gate a real request meets,
//! with throttling off (an explanation must not spend anyone's failure budget), and
//! prints each step: host and path, route, scheme, identity, rules, outcome, and what to
//! change when the outcome is not the one wanted.

use std::fmt::Write as _;

use base64ct::{Base64, Encoding};
use http::{HeaderMap, HeaderValue, Method, Uri};

use crate::clock::WallClock;
use crate::config::Config;
use crate::gate::Gate;

/// The credential to present, as a client would.
pub enum Presented {
    None,
    Basic { user: String, password: String },
    Bearer(String),
}

/// `request`: `"METHOD URL"`, e.g. `"GET https://app.example.com/api"`.
pub async fn explain(
    mut config: Config,
    request: &str,
    presented: Presented,
) -> Result<String, String> {
    let (method, uri) = parse_request(request)?;
    config.rate_limit = None;
    let gate = Gate::new(&config, WallClock::system())?;
    if let Some(oidc) = gate.authenticator().oidc() {
        // Bearer tokens from the IdP need its keys, found through discovery.
        for _ in 0..50 {
            if oidc.is_ready() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        if !oidc.is_ready() {
            eprintln!(
                "sallyport: the OIDC provider has not answered discovery within 5 s; tokens and sessions will be reported unavailable"
            );
        }
    }
    let mut headers = HeaderMap::new();
    let credential = match &presented {
        Presented::None => "none".to_string(),
        Presented::Basic { user, password } => {
            let encoded = Base64::encode_string(format!("{user}:{password}").as_bytes());
            headers.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Basic {encoded}"))
                    .map_err(|_| "--basic: the user name cannot go in a header".to_string())?,
            );
            format!("Basic, user {user:?}")
        }
        Presented::Bearer(token) => {
            headers.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                    .map_err(|_| "--bearer-file: the token is not header-safe text".to_string())?,
            );
            format!("Bearer token ({} bytes)", token.trim().len())
        }
    };
    let decision = gate.explain(&method, &uri, &headers).await;

    let mut out = String::new();
    let _ = writeln!(out, "request:  {method} {uri}");
    let _ = writeln!(out, "presents: {credential}");
    let _ = writeln!(
        out,
        "host:     {}",
        decision.host.as_deref().unwrap_or("(none)")
    );
    let _ = writeln!(out, "path:     {} (normalised)", decision.path);
    if decision.reason == "builtin" {
        let _ = writeln!(
            out,
            "route:    built-in endpoint under /.sallyport/ (login, callback, logout, userinfo, auth)"
        );
        return Ok(out);
    }
    match &decision.route {
        Some(route) => {
            let _ = writeln!(
                out,
                "route:    {} -> {} ({})",
                route.label,
                route.upstream,
                if route.public {
                    "public: no authentication"
                } else {
                    "authentication required"
                }
            );
        }
        None => {
            let _ = writeln!(
                out,
                "route:    none matches this host and path; check the [[route]] host and path prefixes (`sallyport check` lists them)"
            );
        }
    }
    if decision.route.as_ref().is_some_and(|r| !r.public) {
        let _ = writeln!(out, "scheme:   {}", decision.scheme);
    }
    if let Some(who) = &decision.identity {
        let _ = writeln!(
            out,
            "identity: {} via {} (groups: {}; email: {})",
            who.user(),
            who.scheme().as_str(),
            if who.groups().is_empty() {
                "none".to_string()
            } else {
                who.groups().join(", ")
            },
            who.email().unwrap_or("none"),
        );
    }
    match &decision.failure {
        None => {
            if decision.identity.is_some() {
                let _ = writeln!(out, "rules:    allowed");
            }
            let upstream = decision.route.as_ref().map_or("", |r| r.upstream.as_str());
            let _ = writeln!(out, "outcome:  forwarded to {upstream}");
        }
        Some(failure) => {
            let status = failure.status();
            let _ = writeln!(
                out,
                "outcome:  {} {}: {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                failure.description()
            );
            if !decision.reason.is_empty() {
                let _ = writeln!(
                    out,
                    "reason:   {} (the access log's auth= field)",
                    decision.reason
                );
                let _ = writeln!(out, "fix:      {}", fix_for(decision.reason));
            }
        }
    }
    Ok(out)
}

fn parse_request(request: &str) -> Result<(Method, Uri), String> {
    let mut words = request.split_whitespace();
    let (Some(method), Some(target), None) = (words.next(), words.next(), words.next()) else {
        return Err(
            "--request: write the method and the full URL, e.g. \"GET https://app.example.com/path\""
                .into(),
        );
    };
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("--request: {method:?} is not an HTTP method"))?;
    let uri: Uri = target
        .parse()
        .map_err(|_| format!("--request: {target:?} is not a URL"))?;
    if uri.authority().is_none() {
        return Err("--request: give the full URL with its host, e.g. https://app.example.com/path (routes can depend on the host)".into());
    }
    Ok((method, uri))
}

/// What to change for each reason code. README's "Why am I getting 401?" has the same
/// table for people reading logs.
pub fn fix_for(reason: &str) -> &'static str {
    match reason {
        "missing" => {
            "the request carries no credentials; clients send them after the 401 challenge, so check the client (and that no proxy in front strips Authorization)"
        }
        "unsupported_scheme" => {
            "the Authorization scheme is not one this proxy accepts (Basic needs [auth.basic], Bearer needs [auth.jwt] or [auth.oidc] audiences)"
        }
        "malformed" => {
            "the Authorization value does not parse: Basic needs base64 of user:password, and only one Authorization field may be sent"
        }
        "unknown_user" => {
            "the user is not in the htpasswd file in use; add it (htpasswd -B, or sallyport hash-password) and the file reloads by itself"
        }
        "invalid_password" => {
            "the password does not match the user's hash; reset it with htpasswd -B or sallyport hash-password --user"
        }
        "unavailable" | "keys_unavailable" => {
            "the proxy could not verify right now (identity provider's keys or session store unreachable); check the log and /readyz"
        }
        "malformed_token" => "the Bearer value is not a JWT (three base64url parts)",
        "algorithm_not_allowed" => {
            "the token's alg is not in the configured algorithms; pin the IdP's algorithm in algorithms"
        }
        "unknown_key" => {
            "no configured key has the token's kid; check jwks_url or keys, and that the token comes from the configured IdP"
        }
        "bad_signature" => {
            "the signature does not verify with the configured key: a different or tampered token"
        }
        "expired" => {
            "the token has expired; get a new one (or check the clocks; leeway allows small skew)"
        }
        "not_yet_valid" => {
            "the token's nbf or iat is in the future: check the clocks on both sides, or raise leeway"
        }
        "wrong_issuer" => {
            "the token's iss differs from the configured issuer (exact match, trailing slash included)"
        }
        "wrong_audience" => "the token's aud is not one of the configured audiences",
        "missing_claim" | "no_user_claim" => {
            "the token lacks a required claim (exp, or the user claim named in claims.user)"
        }
        "bad_claim" => "a claim has the wrong type (e.g. a non-numeric exp)",
        "id_token_as_bearer" => "an OIDC ID token was sent as a Bearer token; send an access token",
        "session_tampered" => {
            "the session cookie does not decrypt: it was altered or cookie_secret_file changed; log in again"
        }
        "session_idle_expired" | "session_expired" => {
            "the browser session is over (session_idle / session_max); log in again"
        }
        "session_gone" => {
            "the session was logged out or dropped from the session store; log in again"
        }
        "session_refresh_failed" => {
            "the identity provider refused to refresh the session; log in again"
        }
        "throttled_client" => {
            "this client IP has too many recent failures; wait for Retry-After (behind a proxy, set server.trusted_proxies so clients are told apart)"
        }
        "throttled_user" => {
            "this username has too many recent failures from anywhere; wait for Retry-After"
        }
        "forbidden_method" => "the route's methods rule does not allow this method",
        "forbidden_identity" => {
            "the user is authenticated but not in the route's allow_users, allow_groups or allow_email_domains"
        }
        "insufficient_scope" => "the token lacks a scope in the route's require_scopes",
        "forbidden_claims" => "the token's claims do not satisfy the route's require_claims",
        _ => "see README, \"Why am I getting 401?\"",
    }
}
