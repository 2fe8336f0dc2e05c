//! Vectors were produced with real tools, not with this code:
//! Debian bookworm's apache2-utils 2.4.71 `htpasswd`, OpenSSL 3.0.22
//! `openssl passwd`, perl's `crypt` (libxcrypt), `openssl dgst` for `{SSHA}`,
//! and Python argon2-cffi 25.1.0 / bcrypt 5.0.0. Unless noted the password
//! is "pässwörd" in UTF-8.

use super::*;

const PW: &[u8] = "pässwörd".as_bytes();
/// "päss" in Latin-1: not valid UTF-8.
const LATIN1_PW: &[u8] = b"p\xe4ss";

struct Vector {
    hash: &'static str,
    password: &'static [u8],
    scheme: &'static str,
    strength: Strength,
}

const fn v(hash: &'static str, scheme: &'static str, strength: Strength) -> Vector {
    Vector {
        hash,
        password: PW,
        scheme,
        strength,
    }
}

const fn v_latin1(hash: &'static str, scheme: &'static str, strength: Strength) -> Vector {
    Vector {
        hash,
        password: LATIN1_PW,
        scheme,
        strength,
    }
}

use Strength::{Strong, Weak};

// htpasswd -nbB -C 5 alice 'pässwörd'
const BCRYPT_2Y_C5: &str = "$2y$05$dkRKNLarOcs9dPWt/STim.FPUcN4kXpnb9Vp7GRMrcAxOwfRV.1Hm";
// htpasswd -nbB -C 4 alice 'pässwörd'
const BCRYPT_2Y_C4: &str = "$2y$04$rC8gSs1uYshLX7s5tiuzyed4j7oc3isgwRXlTbqjBvIdEnlUCeTU.";
// python3: bcrypt.hashpw(pw, bcrypt.gensalt(4, prefix=b'2a'))
const BCRYPT_2A: &str = "$2a$04$r5g8X99wNjWI69jxQ9HIreDU0o27r1RKSwDNoQ5LfsT.YfYz05jm.";
// python3: bcrypt.hashpw(pw, bcrypt.gensalt(4, prefix=b'2b'))
const BCRYPT_2B: &str = "$2b$04$js6NeWUjSwXf7iSLO.3kxO8NwYiLAV.QwDRxeQOatn4ehkPKoTsVS";
// htpasswd -nbB -C 4 bob $'p\xe4ss'
const BCRYPT_LATIN1: &str = "$2y$04$nJ7cVXBKPOOBINAIU8KQA.JzCZfzE3jqDRQOl93HHDjVZHTDcP1Ke";
// htpasswd -nbB -C 4 carol "$(printf 'a%.0s' {1..72})XYZ"  (75 bytes)
const BCRYPT_LONG: &str = "$2y$04$LdD/D.ZmvqIsPeJeGslMqukWoAwuYoUHr4dUtAEheCA6XwA1qxUl2";
// htpasswd -nbB -C 4 dave ''
const BCRYPT_EMPTY_PW: &str = "$2y$04$5TwCvWKX4Egq7z6ZMwd/2eNsGFWEDe2s3WuDEKpHtngddP9kC77NS";

// htpasswd -nbm alice 'pässwörd'
const APR1: &str = "$apr1$INu8s4Xr$2jIE0C3Ft8D1lmPDiBiGs/";
// openssl passwd -apr1 -salt 8charslt 'pässwörd'
const APR1_OPENSSL: &str = "$apr1$8charslt$2UxIpyWWPU/8Yuduv5T6j/";
// openssl passwd -apr1 -salt ab 'pässwörd'
const APR1_SHORT_SALT: &str = "$apr1$ab$J/pyQu7p0O5KCJfor.v6Y/";
// htpasswd -nbm bob $'p\xe4ss'
const APR1_LATIN1: &str = "$apr1$4SeNZOiG$uPKM1WOtWqrBOeOkIoWnQ.";
// htpasswd -nbm dave ''
const APR1_EMPTY_PW: &str = "$apr1$x32ICbDD$QwWbV61d.ijBlMsni3sr00";
// openssl passwd -1 -salt saltSALT 'pässwörd'
const MD5_CRYPT: &str = "$1$saltSALT$kwkuOgsJO1/i00j4aAMEn1";
// perl -e 'print crypt("pässwörd", q{$1$abcdefghijkl})'  (salt cut to 8)
const MD5_CRYPT_PERL: &str = "$1$abcdefgh$xYuxUFvxUOR4Pd6a7EeUS0";

