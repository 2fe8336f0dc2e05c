//! Hostile HTTP/1.1 clients, driven with raw bytes over real TLS: request smuggling,
//! header abuse and slow or idle clients. Every case asserts two things: what the client
//! got back, and what reached the upstream *on the wire* (a relay in front of the
//! upstream records the exact bytes the proxy sent, so a framing ambiguity cannot hide
//! behind a lenient parser).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64ct::{Base64, Encoding};
use common::*;
use sallyport::auth::htpasswd::{NewHash, hash_password};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bounds every read, so a regression shows as a failed test, not a hung one.
const READ_LIMIT: Duration = Duration::from_secs(10);

/// Records everything the proxy sends to the upstream, and relays it.
struct Tap {
    addr: SocketAddr,
    wire: Arc<Mutex<Vec<u8>>>,
}

impl Tap {
    async fn new(upstream: SocketAddr) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let wire = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&wire);
        tokio::spawn(async move {
            while let Ok((mut from_proxy, _)) = listener.accept().await {
                let recorded = Arc::clone(&recorded);
                tokio::spawn(async move {
                    let mut to_upstream = TcpStream::connect(upstream).await.unwrap();
                    let (mut proxy_read, mut proxy_write) = from_proxy.split();
                    let (mut upstream_read, mut upstream_write) = to_upstream.split();
                    let forward = async {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            let n = match proxy_read.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            recorded.lock().unwrap().extend_from_slice(&buf[..n]);
                            if upstream_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = upstream_write.shutdown().await;
                    };
                    let back = async {
                        let _ = tokio::io::copy(&mut upstream_read, &mut proxy_write).await;
                        let _ = proxy_write.shutdown().await;
                    };
                    tokio::join!(forward, back);
                });
            }
        });
        Tap { addr, wire }
    }

    /// The requests the upstream received, split by their own framing. Panics when that
    /// framing is ambiguous: that is a smuggling vector whatever the upstream makes of it.
    fn requests(&self) -> Vec<Message> {
        let wire = self.wire.lock().unwrap().clone();
        let (requests, rest) = split_messages(&wire, false);
        assert!(
            rest.is_empty(),
            "an incomplete request upstream: {:?}",
            String::from_utf8_lossy(&rest)
        );
        requests
    }

    fn paths(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|m| m.start.split(' ').nth(1).unwrap_or("").to_string())
            .collect()
    }
}

