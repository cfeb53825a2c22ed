//! secretproxy: a local daemon that keeps API keys out of frontends.
//!
//! The crate is laid out in layers; a module uses only the layers below it (checked by a unit
//! test, `layering`), so there is no cycle between them. From the top:
//!
//! - [`cli`] holds the command-line types, [`commands`] one module per subcommand.
//! - [`daemon`]: the process — per-core workers with their accept loops ([`daemon::server`]), the
//!   HTTP/1.1 fast path for plain requests ([`daemon::fast`]) with hyper's server for the rest,
//!   the framing sniffer ([`daemon::framing`]), live reload ([`daemon::reload`]), systemd
//!   ([`daemon::notify`]), shutdown and logging setup.
//! - [`pipeline`]: the request path. [`pipeline::Proxy::handle`] runs every request through one
//!   fixed order of phases — dispatch (guard, admin, preflight, webhook, route, static site) →
//!   route guard → validate → limit → secrets → inject → send → scrub → transform → response
//!   headers → CORS → access log — against the current [`pipeline::generation::Generation`], whose
//!   [`pipeline::plan::RoutePlan`]s (one per route: upstream pool, metric handles, scrubber
//!   slot) are built when the config is loaded. [`pipeline::access`] is the buffered access log,
//!   [`pipeline::metrics`] the Prometheus registry and its per-route handles,
//!   [`pipeline::admin`] the proxy's own endpoints (health, metrics, probes) and
//!   [`pipeline::websocket`] the upstream handshake and relay of a WebSocket session.
//! - [`config`]: the whole file composed — [`config::Config`], [`config::Route`] (a
//!   [`configkit::RouteBase`] plus the tables the features own), parsing, `check`'s lints and
//!   `toml_edit` edits. It calls each feature's `from_raw` and implements the narrow traits the
//!   features read a route through.
//! - [`features`]: one module per feature, owning its config section (raw serde type and
//!   validation) and its runtime layer, which the pipeline calls in its phase: guard, path, cors,
//!   validate, ratelimit, limit (body size), inject, sign, oauth2, scrub, transform (+ jq), admin,
//!   webhooks, static site, clients (client keys), store, websocket. What a feature needs of the
//!   generation comes through a narrow trait (`guard::Gate`, `cors::Preflight`,
//!   `store::StoreUse`). Where a feature's runtime needs the generation, the plan, metrics or the
//!   access log, that half lives in the pipeline ([`pipeline::admin`], [`pipeline::websocket`]):
//!   [`features::admin`] keeps the reserved paths, probes and readiness state,
//!   [`features::websocket`] the policy, the handshake checks and message scrubbing.
//! - [`upstream`]: the upstream client (hyper, pooled per origin, rustls), used by the pipeline
//!   and by features that call out (oauth2, sign, webhooks).
//! - [`configkit`]: the config toolkit — spans and [`configkit::ConfigError`], value templates,
//!   durations, sizes, strip lists, the `[server]` table and its access rules, the route's
//!   feature-independent part.
//! - [`http`]: leaf plumbing — body types, the one error type [`http::error::ProxyError`] with
//!   its code table, header lists, and [`http::deadline`] for the timeouts every request arms.
//! - [`secrets`]: keyring, env, file, systemd credentials; a cache of `SecretString`s.
//!
//! Secret values only ever live in `SecretString`s and sensitive header values; no error, log
//! line or `Debug` output carries one.

/// `println!` for command output that never panics: a reader that went away (`check | head -1`)
/// must not turn into a panic and exit 101. Write errors on stdout are ignored, so the command
/// finishes and its exit status still says whether it succeeded.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `print!` with the same promise as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` with the same promise as [`outln!`], for warnings on stderr.
macro_rules! eoutln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod cli;
pub mod commands;
pub mod config;
pub mod configkit;
pub mod daemon;
pub mod features;
pub mod http;
#[cfg(test)]
mod layering;
pub mod pipeline;
pub mod secrets;
pub mod upstream;

use std::process::ExitCode;

/// Exit code for a configuration error (EX_CONFIG): systemd does not restart on it.
pub const EXIT_CONFIG: u8 = 78;

/// Runs a parsed command line and maps the result to the process exit code.
pub fn run(cli: cli::Cli) -> ExitCode {
    let result = match cli.command {
        cli::Command::Serve(args) => commands::serve::run(args),
        cli::Command::Init(args) => commands::init::run(args),
        cli::Command::Check(args) => commands::check::run(args),
        cli::Command::Route(command) => commands::route::run(command),
        cli::Command::Secret(command) => commands::secret::run(command),
        cli::Command::Completions(args) => commands::completions::run(args),
        cli::Command::Client(command) => commands::client::run(command),
        // The command's own exit status, passed through.
        cli::Command::Run(args) => match commands::run::run(args) {
            Ok(code) => return ExitCode::from(code),
            Err(error) => Err(error),
        },
        cli::Command::TransformWorker => features::transform::worker::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "error: {err:#}");
            if err.chain().any(|cause| {
                cause.is::<config::ConfigError>()
                    || cause
                        .downcast_ref::<config::edit::EditError>()
                        .is_some_and(config::edit::EditError::is_config_error)
            }) {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
