//! SIGTERM and SIGINT: the first starts a graceful shutdown (stop accepting, drain in-flight
//! requests up to `[server] shutdown-timeout`), a second one exits at once with status 1.
//!
//! The handlers are installed when [`signal`] is called, not when its future is first polled, so
//! a signal that arrives right after startup is never the default action (death by signal).

use std::future::Future;

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
