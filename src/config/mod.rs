//! The route table's configuration: parse (`raw`), then validate into [`Config`], whose values
//! cannot be wrong: every template names a known secret or parameter, every upstream has a fixed
//! origin, plain HTTP only where allowed.
//!
//! Parsing works on a `&str` so tests need no disk; [`load`] adds the file lookup order. This
//! module validates the top level (`[server]`, `[secrets]`, path conflicts between routes and
//! webhooks); one route's table is validated in `route.rs`, the browser boundary and limits in
//! [`access`], and every duration and byte size goes through `duration.rs` and `configkit::size`.

pub mod edit;
pub mod lint;
pub(crate) mod raw;
mod route;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use raw::{RawConfig, RawKeyring, RawSecret};
use route::validate_route;

use crate::configkit::RouteBase;
use crate::configkit::Source;
use crate::configkit::access::{self, Access, ServerLimits};
use crate::configkit::duration::{Zero, duration};
use crate::configkit::template::is_name;
pub use crate::configkit::{ConfigError, Location};

use crate::secrets::SecretSource;

/// Default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
/// Default limit for establishing the upstream connection (TCP + TLS).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit from sending the request until the upstream's response headers arrive.
/// Bodies are not limited: a stream that keeps sending is never cut off.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// The keyring service used for `keyring = "account"`.
pub const KEYRING_SERVICE: &str = "secretproxy";
/// Default time in-flight requests get to finish after SIGTERM/SIGINT.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from, for messages (`<memory>` in tests).
    pub origin: String,
    pub server: ServerConfig,
    pub secrets: BTreeMap<String, SecretSource>,
    pub routes: Vec<Route>,
    /// Inbound, signed endpoints (`[webhooks.NAME]`).
    pub webhooks: Vec<crate::features::webhooks::Webhook>,
    /// `[oauth2.NAME]` token sources.
    pub oauth2: Vec<crate::features::oauth2::OAuth2Config>,
    /// `[state]`: the shared store; `None`: every counter stays in this process.
    pub state: Option<crate::features::store::StateConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The site served at `/` when no route matches (`static-dir`).
    pub static_site: Option<crate::features::static_site::SiteConfig>,
    /// How long in-flight requests and streams may run on after SIGTERM/SIGINT.
    pub shutdown_timeout: Duration,
    /// Who may call: origins, hosts, non-browser clients, client token.
    pub access: Access,
    /// Header size and time, connection cap.
    pub limits: ServerLimits,
    /// `shutdown-delay`: how long SIGTERM reports not-ready while still serving, before the
    /// drain; `None`: the daemon's default (0 s, 5 s in a Kubernetes pod).
    pub shutdown_delay: Option<Duration>,
    /// `trusted-proxies`: whose forwarding headers name the client.
    pub trusted_proxies: crate::features::forwarded::TrustedProxies,
}

/// One entry of the route table: what every route has ([`RouteBase`], read by the features
/// through `Deref`) and the validated tables of the features that own them.
#[derive(Debug, Clone)]
pub struct Route {
    pub base: RouteBase,
    /// `response.*`: transform and header changes on the way back.
    pub response: crate::features::transform::ResponsePolicy,
    /// `request.*`: checks made before the upstream is contacted.
    pub request: crate::features::validate::RequestRules,
    /// `rate-limit`: buckets and daily quota.
    pub rate_limit: Option<crate::features::ratelimit::RateLimit>,
    /// `auth = { aws-sigv4 | hmac }` and `client-cert`/`client-key`: computed credentials.
    pub signing: crate::features::sign::Signing,
    /// `on-error`: what the shared rate limit does when `[state]` cannot answer; `None`: the
    /// `[state]` default.
    pub on_error: Option<crate::features::store::OnError>,
    /// `websocket = true`: the route relays WebSocket sessions, with these bounds.
    pub websocket: Option<crate::features::websocket::WebSocketPolicy>,
}

impl std::ops::Deref for Route {
    type Target = RouteBase;

    fn deref(&self) -> &RouteBase {
        &self.base
    }
}

impl crate::features::ratelimit::LimitedRoute for Route {
    fn name(&self) -> &str {
        &self.base.name
    }

    fn rate_limit(&self) -> Option<&crate::features::ratelimit::RateLimit> {
        self.rate_limit.as_ref()
    }

    fn on_error(&self) -> Option<crate::features::store::OnError> {
        self.on_error
    }
}

impl crate::features::websocket::WebSocketRoute for Route {
    fn websocket(&self) -> Option<&crate::features::websocket::WebSocketPolicy> {
        self.websocket.as_ref()
    }
}

