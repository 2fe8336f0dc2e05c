//! The request pipeline (DESIGN.md section 3), top to bottom:
//!
//! 1. request id and client IP (trusted-proxy aware);
//! 2. host and path, normalised once; route lookup on that same path;
//! 3. built-in endpoints under `/.sallyport/` (forward-auth answers the same questions
//!    below about a request a trusted proxy describes);
//! 4. public routes and CORS preflights pass (identity headers are still stripped);
//! 5. throttle check, authentication, failure accounting (`Gate::authenticate`);
//! 6. the route's rules ([`crate::policy`]): 403 when they say no;
//! 7. forward, then one access-log line.
//!
//! Every failure is a [`Failure`] value; [`respond`] turns it into the
//! response. Nothing here builds an error page itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HOST, HeaderValue, SET_COOKIE};
use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use ipnet::IpNet;
use tokio::time::Instant;

use crate::auth::oidc::{self, FlowError};
use crate::auth::{Authenticated, Authenticator, Credential, Rejection, Scheme};
use crate::client_ip::{client_ip, is_trusted};
use crate::clock::WallClock;
use crate::config::{Config, Cors, IdentityHeaders, RouteAuth};
use crate::forward_auth;
use crate::metrics::{Metrics, outcome_of};
use crate::policy::{Denied, Policy};
use crate::proxy::headers::{ForwardedFacts, ManagedHeaders, X_REQUEST_ID};
use crate::proxy::{self, ProxyBody, ProxySettings, Upstream};
use crate::respond::{self, Failure};
use crate::routes::{self, RouteTable};
use crate::throttle::{Attempt, Throttle, Throttled};

/// The connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer's address as forwarded headers carry it, formatted once per connection.
    pub peer_text: HeaderValue,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> ConnInfo {
        ConnInfo {
            peer,
            tls,
            peer_text: proxy::headers::peer_text(peer.ip()),
        }
    }
}

pub struct Route {
    /// `host/path` as configured: the access log's and the metrics' name for the route.
    pub label: Arc<String>,
    pub upstream: Upstream,
    pub auth: RouteAuth,
    pub policy: Policy,
}

/// Everything the pipeline needs, built from one validated [`Config`]. A reload builds a
/// new `Gate`; requests already running finish with the one they started with.
pub struct Gate {
    routes: RouteTable<Route>,
    auth: Authenticator,
    throttle: Option<Arc<Throttle>>,
    /// What `throttle` was built from, so a reload that leaves it alone keeps the counts.
    rate_limit: Option<crate::config::RateLimit>,
    metrics: Arc<Metrics>,
    builtin_label: Arc<String>,
    unrouted_label: Arc<String>,
    proxy: ProxySettings,
    trusted_proxies: Vec<IpNet>,
    cors: Cors,
    identity_headers: IdentityHeaders,
    access_log: bool,
}

const BUILTIN_PREFIX: &str = "/.sallyport";
const FORWARD_AUTH_PATH: &str = "/.sallyport/auth";
const USERINFO_PATH: &str = "/.sallyport/userinfo";

impl Gate {
    /// `clock` times sessions (tests pass a manual one).
    pub fn new(config: &Config, clock: WallClock) -> Result<Gate, String> {
        Gate::build(config, clock, Arc::new(Metrics::new()), None)
    }

