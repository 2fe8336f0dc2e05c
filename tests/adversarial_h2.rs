//! HTTP/2 attacks on the running proxy, written frame by frame: what hyper's client would
//! refuse to send (connection-specific headers, uppercase names, CONTINUATION on the wrong
//! stream), and what no polite client does (rapid reset, floods, HPACK bombs). Each test
//! asserts the exact answer (GOAWAY / RST_STREAM code, status), what the upstream saw, and
//! that the proxy keeps serving.
//!
//! The clock is real: these tests drive real sockets, and a paused clock would jump past
//! every read timeout the moment the runtime waits on the network. Every wait is bounded
//! by `PATIENCE`, which only a failing test reaches.

mod common;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use hyper::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::client::TlsStream;

const PATIENCE: Duration = Duration::from_secs(10);

// Frame types, flags, settings and error codes (RFC 9113 6 and 7).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const SETTINGS_ENABLE_PUSH: u16 = 0x2;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

const PROTOCOL_ERROR: u32 = 0x1;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

// ---------------------------------------------------------------------------------------
// Writing frames and HPACK
// ---------------------------------------------------------------------------------------

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    assert!(len < 1 << 24, "frame payload too long");
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A complete request head in one frame, without a body.
fn headers(stream: u32, block: &[u8]) -> Vec<u8> {
    frame(HEADERS, END_HEADERS | END_STREAM, stream, block)
}

fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// An HPACK integer with an N-bit prefix (RFC 7541 5.1); `flags` fills the bits above it.
fn put_int(out: &mut Vec<u8>, flags: u8, prefix_bits: u8, value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// A string literal without Huffman coding.
fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_int(out, 0x00, 7, s.len());
    out.extend_from_slice(s);
}

/// "Literal header field without indexing, new name" (RFC 7541 6.2.2): carries any bytes
/// as name and value, so the server's validation is what gets tested, not ours.
fn field(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x00];
    put_str(&mut out, name.as_bytes());
    put_str(&mut out, value.as_bytes());
    out
}

fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    fields.iter().flat_map(|(n, v)| field(n, v)).collect()
}

/// A GET for `path` on `localhost`, plus `extra` fields after the pseudo-headers.
fn get(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut out = block(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", path),
    ]);
    out.extend(block(extra));
    out
}

// ---------------------------------------------------------------------------------------
// Reading frames, and just enough HPACK for `:status`
// ---------------------------------------------------------------------------------------

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Frame {{ kind: {:#x}, flags: {:#x}, stream: {}, {} bytes }}",
            self.kind,
            self.flags,
            self.stream,
            self.payload.len()
        )
    }
}

impl Frame {
    fn parse(buf: &mut Vec<u8>) -> Option<Frame> {
        if buf.len() < 9 {
            return None;
        }
        let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
        if buf.len() < 9 + len {
            return None;
        }
        let rest = buf.split_off(9 + len);
        let raw = std::mem::replace(buf, rest);
        Some(Frame {
            kind: raw[3],
            flags: raw[4],
            stream: u32::from_be_bytes([raw[5], raw[6], raw[7], raw[8]]) & 0x7fff_ffff,
            payload: raw[9..].to_vec(),
        })
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }

    fn goaway(&self) -> Option<GoAway> {
        (self.kind == GOAWAY).then(|| GoAway {
            last_stream: self.u32_at(0) & 0x7fff_ffff,
            code: self.u32_at(4),
            debug: String::from_utf8_lossy(&self.payload[8..]).into_owned(),
        })
    }

    fn is(&self, kind: u8, flags: u8) -> bool {
        self.kind == kind && self.flags & flags == flags
    }
}

#[derive(Debug, Clone, PartialEq)]
struct GoAway {
    last_stream: u32,
    code: u32,
    debug: String,
}

fn goaway(last_stream: u32, code: u32, debug: &str) -> GoAway {
    GoAway {
        last_stream,
        code,
        debug: debug.to_string(),
    }
}

/// How one stream ended, as the client sees it.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Response { status: u16, body: Vec<u8> },
    Reset(u32),
    GoAway(GoAway),
    Closed,
}

impl Outcome {
    fn status(&self) -> Option<u16> {
        match self {
            Outcome::Response { status, .. } => Some(*status),
            _ => None,
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Outcome::Response { body, .. } => serde_json::from_slice(body).unwrap(),
            other => panic!("expected a response, got {other:?}"),
        }
    }
}

/// h2 sends `:status` first, as a static-table index (200, 204, 206, 304, 400, 404, 500),
/// as a literal with the static name (digits, often Huffman-coded), or, for a status seen
/// earlier on the connection, as an index into the dynamic table. Only that much is
/// decoded; other fields are skipped, but their insertions are counted so dynamic indexes
/// stay right.
#[derive(Default)]
struct StatusDecoder {
    /// The dynamic table, newest first: `Some(status)` for a `:status` entry. Never
    /// evicted: the server only evicts the oldest entries, which valid indexes never reach.
    dynamic: VecDeque<Option<u16>>,
}

const STATIC_STATUS: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];

