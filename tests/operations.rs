//! Operations end to end: live reload of the config, certificates and keys (a new
//! snapshot per reload, old connections unharmed, broken changes refused), the admin
//! listener's health, readiness and Prometheus metrics.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::tokens::{Signer, now};
use common::*;
use rcgen::{CertificateParams, KeyPair};
use sallyport::auth::htpasswd::{NewHash, hash_password};
use sallyport::reload::{ReloadStatus, Trigger};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn bcrypt(password: &str) -> String {
    hash_password(password.as_bytes(), NewHash::Bcrypt { cost: 4 }).unwrap()
}

/// Replaces a file the way editors and Kubernetes do: write a sibling, rename over.
fn replace_file(path: &Path, content: &str) {
    let tmp = path.with_extension("swap");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// An admin section on an ephemeral port; `127.0.0.1:0` never clashes with traffic.
fn admin_section(check_upstreams: bool) -> String {
    format!("[admin]\nlisten = \"127.0.0.1:0\"\ncheck_upstreams = {check_upstreams}\n")
}

/// Waits (bounded, not a sleep) until the reloader reports `done`.
async fn reload_until(proxy: &Proxy, done: impl Fn(&ReloadStatus) -> bool) -> ReloadStatus {
    let mut status = proxy.reloader.status();
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| done(s)))
        .await
        .expect("the reload was seen within 10 s")
        .unwrap()
        .clone()
}

async fn admin_get(proxy: &Proxy, path: &str) -> (u16, String) {
    let admin = proxy.admin.expect("[admin] is configured");
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{admin}{path}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The value of one series, written exactly as the exposition writes it.
fn series(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.split(' ').next()?.parse().ok()
    })
}

