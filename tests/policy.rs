//! Routes and rules end to end: a table of (method, path, identity) -> status through the
//! running proxy, CORS preflights and readable errors, and forward-auth answered for a
//! trusted proxy in front of us.

mod common;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sallyport::auth::htpasswd::{NewHash, hash_password};
use serde_json::{Value, json};

const SECRET: &str = "policy-test-secret-policy-test-secret-0123";

struct Setup {
    pki: Pki,
    proxy: Proxy,
}

async fn setup() -> Setup {
    let pki = Pki::new();
    let hash = |pw: &str| hash_password(pw.as_bytes(), NewHash::Bcrypt { cost: 4 }).unwrap();
    let dir = pki.dir.path();
    std::fs::write(
        dir.join("users"),
        format!("alice:{}\nbob:{}\n", hash("alice-pw"), hash("bob-pw")),
    )
    .unwrap();
    std::fs::write(dir.join("groups"), "admins: alice\n").unwrap();
    std::fs::write(dir.join("hs.key"), SECRET).unwrap();
    let upstream = spawn_inspecting_upstream().await;
    let up = format!("http://{upstream}");
    let config = format!(
        r#"{server}{tls}
[auth]
realm = "policy"
[auth.basic]
htpasswd = "users"
groups = "groups"
[auth.jwt]
algorithms = ["HS256"]
hs_secret_file = "hs.key"
[rate_limit]
enabled = false
[cors]
allowed_origins = ["https://app.example.com"]
[[route]]
path = "/public"
upstream = "{up}"
auth = "public"
[[route]]
path = "/admin"
upstream = "{up}"
allow_groups = ["admins"]
[[route]]
path = "/alice-only"
upstream = "{up}"
allow_users = ["alice"]
[[route]]
path = "/staff"
upstream = "{up}"
allow_email_domains = ["example.com"]
[[route]]
path = "/tenant"
upstream = "{up}"
require_claims = {{ "org.tenant" = "acme" }}
[[route]]
path = "/readonly"
upstream = "{up}"
methods = ["GET", "HEAD"]
[[route]]
path = "/mixed"
upstream = "{up}"
allow_users = ["bob"]
allow_groups = ["admins"]
[[route]]
path = "/"
upstream = "{up}"
"#,
        server = server_section("trusted_proxies = [\"127.0.0.1/32\"]"),
        tls = pki.tls_section(),
    );
    let proxy = Proxy::start(dir, &config).await;
    Setup { pki, proxy }
}

