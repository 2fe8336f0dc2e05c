//! OIDC browser login end to end, against a small IdP written for these tests (discovery,
//! JWKS and a token endpoint that checks client authentication, PKCE and single use of
//! codes and refresh tokens, served over real HTTPS). The "browser" is a client with a
//! cookie jar that follows redirects by hand, so every hop can be inspected. Sessions are
//! timed by a manual clock: idle and absolute expiry are tested without waiting.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64ct::{Base64, Base64UrlUnpadded, Encoding};
use common::tokens::*;
use common::*;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::JwkSet;
use sallyport::clock::WallClock;
use serde_json::{Value, json};

const CLIENT_ID: &str = "sallyport";
const CLIENT_SECRET: &str = "s3cret:with/odd+chars";
const PUBLIC_URL: &str = "https://app.test";

struct CodeGrant {
    user: String,
    nonce: String,
    challenge: String,
    redirect_uri: String,
}

#[derive(Default)]
struct IdpState {
    codes: HashMap<String, CodeGrant>,
    /// refresh token -> (user, already used)
    refresh_tokens: HashMap<String, (String, bool)>,
    issued: usize,
}

/// What the IdP does; tests flip these.
struct Knobs {
    down: AtomicBool,
    expires_in: AtomicUsize,
    wrong_nonce: AtomicBool,
    other_azp: AtomicBool,
    /// Extra groups, to make ID tokens large.
    groups: AtomicUsize,
    /// client_secret_post only (no Basic) in discovery.
    post_only: AtomicBool,
    refuse_refresh: AtomicBool,
}

#[derive(Clone)]
struct Idp {
    issuer: String,
    signer: Arc<Signer>,
    state: Arc<Mutex<IdpState>>,
    knobs: Arc<Knobs>,
    token_requests: Arc<AtomicUsize>,
    refresh_grants: Arc<AtomicUsize>,
    refresh_reuse: Arc<AtomicUsize>,
    /// Token responses wait for this when set: lets many requests pile up on a refresh.
    hold: Arc<tokio::sync::Semaphore>,
}

impl Idp {
    async fn start(pki: &Pki) -> Idp {
        // The front is bound first so the issuer (which names its port) is known before
        // anything is signed.
        let cell: Arc<Mutex<Option<Idp>>> = Arc::new(Mutex::new(None));
        let handler_cell = cell.clone();
        let plain = spawn_upstream(move |req: Request<Incoming>| {
            let idp = handler_cell.lock().unwrap().clone();
            async move {
                match idp {
                    Some(idp) => idp.handle(req).await,
                    None => Response::builder().status(503).body(full("")).unwrap(),
                }
            }
        })
        .await;
        let front = https_front(pki, plain).await;
        let idp = Idp {
            issuer: format!("https://localhost:{}", front.port()),
            signer: Arc::new(Signer::new("idp-key", Algorithm::RS256)),
            state: Arc::default(),
            knobs: Arc::new(Knobs {
                down: AtomicBool::new(false),
                expires_in: AtomicUsize::new(300),
                wrong_nonce: AtomicBool::new(false),
                other_azp: AtomicBool::new(false),
                groups: AtomicUsize::new(2),
                post_only: AtomicBool::new(false),
                refuse_refresh: AtomicBool::new(false),
            }),
            token_requests: Arc::default(),
            refresh_grants: Arc::default(),
            refresh_reuse: Arc::default(),
            hold: Arc::new(tokio::sync::Semaphore::new(
                tokio::sync::Semaphore::MAX_PERMITS,
            )),
        };
        *cell.lock().unwrap() = Some(idp.clone());
        idp
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<TestBody> {
        if self.knobs.down.load(Ordering::SeqCst) {
            return Response::builder().status(503).body(full("down")).unwrap();
        }
        let json_response = |status: u16, v: Value| {
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(full(v.to_string()))
                .unwrap()
        };
        match req.uri().path() {
            "/.well-known/openid-configuration" => {
                let methods = if self.knobs.post_only.load(Ordering::SeqCst) {
                    json!(["client_secret_post"])
                } else {
                    json!(["client_secret_basic", "client_secret_post"])
                };
                json_response(
                    200,
                    json!({
                        "issuer": self.issuer,
                        "authorization_endpoint": format!("{}/authorize", self.issuer),
                        "token_endpoint": format!("{}/token", self.issuer),
                        "jwks_uri": format!("{}/jwks", self.issuer),
                        "end_session_endpoint": format!("{}/logout", self.issuer),
                        "token_endpoint_auth_methods_supported": methods,
                        "code_challenge_methods_supported": ["S256"],
                    }),
                )
            }
            "/jwks" => json_response(
                200,
                serde_json::to_value(JwkSet {
                    keys: vec![self.signer.jwk.clone()],
                })
                .unwrap(),
            ),
            "/token" => {
                let basic = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let form: HashMap<String, String> =
                    form_urlencoded::parse(&body).into_owned().collect();
                self.token_requests.fetch_add(1, Ordering::SeqCst);
                let _held = self.hold.acquire().await.unwrap();
                let (status, body) = self.token(basic.as_deref(), &form);
                json_response(status, body)
            }
            _ => Response::builder().status(404).body(full("")).unwrap(),
        }
    }

    fn client_authenticated(&self, basic: Option<&str>, form: &HashMap<String, String>) -> bool {
        if let Some(value) = basic {
            // RFC 6749 2.3.1: form-encoded id and secret, then base64.
            let expected = format!(
                "{}:{}",
                form_urlencoded::byte_serialize(CLIENT_ID.as_bytes()).collect::<String>(),
                form_urlencoded::byte_serialize(CLIENT_SECRET.as_bytes()).collect::<String>()
            );
            return !self.knobs.post_only.load(Ordering::SeqCst)
                && value == format!("Basic {}", Base64::encode_string(expected.as_bytes()));
        }
        form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
            && form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET)
    }

