//! `secretproxy serve`: load the config, read the secrets, bind, serve until SIGTERM/SIGINT.

use std::sync::Arc;

use anyhow::Context;

use crate::cli::ServeArgs;
use crate::config;
use crate::generation::{Generation, Live};
use crate::proxy::Proxy;
use crate::secrets::{SecretStore, SystemStore};
use crate::server;
use crate::telemetry;

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    let path = config::locate(args.config.config.as_deref())?;
    let mut config = config::load(&path)?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(message) = config.server.access.listen_refusal(config.server.listen) {
        return Err(config::ConfigError::Listen(message).into());
    }

    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = std::env::var("SECRETPROXY_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        runtime.worker_threads(threads);
    }
    let runtime = runtime.enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(serve(config, Arc::new(SystemStore)))
}

async fn serve(config: config::Config, store: Arc<dyn SecretStore>) -> anyhow::Result<()> {
    let listen = config.server.listen;
    let origin = config.origin.clone();
    let generation = tokio::task::spawn_blocking(move || Generation::build(config, store, 1)).await??;
    let missing = generation.log_missing_secrets();
    let routes = generation.config.routes.len();
    let live = Arc::new(Live::new(generation));

    let listener = server::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, config = %origin, routes, missing_secrets = missing, "listening");
    server::serve(
        listener,
        Arc::new(Proxy::new(live)),
        shutdown_signal(),
        server::DEFAULT_DRAIN,
    )
    .await;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
