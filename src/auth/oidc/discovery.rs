//! OpenID Connect Discovery: where the IdP's endpoints and keys are. Fetched at start and
//! retried with backoff while the IdP is down (until then logins answer 503 and readiness
//! says not ready), then refreshed hourly so a moved endpoint is picked up.

use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::Uri;
use serde::Deserialize;

use super::super::idp_client::IdpClient;
use super::super::jwks::KeyRing;

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);
const REFRESH: Duration = Duration::from_secs(3600);

/// How we authenticate to the token endpoint (RFC 6749 2.3.1, OIDC Core 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Basic,
    Post,
    /// A public client: PKCE only.
    None,
}

#[derive(Debug)]
pub struct Metadata {
    pub authorization_endpoint: Uri,
    pub token_endpoint: Uri,
    pub end_session_endpoint: Option<Uri>,
    pub client_auth: ClientAuth,
}

#[derive(Deserialize)]
struct Document {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    end_session_endpoint: Option<String>,
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

pub struct Discovery {
    url: Uri,
    issuer: String,
    has_secret: bool,
    client: IdpClient,
    keys: Arc<KeyRing>,
    metadata: ArcSwapOption<Metadata>,
}

impl Discovery {
    pub fn new(
        url: Uri,
        issuer: String,
        has_secret: bool,
        client: IdpClient,
        keys: Arc<KeyRing>,
    ) -> Arc<Discovery> {
        let discovery = Arc::new(Discovery {
            url,
            issuer,
            has_secret,
            client,
            keys,
            metadata: ArcSwapOption::empty(),
        });
        // `sallyport check` builds this outside a runtime; only a running proxy fetches.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(discover_forever(Arc::downgrade(&discovery)));
        }
        discovery
    }

    /// The IdP's endpoints, once discovery has succeeded.
    pub fn metadata(&self) -> Option<Arc<Metadata>> {
        self.metadata.load_full()
    }

    async fn discover(&self) -> Result<(), String> {
        let body = self.client.get_json(&self.url).await?;
        let document: Document =
            serde_json::from_slice(&body).map_err(|e| format!("not a discovery document: {e}"))?;
        // OIDC Discovery 4.3: the issuer must be exactly the one we asked about, or a
        // compromised or confused document could make us accept another IdP's tokens.
        if document.issuer != self.issuer {
            return Err(format!(
                "the document names issuer {:?}, not the configured {:?}",
                document.issuer, self.issuer
            ));
        }
        let https = |name: &str, value: &str| -> Result<Uri, String> {
            match value.parse::<Uri>() {
                Ok(uri) if uri.scheme_str() == Some("https") && uri.authority().is_some() => {
                    Ok(uri)
                }
                _ => Err(format!("{name} is not an https:// URL")),
            }
        };
        let methods = document
            .token_endpoint_auth_methods_supported
            .unwrap_or_else(|| vec!["client_secret_basic".to_string()]);
        let client_auth = if !self.has_secret {
            ClientAuth::None
        } else if methods.iter().any(|m| m == "client_secret_basic") {
            ClientAuth::Basic
        } else if methods.iter().any(|m| m == "client_secret_post") {
            ClientAuth::Post
        } else {
            return Err(format!(
                "the token endpoint supports none of client_secret_basic, client_secret_post (it offers {})",
                methods.join(", ")
            ));
        };
        let metadata = Metadata {
            authorization_endpoint: https(
                "authorization_endpoint",
                &document.authorization_endpoint,
            )?,
            token_endpoint: https("token_endpoint", &document.token_endpoint)?,
            end_session_endpoint: document
                .end_session_endpoint
                .as_deref()
                .map(|e| https("end_session_endpoint", e))
                .transpose()?,
            client_auth,
        };
        let jwks_uri = https("jwks_uri", &document.jwks_uri)?;
        self.keys.set_jwks_url(jwks_uri);
        let first = self.metadata.load().is_none();
        self.metadata.store(Some(Arc::new(metadata)));
        if first {
            tracing::info!(target: "sallyport::oidc", issuer = %self.issuer, "OIDC discovery succeeded");
        }
        Ok(())
    }
}

async fn discover_forever(discovery: Weak<Discovery>) {
    let mut retry = FIRST_RETRY;
    loop {
        let wait = {
            let Some(discovery) = discovery.upgrade() else {
                return;
            };
            match discovery.discover().await {
                Ok(()) => {
                    retry = FIRST_RETRY;
                    REFRESH
                }
                Err(why) => {
                    tracing::warn!(
                        target: "sallyport::oidc",
                        url = %discovery.url,
                        error = %why,
                        retry_in_s = retry.as_secs(),
                        "OIDC discovery failed",
                    );
                    let wait = retry;
                    retry = (retry * 2).min(MAX_RETRY);
                    wait
                }
            }
        };
        tokio::time::sleep(wait).await;
    }
}
