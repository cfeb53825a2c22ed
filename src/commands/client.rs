//! `secretproxy client add|list|revoke`: the client keys of the state file next to the config
//! (see [`crate::features::clients`]).
//!
//! `add` prints the key exactly once, alone on the last line of stdout; what is stored is its
//! SHA-256. `list` shows names, scopes, limits and times, never a key or a hash. A running
//! daemon watches the file, so both `add` and `revoke` take effect within a second.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::cli::{ClientAddArgs, ClientCommand};
use crate::commands::table::Table;
use crate::config::{self, Config};
use crate::features::clients::{self, ClientEntry};

pub fn run(command: ClientCommand) -> anyhow::Result<()> {
    match command {
        ClientCommand::Add(args) => add(args),
        ClientCommand::List { config } => list(&config::locate(config.config.as_deref())?),
        ClientCommand::Revoke { name, config } => {
            let path = config::locate(config.config.as_deref())?;
            revoke(&path, &name)?;
            outln!("revoked client `{name}`; a running daemon refuses its key within a second");
            Ok(())
        }
    }
}

/// What a new key may do, checked against the config.
pub struct NewClient {
    pub name: String,
    pub routes: Vec<String>,
    pub rate: Option<String>,
    pub daily: Option<u64>,
    pub expires: Option<std::time::Duration>,
}

/// Adds client `new` to the state file of the config at `config_path` and returns its key.
/// The config must be valid and name every route in the scope.
pub fn add_client(
    config_path: &Path,
    config: &Config,
    new: &NewClient,
) -> anyhow::Result<(zeroize::Zeroizing<String>, PathBuf)> {
    if !clients::is_client_name(&new.name) {
        anyhow::bail!(
            "`{}` is not a client name: use up to 64 letters, digits, `-`, `_` and `.`",
            new.name
        );
    }
    for route in &new.routes {
        if config.route(route).is_none() {
            let known: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
            anyhow::bail!(
                "no route `{route}` in {}; routes: {}",
                config.origin,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            );
        }
    }
    if let Some(rate) = &new.rate {
        clients::parse_rate(rate).map_err(anyhow::Error::msg)?;
    }
    if new.daily == Some(0) {
        anyhow::bail!("--daily must be at least 1");
    }
    let now = SystemTime::now();
    let expires = match new.expires {
        Some(after) => Some(
            now.checked_add(after)
                .ok_or_else(|| anyhow::anyhow!("--expires is too far in the future"))?,
        ),
        None => None,
    };
    let key = clients::new_key()?;
    let entry = ClientEntry {
        sha256: hex::encode(clients::hash_key(key.as_bytes())),
        routes: (!new.routes.is_empty()).then(|| new.routes.clone()),
        rate: new.rate.clone(),
        daily: new.daily,
        expires: expires.map(clients::timestamp),
        created: clients::timestamp(now),
    };
    let state = clients::state_path(config_path);
    clients::update(&state, |file| {
        if file.clients.contains_key(&new.name) {
            anyhow::bail!(
                "client `{}` exists; revoke it first (`secretproxy client revoke {}`) to issue a new key",
                new.name,
                new.name
            );
        }
        file.clients.insert(new.name.clone(), entry);
        Ok(())
    })?;
    Ok((key, state))
}

/// Removes client `name` from the state file of the config at `config_path`.
pub fn revoke(config_path: &Path, name: &str) -> anyhow::Result<()> {
    let state = clients::state_path(config_path);
    clients::update(&state, |file| {
        if file.clients.remove(name).is_none() {
            let known: Vec<&String> = file.clients.keys().collect();
            anyhow::bail!(
                "no client `{name}` in {}; clients: {}",
                state.display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                }
            );
        }
        Ok(())
    })
}

fn add(args: ClientAddArgs) -> anyhow::Result<()> {
    let path = config::locate(args.config.config.as_deref())?;
    let config = config::load(&path)?;
    let expires = args
        .expires
        .as_deref()
        .map(|text| {
            humantime::parse_duration(text)
                .map_err(|_| anyhow::anyhow!("--expires `{text}` is not a duration; e.g. 30m, 12h, 7d"))
        })
        .transpose()?;
    let new = NewClient {
        name: args.name,
        routes: args.routes,
        rate: args.rate,
        daily: args.daily,
        expires,
    };
    let (key, state) = add_client(&path, &config, &new)?;
    let scope = if new.routes.is_empty() {
        "every route".to_string()
    } else {
        format!("routes {}", new.routes.join(", "))
    };
    outln!("added client `{}` ({scope}) to {}", new.name, state.display());
    outln!("send the key as `Authorization: Bearer KEY` or `X-Secretproxy-Token: KEY`; it is shown only now:");
    outln!("{}", key.as_str());
    Ok(())
}

fn list(path: &Path) -> anyhow::Result<()> {
    let file = clients::read_file(&clients::state_path(path))?;
    if file.clients.is_empty() {
        outln!("no client keys (add one with `secretproxy client add NAME`)");
        return Ok(());
    }
    out!("{}", table(&file, SystemTime::now()));
    Ok(())
}

/// The keys of `file` as `client list` and `check` show them: names, scopes, limits and times,
/// never a key or a hash.
pub fn table(file: &clients::ClientFile, now: SystemTime) -> Table {
    let mut table = Table::new(["NAME", "ROUTES", "RATE", "DAILY", "EXPIRES", "CREATED"]);
    for (name, entry) in &file.clients {
        let expired = entry
            .expires
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .is_some_and(|t| t <= now);
        table.row([
            name.clone(),
            entry.routes.as_ref().map_or_else(|| "*".to_string(), |r| r.join(",")),
            entry.rate.clone().unwrap_or_else(|| "-".into()),
            entry.daily.map_or_else(|| "-".into(), |d| d.to_string()),
            match &entry.expires {
                Some(t) if expired => format!("{t} (expired)"),
                Some(t) => t.clone(),
                None => "never".into(),
            },
            entry.created.clone(),
        ]);
    }
    table
}
