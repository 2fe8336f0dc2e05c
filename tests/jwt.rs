//! Bearer tokens end to end: a JWKS served by a real local HTTPS server (with rotation
//! and an outage), static PEM keys, HMAC secrets, RFC 6750 answers for every kind of bad
//! token, scopes, both schemes at once, and throttling of forgeries only.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::tokens::*;
use common::*;
use http::{Request, Response};
use hyper::body::Incoming;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

fn claims(sub: &str) -> Value {
    json!({
        "iss": "https://idp.test",
        "aud": "api",
        "sub": sub,
        "exp": now() + 600,
        "iat": now(),
        "email": format!("{sub}@example.com"),
        "groups": ["staff", "ops"],
        "scope": "read write",
        "org": {"tenant": "acme"},
    })
}

/// An IdP that serves a JWKS over HTTPS, can change it, and can go down.
struct Idp {
    jwks: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    port: u16,
}

impl Idp {
    async fn start(pki: &Pki, keys: &[&Signer]) -> Idp {
        let jwks = Arc::new(Mutex::new(String::new()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let (j, f, d) = (jwks.clone(), fetches.clone(), down.clone());
        let plain = spawn_upstream(move |_req: Request<Incoming>| {
            let (j, f, d) = (j.clone(), f.clone(), d.clone());
            async move {
                f.fetch_add(1, Ordering::SeqCst);
                if d.load(Ordering::SeqCst) {
                    return Response::builder().status(503).body(full("down")).unwrap();
                }
                let body = j.lock().unwrap().clone();
                Response::builder()
                    .header("content-type", "application/json")
                    .body(full(body))
                    .unwrap()
            }
        })
        .await;
        let idp = Idp {
            jwks,
            fetches,
            down,
            port: https_front(pki, plain).await.port(),
        };
        idp.publish(keys);
        idp
    }

    fn publish(&self, keys: &[&Signer]) {
        let set = JwkSet {
            keys: keys.iter().map(|s| s.jwk.clone()).collect(),
        };
        *self.jwks.lock().unwrap() = serde_json::to_string(&set).unwrap();
    }

    fn url(&self) -> String {
        format!("https://localhost:{}/jwks.json", self.port)
    }
}

struct Setup {
    pki: Pki,
    proxy: Proxy,
}

async fn setup(pki: Pki, jwt: &str, extra: &str) -> Setup {
    let upstream = spawn_inspecting_upstream().await;
    let config = format!(
        "{}{}[auth]\nrealm = \"api\"\n[auth.jwt]\n{jwt}\n{extra}\n[[route]]\npath = \"/\"\nupstream = \"http://{upstream}\"\n",
        server_section(""),
        pki.tls_section(),
    );
    let proxy = Proxy::start(pki.dir.path(), &config).await;
    Setup { pki, proxy }
}

fn jwks_config(idp: &Idp, pki: &Pki) -> String {
    format!(
        "issuer = \"https://idp.test\"\naudiences = [\"api\"]\nalgorithms = [\"RS256\", \"ES256\", \"EdDSA\"]\njwks_url = {:?}\njwks_ca = {:?}\nleeway = \"5s\"\nclaims = {{ user = \"sub\", email = \"email\", groups = \"groups\" }}",
        idp.url(),
        pki.ca_path().display().to_string(),
    )
}

impl Setup {
    async fn call(&self, authorization: Option<&str>) -> reqwest::Response {
        self.call_path("/", authorization).await
    }

    async fn call_path(&self, path: &str, authorization: Option<&str>) -> reqwest::Response {
        let mut request = self
            .pki
            .client(self.proxy.addr)
            .build()
            .unwrap()
            .get(url(self.proxy.addr, path))
            .header("accept", "application/json");
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.send().await.unwrap()
    }

    async fn bearer(&self, token: &str) -> reqwest::Response {
        self.call(Some(&format!("Bearer {token}"))).await
    }
}

fn challenges(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn tokens_from_a_jwks_reach_the_upstream_with_identity_headers() {
    let pki = Pki::new();
    let (rsa, ec, ed) = (
        Signer::new("rsa-1", Algorithm::RS256),
        Signer::new("ec-1", Algorithm::ES256),
        Signer::new("ed-1", Algorithm::EdDSA),
    );
    let idp = Idp::start(&pki, &[&rsa, &ec, &ed]).await;
    let jwt = jwks_config(&idp, &pki);
    let s = setup(
        pki,
        &jwt,
        "[headers]\nextra = { \"X-Forwarded-Tenant\" = \"org.tenant\" }",
    )
    .await;

    for signer in [&rsa, &ec, &ed] {
        let response = s.bearer(&signer.sign(&claims("alice"))).await;
        assert_eq!(response.status(), 200, "{:?}", signer.alg);
        let seen: Value = response.json().await.unwrap();
        assert_eq!(seen_header(&seen, "x-forwarded-user").unwrap(), "alice");
        assert_eq!(
            seen_header(&seen, "x-forwarded-email").unwrap(),
            "alice@example.com"
        );
        assert_eq!(
            seen_header(&seen, "x-forwarded-groups").unwrap(),
            "staff,ops"
        );
        assert_eq!(seen_header(&seen, "x-forwarded-tenant").unwrap(), "acme");
        assert_eq!(seen_header(&seen, "authorization"), None);
    }
    // Verified tokens are cached: repeating one does not refetch or fail.
    let token = rsa.sign(&claims("bob"));
    for _ in 0..3 {
        assert_eq!(s.bearer(&token).await.status(), 200);
    }
}

#[tokio::test]
async fn every_bad_token_gets_the_rfc_6750_answer_that_names_its_fault() {
    let pki = Pki::new();
    let rsa = Signer::new("rsa-1", Algorithm::RS256);
    let impostor = Signer::new("rsa-1", Algorithm::RS256);
    let stranger = Signer::new("rsa-9", Algorithm::RS256);
    let idp = Idp::start(&pki, &[&rsa]).await;
    let jwt = jwks_config(&idp, &pki);
    let s = setup(pki, &jwt, "[rate_limit]\nenabled = false").await;

    // No token: a bare challenge, no error code.
    let none = s.call(None).await;
    assert_eq!(none.status(), 401);
    assert_eq!(challenges(&none), ["Bearer realm=\"api\""]);
    assert_eq!(none.headers()["cache-control"], "no-store");

    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims("alice");
        f(&mut c);
        c
    };
    let good = rsa.sign(&claims("alice"));
    let parts: Vec<&str> = good.split('.').collect();
    let public_as_secret = jsonwebtoken::encode(
        &Header {
            kid: Some("rsa-1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &claims("alice"),
        &EncodingKey::from_secret(rsa.public_pem.as_bytes()),
    )
    .unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            rsa.sign(&with(&|c| c["exp"] = json!(now() - 3600))),
            "The token has expired.",
        ),
        (
            "not yet valid",
            rsa.sign(&with(&|c| c["nbf"] = json!(now() + 3600))),
            "The token is not valid yet (nbf).",
        ),
        (
            "wrong audience",
            rsa.sign(&with(&|c| c["aud"] = json!("other-api"))),
            "The token's audience (aud) is not accepted.",
        ),
        (
            "wrong issuer",
            rsa.sign(&with(&|c| c["iss"] = json!("https://evil.test"))),
            "The token's issuer (iss) is not accepted.",
        ),
        (
            "no exp",
            rsa.sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            })),
            "The token has no expiry (exp).",
        ),
        (
            "string exp",
            rsa.sign(&with(&|c| c["exp"] = json!("9999999999"))),
            "The token's exp claim is not a number.",
        ),
        (
            "signed by another key under the same kid",
            impostor.sign(&claims("alice")),
            "The token's signature is invalid.",
        ),
        (
            "unknown kid",
            stranger.sign(&claims("alice")),
            "The token was signed with an unknown key.",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                parts[1]
            ),
            "The token's signing algorithm is not accepted.",
        ),
        (
            "HS256 signed with the RSA public key",
            public_as_secret,
            "The token's signing algorithm is not accepted.",
        ),
        (
            "stripped signature",
            format!("{}.{}.", parts[0], parts[1]),
            "The token's signature is invalid.",
        ),
        (
            "payload swapped under a valid signature",
            format!(
                "{}.{}.{}",
                parts[0],
                b64(&with(&|c| c["sub"] = json!("admin"))),
                parts[2]
            ),
            "The token's signature is invalid.",
        ),
        (
            "not a JWT",
            "abc.def".to_string(),
            "The token is not a well-formed JWT.",
        ),
        (
            "no user claim",
            rsa.sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            })),
            "The token does not name a user.",
        ),
    ];
    for (name, token, description) in cases {
        let response = s.bearer(&token).await;
        assert_eq!(response.status(), 401, "{name}");
        assert_eq!(
            challenges(&response),
            [format!(
                "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"{description}\""
            )],
            "{name}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "invalid_token", "{name}");
        assert_eq!(body["error_description"], description, "{name}");
    }

    // Not a token at all: 400 invalid_request.
    for value in [
        "Bearer",
        "Bearer ",
        "Bearer a b",
        "Bearer ä.b.c",
        "Bearer ====",
    ] {
        let response = s.call(Some(value)).await;
        assert_eq!(response.status(), 400, "{value:?}");
        let challenge = challenges(&response).join("|");
        assert!(
            challenge.starts_with("Bearer realm=\"api\", error=\"invalid_request\""),
            "{value:?}: {challenge}"
        );
    }
    // Tokens are never taken from the query string.
    let query = s.call_path(&format!("/?access_token={good}"), None).await;
    assert_eq!(query.status(), 401);
    // The good one still works.
    assert_eq!(s.bearer(&good).await.status(), 200);
}

