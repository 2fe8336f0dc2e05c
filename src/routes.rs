//! Path normalisation and the route table.
//!
//! A request path is normalised exactly once, and the same normalised path is used both to
//! pick the route and to build the upstream request. If matching and forwarding saw two
//! different paths, `/public/..%2Fadmin` could match a public route and reach a protected
//! one upstream; that class of bypass is closed here by construction.
//!
//! Rules: unreserved percent-escapes (`%41` -> `A`, `%2E` -> `.`) are decoded; other escapes
//! are kept with upper-case hex; raw non-ASCII bytes, spaces, `<`, `>` and `` ` `` are
//! escaped (`/café` -> `/caf%C3%A9`); runs of `/` collapse to one; `.` and `..` segments are
//! resolved (never above the root). Encoded `/`, `\` and NUL, a raw `\` and control bytes
//! are rejected, because upstreams disagree about what they mean.

use std::fmt;

use crate::config::RouteConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotOriginForm,
    BadEscape,
    AmbiguousByte,
    DotSegmentWithParams,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotOriginForm => "the request path must start with '/'",
            PathError::BadEscape => "the request path has a malformed percent-escape",
            PathError::AmbiguousByte => {
                "the request path contains an encoded slash, backslash or control character"
            }
            PathError::DotSegmentWithParams => {
                "the request path has a dot segment with ';' parameters"
            }
        })
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

