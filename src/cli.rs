//! Command-line types (clap derive) only; behaviour lives in `commands`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;

/// Keeps API keys out of frontends: routes localhost paths to HTTPS APIs and injects secrets
/// from the OS keyring, the environment or files.
#[derive(Debug, Parser)]
#[command(name = "secretproxy", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground.
    #[command(
        after_help = "Examples:\n  secretproxy serve\n  secretproxy serve --config ./proxy.toml --listen 127.0.0.1:9000\n  RUST_LOG=debug secretproxy serve --log-format json"
    )]
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Config file [default: $SECRETPROXY_CONFIG, ./proxy.toml, $XDG_CONFIG_HOME/secretproxy/proxy.toml]
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Listen address, overriding `[server] listen`.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Log line format.
    #[arg(long, value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
}
