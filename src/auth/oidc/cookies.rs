//! Reading our cookies from a request and writing them back: attributes, chunking of
//! large values, and clearing what is stale.
//!
//! Browsers drop cookies over about 4 KB, and proxies refuse request headers that grow
//! without bound (oauth2-proxy users know the 431s), so a large session is split into
//! `<name>_0`, `<name>_1`, ... of at most [`CHUNK_BYTES`] each, and a session that would
//! need more than [`MAX_CHUNKS`] is refused at login with advice to use `session_store`.

use http::HeaderMap;
use http::header::{COOKIE, HeaderValue};

pub const CHUNK_BYTES: usize = 3800;
pub const MAX_CHUNKS: usize = 4;
/// Cookie pairs read from one request; more is not a browser.
const MAX_PAIRS: usize = 256;

/// The cookies a request carries, as `(name, value)` pairs.
pub fn request_cookies(headers: &HeaderMap) -> Vec<(&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            Some((name.trim(), value.trim().trim_matches('"')))
        })
        .take(MAX_PAIRS)
        .collect()
}

#[derive(Debug, Clone)]
pub struct CookieJar {
    /// `__Host-` prefixed over HTTPS: the browser then guarantees Secure, Path=/ and no
    /// Domain, so a sibling subdomain cannot plant or overwrite our cookie.
    pub session: String,
    pub login_prefix: String,
    pub secure: bool,
    /// Largest session value stored in cookies, all chunks together.
    max_session_bytes: usize,
}

impl CookieJar {
    pub fn new(secure: bool, max_session_bytes: usize) -> CookieJar {
        let prefix = if secure { "__Host-" } else { "" };
        CookieJar {
            session: format!("{prefix}sallyport_session"),
            login_prefix: format!("{prefix}sallyport_login_"),
            secure,
            max_session_bytes: max_session_bytes.clamp(CHUNK_BYTES, CHUNK_BYTES * MAX_CHUNKS),
        }
    }

    pub fn set(&self, name: &str, value: &str, max_age: u64) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        let text =
            format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}");
        // Names are ours and values base64url: always a valid header value.
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    pub fn clear(&self, name: &str) -> HeaderValue {
        self.set(name, "", 0)
    }

    /// The session value, reassembled from chunks if need be.
    pub fn session_value(&self, cookies: &[(&str, &str)]) -> Option<String> {
        if let Some((_, v)) = cookies.iter().find(|(n, _)| *n == self.session) {
            return Some((*v).to_string());
        }
        let mut value = String::new();
        for i in 0..MAX_CHUNKS {
            let name = format!("{}_{i}", self.session);
            match cookies.iter().find(|(n, _)| *n == name) {
                Some((_, v)) => value.push_str(v),
                None => break,
            }
        }
        (!value.is_empty()).then_some(value)
    }

    /// Whether the request carries any session cookie at all.
    pub fn has_session(&self, cookies: &[(&str, &str)]) -> bool {
        cookies.iter().any(|(n, _)| self.is_session_cookie(n))
    }

    fn is_session_cookie(&self, name: &str) -> bool {
        name == self.session
            || name
                .strip_prefix(&self.session)
                .and_then(|rest| rest.strip_prefix('_'))
                .is_some_and(|i| {
                    !i.is_empty() && i.len() <= 2 && i.bytes().all(|b| b.is_ascii_digit())
                })
    }

    /// Set-Cookie values that store `value` as the session, and clear every session
    /// cookie the request had that the new value does not overwrite. `None` when the value
    /// is too large for cookies.
    pub fn store_session(
        &self,
        value: &str,
        max_age: u64,
        cookies: &[(&str, &str)],
    ) -> Option<Vec<HeaderValue>> {
        if value.len() > self.max_session_bytes {
            return None;
        }
        let mut out = Vec::new();
        let mut written = Vec::new();
        if value.len() <= CHUNK_BYTES {
            out.push(self.set(&self.session, value, max_age));
            written.push(self.session.clone());
        } else {
            let chunks: Vec<&str> = value
                .as_bytes()
                .chunks(CHUNK_BYTES)
                .map(|c| std::str::from_utf8(c).unwrap_or(""))
                .collect();
            for (i, chunk) in chunks.iter().enumerate() {
                let name = format!("{}_{i}", self.session);
                out.push(self.set(&name, chunk, max_age));
                written.push(name);
            }
        }
        for (name, _) in cookies {
            if self.is_session_cookie(name) && !written.iter().any(|w| w == name) {
                out.push(self.clear(name));
            }
        }
        Some(out)
    }

    /// Set-Cookie values clearing every session cookie the request carries.
    pub fn clear_session(&self, cookies: &[(&str, &str)]) -> Vec<HeaderValue> {
        let mut names: Vec<&str> = cookies
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| self.is_session_cookie(n))
            .collect();
        names.sort_unstable();
        names.dedup();
        names.into_iter().map(|n| self.clear(n)).collect()
    }

    pub fn login_cookies<'a>(&self, cookies: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        cookies
            .iter()
            .filter(|(n, _)| n.starts_with(&self.login_prefix))
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(COOKIE, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn large_values_are_chunked_and_reassembled() {
        let jar = CookieJar::new(true, CHUNK_BYTES * MAX_CHUNKS);
        let value = "x".repeat(CHUNK_BYTES * 2 + 10);
        let set = jar.store_session(&value, 60, &[]).unwrap();
        assert_eq!(set.len(), 3);
        assert!(set.iter().all(|c| c.len() < 4000));
        let first = set[0].to_str().unwrap();
        assert!(first.starts_with("__Host-sallyport_session_0="), "{first}");
        for attribute in ["Path=/", "HttpOnly", "SameSite=Lax", "Secure", "Max-Age=60"] {
            assert!(first.contains(attribute), "{attribute}");
        }
        // As a browser sends them back (HTTP/2 may split them over several fields).
        let pairs: Vec<String> = set
            .iter()
            .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_string())
            .collect();
        let h = headers(&[&pairs[..2].join("; "), &pairs[2]]);
        let cookies = request_cookies(&h);
        assert_eq!(jar.session_value(&cookies).unwrap(), value);
    }

    #[test]
    fn a_smaller_session_clears_stale_chunks() {
        let jar = CookieJar::new(true, CHUNK_BYTES * MAX_CHUNKS);
        let h = headers(&[
            "__Host-sallyport_session_0=a; __Host-sallyport_session_1=b; other=1; __Host-sallyport_sessionx=2",
        ]);
        let cookies = request_cookies(&h);
        let set = jar.store_session("small", 60, &cookies).unwrap();
        let text: Vec<&str> = set.iter().map(|v| v.to_str().unwrap()).collect();
        assert!(text[0].starts_with("__Host-sallyport_session=small;"));
        assert!(
            text.iter()
                .any(|t| t.starts_with("__Host-sallyport_session_0=;") && t.contains("Max-Age=0"))
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("__Host-sallyport_session_1=;"))
        );
        assert_eq!(text.len(), 3);
        assert!(
            jar.store_session(&"y".repeat(CHUNK_BYTES * MAX_CHUNKS + 1), 60, &[])
                .is_none()
        );
    }

    #[test]
    fn plain_http_development_drops_the_host_prefix_and_secure() {
        let jar = CookieJar::new(false, CHUNK_BYTES);
        let v = jar.set(&jar.session, "v", 5);
        assert_eq!(
            v.to_str().unwrap(),
            "sallyport_session=v; Path=/; Max-Age=5; HttpOnly; SameSite=Lax"
        );
    }
}
