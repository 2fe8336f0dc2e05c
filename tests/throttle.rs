//! Brute-force protection through the running proxy: real TLS clients on several
//! loopback addresses (127.0.0.x), wrong passwords, and what each of them sees.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use sallyport::auth::htpasswd::{NewHash, hash_password};

struct Setup {
    pki: Pki,
    proxy: Proxy,
}

/// alice/alice-pw and bob/bob-pw; `/public` is public, `/` requires Basic.
async fn setup(rate_limit: &str, server_extra: &str) -> Setup {
    let pki = Pki::new();
    let hash = |pw: &str| hash_password(pw.as_bytes(), NewHash::Bcrypt { cost: 4 }).unwrap();
    std::fs::write(
        pki.dir.path().join("users.htpasswd"),
        format!("alice:{}\nbob:{}\n", hash("alice-pw"), hash("bob-pw")),
    )
    .unwrap();
    let config = format!(
        "{}{}[auth.basic]\nhtpasswd = \"users.htpasswd\"\n[rate_limit]\n{rate_limit}\n{}[[route]]\npath = \"/\"\nupstream = \"builtin:echo\"\n",
        server_section(server_extra),
        pki.tls_section(),
        public_route("/public", "builtin:echo"),
    );
    let proxy = Proxy::start(pki.dir.path(), &config).await;
    Setup { pki, proxy }
}

impl Setup {
    /// A client whose connections come from `source` (any 127.0.0.0/8 address).
    fn client_from(&self, source: &str) -> reqwest::Client {
        self.pki
            .client(self.proxy.addr)
            .local_address(source.parse::<IpAddr>().unwrap())
            .build()
            .unwrap()
    }

    async fn get(
        &self,
        source: &str,
        path: &str,
        credentials: Option<(&str, &str)>,
        xff: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .client_from(source)
            .get(url(self.proxy.addr, path))
            .header("accept", "application/json");
        if let Some((user, password)) = credentials {
            request = request.basic_auth(user, Some(password));
        }
        if let Some(xff) = xff {
            request = request.header("x-forwarded-for", xff);
        }
        request.send().await.unwrap()
    }

