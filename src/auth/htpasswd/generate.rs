//! New hashes for `sallyport hash-password`: argon2id by default (OWASP's parameters), or
//! bcrypt in Apache's `$2y$` form so the output also works in Apache and nginx.

use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};

use super::random_bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewHash {
    Argon2id,
    Bcrypt { cost: u32 },
}

pub const BCRYPT_COSTS: std::ops::RangeInclusive<u32> = 4..=31;

pub fn hash_password(password: &[u8], scheme: NewHash) -> Result<String, String> {
    match scheme {
        NewHash::Argon2id => {
            // m = 19 MiB, t = 2, p = 1: OWASP's recommended argon2id minimum.
            let params = Params::new(19 * 1024, 2, 1, None)
                .map_err(|e| format!("argon2 parameters: {e}"))?;
            let phc = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password_with_salt(password, &random_bytes::<16>())
                .map_err(|e| format!("argon2 hashing failed: {e}"))?;
            Ok(phc.to_string())
        }
        NewHash::Bcrypt { cost } => {
            if !BCRYPT_COSTS.contains(&cost) {
                return Err(format!(
                    "bcrypt cost must be between {} and {}",
                    BCRYPT_COSTS.start(),
                    BCRYPT_COSTS.end()
                ));
            }
            let parts = bcrypt::hash_with_salt(password, cost, random_bytes::<16>())
                .map_err(|e| format!("bcrypt hashing failed: {e}"))?;
            Ok(parts.format_for_version(bcrypt::Version::TwoY))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::PasswordHash;
    use super::*;

    #[test]
    fn generated_hashes_verify_and_parse_back() {
        for scheme in [NewHash::Argon2id, NewHash::Bcrypt { cost: 4 }] {
            let hash = hash_password("pässwörd".as_bytes(), scheme).unwrap();
            let parsed = PasswordHash::parse(&hash, false).unwrap();
            assert!(parsed.verify("pässwörd".as_bytes()), "{scheme:?}");
            assert!(!parsed.verify(b"wrong"), "{scheme:?}");
        }
        assert!(
            hash_password(b"x", NewHash::Argon2id)
                .unwrap()
                .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
        );
        assert!(
            hash_password(b"x", NewHash::Bcrypt { cost: 4 })
                .unwrap()
                .starts_with("$2y$04$")
        );
        assert!(hash_password(b"x", NewHash::Bcrypt { cost: 3 }).is_err());
    }
}