/// One HTTP/1.1 exchange on an open connection; `HEAD`, so the answer ends with its head.
async fn head_on<S: AsyncReadExt + AsyncWriteExt + Unpin>(stream: &mut S, path: &str) -> String {
    stream
        .write_all(format!("HEAD {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        assert_eq!(
            n,
            1,
            "connection closed after {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

fn status_of(head: &str) -> u16 {
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

/// TLS, the admin listener and one public route to `builtin:echo`.
async fn echo_with_admin() -> (Pki, String, Proxy) {
    let pki = Pki::new();
    let config = format!(
        "{}{}{}{}",
        server_section(""),
        pki.tls_section(),
        admin_section(false),
        public_route("/", "builtin:echo")
    );
    let proxy = Proxy::start(pki.dir.path(), &config).await;
    (pki, config, proxy)
}

#[tokio::test]
async fn a_config_change_applies_to_the_next_request_on_a_kept_alive_connection() {
    let pki = Pki::new();
    std::fs::write(
        pki.dir.path().join("users"),
        format!("alice:{}\n", bcrypt("pw")),
    )
    .unwrap();
    let head = format!("{}{}", server_section(""), pki.tls_section());
    let open = format!("{head}{}", public_route("/", "builtin:echo"));
    let proxy = Proxy::start(pki.dir.path(), &open).await;

    let mut kept = pki.raw_tls(proxy.addr).await;
    assert_eq!(status_of(&head_on(&mut kept, "/x").await), 200);

    let locked = format!(
        "{head}[auth.basic]\nhtpasswd = \"users\"\n[[route]]\npath = \"/\"\nupstream = \"builtin:echo\"\n"
    );
    replace_file(&pki.dir.path().join("sallyport.toml"), &locked);
    let status = reload_until(&proxy, |s| s.successes >= 1).await;
    assert_eq!(status.last_error, None);

    // Same connection, next request: the new config's answer.
    let answer = head_on(&mut kept, "/x").await;
    assert_eq!(status_of(&answer), 401, "{answer}");
    assert!(answer.contains("www-authenticate: Basic"), "{answer}");
    let client = pki.client(proxy.addr).build().unwrap();
    let ok = client
        .get(url(proxy.addr, "/x"))
        .basic_auth("alice", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn a_broken_change_keeps_the_running_config_and_is_counted() {
    let (pki, config, proxy) = echo_with_admin().await;
    let client = pki.client(proxy.addr).build().unwrap();
    let config_path = pki.dir.path().join("sallyport.toml");

    // Not TOML at all, then TOML that fails validation: neither may take effect.
    replace_file(&config_path, "[server\nlisten = ");
    let status = reload_until(&proxy, |s| s.attempts >= 1).await;
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("sallyport.toml")
    );
    assert_eq!(status.successes, 0);
    replace_file(
        &config_path,
        &config.replace("builtin:echo", "http://[bad upstream"),
    );
    let status = reload_until(&proxy, |s| s.attempts >= 2).await;
    assert!(status.last_error.is_some());
    assert_eq!(status.successes, 0);
    // Valid, but it would turn the TLS listener into plain HTTP under its clients.
    replace_file(&config_path, &config.replace(&pki.tls_section(), ""));
    let status = reload_until(&proxy, |s| s.attempts >= 3).await;
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("[server.tls] needs a restart")
    );
    assert_eq!(status.successes, 0);
    let response = client.get(url(proxy.addr, "/still")).send().await.unwrap();
    assert_eq!(response.status(), 200);

    let (_, metrics) = admin_get(&proxy, "/metrics").await;
    assert_eq!(
        series(&metrics, "sallyport_reloads_total{result=\"failure\"}"),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        series(&metrics, "sallyport_config_last_reload_successful"),
        Some(0.0)
    );

    // Fixed: the next change lands, and the gauge says so.
    replace_file(&config_path, &config.replace("\"/\"", "\"/v2\""));
    reload_until(&proxy, |s| s.successes >= 1).await;
    assert_eq!(
        client
            .get(url(proxy.addr, "/still"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let (_, metrics) = admin_get(&proxy, "/metrics").await;
    assert_eq!(
        series(&metrics, "sallyport_config_last_reload_successful"),
        Some(1.0)
    );
    assert_eq!(
        series(&metrics, "sallyport_reloads_total{result=\"success\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_changed_listen_address_waits_for_a_restart_and_the_rest_applies() {
    let pki = Pki::new();
    let config = format!(
        "{}{}{}",
        server_section(""),
        pki.tls_section(),
        public_route("/", "builtin:echo")
    );
    let proxy = Proxy::start(pki.dir.path(), &config).await;
    let moved = format!(
        "[server]\nlisten = [\"127.0.0.1:1\"]\n{}{}",
        pki.tls_section(),
        public_route("/moved", "builtin:echo")
    );
    replace_file(&pki.dir.path().join("sallyport.toml"), &moved);
    // SIGHUP's path: a forced reload.
    let reloader = Arc::clone(&proxy.reloader);
    assert!(
        tokio::task::spawn_blocking(move || reloader.reload(Trigger::Signal))
            .await
            .unwrap()
    );
    let client = pki.client(proxy.addr).build().unwrap();
    assert_eq!(
        client
            .get(url(proxy.addr, "/moved/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "still listening where it was, with the new routes"
    );
}

/// A second certificate for `localhost`, from its own CA, expiring at a known time.
fn second_certificate(dir: &Path) -> (String, rustls::pki_types::CertificateDer<'static>) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_after = rcgen::date_time_ymd(2031, 1, 1);
    let leaf = params.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("next.crt"), format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    std::fs::write(dir.join("next.key"), key.serialize_pem()).unwrap();
    (ca.pem(), leaf.der().clone())
}

fn peer_leaf(
    tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> rustls::pki_types::CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test]
async fn a_rotated_certificate_is_served_to_new_connections_while_old_ones_keep_working() {
    let (pki, _, proxy) = echo_with_admin().await;
    let (next_ca, next_leaf) = second_certificate(pki.dir.path());
    let mut both = pki.client_config(&[b"http/1.1"]);
    {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for pem in [&pki.ca_pem, &next_ca] {
            roots
                .add(rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
                .unwrap();
        }
        both = rustls::ClientConfig::builder_with_provider(both.crypto_provider().clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    }

    let mut old = pki.raw_tls_with(proxy.addr, both.clone()).await;
    let first_leaf = peer_leaf(&old);
    assert_eq!(status_of(&head_on(&mut old, "/before").await), 200);
    let (_, metrics) = admin_get(&proxy, "/metrics").await;
    let first_expiry = series(
        &metrics,
        "sallyport_tls_certificate_expiry_timestamp_seconds",
    )
    .unwrap();

    // cert-manager style: both files replaced; a half-written pair must not be served.
    let dir = pki.dir.path();
    std::fs::rename(dir.join("next.key"), &pki.key_path).unwrap();
    std::fs::rename(dir.join("next.crt"), &pki.cert_path).unwrap();
    reload_until(&proxy, |s| s.successes >= 1).await;

    let mut new = pki.raw_tls_with(proxy.addr, both).await;
    assert_eq!(peer_leaf(&new), next_leaf);
    assert_ne!(peer_leaf(&new), first_leaf);
    assert_eq!(status_of(&head_on(&mut new, "/after").await), 200);
    // The connection from before the rotation is untouched.
    assert_eq!(status_of(&head_on(&mut old, "/still").await), 200);

    let (_, metrics) = admin_get(&proxy, "/metrics").await;
    let expiry = series(
        &metrics,
        "sallyport_tls_certificate_expiry_timestamp_seconds",
    )
    .unwrap();
    assert_eq!(expiry, 1_924_992_000.0, "2031-01-01T00:00:00Z");
    assert_ne!(expiry, first_expiry);
}

#[tokio::test]
async fn a_rotated_signing_key_stops_old_tokens_at_once() {
    let pki = Pki::new();
    let first = Signer::new("k1", jsonwebtoken::Algorithm::RS256);
    let second = Signer::new("k2", jsonwebtoken::Algorithm::RS256);
    let key_path = pki.dir.path().join("jwt.pem");
    std::fs::write(&key_path, &first.public_pem).unwrap();
    let config = format!(
        "{}{}[auth.jwt]\nkeys = [\"jwt.pem\"]\nalgorithms = [\"RS256\"]\naudiences = [\"api\"]\n[[route]]\npath = \"/\"\nupstream = \"builtin:echo\"\n",
        server_section(""),
        pki.tls_section(),
    );
    let proxy = Proxy::start(pki.dir.path(), &config).await;
    let client = pki.client(proxy.addr).build().unwrap();
    let claims = json!({"sub": "svc", "aud": "api", "exp": now() + 600});
    let (old_token, new_token) = (first.sign(&claims), second.sign(&claims));
    let status = |token: String| {
        let request = client.get(url(proxy.addr, "/")).bearer_auth(token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // Twice, so the old token is in the verified-token cache when the key rotates.
    assert_eq!(status(old_token.clone()).await, 200);
    assert_eq!(status(old_token.clone()).await, 200);
    assert_eq!(status(new_token.clone()).await, 401);

    replace_file(&key_path, &second.public_pem);
    reload_until(&proxy, |s| s.successes >= 1).await;
    assert_eq!(status(old_token).await, 401);
    assert_eq!(status(new_token).await, 200);
}

#[tokio::test]
async fn metrics_count_requests_outcomes_cache_and_throttling() {
    let pki = Pki::new();
    std::fs::write(
        pki.dir.path().join("users"),
        format!("alice:{}\n", bcrypt("pw")),
    )
    .unwrap();
    let config = format!(
        "{}{}{}[auth.basic]\nhtpasswd = \"users\"\n[rate_limit]\nmax_failures = 2\nwindow = \"1m\"\nblock_for = \"1m\"\n[[route]]\npath = \"/\"\nupstream = \"builtin:echo\"\n",
        server_section(""),
        pki.tls_section(),
        admin_section(false),
    );
    let proxy = Proxy::start(pki.dir.path(), &config).await;
    let client = pki.client(proxy.addr).build().unwrap();
    let get = |user: Option<(&str, &str)>| {
        let mut request = client.get(url(proxy.addr, "/"));
        if let Some((user, password)) = user {
            request = request.basic_auth(user, Some(password));
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get(None).await, 401);
    assert_eq!(get(Some(("alice", "pw"))).await, 200);
    assert_eq!(get(Some(("alice", "pw"))).await, 200);
    assert_eq!(get(Some(("alice", "wrong"))).await, 401);
    assert_eq!(get(Some(("mallory", "guess"))).await, 401);
    assert_eq!(get(Some(("alice", "pw"))).await, 429);

    let (status, metrics) = admin_get(&proxy, "/metrics").await;
    assert_eq!(status, 200);
    let expect = [
        ("sallyport_requests_total{route=\"/\",status=\"200\"}", 2.0),
        ("sallyport_requests_total{route=\"/\",status=\"401\"}", 3.0),
        ("sallyport_requests_total{route=\"/\",status=\"429\"}", 1.0),
        (
            "sallyport_auth_total{scheme=\"none\",outcome=\"missing\",reason=\"missing\"}",
            1.0,
        ),
        (
            "sallyport_auth_total{scheme=\"basic\",outcome=\"success\",reason=\"success\"}",
            2.0,
        ),
        (
            "sallyport_auth_total{scheme=\"basic\",outcome=\"invalid\",reason=\"invalid_password\"}",
            1.0,
        ),
        (
            "sallyport_auth_total{scheme=\"basic\",outcome=\"unknown_user\",reason=\"unknown_user\"}",
            1.0,
        ),
        (
            "sallyport_auth_total{scheme=\"basic\",outcome=\"throttled\",reason=\"throttled_client\"}",
            1.0,
        ),
        ("sallyport_throttled_total{by=\"client\"}", 1.0),
        ("sallyport_throttle_tracked{table=\"clients\"}", 1.0),
        (
            "sallyport_credential_cache_total{scheme=\"basic\",result=\"hit\"}",
            1.0,
        ),
        (
            "sallyport_credential_cache_total{scheme=\"basic\",result=\"miss\"}",
            3.0,
        ),
        (
            "sallyport_upstream_duration_seconds_count{route=\"/\"}",
            2.0,
        ),
        ("sallyport_open_connections", 1.0),
    ];
    for (name, value) in expect {
        assert_eq!(series(&metrics, name), Some(value), "{name} in\n{metrics}");
    }
    let expiry = series(
        &metrics,
        "sallyport_tls_certificate_expiry_timestamp_seconds",
    )
    .unwrap();
    assert!(expiry > now() as f64, "{expiry}");
    assert!(
        metrics.contains("sallyport_build_info{version="),
        "{metrics}"
    );
    assert!(metrics.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    // No credential ever reaches the metrics.
    assert!(!metrics.contains("mallory") && !metrics.contains("wrong"));

    assert_eq!(
        admin_get(&proxy, "/healthz").await,
        (200, "ok\n".to_string())
    );
    assert_eq!(admin_get(&proxy, "/nope").await.0, 404);
}

#[tokio::test]
async fn readiness_follows_the_upstream_and_turns_off_while_draining() {
    let pki = Pki::new();
    // A port nothing listens on, then something does.
    let parked = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_addr: SocketAddr = parked.local_addr().unwrap();
    drop(parked);
    let config = format!(
        "{}{}{}{}",
        server_section(""),
        pki.tls_section(),
        admin_section(true),
        public_route("/", &format!("http://{upstream_addr}")),
    );
    let mut proxy = Proxy::start(pki.dir.path(), &config).await;

    let (status, report) = admin_get(&proxy, "/readyz").await;
    assert_eq!(status, 503, "{report}");
    assert!(
        report.contains(&format!("fail upstream / -> http://{upstream_addr}")),
        "{report}"
    );
    assert_eq!(
        admin_get(&proxy, "/healthz").await.0,
        200,
        "alive all the same"
    );

    // The upstream comes up; it answers slowly, so a request is in flight at shutdown.
    let listener = tokio::net::TcpListener::bind(upstream_addr).await.unwrap();
    let (release, released) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let released = released.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let mut released = released.clone();
                    async move {
                        let _ = released.wait_for(|r| *r).await;
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(full("late")))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let (status, report) = admin_get(&proxy, "/readyz").await;
    assert_eq!(status, 200, "{report}");
    assert!(report.contains(&format!("ok upstream / -> http://{upstream_addr}")));

    let client = pki.client(proxy.addr).build().unwrap();
    let slow = tokio::spawn({
        let request = client.get(url(proxy.addr, "/slow"));
        async move { request.send().await.unwrap().status().as_u16() }
    });
    // Wait until the request is in flight (bounded), then start draining.
    let mut in_flight = false;
    for _ in 0..100 {
        let (_, metrics) = admin_get(&proxy, "/metrics").await;
        if series(&metrics, "sallyport_open_connections") == Some(1.0) {
            in_flight = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(in_flight);
    proxy.begin_shutdown();
    let mut draining = false;
    for _ in 0..100 {
        let (status, report) = admin_get(&proxy, "/readyz").await;
        if status == 503 && report.contains("fail accepting traffic") {
            draining = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(draining, "readiness turned off while draining");
    release.send(true).unwrap();
    assert_eq!(slow.await.unwrap(), 200, "the in-flight request finished");
    tokio::time::timeout(Duration::from_secs(10), proxy.task.take().unwrap())
        .await
        .expect("the server stopped after draining")
        .unwrap();
}
