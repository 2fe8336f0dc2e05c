//! The unsalted and salted SHA-1 formats (`{SHA}` from htpasswd -s,
//! `{SSHA}` from nginx/OpenLDAP tooling) and `{PLAIN}`. All three are fast to
//! brute-force; they exist only so old files keep working.

use base64ct::{Base64, Encoding};
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

use super::{HashError, fill_random, random_bytes};

const DIGEST_LEN: usize = 20;

fn sha1(parts: &[&[u8]]) -> [u8; DIGEST_LEN] {
    let mut hasher = Sha1::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

#[derive(Clone)]
pub(super) struct Sha1Hash {
    digest: [u8; DIGEST_LEN],
}

impl Sha1Hash {
    /// `encoded` is what follows `{SHA}`.
    pub(super) fn parse(encoded: &str) -> Result<Self, HashError> {
        let malformed = |reason| HashError::Malformed {
            scheme: "sha1",
            reason,
        };
        // One spare byte so a too-long value is caught as a length error
        // rather than an opaque decoder error.
        let mut buf = [0u8; DIGEST_LEN + 1];
        let decoded = Base64::decode(encoded, &mut buf).map_err(|_| malformed("invalid base64"))?;
        let digest = decoded
            .try_into()
            .map_err(|_| malformed("digest is not 20 bytes"))?;
        Ok(Self { digest })
    }

    pub(super) fn verify(&self, password: &[u8]) -> bool {
        sha1(&[password]).ct_eq(&self.digest).into()
    }

    /// A hash of a random password; also serves as `dummy_like`, since
    /// `{SHA}` has no parameters to copy.
    pub(super) fn random() -> Self {
        Self {
            digest: sha1(&[&random_bytes::<16>()]),
        }
    }
}

#[derive(Clone)]
pub(super) struct SshaHash {
    digest: [u8; DIGEST_LEN],
    salt: Vec<u8>,
}

impl SshaHash {
    /// `encoded` is what follows `{SSHA}`: base64(SHA1(password + salt) + salt).
    pub(super) fn parse(encoded: &str) -> Result<Self, HashError> {
        let malformed = |reason| HashError::Malformed {
            scheme: "ssha",
            reason,
        };
        let decoded = Base64::decode_vec(encoded).map_err(|_| malformed("invalid base64"))?;
        // nginx accepts any salt length, including none; so do we, so that
        // files moved from nginx keep working.
        let (digest, salt) = decoded
            .split_first_chunk::<DIGEST_LEN>()
            .ok_or(malformed("shorter than a SHA-1 digest"))?;
        Ok(Self {
            digest: *digest,
            salt: salt.to_vec(),
        })
    }

    pub(super) fn verify(&self, password: &[u8]) -> bool {
        sha1(&[password, &self.salt]).ct_eq(&self.digest).into()
    }

    pub(super) fn dummy_like(&self) -> Self {
        let mut salt = vec![0u8; self.salt.len()];
        fill_random(&mut salt);
        Self {
            digest: sha1(&[&random_bytes::<16>(), &salt]),
            salt,
        }
    }
}

/// Keeps only a digest of the plain-text password: comparing digests hides
/// the password's length from timing and keeps the plain text out of memory.
#[derive(Clone)]
pub(super) struct PlainHash {
    digest: [u8; DIGEST_LEN],
}

impl PlainHash {
    /// `password` is what follows `{PLAIN}`.
    pub(super) fn parse(password: &str) -> Result<Self, HashError> {
        if password.is_empty() {
            return Err(HashError::Malformed {
                scheme: "plain",
                reason: "empty password",
            });
        }
        Ok(Self {
            digest: sha1(&[password.as_bytes()]),
        })
    }

    pub(super) fn verify(&self, password: &[u8]) -> bool {
        sha1(&[password]).ct_eq(&self.digest).into()
    }

    pub(super) fn dummy_like(&self) -> Self {
        Self {
            digest: sha1(&[&random_bytes::<16>()]),
        }
    }
}
