//! End-to-end behaviour of the core proxy: a real server on 127.0.0.1:0 with a real TLS
//! certificate, real upstreams, and real clients.

mod common;

use std::sync::Arc;

use common::*;
use futures_util::{SinkExt, StreamExt};
use hyper::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;

async fn proxy_to(pki: &Pki, upstream: &str, server_extra: &str) -> Proxy {
    let config = format!(
        "{}{}{}",
        server_section(server_extra),
        pki.tls_section(),
        public_route("/", upstream)
    );
    Proxy::start(pki.dir.path(), &config).await
}

#[tokio::test]
async fn http1_and_http2_over_tls_reach_the_upstream() {
    let pki = Pki::new();
    let upstream = spawn_inspecting_upstream().await;
    let proxy = proxy_to(&pki, &format!("http://{upstream}"), "").await;

    let h1 = pki.client(proxy.addr).http1_only().build().unwrap();
    let response = h1.get(url(proxy.addr, "/a/b?x=1")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(response.status(), 200);
    let seen: serde_json::Value = response.json().await.unwrap();
    assert_eq!(seen["path"], "/a/b");
    assert_eq!(seen["query"], "x=1");

    let h2 = pki
        .client(proxy.addr)
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2
        .post(url(proxy.addr, "/h2"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let seen: serde_json::Value = response.json().await.unwrap();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["path"], "/h2");
    // The upstream always gets HTTP/1.1 with a Host header built from :authority.
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(
        seen_header(&seen, "host").unwrap(),
        format!("localhost:{}", proxy.addr.port())
    );
}

#[tokio::test]
async fn tls_versions_follow_min_version() {
    let pki = Pki::new();
    let proxy = proxy_to(&pki, "builtin:echo", "").await;
    let tls12_only = || {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::pem::PemObject::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
            .unwrap();
        rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
            .with_root_certificates(roots)
            .with_no_client_auth()
    };
    let tls = pki.raw_tls_with(proxy.addr, tls12_only()).await;
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let tls = pki.raw_tls(proxy.addr).await;
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

    let strict = format!(
        "{}{}min_version = \"1.3\"\n{}",
        server_section(""),
        pki.tls_section(),
        public_route("/", "builtin:echo")
    );
    let proxy13 = Proxy::start(pki.dir.path(), &strict).await;
    let tcp = tokio::net::TcpStream::connect(proxy13.addr).await.unwrap();
    let refused = tokio_rustls::TlsConnector::from(Arc::new(tls12_only()))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await;
    assert!(
        refused.is_err(),
        "a TLS 1.2 client must be refused when min_version = 1.3"
    );
}

#[tokio::test]
async fn head_answers_carry_no_body_over_either_protocol() {
    let pki = Pki::new();
    let proxy = proxy_to(&pki, "builtin:echo", "").await;
    let h1 = pki.client(proxy.addr).http1_only().build().unwrap();
    let h2 = pki
        .client(proxy.addr)
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for client in [h1, h2] {
        // Our own echo and our own 404 page both have a body for GET.
        for (path, status) in [("/x", 200), ("/.sallyport/nothing", 404)] {
            let response = client.head(url(proxy.addr, path)).send().await.unwrap();
            assert_eq!(response.status(), status, "{path}");
            let length: u64 = response.headers()["content-length"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(length > 0, "HEAD reports the GET length");
            assert!(response.bytes().await.unwrap().is_empty());
        }
    }
}

#[tokio::test]
async fn builtin_echo_reports_the_forwarded_request() {
    let pki = Pki::new();
    let proxy = proxy_to(&pki, "builtin:echo", "").await;
    let client = pki.client(proxy.addr).build().unwrap();
    let response = client
        .put(url(proxy.addr, "/x/./y/../z?q=1"))
        .header("x-custom", "one")
        .body(vec![7u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/x/z");
    assert_eq!(echo["query"], "q=1");
    assert_eq!(echo["body_bytes"], 1000);
    assert_eq!(echo["headers"]["x-custom"][0], "one");
    assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https");
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let pki = Pki::new();
    let upstream = spawn_upstream(|req| async move {
        let mut response = inspect(req).await;
        let h = response.headers_mut();
        h.insert("connection", "X-Upstream-Hop".parse().unwrap());
        h.insert("x-upstream-hop", "secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-authenticate", "Basic".parse().unwrap());
        h.insert("x-upstream-end-to-end", "kept".parse().unwrap());
        response
    })
    .await;
    let proxy = proxy_to(&pki, &format!("http://{upstream}"), "").await;

    // Raw bytes: a well-behaved client library would refuse to send some of these.
    let request = "GET /hop HTTP/1.1\r\nHost: localhost\r\n\
                   Connection: close, X-Client-Hop, X-Forwarded-User\r\n\
                   X-Client-Hop: secret\r\nKeep-Alive: timeout=100\r\nProxy-Connection: keep-alive\r\n\
                   TE: gzip\r\nTrailer: X-Trailer\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n\
                   X-Forwarded-User: admin\r\nX-End-To-End: kept\r\n\r\n";
    let raw = raw_exchange(&pki, proxy.addr, request.as_bytes()).await;
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let head_lower = head.to_ascii_lowercase();
    assert!(
        !head_lower.contains("x-upstream-hop"),
        "response hop header leaked: {head}"
    );
    assert!(!head_lower.contains("keep-alive"), "{head}");
    assert!(!head_lower.contains("proxy-authenticate"), "{head}");
    assert!(head_lower.contains("x-upstream-end-to-end: kept"), "{head}");

    let seen: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    let names = seen_header_names(&seen);
    for hop in [
        "x-client-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "proxy-authorization",
        "x-forwarded-user",
    ] {
        assert!(
            !names.contains(&hop.to_string()),
            "{hop} reached the upstream: {names:?}"
        );
    }
    assert_eq!(seen_header(&seen, "x-end-to-end").as_deref(), Some("kept"));
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_client_are_replaced() {
    let pki = Pki::new();
    let upstream = spawn_inspecting_upstream().await;
    let proxy = proxy_to(&pki, &format!("http://{upstream}"), "").await;
    let client = pki.client(proxy.addr).http1_only().build().unwrap();
    let seen: serde_json::Value = client
        .get(url(proxy.addr, "/"))
        .header("X-Forwarded-For", "203.0.113.66")
        .header("X-Forwarded-Proto", "http")
        .header("X-Forwarded-Host", "evil.example")
        .header("X-Real-IP", "203.0.113.66")
        .header("X-Request-Id", "attacker-chosen")
        .header("Forwarded", "for=203.0.113.66")
        .header("X-Forwarded-User", "admin")
        .header("x_forwarded_user", "admin")
        .header("X.Forwarded.User", "admin")
        .header("X-FORWARDED-EMAIL", "admin@example.com")
        .header("x-forwarded_groups", "admins")
        .header("X-Forwarded-Preferred-Username", "admin")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        seen_header(&seen, "x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        seen_header(&seen, "x-real-ip").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        seen_header(&seen, "x-forwarded-proto").as_deref(),
        Some("https")
    );
    assert_eq!(
        seen_header(&seen, "x-forwarded-host").unwrap(),
        format!("localhost:{}", proxy.addr.port())
    );
    let request_id = seen_header(&seen, "x-request-id").unwrap();
    assert_ne!(request_id, "attacker-chosen");
    assert_eq!(request_id.len(), 32);
    assert_eq!(seen_header(&seen, "forwarded"), None);
    for name in seen_header_names(&seen) {
        let folded: String = name.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        assert!(
            ![
                "xforwardeduser",
                "xforwardedemail",
                "xforwardedgroups",
                "xforwardedpreferredusername"
            ]
            .contains(&folded.as_str()),
            "client identity header {name} reached the upstream"
        );
    }
}

#[tokio::test]
async fn forwarded_headers_from_a_trusted_proxy_are_extended() {
    let pki = Pki::new();
    let upstream = spawn_inspecting_upstream().await;
    let proxy = proxy_to(
        &pki,
        &format!("http://{upstream}"),
        "trusted_proxies = [\"127.0.0.0/8\"]",
    )
    .await;
    let client = pki.client(proxy.addr).http1_only().build().unwrap();
    let response = client
        .get(url(proxy.addr, "/"))
        .header("X-Forwarded-For", "198.51.100.1, 203.0.113.7")
        .header("X-Forwarded-Proto", "http")
        .header("X-Forwarded-Host", "app.example.com")
        .header("X-Request-Id", "lb-7f3a")
        .header("X-Forwarded-User", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "lb-7f3a");
    let seen: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        seen_header(&seen, "x-forwarded-for").as_deref(),
        Some("198.51.100.1, 203.0.113.7, 127.0.0.1")
    );
    assert_eq!(
        seen_header(&seen, "x-real-ip").as_deref(),
        Some("203.0.113.7")
    );
    assert_eq!(
        seen_header(&seen, "x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(
        seen_header(&seen, "x-forwarded-host").as_deref(),
        Some("app.example.com")
    );
    assert_eq!(
        seen_header(&seen, "x-request-id").as_deref(),
        Some("lb-7f3a")
    );
    // Even a trusted proxy cannot assert identity: that is ours to set.
    assert_eq!(seen_header(&seen, "x-forwarded-user"), None);
}

#[tokio::test]
async fn websocket_upgrade_is_relayed_end_to_end() {
    let pki = Pki::new();
    let ws_upstream = spawn_websocket_echo_upstream().await;
    let proxy = proxy_to(&pki, &format!("http://{ws_upstream}"), "").await;
    let tls = pki.raw_tls(proxy.addr).await;
    let (mut ws, response) =
        tokio_tungstenite::client_async(format!("wss://localhost:{}/ws", proxy.addr.port()), tls)
            .await
            .expect("the upgrade goes through the proxy");
    assert_eq!(response.status(), 101);
    for i in 0..3 {
        ws.send(Message::text(format!("ping {i}"))).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), format!("ping {i}"));
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_data().as_ref(),
        &[0u8, 1, 2, 255]
    );
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn refused_upstream_is_a_negotiated_502() {
    let pki = Pki::new();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let proxy = proxy_to(&pki, &format!("http://{closed}"), "").await;
    let client = pki.client(proxy.addr).build().unwrap();

    let json = client
        .get(url(proxy.addr, "/"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 502);
    assert_eq!(json.headers()["cache-control"], "no-store");
    let request_id = json.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: serde_json::Value = json.json().await.unwrap();
    assert_eq!(body["error"], "bad_gateway");
    assert_eq!(body["status"], 502);
    assert_eq!(body["request_id"], request_id.as_str());
    assert!(
        !body.to_string().contains(&closed.port().to_string()),
        "the body must not leak upstream details"
    );

    let html = client
        .get(url(proxy.addr, "/"))
        .header("accept", "text/html,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(html.status(), 502);
    assert!(
        html.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(html.text().await.unwrap().contains("502 Bad Gateway"));

    let text = client.get(url(proxy.addr, "/")).send().await.unwrap();
    assert!(
        text.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(text.text().await.unwrap().starts_with("502 Bad Gateway"));
}

#[tokio::test]
async fn routes_match_host_then_longest_normalised_prefix() {
    let pki = Pki::new();
    let api = spawn_upstream(|_req| async { Response::new(full("api")) }).await;
    let app = spawn_upstream(|_req| async { Response::new(full("app")) }).await;
    let admin = spawn_upstream(|_req| async { Response::new(full("admin-host")) }).await;
    let config = format!(
        "{}{}{}{}[[route]]\nhost = \"admin.localhost\"\npath = \"/\"\nupstream = \"http://{admin}\"\nauth = \"public\"\n",
        server_section(""),
        pki.tls_section(),
        public_route("/api", &format!("http://{api}")),
        public_route("/app/", &format!("http://{app}")),
    );
    let proxy = Proxy::start(pki.dir.path(), &config).await;
    let client = pki.client(proxy.addr).http1_only().build().unwrap();
    let get = |path: &'static str| {
        let client = client.clone();
        let addr = proxy.addr;
        async move {
            let r = client.get(url(addr, path)).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("/api").await, (200, "api".into()));
    assert_eq!(get("/api/v1/x").await, (200, "api".into()));
    assert_eq!(get("/app/page").await, (200, "app".into()));
    assert_eq!(get("/%61pp/page").await, (200, "app".into()));
    assert_eq!(get("/api/../app/x").await, (200, "app".into()));
    assert_eq!(get("/apix").await.0, 404);
    assert_eq!(get("/").await.0, 404);
    assert_eq!(get("/app%2Fpage").await.0, 400);

    let by_host = client
        .get(url(proxy.addr, "/api"))
        .header("host", format!("Admin.Localhost:{}", proxy.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(by_host.text().await.unwrap(), "admin-host");
}

#[tokio::test]
async fn unix_socket_and_https_upstreams() {
    let pki = Pki::new();
    // Unix socket upstream.
    let socket = pki.dir.path().join("app.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req| async move {
                    Ok::<_, std::convert::Infallible>(inspect(req).await)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    // HTTPS upstream with a certificate from the test CA, trusted through upstream_ca.
    let tls_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https_addr = tls_listener.local_addr().unwrap();
    let server_config = {
        use rustls::pki_types::pem::PemObject;
        let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(&pki.cert_path)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&pki.key_path).unwrap();
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap()
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    tokio::spawn(async move {
        while let Ok((stream, _)) = tls_listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(|req| async move {
                    Ok::<_, std::convert::Infallible>(inspect(req).await)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let config = format!(
        "{}{}{}[[route]]\npath = \"/secure\"\nupstream = \"https://localhost:{}/base\"\nupstream_ca = {:?}\nauth = \"public\"\n",
        server_section(""),
        pki.tls_section(),
        public_route("/sock", &format!("unix:{}", socket.display())),
        https_addr.port(),
        pki.ca_path(),
    );
    let proxy = Proxy::start(pki.dir.path(), &config).await;
    let client = pki.client(proxy.addr).build().unwrap();

    let seen: serde_json::Value = client
        .get(url(proxy.addr, "/sock/x"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["path"], "/sock/x");
    assert_eq!(
        seen_header(&seen, "x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );

    let response = client
        .get(url(proxy.addr, "/secure/y?z=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: serde_json::Value = response.json().await.unwrap();
    assert_eq!(seen["path"], "/base/secure/y");
    assert_eq!(seen["query"], "z=1");
}

#[tokio::test]
async fn oversize_headers_get_431_and_the_proxy_keeps_serving() {
    let pki = Pki::new();
    let proxy = proxy_to(
        &pki,
        "builtin:echo",
        "[server.limits]\nmax_header_bytes = 8192",
    )
    .await;
    let big = "a".repeat(12_000);
    let request =
        format!("GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    let raw = raw_exchange(&pki, proxy.addr, request.as_bytes()).await;
    assert!(
        raw.starts_with("HTTP/1.1 431"),
        "{}",
        &raw[..raw.len().min(200)]
    );

    let client = pki
        .client(proxy.addr)
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let h2 = client
        .get(url(proxy.addr, "/"))
        .header("x-big", big.as_str())
        .send()
        .await;
    match h2 {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => assert!(
            format!("{e:?}").to_lowercase().contains("reset") || e.is_request(),
            "{e:?}"
        ),
    }
    let ok = pki
        .client(proxy.addr)
        .build()
        .unwrap()
        .get(url(proxy.addr, "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_request_in_flight() {
    let pki = Pki::new();
    let (arrived_tx, mut arrived) = mpsc::channel::<()>(1);
    let release = Arc::new(Notify::new());
    let upstream = {
        let release = Arc::clone(&release);
        spawn_upstream(move |_req| {
            let arrived_tx = arrived_tx.clone();
            let release = Arc::clone(&release);
            async move {
                let _ = arrived_tx.send(()).await;
                release.notified().await;
                Response::new(full("finished"))
            }
        })
        .await
    };
    let mut proxy = proxy_to(
        &pki,
        &format!("http://{upstream}"),
        "shutdown_grace = \"30s\"",
    )
    .await;
    let client = pki.client(proxy.addr).build().unwrap();
    let in_flight = tokio::spawn(client.get(url(proxy.addr, "/slow")).send());
    arrived.recv().await.unwrap();

    proxy.begin_shutdown();
    // The listener closes promptly: bounded polling, no sleeping.
    let mut refused = false;
    for _ in 0..10_000 {
        if tokio::net::TcpStream::connect(proxy.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(
        refused,
        "new connections must be refused once shutdown starts"
    );
    assert!(
        !proxy.task.as_ref().unwrap().is_finished(),
        "run() must wait for the request in flight"
    );

    release.notify_one();
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "finished");
    proxy.task.take().unwrap().await.unwrap();
}

#[tokio::test]
async fn listens_on_several_addresses_including_ipv6() {
    let pki = Pki::new();
    let ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    let listen = if ipv6 {
        r#"["127.0.0.1:0", "[::1]:0"]"#
    } else {
        r#"["127.0.0.1:0", "127.0.0.2:0"]"#
    };
    let config = format!(
        "[server]\nlisten = {listen}\n{}{}",
        pki.tls_section(),
        public_route("/", "builtin:echo")
    );
    let proxy = Proxy::start(pki.dir.path(), &config).await;
    assert_eq!(proxy.addrs.len(), 2);
    for addr in &proxy.addrs {
        let client = pki.client(*addr).build().unwrap();
        let echo: serde_json::Value = client
            .get(url(*addr, "/"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            echo["headers"]["x-forwarded-for"][0].as_str().unwrap(),
            addr.ip().to_string()
        );
    }
}

#[tokio::test]
async fn plain_http_listener_without_tls() {
    let pki = Pki::new();
    let upstream = spawn_inspecting_upstream().await;
    let config = format!(
        "{}{}",
        server_section(""),
        public_route("/", &format!("http://{upstream}"))
    );
    let proxy = Proxy::start(pki.dir.path(), &config).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"GET /plain HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"x-forwarded-proto\":[\"http\"]"), "{out}");
}

#[tokio::test]
async fn path_parameters_and_userinfo_cannot_steer_routing() {
    let pki = Pki::new();
    let public = spawn_upstream(|_req| async { Response::new(full("public")) }).await;
    let admin = spawn_upstream(|req: hyper::Request<hyper::body::Incoming>| async move {
        Response::new(full(format!("admin {}", req.uri().path())))
    })
    .await;
    let config = format!(
        "{}{}{}{}",
        server_section(""),
        pki.tls_section(),
        public_route("/public", &format!("http://{public}")),
        public_route("/admin", &format!("http://{admin}")),
    );
    let proxy = Proxy::start(pki.dir.path(), &config).await;
    let exchange = |target: &'static str, host: &'static str| {
        let request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let pki = &pki;
        let addr = proxy.addr;
        async move { raw_exchange(pki, addr, request.as_bytes()).await }
    };
    // Servlet containers read "/public/..;/admin" as "/admin".
    assert!(
        exchange("/public/..;/admin", "localhost")
            .await
            .starts_with("HTTP/1.1 400")
    );
    assert!(
        exchange("/public/.;x/y", "localhost")
            .await
            .starts_with("HTTP/1.1 400")
    );
    // "/admin;jsessionid=x" is "/admin" to them, so it must match the /admin route.
    let raw = exchange("/admin;jsessionid=x", "localhost").await;
    assert!(raw.ends_with("admin /admin;jsessionid=x"), "{raw}");
    assert!(
        exchange("/public", "evil@localhost")
            .await
            .starts_with("HTTP/1.1 400")
    );
}

#[tokio::test]
async fn only_websocket_upgrades_are_relayed() {
    let pki = Pki::new();
    let upstream = spawn_inspecting_upstream().await;
    let proxy = proxy_to(&pki, &format!("http://{upstream}"), "").await;
    let raw = raw_exchange(
        &pki,
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let body = raw.split_once("\r\n\r\n").unwrap().1.to_ascii_lowercase();
    assert!(
        !body.contains("upgrade") && !body.contains("http2-settings"),
        "h2c upgrade reached the upstream: {body}"
    );
}

#[tokio::test]
async fn http2_cookie_fields_are_joined_for_the_upstream() {
    let pki = Pki::new();
    let upstream = spawn_inspecting_upstream().await;
    let proxy = proxy_to(&pki, &format!("http://{upstream}"), "").await;
    let tls = pki
        .raw_tls_with(proxy.addr, pki.client_config(&[b"h2"]))
        .await;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::get(url(proxy.addr, "/"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["headers"]["cookie"], serde_json::json!(["a=1; b=2"]));
}

/// A hand-written HTTP/1.1 upstream answering every request with `ok`, which counts the
/// connections it accepts and reports each one the proxy closes.
struct CountingUpstream {
    addr: std::net::SocketAddr,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    closed: mpsc::UnboundedReceiver<()>,
}

/// `hold_until`: answer nothing until that many requests are waiting. `close_after_each`:
/// close every connection right after its first answer, without saying so in a
/// `Connection` header (as an upstream with a short keep-alive limit does).
async fn spawn_counting_upstream(hold_until: usize, close_after_each: bool) -> CountingUpstream {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let waiting = Arc::new(AtomicUsize::new(0));
    let all_waiting = Arc::new(Notify::new());
    let (closed_tx, closed) = mpsc::unbounded_channel();
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let closed_tx = closed_tx.clone();
            let (waiting, all_waiting) = (Arc::clone(&waiting), Arc::clone(&all_waiting));
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = stream.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        let _ = closed_tx.send(());
                        return;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        let arrived = all_waiting.notified();
                        if waiting.fetch_add(1, Ordering::SeqCst) + 1 >= hold_until {
                            all_waiting.notify_waiters();
                        } else {
                            arrived.await;
                        }
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                        if close_after_each {
                            return;
                        }
                    }
                }
            });
        }
    });
    CountingUpstream {
        addr,
        accepted,
        closed,
    }
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let pki = Pki::new();
    let upstream = spawn_counting_upstream(0, false).await;
    let proxy = proxy_to(&pki, &format!("http://{}", upstream.addr), "").await;
    let client = pki.client(proxy.addr).build().unwrap();
    for _ in 0..20 {
        let response = client.get(url(proxy.addr, "/")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "ok");
    }
    let accepted = upstream.accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        accepted, 1,
        "20 sequential requests should share one connection"
    );
}

#[tokio::test]
async fn an_upstream_closing_kept_alive_connections_costs_no_request() {
    let pki = Pki::new();
    let upstream = spawn_counting_upstream(0, true).await;
    let proxy = proxy_to(&pki, &format!("http://{}", upstream.addr), "").await;
    let client = pki.client(proxy.addr).build().unwrap();
    for i in 0..30 {
        let response = client.get(url(proxy.addr, "/")).send().await.unwrap();
        assert_eq!(response.status(), 200, "request {i}");
        assert_eq!(response.text().await.unwrap(), "ok");
    }
    let accepted = upstream.accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(accepted, 30, "each connection served one request");
}

#[tokio::test(start_paused = true)]
async fn idle_upstream_connections_are_closed_after_90_seconds() {
    let pki = Pki::new();
    let mut upstream = spawn_counting_upstream(0, false).await;
    let proxy = proxy_to(&pki, &format!("http://{}", upstream.addr), "").await;
    let client = pki.client(proxy.addr).build().unwrap();
    let response = client.get(url(proxy.addr, "/")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "ok");
    // In use again after 60 s: the idle time starts over.
    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    assert!(
        upstream.closed.try_recv().is_err(),
        "closed after 60 s idle"
    );
    // A new client: the proxy has closed the first one's idle connection by now.
    let client = pki.client(proxy.addr).build().unwrap();
    let response = client.get(url(proxy.addr, "/")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "ok");
    let last_used = tokio::time::Instant::now();
    tokio::time::timeout(std::time::Duration::from_secs(300), upstream.closed.recv())
        .await
        .expect("the idle connection was never closed");
    let idle = last_used.elapsed();
    assert!(
        (90..=91).contains(&idle.as_secs()),
        "closed after {idle:?} idle, not 90 s"
    );
    assert_eq!(
        upstream.accepted.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn idle_upstream_connections_are_bounded() {
    const CONCURRENT: usize = 300;
    // sallyport keeps at most 256 idle connections per worker thread and upstream; this
    // test's proxy runs on the test's one thread.
    const KEPT: usize = 256;
    let pki = Pki::new();
    let mut upstream = spawn_counting_upstream(CONCURRENT, false).await;
    let proxy = proxy_to(&pki, &format!("http://{}", upstream.addr), "").await;
    // Over two HTTP/2 connections (the proxy allows 250 streams on each): one per request
    // would need 300 more descriptors, and some machines allow only 1024 in all.
    let clients = [(); 2].map(|()| {
        pki.client(proxy.addr)
            .http2_prior_knowledge()
            .build()
            .unwrap()
    });
    let requests = (0..CONCURRENT).map(|i| {
        let client = clients[i % 2].clone();
        let target = url(proxy.addr, "/");
        tokio::spawn(async move {
            let response = client.get(target).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.text().await.unwrap()
        })
    });
    for body in futures_util::future::join_all(requests).await {
        assert_eq!(body.unwrap(), "ok");
    }
    let accepted = upstream.accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(accepted, CONCURRENT, "all requests were in flight at once");
    for closed in 0..CONCURRENT - KEPT {
        tokio::time::timeout(std::time::Duration::from_secs(10), upstream.closed.recv())
            .await
            .unwrap_or_else(|_| panic!("only {closed} idle connections over the bound closed"));
    }
    assert!(
        upstream.closed.try_recv().is_err(),
        "more than the excess were closed"
    );
}

/// Reads one HTTP/1.1 response with a Content-Length body from `stream`.
async fn read_response<S: AsyncReadExt + Unpin>(stream: &mut S) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if seen.len() >= head_end + 4 + length {
                return text;
            }
        }
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed mid-response: {text:?}");
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_request_meeting_an_upstream_close_is_sent_again_on_a_new_connection() {
    // The race this covers: the upstream closes an idle kept-alive connection just as
    // the proxy picks it for a request. The request is still queued, not written, so it
    // must go out on a new connection instead of failing. The client's request is written
    // before the upstream's close, so the proxy sees the request first and the close
    // only when the connection's task next runs.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (first_tx, mut first_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut served = 0;
        while let Ok((mut stream, _)) = listener.accept().await {
            served += 1;
            let mut buf = [0u8; 4096];
            let mut request = Vec::new();
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
            }
            let body = format!("connection {served}");
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).await.unwrap();
            if served == 1 {
                // Handed to the test, which closes it at the chosen moment.
                first_tx.send(stream).unwrap();
            } else {
                tokio::spawn(async move {
                    let _ = stream.read(&mut buf).await;
                });
            }
        }
    });
    let pki = Pki::new();
    let proxy = proxy_to(&pki, &format!("http://{upstream}"), "").await;
    let mut tls = pki.raw_tls(proxy.addr).await;
    let request = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    tls.write_all(request).await.unwrap();
    assert!(read_response(&mut tls).await.ends_with("connection 1"));
    let kept_alive = first_rx.recv().await.unwrap();

    tls.write_all(request).await.unwrap();
    tls.flush().await.unwrap();
    drop(kept_alive);
    let second = read_response(&mut tls).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(second.ends_with("connection 2"), "{second}");
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_closed_under_a_get_is_retried_and_under_a_post_is_not() {
    // Each upstream connection answers one request, then closes when the next arrives
    // without answering it: an upstream whose keep-alive timeout fires just as the proxy
    // reuses the connection, with the request already on the wire.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        let mut accepted = 0;
        while let Ok((mut stream, _)) = listener.accept().await {
            accepted += 1;
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                for answered in [true, false] {
                    let mut request = Vec::new();
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&request);
                    let line = line.lines().next().unwrap_or_default().to_string();
                    log.lock().unwrap().push(format!("{accepted} {line}"));
                    if !answered {
                        return;
                    }
                    let body = format!("connection {accepted}");
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    stream.write_all(answer.as_bytes()).await.unwrap();
                }
            });
        }
    });
    let pki = Pki::new();
    let proxy = proxy_to(&pki, &format!("http://{upstream}"), "").await;
    let client = pki.client(proxy.addr).build().unwrap();
    let get = || client.get(url(proxy.addr, "/a")).send();

    assert_eq!(get().await.unwrap().text().await.unwrap(), "connection 1");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let retried = get().await.unwrap();
    assert_eq!(retried.status(), 200);
    assert_eq!(retried.text().await.unwrap(), "connection 2");

    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let post = client
        .post(url(proxy.addr, "/a"))
        .body("not idempotent")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 502, "a POST must not be sent twice");
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "1 GET /a HTTP/1.1",
            "1 GET /a HTTP/1.1",
            "2 GET /a HTTP/1.1",
            "2 POST /a HTTP/1.1",
        ]
    );
}
