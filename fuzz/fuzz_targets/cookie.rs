//! Session cookies, from the `Cookie` header to a `Session`.
//!
//! The first input byte picks the mode:
//! - even: the rest is a `Cookie` header. It must split into sane pairs, and whatever
//!   session value it carries must not open: the fuzzer cannot forge AES-GCM, so a value
//!   that opens means the sealing is broken.
//! - odd: the rest is a plaintext we seal ourselves. It must survive the cookie round
//!   trip (chunking included) byte for byte, open only in its own context, and reach
//!   the session JSON decoder, which must agree with serde on what is a session.
#![no_main]

use std::sync::LazyLock;

use http::HeaderMap;
use http::header::{COOKIE, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sallyport::auth::oidc::cookies::{CookieJar, request_cookies};
use sallyport::auth::oidc::seal::Sealer;
use sallyport::auth::oidc::store::{Session, open_session};

/// A fixed test key: the fuzzer must not be able to open values, not because it lacks
/// the key but because it cannot forge a tag.
static SEALER: LazyLock<Sealer> =
    LazyLock::new(|| Sealer::new(b"0123456789abcdef0123456789abcdef", "session").unwrap());
const MAX_SESSION_BYTES: usize = 8192;
static JAR: LazyLock<CookieJar> = LazyLock::new(|| CookieJar::new(true, MAX_SESSION_BYTES));

fn header_map(values: &[HeaderValue]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for v in values {
        headers.append(COOKIE, v.clone());
    }
    headers
}

fn from_header(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let headers = header_map(&[value]);
    let cookies = request_cookies(&headers);
    assert!(cookies.len() <= 256, "{} pairs kept", cookies.len());
    for (name, value) in &cookies {
        assert!(!name.contains(';') && !value.contains(';'));
        assert_eq!(*name, name.trim());
    }
    let jar = &*JAR;
    let Some(value) = jar.session_value(&cookies) else {
        return;
    };
    assert!(
        jar.has_session(&cookies),
        "a session value without a session cookie"
    );
    assert!(
        SEALER.open(&jar.session, &value).is_none(),
        "a forged value opened: {value:?}"
    );
    assert!(open_session(&SEALER, &jar.session, &value).is_none());
    // Clearing names each session cookie once.
    let cleared = jar.clear_session(&cookies);
    assert!(!cleared.is_empty());
    for c in &cleared {
        let text = c.to_str().unwrap();
        assert!(text.starts_with(jar.session.as_str()) && text.contains("Max-Age=0"));
    }
}

fn sealed_round_trip(plaintext: &[u8]) {
    let jar = &*JAR;
    let sealed = SEALER.seal(&jar.session, plaintext);
    assert_eq!(
        SEALER.open(&jar.session, &sealed).as_deref(),
        Some(plaintext)
    );
    // Bound to its cookie: the same value under another name, or as a Redis reference,
    // does not open.
    assert!(
        SEALER
            .open(&format!("{}:ref", jar.session), &sealed)
            .is_none()
    );
    assert!(SEALER.open(&jar.login_prefix, &sealed).is_none());

    let decoded = serde_json::from_slice::<Session>(plaintext).ok();
    let opened = open_session(&SEALER, &jar.session, &sealed);
    assert_eq!(
        opened.is_some(),
        decoded.is_some(),
        "open_session and serde disagree"
    );
    if let Some(session) = opened {
        // What the proxy writes back must read back the same.
        let json = serde_json::to_vec(&session).unwrap();
        let again = open_session(&SEALER, &jar.session, &SEALER.seal(&jar.session, &json))
            .expect("a re-sealed session did not open");
        assert_eq!(serde_json::to_vec(&again).unwrap(), json);
    }

    // As the browser stores and returns it: Set-Cookie, then one Cookie header.
    let Some(set_cookies) = jar.store_session(&sealed, 60, &[]) else {
        assert!(
            sealed.len() > MAX_SESSION_BYTES,
            "a {}-byte value was refused",
            sealed.len()
        );
        return;
    };
    let pairs: Vec<&str> = set_cookies
        .iter()
        .map(|c| c.to_str().unwrap().split(';').next().unwrap())
        .collect();
    let headers = header_map(&[HeaderValue::from_str(&pairs.join("; ")).unwrap()]);
    let cookies = request_cookies(&headers);
    let returned = jar.session_value(&cookies);
    assert_eq!(
        returned.as_deref(),
        Some(sealed.as_str()),
        "chunking lost bytes"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        from_header(rest);
    } else {
        sealed_round_trip(rest);
    }
});
