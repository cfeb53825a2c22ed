//! The proxy's own endpoints under the reserved `/_secretproxy` prefix: `health` (JSON),
//! `metrics` (Prometheus text), and the two probes for Kubernetes and load balancers,
//! `health/live` and `health/ready`.
//!
//! Invariants: a request whose path starts with [`PREFIX`] is answered here and never reaches
//! route matching, so it is never forwarded, whatever routes exist (config validation also
//! refuses routes under the prefix). `health` and `metrics` answer only loopback peers — judged
//! by the TCP peer address of the connection, never by a header a client can write — because
//! they describe the daemon (route and secret names) to whoever asks. A request for them that
//! carries a reverse proxy's forwarding header (`Forwarded`, `X-Forwarded-For`, `Via`, ...) is
//! refused too: behind Caddy or nginx every peer is loopback, and the endpoints must stay private.
//!
//! The probes are the exception, on purpose: a kubelet or a load balancer calls them from the
//! pod network with the pod's IP in `Host` and no token, so they answer any peer, and the guard
//! lets them past the `Host` rule, the non-browser policy and the client token (browser requests
//! from other origins are still refused). What they say is fixed text, states and counts: no
//! route, secret or file name, no value, nothing a client sent. `live` is `200` while the process
//! serves; `ready` is `200` or `503` with one entry per readiness [`Check`]. Nothing here reads a
//! secret value: health reports only names of missing secrets.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderValue, Method, Response, StatusCode, header};
use serde_json::json;

use crate::http::body::{ProxyBody, empty, full};
use crate::http::error::ProxyError;
use crate::pipeline::generation::{Generation, Live};
use crate::pipeline::metrics::Metrics;

/// Every path starting with this belongs to the proxy itself.
pub const PREFIX: &str = "/_secretproxy";

/// The media type of [`Metrics::render`]'s output (OpenMetrics text, which Prometheus reads).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// True when `path` is under the reserved prefix (including look-alikes such as
/// `/_secretproxyX`, so no route can ever be reached with such a path either).
pub fn is_reserved(path: &str) -> bool {
    path.starts_with(PREFIX)
}

/// True when the connection comes from this machine's loopback interface: 127.0.0.0/8, `::1`,
/// or an IPv4-mapped loopback address on a dual-stack socket.
pub fn is_loopback_peer(peer: SocketAddr) -> bool {
    match peer.ip().to_canonical() {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => ip.is_loopback(),
    }
}

/// The liveness probe's path: `200` while the process serves.
pub const LIVE: &str = "/_secretproxy/health/live";
/// The readiness probe's path: `200` when every [`Check`] passes, else `503`.
pub const READY: &str = "/_secretproxy/health/ready";

/// True for the two probe paths, which answer any peer (see the module's invariants).
pub fn is_probe(path: &str) -> bool {
    path == LIVE || path == READY
}

/// What readiness knows beyond the generation: whether the shutdown has begun. One per process
/// (held by [`Live`]), so it outlives reloads.
#[derive(Debug, Default)]
pub struct Readiness {
    draining: AtomicBool,
}

impl Readiness {
    /// From now on `ready` answers `503`; requests are still served until the drain.
    pub fn begin_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// One condition of readiness, as the `ready` document lists it: a fixed name, whether it holds,
/// and a state word with counts. Never a secret's or a route's name.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: &'static str,
    pub ready: bool,
    /// A word for the state (`ok`, `missing`, `draining`, ...).
    pub state: &'static str,
    /// Counts that help an operator (`{"missing": 1}`); an object.
    pub detail: serde_json::Value,
}

/// The readiness checks, in the order the document lists them. Ready means: a config is loaded,
/// every declared secret resolved at its last read (a probe starts a new read of those older
/// than [`crate::secrets::REFRESH_AFTER`], so a secret that appears makes the pod ready within a
/// probe or two), and no shutdown has begun. Another check (e.g. the shared store, when a route
/// fails closed without it) is one more entry here.
pub fn readiness_checks(generation: &Generation, readiness: &Readiness) -> Vec<Check> {
    generation.secrets.refresh_stale();
    let missing = generation.missing_secrets().len();
    let declared = generation.config.secrets.len();
    let draining = readiness.is_draining();
    let mut checks = vec![
        Check {
            name: "config",
            ready: true,
            state: "loaded",
            detail: json!({ "generation": generation.number, "routes": generation.config.routes.len() }),
        },
        Check {
            name: "secrets",
            ready: missing == 0,
            state: if missing == 0 { "resolved" } else { "missing" },
            detail: json!({ "resolved": declared - missing, "missing": missing }),
        },
        Check {
            name: "shutdown",
            ready: !draining,
            state: if draining { "draining" } else { "serving" },
            detail: json!({}),
        },
    ];
    // The shared store (`[state]`): ready unless a route or webhook with `on-error = "deny"`
    // needs it and it was not reachable at its last operation; a fail-open store only reports
    // its state. The probe starts a PING in the background, so the next probe sees a change.
    if let Some(store) = &generation.store {
        store.check_in_background();
        let health = store.health();
        let needed = generation.fails_closed();
        checks.push(Check {
            name: "store",
            ready: !needed || health == crate::features::store::breaker::Health::Up,
            state: health.as_str(),
            detail: json!({ "fails_closed": needed }),
        });
    }
    checks
}

