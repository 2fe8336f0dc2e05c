//! `normalize_path`: the one path both route matching and the upstream request use. On
//! success the result is canonical (a fixed point), so no upstream that normalises again
//! can end up somewhere the route table did not choose.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sallyport::routes::{normalize_path, normalize_route_prefix, prefix_matches};

fn is_upper_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'A'..=b'F').contains(&b)
}

fn check_canonical(raw: &str, out: &str) {
    let fail = |why: &str| panic!("{raw:?} -> {out:?}: {why}");
    if !out.starts_with('/') {
        fail("does not start with '/'");
    }
    if out.contains("//") {
        fail("has an empty segment");
    }
    let segments: Vec<&str> = out.split('/').skip(1).collect();
    // A trailing '/' leaves one empty last segment, which is fine.
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        if matches!(*segment, "." | "..") {
            fail("has a dot segment");
        }
        // Servlet containers drop ";params" before resolving dots.
        if matches!(segment.split(';').next(), Some("." | "..")) && segment.contains(';') {
            fail("has a dot segment with parameters");
        }
        if segment.is_empty() && i != last {
            fail("has an empty segment");
        }
    }
    let bytes = out.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        // What an origin-form path may carry unencoded: no query, fragment, backslash,
        // space, control or non-ASCII byte.
        if !(0x21..=0x7e).contains(&b) || matches!(b, b'?' | b'#' | b'\\') {
            fail("has a byte that needs escaping");
        }
        if b == b'%' {
            let (Some(&hi), Some(&lo)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
                fail("has a truncated escape");
                unreachable!();
            };
            if !is_upper_hex(hi) || !is_upper_hex(lo) {
                fail("has an escape that is not upper-case hex");
            }
            let value = u8::from_str_radix(&out[i + 1..i + 3], 16).unwrap();
            if value.is_ascii_alphanumeric() || b"-._~".contains(&value) {
                fail("keeps an unreserved character escaped");
            }
            if value < 0x20 || value == 0x7f || value == b'/' || value == b'\\' {
                fail("keeps an ambiguous escape");
            }
        }
    }
    if out.parse::<http::uri::PathAndQuery>().is_err() {
        fail("is not a valid request path");
    }
    match normalize_path(out) {
        Ok(again) if again == out => {}
        again => panic!("{raw:?} -> {out:?} -> {again:?}: not idempotent"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(out) = normalize_path(raw) {
        check_canonical(raw, &out);
        // Matching is by whole segments: a path always matches itself and "/".
        assert!(prefix_matches(&out, &out) && prefix_matches("/", &out));
    }
    // Route prefixes come from the config file, where any UTF-8 is possible.
    if let Ok(prefix) = normalize_route_prefix(raw) {
        check_canonical(raw, &prefix);
        assert!(
            prefix == "/" || !prefix.ends_with('/'),
            "{raw:?} -> {prefix:?}"
        );
        assert_eq!(normalize_route_prefix(&prefix).as_ref(), Ok(&prefix));
    }
});
