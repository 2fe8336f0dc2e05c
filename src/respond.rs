//! The one place where a failure becomes an HTTP response. Every status the proxy itself
//! produces (4xx and 5xx) is built here, with a body negotiated from `Accept`: an HTML
//! page for browsers, JSON for API clients, plain text otherwise. Bodies never carry
//! internal details (addresses, OS errors); those go to the log with the request id.

use bytes::Bytes;
use std::sync::Arc;

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS,
    CACHE_CONTROL, CONTENT_TYPE, HeaderValue, LOCATION, RETRY_AFTER, SET_COOKIE, WWW_AUTHENTICATE,
};
use http::{HeaderMap, Response, StatusCode};

use crate::proxy::{ProxyBody, full_body};

/// The schemes a 401 offers, one `WWW-Authenticate` field each, Basic first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Validated at config load to need no escaping inside a quoted-string.
    pub realm: Arc<str>,
    pub basic: bool,
    pub bearer: bool,
    /// RFC 6750 3.1: why a Bearer token was refused; `None` when none was sent.
    pub bearer_error: Option<BearerError>,
}

/// An RFC 6750 error: a code and a fixed description (no quotes or backslashes, so it
/// needs no escaping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BearerError {
    pub code: &'static str,
    pub description: &'static str,
}

impl Challenge {
    pub fn with_bearer_error(&self, code: &'static str, description: &'static str) -> Challenge {
        Challenge {
            bearer_error: Some(BearerError { code, description }),
            ..self.clone()
        }
    }