/// The `ready` document and whether it says ready.
pub fn ready_document(checks: &[Check]) -> (bool, serde_json::Value) {
    let ready = checks.iter().all(|check| check.ready);
    let entries: Vec<serde_json::Value> = checks
        .iter()
        .map(|check| {
            let mut entry = json!({ "name": check.name, "ready": check.ready, "state": check.state });
            if let (Some(entry), Some(detail)) = (entry.as_object_mut(), check.detail.as_object()) {
                entry.extend(detail.clone());
            }
            entry
        })
        .collect();
    let status = if ready { "ready" } else { "not_ready" };
    (ready, json!({ "status": status, "checks": entries }))
}

/// Headers a reverse proxy adds: a request carrying one came through a front proxy, so its
/// loopback peer address says nothing about the real client.
const FORWARDING: [&str; 5] = ["forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip", "via"];

/// Answers a request under [`PREFIX`], or says why not.
pub fn answer(
    method: &Method,
    path: &str,
    headers: &http::HeaderMap,
    peer: SocketAddr,
    generation: &Generation,
    live: &Live,
) -> Result<Response<ProxyBody>, ProxyError> {
    let get = method == Method::GET || method == Method::HEAD;
    if is_probe(path) {
        if !get {
            return Err(ProxyError::MethodNotAllowed {
                route: PREFIX.to_string(),
                allow: "GET, HEAD".to_string(),
            });
        }
        let (status, document) = if path == LIVE {
            (StatusCode::OK, json!({ "status": "live" }))
        } else {
            let (ready, document) = ready_document(&readiness_checks(generation, live.readiness()));
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, document)
        };
        let mut response = respond(method, "application/json", document.to_string());
        *response.status_mut() = status;
        return Ok(response);
    }
    let metrics = live.metrics();
    let forwarded = FORWARDING.iter().any(|name| headers.contains_key(*name));
    if !is_loopback_peer(peer) || forwarded {
        return Err(ProxyError::AdminNotLocal { forwarded });
    }
    let endpoint = path.strip_prefix(PREFIX).unwrap_or_default();
    if !matches!(endpoint, "/health" | "/metrics") {
        return Err(ProxyError::NoEndpoint);
    }
    if !get {
        return Err(ProxyError::MethodNotAllowed {
            route: PREFIX.to_string(),
            allow: "GET, HEAD".to_string(),
        });
    }
    let (content_type, text) = if endpoint == "/health" {
        ("application/json", health(generation, metrics).to_string())
    } else {
        (METRICS_CONTENT_TYPE, metrics.render())
    };
    Ok(respond(method, content_type, text))
}

