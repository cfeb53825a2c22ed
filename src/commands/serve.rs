//! `secretproxy serve`: load the config, read the secrets, bind (or take the socket systemd
//! passed), tell systemd it is ready, serve until SIGTERM/SIGINT; the config file is watched and
//! SIGHUP reloads it (see [`crate::daemon::reload`]).

use std::sync::Arc;

use anyhow::Context;
use std::net::SocketAddr;

use crate::cli::ServeArgs;
use crate::config;
use crate::daemon::notify;
use crate::daemon::reload::{self, Reloader};
use crate::daemon::server;
use crate::daemon::shutdown;
use crate::daemon::telemetry;
use crate::pipeline::Proxy;
use crate::pipeline::generation::{Generation, Live};
use crate::secrets::{SecretStore, SystemStore};

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    let path = config::locate(args.config.config.as_deref())?;
    // The text is kept so the config watcher knows what is serving from the start.
    let text = reload::read_text(&path)?;
    let mut config = config::Config::parse(&text, &path.display().to_string())?;
    let file_listen = args.listen.is_none().then_some(config.server.listen);
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(message) = config.server.access.listen_refusal(config.server.listen) {
        return Err(config::ConfigError::Listen(message).into());
    }

    // One worker per usable core (fewer under `taskset` or a CPU quota), each a single-threaded
    // runtime with its own accept loop on the shared socket (see `server::serve`): measured
    // faster than tokio's work-stealing scheduler with as many workers (README: Performance).
    // `SECRETPROXY_RUNTIME=shared` selects that scheduler instead, for comparison.
    let workers = std::env::var("SECRETPROXY_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let shared = workers > 1 && std::env::var("SECRETPROXY_RUNTIME").is_ok_and(|v| v == "shared");
    let mut runtime = if shared {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = runtime.enable_all().build().context("cannot start the async runtime")?;
    let accept_loops = if shared { 1 } else { workers };
    runtime.block_on(serve(
        config,
        text,
        Arc::new(SystemStore),
        path,
        file_listen,
        accept_loops,
    ))
}

async fn serve(
    config: config::Config,
    text: String,
    store: Arc<dyn SecretStore>,
    path: std::path::PathBuf,
    file_listen: Option<std::net::SocketAddr>,
    workers: usize,
) -> anyhow::Result<()> {
    let listen = config.server.listen;
    let drain = config.server.shutdown_timeout;
    let origin = config.origin.clone();
    let build_store = store.clone();
    let generation = tokio::task::spawn_blocking(move || Generation::build(config, build_store, 1)).await??;
    let missing = generation.log_missing_secrets();
    let routes = generation.config.routes.len();
    let live = Arc::new(Live::new(generation));
    let shutdown = shutdown::signal();
    let reloader = Arc::new(Reloader::new(path, store, live.clone(), file_listen).with_serving_text(text));
    let _watch = reload::spawn(reloader.clone());

    let listener = match notify::activated_listener().context("cannot use the socket passed by systemd")? {
        Some(socket) => {
            // The socket systemd passed is held to the same rule as `listen`.
            if let Some(message) = live.current().config.server.access.listen_refusal(socket.local_addr()?) {
                return Err(config::ConfigError::Listen(message).into());
            }
            tracing::info!("using the listening socket passed by systemd (socket activation)");
            tokio::net::TcpListener::from_std(socket)?
        }
        None => server::bind(listen)
            .await
            .map_err(|error| bind_error(listen, file_listen, &error))?,
    };
    let local = listener.local_addr()?;
    tracing::info!(address = %local, config = %origin, routes, missing_secrets = missing, "listening");
    for plan in &live.current().plans {
        let route = &plan.route;
        let methods: Vec<&str> = route.methods.iter().map(http::Method::as_str).collect();
        tracing::info!(
            "route {}: {} {} -> {}",
            route.name,
            methods.join(","),
            route.path,
            plan.upstream_host
        );
    }
    reloader.set_local(local);
    // Bound, config valid, secrets read: only now is the service ready.
    notify::ready_serving(&live.current(), local);
    let watchdog = notify::spawn_watchdog();
    let draining = live.clone();
    let shutdown = async move {
        shutdown.await;
        notify::stopping();
        shutdown::delay(&draining).await;
    };
    server::serve(listener, Arc::new(Proxy::new(live)), shutdown, drain, workers)
        .await
        .context("cannot share the listening socket with the workers")?;
    crate::pipeline::access::flush();
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    Ok(())
}

/// Why the listening socket could not be opened, with what to do about the usual causes.
fn bind_error(listen: SocketAddr, file_listen: Option<SocketAddr>, error: &std::io::Error) -> anyhow::Error {
    let set_by = if file_listen.is_some() {
        "`[server] listen` in the config"
    } else {
        "--listen"
    };
    let next = SocketAddr::new(listen.ip(), listen.port().wrapping_add(1).max(1));
    let help = match error.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "another program already listens on port {port}, perhaps another secretproxy (see `ss -ltnp 'sport = :{port}'`); stop it, or use another port with `--listen {next_port}` or `[server] listen = \"{next}\"`",
            port = listen.port(),
            next_port = next.port(),
        ),
        std::io::ErrorKind::PermissionDenied if listen.port() < 1024 => format!(
            "ports below 1024 need privileges; use e.g. `--listen 8787`, or put a reverse proxy in front (address from {set_by})"
        ),
        std::io::ErrorKind::AddrNotAvailable => {
            format!("{} is not an address of this machine; check {set_by}", listen.ip())
        }
        _ => format!("the address comes from {set_by}"),
    };
    anyhow::anyhow!("cannot listen on {listen}: {error}\n  help: {help}")
}
