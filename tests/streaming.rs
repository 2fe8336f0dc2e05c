//! Large bodies stream through the proxy in both directions without being buffered. This
//! is its own test binary so the process's peak RSS reflects this test alone.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::Response;
use hyper::body::Frame;

const TOTAL: u64 = 64 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A deterministic byte pattern so both ends can check integrity without storing it.
fn pattern(offset: u64, len: usize) -> Bytes {
    (0..len)
        .map(|i| ((offset + i as u64) % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn checksum(acc: u64, offset: u64, chunk: &[u8]) -> u64 {
    chunk.iter().enumerate().fold(acc, |a, (i, b)| {
        a.wrapping_mul(31)
            .wrapping_add(u64::from(*b) ^ (offset + i as u64))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_with_bounded_memory() {
    let pki = Pki::new();
    let upstream = spawn_upstream(|req: hyper::Request<hyper::body::Incoming>| async move {
        if req.method() == hyper::Method::POST {
            // Count and checksum the upload as it arrives.
            let mut body = req.into_body();
            let (mut seen, mut sum) = (0u64, 0u64);
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    sum = checksum(sum, seen, &data);
                    seen += data.len() as u64;
                }
            }
            Response::new(full(format!("{seen} {sum}")))
        } else {
            let chunks = futures_util::stream::iter((0..TOTAL / CHUNK as u64).map(|i| {
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(pattern(
                    i * CHUNK as u64,
                    CHUNK,
                )))
            }));
            Response::new(StreamBody::new(chunks).boxed_unsync())
        }
    })
    .await;
    let config = format!(
        "{}{}{}",
        server_section(""),
        pki.tls_section(),
        public_route("/", &format!("http://{upstream}"))
    );
    let proxy = Proxy::start(pki.dir.path(), &config).await;

    for http2 in [false, true] {
        let builder = pki.client(proxy.addr);
        let client = if http2 {
            builder.http2_prior_knowledge()
        } else {
            builder.http1_only()
        }
        .build()
        .unwrap();
        // Warm up so connection setup and buffers are in the baseline.
        assert_eq!(
            client
                .get(url(proxy.addr, "/warm"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        let baseline = peak_rss_kib();

        let upload = futures_util::stream::iter(
            (0..TOTAL / CHUNK as u64)
                .map(|i| Ok::<_, std::io::Error>(pattern(i * CHUNK as u64, CHUNK))),
        );
        let expected_sum = (0..TOTAL / CHUNK as u64).fold(0u64, |acc, i| {
            checksum(acc, i * CHUNK as u64, &pattern(i * CHUNK as u64, CHUNK))
        });
        let response = client
            .post(url(proxy.addr, "/upload"))
            .body(reqwest::Body::wrap_stream(upload))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.text().await.unwrap(),
            format!("{TOTAL} {expected_sum}"),
            "upload (http2={http2})"
        );

        let response = client
            .get(url(proxy.addr, "/download"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut stream = response.bytes_stream();
        let (mut seen, mut sum) = (0u64, 0u64);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            sum = checksum(sum, seen, &chunk);
            seen += chunk.len() as u64;
        }
        assert_eq!(seen, TOTAL, "download (http2={http2})");
        assert_eq!(sum, expected_sum, "download integrity (http2={http2})");

        let grown_mib = (peak_rss_kib().saturating_sub(baseline)) / 1024;
        assert!(
            grown_mib < 24,
            "peak RSS grew by {grown_mib} MiB moving 2 x 64 MiB (http2={http2}): bodies are being buffered"
        );
    }
}
