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
//! Paths under `/_secretproxy` never reach step 2: [`admin`] answers them (health, [`metrics`])
//! to loopback clients only. A `[webhooks.NAME]` path is answered by [`webhooks`] (signature
//! verified, then forwarded to a loopback target), and a `GET`/`HEAD` that no route matches by
//! [`static_site`] when `static-dir` is set. Under systemd, [`notify`] reports readiness, reloads
//! and shutdown. A running daemon swaps in a new generation when its config file changes or on
//! SIGHUP ([`reload`]); SIGTERM/SIGINT drain in-flight requests before exit ([`shutdown`],
//! [`server`]).
//!
//! [`cli`] holds the command-line types, [`commands`] one module per subcommand, and
//! [`telemetry`] the logging setup. Secret values only ever live in `SecretString`s and
//! sensitive header values; no error, log line or `Debug` output carries one.

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
pub mod daemon;
pub mod features;
pub mod http;
pub mod pipeline;
pub mod secrets;

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
