//! Where a user may be sent after login or logout (`rd`). Open redirects are the classic
//! hole in login proxies, so the rule is narrow: a path on our own origin, or an absolute
//! URL whose host is `public_url`'s or one the operator allowed. Everything else (network
//! paths, backslashes, escapes that decode to either, whitespace and control bytes,
//! userinfo, other schemes, look-alike hosts) becomes `/`.

use http::Uri;
use http::uri::PathAndQuery;

use crate::routes;

/// Bounded so a login cookie carrying it stays small (see `MAX_PENDING_LOGINS`).
const MAX_TARGET_BYTES: usize = 1024;

#[derive(Debug, Clone)]
pub struct RedirectPolicy {
    scheme: String,
    /// `host[:port]` of public_url, lowercase, default port dropped.
    authority: String,
    /// Exact hosts (`host` or `host:port`) and `.suffix` entries.
    allowed_hosts: Vec<String>,
    /// public_url without a trailing slash, for making paths absolute.
    origin: String,
}

impl RedirectPolicy {
    pub fn new(public_url: &Uri, allowed_hosts: &[String]) -> RedirectPolicy {
        let scheme = public_url.scheme_str().unwrap_or("https").to_string();
        let authority = public_url
            .authority()
            .map(|a| canonical_authority(&scheme, a.as_str()))
            .unwrap_or_default();
        RedirectPolicy {
            origin: format!(
                "{scheme}://{}",
                public_url.authority().map_or("", |a| a.as_str())
            ),
            scheme,
            authority,
            allowed_hosts: allowed_hosts.to_vec(),
        }
    }

    /// `rd` if it is a safe place to send the user, else `/`.
    pub fn target(&self, rd: Option<&str>) -> String {
        rd.and_then(|rd| self.safe(rd))
            .unwrap_or_else(|| "/".to_string())
    }

    /// A target as an absolute URL (IdPs want one for `post_logout_redirect_uri`).
    pub fn absolute(&self, target: &str) -> String {
        if target.starts_with('/') {
            format!("{}{target}", self.origin)
        } else {
            target.to_string()
        }
    }

    /// `public_url` joined with a path of ours.
    pub fn url_for(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    /// The authority of `public_url`, as compared against.
    pub fn is_public_host(&self, authority: &str) -> bool {
        canonical_authority(&self.scheme, authority) == self.authority
    }

    fn safe(&self, rd: &str) -> Option<String> {
        if rd.is_empty() || rd.len() > MAX_TARGET_BYTES {
            return None;
        }
        // Printable ASCII only: no spaces, tabs, newlines or NULs (browsers strip some of
        // them, turning "/\t/evil" into "//evil"), and no Unicode look-alikes of '/'.
        if !rd.bytes().all(|b| (0x21..=0x7e).contains(&b)) || rd.contains('\\') {
            return None;
        }
        if rd.starts_with('/') {
            if rd.starts_with("//") {
                return None;
            }
            return self.safe_path(rd).then(|| rd.to_string());
        }
        let uri: Uri = rd.parse().ok()?;
        let scheme = uri.scheme_str()?;
        if !scheme.eq_ignore_ascii_case(&self.scheme) {
            return None;
        }
        let authority = uri.authority()?.as_str();
        if authority.contains('@') || !well_formed_authority(authority) {
            return None;
        }
        let canonical = canonical_authority(&self.scheme, authority);
        if canonical != self.authority && !self.host_allowed(&canonical) {
            return None;
        }
        let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let path = if path.is_empty() { "/" } else { path };
        if !self.safe_path(path) {
            return None;
        }
        let fragment = rd.find('#').map_or("", |i| &rd[i..]);
        Some(format!("{}://{canonical}{path}{fragment}", self.scheme))
    }

    /// A path (with query) that stays a path: no encoded slashes or backslashes, no
    /// double-encoding that would decode to one, and not one of our own endpoints (a
    /// login that returns to the login page is a loop).
    fn safe_path(&self, path_and_query: &str) -> bool {
        if path_and_query.parse::<PathAndQuery>().is_err() {
            return false;
        }
        let path = path_and_query
            .split(['?', '#'])
            .next()
            .unwrap_or(path_and_query);
        if path.to_ascii_lowercase().contains("%25") {
            return false;
        }
        match routes::normalize_path(path) {
            Ok(normalized) => !routes::prefix_matches("/.sallyport", &normalized),
            Err(_) => false,
        }
    }

    fn host_allowed(&self, authority: &str) -> bool {
        let host = match authority.rsplit_once(':') {
            Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
            Some(_) => return false,
            None => authority,
        };
        self.allowed_hosts.iter().any(|allowed| {
            if let Some(suffix) = allowed.strip_prefix('.') {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix)
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            } else {
                allowed == authority
            }
        })
    }
}

/// `host[:port]` with a DNS name or a bracketed IPv6 literal and a numeric port. Browsers
/// and `http::Uri` end the host at the first ':', `host_allowed` at the last one, so in
/// `evil.example:1.allowed.example:8443` the check would see an allowed host where the
/// browser sees `evil.example`; only the port saves that from being an open redirect, and
/// an authority that no parser reads the same way has no business in a redirect.
fn well_formed_authority(authority: &str) -> bool {
    let (host_ok, port) = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((literal, port)) => (
                !literal.is_empty()
                    && literal
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.')),
                port,
            ),
            None => return false,
        },
        None => {
            let (host, port) = authority.split_at(authority.find(':').unwrap_or(authority.len()));
            (
                !host.is_empty()
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')),
                port,
            )
        }
    };
    host_ok
        && (port.is_empty()
            || port
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
}

