//! htpasswd files: parsing and password verification.
//!
//! Everything Apache's `htpasswd` writes is understood except crypt(3) DES,
//! plus the formats nginx and common tools add. Every problem with a file is
//! reported when it is loaded, so that [`PasswordHash::verify`] can be a
//! plain `bool` and a bad line can never turn into a request-time failure.
//! Errors never quote a hash or a password, because they end up in logs.
//!
//! | scheme | written by | [`Strength`] |
//! |---|---|---|
//! | bcrypt `$2y$` `$2a$` `$2b$` | `htpasswd -B [-C cost]` | strong |
//! | argon2id/i/d PHC | argon2-cffi, `argon2` CLI, PHP | strong |
//! | sha512-crypt `$6$`, sha256-crypt `$5$` | `htpasswd -5`/`-2 [-r rounds]`, `openssl passwd -6`/`-5` | strong |
//! | apr1 `$apr1$` | `htpasswd -m` (Apache's default), `openssl passwd -apr1` | weak |
//! | md5-crypt `$1$` | `openssl passwd -1` | weak |
//! | sha1 `{SHA}` | `htpasswd -s` | weak |
//! | ssha `{SSHA}` | nginx docs, `slappasswd` | weak |
//! | plain `{PLAIN}` | by hand; only with `allow_plain` | weak |
//!
//! Refused: crypt(3) DES (`htpasswd -d`; its only crate, `pwhash`, has not
//! been released since 2020 and pins deprecated RustCrypto 0.9 crates),
//! `htpasswd -p`'s unprefixed plain text (cannot be told from DES, so it is
//! refused as DES or as an unknown format), `$2x$`, yescrypt and scrypt.

mod apr1;
mod argon2_hash;
mod bcrypt_hash;
mod file;
mod generate;
mod sha;
mod shacrypt;
#[cfg(test)]
mod tests;

use std::fmt;

pub use file::{HtpasswdFile, LoadError, LoadErrorKind};
pub use generate::{BCRYPT_COSTS, NewHash, hash_password};

use apr1::{Flavour, Md5Crypt};
use argon2_hash::Argon2Hash;
use bcrypt_hash::{Bcrypt, Prefix};
use sha::{PlainHash, Sha1Hash, SshaHash};
use shacrypt::{ShaCryptHash, Variant};

/// Whether a scheme resists offline guessing if the file leaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strength {
    Strong,
    /// `{SHA}`, `{SSHA}`, apr1/`$1$` and plain text: cheap enough to
    /// brute-force on a GPU; worth a warning at startup.
    Weak,
}

/// Why a hash string was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HashError {
    /// Nothing after the colon (`htpasswd -p` with an empty password).
    Empty,
    /// Matches no scheme we know.
    UnknownFormat,
    /// Looks like crypt(3) DES: 13 characters of `[./0-9A-Za-z]`.
    DesUnsupported,
    /// A known scheme we deliberately do not verify.
    Unsupported { scheme: &'static str },
    /// `{PLAIN}` without `allow_plain`.
    PlainNotAllowed,
    /// A recognised scheme whose string is not well formed. `reason` is
    /// always a fixed text, never a piece of the input.
    Malformed {
        scheme: &'static str,
        reason: &'static str,
    },
}

impl fmt::Display for HashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashError::Empty => f.write_str("empty password hash"),
            HashError::UnknownFormat => f.write_str(
                "unknown hash format (expected bcrypt, apr1, $1$, {SHA}, {SSHA}, $5$, $6$, \
                 argon2 or {PLAIN})",
            ),
            HashError::DesUnsupported => {
                f.write_str("crypt(3) DES hashes are not supported: re-hash with htpasswd -B")
            }
            HashError::Unsupported { scheme } => {
                write!(
                    f,
                    "{scheme} hashes are not supported: re-hash with htpasswd -B"
                )
            }
            HashError::PlainNotAllowed => f.write_str(
                "{PLAIN} passwords are not allowed unless allow_plain is set: \
                 re-hash with htpasswd -B",
            ),
            HashError::Malformed { scheme, reason } => {
                write!(f, "malformed {scheme} hash: {reason}")
            }
        }
    }
}

impl std::error::Error for HashError {}

/// A parsed, validated password hash.
#[derive(Clone)]
pub struct PasswordHash {
    repr: Repr,
    /// Set on hashes made by [`PasswordHash::dummy_like`].
    dummy: bool,
}

#[derive(Clone)]
enum Repr {
    Bcrypt(Bcrypt),
    Md5Crypt(Md5Crypt),
    Sha1(Sha1Hash),
    Ssha(SshaHash),
    ShaCrypt(ShaCryptHash),
    // Boxed: the parsed PHC string is several times larger than the rest.
    Argon2(Box<Argon2Hash>),
    Plain(PlainHash),
}

