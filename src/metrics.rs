//! Prometheus metrics. One [`Metrics`] lives for the whole process and outlives every
//! reload, so counters keep counting when the config changes; the admin listener
//! ([`crate::server::admin`]) serves it as text.
//!
//! Label values come from small fixed sets (schemes, reason codes, statuses) or from the
//! config (route labels), never from a request, so no client can grow the series count.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Arc<String>,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    scheme: &'static str,
    outcome: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByLabel {
    by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabel {
    table: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: Arc<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    scheme: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

type HistogramMaker = fn() -> Histogram;

/// Upstream latency buckets: 1 ms to about 33 s, doubling.
fn upstream_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 16,
    ))
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    auth: Family<AuthLabels, Counter>,
    throttled: Family<ByLabel, Counter>,
    throttle_tracked: Family<TableLabel, Gauge>,
    upstream: Family<RouteLabel, Histogram, HistogramMaker>,
    credential_cache: Family<CacheLabels, Counter>,
    reloads: Family<ResultLabel, Counter>,
    last_reload_ok: Gauge,
    last_reload_time: Gauge,
    cert_expiry: Gauge,
    open_connections: Gauge,
}

/// How a credential cache did, for one scheme. Cheap to clone; detached (counting into
/// nothing) when built with `Default`.
#[derive(Clone, Default)]
pub struct CacheCounters {
    hit: Counter,
    miss: Counter,
}

impl CacheCounters {
    pub fn hit(&self) {
        self.hit.inc();
    }

    pub fn miss(&self) {
        self.miss.inc();
    }
}

/// Decrements the open-connections gauge when the connection ends, however it ends.
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "sallyport_requests",
            "Requests answered, by route and HTTP status",
            requests.clone(),
        );
        let auth = Family::<AuthLabels, Counter>::default();
        registry.register(
            "sallyport_auth",
            "Authentication outcomes by scheme, outcome and precise reason",
            auth.clone(),
        );
        let throttled = Family::<ByLabel, Counter>::default();
        registry.register(
            "sallyport_throttled",
            "Requests refused with 429 by the failed-login throttle, by what was throttled",
            throttled.clone(),
        );
        let throttle_tracked = Family::<TableLabel, Gauge>::default();
        registry.register(
            "sallyport_throttle_tracked",
            "Entries in the local failed-login throttle tables",
            throttle_tracked.clone(),
        );
        let upstream = Family::<RouteLabel, Histogram, HistogramMaker>::new_with_constructor(
            upstream_histogram,
        );
        registry.register(
            "sallyport_upstream_duration_seconds",
            "Time from forwarding a request to the upstream's response head",
            upstream.clone(),
        );
        let credential_cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "sallyport_credential_cache",
            "Verified-credential cache lookups by scheme and result",
            credential_cache.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "sallyport_reloads",
            "Config reloads (SIGHUP or changed files) by result",
            reloads.clone(),
        );
        let last_reload_ok = Gauge::default();
        last_reload_ok.set(1);
        registry.register(
            "sallyport_config_last_reload_successful",
            "1 when the last reload succeeded (or none was tried), 0 when it failed",
            last_reload_ok.clone(),
        );
        let last_reload_time = Gauge::default();
        last_reload_time.set(unix_now());
        registry.register(
            "sallyport_config_last_reload_success_timestamp_seconds",
            "When the config in use was loaded",
            last_reload_time.clone(),
        );
        let cert_expiry = Gauge::default();
        let open_connections = Gauge::default();
        registry.register(
            "sallyport_open_connections",
            "Open client connections on the traffic listeners",
            open_connections.clone(),
        );
        let build = Family::<VersionLabel, Gauge>::default();
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("sallyport_build_info", "The running version", build);
        Metrics {
            registry,
            requests,
            auth,
            throttled,
            throttle_tracked,
            upstream,
            credential_cache,
            reloads,
            last_reload_ok,
            last_reload_time,
            cert_expiry,
            open_connections,
        }
    }

    pub fn request(&self, route: &Arc<String>, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                route: Arc::clone(route),
                status,
            })
            .inc();
    }

    pub fn auth(&self, scheme: &'static str, outcome: &'static str, reason: &'static str) {
        self.auth
            .get_or_create(&AuthLabels {
                scheme,
                outcome,
                reason,
            })
            .inc();
    }

    pub fn throttled(&self, by: &'static str) {
        self.throttled.get_or_create(&ByLabel { by }).inc();
    }

    pub fn upstream_latency(&self, route: &Arc<String>, latency: Duration) {
        self.upstream
            .get_or_create(&RouteLabel {
                route: Arc::clone(route),
            })
            .observe(latency.as_secs_f64());
    }

    pub fn cache_counters(&self, scheme: &'static str) -> CacheCounters {
        let counter = |result| {
            self.credential_cache
                .get_or_create_owned(&CacheLabels { scheme, result })
        };
        CacheCounters {
            hit: counter("hit"),
            miss: counter("miss"),
        }
    }

    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabel { result }).inc();
        self.last_reload_ok.set(i64::from(ok));
        if ok {
            self.last_reload_time.set(unix_now());
        }
    }

    /// The served certificate's `notAfter`; the series appears with the first TLS config.
    pub fn set_certificate_expiry(&self, not_after_unix: i64) {
        self.cert_expiry.set(not_after_unix);
    }

    pub fn connection_opened(&self) -> OpenConnection {
        self.open_connections.inc();
        OpenConnection(self.open_connections.clone())
    }

    pub fn set_throttle_tracked(&self, clients: u64, users: u64) {
        let set = |table, n: u64| {
            self.throttle_tracked
                .get_or_create(&TableLabel { table })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        set("clients", clients);
        set("users", users);
    }

    /// The OpenMetrics text exposition. `with_certificate`: whether TLS is on (a zero
    /// expiry would otherwise read as "expired in 1970").
    pub fn encode(&self, with_certificate: bool) -> String {
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        if with_certificate {
            let mut cert = Registry::default();
            cert.register(
                "sallyport_tls_certificate_expiry_timestamp_seconds",
                "notAfter of the certificate served on the traffic listeners",
                self.cert_expiry.clone(),
            );
            let _ = prometheus_client::encoding::text::encode_registry(&mut out, &cert);
        }
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The coarse outcome for a precise reason code, so dashboards can group without
/// knowing every code.
pub fn outcome_of(reason: &str) -> &'static str {
    match reason {
        "missing" => "missing",
        "unknown_user" => "unknown_user",
        "expired" | "session_expired" | "session_idle_expired" => "expired",
        "throttled_client" | "throttled_user" => "throttled",
        "unavailable" | "keys_unavailable" => "unavailable",
        _ => "invalid",
    }
}