#[derive(Debug)]
struct Message {
    start: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Message {
    fn status(&self) -> u16 {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Splits a byte stream into HTTP/1.1 messages by RFC 9112 framing, strictly: a message
/// with both Content-Length and Transfer-Encoding, several Content-Lengths, or a
/// Transfer-Encoding other than `chunked` fails the test. A response without either
/// runs to the end of the stream; a request without either has no body. Returns the
/// complete messages and whatever incomplete tail follows them.
fn split_messages(mut bytes: &[u8], responses: bool) -> (Vec<Message>, Vec<u8>) {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let rest = bytes;
        match next_message(&mut bytes, responses) {
            Some(message) => out.push(message),
            None => return (out, rest.to_vec()),
        }
    }
    (out, Vec::new())
}

fn next_message(bytes: &mut &[u8], responses: bool) -> Option<Message> {
    let end = find(bytes, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    *bytes = &bytes[end + 4..];
    let mut lines = head.split("\r\n");
    let start = lines.next().unwrap().to_string();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("a header line without ':'");
            assert!(
                !n.ends_with(' ') && !n.ends_with('\t'),
                "whitespace before ':' in {l:?}"
            );
            (n.to_string(), v.trim().to_string())
        })
        .collect();
    let values = |name: &str| -> Vec<String> {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    };
    let lengths = values("content-length");
    let codings = values("transfer-encoding");
    assert!(
        lengths.is_empty() || codings.is_empty(),
        "both Content-Length and Transfer-Encoding in {head:?}"
    );
    assert!(
        lengths.len() <= 1,
        "several Content-Length fields in {head:?}"
    );
    let without_body =
        responses && (start.contains(" 204 ") || start.contains(" 304 ") || start.contains(" 1"));
    let body = if without_body {
        Vec::new()
    } else if let Some(length) = lengths.first() {
        assert!(
            length.bytes().all(|b| b.is_ascii_digit()),
            "Content-Length {length:?} in {head:?}"
        );
        let n: usize = length.parse().unwrap();
        if bytes.len() < n {
            return None;
        }
        let body = bytes[..n].to_vec();
        *bytes = &bytes[n..];
        body
    } else if let Some(coding) = codings.first() {
        assert!(
            coding.eq_ignore_ascii_case("chunked"),
            "Transfer-Encoding {coding:?} in {head:?}"
        );
        let mut body = Vec::new();
        loop {
            let line_end = find(bytes, b"\r\n")?;
            let size_text = std::str::from_utf8(&bytes[..line_end]).unwrap();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap(), 16)
                .unwrap_or_else(|_| panic!("chunk size {size_text:?}"));
            *bytes = &bytes[line_end + 2..];
            if size == 0 {
                if !bytes.starts_with(b"\r\n") {
                    assert!(bytes.len() < 2, "trailers on the wire");
                    return None;
                }
                *bytes = &bytes[2..];
                break;
            }
            if bytes.len() < size + 2 {
                return None;
            }
            body.extend_from_slice(&bytes[..size]);
            assert_eq!(&bytes[size..size + 2], b"\r\n");
            *bytes = &bytes[size + 2..];
        }
        body
    } else if responses {
        let body = bytes.to_vec();
        *bytes = &[];
        body
    } else {
        Vec::new()
    };
    Some(Message {
        start,
        headers,
        body,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

struct Setup {
    pki: Pki,
    proxy: Proxy,
    tap: Tap,
    alice: String,
}

/// `/public` is open, `/private` takes Basic; both lead through the tap to an upstream
/// that answers with what it parsed.
async fn setup(server_extra: &str) -> Setup {
    let pki = Pki::new();
    let tap = Tap::new(spawn_inspecting_upstream().await).await;
    let htpasswd = pki.dir.path().join("users.htpasswd");
    let hash = hash_password(b"alice-pw", NewHash::Bcrypt { cost: 4 }).unwrap();
    std::fs::write(&htpasswd, format!("alice:{hash}\n")).unwrap();
    let config = format!(
        "{}{}[auth.basic]\nhtpasswd = \"users.htpasswd\"\n{}[[route]]\npath = \"/private\"\nupstream = \"http://{}\"\nauth = \"required\"\n",
        server_section(server_extra),
        pki.tls_section(),
        public_route("/public", &format!("http://{}", tap.addr)),
        tap.addr,
    );
    let proxy = Proxy::start(pki.dir.path(), &config).await;
    Setup {
        pki,
        proxy,
        tap,
        alice: format!("Basic {}", Base64::encode_string(b"alice:alice-pw")),
    }
}

impl Setup {
    /// Sends `request` on one TLS connection, half-closes nothing, and reads until the
    /// proxy closes the connection; returns the responses in order.
    async fn exchange(&self, request: &[u8]) -> Vec<Message> {
        let mut tls = self.pki.raw_tls(self.proxy.addr).await;
        tls.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let read = tokio::time::timeout(READ_LIMIT, tls.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the proxy kept the connection open");
        let (responses, rest) = split_messages(&out, true);
        assert!(rest.is_empty(), "an incomplete response: {rest:?}");
        responses
    }
}

/// `request` with `Host: localhost` added after the request line.
fn raw(request_line: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{request_line}\r\nHost: localhost\r\n");
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

const LAST: &str = "GET /public/after HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

fn statuses(responses: &[Message]) -> Vec<u16> {
    responses.iter().map(Message::status).collect()
}

// ---- request smuggling ----

#[tokio::test]
async fn content_length_with_transfer_encoding_is_read_as_chunked_and_ends_the_connection() {
    let s = setup("").await;
    for framing in [
        ["Content-Length: 4", "Transfer-Encoding: chunked"],
        ["Transfer-Encoding: chunked", "Content-Length: 4"],
    ] {
        let before = s.tap.requests().len();
        // Read by Content-Length, the body would end inside the first chunk and "llo..."
        // would start the next request.
        let mut request = raw(
            "POST /public/a HTTP/1.1",
            &framing,
            b"5\r\nhello\r\n0\r\n\r\n",
        );
        request.extend_from_slice(LAST.as_bytes());
        let responses = s.exchange(&request).await;
        // RFC 9112 6.1: Transfer-Encoding wins, and the server closes the connection
        // after answering, so what followed is never read as a request.
        assert_eq!(statuses(&responses), [200], "{framing:?}");
        assert_eq!(responses[0].header("connection"), Some("close"));
        let upstream = &s.tap.requests()[before..];
        assert_eq!(upstream.len(), 1, "{framing:?}");
        assert!(upstream[0].start.starts_with("POST /public/a "));
        assert_eq!(upstream[0].body, b"hello");
        assert_eq!(upstream[0].header("content-length"), None);
    }
}

#[tokio::test]
async fn conflicting_signed_or_listed_content_lengths_are_a_400_that_reaches_nothing() {
    let s = setup("").await;
    for lengths in [
        &["Content-Length: 5", "Content-Length: 6"][..],
        &["Content-Length: 5, 6"],
        &["Content-Length: 5, 5"],
        &["Content-Length: +5"],
        &["Content-Length: -5"],
        &["Content-Length: 0x5"],
        &["Content-Length: 5 5"],
        &["Content-Length: 99999999999999999999999"],
    ] {
        let mut request = raw("POST /public/a HTTP/1.1", lengths, b"hello!");
        request.extend_from_slice(LAST.as_bytes());
        let responses = s.exchange(&request).await;
        assert_eq!(statuses(&responses), [400], "{lengths:?}");
        assert_eq!(responses[0].header("connection"), Some("close"));
    }
    assert!(s.tap.requests().is_empty(), "{:?}", s.tap.paths());

    // The same length twice is one length (RFC 9110 8.6); the upstream gets it once.
    let mut request = raw(
        "POST /public/a HTTP/1.1",
        &["Content-Length: 5", "Content-Length: 5"],
        b"hello",
    );
    request.extend_from_slice(LAST.as_bytes());
    let responses = s.exchange(&request).await;
    assert_eq!(statuses(&responses), [200, 200]);
    let upstream = s.tap.requests();
    assert_eq!(s.tap.paths(), ["/public/a", "/public/after"]);
    assert_eq!(upstream[0].header("content-length"), Some("5"));
    assert_eq!(upstream[0].body, b"hello");
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_are_refused() {
    let s = setup("").await;
    let body = b"5\r\nhello\r\n0\r\n\r\n";
    // Not ending in chunked, the length is unknowable: 400 and close.
    for codings in [
        &["Transfer-Encoding: chunked, gzip"][..],
        &["Transfer-Encoding: xchunked"],
        &["Transfer-Encoding: chunked", "Transfer-Encoding: identity"],
        &["Transfer-Encoding: chunked\x0b"],
    ] {
        let mut request = raw("POST /public/a HTTP/1.1", codings, body);
        request.extend_from_slice(LAST.as_bytes());
        let responses = s.exchange(&request).await;
        assert_eq!(statuses(&responses), [400], "{codings:?}");
    }
    // Framed, but with a coding we cannot undo: 501 (RFC 9112 6.1), and the connection
    // stays in step: the next request is answered.
    for codings in [
        &["Transfer-Encoding: gzip, chunked"][..],
        &["Transfer-Encoding: gzip", "Transfer-Encoding: chunked"],
    ] {
        let mut request = raw("POST /public/a HTTP/1.1", codings, body);
        request.extend_from_slice(LAST.as_bytes());
        let responses = s.exchange(&request).await;
        assert_eq!(statuses(&responses), [501, 200], "{codings:?}");
    }
    assert_eq!(s.tap.paths(), ["/public/after", "/public/after"]);
}

#[tokio::test]
async fn an_overflowing_chunk_size_is_a_400_and_no_complete_request_reaches_the_upstream() {
    let s = setup("").await;
    for size in [
        "FFFFFFFFFFFFFFFFFF",
        "10000000000000000",
        "-1",
        "5 5",
        "0x5",
    ] {
        let chunked = format!("{size}\r\nhello\r\n0\r\n\r\n");
        let mut request = raw(
            "POST /public/a HTTP/1.1",
            &["Transfer-Encoding: chunked"],
            chunked.as_bytes(),
        );
        request.extend_from_slice(LAST.as_bytes());
        let responses = s.exchange(&request).await;
        assert_eq!(statuses(&responses), [400], "chunk size {size:?}");
        assert!(
            responses[0]
                .body_text()
                .contains("The request body is malformed"),
            "{}",
            responses[0].body_text()
        );
    }
    // Whatever the proxy had started sending upstream never completed a request.
    let wire = s.tap.wire.lock().unwrap().clone();
    let (complete, _) = split_messages(&wire, false);
    assert!(complete.is_empty(), "{complete:?}");
}

#[tokio::test]
async fn whitespace_before_the_colon_and_folded_headers_are_a_400() {
    let s = setup("").await;
    for headers in [
        &["Content-Length : 5"][..],
        &["Transfer-Encoding : chunked"],
        &["X-Folded: a", " b"],
        &["X-Folded: a", "\tb"],
        &[" Content-Length: 5"],
        &["Content-Length:\x005"],
    ] {
        let mut request = raw("POST /public/a HTTP/1.1", headers, b"hello");
        request.extend_from_slice(LAST.as_bytes());
        let responses = s.exchange(&request).await;
        assert_eq!(statuses(&responses), [400], "{headers:?}");
        assert_eq!(responses[0].header("connection"), Some("close"));
    }
    assert!(s.tap.requests().is_empty(), "{:?}", s.tap.paths());
}

#[tokio::test]
async fn an_unframed_body_on_a_get_is_read_as_the_next_request_and_authenticated_as_one() {
    let s = setup("").await;
    let mut request = raw("GET /public/a HTTP/1.1", &[], b"");
    request.extend_from_slice(
        b"GET /private/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    let responses = s.exchange(&request).await;
    assert_eq!(statuses(&responses), [200, 401]);
    assert_eq!(s.tap.paths(), ["/public/a"]);
}

#[tokio::test]
async fn a_refused_request_body_is_never_read_as_a_request() {
    let s = setup("").await;
    // The body is a complete request. Read as one, it would reach the upstream.
    let hidden = b"GET /public/smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for (padding, next_is_served) in [(0usize, true), (40 * 1024, true), (256 * 1024, false)] {
        let mut body = hidden.to_vec();
        body.extend(std::iter::repeat_n(b'x', padding));
        let mut request = raw(
            "POST /private/x HTTP/1.1",
            &[&format!("Content-Length: {}", body.len())],
            &body,
        );
        request.extend_from_slice(LAST.as_bytes());
        let mut tls = s.pki.raw_tls(s.proxy.addr).await;
        // Written while reading, as a real client does: a proxy that stops reading must
        // not wedge the test.
        let (mut read_half, mut write_half) = tokio::io::split(&mut tls);
        let write = async {
            let _ = write_half.write_all(&request).await;
        };
        let mut out = Vec::new();
        let read = async {
            tokio::time::timeout(READ_LIMIT, read_half.read_to_end(&mut out))
                .await
                .is_ok()
        };
        let ((), closed) = tokio::join!(write, read);
        assert!(
            closed,
            "padding {padding}: the proxy kept the connection open"
        );
        let (responses, _) = split_messages(&out, true);
        // The client reads the whole 401, even when the body was too big to drain and
        // the connection ends after it.
        let expected: &[u16] = if next_is_served { &[401, 200] } else { &[401] };
        assert_eq!(statuses(&responses), expected, "padding {padding}");
        assert!(responses[0].body_text().contains("401 Unauthorized"));
    }
    assert_eq!(s.tap.paths(), ["/public/after", "/public/after"]);
}

// ---- header abuse ----

/// Header names as backends fold them (CGI, WSGI, PHP, Rack): case, `-`, `_`, `.` ignored.
fn folded(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, '-' | '_' | '.'))
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

#[tokio::test]
async fn identity_headers_in_any_spelling_or_named_in_connection_never_reach_the_upstream() {
    let s = setup("").await;
    let forged = [
        "X-Forwarded-User: mallory",
        "x-forwarded-user: mallory",
        "X_Forwarded_User: mallory",
        "X.Forwarded.User: mallory",
        "X-FORWARDED-USER: mallory",
        "x-forwarded_user: mallory",
        "X-Forwarded-Email: mallory@evil.example",
        "X-Forwarded-Groups: admins",
        "X-Forwarded-Preferred-Username: mallory",
        "X-Real-IP: 10.9.9.9",
        "X-Forwarded-For: 10.9.9.9",
        "Forwarded: for=10.9.9.9",
        // Names other auth proxies use, which upstreams migrated from them trust.
        "X-Auth-Request-User: mallory",
        "X-Auth-Request-Email: mallory@evil.example",
        "Remote-User: mallory",
        "Remote_Groups: admins",
        // Path overrides some frameworks route on.
        "X-Original-URL: /mallory/admin",
        "X-Rewrite-URL: /mallory/admin",
        // Naming our headers in Connection must not make us drop the ones we set.
        "Connection: X-Forwarded-User, X-Forwarded-For, X-Real-IP",
    ];
    let authorization = format!("Authorization: {}", s.alice);
    let mut private: Vec<&str> = forged.to_vec();
    private.push(&authorization);
    let mut request = raw("GET /private/x HTTP/1.1", &private, b"");
    request.extend_from_slice(&raw("GET /public/y HTTP/1.1", &forged, b""));
    request.extend_from_slice(LAST.as_bytes());
    let responses = s.exchange(&request).await;
    assert_eq!(statuses(&responses), [200, 200, 200]);

    let upstream = s.tap.requests();
    assert_eq!(s.tap.paths(), ["/private/x", "/public/y", "/public/after"]);
    for (i, seen) in upstream.iter().enumerate() {
        for (name, value) in &seen.headers {
            assert!(
                !value.contains("mallory") && !value.contains("10.9.9.9") && value != "admins",
                "request {i}: {name}: {value} reached the upstream"
            );
        }
        let users: Vec<&(String, String)> = seen
            .headers
            .iter()
            .filter(|(n, _)| folded(n) == "xforwardeduser")
            .collect();
        let expected_user: &[&str] = if i == 0 { &["alice"] } else { &[] };
        assert_eq!(
            users.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>(),
            expected_user,
            "request {i}"
        );
        assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"), "request {i}");
        assert_eq!(
            seen.header("x-forwarded-for"),
            Some("127.0.0.1"),
            "request {i}"
        );
    }
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_a_431_and_the_proxy_keeps_serving() {
    let s = setup("").await;
    let many: Vec<String> = (0..200).map(|i| format!("X-Many-{i}: v")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let large = format!("X-Large: {}", "a".repeat(20 * 1024));
    let just_under = format!("X-Large: {}", "a".repeat(12 * 1024));
    for headers in [many, vec![large.as_str()]] {
        let responses = s
            .exchange(&raw("GET /public/a HTTP/1.1", &headers, b""))
            .await;
        assert_eq!(statuses(&responses), [431], "{} headers", headers.len());
    }
    assert!(s.tap.requests().is_empty());
    let mut request = raw("GET /public/a HTTP/1.1", &[&just_under], b"");
    request.extend_from_slice(LAST.as_bytes());
    assert_eq!(statuses(&s.exchange(&request).await), [200, 200]);
}

#[tokio::test]
async fn duplicate_or_malformed_hosts_are_a_400_and_absolute_targets_win_over_host() {
    let s = setup("").await;
    for (line, headers) in [
        (
            "GET /public/a HTTP/1.1",
            &["Host: other.example", "Connection: close"][..],
        ),
        (
            "GET /public/a HTTP/1.1",
            &["Host: localhost", "Connection: close"],
        ),
        (
            "GET /public/a HTTP/1.1",
            &["Host: user@localhost", "Connection: close"][..],
        ),
        (
            "GET https://user@localhost/public/a HTTP/1.1",
            &["Connection: close"][..],
        ),
    ] {
        // `raw` adds one Host already: each of these has two, or userinfo. The request
        // itself is well framed, so only `Connection: close` ends the connection.
        let responses = s.exchange(&raw(line, headers, b"")).await;
        assert_eq!(statuses(&responses), [400], "{line} {headers:?}");
    }
    let responses = s
        .exchange(b"GET /public/a HTTP/1.1\r\nHost: local host\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(statuses(&responses), [400]);
    let responses = s
        .exchange(b"GET /public/a HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(statuses(&responses), [400], "HTTP/1.1 without Host");
    assert!(s.tap.requests().is_empty(), "{:?}", s.tap.paths());

    // RFC 9112 3.2.2: an absolute-form target's authority is the host; the upstream is
    // told that one, so it and we agree on which site was asked for.
    let responses = s
        .exchange(
            b"GET https://app.example/public/a HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await;
    assert_eq!(statuses(&responses), [200]);
    let upstream = s.tap.requests();
    assert_eq!(upstream.len(), 1);
    let hosts: Vec<&str> = upstream[0]
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(hosts, ["app.example"]);
    assert_eq!(upstream[0].header("x-forwarded-host"), Some("app.example"));
}

// ---- slow and idle clients (tokio's paused clock: virtual time, no real waiting) ----

/// Writes `head` then `trickle` one byte per `every`, while watching for the proxy to
/// close; returns what the proxy sent, when it closed (from the first byte), and how many
/// trickled bytes went out. Gives up after `limit` bytes.
async fn trickle(
    s: &Setup,
    head: &[u8],
    every: Duration,
    limit: usize,
) -> (Vec<u8>, Duration, usize) {
    let tls = s.pki.raw_tls(s.proxy.addr).await;
    let (mut read_half, mut write_half) = tokio::io::split(tls);
    let started = tokio::time::Instant::now();
    write_half.write_all(head).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = read_half.read_to_end(&mut out).await;
        (out, started.elapsed())
    });
    let mut sent = 0;
    while sent < limit && !reader.is_finished() {
        tokio::time::sleep(every).await;
        if write_half.write_all(b"a").await.is_err() || write_half.flush().await.is_err() {
            break;
        }
        sent += 1;
    }
    let (out, closed_after) = tokio::time::timeout(Duration::from_secs(600), reader)
        .await
        .expect("the proxy never closed the connection")
        .unwrap();
    (out, closed_after, sent)
}

fn within(elapsed: Duration, from_secs: u64, to_secs: u64) -> bool {
    elapsed >= Duration::from_secs(from_secs) && elapsed <= Duration::from_secs(to_secs)
}

#[tokio::test(start_paused = true)]
async fn a_head_sent_one_byte_at_a_time_is_cut_at_header_read() {
    let s = setup("[server.timeouts]\nheader_read = \"5s\"\nidle = \"60s\"").await;
    // Each byte arrives well inside `idle`; only the head deadline can end this.
    let (out, closed_after, sent) = trickle(
        &s,
        b"GET /public/a HTTP/1.1\r\nHost: localhost\r\nX-Slow: ",
        Duration::from_millis(500),
        1000,
    )
    .await;
    assert!(within(closed_after, 5, 7), "closed after {closed_after:?}");
    assert!(sent <= 14, "{sent} bytes accepted");
    assert!(!String::from_utf8_lossy(&out).contains("200 OK"));
    assert!(s.tap.requests().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_slow_body_ends_at_upstream_response_when_the_upstream_waits_for_all_of_it() {
    use http_body_util::BodyExt;
    let pki = Pki::new();
    let upstream = spawn_upstream(|req: hyper::Request<hyper::body::Incoming>| async move {
        let length = req.into_body().collect().await.map(|b| b.to_bytes().len());
        hyper::Response::new(full(format!("{length:?}")))
    })
    .await;
    let config = format!(
        "{}{}{}",
        server_section("[server.timeouts]\nupstream_response = \"10s\"\nidle = \"60s\""),
        pki.tls_section(),
        public_route("/", &format!("http://{upstream}")),
    );
    let proxy = Proxy::start(pki.dir.path(), &config).await;
    let s = Setup {
        pki,
        proxy,
        tap: Tap::new(upstream).await,
        alice: String::new(),
    };
    let (out, closed_after, sent) = trickle(
        &s,
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n",
        Duration::from_secs(1),
        1000,
    )
    .await;
    let (responses, _) = split_messages(&out, true);
    assert_eq!(statuses(&responses), [504]);
    assert!(
        within(closed_after, 10, 12),
        "answered after {closed_after:?}"
    );
    assert!(sent <= 12, "{sent} bytes accepted");
}

#[tokio::test(start_paused = true)]
async fn a_slow_body_on_a_refused_request_is_abandoned_after_five_seconds() {
    let s = setup("[server.timeouts]\nidle = \"60s\"").await;
    let (out, closed_after, _) = trickle(
        &s,
        b"POST /private/x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n",
        Duration::from_secs(1),
        1000,
    )
    .await;
    let (responses, _) = split_messages(&out, true);
    assert_eq!(statuses(&responses), [401]);
    // The body was not read to its end, so the connection cannot carry another request.
    assert!(within(closed_after, 5, 7), "closed after {closed_after:?}");
    assert!(s.tap.requests().is_empty());
}

#[tokio::test(start_paused = true)]
async fn idle_connections_are_capped_and_each_closes_at_idle() {
    const CAP: usize = 64;
    let s = setup(&format!(
        "[server.limits]\nmax_connections = {CAP}\n[server.timeouts]\nidle = \"30s\"\nheader_read = \"5s\""
    ))
    .await;
    let started = tokio::time::Instant::now();
    let mut idle = Vec::new();
    for _ in 0..CAP {
        idle.push(s.pki.raw_tls(s.proxy.addr).await);
    }
    // One more reaches the kernel's backlog, and waits for a slot.
    let tcp = TcpStream::connect(s.proxy.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(s.pki.client_config(&[b"http/1.1"])));
    let mut waiting = Box::pin(connector.connect(name, tcp));
    assert!(
        tokio::time::timeout(Duration::from_secs(10), &mut waiting)
            .await
            .is_err(),
        "a connection beyond max_connections was served"
    );
    for (i, mut connection) in idle.into_iter().enumerate() {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(300), connection.read_to_end(&mut out))
            .await
            .expect("an idle connection was never closed");
        assert!(out.is_empty(), "connection {i} got {out:?}");
    }
    assert!(
        within(started.elapsed(), 30, 40),
        "closed after {:?}",
        started.elapsed()
    );
    // The slots are free again: the waiting client is served.
    let mut late = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served once the slots freed up")
        .unwrap();
    late.write_all(LAST.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    late.read_to_end(&mut out).await.unwrap();
    assert_eq!(statuses(&split_messages(&out, true).0), [200]);
}