impl PasswordHash {
    /// Parses the hash part of an htpasswd line (no trailing `:` fields).
    pub fn parse(s: &str, allow_plain: bool) -> Result<PasswordHash, HashError> {
        let repr = if s.is_empty() {
            return Err(HashError::Empty);
        } else if let Some(prefix) = bcrypt_prefix(s) {
            Repr::Bcrypt(Bcrypt::parse(s, prefix)?)
        } else if s.starts_with("$2x$") {
            return Err(HashError::Unsupported {
                scheme: "bcrypt $2x$",
            });
        } else if s.starts_with("$apr1$") {
            Repr::Md5Crypt(Md5Crypt::parse(s, Flavour::Apr1)?)
        } else if s.starts_with("$1$") {
            Repr::Md5Crypt(Md5Crypt::parse(s, Flavour::Md5Crypt)?)
        } else if s.starts_with("$5$") {
            Repr::ShaCrypt(ShaCryptHash::parse(s, Variant::Sha256)?)
        } else if s.starts_with("$6$") {
            Repr::ShaCrypt(ShaCryptHash::parse(s, Variant::Sha512)?)
        } else if s.starts_with("$argon2") {
            Repr::Argon2(Box::new(Argon2Hash::parse(s)?))
        } else if let Some(rest) = s.strip_prefix("{SHA}") {
            Repr::Sha1(Sha1Hash::parse(rest)?)
        } else if let Some(rest) = s.strip_prefix("{SSHA}") {
            Repr::Ssha(SshaHash::parse(rest)?)
        } else if let Some(rest) = s.strip_prefix("{PLAIN}") {
            if !allow_plain {
                return Err(HashError::PlainNotAllowed);
            }
            Repr::Plain(PlainHash::parse(rest)?)
        } else if s.starts_with("$y$") || s.starts_with("$gy$") {
            // Debian's /etc/shadow default, so people paste these.
            return Err(HashError::Unsupported { scheme: "yescrypt" });
        } else if s.starts_with("$7$") {
            return Err(HashError::Unsupported { scheme: "scrypt" });
        } else if looks_like_des(s) {
            return Err(HashError::DesUnsupported);
        } else {
            return Err(HashError::UnknownFormat);
        };
        Ok(PasswordHash { repr, dummy: false })
    }

    /// Checks `password` against the hash. Never fails: every way a hash can
    /// be unusable was rejected by [`PasswordHash::parse`].
    ///
    /// Takes bytes because Basic credentials need not be UTF-8. For bcrypt
    /// only the first 72 bytes count, as in Apache. The final comparison is
    /// constant-time for every scheme.
    ///
    /// This is deliberately slow for strong schemes; call it off the async
    /// executor (e.g. `spawn_blocking`).
    pub fn verify(&self, password: &[u8]) -> bool {
        let matched = match &self.repr {
            Repr::Bcrypt(h) => h.verify(password),
            Repr::Md5Crypt(h) => h.verify(password),
            Repr::Sha1(h) => h.verify(password),
            Repr::Ssha(h) => h.verify(password),
            Repr::ShaCrypt(h) => h.verify(password),
            Repr::Argon2(h) => h.verify(password),
            Repr::Plain(h) => h.verify(password),
        };
        // black_box keeps the optimiser from skipping the work for dummies,
        // whose whole point is to take as long as a real check.
        std::hint::black_box(matched) && !self.dummy
    }

    pub fn strength(&self) -> Strength {
        match self.repr {
            Repr::Bcrypt(_) | Repr::ShaCrypt(_) | Repr::Argon2(_) => Strength::Strong,
            Repr::Md5Crypt(_) | Repr::Sha1(_) | Repr::Ssha(_) | Repr::Plain(_) => Strength::Weak,
        }
    }