impl StatusDecoder {
    fn decode(&mut self, block: &[u8]) -> Option<u16> {
        let mut status = None;
        let mut at = 0;
        while at < block.len() {
            let first = block[at];
            if first & 0x80 != 0 {
                let found = match get_int(block, &mut at, 7) {
                    i @ 8..=14 => Some(STATIC_STATUS[i - 8]),
                    i if i >= 62 => self.dynamic.get(i - 62).copied().flatten(),
                    _ => None,
                };
                status = status.or(found);
            } else if first & 0xe0 == 0x20 {
                get_int(block, &mut at, 5); // dynamic table size update
            } else {
                let insert = first & 0x40 != 0;
                let name = get_int(block, &mut at, if insert { 6 } else { 4 });
                if name == 0 {
                    get_str(block, &mut at);
                }
                let (huffman, value) = get_str(block, &mut at);
                let found = if (8..=14).contains(&name) {
                    let digits = if huffman {
                        huffman_digits(value)
                    } else {
                        String::from_utf8(value.to_vec()).ok()
                    };
                    digits.and_then(|d| d.parse().ok())
                } else {
                    None
                };
                if insert {
                    self.dynamic.push_front(found);
                }
                status = status.or(found);
            }
        }
        status
    }
}

fn get_int(block: &[u8], at: &mut usize, prefix_bits: u8) -> usize {
    let max = (1usize << prefix_bits) - 1;
    let mut value = usize::from(block[*at]) & max;
    *at += 1;
    if value < max {
        return value;
    }
    let mut shift = 0;
    loop {
        let b = block[*at];
        *at += 1;
        value += usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return value;
        }
    }
}

fn get_str<'a>(block: &'a [u8], at: &mut usize) -> (bool, &'a [u8]) {
    let huffman = block[*at] & 0x80 != 0;
    let len = get_int(block, at, 7);
    let s = &block[*at..*at + len];
    *at += len;
    (huffman, s)
}

/// Huffman-decodes a string of digits (RFC 7541 Appendix B: '0'-'2' are the 5-bit codes
/// 0-2, '3'-'9' the 6-bit codes 0x19-0x1f); `None` for anything else.
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let mut out = String::new();
    let (mut code, mut len) = (0u32, 0u32);
    for bit in bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
    {
        code = (code << 1) | u32::from(bit);
        len += 1;
        match (len, code) {
            (5, 0..=2) => out.push(char::from(b'0' + code as u8)),
            (6, 0x19..=0x1f) => out.push(char::from(b'3' + (code - 0x19) as u8)),
            // Only EOS padding (all ones, under a byte) may be longer than a digit.
            (6.., c) if c != (1 << len) - 1 || len >= 8 => return None,
            _ => continue,
        }
        (code, len) = (0, 0);
    }
    (code == (1 << len) - 1).then_some(out)
}

#[test]
fn the_status_decoder_reads_the_rfc_7541_huffman_response_examples() {
    let hex = |s: &str| -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    let mut decoder = StatusDecoder::default();
    // C.6.1: `:status 302` and three more fields, all inserted into the dynamic table.
    let first = hex(
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 \
                     0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
    );
    assert_eq!(decoder.decode(&first), Some(302));
    // C.6.2: `:status 307`, then the other three fields by dynamic index.
    assert_eq!(decoder.decode(&hex("4883 640e ffc1 c0bf")), Some(307));
    assert_eq!(decoder.decode(&[0x80 | 62]), Some(307));
    assert_eq!(decoder.decode(&[0x80 | 8]), Some(200));
    assert_eq!(huffman_digits(&[0x64, 0x0e, 0xff]).as_deref(), Some("307"));
    assert_eq!(huffman_digits(&[0xff, 0xff]), None);
}

// ---------------------------------------------------------------------------------------
// The raw client
// ---------------------------------------------------------------------------------------

type Tls = TlsStream<TcpStream>;

/// One HTTP/2 connection. A reader task parses the server's frames as they arrive, so the
/// server never blocks on a full socket while the test is busy writing.
struct H2 {
    writer: WriteHalf<Tls>,
    frames: mpsc::UnboundedReceiver<Frame>,
    statuses: StatusDecoder,
    /// The server's first SETTINGS frame.
    server_settings: HashMap<u16, u32>,
    written: usize,
}

