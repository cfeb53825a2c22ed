//! Where secret values come from and how they are held.
//!
//! Invariants: a value only ever lives in a [`SecretString`] (zeroized on drop, redacted in
//! `Debug`); errors describe the *source* of a secret and never its value; lookups are blocking
//! (D-Bus, file reads) and run on tokio's blocking pool.

mod cache;
pub mod keyring;

use std::path::PathBuf;

pub use cache::{REFRESH_AFTER, SecretCache, Waits};
pub use secrecy::{ExposeSecret, SecretString};

/// Where one secret is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An OS keyring entry (Secret Service on Linux).
    Keyring { service: String, account: String },
    /// An environment variable of the daemon.
    Env(String),
    /// A file; one trailing newline is trimmed.
    File(PathBuf),
    /// A systemd credential: the file `$CREDENTIALS_DIRECTORY/ID` (`LoadCredential=ID:...`).
    Credential(String),
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Keyring { service, account } => {
                write!(f, "keyring (service `{service}`, account `{account}`)")
            }
            SecretSource::Env(var) => write!(f, "environment variable `{var}`"),
            SecretSource::File(path) => write!(f, "file `{}`", path.display()),
            SecretSource::Credential(id) => write!(f, "systemd credential `{id}`"),
        }
    }
}

impl SecretSource {
    /// A short instruction for putting the secret in place. Mentions no value.
    pub fn how_to_set(&self, name: &str) -> String {
        match self {
            SecretSource::Keyring { service, account } => format!(
                "store it with `secretproxy secret set {name}` or `secret-tool store --label='secretproxy {name}' service {service} username {account}`"
            ),
            SecretSource::Env(var) => format!("set `{var}` in the daemon's environment"),
            SecretSource::File(path) if path.starts_with("/run/credentials") => format!(
                "`{}` is written by systemd (`LoadCredential=`) for its service only; outside that service use `env = \"VAR\"` or a file of your own",
                path.display()
            ),
            SecretSource::File(path) => format!("write the secret to `{}`", path.display()),
            SecretSource::Credential(id) => format!(
                "pass it to the service with `LoadCredential={id}:/path/to/file` or `LoadCredentialEncrypted={id}:/path/to/{id}.cred` (made with `systemd-creds encrypt --name={id} plain {id}.cred`)"
            ),
        }
    }
}

impl SecretSource {
    /// What to do about `error`: [`SecretSource::how_to_set`], unless the store itself is the
    /// problem (an unreachable keyring cannot take `secret set` either) or the source cannot
    /// exist here (a systemd credential outside a systemd service).
    pub fn how_to_fix(&self, name: &str, error: &LookupError) -> String {
        match (self, error) {
            (SecretSource::Keyring { .. }, LookupError::Unreachable { .. }) => format!(
                "the keyring itself is unreachable, so `secretproxy secret set {name}` would fail too: unlock it, or start a Secret Service (e.g. gnome-keyring) in this session; without one, declare the secret with `env` or `file` instead"
            ),
            (SecretSource::Credential(_), _) if !self.available_here() => {
                "only a systemd service gets credentials; when running by hand, use `env` or `file` for this secret"
                    .to_string()
            }
            _ => self.how_to_set(name),
        }
    }

    /// False when the source cannot exist in this process at all: a systemd credential without
    /// `$CREDENTIALS_DIRECTORY`, or a file under `/run/credentials` (systemd's) outside systemd.
    pub fn available_here(&self) -> bool {
        let under_systemd = std::env::var_os(CREDENTIALS_DIRECTORY).is_some_and(|d| !d.is_empty());
        match self {
            SecretSource::Credential(_) => under_systemd,
            SecretSource::File(path) => under_systemd || !path.starts_with("/run/credentials"),
            _ => true,
        }
    }
}

/// Why a secret could not be read. Never holds the value, not even in part.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LookupError {
    #[error("not found in {from}")]
    Missing { from: String },
    #[error("{from} is unreachable: {detail}")]
    Unreachable { from: String, detail: String },
    #[error("{from} is unusable: {detail}")]
    Invalid { from: String, detail: String },
}

impl LookupError {
    /// True when the store itself (e.g. the keyring) could not be reached.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, LookupError::Unreachable { .. })
    }
}

/// Reads secret values. Implementations block; callers run them off the async threads.
pub trait SecretStore: Send + Sync + 'static {
    fn fetch(&self, source: &SecretSource) -> Result<SecretString, LookupError>;
}

/// The real sources: OS keyring, process environment, files.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemStore;

