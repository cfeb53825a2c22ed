//! The proxy's own endpoints under the reserved `/_secretproxy` prefix: `health` (JSON),
//! `metrics` (Prometheus text), and the two probes for Kubernetes and load balancers,
//! `health/live` and `health/ready`. The paths, the loopback rule and the readiness state live in
//! [`crate::features::admin`], where the guard, webhooks and config validation read them.
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

use std::net::SocketAddr;

use http::{HeaderValue, Method, Response, StatusCode, header};
use serde_json::json;

use crate::features::admin::{Check, LIVE, PREFIX, Readiness, is_loopback_peer, is_probe, ready_document};
use crate::http::body::{ProxyBody, empty, full};
use crate::http::error::ProxyError;
use crate::pipeline::generation::{Generation, Live};
use crate::pipeline::metrics::Metrics;

/// The media type of [`Metrics::render`]'s output (OpenMetrics text, which Prometheus reads).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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
    use crate::features::admin::READY;

    use super::*;

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
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
}
