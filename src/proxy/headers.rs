//! Header rewriting for forwarded requests and relayed responses.
//!
//! Two rules hold on every request, public routes included:
//! 1. hop-by-hop headers, and every header the `Connection` field names, are removed
//!    (hyper does not do this for a server);
//! 2. every header the proxy itself vouches for (identity, `X-Forwarded-*`, `X-Real-IP`,
//!    `X-Request-Id`, `Forwarded`) is stripped in every spelling a backend might fold into
//!    the same name (`X-Forwarded-User`, `x_forwarded_user`, `X.Forwarded.User`, any case,
//!    any number of copies) and then set by us. Strip-then-set happens in [`rewrite_request`]
//!    and nowhere else.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{AUTHORIZATION, CONNECTION, HOST, HeaderName, HeaderValue, UPGRADE};

use crate::auth::Authenticated;
use crate::config::IdentityHeaders;

/// Headers that describe one connection, never the message (RFC 9110 7.6.1), plus the
/// legacy ones proxies have always treated the same way, and `Close`, a name reserved so
/// that no field is mistaken for the connection option (RFC 9110 16.3.2.2).
const HOP_BY_HOP: [HeaderName; 11] = [
    CONNECTION,
    HeaderName::from_static("close"),
    HeaderName::from_static("http2-settings"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    UPGRADE,
];

/// Headers the proxy sets itself, or that upstreams are known to trust as coming from a
/// proxy in front of them; client copies never pass. Beyond our own: the identity names of
/// oauth2-proxy and nginx `auth_request` setups (`X-Auth-Request-*`, which our forward-auth
/// answers use too) and of Authelia (`Remote-*`), since upstreams migrated from those
/// trust them; and the path and method overrides some frameworks obey (Symfony and Zend
/// route on `X-Original-URL` / `X-Rewrite-URL`), which would let a client choose the path
/// the upstream serves after we matched the route on another.
const PROXY_OWNED: [&str; 24] = [
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
    "x-auth-request-preferred-username",
    "x-auth-request-access-token",
    "remote-user",
    "remote-groups",
    "remote-email",
    "remote-name",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-original-method",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-uri",
    "x-forwarded-method",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-real-ip",
    "x-request-id",
    "forwarded",
];

/// The form under which backends (CGI, WSGI, PHP, Rack...) may fold header names together:
/// case, `-`, `_` and `.` are all ignored.
pub fn canonical(name: &str) -> String {
    name.bytes()
        .filter(|&b| !is_folded_away(b))
        .map(|b| char::from(b.to_ascii_lowercase()))
        .collect()
}

/// The separators backends ignore when they fold header names together.
fn is_folded_away(b: u8) -> bool {
    matches!(b, b'-' | b'_' | b'.')
}

/// The headers the proxy owns: their canonical names (which clients may never send
/// through) and the configured identity headers (which we set).
#[derive(Debug, Clone)]
pub struct ManagedHeaders {
    /// Canonical names, sorted and deduplicated.
    canonical: Vec<Box<[u8]>>,
    /// Bit `n` is set when some canonical name is `n` bytes long: most names a request
    /// carries are ruled out by their length alone.
    lengths: u64,
    identity: IdentityHeaders,
}

/// Longer canonical names are compared through the slow path; none of ours is.
const FAST_CANONICAL_LEN: usize = 64;

impl ManagedHeaders {
    pub fn new(identity: &IdentityHeaders) -> Self {
        let mut names: Vec<Box<[u8]>> = PROXY_OWNED
            .iter()
            .copied()
            .chain(identity.all_names().map(HeaderName::as_str))
            .map(|h| canonical(h).into_bytes().into_boxed_slice())
            .collect();
        names.sort();
        names.dedup();
        let lengths = names
            .iter()
            .filter(|n| n.len() < FAST_CANONICAL_LEN)
            .fold(0, |bits, n| bits | 1 << n.len());
        Self {
            canonical: names,
            lengths,
            identity: identity.clone(),
        }
    }

    /// Runs for every header of every request, so it neither allocates nor hashes.
    fn is_managed(&self, name: &HeaderName) -> bool {
        let name = name.as_str().as_bytes();
        let folded = name.iter().filter(|&&b| !is_folded_away(b)).count();
        if folded >= FAST_CANONICAL_LEN {
            let long = canonical(std::str::from_utf8(name).unwrap_or_default());
            return self.canonical.iter().any(|n| **n == *long.as_bytes());
        }
        if self.lengths & (1 << folded) == 0 {
            return false;
        }
        let mut buffer = [0u8; FAST_CANONICAL_LEN];
        let mut len = 0;
        for &b in name {
            if !is_folded_away(b) {
                buffer[len] = b.to_ascii_lowercase();
                len += 1;
            }
        }
        self.canonical.iter().any(|n| **n == buffer[..len])
    }
}

fn connection_tokens(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        // The usual tokens: `close` names no field and `keep-alive` one removed anyway.
        // Skipping them keeps the common response allocation-free (a `keep-alive` name
        // is not one `http` knows, so parsing it would copy it).
        .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
        .filter_map(|t| HeaderName::try_from(t).ok())
        .collect()
}

/// Whether this request asks for a WebSocket upgrade, the only protocol switch relayed.
/// Anything else (notably `Upgrade: h2c`) is dropped: an upstream that switched to h2c
/// would hand the client a tunnel on which later requests skip authentication.
pub fn is_websocket_upgrade(method: &http::Method, headers: &HeaderMap) -> bool {
    method == http::Method::GET
        && headers
            .get(UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && connection_tokens(headers).iter().any(|t| t == "upgrade")
}

/// Removes hop-by-hop headers. When `keep_upgrade` is set the `Upgrade` header and a bare
/// `Connection: upgrade` survive, so a protocol switch can be relayed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    strip(headers, keep_upgrade, |_| false);
}

/// Removes hop-by-hop headers, those `Connection` names, and those `also` picks, in one
/// pass over the names present: a request with nothing to remove costs no allocation.
fn strip(headers: &mut HeaderMap, keep_upgrade: bool, also: impl Fn(&HeaderName) -> bool) {
    let upgrade = if keep_upgrade {
        headers.get(UPGRADE).cloned()
    } else {
        None
    };
    let named = connection_tokens(headers);
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| HOP_BY_HOP.contains(n) || named.contains(n) || also(n))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
    if let Some(upgrade) = upgrade {
        headers.insert(UPGRADE, upgrade);
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// What the proxy knows about the client side of one request.
pub struct ForwardedFacts<'a> {
    pub peer: IpAddr,
    pub peer_trusted: bool,
    /// `peer`, formatted once per connection.
    pub peer_text: &'a HeaderValue,
    pub client_ip: IpAddr,
    pub proto: &'static str,
    pub host: Option<&'a str>,
    pub request_id: &'a HeaderValue,
    /// Who the proxy verified, for routes that require authentication.
    pub identity: Option<&'a Authenticated>,
}

/// Strip-then-set for one forwarded request. Values a trusted proxy sent are read before
/// stripping and carried on; from anyone else they are discarded.
pub fn rewrite_request(
    headers: &mut HeaderMap,
    managed: &ManagedHeaders,
    facts: &ForwardedFacts<'_>,
    keep_upgrade: bool,
) {
    let trusted_value = |headers: &HeaderMap, name: &str| -> Option<String> {
        if !facts.peer_trusted {
            return None;
        }
        let joined: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!joined.is_empty()).then(|| joined.join(", "))
    };
    let prior_for = trusted_value(headers, "x-forwarded-for");
    let prior_proto = trusted_value(headers, "x-forwarded-proto");
    let prior_host = trusted_value(headers, "x-forwarded-host");

    strip(headers, keep_upgrade, |n| managed.is_managed(n));

    match prior_for {
        Some(prior) => set(
            headers,
            X_FORWARDED_FOR,
            &format!("{prior}, {}", facts.peer.to_canonical()),
        ),
        None => {
            headers.insert(X_FORWARDED_FOR, facts.peer_text.clone());
        }
    }
    // The rightmost value was written by the trusted hop closest to us; values to its left
    // may come from the client.
    let proto = prior_proto
        .as_deref()
        .and_then(|p| p.rsplit(',').next())
        .map(str::trim)
        .filter(|p| matches!(*p, "http" | "https"))
        .unwrap_or(facts.proto);
    let proto = if proto == "https" {
        HeaderValue::from_static("https")
    } else {
        HeaderValue::from_static("http")
    };
    headers.insert(X_FORWARDED_PROTO, proto);
    if let Some(host) = facts.host {
        // Usually the client's own Host field already says exactly this.
        if headers
            .get(HOST)
            .is_none_or(|v| v.as_bytes() != host.as_bytes())
        {
            set(headers, HOST, host);
        }
    }
    match (prior_host, facts.host) {
        (Some(prior), _) => set(headers, X_FORWARDED_HOST, &prior),
        (None, Some(host)) => match headers.get(HOST) {
            Some(v) if v.as_bytes() == host.as_bytes() => {
                let v = v.clone();
                headers.insert(X_FORWARDED_HOST, v);
            }
            _ => set(headers, X_FORWARDED_HOST, host),
        },
        (None, None) => {}
    }
    if facts.client_ip == facts.peer.to_canonical() {
        headers.insert(X_REAL_IP, facts.peer_text.clone());
    } else {
        set(headers, X_REAL_IP, &facts.client_ip.to_string());
    }
    headers.insert(X_REQUEST_ID, facts.request_id.clone());
    join_cookies(headers);
    let names = &managed.identity;
    if !names.forward_authorization {
        // On every route, public ones included: browsers resend cached Basic credentials
        // to every path under the protected space, and the upstream must never see them.
        headers.remove(AUTHORIZATION);
    }
    if let Some(who) = facts.identity {
        // Names may be UTF-8 (obs-text in a field value); control characters were refused
        // when the htpasswd file was loaded, so this cannot fail for a verified user.
        if let Ok(v) = HeaderValue::from_bytes(who.user().as_bytes()) {
            headers.insert(names.user.clone(), v);
        }
        if !who.groups().is_empty() {
            if let Ok(v) = HeaderValue::from_bytes(who.groups().join(",").as_bytes()) {
                headers.insert(names.groups.clone(), v);
            }
        }
        // Claim values come from a token the IdP signed; one with control characters
        // cannot be a header value and is left out rather than mangled.
        let optional = [
            (&names.email, who.email()),
            (&names.preferred_username, who.preferred_username()),
        ];
        for (name, value) in optional {
            if let Some(v) = value.and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
                headers.insert(name.clone(), v);
            }
        }
        for (name, value) in who.extra() {
            if let Ok(v) = HeaderValue::from_bytes(value.as_bytes()) {
                headers.insert(name.clone(), v);
            }
        }
    }
}