impl H2 {
    /// Preface and SETTINGS exchanged both ways, so every later frame meets the server's
    /// final settings.
    async fn connect(pki: &Pki, addr: SocketAddr) -> H2 {
        let tls = pki.raw_tls_with(addr, pki.client_config(&[b"h2"])).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (reader, writer) = tokio::io::split(tls);
        let (tx, frames) = mpsc::unbounded_channel();
        tokio::spawn(read_frames(reader, tx));
        let mut h2 = H2 {
            writer,
            frames,
            statuses: StatusDecoder::default(),
            server_settings: HashMap::new(),
            written: 0,
        };
        // Large windows: responses never wait on flow control from this client.
        let mut settings = Vec::new();
        for (id, value) in [
            (SETTINGS_ENABLE_PUSH, 0u32),
            (SETTINGS_INITIAL_WINDOW_SIZE, 1 << 30),
        ] {
            settings.extend_from_slice(&id.to_be_bytes());
            settings.extend_from_slice(&value.to_be_bytes());
        }
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &settings));
        hello.extend(frame(WINDOW_UPDATE, 0, 0, &(1u32 << 30).to_be_bytes()));
        h2.send(&hello).await.unwrap();
        let (mut theirs, mut ours_acked) = (false, false);
        while !(theirs && ours_acked) {
            let f = h2.next().await.expect("closed during the handshake");
            if f.is(SETTINGS, ACK) {
                ours_acked = true;
            } else if f.kind == SETTINGS {
                for s in f.payload.chunks(6) {
                    let id = u16::from_be_bytes([s[0], s[1]]);
                    let value = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
                    h2.server_settings.insert(id, value);
                }
                h2.send(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
                theirs = true;
            }
        }
        h2
    }

    /// Writes and flushes; an error means the server has closed (or stopped reading for
    /// longer than `PATIENCE`).
    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let write = async {
            self.writer.write_all(bytes).await?;
            self.writer.flush().await
        };
        match tokio::time::timeout(PATIENCE, write).await {
            Ok(result) => result?,
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        }
        self.written += bytes.len();
        Ok(())
    }

    /// The next frame from the server; `None` once the connection is closed.
    async fn next(&mut self) -> Option<Frame> {
        tokio::time::timeout(PATIENCE, self.frames.recv())
            .await
            .expect("the server said nothing for 10 s and did not close")
    }

    /// A frame already received, without waiting.
    fn ready_frame(&mut self) -> Option<Frame> {
        self.frames.try_recv().ok()
    }

    async fn goaway(&mut self) -> GoAway {
        while let Some(f) = self.next().await {
            if let Some(g) = f.goaway() {
                return g;
            }
        }
        panic!("the connection closed without a GOAWAY");
    }

    /// Waits for EOF, ignoring anything still in flight.
    async fn closed(&mut self) {
        while let Some(f) = self.next().await {
            assert_ne!(f.kind, HEADERS, "a response after the connection was ended");
        }
    }

    async fn outcome(&mut self, stream: u32) -> Outcome {
        self.outcomes(&[stream]).await.remove(&stream).unwrap()
    }

    /// Reads until each of `streams` has a complete response, a reset, or the connection
    /// ends. Frames of other streams are consumed (their HEADERS still feed the decoder).
    async fn outcomes(&mut self, streams: &[u32]) -> HashMap<u32, Outcome> {
        let mut open: HashMap<u32, (Option<u16>, Vec<u8>)> =
            streams.iter().map(|&s| (s, (None, Vec::new()))).collect();
        let mut done = HashMap::new();
        while !open.is_empty() {
            let Some(f) = self.next().await else {
                done.extend(open.drain().map(|(s, _)| (s, Outcome::Closed)));
                break;
            };
            match f.kind {
                HEADERS => {
                    assert!(f.is(HEADERS, END_HEADERS), "split response head: {f:?}");
                    let status = self.statuses.decode(&f.payload);
                    if let Some((seen, _)) = open.get_mut(&f.stream) {
                        // Informational heads precede the real one.
                        if status.is_some_and(|s| s >= 200) {
                            *seen = status;
                        }
                    }
                }
                DATA => {
                    if let Some((_, body)) = open.get_mut(&f.stream) {
                        body.extend_from_slice(&f.payload);
                    }
                }
                RST_STREAM if open.contains_key(&f.stream) => {
                    open.remove(&f.stream);
                    done.insert(f.stream, Outcome::Reset(f.u32_at(0)));
                }
                GOAWAY => {
                    let g = f.goaway().unwrap();
                    done.extend(open.drain().map(|(s, _)| (s, Outcome::GoAway(g.clone()))));
                }
                _ => {}
            }
            if matches!(f.kind, HEADERS | DATA) && f.flags & END_STREAM != 0 {
                if let Some((status, body)) = open.remove(&f.stream) {
                    let status = status.expect("a response without a :status");
                    done.insert(f.stream, Outcome::Response { status, body });
                }
            }
        }
        done
    }
}

async fn read_frames(mut reader: ReadHalf<Tls>, tx: mpsc::UnboundedSender<Frame>) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Some(f) = Frame::parse(&mut buf) {
            if tx.send(f).is_err() {
                return;
            }
        }
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Proxy and upstream setup
// ---------------------------------------------------------------------------------------

async fn proxy_to(pki: &Pki, upstream: SocketAddr) -> Proxy {
    let config = format!(
        "{}{}{}",
        server_section(""),
        pki.tls_section(),
        public_route("/", &format!("http://{upstream}"))
    );
    Proxy::start(pki.dir.path(), &config).await
}

/// An inspecting upstream that also counts the requests it received.
async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    let addr = spawn_upstream(move |req| {
        let counter = Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            inspect(req).await
        }
    })
    .await;
    (addr, seen)
}

/// A normal request from an independent client (reqwest, HTTP/2) on a new connection:
/// must be a 200; returns how long it took.
async fn normal_request(pki: &Pki, addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let client = pki.client(addr).http2_prior_knowledge().build().unwrap();
    let response = tokio::time::timeout(PATIENCE, client.get(url(addr, "/")).send())
        .await
        .expect("a normal request took over 10 s")
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    started.elapsed()
}

/// Normal requests one after another until `done`; returns how many and the slowest.
async fn probe_until(pki: &Pki, addr: SocketAddr, done: &AtomicBool) -> (usize, Duration) {
    let (mut count, mut slowest) = (0, Duration::ZERO);
    while count == 0 || !done.load(Ordering::SeqCst) {
        slowest = slowest.max(normal_request(pki, addr).await);
        count += 1;
    }
    (count, slowest)
}

// ---------------------------------------------------------------------------------------
// 1. Rapid reset (CVE-2023-44487)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_gets_enhance_your_calm_and_spares_the_upstream() {
    let pki = Pki::new();
    let (upstream, seen) = counting_upstream().await;
    let proxy = proxy_to(&pki, upstream).await;
    let mut h2 = H2::connect(&pki, proxy.addr).await;

    let request = get("/", &[]);
    let started = Instant::now();
    let mut pairs = 0u32;
    let mut ended = None;
    while pairs < 10_000 && started.elapsed() < Duration::from_secs(5) && ended.is_none() {
        let mut batch = Vec::new();
        for _ in 0..100 {
            let stream = 2 * pairs + 1;
            batch.extend(headers(stream, &request));
            batch.extend(rst_stream(stream, CANCEL));
            pairs += 1;
        }
        if h2.send(&batch).await.is_err() {
            break;
        }
        while let Some(f) = h2.ready_frame() {
            ended = ended.or(f.goaway());
        }
    }
    let ended = match ended {
        Some(g) => g,
        None => h2.goaway().await,
    };
    assert_eq!(
        (ended.code, ended.debug.as_str()),
        (ENHANCE_YOUR_CALM, "too_many_resets"),
        "{ended:?}"
    );
    // The first batch is one TLS record, which h2 decodes in one go before hyper accepts
    // anything: 20 streams reset before accept are its budget, the 21st (stream 41) ends
    // the connection, and no request was ever handed to the proxy.
    assert_eq!(ended.last_stream, 41, "after {pairs} pairs written");
    h2.closed().await;
    assert_eq!(seen.load(Ordering::SeqCst), 0);

    normal_request(&pki, proxy.addr).await;
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------
// 2. CONTINUATION floods (CVE-2024-27316 class)
// ---------------------------------------------------------------------------------------