    fn header_values(&self) -> Vec<HeaderValue> {
        let mut values = Vec::new();
        if self.basic {
            // RFC 7617 section 2.1: charset="UTF-8" tells clients how to encode non-ASCII
            // user names and passwords.
            let v = format!("Basic realm=\"{}\", charset=\"UTF-8\"", self.realm);
            values.extend(HeaderValue::from_str(&v).ok());
        }
        if self.bearer {
            let v = match &self.bearer_error {
                None => format!("Bearer realm=\"{}\"", self.realm),
                Some(e) => format!(
                    "Bearer realm=\"{}\", error=\"{}\", error_description=\"{}\"",
                    self.realm, e.code, e.description
                ),
            };
            values.extend(HeaderValue::from_str(&v).ok());
        }
        values
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No, unusable or wrong credentials. One variant for all of them, on purpose: the
    /// client must not learn which (the reason is logged instead).
    Unauthenticated(Challenge),
    /// Authenticated, but the route's rules say no. `scope` is set when the rule was a
    /// Bearer scope (RFC 6750 `insufficient_scope`).
    Forbidden {
        realm: Arc<str>,
        scope: Option<Arc<str>>,
    },
    BadRequest(&'static str),
    /// Too many failed authentications from this client or for this username.
    TooManyAttempts {
        retry_after_secs: u64,
    },
    NotFound,
    PayloadTooLarge,
    HeadersTooLarge,
    /// A transfer coding other than `chunked`: we cannot decode it, and forwarding it
    /// undecoded would hand the upstream a body it has no way to know is encoded.
    UnsupportedTransferCoding,
    BadGateway,
    GatewayTimeout,
    ServiceUnavailable {
        retry_after_secs: u64,
    },
    /// A browser without a session on an OIDC route: off to the login (302), instead of
    /// a 401 no browser can answer.
    LoginRequired {
        location: HeaderValue,
    },
}

impl Failure {
    pub fn status(&self) -> StatusCode {
        match self {
            Failure::Unauthenticated(c) => match c.bearer_error {
                Some(BearerError {
                    code: "invalid_request",
                    ..
                }) => StatusCode::BAD_REQUEST,
                _ => StatusCode::UNAUTHORIZED,
            },
            Failure::Forbidden { .. } => StatusCode::FORBIDDEN,
            Failure::BadRequest(_) => StatusCode::BAD_REQUEST,
            Failure::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            Failure::NotFound => StatusCode::NOT_FOUND,
            Failure::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Failure::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Failure::UnsupportedTransferCoding => StatusCode::NOT_IMPLEMENTED,
            Failure::BadGateway => StatusCode::BAD_GATEWAY,
            Failure::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Failure::ServiceUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Failure::LoginRequired { .. } => StatusCode::FOUND,
        }
    }

    /// Machine-readable code, in the style of RFC 6750 error codes.
    fn code(&self) -> &'static str {
        match self {
            Failure::Unauthenticated(c) => c.bearer_error.map_or("unauthorized", |e| e.code),
            Failure::Forbidden { scope: Some(_), .. } => "insufficient_scope",
            Failure::Forbidden { .. } => "forbidden",
            Failure::BadRequest(_) => "invalid_request",
            Failure::TooManyAttempts { .. } => "too_many_attempts",
            Failure::NotFound => "not_found",
            Failure::PayloadTooLarge => "payload_too_large",
            Failure::HeadersTooLarge => "headers_too_large",
            Failure::UnsupportedTransferCoding => "unsupported_transfer_coding",
            Failure::BadGateway => "bad_gateway",
            Failure::GatewayTimeout => "gateway_timeout",
            Failure::ServiceUnavailable { .. } => "unavailable",
            Failure::LoginRequired { .. } => "login_required",
        }
    }

    pub fn description(&self) -> &'static str {
        match self {
            Failure::Unauthenticated(c) => c.bearer_error.map_or(
                "Valid credentials are required to access this resource.",
                |e| e.description,
            ),
            Failure::Forbidden { scope: Some(_), .. } => {
                "The token lacks a scope this resource requires."
            }
            Failure::Forbidden { .. } => {
                "You are signed in but not allowed to access this resource."
            }
            Failure::BadRequest(why) => why,
            Failure::TooManyAttempts { .. } => {
                "Too many failed authentication attempts. Try again later."
            }
            Failure::NotFound => "No route is configured for this host and path.",
            Failure::PayloadTooLarge => "The request body is larger than this server accepts.",
            Failure::HeadersTooLarge => "The request headers are larger than this server accepts.",
            Failure::UnsupportedTransferCoding => {
                "The request uses a transfer coding other than chunked."
            }
            Failure::BadGateway => "The upstream service could not be reached.",
            Failure::GatewayTimeout => "The upstream service did not answer in time.",
            Failure::ServiceUnavailable { .. } => {
                "The service is shutting down, overloaded or waiting for the identity provider; try again shortly."
            }
            Failure::LoginRequired { .. } => "Please sign in.",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Html,
    Json,
    Text,
}

/// Picks the representation with the highest `q` among HTML, JSON and plain text; ties go
/// to the one listed first. Anything unparseable is treated as "no preference" (text).
pub fn negotiate(headers: &HeaderMap) -> BodyKind {
    let mut best = (BodyKind::Text, 0.0f32, usize::MAX);
    let mut position = 0usize;
    for value in headers
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        for item in value.split(',') {
            position += 1;
            let mut parts = item.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .or_else(|| p.trim().strip_prefix("Q="))
                })
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0)
                .clamp(0.0, 1.0);
            let kind = match media.as_str() {
                "text/html" | "application/xhtml+xml" => BodyKind::Html,
                "application/json" | "application/problem+json" => BodyKind::Json,
                "text/plain" => BodyKind::Text,
                _ => continue,
            };
            if q > best.1 || (q == best.1 && q > 0.0 && position < best.2) {
                best = (kind, q, position);
            }
        }
    }
    best.0
}