    /// A gate for `config` that carries over what `previous` has learned where the config
    /// for it did not change: throttle counts, credential caches, OIDC discovery, keys and
    /// pending logins. Everything the new config changed starts afresh, so a removed user
    /// or a rotated key stops working the moment the new gate is in place.
    pub fn build(
        config: &Config,
        clock: WallClock,
        metrics: Arc<Metrics>,
        previous: Option<&Gate>,
    ) -> Result<Gate, String> {
        let mut entries = Vec::with_capacity(config.routes.len());
        for (i, r) in config.routes.iter().enumerate() {
            let upstream = Upstream::build(&r.upstream, &config.server.timeouts)
                .map_err(|e| format!("route[{i}].{e}"))?;
            let label = Arc::new(format!(
                "{}{}",
                r.host.as_ref().map(|h| h.to_string()).unwrap_or_default(),
                r.path
            ));
            entries.push((
                r.host.clone(),
                r.path.clone(),
                Route {
                    label,
                    upstream,
                    auth: r.auth,
                    policy: Policy::new(r),
                },
            ));
        }
        let throttle = match (previous, &config.rate_limit) {
            (Some(p), Some(limits)) if p.rate_limit.as_ref() == Some(limits) => p.throttle.clone(),
            (_, limits) => limits.as_ref().map(|l| Arc::new(Throttle::new(l))),
        };
        Ok(Gate {
            routes: RouteTable::new(entries),
            auth: Authenticator::build(
                &config.auth,
                &config.headers,
                clock,
                &metrics,
                previous.map(|p| &p.auth),
            )?,
            throttle,
            rate_limit: config.rate_limit.clone(),
            metrics,
            builtin_label: Arc::new("builtin".to_string()),
            unrouted_label: Arc::new("none".to_string()),
            proxy: ProxySettings {
                managed: ManagedHeaders::new(&config.headers),
                upstream_response: config.server.timeouts.upstream_response,
                max_body_bytes: config.server.limits.max_body_bytes,
            },
            trusted_proxies: config.server.trusted_proxies.clone(),
            cors: config.cors.clone(),
            identity_headers: config.headers.clone(),
            access_log: config.log.access_log,
        })
    }

    pub async fn handle(&self, request: Request<Incoming>, conn: &ConnInfo) -> Response<ProxyBody> {
        let started = Instant::now();
        let peer_trusted = is_trusted(conn.peer.ip(), &self.trusted_proxies);
        let request_id = request_id(request.headers(), peer_trusted);
        let client = client_ip(conn.peer.ip(), request.headers(), &self.trusted_proxies);
        let body_kind = respond::negotiate(request.headers());
        let method = request.method().clone();
        let builtin_target = routes::prefix_matches(BUILTIN_PREFIX, request.uri().path());
        let raw_path = self.access_log.then(|| request.uri().path().to_string());
        let cors_origin = self.allowed_origin(request.headers());

        let mut trace = Trace {
            for_access_log: self.access_log,
            ..Trace::default()
        };
        let result = self
            .pipeline(request, conn, peer_trusted, client, &request_id, &mut trace)
            .await;
        let mut response = match result {
            Ok(response) => response,
            Err(failure) => respond::failure_response(
                &failure,
                body_kind,
                request_id.to_str().unwrap_or_default(),
                cors_origin.as_ref(),
            ),
        };
        response
            .headers_mut()
            .insert(X_REQUEST_ID, request_id.clone());
        if !trace.set_cookies.is_empty() {
            // A renewed session cookie may ride on an upstream answer the upstream marked
            // cacheable; no shared cache may keep one user's cookie for the next.
            response.headers_mut().insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            );
            for cookie in trace.set_cookies.drain(..) {
                response.headers_mut().append(SET_COOKIE, cookie);
            }
        }
        if method == Method::HEAD {
            without_body(&mut response);
        }

        let route_label = match &trace.route_label {
            Some(label) => label,
            None if builtin_target => &self.builtin_label,
            None => &self.unrouted_label,
        };
        self.metrics
            .request(route_label, response.status().as_u16());
        if let Some(latency) = trace.upstream_latency {
            self.metrics.upstream_latency(route_label, latency);
        }