/// Normalises the path part of a request target (no query, no fragment).
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    // Pass 1: decode unreserved escapes, canonicalise the rest, reject ambiguous bytes.
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex_value),
                    bytes.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let value = hi << 4 | lo;
                if is_unreserved(value) {
                    decoded.push(value as char);
                } else if matches!(value, b'/' | b'\\') || value < 0x20 || value == 0x7f {
                    return Err(PathError::AmbiguousByte);
                } else {
                    push_escape(&mut decoded, value);
                }
                i += 3;
            }
            b'\\' => return Err(PathError::AmbiguousByte),
            b if b < 0x20 || b == 0x7f => return Err(PathError::AmbiguousByte),
            b'?' | b'#' => break,
            // Raw UTF-8 (http::Uri and httparse admit it) and the few printable bytes a
            // URI cannot carry raw, which only a configured route prefix can contain. As
            // escapes they mean the same to an upstream and match the escaped spelling of
            // the same path; pushed as chars, each byte would become a Latin-1 character.
            b' ' | b'<' | b'>' | b'`' | 0x80..=0xff => {
                push_escape(&mut decoded, b);
                i += 1;
            }
            _ => {
                decoded.push(char::from(b));
                i += 1;
            }
        }
    }
    // Pass 2: collapse slashes and resolve dot segments.
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        // Servlet containers strip ";params" from each segment before resolving dots, so
        // "/public/..;/admin" is "/admin" to them; such segments are refused.
        if seg.contains(';') && matches!(seg.split(';').next(), Some("." | "..")) {
            return Err(PathError::DotSegmentWithParams);
        }
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let trailing_slash = decoded.len() > 1
        && (decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/.."))
        && !segments.is_empty();
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// Normalises a configured route prefix: same rules as a request path, then the trailing
/// slash is dropped so `/api` and `/api/` configure the same segment-aware prefix.
pub fn normalize_route_prefix(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if raw.contains(['?', '#']) {
        return Err("a route path cannot contain '?' or '#'".into());
    }
    let norm = normalize_path(raw).map_err(|e| format!("{e}"))?;
    if norm.len() > 1 {
        Ok(norm.trim_end_matches('/').to_string())
    } else {
        Ok(norm)
    }
}

/// `true` when `path` is `prefix` or lies below it segment-wise: `/api` matches `/api`,
/// `/api/x` and `/api;jsessionid=1` (servlet containers serve that as `/api`), not `/apix`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.len() > prefix.len()
            && path.starts_with(prefix)
            && matches!(path.as_bytes()[prefix.len()], b'/' | b';'))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`; matches one or more labels in front.
    Wildcard(String),
}

impl HostPattern {
    pub fn parse(raw: &str) -> Result<HostPattern, String> {
        let h = raw.trim().to_ascii_lowercase();
        let valid_name = |s: &str| {
            !s.is_empty()
                && s.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        };
        if let Some(rest) = h.strip_prefix("*.") {
            if valid_name(rest) {
                return Ok(HostPattern::Wildcard(format!(".{rest}")));
            }
        } else if valid_name(&h) {
            return Ok(HostPattern::Exact(h));
        }
        Err("must be a host name like \"app.example.com\" or \"*.example.com\" (no port, no scheme)".into())
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }

    fn rank(&self) -> u8 {
        match self {
            HostPattern::Exact(_) => 2,
            HostPattern::Wildcard(_) => 1,
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

/// Lower-cases a Host / `:authority` value and drops the port; `None` if it is not a
/// plausible host (so it cannot match any host-bound route).
pub fn host_for_matching(authority: &str) -> Option<String> {
    let a = authority.trim();
    let host = if let Some(rest) = a.strip_prefix('[') {
        // IPv6 literal: keep the brackets off, drop any port.
        rest.split(']').next()?
    } else {
        a.rsplit_once(':').map_or(a, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                a
            }
        })
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

/// Routes are chosen by host first (exact beats wildcard beats none), then by the longest
/// prefix, as nginx picks a server block before a location.
pub struct RouteTable<R> {
    entries: Vec<(Option<HostPattern>, String, R)>,
}

impl<R> RouteTable<R> {
    pub fn new(entries: Vec<(Option<HostPattern>, String, R)>) -> Self {
        Self { entries }
    }

    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&R> {
        self.entries
            .iter()
            .filter(|(pattern, prefix, _)| {
                let host_ok = match (pattern, host) {
                    (None, _) => true,
                    (Some(p), Some(h)) => p.matches(h),
                    (Some(_), None) => false,
                };
                host_ok && prefix_matches(prefix, path)
            })
            .max_by_key(|(pattern, prefix, _)| {
                (pattern.as_ref().map_or(0, HostPattern::rank), prefix.len())
            })
            .map(|(_, _, r)| r)
    }

    pub fn iter(&self) -> impl Iterator<Item = &R> {
        self.entries.iter().map(|(_, _, r)| r)
    }
}

impl RouteTable<()> {
    pub fn describe(routes: &[RouteConfig]) -> Vec<String> {
        routes
            .iter()
            .map(|r| {
                let rules = crate::policy::Policy::new(r)
                    .describe()
                    .map(|d| format!("; {d}"))
                    .unwrap_or_default();
                format!(
                    "{}{} -> {} ({}{rules})",
                    r.host.as_ref().map(|h| h.to_string()).unwrap_or_default(),
                    r.path,
                    crate::proxy::describe_upstream(&r.upstream),
                    match r.auth {
                        crate::config::RouteAuth::Public => "public",
                        crate::config::RouteAuth::Required => "auth required",
                    }
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_dots_slashes_and_unreserved_escapes() {
        let cases = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("//a///b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/../../etc", "/etc"),
            ("/a/b/..", "/a/"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/%2E%2E/admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/a%20b", "/a%20b"),
            ("/a%3ab", "/a%3Ab"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/a?x=1", "/a"),
            ("/.", "/"),
            ("/..", "/"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_path(input).as_deref(), Ok(want), "input {input}");
        }
    }

    /// Found by fuzz/fuzz_targets/path.rs: raw UTF-8 (which hyper accepts in a request
    /// line) was re-encoded byte by byte as Latin-1, so the upstream got `/cafÃ©` for
    /// `/café` and normalising the result again changed it once more.
    #[test]
    fn raw_non_ascii_and_unsendable_bytes_are_escaped() {
        let cases = [
            ("/p\u{35e}b", "/p%CD%9Eb"),
            ("/café", "/caf%C3%A9"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a b/<x>/`y`", "/a%20b/%3Cx%3E/%60y%60"),
            ("/é/../x", "/x"),
            // Printable bytes http::Uri accepts raw stay as they are.
            ("/a\"{}|^[]", "/a\"{}|^[]"),
        ];
        for (input, want) in cases {
            let normalized = normalize_path(input);
            assert_eq!(normalized.as_deref(), Ok(want), "input {input:?}");
            assert_eq!(normalize_path(want).as_deref(), Ok(want), "not idempotent");
        }
        assert_eq!(normalize_route_prefix("/café/").unwrap(), "/caf%C3%A9");
    }

    #[test]
    fn rejects_ambiguous_paths() {
        for bad in [
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
            "/a%00",
            "/a%0a",
            "/a%",
            "/a%zz",
            "/a%4",
            "/public/..;/admin",
            "/x/.;a/y",
        ] {
            assert!(normalize_path(bad).is_err(), "should reject {bad}");
        }
        assert_eq!(normalize_path("*"), Err(PathError::NotOriginForm));
        assert_eq!(
            normalize_path("example.com:443"),
            Err(PathError::NotOriginForm)
        );
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/"));
        assert!(prefix_matches("/api", "/api/v1"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/admin", "/admin;jsessionid=1"));
        assert!(!prefix_matches("/admin", "/admin2;x"));
        assert!(!prefix_matches("/api", "/"));
        assert_eq!(normalize_route_prefix("/api/").unwrap(), "/api");
    }

    #[test]
    fn host_then_longest_prefix_wins() {
        let table = RouteTable::new(vec![
            (None, "/".to_string(), "default"),
            (None, "/public".to_string(), "public"),
            (
                Some(HostPattern::parse("*.example.com").unwrap()),
                "/".to_string(),
                "wild",
            ),
            (
                Some(HostPattern::parse("app.example.com").unwrap()),
                "/".to_string(),
                "app",
            ),
            (
                Some(HostPattern::parse("app.example.com").unwrap()),
                "/api".to_string(),
                "app-api",
            ),
        ]);
        assert_eq!(table.find(None, "/public/x"), Some(&"public"));
        assert_eq!(table.find(Some("other.org"), "/x"), Some(&"default"));
        assert_eq!(table.find(Some("x.example.com"), "/public"), Some(&"wild"));
        assert_eq!(table.find(Some("example.com"), "/"), Some(&"default"));
        assert_eq!(
            table.find(Some("app.example.com"), "/api/v1"),
            Some(&"app-api")
        );
        assert_eq!(table.find(Some("app.example.com"), "/apiary"), Some(&"app"));
    }

    #[test]
    fn hosts_are_lowercased_and_portless() {
        assert_eq!(
            host_for_matching("App.Example.COM:8443").as_deref(),
            Some("app.example.com")
        );
        assert_eq!(host_for_matching("[::1]:8443").as_deref(), Some("::1"));
        assert_eq!(
            host_for_matching("example.com.").as_deref(),
            Some("example.com")
        );
        assert_eq!(host_for_matching(""), None);
    }
}