impl Config {
    /// Parses and validates `text`; `name` is used in error locations.
    pub fn parse(text: &str, name: &str) -> Result<Config, ConfigError> {
        let source = Source { name, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| source.toml_error(&e))?;
        validate(raw, &source)
    }

    /// The routes that inject secret `name`.
    pub fn routes_using<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Route> {
        self.routes.iter().filter(move |route| route.secrets.contains(name))
    }

    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|route| route.name == name)
    }
}

/// The config file to use: `--config`, then `$SECRETPROXY_CONFIG`, then `./proxy.toml`, then
/// `$XDG_CONFIG_HOME/secretproxy/proxy.toml` (`~/.config` when unset).
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os("SECRETPROXY_CONFIG").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let mut tried = vec![PathBuf::from("proxy.toml")];
    if let Some(dir) = xdg_config_home() {
        tried.push(dir.join("secretproxy").join("proxy.toml"));
    }
    if let Some(found) = tried.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    Err(ConfigError::NotFound {
        tried: tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

fn xdg_config_home() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
}

/// Reads and validates the config at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Config::parse(&text, &path.display().to_string())
}

/// `listen` as users write it: `IP:PORT`, `[::1]:PORT`, `localhost:PORT` (127.0.0.1), or a port
/// alone (`8787`, `:8787`), which means 127.0.0.1. Used by `[server] listen` and `--listen`.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let port_only = text.strip_prefix(':').unwrap_or(text);
    let port_of = |port: &str| port.parse::<u16>().ok();
    if let Some(port) = port_of(port_only) {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Some((host, port)) = text.rsplit_once(':')
        && host.eq_ignore_ascii_case("localhost")
        && let Some(port) = port_of(port)
    {
        // Resolved here rather than by the resolver: `localhost` may also map to ::1 or, in a
        // broken /etc/hosts, elsewhere; loopback IPv4 is what every browser reaches.
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    Err(format!(
        "`{text}` is not a listen address; write a port (\"8787\"), \"localhost:8787\", \"127.0.0.1:8787\" or \"[::1]:8787\""
    ))
}

/// Keeps the value of `result`, or records its error and gives `None`, so validation goes on
/// and reports every mistake at once.
fn keep<T>(errors: &mut Vec<ConfigError>, result: Result<T, ConfigError>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(ConfigError::Several(more)) => {
            errors.extend(more);
            None
        }
        Err(error) => {
            errors.push(error);
            None
        }
    }
}

