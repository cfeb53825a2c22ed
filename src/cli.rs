//! Command-line types (clap derive) only; behaviour lives in `commands`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::daemon::telemetry::LogFormat;

/// Keeps API keys out of frontends: routes localhost paths to HTTPS APIs and injects secrets
/// from the OS keyring, the environment or files.
#[derive(Debug, Parser)]
// No wrapping by clap: an example wrapped mid-command would not paste. The terminal soft-wraps
// long lines for display, and copying them gives back the whole command.
#[command(name = "secretproxy", version, about, long_about = None, term_width = 0)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground.
    #[command(
        after_help = "Examples:\n  secretproxy serve\n  secretproxy serve --config ./proxy.toml --listen 9000\n  RUST_LOG=debug secretproxy serve --log-format json"
    )]
    Serve(ServeArgs),
    /// Write a commented starter config.
    #[command(
        after_help = "Writes --config PATH, else $SECRETPROXY_CONFIG, else ./proxy.toml. On a terminal it asks for\nthe page origin and static directory unless they are given as flags.\n\nExamples:\n  secretproxy init\n  secretproxy init --origin http://localhost:5173\n  secretproxy init --static-dir dist --config ~/.config/secretproxy/proxy.toml\n  secretproxy init --force   # replace an existing file"
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
        after_help = "Examples:\n  secretproxy route list\n  secretproxy route show github\n  secretproxy route add github --path '/api/github/{*rest}' --upstream 'https://api.github.com/{rest}' --bearer github\n  secretproxy route test github /api/github/user\n  secretproxy route remove github"
    )]
    Route(RouteCommand),
    /// Store, delete or list secrets in the OS keyring.
    #[command(
        subcommand,
        after_help = "Values are read from the terminal without echo, or from stdin when it is piped; never from\nan argument.\n\nExamples:\n  secretproxy secret set github\n  printf %s \"$TOKEN\" | secretproxy secret set github\n  secretproxy secret list\n  secretproxy secret delete github"
    )]
    Secret(SecretCommand),
    /// Issue, list or revoke client keys: per app or agent, scoped to routes, limited, revocable.
    #[command(
        subcommand,
        after_help = "Keys are shown once; only their SHA-256 is kept, in <config-stem>.clients.toml next to the\nconfig (mode 0600). A running daemon picks up add and revoke within a second.\n\nExamples:\n  secretproxy client add agent --routes openai,github --rate 60/m --daily 1000 --expires 7d\n  secretproxy client list\n  secretproxy client revoke agent"
    )]
    Client(ClientCommand),
    /// Run a command with base URLs pointing at the proxy and a fresh client key instead of real keys.
    #[command(
        after_help = "The command gets OPENAI_BASE_URL, ANTHROPIC_BASE_URL, GITHUB_API_URL, ... for the routes made\nwith presets, SECRETPROXY_URL and SECRETPROXY_TOKEN, and the SDK key variables set to a client key\nthat is scoped to --routes and revoked when the command exits. Variables holding the real\nsecrets are removed from its environment. A running daemon is used, else one is started for\nthe command's lifetime. The exit status is the command's (128+N when killed by signal N).\n\nExamples:\n  secretproxy run -- python agent.py\n  secretproxy run --routes openai -- aider\n  secretproxy run --config ./proxy.toml -- npm test"
    )]
    Run(RunArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  secretproxy completions bash > ~/.local/share/bash-completion/completions/secretproxy\n  secretproxy completions zsh > ~/.zfunc/_secretproxy\n  secretproxy completions fish > ~/.config/fish/completions/secretproxy.fish"
    )]
    Completions(CompletionsArgs),
    /// Internal: a sandboxed transform worker the daemon starts (stdin/stdout frames).
    #[command(name = "__transform-worker", hide = true)]
    TransformWorker,
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
    /// Listen address, overriding `[server] listen`: `8787`, `:8787`, `localhost:8787`,
    /// `127.0.0.1:8787` or `[::1]:8787` (a port alone means 127.0.0.1).
    #[arg(long, value_name = "ADDR", value_parser = crate::config::parse_listen)]
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
    /// The origin of the page that calls the proxy, e.g. `http://localhost:5173` (a Vite dev
    /// server); repeatable. Written to `[server] allowed-origins`.
    #[arg(long = "origin", value_name = "ORIGIN")]
    pub origins: Vec<String>,
    /// A directory of built pages to serve at `/` (same origin as the routes), e.g. `dist`.
    #[arg(long, value_name = "DIR")]
    pub static_dir: Option<String>,
    /// Never ask, even on a terminal.
    #[arg(long)]
    pub no_input: bool,
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
        after_help = "Templates: `${secret}` is a secret from [secrets]; `{param}` in the upstream is a path parameter.\nQuote templates with single quotes so the shell leaves `${...}` alone.\n\nPresets (path /api/NAME/{*rest}, the provider's upstream and auth; the secret is named after the\npreset and declared in the keyring when missing): openai, anthropic, github, stripe, gemini,\nmistral, sendgrid, openweathermap.\n\nExamples:\n  secretproxy route add openai --preset openai\n  secretproxy route add github --path '/api/github/{*rest}' --upstream 'https://api.github.com/{rest}' --bearer github\n  secretproxy route add weather --path /api/weather --upstream https://api.openweathermap.org/data/2.5/weather --query 'appid=${owm}'\n  secretproxy route add stripe --path '/api/stripe/{*rest}' --upstream 'https://api.stripe.com/{rest}' --methods GET,POST --bearer stripe\n  secretproxy route add lan --path '/api/lan/{*rest}' --upstream 'http://192.168.1.20/{rest}' --allow-http --header 'X-Key=${lan}'"
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
    /// Show the request a call would send upstream (secrets masked, each value's source named);
    /// nothing is sent unless --send.
    #[command(
        after_help = "Examples:\n  secretproxy route test github\n  secretproxy route test github /api/github/user\n  secretproxy route test openai /api/openai/v1/chat/completions --method POST\n  secretproxy route test github /api/github/user --send"
    )]
    Test(RouteTestArgs),
}

