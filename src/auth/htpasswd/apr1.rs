//! MD5-crypt: Apache's `$apr1$` (htpasswd -m, its default) and the
//! FreeBSD/glibc `$1$` it was copied from. The two differ only in the magic
//! string mixed into the first digest. No well-kept crate implements them,
//! so this follows Apache's `apr_md5.c` step by step.

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

use super::{HashError, random_bytes};

/// The crypt(3) base64 alphabet; note it is not RFC 4648's order.
pub(super) const ITOA64: &[u8; 64] =
    b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

const CHECKSUM_LEN: usize = 22;
const MAX_SALT_LEN: usize = 8;
/// Fixed by the algorithm: MD5-crypt has no cost parameter.
const ROUNDS: u32 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Flavour {
    Apr1,
    Md5Crypt,
}

impl Flavour {
    fn magic(self) -> &'static str {
        match self {
            Flavour::Apr1 => "$apr1$",
            Flavour::Md5Crypt => "$1$",
        }
    }

    fn scheme(self) -> &'static str {
        match self {
            Flavour::Apr1 => "apr1",
            Flavour::Md5Crypt => "md5-crypt",
        }
    }
}

#[derive(Clone)]
pub(super) struct Md5Crypt {
    flavour: Flavour,
    salt: Vec<u8>,
    checksum: [u8; CHECKSUM_LEN],
}

impl Md5Crypt {
    /// `s` must start with the flavour's magic; the caller dispatched on it.
    pub(super) fn parse(s: &str, flavour: Flavour) -> Result<Self, HashError> {
        let malformed = |reason| HashError::Malformed {
            scheme: flavour.scheme(),
            reason,
        };
        let rest = s
            .strip_prefix(flavour.magic())
            .ok_or(malformed("wrong prefix"))?;
        let (salt, checksum) = rest
            .split_once('$')
            .ok_or(malformed("missing '$' after the salt"))?;
        // crypt() only ever reads 8 salt bytes and writes back what it read,
        // so anything longer was not produced by a real implementation.
        if salt.len() > MAX_SALT_LEN {
            return Err(malformed("salt is longer than 8 characters"));
        }
        let checksum: [u8; CHECKSUM_LEN] = checksum
            .as_bytes()
            .try_into()
            .map_err(|_| malformed("checksum is not 22 characters"))?;
        if !checksum.iter().all(|c| ITOA64.contains(c)) {
            return Err(malformed("checksum has characters outside ./0-9A-Za-z"));
        }
        // The last character carries only the top 2 bits of a byte; any
        // other value could never be produced and never match.
        if !matches!(checksum[CHECKSUM_LEN - 1], b'.' | b'/' | b'0' | b'1') {
            return Err(malformed("checksum has an impossible final character"));
        }
        Ok(Self {
            flavour,
            salt: salt.as_bytes().to_vec(),
            checksum,
        })
    }

    pub(super) fn verify(&self, password: &[u8]) -> bool {
        let computed = md5_crypt(password, &self.salt, self.flavour.magic().as_bytes());
        computed.ct_eq(&self.checksum).into()
    }

    pub(super) fn dummy_like(&self) -> Self {
        let salt: Vec<u8> = random_bytes::<MAX_SALT_LEN>()
            .iter()
            .map(|b| ITOA64[usize::from(b & 0x3f)])
            .collect();
        let password = random_bytes::<16>();
        let checksum = md5_crypt(&password, &salt, self.flavour.magic().as_bytes());
        Self {
            flavour: self.flavour,
            salt,
            checksum,
        }
    }

    pub(super) fn scheme(&self) -> &'static str {
        self.flavour.scheme()
    }

    pub(super) fn rounds(&self) -> u32 {
        ROUNDS
    }

    #[cfg(test)]
    pub(super) fn same_salt_as(&self, other: &Self) -> bool {
        self.salt == other.salt
    }
}

fn md5_crypt(password: &[u8], salt: &[u8], magic: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(magic);
    ctx.update(salt);

    let mut alt = Md5::new();
    alt.update(password);
    alt.update(salt);
    alt.update(password);
    let alt = alt.finalize();

    for chunk in password.chunks(16) {
        ctx.update(alt.get(..chunk.len()).unwrap_or_default());
    }

    // Apache feeds either a NUL (its zeroed buffer) or the first password
    // byte for each bit of the length; an accident of the original C code
    // that every implementation has to reproduce.
    let first = password.get(..1).unwrap_or_default();
    let mut i = password.len();
    while i != 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(first);
        }
        i >>= 1;
    }
    let mut digest = ctx.finalize();

    for round in 0..ROUNDS {
        let mut ctx = Md5::new();
        if round & 1 == 1 {
            ctx.update(password);
        } else {
            ctx.update(digest);
        }
        if round % 3 != 0 {
            ctx.update(salt);
        }
        if round % 7 != 0 {
            ctx.update(password);
        }
        if round & 1 == 1 {
            ctx.update(digest);
        } else {
            ctx.update(password);
        }
        digest = ctx.finalize();
    }

    let d: [u8; 16] = digest.into();
    let mut out = [0u8; CHECKSUM_LEN];
    let groups = [
        (d[0], d[6], d[12]),
        (d[1], d[7], d[13]),
        (d[2], d[8], d[14]),
        (d[3], d[9], d[15]),
        (d[4], d[10], d[5]),
    ];
    for (slot, (a, b, c)) in out.chunks_exact_mut(4).zip(groups) {
        to64(
            slot,
            (u32::from(a) << 16) | (u32::from(b) << 8) | u32::from(c),
        );
    }
    to64(&mut out[20..], u32::from(d[11]));
    out
}

/// Emits the low 6 bits first, as crypt(3) does.
fn to64(out: &mut [u8], mut value: u32) {
    for slot in out {
        *slot = ITOA64[(value & 0x3f) as usize];
        value >>= 6;
    }
}
