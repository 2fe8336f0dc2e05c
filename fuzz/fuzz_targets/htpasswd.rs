//! `HtpasswdFile::parse`: whatever the file, the result is consistent with the lines it
//! was given, and no error, warning or `Debug` output quotes a hash.
//!
//! Input: the first byte's low bit is `allow_plain`, the rest is the file (UTF-8 only,
//! as the loader reads it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sallyport::auth::htpasswd::{HtpasswdFile, LoadErrorKind, PasswordHash};

/// A non-blank, non-comment line; `entry` is `None` when it has no ':'.
struct Line<'a> {
    number: usize,
    entry: Option<Entry<'a>>,
}

/// `user:hash[:ignored...]`, as the file format defines it.
struct Entry<'a> {
    number: usize,
    user: &'a str,
    /// Everything after the first ':'.
    rest: &'a str,
    hash_text: &'a str,
}

/// The file's own line rules, restated: a BOM is dropped, blank and `#` lines skipped.
fn lines(text: &str) -> (usize, Vec<Line<'_>>) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut total = 0;
    let mut out = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        total = number;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let entry = line.split_once(':').map(|(user, rest)| Entry {
            number,
            user,
            rest,
            hash_text: rest.split_once(':').map_or(rest, |(h, _)| h),
        });
        out.push(Line { number, entry });
    }
    (total, out)
}

/// `parse` hashes a password once with the most expensive entry's parameters (the dummy
/// for unknown users), so a single `$2y$31$` line would stall the fuzzer for days. The
/// parameters are read back through `Debug`, the only public view of them.
fn too_expensive(hash_text: &str, allow_plain: bool) -> bool {
    let Ok(hash) = PasswordHash::parse(hash_text, allow_plain) else {
        return false;
    };
    let debug = format!("{hash:?}");
    let params = debug
        .split("params: \"")
        .nth(1)
        .and_then(|p| p.split('"').next())
        .expect("PasswordHash's Debug no longer shows params; update this target");
    let number = |key: &str| -> u64 {
        params
            .split([' ', ','])
            .find_map(|kv| kv.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {params:?}; update this target"))
    };
    match hash.scheme_name() {
        "bcrypt" => number("cost=") > 6,
        "sha256-crypt" | "sha512-crypt" => number("rounds=") > 20_000,
        "argon2" => number("m=").saturating_mul(number("t=")) > 8_192 || number("p=") > 16,
        _ => false,
    }
}

/// Whether `needle` appears in `message` as quoted secret material. Short or spaced
/// texts are skipped: they occur naturally in the fixed messages ("(expected" is both a
/// plausible garbage hash and a word of the unknown-format message).
fn leaks(message: &str, needle: &str) -> bool {
    needle.len() >= 16 && !needle.contains(char::is_whitespace) && message.contains(needle)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let allow_plain = flags & 1 == 1;
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (total_lines, lines) = lines(text);
    if lines
        .iter()
        .filter_map(|l| l.entry.as_ref())
        .any(|e| too_expensive(e.hash_text, allow_plain))
    {
        return;
    }

    match HtpasswdFile::parse(text, allow_plain) {
        Ok(file) => {
            let entries: Vec<&Entry> = lines
                .iter()
                .map(|l| l.entry.as_ref().expect("a line without ':' was accepted"))
                .collect();
            assert_eq!(file.len(), entries.len(), "users lost or duplicated");
            assert_eq!(file.is_empty(), entries.is_empty());
            for entry in &entries {
                let hash = file
                    .get(entry.user)
                    .unwrap_or_else(|| panic!("line {} not retrievable", entry.number));
                assert!(!entry.user.is_empty() && !entry.user.contains(char::is_control));
                assert!(allow_plain || hash.scheme_name() != "plain");
                assert!(
                    !leaks(&format!("{hash:?}"), entry.hash_text),
                    "Debug shows the hash"
                );
                assert!(file.fingerprint(entry.user).is_some());
                // The fingerprint tells hash changes apart, so equal texts must agree.
                for other in &entries {
                    if other.hash_text == entry.hash_text {
                        assert_eq!(file.fingerprint(entry.user), file.fingerprint(other.user));
                    }
                }
                // Plain entries are the only ones whose password is known and cheap to
                // check; the others would need a hash computation per input.
                if let Some(password) = entry.hash_text.strip_prefix("{PLAIN}") {
                    assert!(file.verify(entry.user, password.as_bytes()));
                    assert!(!file.verify(entry.user, format!("{password}x").as_bytes()));
                }
            }
            for warning in file.warnings() {
                // "line N: ..." about entry N, which may name its user (never a secret,
                // and another line's hash text can legitimately be a user name).
                let entry = warning
                    .strip_prefix("line ")
                    .and_then(|w| w.split(':').next())
                    .and_then(|n| n.parse::<usize>().ok())
                    .and_then(|n| entries.iter().find(|e| e.number == n))
                    .unwrap_or_else(|| panic!("warning about no entry: {warning}"));
                let scrubbed = warning.replace(&format!("{:?}", entry.user), "");
                assert!(
                    !leaks(&scrubbed, entry.rest),
                    "warning quotes a hash: {warning}"
                );
            }
            let weak = file.weak_entries();
            assert!(
                weak.windows(2).all(|w| w[0].0 < w[1].0),
                "weak_entries unsorted"
            );
            for (line, user, scheme) in weak {
                assert!(entries.iter().any(|e| e.number == line && e.user == user));
                assert_eq!(file.get(user).map(PasswordHash::scheme_name), Some(scheme));
            }
        }
        Err(e) => {
            assert!(
                (1..=total_lines).contains(&e.line()),
                "line {} out of 1..={total_lines}",
                e.line()
            );
            let message = e.to_string();
            assert!(
                message.starts_with(&format!("line {}: ", e.line())),
                "{message}"
            );
            // Lines are checked in order and the first bad one is reported, so a skipped
            // line can never be named and every entry line before it must have a ':'.
            let index = lines
                .iter()
                .position(|l| l.number == e.line())
                .unwrap_or_else(|| panic!("{:?} names a blank or comment line", e.kind()));
            assert!(lines[..index].iter().all(|l| l.entry.is_some()));
            let Some(entry) = &lines[index].entry else {
                assert_eq!(e.kind(), &LoadErrorKind::MissingColon);
                return;
            };
            // The user is named on purpose (a duplicate); any other input text in the
            // message is a leak.
            let scrubbed = match e.kind() {
                LoadErrorKind::DuplicateUser { user, first_line } => {
                    assert_eq!(user, entry.user);
                    assert!(*first_line < e.line());
                    message.replace(&format!("{user:?}"), "")
                }
                _ => message.clone(),
            };
            assert!(
                !leaks(&scrubbed, entry.rest),
                "error quotes the hash: {message}"
            );
            match e.kind() {
                LoadErrorKind::MissingColon => panic!("MissingColon on a line with ':'"),
                LoadErrorKind::EmptyUsername => assert!(entry.user.is_empty()),
                LoadErrorKind::ControlInUsername => {
                    assert!(entry.user.contains(char::is_control))
                }
                LoadErrorKind::Hash(he) => assert_eq!(
                    PasswordHash::parse(entry.hash_text, allow_plain)
                        .err()
                        .as_ref(),
                    Some(he),
                    "the file and the hash parser disagree"
                ),
                _ => {}
            }
        }
    }
});