#[tokio::test]
async fn rotation_at_the_idp_takes_effect_and_an_outage_keeps_known_keys() {
    let pki = Pki::new();
    let old = Signer::new("key-1", Algorithm::RS256);
    let new = Signer::new("key-2", Algorithm::RS256);
    let idp = Idp::start(&pki, &[&old]).await;
    let jwt = jwks_config(&idp, &pki);
    // Unknown keys count as forgeries; this test sends several on purpose.
    let s = setup(pki, &jwt, "[rate_limit]\nenabled = false").await;

    let old_token = old.sign(&claims("alice"));
    assert_eq!(s.bearer(&old_token).await.status(), 200);

    // The IdP rotates: key-2 appears, key-1 goes. A token naming key-2 triggers a refetch.
    idp.publish(&[&new]);
    let before = idp.fetches.load(Ordering::SeqCst);
    assert_eq!(s.bearer(&new.sign(&claims("bob"))).await.status(), 200);
    assert_eq!(idp.fetches.load(Ordering::SeqCst), before + 1);
    // The removed key stops working at once, cached verification or not.
    let refused = s.bearer(&old_token).await;
    assert_eq!(refused.status(), 401);
    assert!(challenges(&refused)[0].contains("unknown key"));
    // Made-up kids do not make us hammer the IdP: at most one refetch a minute.
    for i in 0..5 {
        let stranger = Signer::new(&format!("made-up-{i}"), Algorithm::ES256);
        assert_eq!(s.bearer(&stranger.sign(&claims("x"))).await.status(), 401);
    }
    assert_eq!(idp.fetches.load(Ordering::SeqCst), before + 1);

    // The IdP goes down: the keys we have keep working.
    idp.down.store(true, Ordering::SeqCst);
    assert_eq!(s.bearer(&new.sign(&claims("carol"))).await.status(), 200);
}