impl SecretStore for SystemStore {
    fn fetch(&self, source: &SecretSource) -> Result<SecretString, LookupError> {
        let value = match source {
            SecretSource::Keyring { service, account } => {
                keyring::get(service, account).map_err(|e| e.into_lookup(source))?
            }
            SecretSource::Env(var) => match std::env::var(var) {
                Ok(value) => SecretString::from(value),
                Err(std::env::VarError::NotPresent) => return Err(missing(source)),
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(LookupError::Invalid {
                        from: source.to_string(),
                        detail: "not valid UTF-8".into(),
                    });
                }
            },
            SecretSource::File(path) => read_file(path).map_err(|e| file_error(source, &e))?,
            SecretSource::Credential(id) => {
                let path = credential_path(std::env::var_os(CREDENTIALS_DIRECTORY).as_deref(), id)?;
                read_file(&path).map_err(|e| file_error(source, &e))?
            }
        };
        if value.expose_secret().is_empty() {
            return Err(LookupError::Invalid {
                from: source.to_string(),
                detail: "the value is empty".into(),
            });
        }
        Ok(value)
    }
}

/// The variable systemd sets to the directory holding a unit's credentials.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// Where the credential `id` lives, given the value of `$CREDENTIALS_DIRECTORY`.
pub fn credential_path(dir: Option<&std::ffi::OsStr>, id: &str) -> Result<PathBuf, LookupError> {
    match dir {
        Some(dir) if !dir.is_empty() => Ok(std::path::Path::new(dir).join(id)),
        _ => Err(LookupError::Missing {
            from: format!(
                "systemd credential `{id}`: ${CREDENTIALS_DIRECTORY} is not set (the daemon is not running under a systemd unit with `LoadCredential=`)"
            ),
        }),
    }
}

fn file_error(source: &SecretSource, error: &std::io::Error) -> LookupError {
    match error.kind() {
        std::io::ErrorKind::NotFound => missing(source),
        kind => LookupError::Invalid {
            from: source.to_string(),
            detail: kind.to_string(),
        },
    }
}

fn missing(source: &SecretSource) -> LookupError {
    LookupError::Missing {
        from: source.to_string(),
    }
}

/// Reads a secret file, trimming one trailing newline (`\n` or `\r\n`).
pub fn read_file(path: &std::path::Path) -> std::io::Result<SecretString> {
    let bytes = zeroize::Zeroizing::new(std::fs::read(path)?);
    let text =
        std::str::from_utf8(&bytes).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))?;
    Ok(SecretString::from(trim_one_newline(text).to_string()))
}

/// `text` without one trailing `\n` or `\r\n` (how secret files and piped values are read).
pub fn trim_one_newline(text: &str) -> &str {
    text.strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(text)
}

#[cfg(test)]
pub(crate) mod memory {
    //! An in-memory store for unit tests.
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct MemoryStore {
        pub values: Mutex<HashMap<String, String>>,
    }

    impl SecretStore for MemoryStore {
        fn fetch(&self, source: &SecretSource) -> Result<SecretString, LookupError> {
            let key = source.to_string();
            self.values
                .lock()
                .unwrap()
                .get(&key)
                .map(|v| SecretString::from(v.clone()))
                .ok_or(LookupError::Missing { from: key })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_source_trims_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "abc\n\n").unwrap();
        let value = SystemStore.fetch(&SecretSource::File(path.clone())).unwrap();
        assert_eq!(value.expose_secret(), "abc\n");
        std::fs::write(&path, "abc\r\n").unwrap();
        assert_eq!(
            SystemStore.fetch(&SecretSource::File(path)).unwrap().expose_secret(),
            "abc"
        );
        let missing = SystemStore
            .fetch(&SecretSource::File(dir.path().join("none")))
            .unwrap_err();
        assert!(matches!(missing, LookupError::Missing { .. }));
    }

    #[test]
    fn credential_needs_the_credentials_directory() {
        let error = credential_path(None, "openai").unwrap_err().to_string();
        assert!(error.contains("$CREDENTIALS_DIRECTORY is not set"), "{error}");
        assert!(error.contains("`openai`"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            credential_path(Some(dir.path().as_os_str()), "openai").unwrap(),
            dir.path().join("openai")
        );
        let hint = SecretSource::Credential("openai".into()).how_to_set("openai");
        assert!(
            hint.contains("LoadCredential=openai:") && hint.contains("systemd-creds encrypt"),
            "{hint}"
        );
    }

    #[test]
    fn debug_of_secret_is_redacted() {
        let value = SecretString::from("hunter2-value".to_string());
        assert!(!format!("{value:?}").contains("hunter2"));
    }
}