#[derive(Debug, clap::Args)]
pub struct RouteAddArgs {
    /// The new route's name (letters, digits, `-`, `_`).
    pub name: String,
    /// Start from a provider's path, upstream, methods and auth (see the list below).
    #[arg(long, value_name = "PRESET")]
    pub preset: Option<String>,
    /// The secret a preset injects [default: the preset's name].
    #[arg(long, value_name = "SECRET", requires = "preset")]
    pub secret: Option<String>,
    /// Client path, matchit syntax: `/api/{id}`, `/api/{*rest}` [default with --preset: /api/NAME/{*rest}].
    #[arg(long, value_name = "PATH", required_unless_present = "preset")]
    pub path: Option<String>,
    /// Upstream URL template; `{param}` may appear in its path only.
    #[arg(long, value_name = "URL", required_unless_present = "preset")]
    pub upstream: Option<String>,
    /// Allowed methods, comma-separated or repeated [default: GET and HEAD, or the preset's].
    #[arg(long = "methods", alias = "method", value_name = "GET,POST", value_delimiter = ',')]
    pub methods: Vec<String>,
    /// Send `Authorization: Bearer ${SECRET}`; the secret is declared (keyring) when missing.
    #[arg(long, value_name = "SECRET")]
    pub bearer: Option<String>,
    /// An injected header, `NAME=TEMPLATE` or `NAME: TEMPLATE`; repeatable.
    #[arg(long = "header", value_name = "NAME=TEMPLATE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// An injected query parameter, `NAME=TEMPLATE`; repeatable.
    #[arg(long = "query", value_name = "NAME=TEMPLATE", value_parser = parse_query)]
    pub query: Vec<(String, String)>,
    /// Allow a plain `http://` upstream that is not on this machine (the secret travels
    /// unencrypted; only for a trusted network).
    #[arg(long)]
    pub allow_http: bool,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, clap::Args)]