    /// One of "bcrypt", "apr1", "md5-crypt", "sha1", "ssha", "sha256-crypt",
    /// "sha512-crypt", "argon2", "plain".
    pub fn scheme_name(&self) -> &'static str {
        match &self.repr {
            Repr::Bcrypt(_) => "bcrypt",
            Repr::Md5Crypt(h) => h.scheme(),
            Repr::Sha1(_) => "sha1",
            Repr::Ssha(_) => "ssha",
            Repr::ShaCrypt(h) => h.scheme(),
            Repr::Argon2(_) => "argon2",
            Repr::Plain(_) => "plain",
        }
    }

    /// A hash of a random password with this hash's scheme and cost
    /// parameters, for checking a password when the user does not exist so
    /// that the answer takes as long as for a real user.
    ///
    /// As a second guard against misuse, the result's `verify` does all the
    /// work and then always returns `false`.
    pub fn dummy_like(&self) -> PasswordHash {
        let repr = match &self.repr {
            Repr::Bcrypt(h) => h.dummy_like().map(Repr::Bcrypt),
            Repr::Md5Crypt(h) => Some(Repr::Md5Crypt(h.dummy_like())),
            Repr::Sha1(_) => Some(Repr::Sha1(Sha1Hash::random())),
            Repr::Ssha(h) => Some(Repr::Ssha(h.dummy_like())),
            Repr::ShaCrypt(h) => h.dummy_like().map(Repr::ShaCrypt),
            Repr::Argon2(h) => h.dummy_like().map(|d| Repr::Argon2(Box::new(d))),
            Repr::Plain(h) => Some(Repr::Plain(h.dummy_like())),
        };
        // Hashing with already-validated parameters does not fail; if a
        // crate ever did, a copy of this hash costs exactly the same, and
        // the dummy flag keeps it from matching anything.
        PasswordHash {
            repr: repr.unwrap_or_else(|| self.repr.clone()),
            dummy: true,
        }
    }

    /// The default dummy when there is nothing to imitate: bcrypt at
    /// htpasswd -B's default cost.
    fn default_dummy() -> PasswordHash {
        let repr = bcrypt::hash_with_salt(random_bytes::<16>(), 5, random_bytes::<16>())
            .ok()
            .and_then(|p| {
                Bcrypt::parse(&p.format_for_version(bcrypt::Version::TwoY), Prefix::Y).ok()
            })
            .map(Repr::Bcrypt)
            // Unreachable in practice; the dummy flag keeps it from matching.
            .unwrap_or_else(|| Repr::Sha1(Sha1Hash::random()));
        PasswordHash { repr, dummy: true }
    }

    /// Rough cost of one `verify` in nanoseconds on a current x86 core; only
    /// used to rank entries, so the constants need not be precise.
    fn work_estimate(&self) -> u64 {
        match &self.repr {
            Repr::Bcrypt(h) => 50_000u64.saturating_mul(1u64 << h.cost().min(40)),
            Repr::Md5Crypt(h) => u64::from(h.rounds()).saturating_mul(300),
            Repr::ShaCrypt(h) => u64::from(h.rounds()).saturating_mul(500),
            Repr::Argon2(h) => {
                let (m, t, _) = h.costs();
                u64::from(m)
                    .saturating_mul(u64::from(t))
                    .saturating_mul(1_000)
            }
            Repr::Sha1(_) | Repr::Ssha(_) | Repr::Plain(_) => 1_000,
        }
    }

    fn params_summary(&self) -> String {
        match &self.repr {
            Repr::Bcrypt(h) => format!("cost={}", h.cost()),
            Repr::Md5Crypt(h) => format!("rounds={}", h.rounds()),
            Repr::ShaCrypt(h) => format!("rounds={}", h.rounds()),
            Repr::Argon2(h) => {
                let (m, t, p) = h.costs();
                format!("{} m={m},t={t},p={p}", h.variant())
            }
            Repr::Sha1(_) | Repr::Ssha(_) | Repr::Plain(_) => String::new(),
        }
    }
}

/// Shows scheme and cost only: the hash itself is as sensitive as the
/// password for the weak schemes and has no place in logs.
impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordHash")
            .field("scheme", &self.scheme_name())
            .field("params", &self.params_summary())
            .field("dummy", &self.dummy)
            .finish()
    }
}

fn bcrypt_prefix(s: &str) -> Option<Prefix> {
    if s.starts_with("$2y$") {
        Some(Prefix::Y)
    } else if s.starts_with("$2b$") {
        Some(Prefix::B)
    } else if s.starts_with("$2a$") {
        Some(Prefix::A)
    } else {
        None
    }
}

/// crypt(3) DES is exactly 2 salt + 11 checksum characters. htpasswd -p
/// plain text can collide with this shape; we cannot tell them apart and
/// refuse both.
fn looks_like_des(s: &str) -> bool {
    s.len() == 13 && s.bytes().all(|b| apr1::ITOA64.contains(&b))
}

/// Fills `buf` from the OS RNG. The bytes only make dummy hashes' passwords
/// unguessable, and dummies never match anyway, so an RNG failure is not
/// worth refusing to start over: a fixed fallback is acceptable.
fn fill_random(buf: &mut [u8]) {
    if getrandom::fill(buf).is_err() {
        buf.fill(0x5a);
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    fill_random(&mut buf);
    buf
}
