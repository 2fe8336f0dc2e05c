//! The file format: one `user:hash` per line.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use super::{HashError, PasswordHash, Strength};

/// A loaded htpasswd file.
#[derive(Clone)]
pub struct HtpasswdFile {
    entries: HashMap<String, Entry>,
    warnings: Vec<String>,
    dummy: OnceLock<PasswordHash>,
}

#[derive(Clone)]
struct Entry {
    line: usize,
    hash: PasswordHash,
    /// Identifies the exact hash text, so a credential cache can tell that a user's
    /// password changed (or the user was removed and re-added) without keeping hashes.
    fingerprint: u64,
}

/// A line that could not be loaded. The message names the line and, for
/// duplicates, the user; it never contains a hash or a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    line: usize,
    kind: LoadErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoadErrorKind {
    MissingColon,
    EmptyUsername,
    ControlInUsername,
    DuplicateUser {
        user: String,
        first_line: usize,
    },
    /// `{PLAIN}pass:more`: nginx would take `pass` as the password, a human
    /// probably meant `pass:more`. Guessing either way could admit a
    /// shorter password than intended, so the line is refused.
    AmbiguousPlain,
    Hash(HashError),
}

impl LoadError {
    /// 1-based line number.
    pub fn line(&self) -> usize {
        self.line
    }

    pub fn kind(&self) -> &LoadErrorKind {
        &self.kind
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: ", self.line)?;
        match &self.kind {
            LoadErrorKind::MissingColon => f.write_str("expected user:hash, found no ':'"),
            LoadErrorKind::EmptyUsername => f.write_str("empty username"),
            LoadErrorKind::ControlInUsername => {
                f.write_str("username contains a control character")
            }
            LoadErrorKind::DuplicateUser { user, first_line } => {
                write!(f, "user {user:?} is already defined on line {first_line}")
            }
            LoadErrorKind::AmbiguousPlain => {
                f.write_str("{PLAIN} password is followed by ':', so it is unclear where it ends")
            }
            LoadErrorKind::Hash(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            LoadErrorKind::Hash(e) => Some(e),
            _ => None,
        }
    }
}

impl HtpasswdFile {
    /// Parses a whole file. Blank lines and lines starting with `#` are
    /// skipped; fields after the hash (`user:hash:comment`) are ignored with
    /// a warning, which is safe because no hash format contains `:`.
    pub fn parse(text: &str, allow_plain: bool) -> Result<HtpasswdFile, LoadError> {
        let mut entries: HashMap<String, Entry> = HashMap::new();
        let mut warnings = Vec::new();
        // Editors on Windows may prepend a BOM, which would otherwise end up
        // in the first username.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);

        // `lines` also drops one trailing '\r', so CRLF files work.
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let err = |kind| LoadError {
                line: line_no,
                kind,
            };
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, rest) = line
                .split_once(':')
                .ok_or(err(LoadErrorKind::MissingColon))?;
            if user.is_empty() {
                return Err(err(LoadErrorKind::EmptyUsername));
            }
            // The name travels to the upstream in a header, where control characters
            // cannot be represented (and CR/LF would be an injection).
            if user.chars().any(char::is_control) {
                return Err(err(LoadErrorKind::ControlInUsername));
            }
            let (hash_text, extra) = match rest.split_once(':') {
                Some((hash_text, _)) => (hash_text, true),
                None => (rest, false),
            };
            if extra && hash_text.starts_with("{PLAIN}") {
                return Err(err(LoadErrorKind::AmbiguousPlain));
            }
            let hash = PasswordHash::parse(hash_text, allow_plain)
                .map_err(|e| err(LoadErrorKind::Hash(e)))?;
            if let Some(first) = entries.get(user) {
                return Err(err(LoadErrorKind::DuplicateUser {
                    user: user.to_owned(),
                    first_line: first.line,
                }));
            }
            if extra {
                warnings.push(format!(
                    "line {line_no}: ignored extra ':'-separated fields after the hash"
                ));
            }
            if hash.strength() == Strength::Weak {
                warnings.push(format!(
                    "line {line_no}: user {user:?} uses the weak {} scheme; re-hash with htpasswd -B",
                    hash.scheme_name()
                ));
            }
            entries.insert(
                user.to_owned(),
                Entry {
                    line: line_no,
                    hash,
                    fingerprint: fingerprint(hash_text),
                },
            );
        }

        let file = HtpasswdFile {
            entries,
            warnings,
            dummy: OnceLock::new(),
        };
        // Built now, not on the first unknown user, so that request does not take
        // measurably longer than the ones after it.
        let _ = file.dummy.set(file.dummy_hash());
        Ok(file)
    }

    /// The fingerprint of `user`'s current hash, if the user exists.
    pub fn fingerprint(&self, user: &str) -> Option<u64> {
        self.entries.get(user).map(|e| e.fingerprint)
    }

    pub fn get(&self, user: &str) -> Option<&PasswordHash> {
        self.entries.get(user).map(|e| &e.hash)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Human-readable notes worth logging at startup: weak schemes and
    /// ignored extra fields. Never contains hashes.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// `(line, user, scheme)` of every entry with a [`Strength::Weak`]
    /// scheme, in file order.
    pub fn weak_entries(&self) -> Vec<(usize, &str, &'static str)> {
        let mut weak: Vec<_> = self
            .entries
            .iter()
            .filter(|(_, e)| e.hash.strength() == Strength::Weak)
            .map(|(user, e)| (e.line, user.as_str(), e.hash.scheme_name()))
            .collect();
        weak.sort_unstable_by_key(|&(line, _, _)| line);
        weak
    }

    /// A fresh dummy imitating the most expensive entry (bcrypt cost 5 for
    /// an empty file), for unknown users. Costs one hash computation; prefer
    /// [`HtpasswdFile::verify`], which builds it once and caches it.
    pub fn dummy_hash(&self) -> PasswordHash {
        self.entries
            .values()
            // Ties go to the earliest line so the choice is deterministic.
            .max_by(|a, b| {
                a.hash
                    .work_estimate()
                    .cmp(&b.hash.work_estimate())
                    .then(b.line.cmp(&a.line))
            })
            .map_or_else(PasswordHash::default_dummy, |e| e.hash.dummy_like())
    }

    /// Checks `user`'s password. For an unknown user a dummy hash is checked
    /// instead, so that the answer takes about as long as for a real user
    /// (the first unknown user also pays for building the dummy once).
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.entries.get(user) {
            Some(entry) => entry.hash.verify(password),
            None => {
                let dummy = self.dummy.get_or_init(|| self.dummy_hash());
                std::hint::black_box(dummy.verify(password));
                false
            }
        }
    }
}

fn fingerprint(hash_text: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // Keyed per process: the value only has to differ when the hash text differs.
    static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    let mut hasher = KEYS.get_or_init(Default::default).build_hasher();
    hasher.write(hash_text.as_bytes());
    hasher.finish()
}

impl fmt::Debug for HtpasswdFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HtpasswdFile")
            .field("users", &self.entries.len())
            .field("warnings", &self.warnings.len())
            .finish_non_exhaustive()
    }
}
