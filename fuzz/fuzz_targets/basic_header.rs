//! `parse_basic`: the token after `Authorization: Basic `.
//!
//! Two views of one input: as a token (what a client sends), and as the decoded
//! `user:password` bytes, encoded here and checked against a model of RFC 7617.
#![no_main]

use base64ct::{Base64, Encoding};
use libfuzzer_sys::fuzz_target;
use sallyport::auth::{Credential, Rejection, parse_basic};

/// `parse_basic`'s bound on the token; restated so a silent change shows up here.
const MAX_BASIC_TOKEN: usize = 4096;

/// RFC 7617: `user-id ":" password`, the user-id UTF-8 (we announce charset="UTF-8"),
/// non-empty, up to the first colon; the password any bytes.
fn model(decoded: &[u8]) -> Option<(String, Vec<u8>)> {
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = std::str::from_utf8(&decoded[..colon]).ok()?;
    (!user.is_empty()).then(|| (user.to_string(), decoded[colon + 1..].to_vec()))
}

fn check_credential(user: &str, password: &[u8]) {
    assert!(!user.is_empty(), "empty username accepted");
    assert!(!user.contains(':'), "username {user:?} contains ':'");
    // The password must never reach a log through `{:?}`.
    let credential = Credential::Basic {
        user: user.to_string(),
        password: password.to_vec(),
    };
    let debug = format!("{credential:?}");
    assert_eq!(debug, format!("Basic {{ user: {user:?}, .. }}"));
}

fuzz_target!(|data: &[u8]| {
    // The input as a token.
    match parse_basic(data) {
        Ok((user, password)) => {
            assert!(!data.is_empty() && data.len() <= MAX_BASIC_TOKEN);
            check_credential(&user, &password);
            let mut raw = user.clone().into_bytes();
            raw.push(b':');
            raw.extend_from_slice(&password);
            let token = Base64::encode_string(&raw);
            // Only canonical base64 decodes, so a credential has exactly one spelling.
            assert_eq!(token.as_bytes(), data, "a non-canonical token was accepted");
            assert_eq!(parse_basic(token.as_bytes()), Ok((user, password)));
        }
        Err(Rejection::Malformed(_)) => {}
        Err(other) => panic!("parse_basic rejected with {other:?}, not Malformed"),
    }

    // The input as decoded credentials.
    let token = Base64::encode_string(data);
    let expected = if token.is_empty() || token.len() > MAX_BASIC_TOKEN {
        None
    } else {
        model(data)
    };
    match (parse_basic(token.as_bytes()), expected) {
        (Ok(got), Some(want)) => {
            check_credential(&got.0, &got.1);
            assert_eq!(got, want);
        }
        (Err(Rejection::Malformed(_)), None) => {}
        (got, want) => panic!("parse_basic gave {got:?}, RFC 7617 says {want:?}"),
    }
});
