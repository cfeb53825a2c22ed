//! The daemon's Prometheus metrics: one [`Metrics`] per process, rendered as text exposition by
//! the `/_secretproxy/metrics` endpoint (see [`crate::pipeline::admin`]).
//!
//! The registry is an explicit value (prometheus-client), not a process-global recorder, so every
//! in-process test proxy counts on its own. It lives in [`crate::pipeline::generation::Live`] and outlives
//! reloads: counters keep counting across generations.
//!
//! Label values are bounded: `route` is a configured route name (or `-` when none matched),
//! `method` one of the standard methods (anything else is `OTHER`), `status` a status code, and
//! `secret` a configured secret name, `client` the name of a client key in the state file (one
//! series set per key issued; `run` issues one per run). A client cannot grow the series without
//! limit, and no label ever holds a secret value, a key, a path or a query.

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The label value for requests that matched no route.
pub const NO_ROUTE: &str = "-";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

/// `client` is a client key's name from the state file (or `client-token`), never a key.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLabels {
    client: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SecretLabels {
    secret: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// Counters, gauges and histograms of one daemon process.
pub struct Metrics {
    registry: Registry,
    started: Instant,
    requests: Family<RequestLabels, Counter>,
    upstream_latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    in_flight: Gauge<i64, AtomicI64>,
    bytes_in: Family<RouteLabels, Counter>,
    bytes_out: Family<RouteLabels, Counter>,
    reloads: Counter<u64, AtomicU64>,
    reload_failures: Counter<u64, AtomicU64>,
    secret_lookup_failures: Family<SecretLabels, Counter>,
    client_requests: Family<ClientLabels, Counter>,
    /// The shared store's error and fallback counters (handed to each `Store`).
    store: crate::features::store::StoreMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("secretproxy");
        let requests = Family::<RequestLabels, Counter>::default();
        let upstream_latency = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let in_flight = Gauge::<i64, AtomicI64>::default();
        let bytes_in = Family::<RouteLabels, Counter>::default();
        let bytes_out = Family::<RouteLabels, Counter>::default();
        let reloads = Counter::<u64, AtomicU64>::default();
        let reload_failures = Counter::<u64, AtomicU64>::default();
        let secret_lookup_failures = Family::<SecretLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route, method and status",
            requests.clone(),
        );
        // Units are part of the names; no `# UNIT` lines, which some parsers reject on histograms.
        registry.register(
            "upstream_duration_seconds",
            "Time until the upstream's response headers arrived, by route",
            upstream_latency.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests being handled or streaming right now",
            in_flight.clone(),
        );
        registry.register(
            "request_body_bytes",
            "Request body bytes sent upstream, by route",
            bytes_in.clone(),
        );
        registry.register(
            "response_body_bytes",
            "Response body bytes sent to clients, by route",
            bytes_out.clone(),
        );
        registry.register("reloads", "Successful config reloads", reloads.clone());
        registry.register(
            "reload_failures",
            "Config reloads rejected (the old config stayed live)",
            reload_failures.clone(),
        );
        registry.register(
            "secret_lookup_failures",
            "Requests answered 503 because a secret was unavailable, by secret name",
            secret_lookup_failures.clone(),
        );
        let client_requests = Family::<ClientLabels, Counter>::default();
        registry.register(
            "client_requests",
            "Requests answered that came with a client key, by client name and status",
            client_requests.clone(),
        );
        let store = crate::features::store::StoreMetrics::default();
        store.register(&mut registry);
        Metrics {
            client_requests,
            store,
            registry,
            started: Instant::now(),
            requests,
            upstream_latency,
            in_flight,
            bytes_in,
            bytes_out,
            reloads,
            reload_failures,
            secret_lookup_failures,
        }
    }

    /// Time since the process started serving.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Marks a request as started; the returned guard marks it finished when dropped.
    pub fn request_started(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight.inc();
        InFlight { metrics: self.clone() }
    }

    /// Counts a request refused because the secret `name` was unavailable.
    pub fn secret_lookup_failed(&self, name: &str) {
        self.secret_lookup_failures
            .get_or_create(&SecretLabels {
                secret: name.to_string(),
            })
            .inc();
    }

    /// Counts one answered request of client `client` (a name, never a key).
    pub fn client_request(&self, client: &str, status: u16) {
        self.client_requests
            .get_or_create(&ClientLabels {
                client: client.to_string(),
                status,
            })
            .inc();
    }

    /// The shared store's counters, for the generation's `Store`.
    pub fn store(&self) -> crate::features::store::StoreMetrics {
        self.store.clone()
    }

    /// Counts a config reload that was swapped in. Called by the reload code.
    pub fn reload_succeeded(&self) {
        self.reloads.inc();
    }

    /// Counts a config reload that was rejected. Called by the reload code.
    pub fn reload_failed(&self) {
        self.reload_failures.inc();
    }

    /// The Prometheus text exposition (version 0.0.4 compatible, with `# EOF` as OpenMetrics).
    pub fn render(&self) -> String {
        let mut text = String::with_capacity(4096);
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// One route's series, created in the registry on first use (so a route that never answered has
/// none, as before) and then counted through handles.
pub struct RouteMetrics {
    route: String,
    /// (method, status) -> counter; a handful of entries per route, scanned linearly.
    requests: std::sync::Mutex<Vec<(&'static str, u16, Counter)>>,
    bytes_in: std::sync::OnceLock<Counter>,
    bytes_out: std::sync::OnceLock<Counter>,
    latency: std::sync::OnceLock<Histogram>,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RouteMetrics({})", self.route)
    }
}

impl RouteMetrics {
    /// The series handles of one route (or of [`NO_ROUTE`]), for a generation's route plan:
    /// the request path then counts without building labels or looking series up by name.
    pub fn new(route: &str) -> RouteMetrics {
        RouteMetrics {
            route: route.to_string(),
            requests: std::sync::Mutex::new(Vec::new()),
            bytes_in: std::sync::OnceLock::new(),
            bytes_out: std::sync::OnceLock::new(),
            latency: std::sync::OnceLock::new(),
        }
    }

    /// Counts one finished request and its body bytes.
    pub fn request_finished(
        &self,
        metrics: &Metrics,
        method: &http::Method,
        status: u16,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let method = method_label(method);
        {
            let mut requests = self.requests.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match requests.iter().find(|(m, s, _)| *m == method && *s == status) {
                Some((_, _, counter)) => {
                    counter.inc();
                }
                None => {
                    let labels = RequestLabels {
                        route: self.route.clone(),
                        method,
                        status,
                    };
                    let counter = metrics.requests.get_or_create(&labels).clone();
                    counter.inc();
                    requests.push((method, status, counter));
                }
            }
        }
        let labels = || RouteLabels {
            route: self.route.clone(),
        };
        if bytes_in > 0 {
            self.bytes_in
                .get_or_init(|| metrics.bytes_in.get_or_create(&labels()).clone())
                .inc_by(bytes_in);
        }
        // Created even at zero, so every route that answered has a series.
        self.bytes_out
            .get_or_init(|| metrics.bytes_out.get_or_create(&labels()).clone())
            .inc_by(bytes_out);
    }

    /// Records how long the upstream took to send its response headers.
    pub fn upstream_answered(&self, metrics: &Metrics, elapsed: Duration) {
        self.latency
            .get_or_init(|| {
                metrics
                    .upstream_latency
                    .get_or_create(&RouteLabels {
                        route: self.route.clone(),
                    })
                    .clone()
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// Decrements the in-flight gauge when the request's response has ended (or was dropped).
pub struct InFlight {
    metrics: std::sync::Arc<Metrics>,
}

impl InFlight {
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InFlight")
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}

/// The method as a label value from a fixed set, so clients cannot invent new series.
fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_and_renders() {
        let metrics = Arc::new(Metrics::new());
        {
            let guard = metrics.request_started();
            assert!(guard.metrics().render().contains("secretproxy_requests_in_flight 1\n"));
            let gh = RouteMetrics::new("gh");
            gh.upstream_answered(&metrics, Duration::from_millis(3));
            gh.request_finished(&metrics, &http::Method::GET, 200, 0, 42);
        }
        RouteMetrics::new(NO_ROUTE).request_finished(&metrics, &http::Method::from_bytes(b"BREW").unwrap(), 404, 0, 10);
        metrics.reload_succeeded();
        metrics.reload_failed();
        metrics.secret_lookup_failed("openai");
        let text = metrics.render();
        for line in [
            "secretproxy_requests_total{route=\"gh\",method=\"GET\",status=\"200\"} 1\n",
            "secretproxy_requests_total{route=\"-\",method=\"OTHER\",status=\"404\"} 1\n",
            "secretproxy_requests_in_flight 0\n",
            "secretproxy_response_body_bytes_total{route=\"gh\"} 42\n",
            "secretproxy_upstream_duration_seconds_count{route=\"gh\"} 1\n",
            "secretproxy_reloads_total 1\n",
            "secretproxy_reload_failures_total 1\n",
            "secretproxy_secret_lookup_failures_total{secret=\"openai\"} 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
