//! `RedirectPolicy::target`: where a user may be sent after login (`rd`). Whatever `rd`
//! is, the answer is a path on our origin that a browser cannot read as another host, or
//! an https URL on `public_url`'s host or an allowed one.
#![no_main]

use std::sync::LazyLock;

use http::Uri;
use libfuzzer_sys::fuzz_target;
use sallyport::auth::oidc::redirect::RedirectPolicy;

const PUBLIC_HOST: &str = "app.example.com";
const ALLOWED_SUFFIX: &str = ".allowed.example";

static POLICY: LazyLock<RedirectPolicy> = LazyLock::new(|| {
    RedirectPolicy::new(
        &format!("https://{PUBLIC_HOST}").parse().unwrap(),
        &[ALLOWED_SUFFIX.to_string()],
    )
});

fn check(rd: &str, target: &str) {
    let fail = |why: &str| panic!("rd {rd:?} -> {target:?}: {why}");
    // Browsers strip tabs and newlines and fold backslashes to slashes, which would turn
    // a harmless-looking path into a network path; none may survive.
    if !target.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        fail("has whitespace, control or non-ASCII bytes");
    }
    if target.contains('\\') {
        fail("has a backslash");
    }
    if target.starts_with('/') {
        if target.starts_with("//") {
            fail("is a network path");
        }
        if target.parse::<Uri>().is_err() {
            fail("does not parse as a URI");
        }
        return;
    }
    let Some(rest) = target.strip_prefix("https://") else {
        fail("neither a path nor an https URL");
        unreachable!();
    };
    let Ok(uri) = target.parse::<Uri>() else {
        fail("does not parse as a URI");
        unreachable!();
    };
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    // The authority as a browser would cut it: up to the first '/', '?' or '#'.
    let browser_authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority != browser_authority {
        fail("the URI parser and a browser disagree about the host");
    }
    if authority.contains('@') {
        fail("has userinfo");
    }
    let host = uri.host().unwrap_or_default();
    let ours = host == PUBLIC_HOST && uri.port().is_none();
    let allowed = host.len() > ALLOWED_SUFFIX.len() && host.ends_with(ALLOWED_SUFFIX);
    if !ours && !allowed {
        fail("names a host that is not allowed");
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        fail("host is not lower-case");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(rd) = std::str::from_utf8(data) else {
        return;
    };
    let target = POLICY.target(Some(rd));
    check(rd, &target);
    // A safe target is kept as it is.
    assert_eq!(POLICY.target(Some(&target)), target, "not a fixed point");
    let absolute = POLICY.absolute(&target);
    assert!(absolute.starts_with("https://"), "{absolute:?}");
    check(rd, &absolute);
});
