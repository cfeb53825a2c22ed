//! The proxy's own endpoints under the reserved `/_secretproxy` prefix: `health` (JSON) and
//! `metrics` (Prometheus text).
//!
//! Invariants: a request whose path starts with [`PREFIX`] is answered here and never reaches
//! route matching, so it is never forwarded, whatever routes exist (config validation also
//! refuses routes under the prefix). Only loopback peers are answered — judged by the TCP peer
//! address of the connection, never by a header a client can write — because health and metrics
//! describe the daemon (route and secret names) to whoever asks. A request that carries a
//! reverse proxy's forwarding header (`Forwarded`, `X-Forwarded-For`, `Via`, ...) is refused too:
//! behind Caddy or nginx every peer is loopback, and the endpoints must stay private. Nothing here reads a secret
//! value: health reports only names of missing secrets.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderValue, Method, Response, header};
use serde_json::json;

use crate::daemon::metrics::Metrics;
use crate::http::body::{ProxyBody, empty, full};
use crate::http::error::ProxyError;
use crate::pipeline::generation::Generation;

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
    metrics: &Metrics,
) -> Result<Response<ProxyBody>, ProxyError> {
    let forwarded = FORWARDING.iter().any(|name| headers.contains_key(*name));
    if !is_loopback_peer(peer) || forwarded {
        return Err(ProxyError::AdminNotLocal { forwarded });
    }
    let endpoint = path.strip_prefix(PREFIX).unwrap_or_default();
    if !matches!(endpoint, "/health" | "/metrics") {
        return Err(ProxyError::NoEndpoint);
    }
    if method != Method::GET && method != Method::HEAD {
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
    let mut response = Response::new(if method == Method::HEAD { empty() } else { full(text) });
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
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

    #[test]
    fn reserved_paths() {
        assert!(is_reserved("/_secretproxy/health"));
        assert!(is_reserved("/_secretproxy"));
        assert!(is_reserved("/_secretproxyfoo"));
        assert!(!is_reserved("/api/_secretproxy/health"));
        assert!(!is_reserved("/_SecretProxy/health"));
    }
}