#[tokio::test]
async fn an_idp_that_never_answered_gives_503_not_401() {
    let pki = Pki::new();
    let rsa = Signer::new("rsa-1", Algorithm::RS256);
    let idp = Idp::start(&pki, &[&rsa]).await;
    idp.down.store(true, Ordering::SeqCst);
    let jwt = jwks_config(&idp, &pki);
    let s = setup(pki, &jwt, "").await;
    let response = s.bearer(&rsa.sign(&claims("alice"))).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn static_pem_keys_and_hmac_secrets() {
    let pki = Pki::new();
    let ec = Signer::new("", Algorithm::ES256);
    std::fs::write(pki.dir.path().join("ec.pub.pem"), &ec.public_pem).unwrap();
    let s = setup(pki, "algorithms = [\"ES256\"]\nkeys = [\"ec.pub.pem\"]", "").await;
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &json!({"sub": "svc", "exp": now() + 60, "aud": "anything"}),
        &ec.key,
    )
    .unwrap();
    assert_eq!(s.bearer(&token).await.status(), 200);

    let pki = Pki::new();
    let secret = "0123456789abcdef0123456789abcdef-not-a-real-secret";
    std::fs::write(pki.dir.path().join("hs.key"), format!("{secret}\n")).unwrap();
    let s = setup(
        pki,
        "algorithms = [\"HS256\"]\nhs_secret_file = \"hs.key\"",
        "",
    )
    .await;
    let sign = |secret: &str| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "svc", "exp": now() + 60}),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    assert_eq!(s.bearer(&sign(secret)).await.status(), 200);
    assert_eq!(
        s.bearer(&sign("wrong-secret-wrong-secret-wrong!!"))
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn basic_and_bearer_together_challenge_basic_first() {
    let pki = Pki::new();
    let rsa = Signer::new("rsa-1", Algorithm::RS256);
    let idp = Idp::start(&pki, &[&rsa]).await;
    let hash = sallyport::auth::htpasswd::hash_password(
        b"pw",
        sallyport::auth::htpasswd::NewHash::Bcrypt { cost: 4 },
    )
    .unwrap();
    std::fs::write(pki.dir.path().join("users"), format!("alice:{hash}\n")).unwrap();
    let jwt = jwks_config(&idp, &pki);
    let s = setup(pki, &jwt, "[auth.basic]\nhtpasswd = \"users\"").await;
    let none = s.call(None).await;
    assert_eq!(
        challenges(&none),
        [
            "Basic realm=\"api\", charset=\"UTF-8\"",
            "Bearer realm=\"api\""
        ]
    );
    let expired = s
        .bearer(&rsa.sign(
            &json!({"sub": "a", "exp": now() - 100, "iss": "https://idp.test", "aud": "api"}),
        ))
        .await;
    let list = challenges(&expired);
    assert_eq!(list.len(), 2);
    assert!(list[0].starts_with("Basic "));
    assert!(list[1].contains("error=\"invalid_token\""));
    assert_eq!(s.call(Some("Basic YWxpY2U6cHc=")).await.status(), 200);
    assert_eq!(s.bearer(&rsa.sign(&claims("alice"))).await.status(), 200);
}

#[tokio::test]
async fn a_route_can_require_scopes() {
    let pki = Pki::new();
    let rsa = Signer::new("rsa-1", Algorithm::RS256);
    let idp = Idp::start(&pki, &[&rsa]).await;
    let jwt = jwks_config(&idp, &pki);
    let upstream = spawn_inspecting_upstream().await;
    let s = setup(
        pki,
        &jwt,
        &format!(
            "[[route]]\npath = \"/admin\"\nupstream = \"http://{upstream}\"\nrequire_scopes = [\"admin\", \"write\"]"
        ),
    )
    .await;
    let reader = rsa.sign(&claims("alice"));
    let denied = s
        .call_path("/admin/x", Some(&format!("Bearer {reader}")))
        .await;
    assert_eq!(denied.status(), 403);
    assert_eq!(
        challenges(&denied),
        [
            "Bearer realm=\"api\", error=\"insufficient_scope\", error_description=\"The token lacks a required scope.\", scope=\"admin write\""
        ]
    );
    let body: Value = denied.json().await.unwrap();
    assert_eq!(body["error"], "insufficient_scope");
    let mut admin_claims = claims("root");
    admin_claims["scp"] = json!(["admin"]);
    let admin = rsa.sign(&admin_claims);
    assert_eq!(
        s.call_path("/admin/x", Some(&format!("Bearer {admin}")))
            .await
            .status(),
        200
    );
    assert_eq!(
        s.bearer(&reader).await.status(),
        200,
        "other routes need no scope"
    );
}

#[tokio::test]
async fn forgeries_count_towards_throttling_and_expired_tokens_do_not() {
    let pki = Pki::new();
    let rsa = Signer::new("rsa-1", Algorithm::RS256);
    let idp = Idp::start(&pki, &[&rsa]).await;
    let jwt = jwks_config(&idp, &pki);
    let s = setup(pki, &jwt, "[rate_limit]\nmax_failures = 3").await;
    let expired =
        rsa.sign(&json!({"sub": "a", "exp": now() - 100, "iss": "https://idp.test", "aud": "api"}));
    for _ in 0..5 {
        assert_eq!(s.bearer(&expired).await.status(), 401);
    }
    let good = rsa.sign(&claims("alice"));
    assert_eq!(s.bearer(&good).await.status(), 200);
    let forged = format!(
        "{}.{}.",
        good.split('.').next().unwrap(),
        b64(&claims("admin"))
    );
    for _ in 0..3 {
        assert_eq!(s.bearer(&forged).await.status(), 401);
    }
    assert_eq!(s.bearer(&good).await.status(), 429);
}

#[test]
fn jwt_settings_are_validated() {
    let pki = Pki::new();
    std::fs::write(pki.dir.path().join("short.key"), "too-short\n").unwrap();
    std::fs::write(pki.dir.path().join("pub.pem"), "not a key").unwrap();
    for (jwt, complaint) in [
        (
            "algorithms = [\"none\"]\nkeys = [\"pub.pem\"]",
            "auth.jwt.algorithms",
        ),
        (
            "algorithms = [\"RS256\", \"HS256\"]\nhs_secret_file = \"short.key\"",
            "cannot be mixed",
        ),
        (
            "algorithms = [\"HS256\"]\nhs_secret_file = \"short.key\"",
            "at least 32 bytes",
        ),
        ("jwks_url = \"http://idp/jwks\"", "must be an https:// URL"),
        ("keys = [\"pub.pem\"]", "no PEM public key"),
        ("issuer = \"x\"", "needs a key source"),
    ] {
        let path = pki.dir.path().join("sallyport.toml");
        std::fs::write(
            &path,
            format!(
                "{}[auth.jwt]\n{jwt}\n[[route]]\npath = \"/\"\nupstream = \"builtin:echo\"\n",
                server_section("")
            ),
        )
        .unwrap();
        let error = sallyport::config::Config::load(&path)
            .expect_err(jwt)
            .to_string();
        assert!(error.contains(complaint), "{jwt}: {error}");
        assert!(!error.contains("too-short"), "{error}");
    }
}