fn token(sub: &str, email: &str, tenant: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({
            "sub": sub,
            "email": email,
            "org": {"tenant": tenant},
            "exp": jsonwebtoken::get_current_timestamp() + 600,
        }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Who {
    Nobody,
    Alice,
    Bob,
    WrongPassword,
    /// Bearer: carol@example.com, tenant acme.
    Carol,
    /// Bearer: dave@evil.test, tenant other.
    Dave,
    /// Bearer with an ambiguous email `x@y@example.com`.
    Ambiguous,
}

impl Who {
    fn authorization(self) -> Option<String> {
        use base64ct::{Base64, Encoding};
        let basic = |u: &str, p: &str| {
            Some(format!(
                "Basic {}",
                Base64::encode_string(format!("{u}:{p}").as_bytes())
            ))
        };
        match self {
            Who::Nobody => None,
            Who::Alice => basic("alice", "alice-pw"),
            Who::Bob => basic("bob", "bob-pw"),
            Who::WrongPassword => basic("alice", "nope"),
            Who::Carol => Some(format!(
                "Bearer {}",
                token("carol", "carol@example.com", "acme")
            )),
            Who::Dave => Some(format!(
                "Bearer {}",
                token("dave", "dave@evil.test", "other")
            )),
            Who::Ambiguous => Some(format!("Bearer {}", token("x", "x@y@example.com", "acme"))),
        }
    }
}

impl Setup {
    async fn status(&self, method: &str, path: &str, who: Who) -> u16 {
        let mut request = self
            .pki
            .client(self.proxy.addr)
            .build()
            .unwrap()
            .request(method.parse().unwrap(), url(self.proxy.addr, path));
        if let Some(value) = who.authorization() {
            request = request.header("authorization", value);
        }
        request.send().await.unwrap().status().as_u16()
    }
}

#[tokio::test]
async fn each_identity_gets_exactly_its_status_on_each_route() {
    let s = setup().await;
    use Who::*;
    let table: &[(&str, &str, Who, u16)] = &[
        ("GET", "/public/x", Nobody, 200),
        ("POST", "/public/x", Nobody, 200),
        ("GET", "/", Nobody, 401),
        ("GET", "/", WrongPassword, 401),
        ("GET", "/", Alice, 200),
        ("GET", "/", Carol, 200),
        ("GET", "/admin", Nobody, 401),
        ("GET", "/admin/panel", Alice, 200),
        ("GET", "/admin/panel", Bob, 403),
        ("GET", "/admin/panel", Carol, 403),
        ("GET", "/admin/panel", WrongPassword, 401),
        ("GET", "/adminx", Bob, 200),
        ("GET", "/alice-only", Alice, 200),
        ("GET", "/alice-only", Bob, 403),
        ("GET", "/staff", Carol, 200),
        ("GET", "/staff", Dave, 403),
        ("GET", "/staff", Alice, 403),
        ("GET", "/staff", Ambiguous, 403),
        ("GET", "/tenant", Carol, 200),
        ("GET", "/tenant", Dave, 403),
        ("GET", "/tenant", Alice, 403),
        ("GET", "/readonly/doc", Alice, 200),
        ("HEAD", "/readonly/doc", Alice, 200),
        ("POST", "/readonly/doc", Alice, 403),
        ("POST", "/readonly/doc", Nobody, 401),
        ("GET", "/mixed", Bob, 200),
        ("GET", "/mixed", Alice, 200),
        ("GET", "/mixed", Carol, 403),
        // Paths are normalised before matching; ambiguous forms are refused outright.
        ("GET", "/public/../admin/panel", Bob, 403),
        ("GET", "/public/%2e%2e/admin/panel", Nobody, 401),
        ("GET", "/public%2F..%2Fadmin", Nobody, 400),
        ("GET", "/public/..;/admin", Nobody, 400),
        ("GET", "//admin/panel", Bob, 403),
        ("GET", "/%61dmin/panel", Bob, 403),
    ];
    let mut wrong = Vec::new();
    for &(method, path, who, expected) in table {
        let got = s.status(method, path, who).await;
        if got != expected {
            wrong.push(format!(
                "{method} {path} as {who:?}: got {got}, want {expected}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn forbidden_is_a_403_without_a_credential_challenge() {
    let s = setup().await;
    let response = s
        .pki
        .client(s.proxy.addr)
        .build()
        .unwrap()
        .get(url(s.proxy.addr, "/admin"))
        .header("authorization", Who::Bob.authorization().unwrap())
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(!response.headers().contains_key("www-authenticate"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "forbidden");
    assert!(body["request_id"].as_str().is_some());
}

#[tokio::test]
async fn preflights_pass_and_allowed_origins_can_read_our_errors() {
    let s = setup().await;
    let client = s.pki.client(s.proxy.addr).build().unwrap();
    let preflight = client
        .request(reqwest::Method::OPTIONS, url(s.proxy.addr, "/admin/api"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "DELETE")
        .send()
        .await
        .unwrap();
    assert_eq!(
        preflight.status(),
        200,
        "the upstream answers the preflight"
    );
    let seen: Value = preflight.json().await.unwrap();
    assert_eq!(seen["method"], "OPTIONS");
    assert_eq!(seen_header(&seen, "x-forwarded-user"), None);
    // An OPTIONS that is not a preflight is authenticated like anything else.
    let plain = client
        .request(reqwest::Method::OPTIONS, url(s.proxy.addr, "/admin/api"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 401);

    let refused = client
        .get(url(s.proxy.addr, "/admin/api"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let h = refused.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert!(
        h["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("WWW-Authenticate")
    );
    let stranger = client
        .get(url(s.proxy.addr, "/admin/api"))
        .header("origin", "https://evil.example.net")
        .send()
        .await
        .unwrap();
    assert_eq!(stranger.status(), 401);
    assert!(
        !stranger
            .headers()
            .contains_key("access-control-allow-origin")
    );
}

#[tokio::test]
async fn forward_auth_answers_for_the_original_request() {
    let s = setup().await;
    let ask = |source: &'static str, headers: Vec<(&'static str, String)>| {
        let client = s
            .pki
            .client(s.proxy.addr)
            .local_address(source.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap();
        let mut request = client.get(url(s.proxy.addr, "/.sallyport/auth"));
        for (k, v) in headers {
            request = request.header(k, v);
        }
        async move { request.send().await.unwrap() }
    };
    let original = |u: &str| ("x-original-url", u.to_string());
    let alice = || ("authorization", Who::Alice.authorization().unwrap());
    let bob = || ("authorization", Who::Bob.authorization().unwrap());

    let ok = ask(
        "127.0.0.1",
        vec![original("https://app.test/admin/x?y=1"), alice()],
    )
    .await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-auth-request-user"], "alice");
    assert_eq!(ok.headers()["x-auth-request-groups"], "admins");
    assert_eq!(ok.headers()["x-forwarded-user"], "alice");

    let denied = ask(
        "127.0.0.1",
        vec![original("https://app.test/admin/x"), bob()],
    )
    .await;
    assert_eq!(denied.status(), 403);
    let nobody = ask("127.0.0.1", vec![original("https://app.test/admin/x")]).await;
    assert_eq!(nobody.status(), 401);
    assert!(
        nobody.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic realm=\"policy\"")
    );
    let public = ask("127.0.0.1", vec![original("https://app.test/public/x")]).await;
    assert_eq!(public.status(), 200);
    assert!(!public.headers().contains_key("x-auth-request-user"));

    // Traefik and Caddy describe the request in X-Forwarded-*.
    let traefik = ask(
        "127.0.0.1",
        vec![
            ("x-forwarded-proto", "https".into()),
            ("x-forwarded-host", "app.test".into()),
            ("x-forwarded-uri", "/readonly/doc".into()),
            ("x-forwarded-method", "POST".into()),
            alice(),
        ],
    )
    .await;
    assert_eq!(traefik.status(), 403, "POST is not allowed on /readonly");
    let traefik_get = ask(
        "127.0.0.1",
        vec![
            ("x-forwarded-host", "app.test".into()),
            ("x-forwarded-uri", "/readonly/doc".into()),
            ("x-forwarded-method", "GET".into()),
            alice(),
        ],
    )
    .await;
    assert_eq!(traefik_get.status(), 200);

    // Nothing unreadable or ambiguous is ever allowed.
    for bad in [
        "not a url",
        "http://[::1",
        "https://app.test/public%2F..%2Fadmin",
        "https://app.test/public/..;/admin",
        "https://app.test/.sallyport/login",
    ] {
        let r = ask("127.0.0.1", vec![original(bad), alice()]).await;
        assert!(
            matches!(r.status().as_u16(), 400 | 404),
            "{bad}: {}",
            r.status()
        );
    }
    let missing = ask("127.0.0.1", vec![alice()]).await;
    assert_eq!(missing.status(), 400);
    // Only a trusted proxy may describe a request.
    let untrusted = ask("127.0.0.2", vec![original("https://app.test/public/x")]).await;
    assert_eq!(untrusted.status(), 400);
}

#[test]
fn rules_are_validated_and_printed_by_check() {
    let pki = Pki::new();
    std::fs::write(pki.dir.path().join("users"), "alice:{SHA}x\n").unwrap();
    for (rule, complaint) in [
        ("allow_email_domains = [\"@example.com\"]", "bare domains"),
        ("methods = [\"G E T\"]", "not an HTTP method"),
        ("methods = []", "at least one method"),
        ("allow_users = [\"\"]", "must not be empty"),
        ("require_scopes = [\"a b\"]", "not an OAuth scope"),
        (
            "auth = \"public\"\nallow_users = [\"alice\"]",
            "public route",
        ),
    ] {
        let path = pki.dir.path().join("sallyport.toml");
        std::fs::write(
            &path,
            format!(
                "{}[auth.basic]\nhtpasswd = \"users\"\n[[route]]\npath = \"/\"\nupstream = \"builtin:echo\"\n{rule}\n",
                server_section("")
            ),
        )
        .unwrap();
        let error = sallyport::config::Config::load(&path)
            .expect_err(rule)
            .to_string();
        assert!(error.contains(complaint), "{rule}: {error}");
    }
}