/// A HEADERS frame opening stream 1 without END_HEADERS, then `n` CONTINUATION frames with
/// one small field each, the last with END_HEADERS if `finish`.
fn split_head(n: usize, finish: bool) -> Vec<u8> {
    let mut out = frame(HEADERS, END_STREAM, 1, &get("/", &[]));
    for i in 0..n {
        let flags = if finish && i == n - 1 { END_HEADERS } else { 0 };
        out.extend(frame(
            CONTINUATION,
            flags,
            1,
            &field(&format!("x-part-{i}"), "v"),
        ));
    }
    out
}

#[tokio::test]
async fn continuation_frames_past_the_fifth_get_enhance_your_calm() {
    let pki = Pki::new();
    let (upstream, seen) = counting_upstream().await;
    let proxy = proxy_to(&pki, upstream).await;

    // h2 allows max(max_header_list_size / max_frame_size * 1.25, 5) CONTINUATION frames
    // before the one with END_HEADERS: 16384 / 16384 gives the floor, 5.
    let mut h2 = H2::connect(&pki, proxy.addr).await;
    h2.send(&split_head(6, true)).await.unwrap();
    let answer = h2.outcome(1).await;
    assert_eq!(answer.status(), Some(200), "{answer:?}");
    let upstream_saw = answer.json();
    for i in 0..6 {
        assert_eq!(
            seen_header(&upstream_saw, &format!("x-part-{i}")).as_deref(),
            Some("v")
        );
    }

    let mut h2 = H2::connect(&pki, proxy.addr).await;
    // The sixth CONTINUATION without END_HEADERS trips the limit; the rest is never read.
    h2.send(&split_head(1000, false)).await.unwrap();
    assert_eq!(
        h2.goaway().await,
        goaway(0, ENHANCE_YOUR_CALM, "too_many_continuations")
    );
    h2.closed().await;
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    normal_request(&pki, proxy.addr).await;
}

#[tokio::test]
async fn a_flood_of_full_continuation_frames_is_cut_off_well_under_a_mebibyte() {
    let pki = Pki::new();
    let (upstream, seen) = counting_upstream().await;
    let proxy = proxy_to(&pki, upstream).await;
    let mut h2 = H2::connect(&pki, proxy.addr).await;

    // Full 16 KiB frames of ~150-byte fields, each frame a whole number of fields.
    let fields = |frame_no: usize| -> Vec<u8> {
        (0..100)
            .flat_map(|i| field(&format!("x-flood-{frame_no}-{i}"), &"f".repeat(140)))
            .collect()
    };
    let mut head = get("/", &[]);
    head.extend(fields(0));
    h2.send(&frame(HEADERS, END_STREAM, 1, &head))
        .await
        .unwrap();
    let mut frames_sent = 1;
    let mut written_at_goaway = None;
    let mut ended = None;
    // One frame at a time, each followed by a short look for the GOAWAY, so the byte
    // count below is what the server read before it gave up, not what socket buffers took.
    while frames_sent < 64 && ended.is_none() {
        let cont = frame(CONTINUATION, 0, 1, &fields(frames_sent));
        if h2.send(&cont).await.is_err() {
            break;
        }
        frames_sent += 1;
        let look = Instant::now() + Duration::from_millis(100);
        while let Ok(Some(f)) = tokio::time::timeout_at(look.into(), h2.frames.recv()).await {
            if let Some(g) = f.goaway() {
                written_at_goaway = Some(h2.written);
                ended = Some(g);
                break;
            }
        }
    }
    let ended = match ended {
        Some(g) => g,
        None => h2.goaway().await,
    };
    // Not h2's decoded-size abuse limit (4 x max_header_bytes): once the list is over
    // max_header_bytes, h2 discards fields and stops counting them, so only the one frame
    // being decoded counts against it. The CONTINUATION count is what stops this flood:
    // HEADERS and five CONTINUATIONs (~94 KB) are read, the sixth ends the connection.
    assert_eq!(
        ended,
        goaway(0, ENHANCE_YOUR_CALM, "too_many_continuations")
    );
    let written = written_at_goaway.unwrap_or(h2.written);
    // 7 frames is ~109 KB; the margin is for a GOAWAY noticed a few frames late.
    assert!(
        frames_sent >= 7 && written < 256 * 1024,
        "{written} bytes in {frames_sent} frames before the GOAWAY"
    );
    h2.closed().await;
    assert_eq!(seen.load(Ordering::SeqCst), 0);
    normal_request(&pki, proxy.addr).await;
}

