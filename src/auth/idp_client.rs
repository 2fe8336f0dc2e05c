//! The HTTPS client we talk to identity providers with: JWKS, OIDC discovery and the
//! token endpoint. HTTPS only, bounded in time and in how much it reads, and it never
//! follows redirects (a redirected token request would carry our client secret along).

use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;

const TIMEOUT: Duration = Duration::from_secs(10);
/// Discovery documents, key sets and token responses are a few KB; a megabyte is not one.
const MAX_BODY_BYTES: usize = 1 << 20;

#[derive(Clone)]
pub struct IdpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// A response with its status, for callers that read error bodies (OAuth errors are JSON
/// on a 400).
pub struct IdpResponse {
    pub status: StatusCode,
    pub body: Bytes,
}

impl IdpClient {
    /// `setting` names the config key of `extra_roots`, for error messages.
    pub fn new(extra_roots: &[CertificateDer<'static>], setting: &str) -> Result<Self, String> {
        let tls = crate::proxy::tls_client_config(extra_roots, setting)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(TIMEOUT));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(IdpClient { client })
    }

    /// GET a JSON document; anything but a 200 is an error.
    pub async fn get_json(&self, url: &Uri) -> Result<Bytes, String> {
        let request = Request::get(url.clone())
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, user_agent())
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let response = self.send(request).await?;
        if response.status != StatusCode::OK {
            return Err(format!("HTTP {}", response.status.as_u16()));
        }
        Ok(response.body)
    }

    /// POST an `application/x-www-form-urlencoded` body, as the token endpoint wants it.
    pub async fn post_form(
        &self,
        url: &Uri,
        form: String,
        authorization: Option<HeaderValue>,
    ) -> Result<IdpResponse, String> {
        let mut request = Request::post(url.clone())
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, user_agent())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| e.to_string())?;
        if let Some(value) = authorization {
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        self.send(request).await
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Result<IdpResponse, String> {
        tokio::time::timeout(TIMEOUT, async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| format!("reading the body failed: {e}"))?;
            Ok(IdpResponse { status, body })
        })
        .await
        .map_err(|_| "timed out".to_string())?
    }
}

fn user_agent() -> &'static str {
    concat!("sallyport/", env!("CARGO_PKG_VERSION"))
}
