//! HTTP Basic end to end: challenges, identity headers, indistinguishable failures,
//! malformed credentials, and live reload of the htpasswd and group files.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use sallyport::auth::htpasswd::{NewHash, hash_password};

fn bcrypt(password: &str) -> String {
    hash_password(password.as_bytes(), NewHash::Bcrypt { cost: 4 }).unwrap()
}

/// Replaces a file the way editors and Kubernetes do: write a sibling, rename over.
fn replace_file(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Setup {
    pki: Pki,
    proxy: Proxy,
    htpasswd: std::path::PathBuf,
    groups: std::path::PathBuf,
}

async fn setup(upstream: &str, extra_headers: &str) -> Setup {
    let pki = Pki::new();
    let htpasswd = pki.dir.path().join("users.htpasswd");
    let groups = pki.dir.path().join("groups");
    std::fs::write(
        &htpasswd,
        format!("alice:{}\nbob:{}\n", bcrypt("alice-pw"), bcrypt("bob-pw")),
    )
    .unwrap();
    std::fs::write(&groups, "admins: alice\nops: alice bob\n").unwrap();
    let config = format!(
        "{}{}[auth]\nrealm = \"Test Realm\"\n[auth.basic]\nhtpasswd = \"users.htpasswd\"\ngroups = \"groups\"\n{extra_headers}{}{}",
        server_section(""),
        pki.tls_section(),
        public_route("/public", upstream),
        format_args!("[[route]]\npath = \"/\"\nupstream = {upstream:?}\n"),
    );
    let proxy = Proxy::start(pki.dir.path(), &config).await;
    Setup {
        pki,
        proxy,
        htpasswd,
        groups,
    }
}

impl Setup {
    fn client(&self) -> reqwest::Client {
        self.pki.client(self.proxy.addr).build().unwrap()
    }

    async fn status_as(&self, user: &str, password: &str) -> u16 {
        self.client()
            .get(url(self.proxy.addr, "/"))
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn reloaded(&self, previous_attempts: u64) -> sallyport::reload::ReloadStatus {
        // Not a sleep: wait for the watcher to report a reload, bounded in time.
        let mut rx = self.proxy.reloader.status();
        tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|s| s.attempts > previous_attempts),
        )
        .await
        .expect("the file change was picked up within 10 s")
        .unwrap()
        .clone()
    }

    fn reload_attempts(&self) -> u64 {
        self.proxy.reloader.status().borrow().attempts
    }
}