#[tokio::test]
async fn continuation_that_does_not_follow_its_headers_is_a_connection_protocol_error() {
    let pki = Pki::new();
    let (upstream, seen) = counting_upstream().await;
    let proxy = proxy_to(&pki, upstream).await;
    let open_head = frame(HEADERS, END_STREAM, 1, &get("/", &[]));
    let continuation = |stream| frame(CONTINUATION, END_HEADERS, stream, &field("x-a", "b"));
    let cases: [(&str, Vec<u8>); 3] = [
        ("with no HEADERS before it", continuation(1)),
        (
            "on another stream",
            [open_head.clone(), continuation(3)].concat(),
        ),
        (
            "after another frame type",
            [
                open_head.clone(),
                frame(PING, 0, 0, &[0; 8]),
                continuation(1),
            ]
            .concat(),
        ),
    ];
    for (case, bytes) in cases {
        let mut h2 = H2::connect(&pki, proxy.addr).await;
        h2.send(&bytes).await.unwrap();
        assert_eq!(h2.goaway().await, goaway(0, PROTOCOL_ERROR, ""), "{case}");
        h2.closed().await;
    }
    assert_eq!(seen.load(Ordering::SeqCst), 0);
    normal_request(&pki, proxy.addr).await;
}

// ---------------------------------------------------------------------------------------
// 3. Malformed requests (RFC 9113 8.2)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn connection_specific_request_headers_reset_the_stream_and_never_reach_the_upstream() {
    let pki = Pki::new();
    let (upstream, seen) = counting_upstream().await;
    let proxy = proxy_to(&pki, upstream).await;
    let mut h2 = H2::connect(&pki, proxy.addr).await;
    let forbidden = [
        ("connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("te", "gzip"),
        ("te", "trailers, gzip"),
        ("upgrade", "h2c"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
    ];
    let mut stream = 1;
    for (name, value) in forbidden {
        h2.send(&headers(stream, &get("/", &[(name, value)])))
            .await
            .unwrap();
        assert_eq!(
            h2.outcome(stream).await,
            Outcome::Reset(PROTOCOL_ERROR),
            "{name}: {value}"
        );
        stream += 2;
    }
    assert_eq!(seen.load(Ordering::SeqCst), 0);

    // The one connection-ish header HTTP/2 allows; hop-by-hop, so the upstream never sees it.
    h2.send(&headers(stream, &get("/", &[("te", "trailers")])))
        .await
        .unwrap();
    let answer = h2.outcome(stream).await;
    assert_eq!(answer.status(), Some(200), "{answer:?}");
    assert_eq!(seen_header(&answer.json(), "te"), None);
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn malformed_requests_past_1024_stream_resets_get_enhance_your_calm() {
    // CVE-2025-8671 ("MadeYouReset"): requests the server must reset itself cost it work
    // the client does not pay for; h2 allows 1024 such resets per connection, ever.
    let pki = Pki::new();
    let (upstream, seen) = counting_upstream().await;
    let proxy = proxy_to(&pki, upstream).await;
    let mut h2 = H2::connect(&pki, proxy.addr).await;
    let bad = get("/", &[("connection", "close")]);
    // In batches, each answered before the next, so every reset is written: when the limit
    // trips mid-read, h2 drops the resets it has queued and sends only the GOAWAY.
    for batch in 0..8u32 {
        let streams: Vec<u32> = (0..128).map(|i| 2 * (128 * batch + i) + 1).collect();
        let bytes: Vec<u8> = streams.iter().flat_map(|&s| headers(s, &bad)).collect();
        h2.send(&bytes).await.unwrap();
        for (stream, outcome) in h2.outcomes(&streams).await {
            assert_eq!(outcome, Outcome::Reset(PROTOCOL_ERROR), "stream {stream}");
        }
    }
    h2.send(&headers(2 * 1024 + 1, &bad)).await.unwrap();
    // Stream 0: requests rejected while decoding never count as processed.
    assert_eq!(
        h2.goaway().await,
        goaway(0, ENHANCE_YOUR_CALM, "too_many_internal_resets")
    );
    h2.closed().await;
    assert_eq!(seen.load(Ordering::SeqCst), 0);
    normal_request(&pki, proxy.addr).await;
}

#[tokio::test]
async fn malformed_field_names_end_the_connection_with_protocol_error() {
    let pki = Pki::new();
    let (upstream, seen) = counting_upstream().await;
    let proxy = proxy_to(&pki, upstream).await;
    // h2 rejects these while decoding HPACK, which is connection state, so the whole
    // connection goes (RFC 9113 5.4.1 allows treating a stream error as a connection error).
    let cases: [(&str, Vec<u8>); 3] = [
        ("uppercase name", get("/", &[("X-Upper", "1")])),
        ("unknown pseudo-header", get("/", &[(":evil", "1")])),
        ("space in a name", get("/", &[("x bad", "1")])),
    ];
    for (case, head) in cases {
        let mut h2 = H2::connect(&pki, proxy.addr).await;
        h2.send(&headers(1, &head)).await.unwrap();
        assert_eq!(h2.goaway().await, goaway(0, PROTOCOL_ERROR, ""), "{case}");
        h2.closed().await;
    }
    // Malformed but decodable: only the stream is reset.
    let mut h2 = H2::connect(&pki, proxy.addr).await;
    let mut late_pseudo = get("/", &[("x-a", "b")]);
    late_pseudo.extend(field(":method", "POST"));
    h2.send(&headers(1, &late_pseudo)).await.unwrap();
    assert_eq!(h2.outcome(1).await, Outcome::Reset(PROTOCOL_ERROR));
    let no_path = block(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "localhost"),
    ]);
    h2.send(&headers(3, &no_path)).await.unwrap();
    assert_eq!(h2.outcome(3).await, Outcome::Reset(PROTOCOL_ERROR));
    assert_eq!(seen.load(Ordering::SeqCst), 0);
    h2.send(&headers(5, &get("/", &[]))).await.unwrap();
    assert_eq!(h2.outcome(5).await.status(), Some(200));
}

