//! Attacks on the decisions rather than the framing: paths aimed past a public route,
//! forward-auth fed malformed targets, hostile Basic values and JWTs, and attempts to
//! slip out of throttling. Requests go out as raw bytes over real TLS, so no client
//! library tidies them first, and each case asserts the exact status and what the
//! upstream saw.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use base64ct::{Base64, Encoding};
use common::tokens::{Signer, b64, now};
use common::*;
use jsonwebtoken::Algorithm;
use sallyport::auth::htpasswd::{NewHash, hash_password};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;

/// Requests from this address are from a trusted proxy; everything else is a client.
const TRUSTED: &str = "127.0.0.2";
const MAX_FAILURES: usize = 3;
const MAX_FAILURES_PER_USER: usize = 4;

struct Setup {
    pki: Pki,
    proxy: Proxy,
    signer: Signer,
}

/// `/public` is open; everything else takes Basic (alice / alice-pw) or an RS256 token
/// from `signer`. The upstream answers with the request it parsed.
async fn setup() -> Setup {
    let pki = Pki::new();
    let upstream = spawn_inspecting_upstream().await;
    let hash = hash_password(b"alice-pw", NewHash::Bcrypt { cost: 4 }).unwrap();
    std::fs::write(
        pki.dir.path().join("users.htpasswd"),
        format!("alice:{hash}\n"),
    )
    .unwrap();
    let signer = Signer::new("k1", Algorithm::RS256);
    std::fs::write(pki.dir.path().join("rsa.pub.pem"), &signer.public_pem).unwrap();
    let config = format!(
        "{}{}[auth.basic]\nhtpasswd = \"users.htpasswd\"\n\
         [auth.jwt]\nalgorithms = [\"RS256\"]\nkeys = [\"rsa.pub.pem\"]\n\
         [rate_limit]\nmax_failures = {MAX_FAILURES}\nmax_failures_per_user = {MAX_FAILURES_PER_USER}\n\
         {}[[route]]\npath = \"/\"\nupstream = \"http://{upstream}\"\nauth = \"required\"\n",
        server_section(&format!("trusted_proxies = [\"{TRUSTED}/32\"]")),
        pki.tls_section(),
        public_route("/public", &format!("http://{upstream}")),
    );
    let proxy = Proxy::start(pki.dir.path(), &config).await;
    Setup { pki, proxy, signer }
}

struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    /// What the inspecting upstream saw, when the request got through.
    fn seen(&self) -> Value {
        assert_eq!(self.status, 200, "{}", self.head);
        serde_json::from_str(&self.body).unwrap()
    }
}

impl Setup {
    /// One request on its own connection from `source`, raw: `target` goes on the wire
    /// exactly as given.
    async fn send_from(&self, source: &str, target: &str, headers: &[&str]) -> Answer {
        let mut request =
            format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for h in headers {
            request.push_str(h);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        self.send_bytes_from(source, request.as_bytes()).await
    }

    async fn send(&self, target: &str, headers: &[&str]) -> Answer {
        self.send_from("127.0.0.1", target, headers).await
    }

    async fn send_bytes_from(&self, source: &str, request: &[u8]) -> Answer {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(source.parse().unwrap(), 0))
            .unwrap();
        let tcp = socket.connect(self.proxy.addr).await.unwrap();
        let connector = TlsConnector::from(Arc::new(self.pki.client_config(&[b"http/1.1"])));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(request).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tls.read_to_end(&mut out),
        )
        .await
        .expect("the proxy kept the connection open")
        .ok();
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        Answer {
            status,
            head: head.to_string(),
            body: body.to_string(),
        }
    }
}

fn basic(credentials: &[u8]) -> String {
    format!(
        "Authorization: Basic {}",
        Base64::encode_string(credentials)
    )
}

// ---- paths ----

