//! SIGTERM and SIGINT: the first starts a graceful shutdown, a second one exits at once with
//! status 1.
//!
//! A graceful shutdown has two steps. First the readiness probe turns `503` while everything is
//! still served, for `[server] shutdown-delay` ([`delay`]): in Kubernetes the pod leaves the
//! Service's endpoints only after the kubelet and the proxies in front notice, and requests sent
//! meanwhile must not hit a closed port. Then the server stops accepting and drains in-flight
//! requests up to `[server] shutdown-timeout` (`daemon::server`).
//!
//! The handlers are installed when [`signal`] is called, not when its future is first polled, so
//! a signal that arrives right after startup is never the default action (death by signal).

use std::future::Future;
use std::time::Duration;

use crate::pipeline::generation::Live;

/// The variable Kubernetes sets in every container of a pod.
pub const KUBERNETES_ENV: &str = "KUBERNETES_SERVICE_HOST";

/// The shutdown delay in a pod when `shutdown-delay` is not set: about what endpoint removal
/// takes to reach kube-proxy and ingress controllers.
pub const KUBERNETES_DELAY: Duration = Duration::from_secs(5);

/// The delay when `[server] shutdown-delay` is not set: none, except in a Kubernetes pod
/// ([`KUBERNETES_ENV`] set), where it is [`KUBERNETES_DELAY`].
pub fn default_delay() -> Duration {
    default_delay_for(std::env::var_os(KUBERNETES_ENV).as_deref())
}

fn default_delay_for(kubernetes: Option<&std::ffi::OsStr>) -> Duration {
    match kubernetes {
        Some(host) if !host.is_empty() => KUBERNETES_DELAY,
        _ => Duration::ZERO,
    }
}

/// The first step of a graceful shutdown: readiness turns `503`, and requests are still served
/// for the configured delay (read now, so a reload before the signal counts).
pub async fn delay(live: &Live) {
    live.readiness().begin_draining();
    let delay = live
        .current()
        .config
        .server
        .shutdown_delay
        .unwrap_or_else(default_delay);
    if delay.is_zero() {
        return;
    }
    tracing::info!(
        delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        "not ready: still serving during the shutdown delay, then draining"
    );
    tokio::time::sleep(delay).await;
}

/// Exit status when a second signal cuts the drain short: requests were dropped.
pub const EXIT_INTERRUPTED: i32 = 1;

/// Resolves on the first SIGTERM or SIGINT; from then on, another one ends the process.
pub fn signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
        async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!(signal = name, "shutdown requested; a second signal exits at once");
            tokio::spawn(async move {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                tracing::warn!(
                    signal = name,
                    "second signal: exiting without waiting for in-flight requests"
                );
                std::process::exit(EXIT_INTERRUPTED);
            });
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
            tokio::spawn(async {
                let _ = tokio::signal::ctrl_c().await;
                std::process::exit(EXIT_INTERRUPTED);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_delay_outside_kubernetes() {
        assert_eq!(default_delay_for(None), Duration::ZERO);
        assert_eq!(default_delay_for(Some("".as_ref())), Duration::ZERO);
        assert_eq!(default_delay_for(Some("10.96.0.1".as_ref())), KUBERNETES_DELAY);
    }
}
