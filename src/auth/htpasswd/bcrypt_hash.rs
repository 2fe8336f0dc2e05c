//! bcrypt (`$2y$` from htpasswd -B, `$2a$`/`$2b$` from other tools), via the
//! `bcrypt` crate.
//!
//! bcrypt only reads the first 72 bytes of a password. Apache (through
//! APR's crypt_blowfish) does the same, and we keep that behaviour rather
//! than reject long passwords, so a file written by htpasswd verifies exactly
//! as Apache would verify it.

use super::{HashError, random_bytes};

const SCHEME: &str = "bcrypt";
const MIN_COST: u32 = 4;
/// bcrypt allows 31, but every step doubles the work: 17 (Apache `htpasswd -C`'s limit)
/// already takes seconds per login, and a 31 would stall loading for days, since loading
/// computes a dummy hash at the file's highest cost.
const MAX_COST: u32 = 17;

/// Only the prefixes whose meaning is settled. `$2x$` marks hashes made by
/// crypt_blowfish's sign-extension bug; the crate would treat it like `$2b$`,
/// silently verifying 8-bit passwords differently, so it is refused instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Prefix {
    A,
    B,
    Y,
}

impl Prefix {
    fn crate_version(self) -> bcrypt::Version {
        match self {
            Prefix::A => bcrypt::Version::TwoA,
            Prefix::B => bcrypt::Version::TwoB,
            Prefix::Y => bcrypt::Version::TwoY,
        }
    }
}

#[derive(Clone)]
pub(super) struct Bcrypt {
    encoded: String,
    prefix: Prefix,
    cost: u32,
}

impl Bcrypt {
    pub(super) fn parse(s: &str, prefix: Prefix) -> Result<Self, HashError> {
        let malformed = |reason| HashError::Malformed {
            scheme: SCHEME,
            reason,
        };
        if s.len() != 60 {
            return Err(malformed("not 60 characters long"));
        }
        // The crate checks the layout too, but not the cost range (it
        // reports that only when verifying), and we want every problem
        // reported at load time.
        let cost = s
            .get(4..6)
            .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|c| c.parse::<u32>().ok())
            .ok_or(malformed("cost is not two digits"))?;
        if !(MIN_COST..=MAX_COST).contains(&cost) {
            return Err(malformed(
                "cost is outside 04..17 (Apache htpasswd's range)",
            ));
        }
        let parts: bcrypt::HashParts = s
            .parse()
            .map_err(|_| malformed("invalid salt or checksum encoding"))?;
        if parts.get_cost() != cost {
            return Err(malformed("cost is not two digits"));
        }
        Ok(Self {
            encoded: s.to_owned(),
            prefix,
            cost,
        })
    }

    pub(super) fn verify(&self, password: &[u8]) -> bool {
        // Parse already rejected everything `verify` can fail on, so an
        // error here cannot happen; treating it as a mismatch is still the
        // only safe answer.
        bcrypt::verify(password, &self.encoded).unwrap_or(false)
    }

    pub(super) fn dummy_like(&self) -> Option<Self> {
        let parts =
            bcrypt::hash_with_salt(random_bytes::<16>(), self.cost, random_bytes::<16>()).ok()?;
        Self::parse(
            &parts.format_for_version(self.prefix.crate_version()),
            self.prefix,
        )
        .ok()
    }

    pub(super) fn cost(&self) -> u32 {
        self.cost
    }
}