pub struct RouteTestArgs {
    /// The route's name (`[routes.NAME]`).
    pub name: String,
    /// A client path the route matches, with an optional query, e.g. `/api/github/user?per_page=5`
    /// [default: the route's path with its parameters left as placeholders].
    pub path: Option<String>,
    /// The request method [default: the route's first method].
    #[arg(long, short = 'X', value_name = "METHOD")]
    pub method: Option<String>,
    /// Actually send the request (without a body) and print the response status and headers.
    #[arg(long)]
    pub send: bool,
    #[command(flatten)]
    pub config: ConfigArg,
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    // A header name holds neither `:` nor `=`, so whichever comes first ends it.
    let (name, value) = text
        .find([':', '='])
        .map(|at| (&text[..at], &text[at + 1..]))
        .ok_or_else(|| "expected `NAME=TEMPLATE`, e.g. `Authorization=Bearer ${github}`".to_string())?;
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
    /// Store a keyring secret's value (prompted without echo, or read from piped stdin), or
    /// declare where a secret comes from; a secret missing from the config is declared first.
    #[command(
        after_help = "With --keyring (the default for a secret the config does not declare yet) the value is\nstored in the OS keyring. --env and --file only declare the source in the config: the value\nis whatever the daemon finds there. One trailing newline of piped input is dropped.\n\nExamples:\n  secretproxy secret set github\n  secretproxy secret set github --keyring work-github < token.txt\n  pass show github-token | secretproxy secret set github\n  secretproxy secret set stripe --env STRIPE_SECRET_KEY\n  secretproxy secret set mapbox --file ~/.config/secretproxy/mapbox.token"
    )]
    Set(SecretSetArgs),
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
#[group(id = "source", multiple = false)]
pub struct SecretSetArgs {
    /// The secret's name (`[secrets.NAME]`).
    pub name: String,
    /// Keyring source: store the value under ACCOUNT [default: NAME] of service `secretproxy`.
    #[arg(long, value_name = "ACCOUNT", num_args = 0..=1, default_missing_value = "", group = "source")]
    pub keyring: Option<String>,
    /// Environment source: the daemon reads the value from variable VAR.
    #[arg(long, value_name = "VAR", group = "source")]
    pub env: Option<String>,
    /// File source: the daemon reads the value from PATH (one trailing newline trimmed).
    #[arg(long, value_name = "PATH", group = "source")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to generate for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Issue a key for client NAME; the key is printed once, alone on the last line.
    #[command(
        after_help = "RATE is N/PERIOD: 60/m, 10/s, 1000/h, 5/30s. DURATION: 30m, 12h, 7d, 1month.\n\nExamples:\n  secretproxy client add agent --routes openai\n  secretproxy client add ci --rate 60/m --daily 1000 --expires 30d\n  KEY=$(secretproxy client add notebook | tail -n1)"
    )]
    Add(ClientAddArgs),
    /// Every client: routes, limits, expiry, creation time (never a key or hash).
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Revoke client NAME's key; a running daemon refuses it within a second.
    Revoke {
        /// The client's name.
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, clap::Args)]
pub struct ClientAddArgs {
    /// The client's name (letters, digits, `-`, `_`, `.`), shown in logs and metrics.
    pub name: String,
    /// The routes the key may use, comma-separated [default: every route].
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub routes: Vec<String>,
    /// The key's own rate limit, N/PERIOD (e.g. 60/m).
    #[arg(long, value_name = "N/PERIOD")]
    pub rate: Option<String>,
    /// Requests per UTC day.
    #[arg(long, value_name = "N")]
    pub daily: Option<u64>,
    /// How long the key is valid (e.g. 12h, 7d).
    #[arg(long, value_name = "DURATION")]
    pub expires: Option<String>,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The routes the command may use, comma-separated [default: every route].
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub routes: Vec<String>,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}
