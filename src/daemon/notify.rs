//! Talking to the service manager (systemd's `sd_notify` protocol, via the `sd-notify` crate) and
//! taking a socket-activated listener from it.
//!
//! Every function is a no-op when `$NOTIFY_SOCKET` is unset, so the daemon behaves the same
//! outside systemd. Failures to notify are logged, never fatal: a dead notify socket must not
//! take the proxy down. Ordering promises the callers keep: [`ready`] only once the listener is
//! bound and the config and secrets are loaded; [`reloading`] before a reload starts and
//! [`ready`] again when it has ended (swapped in or rejected); [`stopping`] as soon as a
//! shutdown signal arrives, before the drain.

use std::net::SocketAddr;

use crate::pipeline::generation::Generation;

/// The one-line `STATUS=` text: what is served, and which secrets are missing (names only).
pub fn status_text(routes: usize, listen: &str, missing: &[String]) -> String {
    let routes = match routes {
        1 => "1 route".to_string(),
        n => format!("{n} routes"),
    };
    match missing.len() {
        0 => format!("serving {routes} on {listen}; all secrets available"),
        n => format!(
            "serving {routes} on {listen}; {n} secret{} missing: {}",
            if n == 1 { "" } else { "s" },
            missing.join(", ")
        ),
    }
}

/// `READY=1` with the `STATUS=` of `generation` served on `local`: call it once startup has
/// finished and again after every reload (swapped in or rejected) with the live generation.
pub fn ready_serving(generation: &Generation, local: SocketAddr) {
    ready(&status_text(
        generation.config.routes.len(),
        &local.to_string(),
        &generation.missing_secrets(),
    ));
}

/// `READY=1` with a `STATUS=` line: startup finished, or a reload ended.
pub fn ready(status: &str) {
    #[cfg(unix)]
    send(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(status)]);
    #[cfg(not(unix))]
    let _ = status;
}

/// `RELOADING=1` with `MONOTONIC_USEC=` (required by `Type=notify-reload`): a reload starts.
/// Follow it with [`ready`] when the reload has ended, whether it succeeded or not.
pub fn reloading() {
    #[cfg(unix)]
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            sd_notify::NotifyState::Reloading,
            now,
            sd_notify::NotifyState::Status("reloading the config"),
        ]),
        Err(err) => tracing::warn!(error = %err, "cannot read the monotonic clock for RELOADING=1"),
    }
}

/// `STOPPING=1`: shutdown has begun (connections are draining).
pub fn stopping() {
    #[cfg(unix)]
    send(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping: draining in-flight requests"),
    ]);
}

/// When the service manager asked for watchdog pings (`WatchdogSec=` sets `$WATCHDOG_USEC`),
/// spawns a task that sends `WATCHDOG=1` at half the interval. The pings come from the async
/// runtime, so a wedged runtime stops them and systemd restarts the daemon.
pub fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    #[cfg(unix)]
    {
        let interval = sd_notify::watchdog_enabled()?;
        let period = (interval / 2).max(std::time::Duration::from_millis(10));
        tracing::info!(interval_ms = interval.as_millis() as u64, "systemd watchdog enabled");
        Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                send(&[sd_notify::NotifyState::Watchdog]);
            }
        }))
    }
    #[cfg(not(unix))]
    None
}

/// The listening socket systemd passed (socket activation: `LISTEN_FDS`/`LISTEN_PID`, first
/// descriptor), if any. The `listen` address of the config is then not used.
pub fn activated_listener() -> std::io::Result<Option<std::net::TcpListener>> {
    #[cfg(unix)]
    {
        let mut fds = listenfd::ListenFd::from_env();
        if fds.len() == 0 {
            return Ok(None);
        }
        if fds.len() > 1 {
            tracing::warn!(count = fds.len(), "systemd passed several sockets; using the first");
        }
        let listener = fds.take_tcp_listener(0)?;
        if let Some(listener) = &listener {
            listener.set_nonblocking(true)?;
        }
        Ok(listener)
    }
    #[cfg(not(unix))]
    Ok(None)
}

#[cfg(unix)]
fn send(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(error = %err, "cannot notify the service manager");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_routes_and_missing_secrets() {
        assert_eq!(
            status_text(1, "127.0.0.1:8787", &[]),
            "serving 1 route on 127.0.0.1:8787; all secrets available"
        );
        assert_eq!(
            status_text(3, "[::1]:9000", &["gh".into(), "openai".into()]),
            "serving 3 routes on [::1]:9000; 2 secrets missing: gh, openai"
        );
    }
}