// htpasswd -nbs alice 'pässwörd'
const SHA1: &str = "{SHA}9Rfd8dMqES/xrVXGbRsSyzjn6Pc=";
// htpasswd -nbs bob $'p\xe4ss'
const SHA1_LATIN1: &str = "{SHA}izH0CDFRybAT+b+FwGSYCwNweWI=";
// (printf %s 'pässwörd'; printf NaCl) | openssl dgst -sha1 -binary | cat - salt | base64
const SSHA_4: &str = "{SSHA}XUON4tG7MuuA1bGfueFMxZuyniFOYUNs";
// same with the 8-byte salt 01 02 fe ff 10 20 30 40
const SSHA_8: &str = "{SSHA}b+BKhOyun6e8Y3ASjAwsIpSDXzIBAv7/ECAwQA==";

// htpasswd -nb2 -r 5000 alice 'pässwörd'
const SHA256_R5000: &str =
    "$5$rounds=5000$G9mmm/qWkjWmNsKi$u30elsjuhd8osoVW8XwN5PAzG/Y.110wbJaf5eHsNJB";
// htpasswd -nb2 -r 1000 alice 'pässwörd'
const SHA256_R1000: &str =
    "$5$rounds=1000$ByBuXPGqQ/M8xfPV$1ARcg8Gz/fMBKqGRDj.BwxtCgmqunghT.Mzvp0.302D";
// openssl passwd -5 -salt 16charsaltsaltsa 'pässwörd'
const SHA256_OPENSSL: &str = "$5$16charsaltsaltsa$G1j4OfSvCOqa.jLLf5waNPwd0nODTX3qQTUt7LvmKgB";
// perl -e 'print crypt("pässwörd", q{$5$$})'  (empty salt)
const SHA256_EMPTY_SALT: &str = "$5$$mKQo8jxnSGdiQXLLbG6q6DWxJBvvxqZ7fk8JqDxTCx5";
// perl -e 'print crypt("pässwörd", q{$5$rounds=1000$a,b+c=d-e})'
const SHA256_PUNCT_SALT: &str =
    "$5$rounds=1000$a,b+c=d-e$x7Jh6ou.9OgCsRlpomWw8h15MbMbN92dO/h4YqT.kk6";
// htpasswd -nb5 alice 'pässwörd'
const SHA512: &str = "$6$RS7lZKFRGDl3jacz$V7VVS1AV6W.D3a.ON1ljMnbp8OzKePKBxwEEjMzAyx0TdGLnlgO3SVG8cI3v7reGXmxihzMAh4TlIYXdiDTXk1";
// htpasswd -nb5 -r 1000 alice 'pässwörd'
const SHA512_R1000: &str = "$6$rounds=1000$cJZB0QVXOFIwQ0mJ$w75RtTAyGITOyIFOvTjYKJskpWyx90uVsLPf0pqY4S1xycQIptAHgTEPtd15bg0TCwg6X.9AagQcXyJ77xEWH.";
// openssl passwd -6 -salt shortsalt 'pässwörd'
const SHA512_OPENSSL: &str = "$6$shortsalt$rjWy/cnA4Ul2DmT8bIk5JKCQD8F12Gs6fRIzTuBZk1jmRsmgE7PcX5XMF2w3E5rpmPEx3YEysjbyGX8ix4i801";
// openssl passwd -6 -salt 'sixteencharsalt!' 'pässwörd'  ('!' is outside
// the sha-crypt crate's MCF alphabet: exercises the fallback)
const SHA512_BANG_SALT: &str = "$6$sixteencharsalt!$gtJyaH5fZ7VTh32/gbaH8BSvVyMbBCjcIYbPy3Kys3t5.eI92tU.k7zRQqL.QDTuftFbjjTq5msT05U7b9IKl1";
// perl -e 'print crypt("pässwörd", q{$6$rounds=1000$toolongsaltmorethan16chars})'
const SHA512_PERL: &str = "$6$rounds=1000$toolongsaltmoret$5gvliv2zexiLbA38slAn1c1aBjxaRseiI.3v7.Na/WlQqwpbhxjFKa9AgpIQpa58KVyabxtqlkjC2wvxC0RXC0";