// ---------------------------------------------------------------------------------------
// 4. Oversized header lists
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn oversized_header_lists_get_431_and_the_connection_keeps_serving() {
    let pki = Pki::new();
    let (upstream, seen) = counting_upstream().await;
    let proxy = proxy_to(&pki, upstream).await;
    let mut h2 = H2::connect(&pki, proxy.addr).await;
    assert_eq!(
        h2.server_settings.get(&SETTINGS_MAX_HEADER_LIST_SIZE),
        Some(&16384)
    );

    // One 20,000-byte field, over two frames (it does not fit in 16 KiB).
    let big = get("/", &[("x-big", &"b".repeat(20_000))]);
    let (first, rest) = big.split_at(16_000);
    let mut bytes = frame(HEADERS, END_STREAM, 1, first);
    bytes.extend(frame(CONTINUATION, END_HEADERS, 1, rest));
    h2.send(&bytes).await.unwrap();
    assert_eq!(
        h2.outcome(1).await,
        Outcome::Response {
            status: 431,
            body: vec![]
        }
    );

    // 300 small fields: 300 x (10 + 20 + HPACK's 32 bytes per field) = 18,600 > 16,384.
    let many: Vec<(String, String)> = (0..300)
        .map(|i| (format!("x-many-{i:03}"), "m".repeat(20)))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (&n[..], &v[..])).collect();
    h2.send(&headers(3, &get("/", &many))).await.unwrap();
    assert_eq!(
        h2.outcome(3).await,
        Outcome::Response {
            status: 431,
            body: vec![]
        }
    );
    assert_eq!(seen.load(Ordering::SeqCst), 0);

    h2.send(&headers(5, &get("/", &[]))).await.unwrap();
    assert_eq!(h2.outcome(5).await.status(), Some(200));
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_hpack_bomb_is_cut_off_at_four_times_max_header_bytes() {
    let pki = Pki::new();
    let (upstream, seen) = counting_upstream().await;
    let proxy = proxy_to(&pki, upstream).await;
    let mut h2 = H2::connect(&pki, proxy.addr).await;
    // One 4,000-byte field put in the dynamic table, then referenced by its one-byte index
    // 1,000 times: ~4 KB on the wire that would decode to ~4 MB.
    let mut bomb = get("/", &[]);
    bomb.push(0x40); // literal with incremental indexing, new name
    put_str(&mut bomb, b"x-bomb");
    put_str(&mut bomb, "x".repeat(4000).as_bytes());
    bomb.extend(std::iter::repeat_n(0x80 | 62, 1000));
    h2.send(&headers(1, &bomb)).await.unwrap();
    let sent = h2.written;
    assert_eq!(
        h2.goaway().await,
        goaway(0, ENHANCE_YOUR_CALM, "header_list_way_too_large")
    );
    h2.closed().await;
    assert!(sent < 8 * 1024, "{sent}");
    assert_eq!(seen.load(Ordering::SeqCst), 0);
    normal_request(&pki, proxy.addr).await;
}

// ---------------------------------------------------------------------------------------
// 5. Control and empty-frame floods (CVE-2019-9512, -9515, -9518)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_data_frames_past_a_hundred_get_enhance_your_calm() {
    let pki = Pki::new();
    let (upstream, _) = counting_upstream().await;
    let proxy = proxy_to(&pki, upstream).await;
    let mut h2 = H2::connect(&pki, proxy.addr).await;
    let post = block(&[
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", "/upload"),
    ]);
    h2.send(&frame(HEADERS, END_HEADERS, 1, &post))
        .await
        .unwrap();

    let done = AtomicBool::new(false);
    let flood = async {
        let empty = frame(DATA, 0, 1, &[]);
        let batch: Vec<u8> = empty.repeat(1000);
        let started = Instant::now();
        let mut sent = 0;
        let mut ended = None;
        while sent < 100_000 && started.elapsed() < Duration::from_secs(3) && ended.is_none() {
            if h2.send(&batch).await.is_err() {
                break;
            }
            sent += 1000;
            while let Some(f) = h2.ready_frame() {
                ended = ended.or(f.goaway());
            }
        }
        let ended = match ended {
            Some(g) => g,
            None => h2.goaway().await,
        };
        h2.closed().await;
        done.store(true, Ordering::SeqCst);
        (ended, sent)
    };
    let ((ended, sent), (probes, slowest)) =
        tokio::join!(flood, probe_until(&pki, proxy.addr, &done));
    // h2 counts empty non-final DATA frames per connection and allows 100.
    assert_eq!(
        ended,
        goaway(1, ENHANCE_YOUR_CALM, "too_many_data_frames"),
        "after {sent} frames"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "{probes} normal requests during the flood, slowest {slowest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_settings_floods_are_all_acknowledged_without_starving_other_clients() {
    let pki = Pki::new();
    let (upstream, _) = counting_upstream().await;
    let proxy = proxy_to(&pki, upstream).await;

    for kind in [PING, SETTINGS] {
        let mut h2 = H2::connect(&pki, proxy.addr).await;
        let done = AtomicBool::new(false);
        let flood = async {
            let started = Instant::now();
            let mut sent = 0u64;
            while sent < 50_000 && started.elapsed() < Duration::from_secs(3) {
                let batch: Vec<u8> = (sent..sent + 500)
                    .flat_map(|n| match kind {
                        PING => frame(PING, 0, 0, &n.to_be_bytes()),
                        _ => frame(SETTINGS, 0, 0, &[]),
                    })
                    .collect();
                h2.send(&batch).await.unwrap();
                sent += 500;
            }
            // No count limit: h2 keeps one pending ACK and writes it before it reads the
            // next frame, so a flood is throttled by the flooder's own reading, not refused.
            let mut acked = 0u64;
            while acked < sent {
                let f = h2.next().await.expect("closed during the flood");
                assert!(f.goaway().is_none(), "{:?}", f.goaway());
                if f.is(kind, ACK) {
                    if kind == PING {
                        assert_eq!(f.payload, acked.to_be_bytes(), "PING ACKs out of order");
                    }
                    acked += 1;
                }
            }
            done.store(true, Ordering::SeqCst);
            sent
        };
        let (sent, (probes, slowest)) = tokio::join!(flood, probe_until(&pki, proxy.addr, &done));
        assert!(sent >= 5_000, "only {sent} frames in 3 s");
        assert!(
            slowest < Duration::from_secs(2),
            "kind {kind}: {probes} normal requests during the flood, slowest {slowest:?}"
        );
        // The flooded connection itself still serves.
        h2.send(&headers(1, &get("/", &[]))).await.unwrap();
        assert_eq!(h2.outcome(1).await.status(), Some(200), "kind {kind}");
    }
}

