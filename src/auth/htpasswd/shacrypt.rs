//! SHA-256-crypt and SHA-512-crypt (`$5$`, `$6$`, optionally with
//! `rounds=N$`), written by htpasswd -2/-5, `openssl passwd -5/-6` and glibc.
//!
//! Verification goes through the `sha-crypt` crate's MCF verifier. That
//! verifier only accepts salts made of `[A-Za-z0-9./+=,-]` and refuses an
//! empty salt, while glibc and OpenSSL accept any salt bytes but `$`
//! (e.g. `openssl passwd -6 -salt 'abc!'`). For those strings we still use
//! the crate's core function and only redo the final encoding here.

use base64ct::{Base64ShaCrypt, Encoding};
use sha_crypt::{Algorithm, Params, PasswordHasher, PasswordVerifier, ShaCrypt};
use subtle::ConstantTimeEq;

use super::{HashError, random_bytes};

const MAX_SALT_LEN: usize = 16;
const MAX_CHECKSUM_LEN: usize = 64;

/// The byte order in which crypt(3) serialises each digest, three bytes
/// per group, least significant first (from the glibc reference code).
const SHA256_ORDER: [usize; 32] = [
    20, 10, 0, 11, 1, 21, 2, 22, 12, 23, 13, 3, 14, 4, 24, 5, 25, 15, 26, 16, 6, 17, 7, 27, 8, 28,
    18, 29, 19, 9, 30, 31,
];
const SHA512_ORDER: [usize; 64] = [
    42, 21, 0, 1, 43, 22, 23, 2, 44, 45, 24, 3, 4, 46, 25, 26, 5, 47, 48, 27, 6, 7, 49, 28, 29, 8,
    50, 51, 30, 9, 10, 52, 31, 32, 11, 53, 54, 33, 12, 13, 55, 34, 35, 14, 56, 57, 36, 15, 16, 58,
    37, 38, 17, 59, 60, 39, 18, 19, 61, 40, 41, 20, 62, 63,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Variant {
    Sha256,
    Sha512,
}

impl Variant {
    fn scheme(self) -> &'static str {
        match self {
            Variant::Sha256 => "sha256-crypt",
            Variant::Sha512 => "sha512-crypt",
        }
    }

    fn magic(self) -> &'static str {
        match self {
            Variant::Sha256 => "$5$",
            Variant::Sha512 => "$6$",
        }
    }

    fn checksum_len(self) -> usize {
        match self {
            Variant::Sha256 => 32,
            Variant::Sha512 => 64,
        }
    }

    fn algorithm(self) -> Algorithm {
        match self {
            Variant::Sha256 => Algorithm::Sha256Crypt,
            Variant::Sha512 => Algorithm::Sha512Crypt,
        }
    }
}

#[derive(Clone)]
pub(super) struct ShaCryptHash {
    encoded: String,
    variant: Variant,
    params: Params,
    rounds: u32,
    salt: Vec<u8>,
    /// Decoded checksum, in serialisation order; only the first
    /// `variant.checksum_len()` bytes are used.
    checksum: [u8; MAX_CHECKSUM_LEN],
    /// Whether the crate's MCF verifier can parse `encoded`.
    crate_verifiable: bool,
}

impl ShaCryptHash {
    pub(super) fn parse(s: &str, variant: Variant) -> Result<Self, HashError> {
        let malformed = |reason| HashError::Malformed {
            scheme: variant.scheme(),
            reason,
        };
        let rest = s
            .strip_prefix(variant.magic())
            .ok_or(malformed("wrong prefix"))?;
        let fields: Vec<&str> = rest.split('$').collect();
        let (rounds, salt, checksum) = match fields.as_slice() {
            [salt, checksum] => (None, *salt, *checksum),
            [rounds, salt, checksum] => (Some(*rounds), *salt, *checksum),
            _ => return Err(malformed("expected [rounds=N$]salt$checksum")),
        };

        // glibc clamps out-of-range rounds when hashing and writes the
        // clamped value, and libxcrypt refuses them; either way a stored
        // out-of-range value never came from a real implementation.
        let rounds = match rounds {
            None => Params::RECOMMENDED_ROUNDS,
            Some(field) => field
                .strip_prefix("rounds=")
                .filter(|n| !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<u32>().ok())
                .ok_or(malformed("rounds field is not rounds=<number>"))?,
        };
        let params =
            Params::new(rounds).map_err(|_| malformed("rounds is outside 1000..999999999"))?;

        if salt.len() > MAX_SALT_LEN {
            return Err(malformed("salt is longer than 16 characters"));
        }

        let mut buf = [0u8; MAX_CHECKSUM_LEN];
        let decoded = Base64ShaCrypt::decode(checksum, &mut buf)
            .map_err(|_| malformed("checksum is not valid crypt base64"))?;
        if decoded.len() != variant.checksum_len() {
            return Err(malformed("checksum has the wrong length"));
        }

        let crate_verifiable = !salt.is_empty()
            && !salt.starts_with("rounds=")
            && salt
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"./+=,-".contains(&b));

        Ok(Self {
            encoded: s.to_owned(),
            variant,
            params,
            rounds,
            salt: salt.as_bytes().to_vec(),
            checksum: buf,
            crate_verifiable,
        })
    }

    pub(super) fn verify(&self, password: &[u8]) -> bool {
        if self.crate_verifiable {
            ShaCrypt::from(self.variant.algorithm())
                .verify_password(password, self.encoded.as_str())
                .is_ok()
        } else {
            self.verify_with_core(password)
        }
    }

    fn verify_with_core(&self, password: &[u8]) -> bool {
        match self.variant {
            Variant::Sha256 => {
                let raw = sha_crypt::sha256_crypt(password, &self.salt, self.params);
                let ordered = SHA256_ORDER.map(|i| raw[i]);
                ordered.ct_eq(&self.checksum[..32]).into()
            }
            Variant::Sha512 => {
                let raw = sha_crypt::sha512_crypt(password, &self.salt, self.params);
                let ordered = SHA512_ORDER.map(|i| raw[i]);
                ordered.ct_eq(&self.checksum[..]).into()
            }
        }
    }

    pub(super) fn dummy_like(&self) -> Option<Self> {
        // 12 random bytes encode to the full 16-character salt.
        let hash = ShaCrypt::new(self.variant.algorithm(), self.params)
            .hash_password_with_salt(&random_bytes::<16>(), &random_bytes::<12>())
            .ok()?;
        Self::parse(hash.as_ref(), self.variant).ok()
    }

    pub(super) fn scheme(&self) -> &'static str {
        self.variant.scheme()
    }

    pub(super) fn rounds(&self) -> u32 {
        self.rounds
    }

    #[cfg(test)]
    pub(super) fn verify_without_crate_parser(&self, password: &[u8]) -> bool {
        self.verify_with_core(password)
    }

    #[cfg(test)]
    pub(super) fn crate_verifiable(&self) -> bool {
        self.crate_verifiable
    }
}
