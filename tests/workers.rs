//! The binary serves connections on one single-threaded runtime per core
//! (`Server::run_on_workers`); every other test serves on the test's own runtime. These
//! run the same proxy the binary runs: HTTP/1.1, HTTP/2, Basic, WebSockets, and the
//! shutdown sequence across threads.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use sallyport::auth::htpasswd::{NewHash, hash_password};
use tokio_tungstenite::tungstenite::Message;

fn config(pki: &Pki, upstream: &str, extra: &str) -> String {
    let htpasswd = pki.dir.path().join("users");
    let hash = hash_password(b"alice-pw", NewHash::Bcrypt { cost: 4 }).unwrap();
    std::fs::write(&htpasswd, format!("alice:{hash}\n")).unwrap();
    format!(
        "{}{}[auth.basic]\nhtpasswd = \"users\"\n{extra}\n\
         [[route]]\npath = \"/public\"\nupstream = \"{upstream}\"\nauth = \"public\"\n\
         [[route]]\npath = \"/\"\nupstream = \"{upstream}\"\n",
        server_section(""),
        pki.tls_section(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_over_both_protocols_are_served_on_workers() {
    let pki = Pki::new();
    let upstream = spawn_inspecting_upstream().await;
    let proxy = Proxy::start_on_workers(
        pki.dir.path(),
        &config(&pki, &format!("http://{upstream}"), ""),
        3,
    )
    .await;

    // Separate clients, so separate connections, spread over the workers.
    let mut requests = Vec::new();
    for i in 0..24 {
        let builder = pki.client(proxy.addr);
        let builder = if i % 2 == 0 {
            builder.http1_only()
        } else {
            builder.http2_prior_knowledge()
        };
        let client = builder.build().unwrap();
        requests.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            // Several requests per connection: keep-alive reuse on the same worker.
            for n in 0..3 {
                let response = client
                    .get(url(proxy.addr, &format!("/app/{i}/{n}")))
                    .basic_auth("alice", Some("alice-pw"))
                    .send()
                    .await
                    .unwrap();
                let version = response.version();
                assert_eq!(response.status(), 200);
                let body: serde_json::Value = response.json().await.unwrap();
                seen.push((version, body));
            }
            (i, seen)
        }));
    }
    for request in requests {
        let (i, seen) = request.await.unwrap();
        for (n, (version, body)) in seen.into_iter().enumerate() {
            let expected = if i % 2 == 0 {
                reqwest::Version::HTTP_11
            } else {
                reqwest::Version::HTTP_2
            };
            assert_eq!(version, expected);
            assert_eq!(body["path"], format!("/app/{i}/{n}"));
            assert_eq!(
                seen_header(&body, "x-forwarded-user").as_deref(),
                Some("alice")
            );
        }
    }

    let anonymous = pki.client(proxy.addr).build().unwrap();
    let refused = anonymous.get(url(proxy.addr, "/app")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().contains_key("www-authenticate"));
    let public = anonymous
        .get(url(proxy.addr, "/public/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_are_relayed_from_a_worker() {
    let pki = Pki::new();
    let ws_upstream = spawn_websocket_echo_upstream().await;
    let proxy = Proxy::start_on_workers(
        pki.dir.path(),
        &config(&pki, &format!("http://{ws_upstream}"), ""),
        2,
    )
    .await;
    let mut sockets = Vec::new();
    for _ in 0..4 {
        let tls = pki.raw_tls(proxy.addr).await;
        let (ws, response) = tokio_tungstenite::client_async(
            format!("wss://localhost:{}/public/ws", proxy.addr.port()),
            tls,
        )
        .await
        .expect("the upgrade goes through the proxy");
        assert_eq!(response.status(), 101);
        sockets.push(ws);
    }
    for (i, ws) in sockets.iter_mut().enumerate() {
        ws.send(Message::text(format!("ping {i}"))).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), format!("ping {i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_requests_in_flight_on_workers_then_stops() {
    let pki = Pki::new();
    let (release, released) = tokio::sync::watch::channel(false);
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<()>();
    let upstream = spawn_upstream(move |_req| {
        let mut released = released.clone();
        let arrived_tx = arrived_tx.clone();
        async move {
            let _ = arrived_tx.send(());
            let _ = released.wait_for(|r| *r).await;
            hyper::Response::new(full("late"))
        }
    })
    .await;
    let mut proxy = Proxy::start_on_workers(
        pki.dir.path(),
        &config(&pki, &format!("http://{upstream}"), "").replacen(
            "[server]\n",
            "[server]\nshutdown_grace = \"60s\"\n",
            1,
        ),
        2,
    )
    .await;

    let mut slow = Vec::new();
    for _ in 0..4 {
        let client = pki.client(proxy.addr).build().unwrap();
        let request = client.get(url(proxy.addr, "/public/slow"));
        slow.push(tokio::spawn(async move {
            let response = request.send().await.unwrap();
            (response.status(), response.text().await.unwrap())
        }));
    }
    for _ in 0..4 {
        tokio::time::timeout(Duration::from_secs(10), arrived.recv())
            .await
            .expect("every request reaches the upstream");
    }
    proxy.begin_shutdown();
    // No new connections once draining: the listener is closed (bounded wait).
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(proxy.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the listener closes when draining starts");
    assert!(
        !proxy.task.as_ref().unwrap().is_finished(),
        "still draining"
    );
    release.send(true).unwrap();
    for request in slow {
        assert_eq!(
            request.await.unwrap(),
            (reqwest::StatusCode::OK, "late".to_string())
        );
    }
    tokio::time::timeout(Duration::from_secs(10), proxy.task.take().unwrap())
        .await
        .expect("the server and its workers stopped after draining")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_still_open_when_the_grace_is_over_are_cut() {
    let pki = Pki::new();
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<()>();
    let upstream = spawn_upstream(move |_req| {
        let arrived_tx = arrived_tx.clone();
        async move {
            let _ = arrived_tx.send(());
            std::future::pending::<()>().await;
            hyper::Response::new(full("never"))
        }
    })
    .await;
    let mut proxy = Proxy::start_on_workers(
        pki.dir.path(),
        &config(&pki, &format!("http://{upstream}"), "").replacen(
            "[server]\n",
            "[server]\nshutdown_grace = \"200ms\"\n",
            1,
        ),
        2,
    )
    .await;
    let client = pki.client(proxy.addr).build().unwrap();
    let stuck = tokio::spawn(client.get(url(proxy.addr, "/public/stuck")).send());
    tokio::time::timeout(Duration::from_secs(10), arrived.recv())
        .await
        .expect("the request reaches the upstream");
    proxy.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(10), proxy.task.take().unwrap())
        .await
        .expect("the server stops when the grace is over")
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), stuck)
        .await
        .expect("the client is not left hanging")
        .unwrap();
    assert!(
        outcome.is_err(),
        "the connection was cut, not answered: {outcome:?}"
    );
}

/// The nice value of each of this process's threads whose name starts with `prefix`.
#[cfg(target_os = "linux")]
fn nice_of_threads(prefix: &str) -> Vec<i64> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| {
            let path = task.ok()?.path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?;
            if !name.starts_with(prefix) {
                return None;
            }
            // Field 19 of stat; the name (field 2) sits in parentheses and may hold spaces.
            let stat = std::fs::read_to_string(path.join("stat")).ok()?;
            let after_name = &stat[stat.rfind(')')? + 2..];
            after_name.split(' ').nth(16)?.parse().ok()
        })
        .collect()
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_hashing_runs_below_the_serving_threads_priority() {
    let pki = Pki::new();
    let upstream = spawn_inspecting_upstream().await;
    let proxy = Proxy::start_on_workers(
        pki.dir.path(),
        &config(&pki, &format!("http://{upstream}"), ""),
        2,
    )
    .await;
    // Not cached yet: this request's bcrypt runs on a worker's blocking thread.
    let response = pki
        .client(proxy.addr)
        .build()
        .unwrap()
        .get(url(proxy.addr, "/app"))
        .basic_auth("alice", Some("alice-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let serving = nice_of_threads("sallyport-worke");
    let hashing = nice_of_threads("sallyport-block");
    assert!(!serving.is_empty(), "no worker threads found");
    assert!(!hashing.is_empty(), "no blocking thread found after a hash");
    let base = *serving.iter().max().unwrap();
    for nice in hashing {
        assert!(
            nice >= (base + 10).min(19),
            "a blocking thread runs at nice {nice}, the serving threads at {base}"
        );
    }
}
