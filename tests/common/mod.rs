//! Shared test harness: a throwaway PKI, the real server bound to 127.0.0.1:0, real
//! upstream servers, and clients that speak real TLS.
#![allow(dead_code)]

pub mod tokens;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use sallyport::clock::WallClock;
use sallyport::config::Config;
use sallyport::server::Server;

pub type TestBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(body: impl Into<Bytes>) -> TestBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A CA and a leaf certificate for `localhost` / `127.0.0.1` / `::1`, written as PEM files
/// into a temp dir that also holds the config file.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        sallyport::install_crypto_provider();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "sallyport test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_params = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])
        .unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert_path = dir.path().join("tls.crt");
        let key_path = dir.path().join("tls.key");
        std::fs::write(&cert_path, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
        std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
        Pki {
            ca_pem: ca.pem(),
            dir,
            cert_path,
            key_path,
        }
    }

    /// The `[server.tls]` table pointing at this PKI's files.
    pub fn tls_section(&self) -> String {
        format!(
            "[server.tls]\ncert = {:?}\nkey = {:?}\n",
            self.cert_path, self.key_path
        )
    }

    pub fn ca_path(&self) -> PathBuf {
        let p = self.dir.path().join("ca.crt");
        std::fs::write(&p, &self.ca_pem).unwrap();
        p
    }

    pub fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }

    /// A reqwest client that trusts only the test CA and reaches `localhost` at `addr`.
    pub fn client(&self, addr: SocketAddr) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap()])
            .resolve("localhost", addr)
            .no_proxy()
    }

    /// A TLS connection to the proxy, ALPN http/1.1, for sending raw bytes.
    pub async fn raw_tls(&self, addr: SocketAddr) -> TlsStream<TcpStream> {
        self.raw_tls_with(addr, self.client_config(&[b"http/1.1"]))
            .await
    }

    pub async fn raw_tls_with(
        &self,
        addr: SocketAddr,
        config: rustls::ClientConfig,
    ) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }
}

pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("https://localhost:{}{}", addr.port(), path)
}

/// The real server, running in the test's runtime.
pub struct Proxy {
    pub addr: SocketAddr,
    pub addrs: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub reloader: Arc<sallyport::reload::Reloader>,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Parses `config` as if it were `<dir>/sallyport.toml`, binds and starts serving.
    pub async fn start(dir: &Path, config: &str) -> Proxy {
        Proxy::start_with_clock(dir, config, WallClock::system()).await
    }

    /// As [`Proxy::start`], with sessions timed by `clock`.
    pub async fn start_with_clock(dir: &Path, config: &str, clock: WallClock) -> Proxy {
        Proxy::launch(dir, config, clock, None).await
    }

    /// As [`Proxy::start`], serving connections on `threads` worker threads of their own,
    /// as the binary does (their timers do not follow a paused test clock).
    pub async fn start_on_workers(dir: &Path, config: &str, threads: usize) -> Proxy {
        Proxy::launch(dir, config, WallClock::system(), Some(threads)).await
    }

    async fn launch(dir: &Path, config: &str, clock: WallClock, threads: Option<usize>) -> Proxy {
        let path = dir.join("sallyport.toml");
        std::fs::write(&path, config).unwrap();
        let config = Config::load(&path)
            .unwrap_or_else(|e| panic!("test config is invalid:\n{e}\n---\n{config}"));
        let server = Server::bind_with_clock(&config, clock).await.unwrap();
        let addrs = server.local_addrs();
        let admin = server.admin_addr();
        let reloader = server.reloader();
        let (tx, rx) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = rx.await;
        };
        let task = match threads {
            None => tokio::spawn(server.run(shutdown)),
            Some(threads) => tokio::spawn(server.run_on_workers(shutdown, threads)),
        };
        Proxy {
            addr: addrs[0],
            addrs,
            admin,
            reloader,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Starts graceful shutdown; await `task` to see it finish.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A `[server]` table listening on an ephemeral loopback port, plus `extra` lines.
pub fn server_section(extra: &str) -> String {
    format!("[server]\nlisten = [\"127.0.0.1:0\"]\n{extra}\n")
}

/// A public route to `upstream`.
pub fn public_route(path: &str, upstream: &str) -> String {
    format!("[[route]]\npath = {path:?}\nupstream = {upstream:?}\nauth = \"public\"\n")
}

/// Serves HTTP/1.1 on 127.0.0.1:0 with `handler`; upgrades are allowed.
pub async fn spawn_upstream<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// An upstream that answers with the request it saw: method, path, query and headers
/// (name -> list of values) as JSON.
pub async fn spawn_inspecting_upstream() -> SocketAddr {
    spawn_upstream(|req: Request<Incoming>| async move { inspect(req).await }).await
}

pub async fn inspect(req: Request<Incoming>) -> Response<TestBody> {
    let mut headers = serde_json::Map::new();
    for (name, value) in req.headers() {
        let entry = headers
            .entry(name.as_str())
            .or_insert_with(|| serde_json::Value::Array(vec![]));
        if let serde_json::Value::Array(list) = entry {
            list.push(
                String::from_utf8_lossy(value.as_bytes())
                    .into_owned()
                    .into(),
            );
        }
    }
    let seen = serde_json::json!({
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(full(seen.to_string()))
        .unwrap()
}

/// Writes `request` on a fresh TLS connection and reads until the server closes it.
pub async fn raw_exchange(pki: &Pki, addr: SocketAddr, request: &[u8]) -> String {
    let mut tls = pki.raw_tls(addr).await;
    tls.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Header names as the upstream saw them, from an inspecting upstream's JSON.
pub fn seen_header_names(seen: &serde_json::Value) -> Vec<String> {
    seen["headers"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

pub fn seen_header(seen: &serde_json::Value, name: &str) -> Option<String> {
    let values = seen["headers"].get(name)?.as_array()?;
    Some(
        values
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// A WebSocket server on 127.0.0.1:0 that echoes text and binary messages.
pub async fn spawn_websocket_echo_upstream() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// An HTTPS service in front of a plain test server (another sallyport, on a public
/// route, passing `Authorization` on): a remote party such as an IdP for the proxy under
/// test to call, kept independent of that proxy. Lives until the test process ends.
pub async fn https_front(pki: &Pki, plain: SocketAddr) -> SocketAddr {
    let front = Proxy::start(
        tempfile::tempdir().unwrap().keep().as_path(),
        &format!(
            "{}{}[headers]\nforward_authorization = true\n[rate_limit]\nenabled = false\n{}",
            server_section(""),
            pki.tls_section(),
            public_route("/", &format!("http://{plain}")),
        ),
    )
    .await;
    let addr = front.addr;
    std::mem::forget(front);
    addr
}