/// `host[:port]` lowercased, without the scheme's default port.
fn canonical_authority(scheme: &str, authority: &str) -> String {
    let lower = authority.to_ascii_lowercase();
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        ":443"
    } else {
        ":80"
    };
    match lower.strip_suffix(default_port) {
        Some(host) => host.to_string(),
        None => lower,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RedirectPolicy {
        RedirectPolicy::new(
            &"https://app.example.com".parse().unwrap(),
            &[
                "other.example.com".to_string(),
                ".apps.example.com".to_string(),
            ],
        )
    }

    #[test]
    fn same_origin_paths_and_allowed_hosts_are_kept() {
        let p = policy();
        for (rd, expected) in [
            ("/", "/"),
            ("/app/page?x=1&y=%20z", "/app/page?x=1&y=%20z"),
            ("/a/b/#frag", "/a/b/#frag"),
            ("/%7Euser/", "/%7Euser/"),
            (
                "https://app.example.com/x?y=1",
                "https://app.example.com/x?y=1",
            ),
            ("https://APP.example.com:443/x", "https://app.example.com/x"),
            ("https://app.example.com", "https://app.example.com/"),
            ("https://other.example.com/z", "https://other.example.com/z"),
            ("https://a.apps.example.com/", "https://a.apps.example.com/"),
        ] {
            assert_eq!(p.target(Some(rd)), expected, "{rd}");
        }
    }

    #[test]
    fn hostile_targets_fall_back_to_the_root() {
        let p = policy();
        let hostile = [
            "",
            "//evil.example",
            "//evil.example/path",
            "///evil.example",
            "////evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "\\/evil.example",
            "/\\/evil.example",
            "/%2F%2Fevil.example",
            "/%2f%2fevil.example",
            "/%5Cevil.example",
            "/%5cevil.example",
            "/%252F%252Fevil.example",
            "/%09/evil.example",
            "/\t/evil.example",
            "/ /evil.example",
            " /evil",
            "/evil\n",
            "/\r\nLocation: https://evil.example",
            "/%0d%0aSet-Cookie:x=1",
            "/%00",
            "https://evil.example",
            "https://evil.example/",
            "http://evil.example",
            "HTTPS://evil.example",
            "https:evil.example",
            "https:/evil.example",
            "https:\\\\evil.example",
            "https://app.example.com@evil.example/",
            "https://user:pw@app.example.com/",
            "https://app.example.com.evil.example/",
            "https://evilapp.example.com/",
            "https://app.example.co/",
            "https://example.com/",
            "https://apps.example.com/",
            "https://x.apps.example.com.evil.example/",
            "https://app.example.com:8443/",
            "http://app.example.com/",
            "ftp://app.example.com/",
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "javascript://app.example.com/%0aalert(1)",
            "data:text/html,<script>alert(1)</script>",
            "vbscript:msgbox(1)",
            "evil.example",
            "evil.example/path",
            "./evil",
            "../evil",
            "?x=1",
            "#/evil",
            "/\u{ff0f}evil.example",
            "/\u{2215}evil.example",
            "https://evil\u{3002}example/",
            "https://app.example.com\\@evil.example/",
            "/.sallyport/login?rd=/x",
            "/.sallyport/logout",
            "/a/../.sallyport/callback",
            "/%2E%2E/.sallyport/login",
            &format!("/{}", "a".repeat(3000)),
        ];
        assert!(hostile.len() >= 40);
        for rd in hostile {
            assert_eq!(p.target(Some(rd)), "/", "{rd:?}");
        }
        assert_eq!(p.target(None), "/");
    }

    /// Found by fuzz/fuzz_targets/redirect.rs: the allow-list saw the host up to the last
    /// ':', browsers see it up to the first. Browsers then refuse the non-numeric port, so
    /// this was not an open redirect, but nothing else stood in the way.
    #[test]
    fn hosts_are_read_up_to_the_first_colon() {
        let p = RedirectPolicy::new(
            &"https://app.example.com".parse().unwrap(),
            &[".allowed.example".to_string()],
        );
        for rd in [
            "https://xLLLjavascript:aler(1)[]LLLLLLLLLL.allowed.example:83/p",
            "https://evil.example:1.allowed.example:8443/",
            "https://evil.example:.allowed.example/",
            "https://app.example.com:/",
            "https://[::1/",
            "https://a(b).allowed.example/",
        ] {
            assert_eq!(p.target(Some(rd)), "/", "{rd:?}");
        }
        for (rd, expected) in [
            (
                "https://x.allowed.example:8443/p",
                "https://x.allowed.example:8443/p",
            ),
            (
                "https://x_y.allowed.example/",
                "https://x_y.allowed.example/",
            ),
            ("https://app.example.com:443/a", "https://app.example.com/a"),
        ] {
            assert_eq!(p.target(Some(rd)), expected, "{rd:?}");
        }
    }

    #[test]
    fn absolute_forms_use_public_url() {
        let p = policy();
        assert_eq!(p.absolute("/bye"), "https://app.example.com/bye");
        assert_eq!(
            p.absolute("https://other.example.com/"),
            "https://other.example.com/"
        );
        assert!(p.is_public_host("APP.example.com:443"));
        assert!(!p.is_public_host("app.example.com:8443"));
    }
}