        if self.access_log {
            tracing::info!(
                target: "sallyport::access",
                request_id = request_id.to_str().unwrap_or_default(),
                client = %client,
                method = %method,
                path = %trace.path.as_deref().or(raw_path.as_deref()).unwrap_or("-"),
                route = trace
                    .route
                    .as_deref()
                    .or(trace.route_label.as_deref().map(String::as_str))
                    .unwrap_or("-"),
                user = trace.user.as_deref().unwrap_or("-"),
                auth = if trace.auth.is_empty() { "-" } else { trace.auth },
                status = response.status().as_u16(),
                upstream_ms = trace.upstream_latency.map(|d| d.as_secs_f64() * 1000.0),
                duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            );
        }
        response
    }

    async fn pipeline(
        &self,
        request: Request<Incoming>,
        conn: &ConnInfo,
        peer_trusted: bool,
        client: std::net::IpAddr,
        request_id: &HeaderValue,
        trace: &mut Trace,
    ) -> Result<Response<ProxyBody>, Failure> {
        let admitted = match self.admit_request(&request, client, trace).await {
            Ok(admitted) => admitted,
            Err(failure) => {
                let (parts, body) = request.into_parts();
                discard_body(&parts, body).await;
                return Err(failure);
            }
        };
        let Admitted::Forward {
            route,
            host,
            path,
            identity,
        } = admitted
        else {
            let path = trace.path.clone().unwrap_or_default();
            let (parts, body) = request.into_parts();
            discard_body(&parts, body).await;
            let request = Request::from_parts(parts, ());
            // Boxed, like every path off the proxied fast path: an async fn's future is as
            // large as its largest branch, and the whole of it is allocated and moved for
            // every request (10 KB with these inline, 3.7 KB without).
            if path == FORWARD_AUTH_PATH {
                return Box::pin(self.forward_auth(request.headers(), peer_trusted, client, trace))
                    .await;
            }
            return Box::pin(self.builtin(&path, &request, client, trace)).await;
        };

        let facts = ForwardedFacts {
            peer: conn.peer.ip(),
            peer_trusted,
            peer_text: &conn.peer_text,
            client_ip: client,
            proto: if conn.tls { "https" } else { "http" },
            host: host.as_deref(),
            request_id,
            identity: identity.as_deref(),
        };
        let forwarded =
            proxy::forward(&route.upstream, &self.proxy, request, &path, &facts).await?;
        trace.upstream_latency = Some(forwarded.upstream_latency);
        Ok(forwarded.response)
    }

    /// Everything decided from the request head: framing, host, path, route and who is
    /// asking. Takes the request by reference so a refusal can still discard its body.
    async fn admit_request<'g>(
        &'g self,
        request: &Request<Incoming>,
        client: std::net::IpAddr,
        trace: &mut Trace,
    ) -> Result<Admitted<'g>, Failure> {
        if has_foreign_transfer_coding(request.headers()) {
            return Err(Failure::UnsupportedTransferCoding);
        }
        let host = request_host(request)?;
        let path = routes::normalize_path(request.uri().path())
            .map_err(|_| Failure::BadRequest("The request path is malformed or ambiguous."))?;
        if routes::prefix_matches(BUILTIN_PREFIX, &path) {
            trace.path = Some(path);
            return Ok(Admitted::Builtin);
        }
        if trace.for_access_log {
            trace.path = Some(path.clone());
        }

        let route = self.route_for(host.as_deref(), &path, trace)?;
        let login_return = self
            .wants_login_page(request.method(), request.headers(), host.as_deref())
            .then(|| {
                request
                    .uri()
                    .path_and_query()
                    .map_or_else(|| "/".to_string(), |p| p.as_str().to_string())
            });
        let identity = self
            .admit(
                route,
                request.method(),
                request.headers(),
                client,
                login_return.as_deref(),
                trace,
            )
            .await?;
        Ok(Admitted::Forward {
            route,
            host,
            path,
            identity: identity.map(Box::new),
        })
    }

    fn route_for(
        &self,
        host: Option<&str>,
        path: &str,
        trace: &mut Trace,
    ) -> Result<&Route, Failure> {
        let match_host = host.and_then(routes::host_for_matching);
        let route = self
            .routes
            .find(match_host.as_deref(), path)
            .ok_or(Failure::NotFound)?;
        trace.route_label = Some(Arc::clone(&route.label));
        Ok(route)
    }

    /// `/.sallyport/login`, `callback`, `logout` (OIDC) and `userinfo`.
    async fn builtin(
        &self,
        path: &str,
        request: &Request<()>,
        client: std::net::IpAddr,
        trace: &mut Trace,
    ) -> Result<Response<ProxyBody>, Failure> {
        let headers = request.headers();
        let query = request.uri().query();
        let method = request.method();
        trace.route = Some(path.to_string());
        if path == USERINFO_PATH {
            if method != Method::GET && method != Method::HEAD {
                return Err(Failure::BadRequest("Use GET for /.sallyport/userinfo."));
            }
            let who = self.authenticate(headers, client, None, trace).await?;
            return Ok(respond::json(&who.userinfo()));
        }
        let Some(oidc) = self.auth.oidc() else {
            return Err(Failure::NotFound);
        };
        trace.auth = "oidc";
        let get = method == Method::GET || method == Method::HEAD;
        let redirect = match path {
            oidc::LOGIN_PATH if get => oidc.login(query, headers),
            // Not HEAD: completing a login is not a side effect a HEAD may have.
            oidc::CALLBACK_PATH if method == Method::GET => oidc.callback(query, headers).await,
            oidc::LOGOUT_PATH if get || method == Method::POST => oidc.logout(query, headers).await,
            oidc::LOGIN_PATH | oidc::CALLBACK_PATH | oidc::LOGOUT_PATH => {
                Err(FlowError::BadRequest("Use GET for this endpoint."))
            }
            _ => return Err(Failure::NotFound),
        };
        match redirect {
            Ok(redirect) => respond::redirect(&redirect.location, redirect.set_cookies),
            Err(FlowError::BadRequest(why)) => Err(Failure::BadRequest(why)),
            Err(FlowError::Unavailable) => Err(Failure::ServiceUnavailable {
                retry_after_secs: 5,
            }),
            Err(FlowError::IdpUnreachable) => Err(Failure::BadGateway),
        }
    }

    /// A browser navigating (GET or HEAD preferring an HTML page) on a proxy with OIDC
    /// login: it gets sent to log in instead of a 401 it cannot answer. Only on
    /// `public_url`'s host, where the session cookie lives.
    fn wants_login_page(
        &self,
        method: &Method,
        headers: &http::HeaderMap,
        host: Option<&str>,
    ) -> bool {
        self.auth.oidc().is_some_and(|o| o.serves_host(host))
            && (method == Method::GET || method == Method::HEAD)
            && respond::negotiate(headers) == respond::BodyKind::Html
    }

    /// Steps 5 to 9 for one route: public routes and CORS preflights pass, everyone else
    /// is throttle-checked, authenticated and held to the route's rules. `login_return`:
    /// where a browser sent to log in comes back to.
    async fn admit(
        &self,
        route: &Route,
        method: &Method,
        headers: &http::HeaderMap,
        client: std::net::IpAddr,
        login_return: Option<&str>,
        trace: &mut Trace,
    ) -> Result<Option<Authenticated>, Failure> {
        if route.auth == RouteAuth::Public {
            trace.auth = "public";
            route
                .policy
                .check_method(method, headers)
                .map_err(|denied| self.forbidden(denied, None, trace))?;
            return Ok(None);
        }
        if self.cors.skip_preflight && is_preflight(method, headers) {
            // Browsers never send credentials on a preflight; requiring them would
            // break every cross-origin call. The real request is authenticated.
            trace.auth = "preflight";
            return Ok(None);
        }
        let who = self
            .authenticate(headers, client, login_return, trace)
            .await?;
        route
            .policy
            .check(&who, method, headers)
            .map_err(|denied| self.forbidden(denied, Some(&who), trace))?;
        Ok(Some(who))
    }

    fn forbidden(&self, denied: Denied, who: Option<&Authenticated>, trace: &mut Trace) -> Failure {
        trace.auth = denied.reason();
        let scope = match denied {
            // Only a token can be told which scopes to get.
            Denied::MissingScopes(scope) if who.is_some_and(|w| w.scheme() == Scheme::Bearer) => {
                Some(scope)
            }
            _ => None,
        };
        Failure::Forbidden {
            realm: self.auth.realm(),
            scope,
        }
    }

    /// `/.sallyport/auth`: the same decision as for a proxied request, about the request
    /// a trusted proxy in front of us describes, answered with headers instead of a body.
    async fn forward_auth(
        &self,
        headers: &http::HeaderMap,
        peer_trusted: bool,
        client: std::net::IpAddr,
        trace: &mut Trace,
    ) -> Result<Response<ProxyBody>, Failure> {
        trace.route = Some(FORWARD_AUTH_PATH.to_string());
        if !peer_trusted {
            return Err(Failure::BadRequest(
                "Forward-auth requests are accepted only from server.trusted_proxies.",
            ));
        }
        let original = forward_auth::original_request(headers).map_err(Failure::BadRequest)?;
        let path = routes::normalize_path(&original.path).map_err(|_| {
            Failure::BadRequest("The original request path is malformed or ambiguous.")
        })?;
        trace.path = Some(format!("{FORWARD_AUTH_PATH} {} {path}", original.method));
        if routes::prefix_matches(BUILTIN_PREFIX, &path) {
            return Err(Failure::NotFound);
        }
        let route = self.route_for(original.host.as_deref(), &path, trace)?;
        let login_return = (original.can_redirect
            && self.wants_login_page(&original.method, headers, original.host.as_deref()))
        .then(|| original.path_and_query.clone());
        let identity = self
            .admit(
                route,
                &original.method,
                headers,
                client,
                login_return.as_deref(),
                trace,
            )
            .await?;
        Ok(forward_auth::allowed(
            identity.as_ref(),
            &self.identity_headers,
        ))
    }

    /// Steps 6 to 8: throttle check, authentication, failure accounting. A browser with no
    /// (live) session is sent to log in and come back to `login_return`.
    async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        client: std::net::IpAddr,
        login_return: Option<&str>,
        trace: &mut Trace,
    ) -> Result<Authenticated, Failure> {
        let credential = self.auth.credential(headers);
        if let Some(user) = credential.presented_user() {
            trace.note_user(user);
        }
        let attempt = match &self.throttle {
            Some(throttle) => throttle.attempt(client, credential.presented_user()),
            None => Attempt::unthrottled(),
        };
        let scheme = credential.scheme_label();
        if let Err(throttled) = attempt.check().await {
            trace.auth = throttled.by.as_str();
            self.count_throttled(scheme, throttled);
            return Err(too_many_attempts(throttled));
        }
        let outcome = if matches!(credential, Credential::Session) {
            let (outcome, set_cookies) = Box::pin(self.auth.session(headers)).await;
            trace.set_cookies.extend(set_cookies);
            outcome
        } else {
            self.auth.authenticate(&credential, &attempt).await
        };
        match outcome {
            Ok(who) => {
                attempt.succeeded(who.user()).await;
                self.metrics
                    .auth(who.scheme().as_str(), "success", "success");
                trace.auth = who.scheme().as_str();
                trace.note_user(who.user());
                Ok(who)
            }
            Err(Rejection::Throttled(throttled)) => {
                trace.auth = throttled.by.as_str();
                self.count_throttled(scheme, throttled);
                Err(too_many_attempts(throttled))
            }
            Err(Rejection::Unavailable) => {
                trace.auth = Rejection::Unavailable.reason();
                self.metrics.auth(scheme, "unavailable", trace.auth);
                Err(Failure::ServiceUnavailable {
                    retry_after_secs: 5,
                })
            }
            Err(rejection) => {
                if rejection.counts_as_failure() {
                    attempt.failed().await;
                }
                trace.auth = rejection.reason();
                self.metrics
                    .auth(scheme, outcome_of(trace.auth), trace.auth);
                let needs_login = matches!(rejection, Rejection::Missing | Rejection::Session(_));
                if let (true, Some(rd), Some(oidc)) = (needs_login, login_return, self.auth.oidc())
                {
                    let location = HeaderValue::from_str(&oidc.login_url(rd)).map_err(|_| {
                        Failure::BadRequest("The request target is not a valid URL.")
                    })?;
                    return Err(Failure::LoginRequired { location });
                }
                Err(Failure::Unauthenticated(
                    self.auth.challenge_for(&rejection),
                ))
            }
        }
    }

    fn count_throttled(&self, scheme: &'static str, throttled: Throttled) {
        self.metrics
            .auth(scheme, "throttled", throttled.by.as_str());
        self.metrics.throttled(throttled.by.short());
    }

    /// The request's `Origin`, if it may read our own error answers.
    fn allowed_origin(&self, headers: &http::HeaderMap) -> Option<HeaderValue> {
        if self.cors.allowed_origins.is_empty() {
            return None;
        }
        let origin = headers.get(http::header::ORIGIN)?;
        let text = origin.to_str().ok()?.to_ascii_lowercase();
        self.cors
            .allowed_origins
            .contains(&text)
            .then(|| origin.clone())
    }

    /// `sallyport explain`: the decision a request would get, through the same steps a
    /// real one takes (route lookup, authentication, the route's rules), without
    /// forwarding it. Build the gate without throttling: an explanation must not spend
    /// anyone's failure budget.
    pub async fn explain(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> Decision {
        let mut trace = Trace::default();
        let host = uri.authority().map(|a| a.as_str().to_string());
        let mut decision = Decision {
            host: host.clone(),
            path: uri.path().to_string(),
            route: None,
            scheme: self.auth.credential(headers).scheme_label(),
            reason: "",
            identity: None,
            failure: None,
        };
        let path = match routes::normalize_path(uri.path()) {
            Ok(path) => path,
            Err(_) => {
                decision.failure = Some(Failure::BadRequest(
                    "The request path is malformed or ambiguous.",
                ));
                return decision;
            }
        };
        decision.path.clone_from(&path);
        if routes::prefix_matches(BUILTIN_PREFIX, &path) {
            decision.reason = "builtin";
            return decision;
        }
        let route = match self.route_for(host.as_deref(), &path, &mut trace) {
            Ok(route) => route,
            Err(failure) => {
                decision.failure = Some(failure);
                return decision;
            }
        };
        decision.route = Some(RouteSummary {
            label: Arc::clone(&route.label),
            upstream: route.upstream.describe(),
            public: route.auth == RouteAuth::Public,
        });
        let client = std::net::IpAddr::from([127, 0, 0, 1]);
        match self
            .admit(route, method, headers, client, None, &mut trace)
            .await
        {
            Ok(identity) => decision.identity = identity,
            Err(failure) => decision.failure = Some(failure),
        }
        decision.reason = trace.auth;
        decision
    }

    pub fn throttle(&self) -> Option<&Throttle> {
        self.throttle.as_deref()
    }

    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    pub fn authenticator(&self) -> &Authenticator {
        &self.auth
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

/// What [`Gate::explain`] found.
pub struct Decision {
    pub host: Option<String>,
    /// Normalised, as routes see it.
    pub path: String,
    pub route: Option<RouteSummary>,
    /// The scheme the request presented: basic, bearer, session or none.
    pub scheme: &'static str,
    /// The log's reason code: the scheme that succeeded, why it failed, or `public`.
    pub reason: &'static str,
    pub identity: Option<Authenticated>,
    /// `None`: the request would be forwarded.
    pub failure: Option<Failure>,
}

pub struct RouteSummary {
    pub label: Arc<String>,
    pub upstream: String,
    pub public: bool,
}

/// What the head of a request decided.
enum Admitted<'g> {
    /// One of our own endpoints under `/.sallyport/` (the path is in the trace).
    Builtin,
    Forward {
        route: &'g Route,
        host: Option<String>,
        path: String,
        /// Boxed: an identity is large, and this enum crosses an await.
        identity: Option<Box<Authenticated>>,
    },
}

/// Reads and discards up to 64 KiB of a body we answer without, for at most a few
/// seconds, so a client still sending it reads our answer instead of a reset: on
/// HTTP/1.1 an unread body ends the connection under the client, and on HTTP/2 dropping
/// it cancels the stream before the answer goes out (curl then reports no answer at all).
/// A small body drained also keeps an HTTP/1.1 connection reusable; anything larger ends
/// it. Nothing is read after `Expect: 100-continue`: reading would invite the upload we
/// are refusing.
async fn discard_body(head: &http::request::Parts, body: Incoming) {
    use http_body_util::BodyExt;
    const LIMIT: usize = 64 * 1024;
    let expects_continue = head
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        return;
    }
    let read = http_body_util::Limited::new(body, LIMIT).collect();
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
}