#[tokio::test]
async fn missing_credentials_get_a_basic_challenge_with_a_negotiated_body() {
    let s = setup("builtin:echo", "").await;
    let client = s.client();
    let json = client
        .get(url(s.proxy.addr, "/x"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 401);
    let challenges: Vec<_> = json.headers().get_all("www-authenticate").iter().collect();
    assert_eq!(
        challenges,
        ["Basic realm=\"Test Realm\", charset=\"UTF-8\""]
    );
    assert_eq!(json.headers()["cache-control"], "no-store");
    let body: serde_json::Value = json.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    assert_eq!(body["status"], 401);

    let html = client
        .get(url(s.proxy.addr, "/x"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(html.status(), 401);
    assert!(
        html.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let text = client.get(url(s.proxy.addr, "/x")).send().await.unwrap();
    assert!(
        text.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );

    let head = client.head(url(s.proxy.addr, "/x")).send().await.unwrap();
    assert_eq!(head.status(), 401);
    assert!(head.headers().contains_key("www-authenticate"));
}

#[tokio::test]
async fn valid_credentials_reach_the_upstream_with_trusted_identity_headers() {
    let upstream = spawn_inspecting_upstream().await;
    let s = setup(&format!("http://{upstream}"), "").await;
    let response = s
        .client()
        .get(url(s.proxy.addr, "/app"))
        .basic_auth("alice", Some("alice-pw"))
        .header("X-Forwarded-User", "mallory")
        .header("x_forwarded_user", "mallory")
        .header("X.Forwarded.Groups", "root")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        seen_header(&seen, "x-forwarded-user").as_deref(),
        Some("alice")
    );
    assert_eq!(
        seen_header(&seen, "x-forwarded-groups").as_deref(),
        Some("admins,ops")
    );
    assert_eq!(
        seen["headers"]["x-forwarded-user"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        seen_header(&seen, "authorization"),
        None,
        "the credential must not reach the upstream"
    );
    for name in seen_header_names(&seen) {
        assert!(
            !name.contains('_') && !name.contains('.'),
            "spoofed variant {name} reached the upstream"
        );
    }

    // On a public route too, identity headers are stripped, and so is Authorization:
    // browsers resend cached Basic credentials to every path, and with
    // forward_authorization = false the upstream never sees them.
    let seen: serde_json::Value = s
        .client()
        .get(url(s.proxy.addr, "/public/x"))
        .header("authorization", "Bearer app-token")
        .header("X-Forwarded-User", "mallory")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen_header(&seen, "authorization"), None);
    assert_eq!(seen_header(&seen, "x-forwarded-user"), None);
}

#[tokio::test]
async fn forward_authorization_keeps_the_credential() {
    let upstream = spawn_inspecting_upstream().await;
    let s = setup(
        &format!("http://{upstream}"),
        "[headers]\nforward_authorization = true\nuser = \"Remote-User\"\n",
    )
    .await;
    let seen: serde_json::Value = s
        .client()
        .get(url(s.proxy.addr, "/"))
        .basic_auth("bob", Some("bob-pw"))
        .header("remote_user", "mallory")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        seen_header(&seen, "authorization")
            .unwrap()
            .starts_with("Basic ")
    );
    assert_eq!(seen_header(&seen, "remote-user").as_deref(), Some("bob"));
    assert_eq!(seen_header(&seen, "remote_user"), None);
}

/// Status, headers (minus per-request ones) and body (minus the request id).
async fn observable(s: &Setup, user: &str, password: &str) -> (u16, Vec<(String, String)>, String) {
    let response = s
        .client()
        .get(url(s.proxy.addr, "/"))
        .header("accept", "application/json")
        .basic_auth(user, Some(password))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), "date" | "x-request-id"))
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    headers.sort();
    let body = response.text().await.unwrap().replace(&request_id, "<id>");
    (status, headers, body)
}

#[tokio::test]
async fn unknown_user_wrong_password_and_removed_user_look_identical() {
    let s = setup("builtin:echo", "").await;
    assert_eq!(
        s.status_as("bob", "bob-pw").await,
        200,
        "bob's credential is now cached"
    );
    let wrong_password = observable(&s, "alice", "nope").await;
    let unknown_user = observable(&s, "nobody", "nope").await;
    assert_eq!(wrong_password.0, 401);
    assert_eq!(wrong_password, unknown_user);

    let before = s.reload_attempts();
    replace_file(&s.htpasswd, &format!("alice:{}\n", bcrypt("alice-pw")));
    let status = s.reloaded(before).await;
    assert_eq!(status.last_error, None);
    let removed_user = observable(&s, "bob", "bob-pw").await;
    assert_eq!(
        removed_user, wrong_password,
        "a removed user must look like any other failure, cached or not"
    );
}