#[tokio::test]
async fn encoded_and_dot_segment_paths_cannot_reach_a_protected_route_through_a_public_one() {
    let s = setup().await;
    // (request target, status, the path the upstream receives when it gets through)
    let cases: &[(&str, u16, Option<&str>)] = &[
        ("/public/a", 200, Some("/public/a")),
        ("/public/../admin", 401, None),
        ("/public/./../admin", 401, None),
        ("/public/%2e%2e/admin", 401, None),
        ("/public/%2E%2E/admin", 401, None),
        ("/public/.%2e/admin", 401, None),
        ("/public;x/../admin", 401, None),
        ("/public/..%2fadmin", 400, None),
        ("/public%2f..%2fadmin", 400, None),
        ("/public/..%5cadmin", 400, None),
        ("/public/..%5Cadmin", 400, None),
        ("/public/..;/admin", 400, None),
        ("/public/%00/a", 400, None),
        ("/public/%zz", 400, None),
        ("/public/%2", 400, None),
        // Decoded once and kept: an upstream that decodes again still lands in /public.
        (
            "/public/%252e%252e/admin",
            200,
            Some("/public/%252e%252e/admin"),
        ),
        (
            "/public/%c0%ae%c0%ae/admin",
            200,
            Some("/public/%C0%AE%C0%AE/admin"),
        ),
        ("//public/a", 200, Some("/public/a")),
        ("/%70ublic/a", 200, Some("/public/a")),
        ("/public/a/..", 200, Some("/public/")),
        // A prefix is a whole segment, and case counts.
        ("/publicity", 401, None),
        ("/PUBLIC/a", 401, None),
        ("/public/../../../admin", 401, None),
        ("*", 400, None),
        ("http://localhost/public/../admin", 401, None),
    ];
    for &(target, status, upstream_path) in cases {
        let answer = s.send(target, &["Accept: application/json"]).await;
        assert_eq!(answer.status, status, "{target}: {}", answer.head);
        if let Some(path) = upstream_path {
            assert_eq!(answer.seen()["path"], path, "{target}");
        }
    }
}

#[tokio::test]
async fn queries_and_fragments_do_not_change_the_route() {
    let s = setup().await;
    let answer = s.send("/public/a?x=/../admin", &[]).await;
    let seen = answer.seen();
    assert_eq!(seen["path"], "/public/a");
    assert_eq!(seen["query"], "x=/../admin");
    assert_eq!(s.send("/admin?/public", &[]).await.status, 401);
    assert_eq!(s.send("/admin?next=/public/a", &[]).await.status, 401);
    // A fragment is not part of the path: it is dropped before routing and never
    // forwarded, so it cannot smuggle a different path to the upstream.
    assert_eq!(s.send("/admin#/public", &[]).await.status, 401);
    let seen = s.send("/public/a#/../../admin", &[]).await.seen();
    assert_eq!(seen["path"], "/public/a");
    assert_eq!(seen["query"], Value::Null);
}

#[tokio::test]
async fn forward_auth_refuses_malformed_targets_and_judges_the_normalised_one() {
    let s = setup().await;
    // (headers describing the original request, status)
    let cases: &[(&[&str], u16)] = &[
        (&["X-Forwarded-Uri: /public/a"], 200),
        (&["X-Forwarded-Uri: /admin"], 401),
        (&["X-Forwarded-Uri: /public/../admin"], 401),
        (&["X-Forwarded-Uri: /public/%2e%2e/admin"], 401),
        (&["X-Forwarded-Uri: /public/a?x=/../admin"], 200),
        (&["X-Forwarded-Uri: /public/..%2fadmin"], 400),
        (&["X-Forwarded-Uri: /public/..%5cadmin"], 400),
        (&["X-Forwarded-Uri: /public\\..\\admin"], 400),
        (&["X-Forwarded-Uri: admin"], 400),
        (&["X-Forwarded-Uri: //evil.example/public/a"], 400),
        (&["X-Forwarded-Uri: https://evil.example/public/a"], 400),
        (
            &["X-Forwarded-Uri: /public/a", "X-Forwarded-Uri: /admin"],
            400,
        ),
        (&["X-Forwarded-Uri: /.sallyport/auth"], 404),
        (
            &["X-Forwarded-Uri: /public/a", "X-Forwarded-Method: G E T"],
            400,
        ),
        (
            &[
                "X-Forwarded-Uri: /public/a",
                "X-Forwarded-Host: user@localhost",
            ],
            400,
        ),
        (&["X-Original-URL: https://localhost/public/a"], 200),
        (&["X-Original-URL: https://localhost/public/../admin"], 401),
        (&["X-Original-URL: https://user@localhost/public/a"], 400),
        (&["X-Original-URL: javascript:alert(1)"], 400),
        (&["X-Original-URL: /public/a"], 400),
    ];
    for &(headers, status) in cases {
        let got = s
            .send_from(TRUSTED, "/.sallyport/auth", headers)
            .await
            .status;
        assert_eq!(got, status, "{headers:?}");
    }
    // The same questions from a client that is not a trusted proxy are never answered.
    for headers in [&["X-Forwarded-Uri: /public/a"][..], &[]] {
        assert_eq!(
            s.send("/.sallyport/auth", headers).await.status,
            400,
            "{headers:?}"
        );
    }
}