    async fn status(&self, source: &str, credentials: Option<(&str, &str)>) -> u16 {
        self.get(source, "/", credentials, None)
            .await
            .status()
            .as_u16()
    }
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_guessing_client_is_blocked_with_an_accurate_retry_after() {
    let s = setup(
        "max_failures = 3\nwindow = \"1m\"\nblock_for = \"15m\"\nmax_failures_per_user = 1000",
        "",
    )
    .await;
    for guess in ["a", "b", "c"] {
        assert_eq!(s.status("127.0.0.1", Some(("alice", guess))).await, 401);
    }

    // The right password is refused now, before any verification.
    let blocked = s
        .get("127.0.0.1", "/", Some(("alice", "alice-pw")), None)
        .await;
    assert_eq!(blocked.status(), 429);
    assert_eq!(retry_after(&blocked), 900);
    assert_eq!(blocked.headers()["cache-control"], "no-store");
    assert!(!blocked.headers().contains_key("www-authenticate"));
    let body: serde_json::Value = blocked.json().await.unwrap();
    assert_eq!(body["error"], "too_many_attempts");
    assert_eq!(body["status"], 429);
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    // Even without credentials: every request that needs authentication.
    assert_eq!(s.status("127.0.0.1", None).await, 429);
    // Public routes need no authentication, so they are not throttled.
    let public = s.get("127.0.0.1", "/public/x", None, None).await;
    assert_eq!(public.status(), 200);

    // Another client is unaffected, by any path.
    assert_eq!(
        s.status("127.0.0.2", Some(("alice", "alice-pw"))).await,
        200
    );
    assert_eq!(s.status("127.0.0.2", Some(("bob", "bob-pw"))).await, 200);

    // Retry-After counts down with the clock, and is exact at the end.
    tokio::time::advance(Duration::from_secs(600)).await;
    let later = s.get("127.0.0.1", "/", None, None).await;
    assert_eq!(later.status(), 429);
    assert_eq!(retry_after(&later), 300);
    tokio::time::advance(Duration::from_secs(300)).await;
    assert_eq!(
        s.status("127.0.0.1", Some(("alice", "alice-pw"))).await,
        200
    );
}

#[tokio::test]
async fn missing_and_unsupported_credentials_are_not_counted() {
    let s = setup("max_failures = 2", "").await;
    for _ in 0..6 {
        assert_eq!(s.status("127.0.0.1", None).await, 401);
        let digest = s
            .client_from("127.0.0.1")
            .get(url(s.proxy.addr, "/"))
            .header("authorization", "Digest username=\"alice\"")
            .send()
            .await
            .unwrap();
        assert_eq!(digest.status(), 401);
    }
    // Malformed credentials are guesses and do count.
    for _ in 0..2 {
        let malformed = s
            .client_from("127.0.0.1")
            .get(url(s.proxy.addr, "/"))
            .header("authorization", "Basic !!!")
            .send()
            .await
            .unwrap();
        assert_eq!(malformed.status(), 401);
    }
    assert_eq!(
        s.status("127.0.0.1", Some(("alice", "alice-pw"))).await,
        429
    );
}

#[tokio::test]
async fn concurrent_guesses_get_no_more_than_max_failures_answers() {
    let s = setup("max_failures = 3\nmax_failures_per_user = 1000", "").await;
    let client = s.client_from("127.0.0.1");
    let guesses = (0..24).map(|i| {
        let request = client
            .get(url(s.proxy.addr, "/"))
            .basic_auth("alice", Some(format!("guess-{i}")))
            .send();
        async move { request.await.unwrap().status().as_u16() }
    });
    let statuses = futures_util::future::join_all(guesses).await;
    let answered = statuses.iter().filter(|&&s| s == 401).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!(answered + refused, 24, "{statuses:?}");
    assert_eq!(answered, 3, "guesses that were checked: {statuses:?}");
}

#[tokio::test]
async fn a_username_under_attack_is_throttled_for_everyone_but_its_known_clients() {
    let s = setup("max_failures = 100\nmax_failures_per_user = 3", "").await;
    // Alice works from 127.0.0.10 before the attack starts.
    assert_eq!(
        s.status("127.0.0.10", Some(("alice", "alice-pw"))).await,
        200
    );

    // Three guesses from three different clients.
    for (i, source) in ["127.0.0.2", "127.0.0.3", "127.0.0.4"].iter().enumerate() {
        let guess = format!("guess-{i}");
        assert_eq!(s.status(source, Some(("alice", &guess))).await, 401);
        assert_eq!(s.status(source, Some(("ghost", &guess))).await, 401);
    }
    // A fourth client, even with the right password, is refused for alice...
    let refused = s
        .get("127.0.0.5", "/", Some(("alice", "alice-pw")), None)
        .await;
    assert_eq!(refused.status(), 429);
    let alice_retry = retry_after(&refused);
    assert!((3599..=3600).contains(&alice_retry), "{alice_retry}");
    // ...exactly as for a name that does not exist: nothing reveals which names are real.
    let ghost = s.get("127.0.0.5", "/", Some(("ghost", "x")), None).await;
    assert_eq!(ghost.status(), 429);
    assert!((3599..=3600).contains(&retry_after(&ghost)));

    // Other accounts from that client work, and alice's known client still works.
    assert_eq!(s.status("127.0.0.5", Some(("bob", "bob-pw"))).await, 200);
    assert_eq!(
        s.status("127.0.0.10", Some(("alice", "alice-pw"))).await,
        200
    );
}

#[tokio::test]
async fn forwarded_for_is_the_key_only_behind_a_trusted_proxy() {
    let s = setup(
        "max_failures = 2\nmax_failures_per_user = 1000",
        "trusted_proxies = [\"127.0.0.9\"]",
    )
    .await;
    // An untrusted peer cannot pick a new key per guess.
    for (i, fake) in ["198.51.100.1", "198.51.100.2"].iter().enumerate() {
        let guess = format!("guess-{i}");
        let r = s
            .get("127.0.0.1", "/", Some(("alice", &guess)), Some(fake))
            .await;
        assert_eq!(r.status(), 401);
    }
    let r = s
        .get(
            "127.0.0.1",
            "/",
            Some(("alice", "alice-pw")),
            Some("198.51.100.3"),
        )
        .await;
    assert_eq!(r.status(), 429, "X-Forwarded-For from an untrusted peer");

    // Behind the trusted proxy, the forwarded client is the key: one client blocked...
    for guess in ["a", "b"] {
        let r = s
            .get(
                "127.0.0.9",
                "/",
                Some(("alice", guess)),
                Some("203.0.113.5"),
            )
            .await;
        assert_eq!(r.status(), 401);
    }
    let blocked = s
        .get(
            "127.0.0.9",
            "/",
            Some(("alice", "alice-pw")),
            Some("203.0.113.5"),
        )
        .await;
    assert_eq!(blocked.status(), 429);
    // ...while other clients behind the same proxy, and the proxy itself, are not.
    let other = s
        .get(
            "127.0.0.9",
            "/",
            Some(("alice", "alice-pw")),
            Some("203.0.113.6"),
        )
        .await;
    assert_eq!(other.status(), 200);
    // A spoofed entry left of the trusted hop's is ignored: the key is what the
    // proxy appended.
    let spoofed = s
        .get(
            "127.0.0.9",
            "/",
            Some(("alice", "alice-pw")),
            Some("203.0.113.77, 203.0.113.5"),
        )
        .await;
    assert_eq!(spoofed.status(), 429);
}

#[tokio::test]
async fn rate_limit_settings_are_validated() {
    let pki = Pki::new();
    std::fs::write(pki.dir.path().join("users.htpasswd"), "alice:{SHA}x\n").unwrap();
    for (setting, complaint) in [
        ("max_failures = 0", "rate_limit.max_failures"),
        ("window = \"soon\"", "rate_limit.window"),
        ("block_for = \"0s\"", "rate_limit.block_for"),
        ("max_tracked = -1", "rate_limit.max_tracked"),
        (
            "redis = \"redis://:hunter2@127.0.0.1:notaport\"",
            "rate_limit.redis",
        ),
        ("redis = \"rediss://127.0.0.1\"", "rate_limit.redis"),
        ("colour = \"blue\"", "colour"),
    ] {
        let path = pki.dir.path().join("sallyport.toml");
        let text = format!(
            "{}[auth.basic]\nhtpasswd = \"users.htpasswd\"\n[rate_limit]\n{setting}\n[[route]]\npath = \"/\"\nupstream = \"builtin:echo\"\n",
            server_section("")
        );
        std::fs::write(&path, &text).unwrap();
        let error = sallyport::config::Config::load(&path)
            .expect_err(setting)
            .to_string();
        assert!(error.contains(complaint), "{setting}: {error}");
        assert!(!error.contains("hunter2"), "{error}");
    }
}