// ---------------------------------------------------------------------------------------
// 6. :authority versus Host
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_host_field_that_contradicts_authority_or_repeats_is_a_400_before_routing() {
    let pki = Pki::new();
    let (default_upstream, default_seen) = counting_upstream().await;
    let (admin_upstream, admin_seen) = counting_upstream().await;
    let config = format!(
        "{}{}{}[[route]]\nhost = \"admin.localhost\"\npath = \"/\"\nupstream = \"http://{admin_upstream}\"\nauth = \"public\"\n",
        server_section(""),
        pki.tls_section(),
        public_route("/", &format!("http://{default_upstream}")),
    );
    let proxy = Proxy::start(pki.dir.path(), &config).await;
    let mut h2 = H2::connect(&pki, proxy.addr).await;
    let head = |authority: Option<&str>, hosts: &[&str]| {
        let mut fields = vec![(":method", "GET"), (":scheme", "https"), (":path", "/")];
        if let Some(a) = authority {
            fields.push((":authority", a));
        }
        let mut out = block(&fields);
        for h in hosts {
            out.extend(field("host", h));
        }
        out
    };

    let refused = [
        (Some("localhost"), &["admin.localhost"][..]),
        (Some("admin.localhost"), &["evil.example"][..]),
        (Some("localhost"), &["localhost", "admin.localhost"][..]),
        (None, &["admin.localhost", "localhost"][..]),
        (None, &["admin.localhost", "admin.localhost"][..]),
    ];
    let mut stream = 1;
    for (authority, hosts) in refused {
        h2.send(&headers(stream, &head(authority, hosts)))
            .await
            .unwrap();
        assert_eq!(
            h2.outcome(stream).await.status(),
            Some(400),
            ":authority {authority:?}, host {hosts:?}"
        );
        stream += 2;
    }
    assert_eq!(default_seen.load(Ordering::SeqCst), 0);
    assert_eq!(admin_seen.load(Ordering::SeqCst), 0);

    // Either one alone, or both agreeing up to case, routes by that host, and the upstream
    // gets it as Host.
    let routed = [
        (Some("admin.localhost"), &[][..]),
        (None, &["admin.localhost"][..]),
        (Some("admin.localhost"), &["Admin.Localhost"][..]),
    ];
    for (authority, hosts) in routed {
        h2.send(&headers(stream, &head(authority, hosts)))
            .await
            .unwrap();
        let answer = h2.outcome(stream).await;
        assert_eq!(answer.status(), Some(200), "{authority:?} {hosts:?}");
        assert_eq!(
            seen_header(&answer.json(), "host").as_deref(),
            Some("admin.localhost"),
            ":authority {authority:?}, host {hosts:?}"
        );
        stream += 2;
    }
    assert_eq!(admin_seen.load(Ordering::SeqCst), 3);
    assert_eq!(default_seen.load(Ordering::SeqCst), 0);
}

// ---------------------------------------------------------------------------------------
// 7. Identity headers
// ---------------------------------------------------------------------------------------

const FORGED_IDENTITY: [(&str, &str); 9] = [
    ("x-forwarded-user", "admin"),
    ("x-forwarded-user", "root"),
    ("x_forwarded_user", "admin"),
    ("x.forwarded.user", "admin"),
    ("x-forwarded-email", "admin@example.com"),
    ("x-forwarded-groups", "admins"),
    ("x-forwarded-preferred-username", "admin"),
    ("x-forwarded-for", "203.0.113.66"),
    ("x-real-ip", "203.0.113.66"),
];

