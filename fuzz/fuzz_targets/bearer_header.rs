//! `parse_bearer`: the token after `Authorization: Bearer `.
//!
//! The result must be exactly RFC 6750's `b64token` (token68) within our length bound,
//! checked against a model written from the grammar; accepted tokens then go through
//! jsonwebtoken's header decoder, the next thing that reads them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sallyport::auth::jwt::MAX_TOKEN_BYTES;
use sallyport::auth::{Credential, parse_bearer};

/// `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
fn is_b64token(token: &[u8]) -> bool {
    let body = token.iter().take_while(|&&b| b != b'=').count();
    body > 0
        && token[..body]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
        && token[body..].iter().all(|&b| b == b'=')
}

fuzz_target!(|data: &[u8]| {
    let valid = data.len() <= MAX_TOKEN_BYTES && is_b64token(data);
    match parse_bearer(data) {
        Credential::Bearer(token) => {
            assert!(valid, "accepted a token RFC 6750 does not allow");
            assert_eq!(token.as_bytes(), data);
            // Tokens are credentials: `{:?}` must not show them.
            assert_eq!(
                format!("{:?}", Credential::Bearer(token.clone())),
                "Bearer(..)"
            );
            if let Ok(header) = jsonwebtoken::decode_header(&token) {
                // A decoded header has an algorithm; printing it must not panic.
                let _ = format!("{:?}", header.alg);
            }
        }
        Credential::BadBearer(why) => {
            assert!(!valid, "refused a valid token: {why}");
            assert!(!why.is_empty());
        }
        other => panic!("parse_bearer returned {other:?}"),
    }
});
