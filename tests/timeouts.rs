//! Timeouts and caps, on tokio's paused clock: the runtime jumps virtual time forward
//! whenever every task is waiting, so a 60 s timeout is exercised without a 60 s test and
//! without sleeping. Everything (client, proxy, upstream) runs in the one test runtime.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

async fn proxy_with(pki: &Pki, upstream: &str, server_extra: &str) -> Proxy {
    let config = format!(
        "{}{}{}",
        server_section(server_extra),
        pki.tls_section(),
        public_route("/", upstream)
    );
    Proxy::start(pki.dir.path(), &config).await
}

/// Reads until EOF or error; returns what was read.
async fn read_until_closed<S: AsyncReadExt + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    out
}

#[tokio::test(start_paused = true)]
async fn silent_upstream_is_a_504_after_upstream_response() {
    let pki = Pki::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    // Accepts and reads, never answers.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            held.push(stream);
        }
    });
    let proxy = proxy_with(
        &pki,
        &format!("http://{upstream}"),
        "[server.timeouts]\nupstream_response = \"7s\"",
    )
    .await;
    let client = pki.client(proxy.addr).build().unwrap();
    let started = Instant::now();
    let response = client
        .get(url(proxy.addr, "/"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    assert!(
        started.elapsed() >= Duration::from_secs(7),
        "answered before the timeout: {:?}",
        started.elapsed()
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "gateway_timeout");
}

#[tokio::test(start_paused = true)]
async fn an_https_upstream_silent_in_the_handshake_is_a_504_after_upstream_connect() {
    let pki = Pki::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and reads the ClientHello, never answers it.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            held.push(stream);
        }
    });
    let config = format!(
        "{}{}[[route]]\npath = \"/\"\nupstream = \"https://127.0.0.1:{port}\"\nupstream_ca = {:?}\nauth = \"public\"\n",
        server_section("[server.timeouts]\nupstream_connect = \"3s\"\nupstream_response = \"60s\""),
        pki.tls_section(),
        pki.ca_path(),
    );
    let proxy = Proxy::start(pki.dir.path(), &config).await;
    let client = pki.client(proxy.addr).build().unwrap();
    let started = Instant::now();
    let response = client
        .get(url(proxy.addr, "/"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status(), 504);
    assert!(
        (Duration::from_secs(3)..Duration::from_secs(60)).contains(&waited),
        "answered after {waited:?}: not bounded by upstream_connect (3 s)"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "gateway_timeout");
}