#[tokio::test]
async fn a_method_override_header_cannot_carry_a_forbidden_method_past_a_route_rule() {
    let pki = Pki::new();
    let upstream = spawn_inspecting_upstream().await;
    let config = format!(
        "{}{}[[route]]\npath = \"/\"\nupstream = \"http://{upstream}\"\nauth = \"public\"\nmethods = [\"GET\", \"HEAD\"]\n",
        server_section(""),
        pki.tls_section(),
    );
    let proxy = Proxy::start(pki.dir.path(), &config).await;
    let signer = Signer::new("unused", Algorithm::RS256);
    let s = Setup { pki, proxy, signer };
    assert_eq!(s.send("/doc", &[]).await.status, 200);
    for header in [
        "X-HTTP-Method-Override: DELETE",
        "X-HTTP-Method: PUT",
        "X-Method-Override: post",
        "X-HTTP-Method-Override: not a method",
    ] {
        assert_eq!(s.send("/doc", &[header]).await.status, 403, "{header}");
    }
    // Naming an allowed method is harmless.
    assert_eq!(
        s.send("/doc", &["X-HTTP-Method-Override: HEAD"])
            .await
            .status,
        200
    );
}

// ---- credentials ----

#[tokio::test]
async fn hostile_basic_values_are_401s_and_never_a_crash() {
    let s = setup().await;
    let long = format!("Authorization: Basic {}", "A".repeat(5000));
    let valid = basic(b"alice:alice-pw");
    let valid_token = valid.trim_start_matches("Authorization: Basic ");
    let lowercase = format!("Authorization: basic {valid_token}");
    let uppercase = format!("Authorization: BASIC {valid_token}");
    let trailing = format!("Authorization: Basic {valid_token} junk");
    let tab = format!("Authorization: Basic\t{valid_token}");
    let padded_twice = format!("Authorization: Basic {valid_token}==");
    let no_colon = basic(b"alice");
    let empty_user = basic(b":alice-pw");
    let nul_in_user = basic(b"alice\0:alice-pw");
    let nul_after_password = basic(b"alice:alice-pw\0");
    let latin1_user = basic(b"\xe9lice:alice-pw");
    let cases: Vec<(&str, Vec<&str>, u16)> = vec![
        ("scheme only", vec!["Authorization: Basic"], 401),
        ("scheme and space", vec!["Authorization: Basic "], 401),
        ("padding only", vec!["Authorization: Basic ="], 401),
        ("not base64", vec!["Authorization: Basic !!!!"], 401),
        ("too long", vec![&long], 401),
        ("no colon", vec![&no_colon], 401),
        ("empty user", vec![&empty_user], 401),
        ("NUL in user", vec![&nul_in_user], 401),
        ("NUL after the password", vec![&nul_after_password], 401),
        ("user not UTF-8", vec![&latin1_user], 401),
        ("trailing junk", vec![&trailing], 401),
        ("tab separator", vec![&tab], 401),
        ("extra padding", vec![&padded_twice], 401),
        ("two fields", vec![&valid, &valid], 400),
        ("lowercase scheme", vec![&lowercase], 200),
        ("uppercase scheme", vec![&uppercase], 200),
    ];
    for (i, (name, headers, status)) in cases.into_iter().enumerate() {
        // A source each, so failures never add up to a throttle.
        let source = format!("127.0.3.{}", i + 1);
        let answer = s.send_from(&source, "/private", &headers).await;
        assert_eq!(answer.status, status, "{name}: {}", answer.head);
    }
    // Bytes that are not text at all, straight on the wire.
    let answer = s
        .send_bytes_from(
            "127.0.4.1",
            b"GET /private HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Basic \xff\xfe\x80\r\n\r\n",
        )
        .await;
    assert_eq!(answer.status, 401, "{}", answer.head);
    assert_eq!(
        s.send_from("127.0.4.2", "/private", &[&valid]).await.status,
        200
    );
}