// python3: argon2.PasswordHasher().hash(pw)  (defaults; too slow for a debug
// build to verify, so only parsed)
const ARGON2ID_DEFAULT: &str = "$argon2id$v=19$m=65536,t=3,p=4$XUGtgR0ewdSk/q5nHTHS/A$rbH3oXb3EKvaxpiEKyYVS7aqgTvXGaD5CyAm//0EufU";
// python3: PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(pw)
const ARGON2ID: &str = "$argon2id$v=19$m=1024,t=1,p=1$+Z9Da9L4jn48NGyWOPqf5g$Ue6Z/Nb5C3tnjA8Qd3BN9ZfgPmTPVEf5ysXN+HHpEiM";
// python3: PasswordHasher(time_cost=2, memory_cost=512, parallelism=2, type=Type.I).hash(pw)
const ARGON2I: &str = "$argon2i$v=19$m=512,t=2,p=2$Zyp5Bb4hMvd3lnwNalIYfA$+877UJ7503ENDb8dpVkoar8IUvX1//n8Qz+2CvldCa0";
// python3: PasswordHasher(time_cost=1, memory_cost=256, parallelism=1, type=Type.D).hash(pw)
const ARGON2D: &str = "$argon2d$v=19$m=256,t=1,p=1$9ZGG1q2htys8iPU+xP9nZA$oCNzvl3krrFtAitoA8Nk8z5ekgJtT0KVNnCwKmOLLoI";
// python3: argon2.low_level.hash_secret(pw, b'sixteen byte salt', time_cost=1,
//   memory_cost=64, parallelism=1, hash_len=16, type=Type.ID, version=16)
const ARGON2ID_V16: &str =
    "$argon2id$v=16$m=64,t=1,p=1$c2l4dGVlbiBieXRlIHNhbHQ$jRZXqp/p0iXzuUtsTczH5A";
// The same with "v=16$" removed; argon2.low_level.verify_secret accepts it,
// since libargon2 reads a missing version as 16.
const ARGON2ID_NO_VERSION: &str =
    "$argon2id$m=64,t=1,p=1$c2l4dGVlbiBieXRlIHNhbHQ$jRZXqp/p0iXzuUtsTczH5A";

// htpasswd -nbd alice 'pässwörd'
const DES: &str = "gGtG8tTbfPEug";
// htpasswd -nbp alice 'pässwörd'
const HTPASSWD_P: &str = "pässwörd";

const VECTORS: &[Vector] = &[
    v(BCRYPT_2Y_C5, "bcrypt", Strong),
    v(BCRYPT_2Y_C4, "bcrypt", Strong),
    v(BCRYPT_2A, "bcrypt", Strong),
    v(BCRYPT_2B, "bcrypt", Strong),
    v_latin1(BCRYPT_LATIN1, "bcrypt", Strong),
    Vector {
        hash: BCRYPT_EMPTY_PW,
        password: b"",
        scheme: "bcrypt",
        strength: Strong,
    },
    v(APR1, "apr1", Weak),
    v(APR1_OPENSSL, "apr1", Weak),
    v(APR1_SHORT_SALT, "apr1", Weak),
    v_latin1(APR1_LATIN1, "apr1", Weak),
    Vector {
        hash: APR1_EMPTY_PW,
        password: b"",
        scheme: "apr1",
        strength: Weak,
    },
    v(MD5_CRYPT, "md5-crypt", Weak),
    v(MD5_CRYPT_PERL, "md5-crypt", Weak),
    v(SHA1, "sha1", Weak),
    v_latin1(SHA1_LATIN1, "sha1", Weak),
    v(SSHA_4, "ssha", Weak),
    v(SSHA_8, "ssha", Weak),
    v(SHA256_R5000, "sha256-crypt", Strong),
    v(SHA256_R1000, "sha256-crypt", Strong),
    v(SHA256_OPENSSL, "sha256-crypt", Strong),
    v(SHA256_EMPTY_SALT, "sha256-crypt", Strong),
    v(SHA256_PUNCT_SALT, "sha256-crypt", Strong),
    v(SHA512, "sha512-crypt", Strong),
    v(SHA512_R1000, "sha512-crypt", Strong),
    v(SHA512_OPENSSL, "sha512-crypt", Strong),
    v(SHA512_BANG_SALT, "sha512-crypt", Strong),
    v(SHA512_PERL, "sha512-crypt", Strong),
    v(ARGON2ID, "argon2", Strong),
    v(ARGON2I, "argon2", Strong),
    v(ARGON2D, "argon2", Strong),
    v(ARGON2ID_V16, "argon2", Strong),
    v(ARGON2ID_NO_VERSION, "argon2", Strong),
    v("{PLAIN}pässwörd", "plain", Weak),
];

fn parse(s: &str) -> PasswordHash {
    match PasswordHash::parse(s, true) {
        Ok(h) => h,
        Err(e) => panic!("{s} did not parse: {e}"),
    }
}

