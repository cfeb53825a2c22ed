//! The OS keyring through keyring-core: the Secret Service on Linux (pure Rust D-Bus client).
//!
//! The store is chosen once per process. Errors are reduced to a description of what failed;
//! keyring-core errors that carry raw bytes (bad encodings) are never formatted, since those
//! bytes would be the secret.

use std::sync::Mutex;

use keyring_core::{Entry, Error as KeyringError};
use secrecy::SecretString;

use super::{LookupError, SecretSource};

/// What went wrong talking to the keyring, without any secret material.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyringFailure {
    #[error("no such entry")]
    NoEntry,
    #[error("the keyring is unreachable: {0}")]
    Unreachable(String),
    #[error("{0}")]
    Other(String),
}

impl KeyringFailure {
    pub fn into_lookup(self, source: &SecretSource) -> LookupError {
        let from = source.to_string();
        match self {
            KeyringFailure::NoEntry => LookupError::Missing { from },
            KeyringFailure::Unreachable(detail) => LookupError::Unreachable { from, detail },
            KeyringFailure::Other(detail) => LookupError::Invalid { from, detail },
        }
    }
}

fn classify(err: KeyringError) -> KeyringFailure {
    match err {
        KeyringError::NoEntry => KeyringFailure::NoEntry,
        KeyringError::NoStorageAccess(e) => KeyringFailure::Unreachable(first_line(&e.to_string())),
        KeyringError::PlatformFailure(e) => KeyringFailure::Unreachable(first_line(&e.to_string())),
        KeyringError::NoDefaultStore => {
            KeyringFailure::Unreachable("no keyring store is available on this system".into())
        }
        KeyringError::BadStoreFormat(_) => KeyringFailure::Other("the keyring store has an unexpected format".into()),
        KeyringError::BadEncoding(_) | KeyringError::BadDataFormat(..) => {
            KeyringFailure::Other("the stored value is not valid UTF-8 text".into())
        }
        KeyringError::Ambiguous(entries) => {
            KeyringFailure::Other(format!("{} entries match; remove the duplicates", entries.len()))
        }
        KeyringError::TooLong(attr, limit) => KeyringFailure::Other(format!("{attr} is longer than {limit}")),
        KeyringError::Invalid(attr, reason) => KeyringFailure::Other(format!("invalid {attr}: {reason}")),
        KeyringError::NotSupportedByStore(what) => {
            KeyringFailure::Other(format!("not supported by the keyring: {what}"))
        }
        other => KeyringFailure::Other(format!("keyring error ({})", std::any::type_name_of_val(&other))),
    }
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").to_string()
}

/// Installs the platform store on first use. A failure is remembered for a short while only, so
/// a keyring that comes up after the daemon (a desktop login) is picked up later.
fn ensure_store() -> Result<(), KeyringFailure> {
    static READY: Mutex<bool> = Mutex::new(false);
    let mut ready = READY.lock().unwrap_or_else(|e| e.into_inner());
    if *ready {
        return Ok(());
    }
    #[cfg(target_os = "linux")]
    {
        let store = zbus_secret_service_keyring_store::Store::new().map_err(classify)?;
        keyring_core::set_default_store(store);
    }
    #[cfg(not(target_os = "linux"))]
    {
        return Err(KeyringFailure::Unreachable(
            "this build has no keyring store for this platform".into(),
        ));
    }
    #[allow(unreachable_code)]
    {
        *ready = true;
        Ok(())
    }
}

fn entry(service: &str, account: &str) -> Result<Entry, KeyringFailure> {
    ensure_store()?;
    Entry::new(service, account).map_err(classify)
}

/// Reads a keyring entry.
pub fn get(service: &str, account: &str) -> Result<SecretString, KeyringFailure> {
    let password = entry(service, account)?.get_password().map_err(classify)?;
    Ok(SecretString::from(password))
}

/// Writes (creates or replaces) a keyring entry.
pub fn set(service: &str, account: &str, value: &SecretString) -> Result<(), KeyringFailure> {
    use secrecy::ExposeSecret;
    entry(service, account)?
        .set_password(value.expose_secret())
        .map_err(classify)
}

/// Deletes a keyring entry.
pub fn delete(service: &str, account: &str) -> Result<(), KeyringFailure> {
    entry(service, account)?.delete_credential().map_err(classify)
}
