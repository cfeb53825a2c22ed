//! `secretproxy check`: validate the config, then report every route and every secret with its
//! source and status. Values are fetched only to learn whether they are there and are dropped
//! (zeroized) at once; nothing about a value is printed.
//!
//! Warnings ([`config::lint`]) go to stderr with `file:line:column`; they fail the check only
//! with `--strict`.
//!
//! Exit status: a config error is a [`ConfigError`](crate::config::ConfigError) (78); a valid
//! config with a secret that is missing, unusable or whose store is unreachable is an ordinary
//! error (1), since fixing it needs no config change.

use crate::cli::CheckArgs;
use crate::commands::table::Table;
use crate::config::{self, Config};
use crate::secrets::{LookupError, SecretSource, SecretStore, SystemStore};

pub fn run(args: CheckArgs) -> anyhow::Result<()> {
    let path = config::locate(args.config.config.as_deref())?;
    let text = std::fs::read_to_string(&path).map_err(|source| config::ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let name = path.display().to_string();
    let config = Config::parse(&text, &name)?;
    let warnings = config::lint::lint(&text, &name, &config);
    for warning in &warnings {
        eoutln!("warning: {warning}");
    }
    outln!("{} is valid", path.display());
    outln!("listen {}\n", config.server.listen);
    if config.routes.is_empty() {
        outln!("no routes yet; add one with `secretproxy route add NAME --preset PRESET` (see `route add --help`)");
    } else {
        out!("{}", routes_table(&config));
    }
    outln!();
    let report = SecretReport::read(&config, &SystemStore);
    if report.rows.is_empty() {
        outln!("no secrets declared");
    } else {
        out!("{}", report.table());
    }
    if !config.oauth2.is_empty() {
        outln!();
        out!("{}", token_sources_table(&config, &report));
    }
    if config.routes.iter().any(|route| !route.signing.describe().is_empty()) {
        outln!();
        out!("{}", signers_table(&config, &report));
    }
    client_keys(&path, &config)?;
    let problems = report.problems();
    if !problems.is_empty() {
        outln!();
        // An unreachable keyring is one problem however many secrets live there: one hint.
        let mut keyring_down = false;
        for (name, source, error) in &problems {
            if matches!(source, SecretSource::Keyring { .. }) && error.is_unreachable() {
                keyring_down = true;
                outln!("{name}: {error}");
            } else {
                outln!("{name}: {error}; {}", source.how_to_fix(name, error));
            }
        }
        if keyring_down {
            outln!(
                "the keyring itself is unreachable, so `secretproxy secret set` would fail too: unlock it, or start a Secret Service (e.g. gnome-keyring) in this session; without one, declare these secrets with `env` or `file` instead"
            );
        }
        let names: Vec<&str> = problems.iter().map(|(name, _, _)| name.as_str()).collect();
        anyhow::bail!(
            "{} of {} secrets {} not available: {}",
            names.len(),
            report.rows.len(),
            if names.len() == 1 { "is" } else { "are" },
            names.join(", ")
        )
    }
    if args.strict && !warnings.is_empty() {
        anyhow::bail!(
            "{} warning{} (--strict treats warnings as errors)",
            warnings.len(),
            if warnings.len() == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// The route table as `route list` and `check` print it.
pub fn routes_table(config: &Config) -> Table {
    let mut table = Table::new(["ROUTE", "METHODS", "PATH", "UPSTREAM", "SECRETS"]);
    for route in &config.routes {
        let methods: Vec<&str> = route.methods.iter().map(http::Method::as_str).collect();
        let mut secrets: Vec<String> = route.secrets.iter().cloned().collect();
        if let Some(source) = &route.oauth2 {
            secrets.push(format!("oauth2:{source}"));
        }
        table.row([
            route.name.clone(),
            methods.join(","),
            route.path.clone(),
            route.upstream.to_string(),
            if secrets.is_empty() {
                "-".to_string()
            } else {
                secrets.join(",")
            },
        ]);
    }
    table
}

/// Each declared secret, where it comes from, and whether it can be read right now.
pub struct SecretReport {
    pub rows: Vec<SecretRow>,
}

pub struct SecretRow {
    pub name: String,
    pub source: SecretSource,
    pub status: Result<(), LookupError>,
    /// The routes that inject it, then `webhook:NAME` and `client-token` where it is used so.
    pub users: Vec<String>,
}

impl SecretReport {
    /// Asks `store` for every secret; the values are dropped immediately.
    pub fn read(config: &Config, store: &dyn SecretStore) -> SecretReport {
        let rows = config
            .secrets
            .iter()
            .map(|(name, source)| {
                let status = store.fetch(source).map(drop);
                let users = config
                    .routes_using(name)
                    .map(|r| r.name.clone())
                    .chain(
                        config
                            .webhooks
                            .iter()
                            .filter(|w| w.secret == *name)
                            .map(|w| format!("webhook:{}", w.name)),
                    )
                    .chain(
                        config
                            .oauth2
                            .iter()
                            .filter(|source| source.secrets().any(|s| s == name))
                            .map(|source| format!("oauth2:{}", source.name)),
                    )
                    .chain(
                        (config.server.access.client_token.as_deref() == Some(name.as_str()))
                            .then(|| "client-token".to_string()),
                    )
                    .collect();
                SecretRow {
                    name: name.clone(),
                    source: source.clone(),
                    status,
                    users,
                }
            })
            .collect();
        SecretReport { rows }
    }

    pub fn table(&self) -> Table {
        let mut table = Table::new(["SECRET", "SOURCE", "STATUS", "ROUTES"]);
        for row in &self.rows {
            table.row([
                row.name.clone(),
                row.source.to_string(),
                status_text(&row.status),
                if row.users.is_empty() {
                    "-".to_string()
                } else {
                    row.users.join(",")
                },
            ]);
        }
        table
    }

    /// The secrets that are not available.
    pub fn problems(&self) -> Vec<(String, SecretSource, LookupError)> {
        self.rows
            .iter()
            .filter_map(|row| {
                row.status
                    .as_ref()
                    .err()
                    .map(|e| (row.name.clone(), row.source.clone(), e.clone()))
            })
            .collect()
    }
}

/// Each `[oauth2.NAME]` token source: its endpoint, the routes using it and the state of each
/// secret it reads (present/missing), never a value. No token is minted.
pub fn token_sources_table(config: &Config, report: &SecretReport) -> Table {
    let mut table = Table::new(["TOKEN SOURCE", "TOKEN URL", "SECRETS", "ROUTES"]);
    for source in &config.oauth2 {
        let mut secrets: Vec<&str> = source.secrets().collect();
        secrets.sort_unstable();
        secrets.dedup();
        let states = secret_states(report, &secrets);
        let routes: Vec<&str> = config
            .routes
            .iter()
            .filter(|route| route.oauth2.as_deref() == Some(source.name.as_str()))
            .map(|route| route.name.as_str())
            .collect();
        table.row([
            source.name.clone(),
            source.token_url.to_string(),
            states,
            if routes.is_empty() {
                "-".to_string()
            } else {
                routes.join(",")
            },
        ]);
    }
    table
}

/// Each route's request signer (SigV4, HMAC) and client certificate (mTLS), with the state of
/// each secret it reads (present/missing), never a value.
/// The client keys of the state file next to the config (names and scopes, never a key or a
/// hash), with a warning for a key scoped to a route the config does not have. An unreadable
/// file fails the check: the daemon would keep refusing keys it cannot read.
fn client_keys(path: &std::path::Path, config: &Config) -> anyhow::Result<()> {
    let file = crate::features::clients::read_file(&crate::features::clients::state_path(path))?;
    if file.clients.is_empty() {
        return Ok(());
    }
    outln!();
    outln!("client keys (callers without one are refused except on `allow-keyless` routes from this machine):");
    out!(
        "{}",
        crate::commands::client::table(&file, std::time::SystemTime::now())
    );
    for (name, entry) in &file.clients {
        for route in entry.routes.iter().flatten() {
            if !config.routes.iter().any(|known| known.name == *route) {
                eoutln!("warning: client key `{name}` names route `{route}`, which this config does not have");
            }
        }
    }
    Ok(())
}

pub fn signers_table(config: &Config, report: &SecretReport) -> Table {
    let mut table = Table::new(["ROUTE", "SIGNER", "SECRETS"]);
    for route in &config.routes {
        for (signer, secrets) in route.signing.describe() {
            table.row([route.name.clone(), signer, secret_states(report, &secrets)]);
        }
    }
    table
}

/// `name: state` for each secret, comma-separated (`undeclared` for a name with no entry).
fn secret_states(report: &SecretReport, names: &[impl AsRef<str>]) -> String {
    names
        .iter()
        .map(|name| {
            let name = name.as_ref();
            let state = report
                .rows
                .iter()
                .find(|row| row.name == name)
                .map_or_else(|| "undeclared".to_string(), |row| status_text(&row.status));
            format!("{name}: {state}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn status_text(status: &Result<(), LookupError>) -> String {
    match status {
        Ok(()) => "present".to_string(),
        Err(LookupError::Missing { .. }) => "missing".to_string(),
        Err(LookupError::Unreachable { .. }) => "store unreachable".to_string(),
        Err(LookupError::Invalid { detail, .. }) => format!("unusable: {detail}"),
    }
}