#[tokio::test]
async fn malformed_authorization_is_a_clean_401_never_a_crash() {
    // Malformed credentials count as failures; this test is about parsing, so turn the
    // limiter off (tests/throttle.rs covers the counting).
    let s = setup("builtin:echo", "[rate_limit]\nenabled = false\n").await;
    let huge = format!("Basic {}", "QUFB".repeat(2000));
    let cases: Vec<&[u8]> = vec![
        b"Basic",
        b"Basic ",
        b"Basic !!!notbase64!!!",
        b"Basic YWxpY2U=",             // "alice": no colon
        b"Basic OmFsaWNlLXB3",         // ":alice-pw": empty user
        b"Basic /2FsaWNlOmFsaWNlLXB3", // non-UTF-8 user
        b"Digest username=\"alice\"",
        b"Bearer abc.def.ghi",
        b"Basicx YWxpY2U6YWxpY2UtcHc=",
        huge.as_bytes(),
    ];
    for value in cases {
        let head = format!(
            "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: {}\r\n\r\n",
            String::from_utf8_lossy(value)
        );
        let raw = raw_exchange(&s.pki, s.proxy.addr, head.as_bytes()).await;
        assert!(
            raw.starts_with("HTTP/1.1 401"),
            "{:?} -> {}",
            String::from_utf8_lossy(value),
            &raw[..raw.len().min(80)]
        );
        assert!(
            raw.contains("www-authenticate: Basic realm=\"Test Realm\""),
            "{raw}"
        );
    }
    // Two Authorization fields, even if one is right, are refused.
    let raw = raw_exchange(
        &s.pki,
        s.proxy.addr,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Basic YWxpY2U6YWxpY2UtcHc=\r\nAuthorization: Basic Ym9iOmJvYi1wdw==\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
    // Scheme names are case-insensitive (RFC 9110 11.1).
    let raw = raw_exchange(
        &s.pki,
        s.proxy.addr,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: bAsIc YWxpY2U6YWxpY2UtcHc=\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert_eq!(s.status_as("alice", "alice-pw").await, 200);
}

#[tokio::test]
async fn utf8_credentials_work() {
    let pki = Pki::new();
    std::fs::write(
        pki.dir.path().join("users"),
        format!("jörg:{}\n", bcrypt("pässwörd")),
    )
    .unwrap();
    let config = format!(
        "{}{}[auth.basic]\nhtpasswd = \"users\"\n[[route]]\npath = \"/\"\nupstream = \"builtin:echo\"\n",
        server_section(""),
        pki.tls_section()
    );
    let proxy = Proxy::start(pki.dir.path(), &config).await;
    let response = pki
        .client(proxy.addr)
        .build()
        .unwrap()
        .get(url(proxy.addr, "/"))
        .basic_auth("jörg", Some("pässwörd"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["headers"]["x-forwarded-user"][0], "jörg");
}

#[tokio::test]
async fn live_reload_changes_passwords_and_groups_and_survives_a_broken_file() {
    let upstream = spawn_inspecting_upstream().await;
    let s = setup(&format!("http://{upstream}"), "").await;
    assert_eq!(s.status_as("alice", "alice-pw").await, 200);
    assert_eq!(
        s.status_as("alice", "alice-pw").await,
        200,
        "now served from the cache"
    );

    // A changed password: the old one stops working at once although it is cached.
    let before = s.reload_attempts();
    replace_file(
        &s.htpasswd,
        &format!("alice:{}\nbob:{}\n", bcrypt("new-pw"), bcrypt("bob-pw")),
    );
    assert_eq!(s.reloaded(before).await.last_error, None);
    assert_eq!(s.status_as("alice", "alice-pw").await, 401);
    assert_eq!(s.status_as("alice", "new-pw").await, 200);

    // Group membership follows the group file.
    let before = s.reload_attempts();
    replace_file(&s.groups, "ops: bob\n");
    assert_eq!(s.reloaded(before).await.last_error, None);
    let seen: serde_json::Value = s
        .client()
        .get(url(s.proxy.addr, "/"))
        .basic_auth("alice", Some("new-pw"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen_header(&seen, "x-forwarded-groups"), None);

    // A broken file is refused and the previous users stay.
    let before = s.reload_attempts();
    replace_file(&s.htpasswd, "alice:not-a-hash\n");
    let status = s.reloaded(before).await;
    let error = status.last_error.expect("the broken file is reported");
    assert!(error.contains("line 1"), "{error}");
    assert!(
        !error.contains("not-a-hash"),
        "the error must not quote the file: {error}"
    );
    assert_eq!(s.status_as("alice", "new-pw").await, 200);
    assert_eq!(s.status_as("bob", "bob-pw").await, 200);

    // An in-place edit (no rename) is picked up too.
    let before = s.reload_attempts();
    std::fs::write(&s.htpasswd, format!("carol:{}\n", bcrypt("carol-pw"))).unwrap();
    assert_eq!(s.reloaded(before).await.last_error, None);
    assert_eq!(s.status_as("carol", "carol-pw").await, 200);
    assert_eq!(s.status_as("alice", "new-pw").await, 401);
}
