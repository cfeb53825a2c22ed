//! `secretproxy secret set|delete|list`: manage the keyring entries the config refers to.
//!
//! `set` also declares a secret the config lacks (`--keyring [ACCOUNT]` by default, `--env VAR`,
//! `--file PATH`), editing the file like `route add` does.
//!
//! Values are read from the terminal without echo, or from stdin when it is not a terminal;
//! there is no argument that takes one, so a value never lands in shell history or `ps`. Only
//! `keyring` sources are written: an `env` or `file` source belongs to whoever starts the daemon,
//! and the command says how to set it instead. Keyring failures are reduced to one line.

use std::io::{IsTerminal, Read};

use anyhow::Context;
use zeroize::Zeroizing;

use crate::cli::{SecretCommand, SecretSetArgs};
use crate::commands::check::SecretReport;
use crate::config::edit::{ConfigFile, NewSecret};
use crate::config::{self, Config};
use crate::secrets::keyring::{self, KeyringFailure};
use crate::secrets::{ExposeSecret, SecretSource, SecretString, SystemStore};

pub fn run(command: SecretCommand) -> anyhow::Result<()> {
    match command {
        SecretCommand::Set(args) => set(args)?,
        SecretCommand::Delete { name, config } => {
            let config = config::load(&config::locate(config.config.as_deref())?)?;
            let (service, account) = keyring_entry(&config, &name)?;
            keyring::delete(&service, &account).map_err(|e| failure("delete", &name, e))?;
            outln!("deleted secret `{name}` from the keyring (service `{service}`, account `{account}`)");
        }
        SecretCommand::List { config } => {
            let config = config::load(&config::locate(config.config.as_deref())?)?;
            if config.secrets.is_empty() {
                outln!("the config declares no secrets");
            } else {
                out!("{}", SecretReport::read(&config, &SystemStore).table());
            }
        }
    }
    Ok(())
}

/// `secret set`: declare `[secrets.NAME]` when the config lacks it (or when a source flag is
/// given for a new secret), then, for a keyring source, store the value.
fn set(args: SecretSetArgs) -> anyhow::Result<()> {
    let name = args.name;
    if !crate::configkit::template::is_name(&name) {
        anyhow::bail!("`{name}` is not a secret name: use letters, digits, `-` and `_`");
    }
    let path = config::locate(args.config.config.as_deref())?;
    let requested = if let Some(var) = args.env {
        Some(NewSecret::Env(var))
    } else if let Some(file) = args.file {
        let file = std::path::absolute(&file).unwrap_or(file);
        Some(NewSecret::File(file.display().to_string()))
    } else {
        args.keyring
            .map(|account| NewSecret::Keyring(if account.is_empty() { name.clone() } else { account }))
    };
    let mut file = ConfigFile::open(&path)?;
    if !file.has_secret(&name) {
        let source = requested.clone().unwrap_or_else(|| NewSecret::Keyring(name.clone()));
        // A keyring value is read before the file changes, so a cancelled prompt leaves the
        // config as it was.
        let value = match &source {
            NewSecret::Keyring(_) => Some(read_value(&name)?),
            _ => None,
        };
        file.declare_secret(&name, &source)?;
        let config = file.save()?;
        outln!(
            "declared secret `{name}` in {} ({})",
            path.display(),
            config.secrets[&name]
        );
        if let (Some(value), SecretSource::Keyring { service, account }) = (value, &config.secrets[&name]) {
            return store(&name, service, account, &value);
        }
        outln!("{}", config.secrets[&name].how_to_set(&name));
        return Ok(());
    }
    let config = config::load(&path)?;
    let existing = &config.secrets[&name];
    if let Some(requested) = &requested
        && !same_source(requested, existing)
    {
        anyhow::bail!(
            "secret `{name}` is already declared with {existing}; edit [secrets.{name}] in {} to change its source",
            path.display()
        );
    }
    if requested.as_ref().is_some_and(|r| !matches!(r, NewSecret::Keyring(_))) {
        outln!(
            "secret `{name}` is already declared with {existing}; {}",
            existing.how_to_set(&name)
        );
        return Ok(());
    }
    let (service, account) = keyring_entry(&config, &name)?;
    let value = read_value(&name)?;
    store(&name, &service, &account, &value)
}

fn store(name: &str, service: &str, account: &str, value: &SecretString) -> anyhow::Result<()> {
    keyring::set(service, account, value).map_err(|e| failure("store", name, e))?;
    outln!("stored secret `{name}` in the keyring (service `{service}`, account `{account}`)");
    outln!(
        "a running daemon picks it up within seconds if it was missing; to replace a value it already uses, reload it (SIGHUP or `systemctl reload`)"
    );
    Ok(())
}

/// True when the source asked for on the command line is the one already declared.
fn same_source(requested: &NewSecret, existing: &SecretSource) -> bool {
    match (requested, existing) {
        (NewSecret::Keyring(account), SecretSource::Keyring { account: a, .. }) => account == a,
        (NewSecret::Env(var), SecretSource::Env(v)) => var == v,
        (NewSecret::File(path), SecretSource::File(p)) => std::path::Path::new(path) == p,
        _ => false,
    }
}

/// The keyring service and account of secret `name`, or why it cannot be written here.
fn keyring_entry(config: &Config, name: &str) -> anyhow::Result<(String, String)> {
    match config.secrets.get(name) {
        Some(SecretSource::Keyring { service, account }) => Ok((service.clone(), account.clone())),
        Some(source) => anyhow::bail!(
            "secret `{name}` comes from {source}, which secretproxy does not write; {}",
            source.how_to_set(name)
        ),
        None => {
            let known: Vec<&str> = config.secrets.keys().map(String::as_str).collect();
            anyhow::bail!(
                "the config declares no secret `{name}`{}; add it first:\n  [secrets.{name}]\n  keyring = \"{name}\"",
                if known.is_empty() {
                    String::new()
                } else {
                    format!(" (declared: {})", known.join(", "))
                }
            )
        }
    }
}

/// The value, without echo from a terminal or whole from piped stdin (one trailing newline
/// dropped, as for `file` sources).
fn read_value(name: &str) -> anyhow::Result<SecretString> {
    let value = if std::io::stdin().is_terminal() {
        Zeroizing::new(
            rpassword::prompt_password(format!("value for secret `{name}` (not shown): "))
                .context("cannot read the value from the terminal")?,
        )
    } else {
        let mut text = Zeroizing::new(String::new());
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the value from stdin (it must be UTF-8 text)")?;
        let end = crate::secrets::trim_one_newline(&text).len();
        text.truncate(end);
        text
    };
    let value = SecretString::from(value.as_str().to_owned());
    if value.expose_secret().is_empty() {
        anyhow::bail!("the value for secret `{name}` is empty; nothing was stored");
    }
    Ok(value)
}

/// One line that says what failed and what to do, with no D-Bus detail beyond its first line.
fn failure(action: &str, name: &str, error: KeyringFailure) -> anyhow::Error {
    match error {
        KeyringFailure::NoEntry => anyhow::anyhow!("secret `{name}` is not in the keyring; nothing to {action}"),
        KeyringFailure::Unreachable(detail) => anyhow::anyhow!(
            "cannot {action} secret `{name}`: the keyring is unreachable or locked ({detail}); unlock it, or start a Secret Service such as gnome-keyring in this session"
        ),
        KeyringFailure::Other(detail) => anyhow::anyhow!("cannot {action} secret `{name}`: {detail}"),
    }
}