/// `cors_origin`: the request's `Origin` when it is one of `[cors] allowed_origins`, so
/// browser code there can read why it was refused.
pub fn failure_response(
    failure: &Failure,
    kind: BodyKind,
    request_id: &str,
    cors_origin: Option<&HeaderValue>,
) -> Response<ProxyBody> {
    let status = failure.status();
    let (content_type, body) = render_body(
        kind,
        status,
        failure.code(),
        failure.description(),
        request_id,
    );
    let mut response = Response::new(full_body(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if let Some(origin) = cors_origin {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        headers.insert(
            ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("WWW-Authenticate, Retry-After, X-Request-Id"),
        );
        headers.append(http::header::VARY, HeaderValue::from_static("Origin"));
    }
    match failure {
        Failure::ServiceUnavailable { retry_after_secs }
        | Failure::TooManyAttempts { retry_after_secs } => {
            headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        Failure::Unauthenticated(challenge) => {
            for value in challenge.header_values() {
                headers.append(WWW_AUTHENTICATE, value);
            }
        }
        Failure::LoginRequired { location } => {
            headers.insert(LOCATION, location.clone());
        }
        Failure::Forbidden {
            realm,
            scope: Some(scope),
        } => {
            let v = format!(
                "Bearer realm=\"{realm}\", error=\"insufficient_scope\", error_description=\"The token lacks a required scope.\", scope=\"{scope}\""
            );
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.insert(WWW_AUTHENTICATE, v);
            }
        }
        _ => {}
    }
    response
}

/// A 302 from one of our own endpoints (login, callback, logout), with its cookies.
pub fn redirect(
    location: &str,
    set_cookies: Vec<HeaderValue>,
) -> Result<Response<ProxyBody>, Failure> {
    let location = HeaderValue::from_str(location)
        .map_err(|_| Failure::BadRequest("The redirect target is not a valid URL."))?;
    let mut response = Response::new(full_body(Bytes::new()));
    *response.status_mut() = StatusCode::FOUND;
    let headers = response.headers_mut();
    headers.insert(LOCATION, location);
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for cookie in set_cookies {
        headers.append(SET_COOKIE, cookie);
    }
    Ok(response)
}

/// A 200 with a JSON document about the caller (never cached: it is personal).
pub fn json(value: &serde_json::Value) -> Response<ProxyBody> {
    let mut response = Response::new(full_body(Bytes::from(value.to_string())));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn render_body(
    kind: BodyKind,
    status: StatusCode,
    code: &str,
    description: &str,
    request_id: &str,
) -> (&'static str, Bytes) {
    let reason = status.canonical_reason().unwrap_or("Error");
    match kind {
        BodyKind::Json => {
            let body = serde_json::json!({
                "error": code,
                "error_description": description,
                "status": status.as_u16(),
                "request_id": request_id,
            });
            ("application/json", Bytes::from(body.to_string()))
        }
        BodyKind::Html => {
            let page = format!(
                "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{code} {reason}</title>\
                 <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
                 <style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;color:#222}}\
                 small{{color:#777}}</style></head>\n<body><h1>{status_num} {reason}</h1><p>{desc}</p>\
                 <p><small>Request ID: {rid}</small></p></body></html>\n",
                code = status.as_u16(),
                status_num = status.as_u16(),
                reason = html_escape(reason),
                desc = html_escape(description),
                rid = html_escape(request_id),
            );
            ("text/html; charset=utf-8", Bytes::from(page))
        }
        BodyKind::Text => (
            "text/plain; charset=utf-8",
            Bytes::from(format!(
                "{} {reason}\n{description}\nRequest ID: {request_id}\n",
                status.as_u16()
            )),
        ),
    }
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::ACCEPT, v.parse().unwrap());
        h
    }

    #[test]
    fn negotiation_follows_q_values() {
        assert_eq!(negotiate(&HeaderMap::new()), BodyKind::Text);
        assert_eq!(negotiate(&accept("*/*")), BodyKind::Text);
        assert_eq!(negotiate(&accept("application/json")), BodyKind::Json);
        assert_eq!(
            negotiate(&accept(
                "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
            )),
            BodyKind::Html
        );
        assert_eq!(
            negotiate(&accept("text/html;q=0.5, application/json")),
            BodyKind::Json
        );
        assert_eq!(negotiate(&accept("application/json;q=0")), BodyKind::Text);
    }

    #[test]
    fn every_body_names_the_request_id() {
        for kind in [BodyKind::Html, BodyKind::Json, BodyKind::Text] {
            let (_, body) =
                render_body(kind, StatusCode::BAD_GATEWAY, "bad_gateway", "x", "rid-<1>");
            let text = String::from_utf8(body.to_vec()).unwrap();
            assert!(text.contains("rid-"), "{kind:?}: {text}");
            if kind == BodyKind::Html {
                assert!(text.contains("rid-&lt;1&gt;"), "HTML must escape: {text}");
            }
        }
    }
}