/// Replaces one character well inside the checksum/digest part.
fn mutate(s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    let i = chars.len() - 5;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

#[test]
fn right_password_verifies() {
    for v in VECTORS {
        let h = parse(v.hash);
        assert!(h.verify(v.password), "{} rejected its password", v.hash);
        assert_eq!(h.scheme_name(), v.scheme, "{}", v.hash);
        assert_eq!(h.strength(), v.strength, "{}", v.hash);
    }
}

#[test]
fn wrong_password_fails() {
    for v in VECTORS {
        let h = parse(v.hash);
        assert!(!h.verify(b"passw\xc3\xb6rd"), "{}", v.hash);
        if !v.password.is_empty() {
            assert!(!h.verify(b""), "{}", v.hash);
        }
        let mut longer = v.password.to_vec();
        longer.push(b'!');
        assert!(!h.verify(&longer), "{}", v.hash);
    }
}

#[test]
fn one_char_changed_hash_fails() {
    for v in VECTORS {
        let changed = mutate(v.hash);
        assert_ne!(changed, v.hash);
        // Either the change breaks the encoding (a load-time error) or the
        // hash no longer matches; both are fine, a match is not.
        if let Ok(h) = PasswordHash::parse(&changed, true) {
            assert!(!h.verify(v.password), "{changed} still verified");
        }
    }
}

#[test]
fn non_utf8_passwords_do_not_panic() {
    let inputs: [&[u8]; 4] = [
        b"\xff\xfe\xfd",
        b"\x00",
        b"p\xe4ss\x00w\x80rd",
        &[0xc3; 200],
    ];
    for v in VECTORS {
        let h = parse(v.hash);
        for input in inputs {
            // bcrypt keys are NUL-terminated, so "\0" hashes like "" there,
            // as in every C implementation; only the empty-password vector
            // is affected.
            if v.password.is_empty() && input == b"\x00" {
                continue;
            }
            assert!(!h.verify(input), "{}", v.hash);
        }
    }
}

#[test]
fn latin1_password_only_matches_its_bytes() {
    // The same text in UTF-8 is a different password.
    for hash in [BCRYPT_LATIN1, APR1_LATIN1, SHA1_LATIN1] {
        assert!(!parse(hash).verify("päss".as_bytes()));
    }
}

#[test]
fn bcrypt_uses_only_the_first_72_bytes() {
    let h = parse(BCRYPT_LONG);
    let mut password = vec![b'a'; 72];
    password.extend_from_slice(b"XYZ");
    assert!(h.verify(&password));
    // As in Apache, anything after byte 72 is ignored...
    password.truncate(72);
    password.extend_from_slice(b"something else");
    assert!(h.verify(&password));
    // ...but the first 72 bytes all count.
    password[71] = b'b';
    assert!(!h.verify(&password));
}

#[test]
fn sha_crypt_fallback_agrees_with_the_crate() {
    for v in VECTORS
        .iter()
        .filter(|v| v.scheme.starts_with("sha") && v.scheme.ends_with("-crypt"))
    {
        let Repr::ShaCrypt(h) = parse(v.hash).repr else {
            panic!("{} is not sha-crypt", v.hash);
        };
        assert!(h.verify_without_crate_parser(v.password), "{}", v.hash);
        assert!(!h.verify_without_crate_parser(b"wrong"), "{}", v.hash);
    }
    let uses_crate = |s| match parse(s).repr {
        Repr::ShaCrypt(h) => h.crate_verifiable(),
        _ => false,
    };
    assert!(uses_crate(SHA512));
    assert!(uses_crate(SHA256_PUNCT_SALT));
    assert!(!uses_crate(SHA512_BANG_SALT));
    assert!(!uses_crate(SHA256_EMPTY_SALT));
}

#[test]
fn argon2_defaults_parse() {
    let h = parse(ARGON2ID_DEFAULT);
    assert_eq!(h.scheme_name(), "argon2");
    assert_eq!(h.params_summary(), "argon2id m=65536,t=3,p=4");
}

fn parse_err(s: &str, allow_plain: bool) -> HashError {
    match PasswordHash::parse(s, allow_plain) {
        Ok(h) => panic!("{s} parsed as {h:?}"),
        Err(e) => {
            assert!(
                s.is_empty() || !e.to_string().contains(s),
                "error message quotes the hash"
            );
            e
        }
    }
}

fn is_malformed(e: &HashError, want: &str) -> bool {
    matches!(e, HashError::Malformed { scheme, .. } if *scheme == want)
}

#[test]
fn des_and_unprefixed_plain_are_refused() {
    let e = parse_err(DES, true);
    assert_eq!(e, HashError::DesUnsupported);
    assert_eq!(
        e.to_string(),
        "crypt(3) DES hashes are not supported: re-hash with htpasswd -B"
    );
    assert_eq!(parse_err(HTPASSWD_P, true), HashError::UnknownFormat);
    // A 13-character plain password is indistinguishable from DES.
    assert_eq!(parse_err("password12345", true), HashError::DesUnsupported);
    assert_eq!(parse_err("", true), HashError::Empty);
}

#[test]
fn plain_needs_allow_plain() {
    assert_eq!(
        parse_err("{PLAIN}secret", false),
        HashError::PlainNotAllowed
    );
    let h = PasswordHash::parse("{PLAIN}secret", true).expect("allowed");
    assert!(h.verify(b"secret"));
    assert!(!h.verify(b"secret "));
    assert!(!h.verify(b"Secret"));
    assert!(is_malformed(&parse_err("{PLAIN}", true), "plain"));
}

#[test]
fn malformed_bcrypt_is_a_load_error() {
    let truncated = &BCRYPT_2Y_C5[..BCRYPT_2Y_C5.len() - 1];
    assert!(is_malformed(&parse_err(truncated, false), "bcrypt"));
    assert!(is_malformed(
        &parse_err(&BCRYPT_2Y_C5[..29], false),
        "bcrypt"
    ));
    // 18 and up are refused too: found by fuzz/ (a $2y$31$ line stalled loading for days).
    for cost in ["03", "18", "31", "32", "99", "0x", "-1", "ü"] {
        let s = BCRYPT_2Y_C5.replacen("05", cost, 1);
        assert!(is_malformed(&parse_err(&s, false), "bcrypt"), "{cost}");
    }
    // '!' is not in bcrypt's base64 alphabet.
    let bad_b64 = BCRYPT_2Y_C5.replacen('/', "!", 1);
    assert!(is_malformed(&parse_err(&bad_b64, false), "bcrypt"));
    let two_x = BCRYPT_2Y_C5.replacen("$2y$", "$2x$", 1);
    assert!(matches!(
        parse_err(&two_x, false),
        HashError::Unsupported { .. }
    ));
}

#[test]
fn malformed_md5_crypt_is_a_load_error() {
    for s in [
        "$apr1$",
        "$apr1$garbage",
        "$apr1$INu8s4Xr$",
        "$apr1$INu8s4Xr$2jIE0C3Ft8D1lmPDiBiGs",
        "$apr1$INu8s4Xr$2jIE0C3Ft8D1lmPDiBiGs/x",
        "$apr1$INu8s4Xr$2jIE0C3Ft8D1lmPDiBiG!/",
        // The final character only carries 2 bits.
        "$apr1$INu8s4Xr$2jIE0C3Ft8D1lmPDiBiGsz",
        "$apr1$toolongsalt$2jIE0C3Ft8D1lmPDiBiGs/",
        "$apr1$INu8s4Xr$2jIE0C3Ft8D1lmPDiBiGs/$",
        "$1$saltSALT$kwkuOgsJO1/i00j4aAMEnü",
    ] {
        let e = parse_err(s, false);
        assert!(
            is_malformed(&e, "apr1") || is_malformed(&e, "md5-crypt"),
            "{s}: {e}"
        );
    }
}

#[test]
fn malformed_sha_and_ssha_are_load_errors() {
    for s in [
        "{SHA}",
        "{SHA}9Rfd8dMqES/xrVXGbRsSyzjn6Pc",
        "{SHA}9Rfd8dMqES/xrVXGbRsSyzjn6Pc==",
        "{SHA}9Rfd8dMqES/xrVXGbRsSyzjn6P!=",
        "{SHA}9Rfd8dMqES/xrVXGbRsSyzjn6PcAAAA",
    ] {
        assert!(is_malformed(&parse_err(s, false), "sha1"), "{s}");
    }
    for s in [
        "{SSHA}",
        "{SSHA}XUON4tG7MuuA1bGfueFMxZ",
        "{SSHA}not base64!",
    ] {
        assert!(is_malformed(&parse_err(s, false), "ssha"), "{s}");
    }
}

#[test]
fn malformed_sha_crypt_is_a_load_error() {
    for s in [
        "$5$",
        "$5$salt",
        "$5$rounds=999$ByBuXPGqQ/M8xfPV$1ARcg8Gz/fMBKqGRDj.BwxtCgmqunghT.Mzvp0.302D",
        "$5$rounds=1000000000$ByBuXPGqQ/M8xfPV$1ARcg8Gz/fMBKqGRDj.BwxtCgmqunghT.Mzvp0.302D",
        "$5$rounds=+1000$ByBuXPGqQ/M8xfPV$1ARcg8Gz/fMBKqGRDj.BwxtCgmqunghT.Mzvp0.302D",
        "$5$rounds=$ByBuXPGqQ/M8xfPV$1ARcg8Gz/fMBKqGRDj.BwxtCgmqunghT.Mzvp0.302D",
        "$5$rounds=1000$ByBuXPGqQ/M8xfPV$1ARcg8Gz/fMBKqGRDj.BwxtCgmqunghT.Mzvp0.302",
        "$5$rounds=1000$ByBuXPGqQ/M8xfPVx$1ARcg8Gz/fMBKqGRDj.BwxtCgmqunghT.Mzvp0.302D",
        "$5$ByBuXPGqQ/M8xfPV$1ARcg8Gz/fMBKqGRDj.BwxtCgmqunghT.Mzvp0.302D$",
        "$5$x$y$z$w",
        // A SHA-512 checksum under a SHA-256 prefix.
        "$5$RS7lZKFRGDl3jacz$V7VVS1AV6W.D3a.ON1ljMnbp8OzKePKBxwEEjMzAyx0TdGLnlgO3SVG8cI3v7reGXmxihzMAh4TlIYXdiDTXk1",
    ] {
        let e = parse_err(s, false);
        assert!(is_malformed(&e, "sha256-crypt"), "{s}: {e}");
    }
    let e = parse_err("$6$RS7lZKFRGDl3jacz$V7VVS1AV6W", false);
    assert!(is_malformed(&e, "sha512-crypt"));
}

#[test]
fn malformed_argon2_is_a_load_error() {
    for s in [
        "$argon2id$",
        "$argon2id$v=19$m=1024,t=1,p=1",
        "$argon2id$v=19$m=1024,t=1,p=1$+Z9Da9L4jn48NGyWOPqf5g",
        "$argon2x$v=19$m=1024,t=1,p=1$+Z9Da9L4jn48NGyWOPqf5g$Ue6Z/Nb5C3tnjA8Qd3BN9ZfgPmTPVEf5ysXN+HHpEiM",
        "$argon2id$v=18$m=1024,t=1,p=1$+Z9Da9L4jn48NGyWOPqf5g$Ue6Z/Nb5C3tnjA8Qd3BN9ZfgPmTPVEf5ysXN+HHpEiM",
        "$argon2id$v=19$m=1024,t=0,p=1$+Z9Da9L4jn48NGyWOPqf5g$Ue6Z/Nb5C3tnjA8Qd3BN9ZfgPmTPVEf5ysXN+HHpEiM",
        "$argon2id$v=19$m=1024,t=1,p=0$+Z9Da9L4jn48NGyWOPqf5g$Ue6Z/Nb5C3tnjA8Qd3BN9ZfgPmTPVEf5ysXN+HHpEiM",
        "$argon2id$v=19$m=1,t=1,p=1$+Z9Da9L4jn48NGyWOPqf5g$Ue6Z/Nb5C3tnjA8Qd3BN9ZfgPmTPVEf5ysXN+HHpEiM",
        // Over the 4 GiB memory ceiling.
        "$argon2id$v=19$m=4194305,t=1,p=1$+Z9Da9L4jn48NGyWOPqf5g$Ue6Z/Nb5C3tnjA8Qd3BN9ZfgPmTPVEf5ysXN+HHpEiM",
        // Salt of 6 bytes.
        "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNh$Ue6Z/Nb5C3tnjA8Qd3BN9ZfgPmTPVEf5ysXN+HHpEiM",
        "$argon2id$v=19$m=1024,t=1,p=1$+Z9Da9L4jn48NGyWOPqf5g$Ue6Z/Nb5C3tnjA8Qd3BN9ZfgPmTPVEf5ysXN+HHpEiM$",
        "$argon2id$v=19$m=1024,t=1,p=1$+Z9Da9L4jn48NGyWOPqf5g$!!!",
    ] {
        let e = parse_err(s, false);
        assert!(is_malformed(&e, "argon2"), "{s}: {e}");
    }
}

#[test]
fn other_schemes_are_named() {
    for s in [
        "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7",
        "$7$C6..../....SodiumChloride$kBGj9fHznVYFQMEn/qDCfrDevf9YDtcDdKvEqHJLV8D",
    ] {
        assert!(matches!(parse_err(s, false), HashError::Unsupported { .. }));
    }
    assert_eq!(
        parse_err("$sha1$40000$x$y", false),
        HashError::UnknownFormat
    );
    assert_eq!(parse_err("*", false), HashError::UnknownFormat);
}

#[test]
fn parse_never_panics() {
    let mut inputs: Vec<String> = Vec::new();
    for v in VECTORS {
        // Every prefix, cut at character boundaries.
        inputs.extend(v.hash.char_indices().map(|(i, _)| v.hash[..i].to_owned()));
        inputs.push(format!("{}ü", v.hash));
        inputs.push(v.hash.replace('$', "ü"));
    }
    inputs.extend(
        [
            "$",
            "$$",
            "$$$$$$",
            "$2y$",
            "$2y$ü",
            "$2y$05$ü",
            "$2y$05",
            "{",
            "{}",
            "{SHA",
            "{SSHA}=",
            "{SSHA}====",
            "$argon2id$v=ü",
            "$argon2id$v=19$m=ü",
            "$5$rounds=ü$",
            "$6$rounds=99999999999999999999$a$b",
            "ü2345678901ü",
            "\0",
            "\u{feff}",
            "$apr1$ü$üüüüüüüüüüü",
        ]
        .map(String::from),
    );
    inputs.push("$2y$05$".to_owned() + &"ü".repeat(26));
    inputs.push("$apr1$12345678$".to_owned() + &"é".repeat(11));
    for input in &inputs {
        for allow_plain in [false, true] {
            if let Ok(h) = PasswordHash::parse(input, allow_plain) {
                // Only the cheap ones: verifying every argon2 prefix would
                // take minutes in a debug build.
                if h.work_estimate() <= 1_000_000 {
                    let _ = h.verify(b"x");
                }
            }
        }
    }
}

#[test]
fn dummy_like_keeps_scheme_and_cost() {
    for s in [
        BCRYPT_2Y_C5,
        BCRYPT_2A,
        APR1,
        MD5_CRYPT,
        SHA1,
        SSHA_8,
        SHA256_R1000,
        SHA512_OPENSSL,
        SHA512_BANG_SALT,
        ARGON2ID,
        ARGON2I,
        ARGON2D,
        ARGON2ID_V16,
        "{PLAIN}pässwörd",
    ] {
        let h = parse(s);
        let d = h.dummy_like();
        assert_eq!(d.scheme_name(), h.scheme_name(), "{s}");
        assert_eq!(d.params_summary(), h.params_summary(), "{s}");
        assert_eq!(d.strength(), h.strength(), "{s}");
        assert!(!d.verify(PW), "{s}");
        assert!(format!("{d:?}").contains("dummy: true"));
    }
    // And the numbers really are the ones in the source hash.
    assert_eq!(parse(BCRYPT_2Y_C5).dummy_like().params_summary(), "cost=5");
    assert_eq!(
        parse(SHA256_R1000).dummy_like().params_summary(),
        "rounds=1000"
    );
    assert_eq!(parse(SHA512).dummy_like().params_summary(), "rounds=5000");
    assert_eq!(
        parse(ARGON2I).dummy_like().params_summary(),
        "argon2i m=512,t=2,p=2"
    );
    match parse(SSHA_8).dummy_like().repr {
        Repr::Ssha(_) => {}
        _ => panic!("not ssha"),
    }
    // Two dummies differ: the salts are random.
    let (a, b) = (parse(APR1).dummy_like(), parse(APR1).dummy_like());
    let (Repr::Md5Crypt(a), Repr::Md5Crypt(b)) = (a.repr, b.repr) else {
        panic!("not md5-crypt");
    };
    assert!(!a.same_salt_as(&b));
}

#[test]
fn dummy_flag_forces_a_mismatch() {
    let mut h = parse(APR1);
    assert!(h.verify(PW));
    h.dummy = true;
    assert!(!h.verify(PW));
}

#[test]
fn debug_output_hides_the_hash() {
    let h = parse(SHA1);
    let shown = format!("{h:?}");
    assert!(!shown.contains("9Rfd8dMqES"), "{shown}");
    let plain = format!("{:?}", parse("{PLAIN}hunter2"));
    assert!(!plain.contains("hunter2"), "{plain}");
}

// ---- files ----

fn load(text: &str) -> HtpasswdFile {
    match HtpasswdFile::parse(text, false) {
        Ok(f) => f,
        Err(e) => panic!("did not load: {e}"),
    }
}

fn load_err(text: &str, allow_plain: bool) -> LoadError {
    match HtpasswdFile::parse(text, allow_plain) {
        Ok(f) => panic!("loaded: {f:?}"),
        Err(e) => e,
    }
}

#[test]
fn file_with_comments_crlf_and_extra_fields() {
    let text = format!(
        "\u{feff}# users\r\n\
         alice:{BCRYPT_2Y_C4}\r\n\
         \r\n\
         bob:{APR1_LATIN1}:Bob Example, room 4\r\n\
         \t  \n\
         carol smith:{SHA256_R1000}\n\
         dave:{SHA1_LATIN1}\n\
         émile:{ARGON2D}"
    );
    let f = load(&text);
    assert_eq!(f.len(), 5);
    assert!(!f.is_empty());
    assert!(f.get("alice").is_some_and(|h| h.verify(PW)));
    assert!(f.get("bob").is_some_and(|h| h.verify(LATIN1_PW)));
    assert!(f.get("carol smith").is_some_and(|h| h.verify(PW)));
    assert!(f.get("émile").is_some_and(|h| h.verify(PW)));
    assert!(f.get("nobody").is_none());
    assert!(f.get("# users").is_none());

    assert!(f.verify("alice", PW));
    assert!(!f.verify("alice", b"nope"));
    assert!(!f.verify("nobody", PW));

    assert_eq!(
        f.weak_entries(),
        vec![(4, "bob", "apr1"), (7, "dave", "sha1")]
    );
    let warnings = f.warnings();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("line 4: ignored extra"))
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("\"dave\"") && w.contains("sha1"))
    );
    assert!(!warnings.iter().any(|w| w.contains("Bob Example")));
}