#[tokio::test]
async fn attack_tokens_are_rejected_with_invalid_token_and_never_a_crash() {
    let s = setup().await;
    let attacker = Signer::new("k1", Algorithm::RS256);
    let claims = json!({"sub": "alice", "exp": now() + 300});
    let good = s.signer.sign(&claims);
    let [header, payload, signature]: [&str; 3] =
        good.split('.').collect::<Vec<_>>().try_into().unwrap();
    let with_header = |h: Value| format!("{}.{payload}.{signature}", b64(&h));
    // Validly signed by `key` over exactly this header: only trusting what the header
    // says about keys would let these through.
    let signed_with_header = |h: Value, key: &Signer| {
        let unsigned = format!("{}.{}", b64(&h), b64(&claims));
        let sig =
            jsonwebtoken::crypto::sign(unsigned.as_bytes(), &key.key, Algorithm::RS256).unwrap();
        format!("{unsigned}.{sig}")
    };
    let nested = format!("{}{}", "[".repeat(2_000), "]".repeat(2_000));
    let cases: Vec<(&str, String)> = vec![
        (
            "attacker key embedded as jwk",
            signed_with_header(
                json!({"alg": "RS256", "kid": "k1", "jwk": attacker.jwk}),
                &attacker,
            ),
        ),
        (
            "attacker key by jku",
            signed_with_header(
                json!({"alg": "RS256", "kid": "k1", "jku": "https://evil.example/jwks"}),
                &attacker,
            ),
        ),
        (
            "kid path traversal with alg HS256",
            with_header(json!({"alg": "HS256", "kid": "../../../../dev/null"})),
        ),
        ("alg NONE", with_header(json!({"alg": "NONE"}))),
        ("alg escaped none", {
            let h = Base64::encode_string(br#"{"alg":"\u006eone"}"#);
            format!("{}.{payload}.", h.trim_end_matches('='))
        }),
        (
            "unknown critical extension",
            with_header(json!({"alg": "RS256", "kid": "k1", "crit": ["exp"]})),
        ),
        (
            "header not JSON",
            format!("bm90IGpzb24.{payload}.{signature}"),
        ),
        (
            "payload nested 2,000 deep",
            format!(
                "{header}.{}.{signature}",
                common::tokens::b64_bytes(nested.as_bytes())
            ),
        ),
        ("four segments", format!("{good}.{signature}")),
        (
            "padded segments",
            format!("{header}=.{payload}=.{signature}"),
        ),
        (
            "exp out of range",
            s.signer.sign(&json!({"sub": "alice", "exp": 1e300})),
        ),
        (
            "negative exp",
            s.signer.sign(&json!({"sub": "alice", "exp": -1})),
        ),
        (
            "sub is an object",
            s.signer
                .sign(&json!({"sub": {"$ne": null}, "exp": now() + 300})),
        ),
    ];
    for (i, (name, token)) in cases.into_iter().enumerate() {
        // Forgeries count towards throttling: one source each keeps this about the token.
        let answer = s
            .send_from(
                &format!("127.0.5.{}", i + 1),
                "/private",
                &[
                    &format!("Authorization: Bearer {token}"),
                    "Accept: application/json",
                ],
            )
            .await;
        let body: Value = serde_json::from_str(&answer.body)
            .unwrap_or_else(|_| panic!("{name}: {}", answer.head));
        assert!(
            answer.status == 401 && body["error"] == "invalid_token"
                || answer.status == 400 && body["error"] == "invalid_request",
            "{name}: {} {body}",
            answer.head
        );
    }
    // The control: the same construction with our key and a plain header gets in, so
    // each case above failed on what it changed.
    for token in [
        good.clone(),
        signed_with_header(json!({"alg": "RS256", "kid": "k1"}), &s.signer),
    ] {
        let answer = s
            .send_from(
                "127.0.5.200",
                "/private",
                &[&format!("Authorization: Bearer {token}")],
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.head);
    }
}

// ---- throttling evasion ----

#[tokio::test]
async fn forged_forwarded_for_and_ipv6_rotation_within_a_64_do_not_reset_the_budget() {
    let s = setup().await;
    // A new (unknown) username each time keeps the per-user budget out of this.
    let mut users = 0;
    let mut wrong = || {
        users += 1;
        basic(format!("guess{users}:wrong").as_bytes())
    };
    // An untrusted client names a new address each time: the proxy keys on its socket.
    for i in 0..MAX_FAILURES {
        let xff = format!("X-Forwarded-For: 10.0.0.{i}");
        assert_eq!(
            s.send_from("127.0.6.1", "/", &[&wrong(), &xff])
                .await
                .status,
            401
        );
    }
    let xff = "X-Forwarded-For: 10.0.0.99";
    assert_eq!(
        s.send_from("127.0.6.1", "/", &[&wrong(), xff]).await.status,
        429
    );

    // Behind the trusted proxy the forwarded address is the client, and an IPv6 client is
    // its /64: rotating the interface identifier is the same client.
    for i in 1..=MAX_FAILURES {
        let xff = format!("X-Forwarded-For: 2001:db8:1:2::{i:x}");
        assert_eq!(
            s.send_from(TRUSTED, "/", &[&wrong(), &xff]).await.status,
            401
        );
    }
    for address in ["2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::abcd"] {
        let xff = format!("X-Forwarded-For: {address}");
        assert_eq!(
            s.send_from(TRUSTED, "/", &[&wrong(), &xff]).await.status,
            429,
            "{address}"
        );
    }
    // The neighbouring /64 is someone else.
    let xff = "X-Forwarded-For: 2001:db8:1:3::1";
    assert_eq!(
        s.send_from(TRUSTED, "/", &[&wrong(), xff]).await.status,
        401
    );

    // An IPv4 client written as an IPv4-mapped IPv6 address is still that client.
    for _ in 0..MAX_FAILURES {
        let xff = "X-Forwarded-For: 192.0.2.7";
        assert_eq!(
            s.send_from(TRUSTED, "/", &[&wrong(), xff]).await.status,
            401
        );
    }
    let xff = "X-Forwarded-For: ::ffff:192.0.2.7";
    assert_eq!(
        s.send_from(TRUSTED, "/", &[&wrong(), xff]).await.status,
        429
    );
}

#[tokio::test]
async fn username_variants_are_other_accounts_and_the_real_one_is_throttled_for_all() {
    let s = setup().await;
    // Case, padding, full-width and zero-width look-alikes, decomposed forms: none is
    // alice, even with alice's password. A guess made under one of them can never log
    // in as alice, so it needs no place in alice's budget.
    for (i, user) in [
        "Alice",
        "ALICE",
        "alice ",
        " alice",
        "ａｌｉｃｅ",
        "alice\u{200b}",
        "a\u{301}lice",
        "alice\u{0}",
    ]
    .iter()
    .enumerate()
    {
        let credentials = basic(format!("{user}:alice-pw").as_bytes());
        let source = format!("127.0.7.{}", i + 1);
        assert_eq!(
            s.send_from(&source, "/", &[&credentials]).await.status,
            401,
            "{user:?}"
        );
    }
    // alice herself, guessed at from a new address each time: the per-user budget runs
    // out whatever the source.
    let wrong = basic(b"alice:wrong");
    for i in 0..MAX_FAILURES_PER_USER {
        let source = format!("127.0.8.{}", i + 1);
        assert_eq!(s.send_from(&source, "/", &[&wrong]).await.status, 401);
    }
    let right = basic(b"alice:alice-pw");
    assert_eq!(s.send_from("127.0.8.200", "/", &[&right]).await.status, 429);
}