/// hyper reads any list of codings that ends in `chunked` and decodes only that last
/// one; what is under it (`gzip, chunked`) would reach the upstream still encoded, with
/// nothing saying so. RFC 9112 6.1: answer 501.
fn has_foreign_transfer_coding(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// A HEAD answer has the headers of the GET answer and no body. HTTP/1.1 drops a body
/// by itself; HTTP/2 would send it as DATA, which clients treat as a protocol error. Our
/// own pages and `builtin:echo` have bodies, so it is dropped here for every HEAD.
fn without_body(response: &mut Response<ProxyBody>) {
    use hyper::body::Body;
    if !response
        .headers()
        .contains_key(http::header::CONTENT_LENGTH)
    {
        // An upstream's empty HEAD body says nothing about the GET length.
        if let Some(length) = response.body().size_hint().exact().filter(|&n| n > 0) {
            response
                .headers_mut()
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
        }
    }
    *response.body_mut() = proxy::full_body(bytes::Bytes::new());
}

/// A CORS preflight (Fetch standard): OPTIONS with `Origin` and
/// `Access-Control-Request-Method`.
fn is_preflight(method: &Method, headers: &http::HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(http::header::ORIGIN)
        && headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn too_many_attempts(throttled: Throttled) -> Failure {
    // Rounded up: a client that waits exactly this long must find the block over.
    let millis = throttled.retry_after.as_millis() as u64;
    Failure::TooManyAttempts {
        retry_after_secs: millis.div_ceil(1000).max(1),
    }
}

/// Usernames are attacker-chosen and up to a few KB long; the access log's quoted
/// (Debug) formatting escapes them, and this bounds their length.
fn capped(user: &str) -> String {
    user.chars().take(64).collect()
}

/// What the access log reports about one request.
#[derive(Default)]
struct Trace {
    /// Whether the access log will read this: strings only it needs are built only then.
    for_access_log: bool,
    /// For requests not on a configured route (the route's label is `route_label`).
    route: Option<String>,
    /// The matched route's label, for metrics (never a client-chosen string).
    route_label: Option<Arc<String>>,
    path: Option<String>,
    /// The authenticated user, or the username presented with failed credentials.
    user: Option<String>,
    /// Scheme that succeeded or reason for failing ("public" when not needed).
    auth: &'static str,
    upstream_latency: Option<Duration>,
    /// Session cookies to set or clear on the response, whatever it turns out to be.
    set_cookies: Vec<HeaderValue>,
}

impl Trace {
    /// The authenticated user, or the username presented with failed credentials.
    fn note_user(&mut self, user: &str) {
        if self.for_access_log {
            self.user = Some(capped(user));
        }
    }
}

/// A request id from a trusted proxy is kept so one id follows the request end to end;
/// anything else gets a fresh one (a client must not be able to forge log correlation).
fn request_id(headers: &http::HeaderMap, peer_trusted: bool) -> HeaderValue {
    if peer_trusted {
        if let Some(id) = headers.get(X_REQUEST_ID) {
            let bytes = id.as_bytes();
            let valid = (1..=128).contains(&bytes.len())
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
            if valid {
                return id.clone();
            }
        }
    }
    let mut text = uuid::Uuid::encode_buffer();
    let text = uuid::Uuid::new_v4().simple().encode_lower(&mut text);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The host the client asked for: `:authority` / absolute-form authority, else `Host`.
/// Two Host fields, or an HTTP/2 `Host` that contradicts `:authority`, is a 400: two
/// parties reading different hosts from one request is how routing gets confused.
fn request_host(request: &Request<Incoming>) -> Result<Option<String>, Failure> {
    let mut host_fields = request.headers().get_all(HOST).iter();
    let host_field = host_fields.next();
    if host_fields.next().is_some() {
        return Err(Failure::BadRequest(
            "The request has more than one Host header.",
        ));
    }
    let host_field = match host_field {
        Some(v) => {
            let text = v
                .to_str()
                .map_err(|_| Failure::BadRequest("The Host header is malformed."))?;
            text.parse::<http::uri::Authority>()
                .map_err(|_| Failure::BadRequest("The Host header is malformed."))?;
            Some(text)
        }
        None => None,
    };
    let authority = request.uri().authority().map(|a| a.as_str());
    // Userinfo has no place in a Host (RFC 9110 7.2); a backend might still read the part
    // after '@' as the host, while we would route on the whole string.
    if authority.is_some_and(|a| a.contains('@')) || host_field.is_some_and(|h| h.contains('@')) {
        return Err(Failure::BadRequest(
            "The Host header or request target has userinfo.",
        ));
    }
    match (authority, host_field) {
        (Some(a), Some(h))
            if request.version() == Version::HTTP_2 && !a.eq_ignore_ascii_case(h) =>
        {
            Err(Failure::BadRequest(
                "The Host header contradicts :authority.",
            ))
        }
        (Some(a), _) => Ok(Some(a.to_string())),
        (None, Some(h)) => Ok(Some(h.to_string())),
        (None, None) if request.version() == Version::HTTP_11 => {
            Err(Failure::BadRequest("The request has no Host header."))
        }
        (None, None) => Ok(None),
    }
}