fn assert_no_forged_identity(upstream_saw: &serde_json::Value, user: Option<&str>) {
    for name in seen_header_names(upstream_saw) {
        let folded: String = name.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        if folded == "xforwardeduser" {
            assert_eq!(name, "x-forwarded-user");
        } else {
            assert!(
                ![
                    "xforwardedemail",
                    "xforwardedgroups",
                    "xforwardedpreferredusername"
                ]
                .contains(&folded.as_str()),
                "client identity header {name} reached the upstream"
            );
        }
    }
    assert_eq!(
        upstream_saw["headers"].get("x-forwarded-user"),
        user.map(|u| serde_json::json!([u])).as_ref()
    );
    assert_eq!(
        seen_header(upstream_saw, "x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        seen_header(upstream_saw, "x-real-ip").as_deref(),
        Some("127.0.0.1")
    );
}

#[tokio::test]
async fn identity_headers_sent_over_http2_never_reach_the_upstream() {
    let pki = Pki::new();
    let upstream = spawn_inspecting_upstream().await;
    std::fs::write(
        pki.dir.path().join("users.htpasswd"),
        format!(
            "alice:{}\n",
            sallyport::auth::htpasswd::hash_password(
                b"alice-pw",
                sallyport::auth::htpasswd::NewHash::Bcrypt { cost: 4 }
            )
            .unwrap()
        ),
    )
    .unwrap();
    let config = format!(
        "{}{}[auth.basic]\nhtpasswd = \"users.htpasswd\"\n{}[[route]]\npath = \"/private\"\nupstream = \"http://{upstream}\"\n",
        server_section(""),
        pki.tls_section(),
        public_route("/", &format!("http://{upstream}")),
    );
    let proxy = Proxy::start(pki.dir.path(), &config).await;
    let mut h2 = H2::connect(&pki, proxy.addr).await;

    h2.send(&headers(1, &get("/public", &FORGED_IDENTITY)))
        .await
        .unwrap();
    let public = h2.outcome(1).await;
    assert_eq!(public.status(), Some(200));
    assert_no_forged_identity(&public.json(), None);

    // "alice:alice-pw"
    let mut private = FORGED_IDENTITY.to_vec();
    private.push(("authorization", "Basic YWxpY2U6YWxpY2UtcHc="));
    h2.send(&headers(3, &get("/private", &private)))
        .await
        .unwrap();
    let authenticated = h2.outcome(3).await;
    assert_eq!(authenticated.status(), Some(200));
    assert_no_forged_identity(&authenticated.json(), Some("alice"));
}

#[tokio::test]
async fn oauth2_proxy_identity_headers_from_a_client_never_reach_the_upstream() {
    let pki = Pki::new();
    let upstream = spawn_inspecting_upstream().await;
    let proxy = proxy_to(&pki, upstream).await;
    let mut h2 = H2::connect(&pki, proxy.addr).await;
    let forged = [
        ("x-auth-request-user", "admin"),
        ("x_auth_request_user", "admin"),
        ("x-auth-request-email", "admin@example.com"),
        ("x-auth-request-groups", "admins"),
        ("x-auth-request-preferred-username", "admin"),
    ];
    h2.send(&headers(1, &get("/", &forged))).await.unwrap();
    let answer = h2.outcome(1).await;
    assert_eq!(answer.status(), Some(200));
    for name in seen_header_names(&answer.json()) {
        let folded: String = name.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        assert!(
            !folded.starts_with("xauthrequest"),
            "client identity header {name} reached the upstream"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 8. Stream concurrency
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_max_concurrent_streams_are_refused_and_the_connection_survives() {
    let pki = Pki::new();
    let seen = Arc::new(AtomicUsize::new(0));
    let (release, released) = watch::channel(false);
    let upstream = {
        let seen = Arc::clone(&seen);
        spawn_upstream(move |_req| {
            let seen = Arc::clone(&seen);
            let mut released = released.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = released.wait_for(|r| *r).await;
                Response::new(full("ok"))
            }
        })
        .await
    };
    let proxy = proxy_to(&pki, upstream).await;
    let mut h2 = H2::connect(&pki, proxy.addr).await;
    assert_eq!(
        h2.server_settings.get(&SETTINGS_MAX_CONCURRENT_STREAMS),
        Some(&250)
    );

    // 260 requests at once, each held open by the upstream.
    let streams: Vec<u32> = (0..260).map(|i| 2 * i + 1).collect();
    let request = get("/", &[]);
    let all: Vec<u8> = streams.iter().flat_map(|&s| headers(s, &request)).collect();
    h2.send(&all).await.unwrap();
    let refused = h2.outcomes(&streams[250..]).await;
    for (stream, outcome) in &refused {
        assert_eq!(outcome, &Outcome::Reset(REFUSED_STREAM), "stream {stream}");
    }

    let deadline = Instant::now() + PATIENCE;
    while seen.load(Ordering::SeqCst) < 250 {
        assert!(Instant::now() < deadline, "{seen:?} requests arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    release.send(true).unwrap();
    let answered = h2.outcomes(&streams[..250]).await;
    for (stream, outcome) in &answered {
        assert_eq!(outcome.status(), Some(200), "stream {stream}: {outcome:?}");
    }
    assert_eq!(seen.load(Ordering::SeqCst), 250);

    let next = streams[259] + 2;
    h2.send(&headers(next, &request)).await.unwrap();
    assert_eq!(h2.outcome(next).await.status(), Some(200));
    assert_eq!(seen.load(Ordering::SeqCst), 251);
}

/// A request we refuse, whose body is still on its way: the answer waits for the body
/// (up to 64 KiB, 5 s) instead of dropping it. Dropped, the stream would be cancelled
/// before the answer went out, and curl reports no answer at all.
#[tokio::test]
async fn a_refused_request_is_answered_after_its_body_not_cancelled_under_it() {
    let pki = Pki::new();
    let (upstream, seen) = counting_upstream().await;
    let proxy = proxy_to(&pki, upstream).await;
    let mut h2 = H2::connect(&pki, proxy.addr).await;
    // Forward-auth from a client that is no trusted proxy: refused with 400.
    let post = block(&[
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", "/.sallyport/auth"),
    ]);
    h2.send(&frame(HEADERS, END_HEADERS, 1, &post))
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            match h2.next().await {
                Some(f) if f.stream == 1 => return f,
                Some(_) => {}
                None => panic!("the connection closed"),
            }
        }
    })
    .await;
    assert!(early.is_err(), "answered before the body: {early:?}");
    h2.send(&frame(DATA, END_STREAM, 1, b"x=1")).await.unwrap();
    assert_eq!(h2.outcome(1).await.status(), Some(400));
    assert_eq!(seen.load(Ordering::SeqCst), 0);
}
