//! Authenticated encryption for what we hand to browsers: session cookies and per-login
//! state. AES-256-GCM with a random nonce per value; the key is derived (HKDF-SHA256) from
//! `cookie_secret_file` and a purpose label, so a login-state value can never be opened as
//! a session and the raw secret is never a key itself. Each value is bound to a context
//! (the cookie's name) through the associated data: a value moved to another cookie does
//! not open.
//!
//! A value is `base64url(version || nonce || ciphertext || tag)`.

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::hkdf;
use base64ct::{Base64UrlUnpadded, Encoding};

const VERSION: u8 = 1;
const TAG_LEN: usize = 16;

pub struct Sealer {
    key: RandomizedNonceKey,
}

struct KeyLen;

impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        32
    }
}

impl Sealer {
    pub fn new(secret: &[u8], purpose: &str) -> Result<Sealer, String> {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"sallyport cookie keys");
        let info = [purpose.as_bytes()];
        let mut key = [0u8; 32];
        salt.extract(secret)
            .expand(&info, KeyLen)
            .and_then(|okm| okm.fill(&mut key))
            .map_err(|_| "deriving the cookie key failed".to_string())?;
        let key = RandomizedNonceKey::new(&AES_256_GCM, &key)
            .map_err(|_| "the cookie key was refused".to_string())?;
        Ok(Sealer { key })
    }

    pub fn seal(&self, context: &str, plaintext: &[u8]) -> String {
        let mut in_out = plaintext.to_vec();
        // Sealing with a valid key and a buffer we own has no failure mode but an
        // exhausted random source, which aws-lc treats as fatal anyway.
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(context.as_bytes()), &mut in_out)
            .expect("AES-GCM sealing");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + in_out.len());
        out.push(VERSION);
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&in_out);
        Base64UrlUnpadded::encode_string(&out)
    }

    /// The plaintext, or `None` for anything we did not seal for this context (tampered,
    /// truncated, another key, another cookie).
    pub fn open(&self, context: &str, sealed: &str) -> Option<Vec<u8>> {
        let mut bytes = Base64UrlUnpadded::decode_vec(sealed).ok()?;
        if bytes.len() < 1 + NONCE_LEN + TAG_LEN || bytes[0] != VERSION {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&bytes[1..1 + NONCE_LEN]).ok()?;
        let plaintext = self
            .key
            .open_in_place(
                nonce,
                Aad::from(context.as_bytes()),
                &mut bytes[1 + NONCE_LEN..],
            )
            .ok()?;
        Some(plaintext.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_open_only_with_their_key_purpose_and_context() {
        let secret = [7u8; 32];
        let sealer = Sealer::new(&secret, "session").unwrap();
        let sealed = sealer.seal("cookie-a", b"hello");
        assert_eq!(sealer.open("cookie-a", &sealed).unwrap(), b"hello");
        assert!(sealer.open("cookie-b", &sealed).is_none());
        assert!(
            Sealer::new(&secret, "login")
                .unwrap()
                .open("cookie-a", &sealed)
                .is_none()
        );
        assert!(
            Sealer::new(&[8u8; 32], "session")
                .unwrap()
                .open("cookie-a", &sealed)
                .is_none()
        );
        // Two seals of one value differ (random nonce).
        assert_ne!(sealed, sealer.seal("cookie-a", b"hello"));
    }

    #[test]
    fn any_changed_byte_is_refused_without_panicking() {
        let sealer = Sealer::new(&[1u8; 48], "session").unwrap();
        let sealed = sealer.seal("c", b"{\"user\":\"alice\"}");
        let raw = Base64UrlUnpadded::decode_vec(&sealed).unwrap();
        for i in 0..raw.len() {
            let mut tampered = raw.clone();
            tampered[i] ^= 0x01;
            let text = Base64UrlUnpadded::encode_string(&tampered);
            assert!(sealer.open("c", &text).is_none(), "byte {i}");
        }
        for bad in [
            "",
            "AA",
            "!!!!",
            &sealed[..sealed.len() - 1],
            "A".repeat(5000).as_str(),
        ] {
            assert!(sealer.open("c", bad).is_none());
        }
    }
}