    fn token(&self, basic: Option<&str>, form: &HashMap<String, String>) -> (u16, Value) {
        if !self.client_authenticated(basic, form) {
            return (401, json!({"error": "invalid_client"}));
        }
        let invalid_grant = (400, json!({"error": "invalid_grant"}));
        let mut state = self.state.lock().unwrap();
        match form.get("grant_type").map(String::as_str) {
            Some("authorization_code") => {
                let Some(grant) = form.get("code").and_then(|c| state.codes.remove(c)) else {
                    return invalid_grant;
                };
                let verifier = form.get("code_verifier").cloned().unwrap_or_default();
                let challenge = Base64UrlUnpadded::encode_string(&sha256(verifier.as_bytes()));
                if challenge != grant.challenge
                    || form.get("redirect_uri") != Some(&grant.redirect_uri)
                {
                    return invalid_grant;
                }
                let nonce = if self.knobs.wrong_nonce.load(Ordering::SeqCst) {
                    "not-the-nonce".to_string()
                } else {
                    grant.nonce
                };
                self.tokens(&mut state, &grant.user, Some(&nonce))
            }
            Some("refresh_token") => {
                self.refresh_grants.fetch_add(1, Ordering::SeqCst);
                let token = form.get("refresh_token").cloned().unwrap_or_default();
                let user = match state.refresh_tokens.get_mut(&token) {
                    Some((_, true)) => {
                        self.refresh_reuse.fetch_add(1, Ordering::SeqCst);
                        return invalid_grant;
                    }
                    Some((user, used)) => {
                        *used = true;
                        user.clone()
                    }
                    None => return invalid_grant,
                };
                if self.knobs.refuse_refresh.load(Ordering::SeqCst) {
                    return invalid_grant;
                }
                self.tokens(&mut state, &user, None)
            }
            _ => (400, json!({"error": "unsupported_grant_type"})),
        }
    }

    fn tokens(&self, state: &mut IdpState, user: &str, nonce: Option<&str>) -> (u16, Value) {
        state.issued += 1;
        let refresh = format!("rt-{}-{}", state.issued, user);
        state
            .refresh_tokens
            .insert(refresh.clone(), (user.to_string(), false));
        let groups: Vec<String> = (0..self.knobs.groups.load(Ordering::SeqCst))
            .map(|i| format!("group-{i:04}-{}", "g".repeat(40)))
            .collect();
        let mut claims = json!({
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "sub": user,
            "email": format!("{user}@example.com"),
            "preferred_username": user.to_uppercase(),
            "groups": groups,
            "exp": now() + 600,
            "iat": now(),
        });
        if let Some(nonce) = nonce {
            claims["nonce"] = json!(nonce);
        }
        if self.knobs.other_azp.load(Ordering::SeqCst) {
            claims["azp"] = json!("someone-else");
        }
        (
            200,
            json!({
                "access_token": format!("at-{}", state.issued),
                "token_type": "Bearer",
                "expires_in": self.knobs.expires_in.load(Ordering::SeqCst),
                "refresh_token": refresh,
                "id_token": self.signer.sign(&claims),
            }),
        )
    }

    /// The user logs in at the authorization endpoint: checks what sallyport asked for and
    /// returns the callback query the IdP would redirect with.
    fn authorize(&self, location: &str, user: &str) -> String {
        let url = reqwest::Url::parse(location).unwrap();
        assert_eq!(
            format!("{}{}", url.origin().ascii_serialization(), url.path()),
            format!("{}/authorize", self.issuer)
        );
        let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], CLIENT_ID);
        assert_eq!(
            q["redirect_uri"],
            format!("{PUBLIC_URL}/.sallyport/callback")
        );
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["code_challenge"].len(), 43);
        assert!(q["scope"].split(' ').any(|s| s == "openid"));
        assert!(q["state"].len() >= 32 && q["nonce"].len() >= 32);
        assert_ne!(q["state"], q["nonce"]);
        let mut state = self.state.lock().unwrap();
        state.issued += 1;
        let code = format!("code-{}", state.issued);
        state.codes.insert(
            code.clone(),
            CodeGrant {
                user: user.to_string(),
                nonce: q["nonce"].clone(),
                challenge: q["code_challenge"].clone(),
                redirect_uri: q["redirect_uri"].clone(),
            },
        );
        form_urlencoded::Serializer::new(String::new())
            .append_pair("code", &code)
            .append_pair("state", &q["state"])
            .finish()
    }
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

/// A browser: a cookie jar, `Accept: text/html`, redirects followed by hand.
#[derive(Clone)]
struct Browser {
    client: reqwest::Client,
    addr: std::net::SocketAddr,
    cookies: Arc<Mutex<BTreeMap<String, String>>>,
}

struct Answer {
    status: u16,
    location: Option<String>,
    set_cookies: Vec<String>,
    body: String,
}

impl Browser {
    fn new(pki: &Pki, addr: std::net::SocketAddr) -> Browser {
        Browser {
            // HTTP/1.1 with `Host: app.test`: the site as its users reach it (public_url),
            // over a connection to the test listener.
            client: pki
                .client(addr)
                .http1_only()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            addr,
            cookies: Arc::default(),
        }
    }

