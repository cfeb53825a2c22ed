//! secretproxy: a local daemon that keeps API keys out of frontends.
//!
//! A request flows through the crate like this:
//!
//! 1. [`server`] accepts a connection (hyper, HTTP/1.1, with header size/time and connection
//!    limits), follows its raw request framing ([`framing`]) and hands each request to [`proxy`].
//! 2. [`proxy`] takes the current [`generation::Generation`] — the validated [`config`], its
//!    [`routes::RouteTable`], its [`secrets::SecretCache`] and HTTPS clients —, runs the request
//!    guard (path, `Host`, `Origin`, `Sec-Fetch-Site`, client token; [`proxy::guard`]), answers
//!    CORS preflights itself ([`proxy::cors`]), and matches the path and method.
//! 3. The route's secrets come from the cache (OS keyring, environment or file, see
//!    [`secrets`]); the upstream URL, query and headers are built with the secrets injected.
//! 4. The request streams to the upstream (reqwest + rustls) within the route's body limit; the
//!    response streams back with hop-by-hop, cookie and upstream CORS headers removed and echoed
//!    secrets redacted ([`proxy::scrub`]); an access line is logged when it ends.
//!
//! [`cli`] holds the command-line types, [`commands`] one module per subcommand, and
//! [`telemetry`] the logging setup. Secret values only ever live in `SecretString`s and
//! sensitive header values; no error, log line or `Debug` output carries one.

pub mod cli;
pub mod commands;
pub mod config;
pub mod framing;
pub mod generation;
pub mod proxy;
pub mod routes;
pub mod secrets;
pub mod server;
pub mod telemetry;

use std::process::ExitCode;

/// Exit code for a configuration error (EX_CONFIG): systemd does not restart on it.
pub const EXIT_CONFIG: u8 = 78;

/// Runs a parsed command line and maps the result to the process exit code.
pub fn run(cli: cli::Cli) -> ExitCode {
    let result = match cli.command {
        cli::Command::Serve(args) => commands::serve::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            if err.downcast_ref::<config::ConfigError>().is_some() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