#[test]
fn file_errors_name_the_line() {
    let e = load_err(
        &format!("alice:{APR1}\n\nbob:{SHA1}\nalice:{BCRYPT_2Y_C4}\n"),
        false,
    );
    assert_eq!(e.line(), 4);
    assert_eq!(
        e.kind(),
        &LoadErrorKind::DuplicateUser {
            user: "alice".to_owned(),
            first_line: 1
        }
    );
    assert_eq!(
        e.to_string(),
        "line 4: user \"alice\" is already defined on line 1"
    );

    let e = load_err(&format!("# c\nalice:{APR1}\njust a line\n"), false);
    assert_eq!((e.line(), e.kind()), (3, &LoadErrorKind::MissingColon));
    assert!(!e.to_string().contains("just a line"));

    let e = load_err(&format!(":{APR1}\n"), false);
    assert_eq!((e.line(), e.kind()), (1, &LoadErrorKind::EmptyUsername));

    let e = load_err("alice:\n", false);
    assert_eq!(e.kind(), &LoadErrorKind::Hash(HashError::Empty));
}

#[test]
fn file_hash_errors_never_quote_secrets() {
    let truncated_bcrypt = &BCRYPT_2Y_C5[..40];
    // (file, line of the error, allow_plain, what must not be quoted)
    for (text, line, allow_plain, secret) in [
        (format!("alice:{DES}"), 1, false, DES),
        (
            format!("x:{APR1}\nalice:{HTPASSWD_P}"),
            2,
            false,
            HTPASSWD_P,
        ),
        ("alice:{PLAIN}hunter2".to_owned(), 1, false, "hunter2"),
        ("alice:{PLAIN}hunter2:more".to_owned(), 1, true, "hunter2"),
        (
            format!("alice:{truncated_bcrypt}"),
            1,
            false,
            &truncated_bcrypt[7..],
        ),
        ("\n\nalice:$apr1$garbage$x".to_owned(), 3, false, "garbage"),
        (
            format!("alice:{BCRYPT_2Y_C5} "),
            1,
            false,
            &BCRYPT_2Y_C5[7..],
        ),
    ] {
        let e = load_err(&text, allow_plain);
        assert_eq!(e.line(), line, "{text}");
        let msg = e.to_string();
        assert!(msg.starts_with(&format!("line {line}: ")), "{msg}");
        assert!(!msg.contains(secret), "{msg} quotes {secret}");
    }
    let e = load_err(&format!("alice:{DES}"), false);
    assert_eq!(
        e.to_string(),
        "line 1: crypt(3) DES hashes are not supported: re-hash with htpasswd -B"
    );
    assert!(std::error::Error::source(&e).is_some());
}