/// HTTP/2 clients may split `Cookie` into several fields (RFC 9113 8.2.3); HTTP/1.1
/// upstreams expect one, joined with "; ".
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The textual form of a connection's peer address, as `X-Forwarded-For` and `X-Real-IP`
/// carry it.
pub fn peer_text(peer: IpAddr) -> HeaderValue {
    HeaderValue::try_from(peer.to_canonical().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

fn join_cookies(headers: &mut HeaderMap) {
    let cookies: Vec<HeaderValue> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .cloned()
        .collect();
    if cookies.len() > 1 {
        let joined: Vec<&[u8]> = cookies.iter().map(HeaderValue::as_bytes).collect();
        if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
            headers.insert(http::header::COOKIE, v);
        }
    }
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    // Every value here is an address, a token or a header value we already accepted, so it
    // is always valid; skipping rather than panicking keeps that an assumption, not a crash.
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn managed() -> ManagedHeaders {
        ManagedHeaders::new(&IdentityHeaders {
            user: HeaderName::from_static("x-forwarded-user"),
            email: HeaderName::from_static("x-forwarded-email"),
            groups: HeaderName::from_static("x-forwarded-groups"),
            preferred_username: HeaderName::from_static("x-forwarded-preferred-username"),
            forward_authorization: false,
            extra: Vec::new(),
        })
    }

    #[test]
    fn identity_headers_go_in_every_spelling() {
        let mut h = HeaderMap::new();
        for name in [
            "x-forwarded-user",
            "x_forwarded_user",
            "x.forwarded.user",
            "xforwardeduser",
            "x-forwarded_email",
        ] {
            h.append(
                HeaderName::try_from(name).unwrap(),
                HeaderValue::from_static("admin"),
            );
        }
        h.append("x-forwarded-user", HeaderValue::from_static("root"));
        h.insert("x-app", HeaderValue::from_static("keep"));
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let facts = ForwardedFacts {
            peer,
            peer_trusted: false,
            peer_text: &peer_text(peer),
            client_ip: peer,
            proto: "https",
            host: Some("example.com"),
            request_id: &HeaderValue::from_static("rid"),
            identity: None,
        };
        rewrite_request(&mut h, &managed(), &facts, false);
        assert!(
            h.keys()
                .all(|k| !canonical(k.as_str()).contains("forwardeduser")),
            "{h:?}"
        );
        assert!(
            h.keys()
                .all(|k| !canonical(k.as_str()).contains("forwardedemail")),
            "{h:?}"
        );
        assert_eq!(h["x-app"], "keep");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    }

    #[test]
    fn connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret, x-forwarded-user"),
        );
        h.append(CONNECTION, HeaderValue::from_static("Close"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        // The reserved `Close` field goes too, named or not.
        h.insert("close", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("gzip"));
        h.insert("x-other", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-other"));
    }

    #[test]
    fn upgrade_survives_only_when_asked() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade, X-Hop"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        assert!(is_websocket_upgrade(&http::Method::GET, &h));
        assert!(!is_websocket_upgrade(&http::Method::POST, &h));
        let mut h2c = h.clone();
        h2c.insert(UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_websocket_upgrade(&http::Method::GET, &h2c));
        let mut kept = h.clone();
        strip_hop_by_hop(&mut kept, true);
        assert_eq!(kept[UPGRADE], "websocket");
        assert_eq!(kept[CONNECTION], "upgrade");
        assert!(!kept.contains_key("x-hop"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty());
    }
}