    fn cookie_header(&self) -> Option<String> {
        let jar = self.cookies.lock().unwrap();
        (!jar.is_empty()).then(|| {
            jar.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    async fn send(&self, path: &str, accept: &str, extra: &[(&str, &str)]) -> Answer {
        let mut request = self
            .client
            .get(url(self.addr, path))
            .header("host", "app.test")
            .header("accept", accept);
        if let Some(cookie) = self.cookie_header() {
            request = request.header("cookie", cookie);
        }
        for (k, v) in extra {
            request = request.header(*k, *v);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        let set_cookies: Vec<String> = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        {
            let mut jar = self.cookies.lock().unwrap();
            for c in &set_cookies {
                let pair = c.split(';').next().unwrap();
                let (name, value) = pair.split_once('=').unwrap();
                if c.contains("Max-Age=0") {
                    jar.remove(name);
                } else {
                    jar.insert(name.to_string(), value.to_string());
                }
            }
        }
        let body = response.text().await.unwrap();
        Answer {
            status,
            location,
            set_cookies,
            body,
        }
    }

    async fn page(&self, path: &str) -> Answer {
        self.send(path, "text/html,application/xhtml+xml,*/*;q=0.8", &[])
            .await
    }

    async fn api(&self, path: &str) -> Answer {
        self.send(path, "application/json", &[]).await
    }

    /// Follows a login from a protected page to the IdP (returns the IdP URL).
    async fn start_login(&self, path: &str) -> String {
        let first = self.page(path).await;
        assert_eq!(first.status, 302, "{}", first.body);
        let login = first.location.unwrap();
        let expected = format!(
            "{PUBLIC_URL}/.sallyport/login?rd={}",
            form_urlencoded::byte_serialize(path.as_bytes()).collect::<String>()
        );
        assert_eq!(login, expected);
        let to_idp = self.page(login.strip_prefix(PUBLIC_URL).unwrap()).await;
        assert_eq!(to_idp.status, 302, "{}", to_idp.body);
        assert!(
            to_idp
                .set_cookies
                .iter()
                .any(|c| c.starts_with("__Host-sallyport_login_")),
            "{:?}",
            to_idp.set_cookies
        );
        to_idp.location.unwrap()
    }

    /// The whole login: returns the callback's answer.
    async fn log_in(&self, idp: &Idp, path: &str, user: &str) -> Answer {
        let at_idp = self.start_login(path).await;
        let callback = idp.authorize(&at_idp, user);
        self.page(&format!("/.sallyport/callback?{callback}")).await
    }

    fn session_cookies(&self) -> Vec<String> {
        self.cookies
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with("__Host-sallyport_session"))
            .cloned()
            .collect()
    }
}

struct Site {
    pki: Pki,
    idp: Idp,
    proxy: Proxy,
    clock: WallClock,
}

impl Site {
    async fn start(extra_oidc: &str) -> Site {
        let pki = Pki::new();
        let idp = Idp::start(&pki).await;
        Site::start_with(pki, idp, extra_oidc).await
    }

    async fn start_with(pki: Pki, idp: Idp, extra_oidc: &str) -> Site {
        Site::start_with_secret(pki, idp, extra_oidc, &"k".repeat(48)).await
    }

    async fn start_with_secret(pki: Pki, idp: Idp, extra_oidc: &str, cookie_secret: &str) -> Site {
        let upstream = spawn_inspecting_upstream().await;
        let dir = pki.dir.path();
        std::fs::write(dir.join("client-secret"), format!("{CLIENT_SECRET}\n")).unwrap();
        std::fs::write(dir.join("cookie-secret"), cookie_secret).unwrap();
        let config = format!(
            "{}{}[auth.oidc]\nissuer = {:?}\nissuer_ca = {:?}\nclient_id = {CLIENT_ID:?}\nclient_secret_file = \"client-secret\"\ncookie_secret_file = \"cookie-secret\"\nsession_idle = \"30m\"\nsession_max = \"2h\"\n{extra_oidc}\n[[route]]\npath = \"/\"\nupstream = \"http://{upstream}\"\n[[route]]\npath = \"/public\"\nupstream = \"http://{upstream}\"\nauth = \"public\"\n",
            server_section(&format!(
                "public_url = {PUBLIC_URL:?}\ntrusted_proxies = [\"127.0.0.1/32\"]"
            )),
            pki.tls_section(),
            idp.issuer,
            pki.ca_path().display().to_string(),
        );
        let clock = WallClock::manual();
        let proxy = Proxy::start_with_clock(dir, &config, clock.clone()).await;
        let site = Site {
            pki,
            idp,
            proxy,
            clock,
        };
        site.wait_for_discovery().await;
        site
    }

    fn browser(&self) -> Browser {
        Browser::new(&self.pki, self.proxy.addr)
    }

    /// Discovery runs in the background at start; a login answers 503 until it is done.
    async fn wait_for_discovery(&self) {
        let browser = self.browser();
        for _ in 0..200 {
            let answer = browser.page("/.sallyport/login?rd=/").await;
            if answer.status == 302 {
                return;
            }
            assert_eq!(answer.status, 503, "{}", answer.body);
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("discovery did not complete");
    }
}

fn seen(answer: &Answer) -> Value {
    serde_json::from_str(&answer.body).unwrap_or_else(|_| panic!("not JSON: {}", answer.body))
}

#[tokio::test]
async fn a_browser_logs_in_at_the_idp_and_lands_back_with_its_identity() {
    let site = Site::start("").await;
    let browser = site.browser();

    // An API client gets a 401 with a Bearer challenge, a browser a redirect.
    let api = browser.api("/app/page?x=1").await;
    assert_eq!(api.status, 401);
    let public = browser.api("/public/x").await;
    assert_eq!(public.status, 200);

    let callback = browser.log_in(&site.idp, "/app/page?x=1", "alice").await;
    assert_eq!(callback.status, 302, "{}", callback.body);
    assert_eq!(callback.location.as_deref(), Some("/app/page?x=1"));
    let session = callback
        .set_cookies
        .iter()
        .find(|c| c.starts_with("__Host-sallyport_session="))
        .expect("a session cookie");
    for attribute in ["Path=/", "HttpOnly", "SameSite=Lax", "Secure"] {
        assert!(session.contains(attribute), "{session}");
    }
    assert!(!session.contains("Domain"), "{session}");
    assert!(
        callback
            .set_cookies
            .iter()
            .any(|c| c.starts_with("__Host-sallyport_login_") && c.contains("Max-Age=0")),
        "the login cookie is cleared: {:?}",
        callback.set_cookies
    );
    assert!(
        !browser
            .cookies
            .lock()
            .unwrap()
            .keys()
            .any(|k| k.contains("login"))
    );

    // The upstream sees who it is, and nothing the client claimed.
    let page = browser
        .send(
            "/app/page?x=1",
            "text/html",
            &[
                ("x-forwarded-user", "mallory"),
                ("x-forwarded-email", "m@evil.test"),
            ],
        )
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let upstream = seen(&page);
    assert_eq!(
        seen_header(&upstream, "x-forwarded-user").as_deref(),
        Some("alice")
    );
    assert_eq!(
        seen_header(&upstream, "x-forwarded-email").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(
        seen_header(&upstream, "x-forwarded-preferred-username").as_deref(),
        Some("ALICE")
    );
    assert!(seen_header(&upstream, "cookie").is_some_and(|c| c.contains("sallyport_session")));

    let info = browser.api("/.sallyport/userinfo").await;
    assert_eq!(info.status, 200);
    let info = seen(&info);
    assert_eq!(info["user"], "alice");
    assert_eq!(info["email"], "alice@example.com");
    assert_eq!(info["scheme"], "session");
    assert_eq!(info["groups"].as_array().unwrap().len(), 2);

    // Without the session: userinfo is a 401, never a redirect.
    let stranger = site.browser();
    assert_eq!(stranger.page("/.sallyport/userinfo").await.status, 401);
}

#[tokio::test]
async fn forward_auth_takes_the_session_cookie_and_sends_browsers_to_log_in() {
    let site = Site::start("allowed_redirect_hosts = [\"wiki.test\"]").await;
    let browser = site.browser();
    let traefik = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "app.test"),
        ("x-forwarded-uri", "/docs/page?a=1"),
        ("x-forwarded-method", "GET"),
    ];
    // Traefik and Caddy pass our answer to the browser: a redirect to the login works.
    let answer = browser
        .send("/.sallyport/auth", "text/html", &traefik)
        .await;
    assert_eq!(answer.status, 302);
    assert_eq!(
        answer.location.as_deref(),
        Some("https://app.test/.sallyport/login?rd=%2Fdocs%2Fpage%3Fa%3D1")
    );
    // The session cookie is app.test's: a login for another host would come back
    // without it and loop, so that host gets the 401.
    let other = [("x-forwarded-host", "wiki.test"), ("x-forwarded-uri", "/w")];
    let answer = browser.send("/.sallyport/auth", "text/html", &other).await;
    assert_eq!(answer.status, 401);
    // nginx auth_request only understands 2xx/401/403: its auth-signin does the redirect.
    let nginx = [("x-original-url", "https://app.test/docs/page?a=1")];
    let answer = browser.send("/.sallyport/auth", "text/html", &nginx).await;
    assert_eq!(answer.status, 401);

    // ingress-nginx's auth-signin: /.sallyport/login?rd=$scheme://$host$escaped_request_uri
    let to_idp = browser
        .page("/.sallyport/login?rd=https%3A%2F%2Fapp.test%2Fdocs%2Fpage%3Fa%3D1")
        .await;
    let callback = site.idp.authorize(&to_idp.location.unwrap(), "alice");
    let done = browser
        .page(&format!("/.sallyport/callback?{callback}"))
        .await;
    assert_eq!(
        done.location.as_deref(),
        Some("https://app.test/docs/page?a=1")
    );

    for headers in [&traefik[..], &nginx[..]] {
        let answer = browser.send("/.sallyport/auth", "text/html", headers).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let client = site.pki.client(site.proxy.addr).build().unwrap();
    let allowed = client
        .get(url(site.proxy.addr, "/.sallyport/auth"))
        .header("x-original-url", "https://app.test/x")
        .header("cookie", browser.cookie_header().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.headers()["x-auth-request-user"], "alice");
    assert_eq!(
        allowed.headers()["x-auth-request-email"],
        "alice@example.com"
    );
}

#[tokio::test]
async fn access_tokens_from_the_same_idp_are_accepted_as_bearer_and_id_tokens_are_not() {
    // Without `audiences`, OIDC accepts no Bearer tokens at all.
    let closed = Site::start("").await;
    let browser = closed.browser();
    assert_eq!(browser.log_in(&closed.idp, "/", "alice").await.status, 302);
    let token = closed.idp.signer.sign(&json!({
        "iss": closed.idp.issuer, "aud": CLIENT_ID, "sub": "robot", "exp": now() + 60,
    }));
    let refused = closed
        .pki
        .client(closed.proxy.addr)
        .build()
        .unwrap()
        .get(url(closed.proxy.addr, "/x"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let site = Site::start("audiences = [\"api\", \"sallyport\"]").await;
    let claims = json!({
        "iss": site.idp.issuer, "aud": "api", "sub": "robot",
        "exp": now() + 60, "iat": now(),
    });
    let token = site.idp.signer.sign(&claims);
    let client = site.pki.client(site.proxy.addr).build().unwrap();
    let call = |token: String| {
        let client = client.clone();
        let addr = site.proxy.addr;
        async move {
            client
                .get(url(addr, "/x"))
                .header("accept", "text/html")
                .header("authorization", format!("Bearer {token}"))
                .send()
                .await
                .unwrap()
        }
    };
    let ok = call(token).await;
    assert_eq!(ok.status(), 200);
    let seen: Value = ok.json().await.unwrap();
    assert_eq!(
        seen_header(&seen, "x-forwarded-user").as_deref(),
        Some("robot")
    );

    // Another audience: refused with the RFC 6750 answer, not sent to a login page.
    let mut other = claims.clone();
    other["aud"] = json!("other-api");
    let refused = call(site.idp.signer.sign(&other)).await;
    assert_eq!(refused.status(), 401);
    let challenge = refused.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("invalid_token"), "{challenge}");

    // A login's ID token (it carries the nonce) is refused even for a listed audience:
    // logout puts it in a URL, where browser history keeps it.
    let mut id_token = claims.clone();
    id_token["aud"] = json!(CLIENT_ID);
    id_token["nonce"] = json!("n-0123456789");
    let refused = call(site.idp.signer.sign(&id_token)).await;
    assert_eq!(refused.status(), 401);
    let challenge = refused.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("ID token"), "{challenge}");
}

#[tokio::test]
async fn callback_abuse_is_a_400_and_never_a_session() {
    let site = Site::start("").await;
    let browser = site.browser();
    let no_session = |answer: &Answer| {
        !answer
            .set_cookies
            .iter()
            .any(|c| c.starts_with("__Host-sallyport_session") && !c.contains("Max-Age=0"))
    };

    for query in [
        "",
        "?code=abc",
        "?state=&code=abc",
        "?state=made-up&code=abc",
    ] {
        let answer = browser.page(&format!("/.sallyport/callback{query}")).await;
        assert_eq!(answer.status, 400, "{query}: {}", answer.body);
        assert!(no_session(&answer));
    }

    // A real state, but in a browser that did not start the login.
    let at_idp = browser.start_login("/a").await;
    let callback = site.idp.authorize(&at_idp, "alice");
    let other_browser = site.browser();
    let unbound = other_browser
        .page(&format!("/.sallyport/callback?{callback}"))
        .await;
    assert_eq!(unbound.status, 400);
    assert!(no_session(&unbound));

    // A tampered login cookie.
    let login_cookie = browser
        .cookies
        .lock()
        .unwrap()
        .iter()
        .find(|(k, _)| k.starts_with("__Host-sallyport_login_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    let tampered = site.browser();
    let mut value = login_cookie.1.clone().into_bytes();
    value[20] = if value[20] == b'A' { b'B' } else { b'A' };
    tampered
        .cookies
        .lock()
        .unwrap()
        .insert(login_cookie.0.clone(), String::from_utf8(value).unwrap());
    let answer = tampered
        .page(&format!("/.sallyport/callback?{callback}"))
        .await;
    assert_eq!(answer.status, 400);

    // The state must be the one the cookie was made for: same cookie, another state.
    let mut params: HashMap<String, String> = form_urlencoded::parse(callback.as_bytes())
        .into_owned()
        .collect();
    let real_state = params["state"].clone();
    params.insert("state".into(), format!("{real_state}x"));
    let swapped = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter())
        .finish();
    assert_eq!(
        browser
            .page(&format!("/.sallyport/callback?{swapped}"))
            .await
            .status,
        400
    );

    // The real one completes once; a replay (same cookie kept by an attacker) does not.
    let kept = browser.cookies.lock().unwrap().clone();
    let done = browser
        .page(&format!("/.sallyport/callback?{callback}"))
        .await;
    assert_eq!(done.status, 302, "{}", done.body);
    let replayer = site.browser();
    *replayer.cookies.lock().unwrap() = kept;
    let replay = replayer
        .page(&format!("/.sallyport/callback?{callback}"))
        .await;
    assert_eq!(replay.status, 400);
    assert!(no_session(&replay));

    // The IdP reports an error (the user declined).
    let browser = site.browser();
    let at_idp = browser.start_login("/b").await;
    let state = reqwest::Url::parse(&at_idp)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let declined = browser
        .page(&format!(
            "/.sallyport/callback?error=access_denied&state={state}"
        ))
        .await;
    assert_eq!(declined.status, 400);
    assert!(no_session(&declined));

    // A login left open past its lifetime.
    let at_idp = browser.start_login("/c").await;
    let callback = site.idp.authorize(&at_idp, "alice");
    site.clock.advance(11 * 60);
    let late = browser
        .page(&format!("/.sallyport/callback?{callback}"))
        .await;
    assert_eq!(late.status, 400);
    assert!(no_session(&late));
}

#[tokio::test]
async fn id_tokens_must_carry_our_nonce_and_be_for_us() {
    let site = Site::start("").await;
    let browser = site.browser();
    site.idp.knobs.wrong_nonce.store(true, Ordering::SeqCst);
    let answer = browser.log_in(&site.idp, "/", "alice").await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(browser.session_cookies().is_empty());

    site.idp.knobs.wrong_nonce.store(false, Ordering::SeqCst);
    site.idp.knobs.other_azp.store(true, Ordering::SeqCst);
    let answer = browser.log_in(&site.idp, "/", "alice").await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(browser.session_cookies().is_empty());

    site.idp.knobs.other_azp.store(false, Ordering::SeqCst);
    let answer = browser.log_in(&site.idp, "/", "alice").await;
    assert_eq!(answer.status, 302, "{}", answer.body);
}

#[tokio::test]
async fn client_secret_post_is_used_when_it_is_all_the_idp_offers() {
    let pki = Pki::new();
    let idp = Idp::start(&pki).await;
    idp.knobs.post_only.store(true, Ordering::SeqCst);
    let site = Site::start_with(pki, idp, "").await;
    let browser = site.browser();
    let answer = browser.log_in(&site.idp, "/", "bob").await;
    assert_eq!(answer.status, 302, "{}", answer.body);
    assert_eq!(browser.api("/").await.status, 200);
}

#[tokio::test]
async fn several_tabs_can_log_in_at_once() {
    let site = Site::start("").await;
    let browser = site.browser();
    let first = browser.start_login("/one?tab=1").await;
    let second = browser.start_login("/two?tab=2").await;
    let third = browser.start_login("/three").await;
    // Completed in another order than started.
    for (at_idp, lands_on) in [
        (second, "/two?tab=2"),
        (first, "/one?tab=1"),
        (third, "/three"),
    ] {
        let callback = site.idp.authorize(&at_idp, "alice");
        let answer = browser
            .page(&format!("/.sallyport/callback?{callback}"))
            .await;
        assert_eq!(answer.status, 302, "{}", answer.body);
        assert_eq!(answer.location.as_deref(), Some(lands_on));
    }
    assert_eq!(browser.api("/").await.status, 200);
}

#[tokio::test]
async fn hostile_return_targets_land_on_the_root() {
    let site = Site::start("allowed_redirect_hosts = [\"docs.test\"]").await;
    let browser = site.browser();
    for (rd, lands_on) in [
        ("//evil.example/", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("/%2F%2Fevil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("https://app.test.evil.example/", "/"),
        ("https://docs.test/guide?x=1", "https://docs.test/guide?x=1"),
        ("/fine?x=1", "/fine?x=1"),
    ] {
        let rd_query = form_urlencoded::byte_serialize(rd.as_bytes()).collect::<String>();
        let to_idp = browser
            .page(&format!("/.sallyport/login?rd={rd_query}"))
            .await;
        assert_eq!(to_idp.status, 302);
        let callback = site.idp.authorize(&to_idp.location.unwrap(), "alice");
        let answer = browser
            .page(&format!("/.sallyport/callback?{callback}"))
            .await;
        assert_eq!(answer.location.as_deref(), Some(lands_on), "{rd}");
    }
}

/// Redirects are built from `public_url` only: a Host (or a forwarded host) naming
/// another site never becomes the origin of a Location or of the IdP's `redirect_uri`.
#[tokio::test]
async fn the_host_header_never_shapes_a_redirect() {
    let site = Site::start("").await;
    let browser = site.browser();
    let under_host = |path: &str, host: &'static str| {
        browser
            .client
            .get(url(browser.addr, path))
            .header("host", host)
            .header("accept", "text/html")
            .send()
    };
    let location = |response: &reqwest::Response| {
        response
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string())
    };
    for host in [
        "evil.example",
        "app.test.evil.example",
        "app.test@evil.example",
    ] {
        // Not our site: no login page is offered for it at all.
        let page = under_host("/x", host).await.unwrap();
        assert!(matches!(page.status().as_u16(), 400 | 401), "{host}");
        assert_eq!(location(&page), None, "{host}");
    }
    for host in ["evil.example", "app.test.evil.example"] {
        // Our own login endpoint, reached under another name: the IdP still gets our
        // callback (`authorize` checks redirect_uri), and we come back to the root.
        let to_idp = under_host("/.sallyport/login?rd=/x", host).await.unwrap();
        assert_eq!(to_idp.status(), 302, "{host}");
        let to_idp = location(&to_idp).unwrap();
        assert!(to_idp.starts_with(&site.idp.issuer), "{host}: {to_idp}");
        site.idp.authorize(&to_idp, "alice");
    }
    // X-Forwarded-Host, even from a trusted proxy (127.0.0.1 is one here), is not where
    // the login page is: it stays at public_url.
    let first = browser
        .send("/x", "text/html", &[("x-forwarded-host", "evil.example")])
        .await;
    assert_eq!(first.status, 302);
    assert_eq!(
        first.location.unwrap(),
        format!("{PUBLIC_URL}/.sallyport/login?rd=%2Fx")
    );
}

#[tokio::test]
async fn sessions_end_after_the_idle_time_and_at_the_hard_limit() {
    let site = Site::start("").await;
    let browser = site.browser();
    assert_eq!(browser.log_in(&site.idp, "/", "alice").await.status, 302);

    // Used every 25 minutes it stays alive past the 30-minute idle time...
    for _ in 0..4 {
        site.clock.advance(25 * 60);
        let answer = browser.api("/").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    // ...and then left alone for 31 minutes it is gone: a browser is sent to log in, an
    // API client gets a 401, and the dead cookie is cleared.
    site.clock.advance(31 * 60);
    let page = browser.page("/x").await;
    assert_eq!(page.status, 302);
    assert!(page.location.unwrap().contains("/.sallyport/login?rd=%2Fx"));
    assert!(browser.session_cookies().is_empty());

    // The hard limit (2h) holds however active the user is.
    assert_eq!(browser.log_in(&site.idp, "/", "alice").await.status, 302);
    for _ in 0..4 {
        site.clock.advance(29 * 60);
        assert_eq!(browser.api("/").await.status, 200);
    }
    site.clock.advance(5 * 60);
    let stale = browser.clone();
    let answer = stale.api("/").await;
    assert_eq!(answer.status, 401);
    assert!(answer.set_cookies.iter().any(|c| c.contains("Max-Age=0")));
}

#[tokio::test]
async fn tampered_or_foreign_session_cookies_are_no_session_and_never_a_500() {
    // With the default budget (5 per client): sealed cookies cannot be guessed, so forged
    // ones are not counted as guesses and never lock the client out.
    let site = Site::start("").await;
    let browser = site.browser();
    assert_eq!(browser.log_in(&site.idp, "/", "alice").await.status, 302);
    let (name, value) = browser
        .cookies
        .lock()
        .unwrap()
        .iter()
        .find(|(k, _)| k.starts_with("__Host-sallyport_session"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();

    // Sealed with another secret: a second site whose cookie secret differs.
    let foreign = {
        let pki = Pki::new();
        let idp = Idp::start(&pki).await;
        let other = Site::start_with_secret(pki, idp, "", &"z".repeat(48)).await;
        let b = other.browser();
        b.log_in(&other.idp, "/", "alice").await;
        b.cookies.lock().unwrap()["__Host-sallyport_session"].clone()
    };
    let mut flipped = value.clone().into_bytes();
    let middle = flipped.len() / 2;
    flipped[middle] = if flipped[middle] == b'a' { b'b' } else { b'a' };
    let variants = [
        String::from_utf8(flipped).unwrap(),
        value[..value.len() - 3].to_string(),
        format!("{value}AAAA"),
        "garbage".to_string(),
        String::new(),
        "%00%ff".to_string(),
        "A".repeat(3000),
        foreign,
    ];
    for variant in variants {
        let forger = site.browser();
        forger
            .cookies
            .lock()
            .unwrap()
            .insert(name.clone(), variant.clone());
        let api = forger.api("/").await;
        assert_eq!(api.status, 401, "{variant:?}: {}", api.body);
        forger
            .cookies
            .lock()
            .unwrap()
            .insert(name.clone(), variant.clone());
        let page = forger.page("/").await;
        assert_eq!(page.status, 302, "{variant:?}");
    }
    // The real cookie still works.
    assert_eq!(browser.api("/").await.status, 200);
}

#[tokio::test]
async fn large_sessions_are_split_into_chunks_below_4kb() {
    let pki = Pki::new();
    let idp = Idp::start(&pki).await;
    idp.knobs.groups.store(60, Ordering::SeqCst);
    let site = Site::start_with(pki, idp, "").await;
    let browser = site.browser();
    let answer = browser.log_in(&site.idp, "/", "alice").await;
    assert_eq!(answer.status, 302, "{}", answer.body);
    let chunks = browser.session_cookies();
    assert!(chunks.len() >= 2, "{chunks:?}");
    assert!(
        chunks
            .iter()
            .all(|c| c.starts_with("__Host-sallyport_session_"))
    );
    for c in &answer.set_cookies {
        assert!(c.len() < 4000, "a cookie of {} bytes", c.len());
    }
    let page = browser.api("/").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        seen(&browser.api("/.sallyport/userinfo").await)["groups"]
            .as_array()
            .unwrap()
            .len(),
        60
    );

    // A session that would not fit in the request-head budget (max_header_bytes less
    // 4 KB) is refused at login instead of locking the browser out with 431s.
    site.idp.knobs.groups.store(200, Ordering::SeqCst);
    let fresh = site.browser();
    let answer = fresh.log_in(&site.idp, "/", "alice").await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(fresh.session_cookies().is_empty());
}

#[tokio::test]
async fn an_expired_access_token_is_refreshed_once_for_many_concurrent_requests() {
    let site = Site::start("").await;
    site.idp.knobs.expires_in.store(60, Ordering::SeqCst);
    let browser = site.browser();
    assert_eq!(browser.log_in(&site.idp, "/", "alice").await.status, 302);
    assert_eq!(site.idp.refresh_grants.load(Ordering::SeqCst), 0);

    site.clock.advance(61);
    // Hold token responses so the concurrent requests pile up on the one refresh.
    let permits = site.idp.hold.available_permits();
    let held = site.idp.hold.acquire_many(permits as u32).await.unwrap();
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let b = browser.clone();
            tokio::spawn(async move { b.api("/").await })
        })
        .collect();
    for _ in 0..400 {
        if site.idp.token_requests.load(Ordering::SeqCst) >= 2 {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    drop(held);
    for request in requests {
        let answer = request.await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(
            answer
                .set_cookies
                .iter()
                .any(|c| c.starts_with("__Host-sallyport_session=")),
            "each gets the refreshed session"
        );
    }
    assert_eq!(site.idp.refresh_grants.load(Ordering::SeqCst), 1);
    assert_eq!(site.idp.refresh_reuse.load(Ordering::SeqCst), 0);

    // The new session works. An IdP outage when the next refresh is due is a 503, not a
    // logout, and the refresh is tried again once the IdP is back.
    assert_eq!(browser.api("/").await.status, 200);
    site.clock.advance(61);
    site.idp.knobs.down.store(true, Ordering::SeqCst);
    assert_eq!(browser.api("/").await.status, 503);
    assert!(!browser.session_cookies().is_empty());
    site.idp.knobs.down.store(false, Ordering::SeqCst);
    assert_eq!(browser.api("/").await.status, 200);
    assert_eq!(site.idp.refresh_grants.load(Ordering::SeqCst), 2);

    // When the next refresh is refused, the user logs in again.
    site.idp.knobs.refuse_refresh.store(true, Ordering::SeqCst);
    site.clock.advance(61);
    let page = browser.page("/y").await;
    assert_eq!(page.status, 302);
    assert!(page.location.unwrap().contains("/.sallyport/login"));
    assert_eq!(site.idp.refresh_grants.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn logout_clears_the_session_and_ends_the_idp_session() {
    let site = Site::start("").await;
    let browser = site.browser();
    assert_eq!(browser.log_in(&site.idp, "/", "alice").await.status, 302);
    let answer = browser.page("/.sallyport/logout?rd=/bye").await;
    assert_eq!(answer.status, 302);
    let location = reqwest::Url::parse(&answer.location.unwrap()).unwrap();
    assert_eq!(
        format!(
            "{}{}",
            location.origin().ascii_serialization(),
            location.path()
        ),
        format!("{}/logout", site.idp.issuer)
    );
    let q: HashMap<String, String> = location.query_pairs().into_owned().collect();
    assert_eq!(q["post_logout_redirect_uri"], format!("{PUBLIC_URL}/bye"));
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["id_token_hint"].split('.').count(), 3);
    assert!(browser.session_cookies().is_empty());
    assert_eq!(browser.api("/").await.status, 401);

    // A hostile target is not passed on to the IdP.
    let answer = browser
        .page("/.sallyport/logout?rd=https%3A%2F%2Fevil.example%2F")
        .await;
    let location = reqwest::Url::parse(&answer.location.unwrap()).unwrap();
    let q: HashMap<String, String> = location.query_pairs().into_owned().collect();
    assert_eq!(q["post_logout_redirect_uri"], format!("{PUBLIC_URL}/"));
}

#[tokio::test]
async fn logins_wait_for_discovery_while_the_idp_is_down() {
    let pki = Pki::new();
    let idp = Idp::start(&pki).await;
    idp.knobs.down.store(true, Ordering::SeqCst);
    let upstream = spawn_inspecting_upstream().await;
    let dir = pki.dir.path();
    std::fs::write(dir.join("cookie-secret"), "k".repeat(48)).unwrap();
    let config = format!(
        "{}{}[admin]\nlisten = \"127.0.0.1:0\"\n[auth.oidc]\nissuer = {:?}\nissuer_ca = {:?}\nclient_id = \"public-client\"\ncookie_secret_file = \"cookie-secret\"\n[[route]]\npath = \"/\"\nupstream = \"http://{upstream}\"\n",
        server_section(&format!("public_url = {PUBLIC_URL:?}")),
        pki.tls_section(),
        idp.issuer,
        pki.ca_path().display().to_string(),
    );
    let proxy = Proxy::start(dir, &config).await;
    let readyz = format!("http://{}/readyz", proxy.admin.unwrap());
    let admin_client = reqwest::Client::builder().no_proxy().build().unwrap();
    let readiness = || async {
        let response = admin_client.get(&readyz).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    let (status, report) = readiness().await;
    assert_eq!(status, 503, "{report}");
    assert!(
        report.contains("fail OIDC provider not discovered yet"),
        "{report}"
    );
    assert!(report.contains("ok upstream / -> http://"), "{report}");
    let browser = Browser::new(&pki, proxy.addr);
    let answer = browser.page("/.sallyport/login?rd=/").await;
    assert_eq!(answer.status, 503);
    assert!(answer.set_cookies.is_empty());
    // A browser on a protected page is still sent to the login (which explains itself),
    // and an API client still gets its 401.
    assert_eq!(browser.page("/").await.status, 302);
    assert_eq!(browser.api("/").await.status, 401);

    idp.knobs.down.store(false, Ordering::SeqCst);
    // Discovery retries with backoff starting at one second; wait for that first retry.
    let mut recovered = false;
    for _ in 0..100 {
        if browser.page("/.sallyport/login?rd=/").await.status == 302 {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(recovered, "discovery recovered after the IdP came back");
    let (status, report) = readiness().await;
    assert_eq!(status, 200, "{report}");
    assert!(report.contains("ok OIDC provider discovered"), "{report}");
}

#[test]
fn oidc_settings_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("short"), "too short").unwrap();
    std::fs::write(dir.path().join("secret"), "s".repeat(40)).unwrap();
    let base = |server: &str, oidc: &str| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n{server}\n[auth.oidc]\n{oidc}\n[[route]]\npath = \"/\"\nupstream = \"builtin:echo\"\n"
        )
    };
    let ok_oidc =
        "issuer = \"https://idp.test\"\nclient_id = \"c\"\ncookie_secret_file = \"secret\"";
    let cases = [
        (base("", ok_oidc), "server.public_url"),
        (
            base("public_url = \"http://app.example.com\"", ok_oidc),
            "server.public_url",
        ),
        (
            base(
                "public_url = \"https://app.test\"",
                "issuer = \"http://idp.test\"\nclient_id = \"c\"\ncookie_secret_file = \"secret\"",
            ),
            "auth.oidc.issuer",
        ),
        (
            base(
                "public_url = \"https://app.test\"",
                "issuer = \"https://idp.test\"\nclient_id = \"c\"\ncookie_secret_file = \"short\"",
            ),
            "auth.oidc.cookie_secret_file",
        ),
        (
            base(
                "public_url = \"https://app.test\"",
                "issuer = \"https://idp.test\"\ncookie_secret_file = \"secret\"",
            ),
            "auth.oidc.client_id",
        ),
        (
            base(
                "public_url = \"https://app.test\"",
                &format!("{ok_oidc}\nscopes = [\"email\"]"),
            ),
            "auth.oidc.scopes",
        ),
        (
            base(
                "public_url = \"https://app.test\"",
                &format!("{ok_oidc}\nsession_idle = \"2h\"\nsession_max = \"1h\""),
            ),
            "auth.oidc.session_idle",
        ),
        (
            base(
                "public_url = \"https://app.test\"",
                &format!("{ok_oidc}\nalgorithms = [\"HS256\"]"),
            ),
            "auth.oidc.algorithms",
        ),
        (
            base(
                "public_url = \"https://app.test\"",
                &format!("{ok_oidc}\nunknown = 1"),
            ),
            "unknown",
        ),
    ];
    for (config, key) in cases {
        let path = dir.path().join("sallyport.toml");
        std::fs::write(&path, &config).unwrap();
        let error = sallyport::config::Config::load(&path)
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{config}"))
            .to_string();
        assert!(error.contains(key), "{key}: {error}");
        assert!(!error.contains("too short"), "a secret leaked: {error}");
    }
    let path = dir.path().join("sallyport.toml");
    std::fs::write(&path, base("public_url = \"https://app.test\"", ok_oidc)).unwrap();
    let config = sallyport::config::Config::load(&path).unwrap();
    let debug = format!("{config:?}");
    assert!(
        !debug.contains(&"s".repeat(40)),
        "the cookie secret is redacted"
    );
}

/// Run by `tests/interop/30-throttle-redis.sh` against its real redis-server
/// (`SALLYPORT_TEST_REDIS=redis://...`); plain `cargo test` has no Redis to offer.
#[tokio::test]
#[ignore = "needs redis-server: tests/interop/30-throttle-redis.sh runs it"]
async fn redis_sessions_keep_cookies_small_and_logout_revokes_them() {
    let redis = std::env::var("SALLYPORT_TEST_REDIS").expect("SALLYPORT_TEST_REDIS");
    let pki = Pki::new();
    let idp = Idp::start(&pki).await;
    idp.knobs.groups.store(120, Ordering::SeqCst);
    let site = Site::start_with(pki, idp, &format!("session_store = {redis:?}")).await;
    let browser = site.browser();
    assert_eq!(browser.log_in(&site.idp, "/", "alice").await.status, 302);
    let cookies = browser.session_cookies();
    assert_eq!(cookies, ["__Host-sallyport_session"], "one small cookie");
    let value = browser.cookies.lock().unwrap()["__Host-sallyport_session"].clone();
    assert!(
        value.len() < 200,
        "a reference, not the session: {} bytes",
        value.len()
    );
    let page = browser.api("/").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        seen_header(&seen(&page), "x-forwarded-user").as_deref(),
        Some("alice")
    );
    assert_eq!(
        seen(&browser.api("/.sallyport/userinfo").await)["groups"]
            .as_array()
            .unwrap()
            .len(),
        120
    );

    // Idle expiry is enforced as with cookies.
    site.clock.advance(25 * 60);
    assert_eq!(browser.api("/").await.status, 200);

    // A copy of the cookie taken before logout is worthless afterwards.
    let copy = site.browser();
    *copy.cookies.lock().unwrap() = browser.cookies.lock().unwrap().clone();
    assert_eq!(copy.api("/").await.status, 200);
    assert_eq!(browser.page("/.sallyport/logout").await.status, 302);
    assert_eq!(copy.api("/").await.status, 401);

    // A second login is a new session with a new reference.
    assert_eq!(browser.log_in(&site.idp, "/", "alice").await.status, 302);
    let again = browser.cookies.lock().unwrap()["__Host-sallyport_session"].clone();
    assert_ne!(again, value);
    site.clock.advance(31 * 60);
    assert_eq!(browser.api("/").await.status, 401);
}