#[test]
fn plain_entries_in_files() {
    let e = load_err("alice:{PLAIN}hunter2\n", false);
    assert_eq!(e.kind(), &LoadErrorKind::Hash(HashError::PlainNotAllowed));
    let f = HtpasswdFile::parse("alice:{PLAIN}hunter2\n", true).expect("allowed");
    assert!(f.verify("alice", b"hunter2"));
    assert_eq!(f.weak_entries(), vec![(1, "alice", "plain")]);
    let e = load_err("alice:{PLAIN}hunter2:x\n", true);
    assert_eq!(e.kind(), &LoadErrorKind::AmbiguousPlain);
}

#[test]
fn dummy_hash_imitates_the_most_expensive_entry() {
    let f = load(&format!(
        "a:{APR1}\nb:{SHA1}\nc:{BCRYPT_2Y_C4}\nd:{BCRYPT_2Y_C5}\ne:{SHA256_R1000}\n"
    ));
    let d = f.dummy_hash();
    assert_eq!(d.scheme_name(), "bcrypt");
    assert_eq!(d.params_summary(), "cost=5");
    assert!(!d.verify(PW));

    let f = load(&format!("a:{APR1}\nb:{SHA1}\nc:{SHA512}\n"));
    assert_eq!(f.dummy_hash().params_summary(), "rounds=5000");

    let f = load("# nobody yet\n");
    assert!(f.is_empty());
    let d = f.dummy_hash();
    assert_eq!(
        (d.scheme_name(), d.params_summary().as_str()),
        ("bcrypt", "cost=5")
    );
    assert!(!f.verify("anyone", b""));
}
