//! Forward-auth mode: nginx `auth_request`, ingress-nginx, Traefik `ForwardAuth` and Caddy
//! `forward_auth` ask `/.sallyport/auth` whether a request may pass, and we answer with a
//! status and identity headers instead of proxying.
//!
//! The original request is described by headers only a trusted proxy may set:
//! `X-Original-URL` + `X-Original-Method` (nginx, ingress-nginx), or
//! `X-Forwarded-Proto` / `-Host` / `-Uri` / `-Method` (Traefik, Caddy). Anything we
//! cannot parse is refused: an unreadable URL must never come out as "allowed".

use http::header::HeaderValue;
use http::{HeaderMap, Method, Response, StatusCode, Uri};

use crate::auth::Authenticated;
use crate::config::IdentityHeaders;
use crate::proxy::{ProxyBody, full_body};

/// The request the proxy in front of us is deciding about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    pub method: Method,
    /// Host as sent, possibly with a port; `None` when the proxy did not say.
    pub host: Option<String>,
    /// The raw path (no query), still to be normalised like any request path.
    pub path: String,
    /// The path with its query, as the client sent it (where to return after a login).
    pub path_and_query: String,
    /// nginx `auth_request` cannot pass a redirect on (it wants 2xx, 401 or 403; its
    /// `auth-signin` does the redirect), whereas Traefik and Caddy hand our answer to the
    /// client as is.
    pub can_redirect: bool,
}

pub fn original_request(headers: &HeaderMap) -> Result<Original, &'static str> {
    let text = |name: &str| -> Result<Option<&str>, &'static str> {
        let mut values = headers.get_all(name).iter();
        let first = values.next();
        if values.next().is_some() {
            return Err("A forward-auth header appears more than once.");
        }
        first
            .map(|v| v.to_str().map(str::trim))
            .transpose()
            .map_err(|_| "A forward-auth header is not readable text.")
    };
    let method_from = |value: Option<&str>| -> Result<Method, &'static str> {
        match value {
            None => Ok(Method::GET),
            Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| "The original method is not an HTTP method."),
        }
    };

    if let Some(url) = text("x-original-url")? {
        let uri: Uri = url
            .parse()
            .map_err(|_| "X-Original-URL is not a valid URL.")?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err("X-Original-URL must be an absolute http(s) URL.");
        };
        if !matches!(scheme, "http" | "https") || authority.as_str().contains('@') {
            return Err("X-Original-URL must be an absolute http(s) URL without userinfo.");
        }
        return Ok(Original {
            method: method_from(text("x-original-method")?)?,
            host: Some(authority.as_str().to_string()),
            path: uri.path().to_string(),
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
            can_redirect: false,
        });
    }
    if let Some(forwarded_uri) = text("x-forwarded-uri")? {
        // An origin-form target: a path, optionally with a query.
        let uri: Uri = forwarded_uri
            .parse()
            .map_err(|_| "X-Forwarded-Uri is not a valid request target.")?;
        // `//host/x` reads as a network path to some parsers: refuse the ambiguity.
        if uri.scheme().is_some()
            || uri.authority().is_some()
            || !forwarded_uri.starts_with('/')
            || forwarded_uri.starts_with("//")
        {
            return Err("X-Forwarded-Uri must be a path such as /app/page?x=1.");
        }
        let host = match text("x-forwarded-host")? {
            None => None,
            Some(h) => {
                let authority: http::uri::Authority = h
                    .parse()
                    .map_err(|_| "X-Forwarded-Host is not a valid host.")?;
                if authority.as_str().contains('@') {
                    return Err("X-Forwarded-Host is not a valid host.");
                }
                Some(authority.as_str().to_string())
            }
        };
        if text("x-forwarded-proto")?
            .is_some_and(|p| !p.eq_ignore_ascii_case("http") && !p.eq_ignore_ascii_case("https"))
        {
            return Err("X-Forwarded-Proto must be http or https.");
        }
        return Ok(Original {
            method: method_from(text("x-forwarded-method")?)?,
            host,
            path: uri.path().to_string(),
            path_and_query: forwarded_uri.to_string(),
            can_redirect: true,
        });
    }
    Err("A forward-auth request needs X-Original-URL (nginx) or X-Forwarded-Uri (Traefik, Caddy).")
}

/// The 200 that lets the request through, with who it is for the proxy to pass on:
/// the configured identity headers and oauth2-proxy's `X-Auth-Request-*` names.
pub fn allowed(who: Option<&Authenticated>, names: &IdentityHeaders) -> Response<ProxyBody> {
    let mut response = Response::new(full_body(bytes::Bytes::new()));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    let Some(who) = who else {
        return response;
    };
    let mut set = |names: [&str; 2], value: Option<&str>| {
        let Some(v) = value.and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) else {
            return;
        };
        for name in names {
            if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
                headers.insert(name, v.clone());
            }
        }
    };
    let groups = (!who.groups().is_empty()).then(|| who.groups().join(","));
    set(
        [names.user.as_str(), "x-auth-request-user"],
        Some(who.user()),
    );
    set([names.email.as_str(), "x-auth-request-email"], who.email());
    set(
        [names.groups.as_str(), "x-auth-request-groups"],
        groups.as_deref(),
    );
    set(
        [
            names.preferred_username.as_str(),
            "x-auth-request-preferred-username",
        ],
        who.preferred_username(),
    );
    for (name, value) in who.extra() {
        if let Ok(v) = HeaderValue::from_bytes(value.as_bytes()) {
            headers.insert(name.clone(), v);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn nginx_style_original_url() {
        let o = original_request(&headers(&[
            ("x-original-url", "https://app.test/admin/x?y=1"),
            ("x-original-method", "post"),
        ]))
        .unwrap();
        assert_eq!(o.method, Method::POST);
        assert_eq!(o.host.as_deref(), Some("app.test"));
        assert_eq!(o.path, "/admin/x");
        assert_eq!(o.path_and_query, "/admin/x?y=1");
        assert!(!o.can_redirect);
    }

    #[test]
    fn traefik_and_caddy_style_forwarded_headers() {
        let o = original_request(&headers(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "app.test:8443"),
            ("x-forwarded-uri", "/a/b?c"),
            ("x-forwarded-method", "DELETE"),
        ]))
        .unwrap();
        assert_eq!(o.method, Method::DELETE);
        assert_eq!(o.host.as_deref(), Some("app.test:8443"));
        assert_eq!(o.path, "/a/b");
        assert_eq!(o.path_and_query, "/a/b?c");
        assert!(o.can_redirect);
    }

    #[test]
    fn anything_unreadable_is_refused() {
        for bad in [
            vec![],
            vec![("x-original-url", "not a url")],
            vec![("x-original-url", "http://[::1")],
            vec![("x-original-url", "/relative/only")],
            vec![("x-original-url", "ftp://app.test/x")],
            vec![("x-original-url", "https://user@app.test/x")],
            vec![
                ("x-original-url", "https://app.test/x"),
                ("x-original-url", "https://app.test/y"),
            ],
            vec![
                ("x-original-url", "https://app.test/x"),
                ("x-original-method", "G E T"),
            ],
            vec![("x-forwarded-uri", "https://other.test/x")],
            vec![("x-forwarded-uri", "//evil.test/x")],
            vec![("x-forwarded-uri", "/x"), ("x-forwarded-host", "a b")],
        ] {
            assert!(original_request(&headers(&bad)).is_err(), "{bad:?}");
        }
    }
}