#[tokio::test(start_paused = true)]
async fn slow_request_headers_are_cut_at_header_read() {
    let pki = Pki::new();
    let proxy = proxy_with(
        &pki,
        "builtin:echo",
        "[server.timeouts]\nheader_read = \"4s\"\nidle = \"600s\"",
    )
    .await;
    let mut tls = pki.raw_tls(proxy.addr).await;
    let started = Instant::now();
    // A slowloris: part of a request, then nothing.
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let leftover = read_until_closed(&mut tls).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(60),
        "closed after {waited:?}"
    );
    let text = String::from_utf8_lossy(&leftover);
    assert!(!text.contains("200 OK"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn idle_keep_alive_connections_are_closed() {
    let pki = Pki::new();
    // header_read is shorter than idle on purpose: it bounds a request head that is
    // arriving, not the quiet wait for the next request on a keep-alive connection (load
    // balancers reuse idle connections for a minute or more).
    let proxy = proxy_with(
        &pki,
        "builtin:echo",
        "[server.timeouts]\nidle = \"20s\"\nheader_read = \"5s\"",
    )
    .await;
    let mut tls = pki.raw_tls(proxy.addr).await;
    tls.write_all(b"GET /one HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    // Read the whole first response (keep-alive), then go silent.
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("\"path\": \"/one\"") {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the first response completed");
        got.extend_from_slice(&buf[..n]);
    }
    let started = Instant::now();
    let rest = read_until_closed(&mut tls).await;
    let waited = started.elapsed();
    assert!(
        rest.len() < 200,
        "no further response expected, got {} bytes",
        rest.len()
    );
    assert!(
        waited >= Duration::from_secs(20) && waited < Duration::from_secs(90),
        "closed after {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn idle_http2_connections_are_closed() {
    let pki = Pki::new();
    let proxy = proxy_with(&pki, "builtin:echo", "[server.timeouts]\nidle = \"30s\"").await;
    let tls = pki
        .raw_tls_with(proxy.addr, pki.client_config(&[b"h2"]))
        .await;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(url(proxy.addr, "/"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 200);
    let started = Instant::now();
    // The connection future completes when the server sends GOAWAY and closes.
    let _ = driver.await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(300),
        "closed after {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn stalled_tls_handshake_is_dropped() {
    let pki = Pki::new();
    let proxy = proxy_with(
        &pki,
        "builtin:echo",
        "[server.timeouts]\nhandshake = \"5s\"",
    )
    .await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let started = Instant::now();
    let got = read_until_closed(&mut tcp).await;
    assert!(got.is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(60),
        "closed after {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn connections_beyond_max_connections_wait_for_a_free_slot() {
    let pki = Pki::new();
    let proxy = proxy_with(&pki, "builtin:echo", "[server.limits]\nmax_connections = 1").await;
    let first = pki.raw_tls(proxy.addr).await;

    // The second client reaches the kernel backlog but is not served while the first holds
    // the only slot.
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let config = std::sync::Arc::new(pki.client_config(&[b"http/1.1"]));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut second = Box::pin(tokio_rustls::TlsConnector::from(config).connect(name, tcp));
    let early = tokio::time::timeout(Duration::from_secs(5), &mut second).await;
    assert!(
        early.is_err(),
        "the second connection was served while the cap was reached"
    );

    drop(first);
    let mut second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("served once the slot frees up")
        .unwrap();
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let response = read_until_closed(&mut second).await;
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 200"));
}

/// A WebSocket relay keeps the slot of the connection it came from, and is closed once
/// nothing moves on it for `idle`.
#[tokio::test(start_paused = true)]
async fn websocket_relays_count_against_max_connections_and_idle_out() {
    use futures_util::{SinkExt, StreamExt};
    let pki = Pki::new();
    let ws_upstream = spawn_websocket_echo_upstream().await;
    let proxy = proxy_with(
        &pki,
        &format!("http://{ws_upstream}"),
        "[server.limits]\nmax_connections = 1\n[server.timeouts]\nidle = \"30s\"",
    )
    .await;
    let tls = pki.raw_tls(proxy.addr).await;
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{}/ws", proxy.addr.port()), tls)
            .await
            .unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    assert_eq!(
        ws.next()
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        "hi"
    );
    let last_message = Instant::now();

    // While the relay lives, the only slot is taken.
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let config = std::sync::Arc::new(pki.client_config(&[b"http/1.1"]));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut second = Box::pin(tokio_rustls::TlsConnector::from(config).connect(name, tcp));
    assert!(
        tokio::time::timeout(Duration::from_secs(10), &mut second)
            .await
            .is_err(),
        "served while the relay holds the slot"
    );

    // Silence on the relay: it is closed after `idle`, and the slot frees up.
    let end = ws.next().await;
    assert!(
        !matches!(
            end,
            Some(Ok(tokio_tungstenite::tungstenite::Message::Text(_)))
        ),
        "{end:?}"
    );
    assert!(
        last_message.elapsed() >= Duration::from_secs(30),
        "closed {:?} after the last message",
        last_message.elapsed()
    );
    let mut second = tokio::time::timeout(Duration::from_secs(60), second)
        .await
        .expect("slot freed")
        .unwrap();
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // Served (the WebSocket-only upstream refuses a plain GET, hence a 502 from us).
    let answer = read_until_closed(&mut second).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 502"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

const SLOW_CHUNK: usize = 16 * 1024;
const SLOW_CHUNKS: usize = 16;

/// An upstream whose answer streams for 8 s: 16 chunks of 16 KiB, one every 500 ms.
async fn spawn_slow_download_upstream() -> std::net::SocketAddr {
    use http_body_util::{BodyExt, StreamBody};
    spawn_upstream(|_req: hyper::Request<hyper::body::Incoming>| async move {
        let chunks = futures_util::stream::unfold(0, |sent| async move {
            if sent == SLOW_CHUNKS {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let chunk = hyper::body::Frame::data(bytes::Bytes::from(vec![b'x'; SLOW_CHUNK]));
            Some((
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(chunk),
                sent + 1,
            ))
        });
        hyper::Response::new(StreamBody::new(chunks).boxed_unsync())
    })
    .await
}

/// Plain HTTP, so the protocol is detected from the first bytes; `header_read` 2 s.
async fn plain_proxy_to(upstream: std::net::SocketAddr) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}{}",
        server_section("[server.timeouts]\nheader_read = \"2s\""),
        public_route("/", &format!("http://{upstream}"))
    );
    (Proxy::start(dir.path(), &config).await, dir)
}

/// Over HTTP/1.1: asks for the slow download and reads until its response head is in.
async fn start_slow_download(proxy: std::net::SocketAddr) -> (tokio::net::TcpStream, Vec<u8>) {
    let mut tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(b"GET /first HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buf = [0u8; 1024];
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the response head");
        got.extend_from_slice(&buf[..n]);
    }
    (tcp, got)
}

#[tokio::test(start_paused = true)]
async fn an_h2c_download_outlasting_header_read_is_not_cut() {
    let upstream = spawn_slow_download_upstream().await;
    let (proxy, _dir) = plain_proxy_to(upstream).await;
    // Small windows: the client acknowledges the data as it reads it (WINDOW_UPDATE
    // frames), so the proxy reads from the client while the response streams.
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .http2_initial_stream_window_size(65_535)
        .http2_initial_connection_window_size(65_535)
        .build()
        .unwrap();
    let started = Instant::now();
    let response = client
        .get(format!("http://{}/", proxy.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let body = response.bytes().await.expect("the download was cut");
    assert_eq!(body.len(), SLOW_CHUNK * SLOW_CHUNKS);
    assert!(started.elapsed() >= Duration::from_secs(8));
}

#[tokio::test(start_paused = true)]
async fn a_request_pipelined_during_a_long_download_does_not_cut_it() {
    let upstream = spawn_slow_download_upstream().await;
    let (proxy, _dir) = plain_proxy_to(upstream).await;
    let (mut tcp, mut head) = start_slow_download(proxy.addr).await;
    // The next request, while the first response is still streaming.
    tcp.write_all(b"GET /second HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    head.extend(read_until_closed(&mut tcp).await);
    let text = String::from_utf8_lossy(&head);
    assert_eq!(
        text.matches("HTTP/1.1 200 OK").count(),
        2,
        "both responses, whole: {} bytes read",
        head.len()
    );
    // Both bodies (the heads add a few more x's: `x-request-id`).
    assert!(head.iter().filter(|&&b| b == b'x').count() >= 2 * SLOW_CHUNK * SLOW_CHUNKS);
}

/// How long a connection of an HTTP/2 client that PINGs every 5 s while idle (gRPC
/// keepalive, hyper's `keep_alive_while_idle`) lasts after its one request.
async fn lifetime_of_a_pinging_http2_client<T>(io: T, uri: String) -> Duration
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            // The paused clock can jump past a PONG in flight; the test is about the
            // server, not the client giving up on it.
            .keep_alive_timeout(Duration::from_secs(3600))
            .handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .unwrap();
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(uri)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 200);
    let started = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(600), driver)
        .await
        .expect("its PINGs kept the connection open");
    started.elapsed()
}

#[tokio::test(start_paused = true)]
async fn http2_connections_kept_up_only_by_pings_are_closed_after_idle() {
    let pki = Pki::new();
    let idle = "[server.timeouts]\nidle = \"30s\"";
    let tls_proxy = proxy_with(&pki, "builtin:echo", idle).await;
    let tls = pki
        .raw_tls_with(tls_proxy.addr, pki.client_config(&[b"h2"]))
        .await;
    let over_tls = lifetime_of_a_pinging_http2_client(tls, url(tls_proxy.addr, "/")).await;

    let dir = tempfile::tempdir().unwrap();
    let plain = format!(
        "{}{}",
        server_section(idle),
        public_route("/", "builtin:echo")
    );
    let plain_proxy = Proxy::start(dir.path(), &plain).await;
    let tcp = tokio::net::TcpStream::connect(plain_proxy.addr)
        .await
        .unwrap();
    let cleartext =
        lifetime_of_a_pinging_http2_client(tcp, format!("http://{}/", plain_proxy.addr)).await;

    for (how, lasted) in [("over TLS", over_tls), ("h2c", cleartext)] {
        assert!(
            lasted >= Duration::from_secs(30) && lasted < Duration::from_secs(90),
            "{how}: closed {lasted:?} after its last request"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_partial_head_pipelined_during_a_download_is_cut_at_header_read() {
    let upstream = spawn_slow_download_upstream().await;
    let (proxy, _dir) = plain_proxy_to(upstream).await;
    let (mut tcp, mut got) = start_slow_download(proxy.addr).await;
    let started = Instant::now();
    // Half of the next head while the download streams, then nothing.
    tcp.write_all(b"GET /second HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    got.extend(read_until_closed(&mut tcp).await);
    let waited = started.elapsed();
    assert!(
        got.iter().filter(|&&b| b == b'x').count() >= SLOW_CHUNK * SLOW_CHUNKS,
        "the download was cut"
    );
    // 8 s of download, then header_read (2 s), not idle (60 s).
    assert!(
        waited >= Duration::from_secs(8) && waited < Duration::from_secs(20),
        "closed after {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_keep_alive_connection_after_an_upload_waits_for_idle_not_header_read() {
    use http_body_util::BodyExt;
    let upstream = spawn_upstream(|req: hyper::Request<hyper::body::Incoming>| async move {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        hyper::Response::new(full(format!("got {}", body.len())))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}{}",
        server_section("[server.timeouts]\nheader_read = \"2s\"\nidle = \"20s\""),
        public_route("/", &format!("http://{upstream}"))
    );
    let proxy = Proxy::start(dir.path(), &config).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\n")
        .await
        .unwrap();
    // The body after the head has been taken in: read while its request is in flight.
    tokio::time::sleep(Duration::from_millis(100)).await;
    tcp.write_all(b"hello").await.unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"got 5") {
        let mut buf = [0u8; 1024];
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the response: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    let answered = Instant::now();
    assert!(read_until_closed(&mut tcp).await.is_empty());
    let kept = answered.elapsed();
    assert!(
        kept >= Duration::from_secs(20) && kept < Duration::from_secs(60),
        "an idle keep-alive connection closed after {kept:?}, not idle (20 s)"
    );
}
