//! Argon2 PHC strings (`$argon2id$v=19$m=..,t=..,p=..$salt$hash`, also
//! argon2i/argon2d), as written by argon2-cffi, libargon2's CLI and PHP.

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};

use super::{HashError, fill_random, random_bytes};

const SCHEME: &str = "argon2";

/// Each verification allocates `m` KiB. The crate accepts up to 4 TiB, and
/// a failed allocation aborts the process, so a typo in the file must not
/// get that far. 4 GiB is twice RFC 9106's largest recommended setting.
const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;

#[derive(Clone)]
pub(super) struct Argon2Hash {
    phc: PasswordHash,
    algorithm: Algorithm,
    version: Version,
    params: Params,
    salt_len: usize,
}

impl Argon2Hash {
    pub(super) fn parse(s: &str) -> Result<Self, HashError> {
        let malformed = |reason| HashError::Malformed {
            scheme: SCHEME,
            reason,
        };
        let mut phc = PasswordHash::new(s).map_err(|_| malformed("not a valid PHC string"))?;
        let algorithm = Algorithm::new(phc.algorithm.as_str())
            .map_err(|_| malformed("unknown argon2 variant"))?;
        // libargon2 reads a missing `v=` as version 16 (its first release),
        // whereas the crate would assume 19 and never match such a hash.
        let version_number = *phc.version.get_or_insert(0x10);
        let version =
            Version::try_from(version_number).map_err(|_| malformed("version is not 16 or 19"))?;
        let params = Params::try_from(&phc).map_err(|_| malformed("invalid m, t or p"))?;
        if params.m_cost() > MAX_MEMORY_KIB {
            return Err(malformed("memory cost is above 4 GiB"));
        }
        let salt_len = phc
            .salt
            .as_ref()
            .map(|salt| salt.len())
            .ok_or(malformed("missing salt"))?;
        if salt_len < argon2::MIN_SALT_LEN {
            return Err(malformed("salt is shorter than 8 bytes"));
        }
        if phc.hash.is_none() {
            return Err(malformed("missing hash"));
        }
        Ok(Self {
            phc,
            algorithm,
            version,
            params,
            salt_len,
        })
    }

    pub(super) fn verify(&self, password: &[u8]) -> bool {
        // Algorithm, version and params come from the PHC string itself.
        Argon2::default()
            .verify_password(password, &self.phc)
            .is_ok()
    }

    pub(super) fn dummy_like(&self) -> Option<Self> {
        let mut salt = vec![0u8; self.salt_len];
        fill_random(&mut salt);
        let phc = Argon2::new(self.algorithm, self.version, self.params.clone())
            .hash_password_with_salt(&random_bytes::<16>(), &salt)
            .ok()?;
        Self::parse(&phc.to_string()).ok()
    }

    /// (m KiB, t passes, p lanes)
    pub(super) fn costs(&self) -> (u32, u32, u32) {
        (
            self.params.m_cost(),
            self.params.t_cost(),
            self.params.p_cost(),
        )
    }

    pub(super) fn variant(&self) -> &'static str {
        match self.algorithm {
            Algorithm::Argon2d => "argon2d",
            Algorithm::Argon2i => "argon2i",
            Algorithm::Argon2id => "argon2id",
        }
    }
}