fn validate(raw: RawConfig, source: &Source<'_>) -> Result<Config, ConfigError> {
    let mut errors = Vec::new();
    let listen = match &raw.server.listen {
        Some(listen) => keep(
            &mut errors,
            parse_listen(listen.get_ref()).map_err(|message| source.error(listen.span(), "server.listen", message)),
        ),
        None => Some(DEFAULT_LISTEN.parse().expect("default listen address is valid")),
    };
    let shutdown_timeout = match &raw.server.shutdown_timeout {
        Some(text) => keep(
            &mut errors,
            duration(
                text,
                "server.shutdown-timeout",
                Zero::Allowed,
                Some("e.g. \"30s\", \"2m\"; \"0s\" stops at once"),
                source,
            ),
        ),
        None => Some(DEFAULT_SHUTDOWN_TIMEOUT),
    };

    let mut secrets = BTreeMap::new();
    for (name, secret) in &raw.secrets {
        let key = format!("secrets.{name}");
        if !is_name(name) {
            errors.push(source.error(
                secret.span(),
                key,
                "secret names may hold only letters, digits, `-` and `_`",
            ));
            continue;
        }
        if let Some(value) = keep(
            &mut errors,
            secret_source(name, secret.get_ref(), secret.span(), &key, source),
        ) {
            secrets.insert(name.clone(), value);
        }
    }
    // A secret whose declaration is broken was reported above; routes naming it are not
    // blamed a second time.
    let declared: BTreeSet<&String> = raw.secrets.keys().collect();

    let mut routes: Vec<Route> = Vec::new();
    let mut router = matchit::Router::new();
    // Path as inserted -> who owns it, to name both sides of a conflict.
    let mut owners: Vec<(String, String)> = Vec::new();
    let mut conflict = |path: &str, owner: String, key: String, span: std::ops::Range<usize>| -> Option<ConfigError> {
        match router.insert(path.to_string(), ()) {
            Ok(()) => {
                owners.push((path.to_string(), owner));
                None
            }
            Err(err) => {
                let other = match &err {
                    matchit::InsertError::Conflict { with } => owners
                        .iter()
                        .find(|(p, _)| p == with)
                        .or_else(|| owners.iter().find(|(p, _)| same_shape(p, with)))
                        .map(|(p, o)| format!("{o} (`{p}`)"))
                        .unwrap_or_else(|| format!("`{with}`")),
                    _ => return Some(source.error(span, key, format!("`{path}` is not a valid route path"))),
                };
                Some(
                    source
                        .error(span, key, format!("conflicts with {other}: a request could match both"))
                        .with_help(
                            "give one of them a distinct literal segment, e.g. `/api/a/{*rest}` and `/api/b/{*rest}`",
                        ),
                )
            }
        }
    };
    // In file order, so a conflict blames the route written later (the one just added).
    let mut in_file_order: Vec<_> = raw.routes.iter().collect();
    in_file_order.sort_by_key(|(_, route)| route.span().start);
    for (name, route) in in_file_order {
        let result = validate_route(name, route.get_ref(), route.span(), &secrets, source);
        let result = match result {
            Err(ConfigError::Invalid { ref message, .. })
                if message.starts_with("unknown secret `")
                    && declared.iter().any(|d| message == &format!("unknown secret `{d}`")) =>
            {
                continue;
            }
            other => other,
        };
        let Some(route) = keep(&mut errors, result) else {
            continue;
        };
        let span = raw.routes[name].get_ref().path.span();
        if let Some(error) = conflict(
            &route.path,
            format!("route `{name}`"),
            format!("routes.{name}.path"),
            span,
        ) {
            errors.push(error);
        }
        routes.push(route);
    }

    routes.sort_by(|a, b| a.name.cmp(&b.name));

    let mut webhooks = Vec::new();
    for (name, hook) in &raw.webhooks {
        let hook_span = hook.get_ref().path.span();
        let Some(hook) = keep(
            &mut errors,
            crate::features::webhooks::Webhook::from_raw(name, hook.get_ref(), &secrets, source),
        ) else {
            continue;
        };
        if let Some(error) = conflict(
            &hook.path,
            format!("webhook `{name}`"),
            format!("webhooks.{name}.path"),
            hook_span,
        ) {
            errors.push(error);
        }
        webhooks.push(hook);
    }
    let static_site = keep(
        &mut errors,
        crate::features::static_site::SiteConfig::from_raw(&raw.server, source),
    )
    .flatten();
    if let Some(site) = &static_site
        && let Some(name) = site.serves_any_of(&secrets)
    {
        let span = raw.server.static_dir.as_ref().map_or(0..0, |d| d.span());
        errors.push(
            source
                .error(
                    span,
                    "server.static-dir",
                    format!("the file of secret `{name}` is inside it, so it would be served"),
                )
                .with_help("keep secret files outside the served directory (e.g. in ~/.config/secretproxy)"),
        );
    }
    let mut oauth2 = Vec::new();
    for (name, table) in &raw.oauth2 {
        if let Some(config) = keep(
            &mut errors,
            crate::features::oauth2::OAuth2Config::from_raw(name, table, &secrets, source),
        ) {
            oauth2.push(config);
        }
    }
    for route in &routes {
        if let Some(name) = &route.oauth2
            && !raw.oauth2.contains_key(name)
        {
            let span = raw.routes[&route.name]
                .get_ref()
                .auth
                .as_ref()
                .map_or(0..0, |a| a.span());
            errors.push(
                source
                    .error(
                        span,
                        format!("routes.{}.auth", route.name),
                        format!("unknown token source `{name}`"),
                    )
                    .with_help(format!("declare it in an `[oauth2.{name}]` table")),
            );
        }
    }
    let access = keep(&mut errors, access::access(&raw.server, &secrets, source));
    if let (Some(access), Some(listen)) = (&access, listen)
        && let Some(message) = access.listen_refusal(listen)
    {
        let span = raw.server.listen.as_ref().map_or(0..0, |l| l.span());
        errors.push(source.error(span, "server.listen", message));
    }
    if let Some(access) = &access {
        for route in &routes {
            if let Some(narrowed) = &route.allowed_origins
                && let Some(extra) = narrowed.iter().find(|o| !access.allowed_origins.contains(o))
            {
                let span = raw.routes[&route.name]
                    .get_ref()
                    .allowed_origins
                    .as_ref()
                    .map_or(0..0, |l| l.span());
                errors.push(
                    source
                        .error(
                            span,
                            format!("routes.{}.allowed-origins", route.name),
                            format!("`{extra}` is not in `[server] allowed-origins`; a route may only narrow it"),
                        )
                        .with_help("add it to `[server] allowed-origins` too"),
                );
            }
        }
    }
    let limits = keep(&mut errors, access::limits(&raw.server, source));
    let state = match &raw.state {
        Some(table) => keep(
            &mut errors,
            crate::features::store::StateConfig::from_raw(table, &secrets, source),
        ),
        None => None,
    };
    if raw.state.is_none() {
        // `on-error` without a store would silently do nothing.
        let stray = raw
            .routes
            .iter()
            .filter_map(|(name, r)| {
                r.get_ref()
                    .on_error
                    .as_ref()
                    .map(|v| (format!("routes.{name}.on-error"), v))
            })
            .chain(raw.webhooks.iter().filter_map(|(name, w)| {
                w.get_ref()
                    .on_error
                    .as_ref()
                    .map(|v| (format!("webhooks.{name}.on-error"), v))
            }));
        for (key, value) in stray {
            errors.push(
                source
                    .error(
                        value.span(),
                        key,
                        "`on-error` applies to the shared store, and there is no `[state]`",
                    )
                    .with_help("add `[state] url = \"redis://...\"` or remove the key"),
            );
        }
    }
    let shutdown_delay = match &raw.server.shutdown_delay {
        Some(text) => keep(
            &mut errors,
            duration(
                text,
                "server.shutdown-delay",
                Zero::Allowed,
                Some("e.g. \"5s\" (Kubernetes: longer than the endpoints take to drop the pod)"),
                source,
            ),
        ),
        None => None,
    };
    let trusted_proxies = keep(
        &mut errors,
        crate::features::forwarded::TrustedProxies::from_raw(raw.server.trusted_proxies.as_ref(), source),
    );

    if let Some(error) = ConfigError::collect(errors) {
        return Err(error);
    }
    let (Some(listen), Some(shutdown_timeout), Some(access), Some(limits), Some(trusted_proxies)) =
        (listen, shutdown_timeout, access, limits, trusted_proxies)
    else {
        unreachable!("every missing value recorded an error");
    };
    Ok(Config {
        origin: source.name.to_string(),
        server: ServerConfig {
            listen,
            static_site,
            shutdown_timeout,
            access,
            limits,
            shutdown_delay,
            trusted_proxies,
        },
        secrets,
        routes,
        webhooks,
        oauth2,
        state,
    })
}

