//! The admin listener (`[admin] listen`): `/healthz`, `/readyz` and `/metrics`, on a port
//! of its own so probes and scrapes never compete with traffic, and so traffic can never
//! reach them. Plain HTTP/1.1; it carries no credentials and reveals no secrets.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::reload::Reloader;

/// Scrapers and probes are few; anything beyond this waits in the backlog.
const MAX_ADMIN_CONNECTIONS: usize = 32;
/// A readiness probe must answer well within the kubelet's default 1 s timeout.
const UPSTREAM_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Serves until `stop` is cancelled. `draining` turns `/readyz` to 503 first, so load
/// balancers stop sending traffic while in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    reloader: Arc<Reloader>,
    draining: CancellationToken,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            () = stop.cancelled() => return,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let reloader = Arc::clone(&reloader);
        let draining = draining.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |request| {
                let reloader = Arc::clone(&reloader);
                let draining = draining.clone();
                async move { Ok::<_, Infallible>(answer(&request, &reloader, &draining).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

async fn answer(
    request: &Request<Incoming>,
    reloader: &Reloader,
    draining: &CancellationToken,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
    }
    let mut response = match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let (ready, report) = readiness(reloader, draining).await;
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, report)
        }
        "/metrics" => {
            let snapshot = reloader.current();
            if let Some(throttle) = snapshot.gate.throttle() {
                let (clients, users) = throttle.tracked();
                reloader.metrics().set_throttle_tracked(clients, users);
            }
            let body = reloader.metrics().encode(snapshot.tls.is_some());
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz or /metrics\n".into(),
        ),
    };
    if request.method() == Method::HEAD {
        *response.body_mut() = Full::new(Bytes::new());
    }
    response
}

/// Each check on a line of its own, `ok` or `fail`, so `curl` shows an operator what is
/// wrong without a log search.
async fn readiness(reloader: &Reloader, draining: &CancellationToken) -> (bool, String) {
    let snapshot = reloader.current();
    let mut ready = true;
    let mut report = String::new();
    let mut line = |ok: bool, what: String| {
        ready &= ok;
        report.push_str(if ok { "ok " } else { "fail " });
        report.push_str(&what);
        report.push('\n');
    };
    line(!draining.is_cancelled(), "accepting traffic".into());
    line(true, "config loaded".into());
    if let Some(oidc) = snapshot.gate.authenticator().oidc() {
        line(
            oidc.is_ready(),
            if oidc.is_ready() {
                "OIDC provider discovered".into()
            } else {
                "OIDC provider not discovered yet (see the log for why)".into()
            },
        );
    }
    if snapshot.admin.as_ref().is_some_and(|a| a.check_upstreams) {
        let mut probes = tokio::task::JoinSet::new();
        let mut seen = std::collections::BTreeSet::new();
        for (index, route) in snapshot.gate.routes().enumerate() {
            let target = route.upstream.describe();
            if !seen.insert(target.clone()) {
                continue;
            }
            let gate = Arc::clone(&snapshot.gate);
            let label = route.label.to_string();
            probes.spawn(async move {
                let upstream = &gate.routes().nth(index).map(|r| &r.upstream);
                let outcome = match upstream {
                    Some(u) => u.probe(UPSTREAM_PROBE_TIMEOUT).await,
                    None => Ok(()),
                };
                (index, label, target, outcome)
            });
        }
        let mut results = probes.join_all().await;
        results.sort_by_key(|(index, ..)| *index);
        for (_, label, target, outcome) in results {
            match outcome {
                Ok(()) => line(true, format!("upstream {label} -> {target}")),
                Err(why) => line(false, format!("upstream {label} -> {target}: {why}")),
            }
        }
    }
    (ready, report)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}