/// A `200` with `text` (none for `HEAD`), never cached.
fn respond(method: &Method, content_type: &'static str, text: String) -> Response<ProxyBody> {
    let mut response = Response::new(if method == Method::HEAD { empty() } else { full(text) });
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The health document: always `200`; `status` is `degraded` while a secret is missing or the
/// shared store (`[state]`, reported under `state`) is down.
pub fn health(generation: &Generation, metrics: &Metrics) -> serde_json::Value {
    let missing = generation.missing_secrets();
    let store_down = generation
        .store
        .as_ref()
        .is_some_and(|store| store.health() == crate::features::store::breaker::Health::Down);
    let mut document = json!({
        "status": if missing.is_empty() && !store_down { "ok" } else { "degraded" },
        "routes": generation.config.routes.len(),
        "missing_secrets": missing,
        "uptime_seconds": metrics.uptime().as_secs(),
        "config_generation": generation.number,
    });
    if let Some(store) = &generation.store {
        document["state"] = store.health_json();
    }
    document
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    #[test]
    fn only_loopback_peers_count_as_local() {
        for ip in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback_peer(peer(ip)), "{ip}");
        }
        for ip in [
            "192.0.2.7",
            "10.0.0.1",
            "0.0.0.0",
            "::",
            "::ffff:192.0.2.7",
            "fe80::1",
            "fd00::2",
            // IPv4-compatible (deprecated) form of 127.0.0.1 is not loopback for the kernel.
            "::127.0.0.1",
        ] {
            assert!(!is_loopback_peer(peer(ip)), "{ip}");
        }
    }

    /// A generation with two declared secrets, one of them set (in memory).
    fn generation() -> Generation {
        let store = std::sync::Arc::new(crate::secrets::memory::MemoryStore::default());
        store
            .values
            .lock()
            .unwrap()
            .insert("environment variable `SET_KEY`".into(), "sk-probe-value".into());
        let config = crate::config::Config::parse(
            "[secrets.present-key]\nenv = \"SET_KEY\"\n[secrets.absent-key]\nenv = \"UNSET_KEY\"\n\
             [routes.a]\npath = \"/a\"\nupstream = \"https://example.com/a\"\nheaders = { x-a = \"${present-key}\", x-b = \"${absent-key}\" }\n",
            "t",
        )
        .unwrap();
        Generation::build(config, store, 7).unwrap()
    }

    async fn get(path: &str, ip: &str, live: &Live) -> (u16, String) {
        use http_body_util::BodyExt;
        let generation = live.current();
        let response = answer(&Method::GET, path, &http::HeaderMap::new(), peer(ip), &generation, live)
            .map_err(|e| e.code())
            .unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn probes_answer_any_peer_with_states_only() {
        let live = Live::new(generation());
        for ip in ["127.0.0.1", "10.1.2.3"] {
            let (status, body) = get(LIVE, ip, &live).await;
            assert_eq!((status, body.as_str()), (200, r#"{"status":"live"}"#));
            let (status, body) = get(READY, ip, &live).await;
            assert_eq!(status, 503, "a secret is missing: {body}");
            let document: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(document["status"], "not_ready");
            let secrets = &document["checks"][1];
            assert_eq!(
                (
                    &secrets["name"],
                    &secrets["ready"],
                    &secrets["missing"],
                    &secrets["resolved"]
                ),
                (&json!("secrets"), &json!(false), &json!(1), &json!(1))
            );
            assert_eq!(document["checks"][0]["generation"], 7);
            for word in [
                "sk-probe-value",
                "absent-key",
                "present-key",
                "SET_KEY",
                "UNSET_KEY",
                "/a",
            ] {
                assert!(!body.contains(word), "{word} in {body}");
            }
        }
        // `health` and `metrics` still answer loopback only.
        let refused = answer(
            &Method::GET,
            "/_secretproxy/health",
            &http::HeaderMap::new(),
            peer("10.1.2.3"),
            &live.current(),
            &live,
        );
        assert!(matches!(refused, Err(ProxyError::AdminNotLocal { forwarded: false })));
        let post = answer(
            &Method::POST,
            READY,
            &http::HeaderMap::new(),
            peer("10.1.2.3"),
            &live.current(),
            &live,
        );
        assert!(matches!(post, Err(ProxyError::MethodNotAllowed { .. })));
    }

    #[test]
    fn draining_is_not_ready() {
        let checks = |draining: bool| {
            let readiness = Readiness::default();
            if draining {
                readiness.begin_draining();
            }
            vec![
                Check {
                    name: "config",
                    ready: true,
                    state: "loaded",
                    detail: json!({ "generation": 1 }),
                },
                Check {
                    name: "shutdown",
                    ready: !readiness.is_draining(),
                    state: if readiness.is_draining() { "draining" } else { "serving" },
                    detail: json!({}),
                },
            ]
        };
        let (ready, document) = ready_document(&checks(false));
        assert!(ready);
        assert_eq!(
            document,
            json!({ "status": "ready", "checks": [
                { "name": "config", "ready": true, "state": "loaded", "generation": 1 },
                { "name": "shutdown", "ready": true, "state": "serving" },
            ]})
        );
        let (ready, document) = ready_document(&checks(true));
        assert!(!ready);
        assert_eq!(document["status"], "not_ready");
        assert_eq!(document["checks"][1]["state"], "draining");
    }

    #[test]
    fn reserved_paths() {
        assert!(is_reserved("/_secretproxy/health"));
        assert!(is_probe("/_secretproxy/health/ready") && is_probe("/_secretproxy/health/live"));
        assert!(!is_probe("/_secretproxy/health") && !is_probe("/_secretproxy/health/ready/"));
        assert!(is_reserved("/_secretproxy"));
        assert!(is_reserved("/_secretproxyfoo"));
        assert!(!is_reserved("/api/_secretproxy/health"));
        assert!(!is_reserved("/_SecretProxy/health"));
    }
}