/// True when two matchit paths differ only in their parameter names (`/a/{id}`, `/a/{x}`).
fn same_shape(a: &str, b: &str) -> bool {
    let shape = |p: &str| -> Vec<String> {
        p.split('/')
            .map(|segment| {
                if segment.starts_with("{*") {
                    "{*}".to_string()
                } else if segment.starts_with('{') {
                    "{}".to_string()
                } else {
                    segment.to_string()
                }
            })
            .collect()
    };
    shape(a) == shape(b)
}

fn secret_source(
    name: &str,
    raw: &RawSecret,
    span: std::ops::Range<usize>,
    key: &str,
    source: &Source<'_>,
) -> Result<SecretSource, ConfigError> {
    let given = [
        raw.keyring.is_some(),
        raw.env.is_some(),
        raw.file.is_some(),
        raw.credential.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(source
            .error(span, key, "a secret needs exactly one source")
            .with_help(format!(
                "write one of `keyring = \"{name}\"`, `env = \"VAR\"`, `file = \"/path\"` or `credential = \"{name}\"`"
            )));
    }
    let non_empty = |value: &toml::Spanned<String>, field: &str| -> Result<String, ConfigError> {
        if value.get_ref().trim().is_empty() {
            Err(source.error(value.span(), format!("{key}.{field}"), "may not be empty"))
        } else {
            Ok(value.get_ref().clone())
        }
    };
    if let Some(keyring) = &raw.keyring {
        let (service, account) = match keyring.get_ref() {
            RawKeyring::Account(account) => (KEYRING_SERVICE.to_string(), account.clone()),
            RawKeyring::Entry(entry) => (entry.service.clone(), entry.account.clone()),
        };
        if service.is_empty() || account.is_empty() {
            return Err(source.error(
                keyring.span(),
                format!("{key}.keyring"),
                "service and account may not be empty",
            ));
        }
        return Ok(SecretSource::Keyring { service, account });
    }
    if let Some(var) = &raw.env {
        return Ok(SecretSource::Env(non_empty(var, "env")?));
    }
    if let Some(id) = &raw.credential {
        let value = non_empty(id, "credential")?;
        // systemd credential names are file names inside $CREDENTIALS_DIRECTORY.
        if value.contains('/') || value == "." || value == ".." {
            return Err(source
                .error(
                    id.span(),
                    format!("{key}.credential"),
                    "a credential ID is a file name, not a path",
                )
                .with_help("use the ID given to `LoadCredential=ID:...`, e.g. `credential = \"openai\"`"));
        }
        return Ok(SecretSource::Credential(value));
    }
    let file = raw.file.as_ref().expect("exactly one source is set");
    Ok(SecretSource::File(PathBuf::from(non_empty(file, "file")?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_ca_file_is_read_next_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "not checked here").unwrap();
        let config_path = dir.path().join("proxy.toml");
        let text = "[routes.a]\npath = \"/a\"\nupstream = \"https://x.example/\"\nca-file = \"ca.pem\"\n";
        let config = Config::parse(text, config_path.to_str().unwrap()).unwrap();
        assert_eq!(
            config.routes[0].ca_file.as_deref(),
            Some(dir.path().join("ca.pem").as_path())
        );
        let error = Config::parse(text, "elsewhere/proxy.toml").unwrap_err().to_string();
        assert!(
            error.contains("routes.a.ca-file: `ca.pem` is not a readable file"),
            "{error}"
        );
    }

    /// The error `text` fails with, as printed (file `proxy.toml`).
    pub(super) fn err(text: &str) -> String {
        Config::parse(text, "proxy.toml").unwrap_err().to_string()
    }

    /// One declared secret, `gh`.
    pub(super) const BASE: &str = "[secrets.gh]\nenv = \"GH\"\n";

    #[test]
    fn unknown_key_names_location_and_suggests() {
        let text = format!("{BASE}[routes.a]\npath = \"/a\"\nupstrem = \"https://x/\"\n");
        let message = err(&text);
        assert!(
            message.starts_with("proxy.toml:5:1: routes.a.upstrem: unknown field `upstrem`"),
            "{message}"
        );
        assert!(message.contains("did you mean `upstream`?"), "{message}");
    }

    #[test]
    fn duplicate_paths_conflict() {
        let message = err(
            "[routes.a]\npath = \"/a/{id}\"\nupstream = \"https://x/\"\n[routes.b]\npath = \"/a/{other}\"\nupstream = \"https://y/\"\n",
        );
        assert_eq!(
            message,
            "proxy.toml:5:8: routes.b.path: conflicts with route `a` (`/a/{id}`): a request could match both\n  help: give one of them a distinct literal segment, e.g. `/api/a/{*rest}` and `/api/b/{*rest}`"
        );
        // The route written later is the one blamed, whatever the names.
        let message = err(
            "[routes.b]\npath = \"/a/{id}\"\nupstream = \"https://x/\"\n[routes.a]\npath = \"/a/{other}\"\nupstream = \"https://y/\"\n",
        );
        assert!(
            message.starts_with("proxy.toml:5:8: routes.a.path: conflicts with route `b`"),
            "{message}"
        );
    }

    #[test]
    fn secret_needs_one_source() {
        assert!(err("[secrets.a]\nenv = \"A\"\nfile = \"/x\"\n").contains("exactly one source"));
        assert!(err("[secrets.a]\ncredential = \"../etc/x\"\n").contains("not a path"));
        assert_eq!(
            Config::parse("[secrets.a]\ncredential = \"openai\"\n", "t")
                .unwrap()
                .secrets["a"],
            SecretSource::Credential("openai".into())
        );
        let config = Config::parse(
            "[secrets.a]\nkeyring = \"acct\"\n[secrets.b]\nkeyring = { service = \"gh\", account = \"me\" }\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            config.secrets["a"],
            SecretSource::Keyring {
                service: "secretproxy".into(),
                account: "acct".into()
            }
        );
        assert_eq!(
            config.secrets["b"],
            SecretSource::Keyring {
                service: "gh".into(),
                account: "me".into()
            }
        );
    }

    #[test]
    fn shutdown_timeout_is_a_duration() {
        let config = Config::parse("[server]\nshutdown-timeout = \"2m\"\n", "t").unwrap();
        assert_eq!(config.server.shutdown_timeout, Duration::from_secs(120));
        assert_eq!(
            Config::parse("", "t").unwrap().server.shutdown_timeout,
            DEFAULT_SHUTDOWN_TIMEOUT
        );
        assert!(
            err("[server]\nshutdown-timeout = \"soon\"\n")
                .starts_with("proxy.toml:2:20: server.shutdown-timeout: `soon` is not a duration")
        );
    }
}
