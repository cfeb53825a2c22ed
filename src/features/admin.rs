//! The proxy's own path space, the reserved `/_secretproxy` prefix, as the layers below the
//! pipeline see it: which paths are reserved ([`PREFIX`], [`is_reserved`]) and which are the two
//! probes for Kubernetes and load balancers ([`is_probe`]: `health/live`, `health/ready`), what
//! counts as a loopback peer, the process's readiness state ([`Readiness`]) and the `ready`
//! document built from readiness [`Check`]s. The endpoints themselves (`health`, `metrics` and
//! the probes) are answered by the pipeline's `admin` module, which reads the generation and the
//! metrics.
//!
//! Invariants: a request whose path starts with [`PREFIX`] never reaches route matching, so it
//! is never forwarded, whatever routes exist (config validation and webhooks also refuse paths
//! under the prefix). The probes answer any peer, and the guard lets them past the `Host` rule,
//! the non-browser policy and the client token (browser requests from other origins are still
//! refused): what they say is fixed text, states and counts, never a route, secret or file name,
//! a value, or anything a client sent.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;

/// Every path starting with this belongs to the proxy itself.
pub const PREFIX: &str = "/_secretproxy";

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
/// (held by the pipeline's `Live`), so it outlives reloads.
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
