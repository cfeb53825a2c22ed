//! Command-line types (clap derive) only; behaviour lives in `commands`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::daemon::telemetry::LogFormat;

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
    /// Write a commented starter config.
    #[command(
        after_help = "Writes --config PATH, else $SECRETPROXY_CONFIG, else ./proxy.toml.\n\nExamples:\n  secretproxy init\n  secretproxy init --config ~/.config/secretproxy/proxy.toml\n  secretproxy init --force   # replace an existing file"
    )]
    Init(InitArgs),
    /// Validate the config and report every route and secret (values are never shown).
    #[command(
        after_help = "Warnings (on stderr, with file:line:column): `$name` or `{name}` where `${name}` was meant,\n`${param}` in an upstream, a token typed into the config, `Bearer ` with nothing after it,\nsecrets no route uses, routes that inject nothing, `*` in a path.\n\nExit status: 0 when the config is valid and every secret is present (warnings allowed unless\n--strict), 1 when a secret is missing or its store unreachable, or on warnings with --strict,\n78 when the config is invalid (every error is listed).\n\nExamples:\n  secretproxy check\n  secretproxy check --strict\n  secretproxy check --config /etc/secretproxy/proxy.toml"
    )]
    Check(CheckArgs),
    /// List, show, add or remove routes; comments and formatting in the file are kept.
    #[command(
        subcommand,
        after_help = "Examples:\n  secretproxy route list\n  secretproxy route show github\n  secretproxy route add github --path '/api/github/{*rest}' --upstream 'https://api.github.com/{rest}' --header 'Authorization: Bearer ${github}'\n  secretproxy route remove github"
    )]
    Route(RouteCommand),
    /// Store, delete or list secrets in the OS keyring.
    #[command(
        subcommand,
        after_help = "Values are read from the terminal without echo, or from stdin when it is piped; never from\nan argument.\n\nExamples:\n  secretproxy secret set github\n  printf %s \"$TOKEN\" | secretproxy secret set github\n  secretproxy secret list\n  secretproxy secret delete github"
    )]
    Secret(SecretCommand),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  secretproxy completions bash > ~/.local/share/bash-completion/completions/secretproxy\n  secretproxy completions zsh > ~/.zfunc/_secretproxy\n  secretproxy completions fish > ~/.config/fish/completions/secretproxy.fish"
    )]
    Completions(CompletionsArgs),
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

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Where to write [default: $SECRETPROXY_CONFIG, else ./proxy.toml]
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Replace an existing file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Treat warnings (likely mistakes that are still valid) as errors: exit 1.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// A table of every route: name, methods, path, upstream, secrets used.
    #[command(after_help = "Examples:\n  secretproxy route list\n  secretproxy route list --config ./proxy.toml")]
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Everything about one route, with secret names (never values).
    #[command(after_help = "Examples:\n  secretproxy route show github")]
    Show {
        /// The route's name (`[routes.NAME]`).
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Add `[routes.NAME]`; the result is validated before the file is written.
    #[command(
        after_help = "Templates: `${secret}` is a secret from [secrets]; `{param}` in the upstream is a path parameter.\n\nExamples:\n  secretproxy route add github --path '/api/github/{*rest}' --upstream 'https://api.github.com/{rest}' \\\n      --header 'Authorization: Bearer ${github}'\n  secretproxy route add weather --path /api/weather \\\n      --upstream https://api.openweathermap.org/data/2.5/weather --query 'appid=${owm}'\n  secretproxy route add stripe --path '/api/stripe/{*rest}' --upstream 'https://api.stripe.com/{rest}' \\\n      --method GET --method POST --header 'Authorization: Bearer ${stripe}'"
    )]
    Add(RouteAddArgs),
    /// Remove `[routes.NAME]` and the comments directly above it.
    #[command(after_help = "Examples:\n  secretproxy route remove github")]
    Remove {
        /// The route's name (`[routes.NAME]`).
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, clap::Args)]
pub struct RouteAddArgs {
    /// The new route's name (letters, digits, `-`, `_`).
    pub name: String,
    /// Client path, matchit syntax: `/api/{id}`, `/api/{*rest}`.
    #[arg(long, value_name = "PATH")]
    pub path: String,
    /// Upstream URL template; `{param}` may appear in its path only.
    #[arg(long, value_name = "URL")]
    pub upstream: String,
    /// An allowed method; repeat for several [default: GET and HEAD].
    #[arg(long = "method", value_name = "METHOD")]
    pub methods: Vec<String>,
    /// An injected header, `Name: template`; repeatable.
    #[arg(long = "header", value_name = "NAME: TEMPLATE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// An injected query parameter, `name=template`; repeatable.
    #[arg(long = "query", value_name = "NAME=TEMPLATE", value_parser = parse_query)]
    pub query: Vec<(String, String)>,
    #[command(flatten)]
    pub config: ConfigArg,
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| "expected `Name: template`, e.g. `Authorization: Bearer ${github}`".to_string())?;
    let name = name.trim();
    if name.is_empty() {
        return Err("the header name is empty".to_string());
    }
    Ok((name.to_string(), value.trim().to_string()))
}

fn parse_query(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| "expected `name=template`, e.g. `appid=${owm}`".to_string())?;
    if name.is_empty() {
        return Err("the parameter name is empty".to_string());
    }
    Ok((name.to_string(), value.to_string()))
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store a keyring secret's value: prompted without echo, or read from piped stdin.
    #[command(
        after_help = "Only secrets with a `keyring` source can be set; for `env` and `file` sources the command says\nwhat to set instead. One trailing newline of piped input is dropped.\n\nExamples:\n  secretproxy secret set github\n  secretproxy secret set github < token.txt\n  pass show github-token | secretproxy secret set github"
    )]
    Set {
        /// The secret's name (`[secrets.NAME]`).
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Delete a keyring secret's value.
    #[command(after_help = "Examples:\n  secretproxy secret delete github")]
    Delete {
        /// The secret's name (`[secrets.NAME]`).
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Every secret the config declares: its source, present or missing, and the routes using it.
    #[command(after_help = "Examples:\n  secretproxy secret list")]
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to generate for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}
