//! Client keys: who is calling, which routes that caller may use, and how much.
//!
//! A client key (`sp_` + 32 bytes of OS randomness, base64url) is shown once by `secretproxy
//! client add` (or handed to a command by `secretproxy run`); only its SHA-256 is kept, in the
//! state file next to the config ([`state_path`]: `proxy.toml` -> `proxy.clients.toml`, mode
//! 0600, replaced atomically under a lock file). The daemon loads that file at start and again
//! whenever it changes (see `daemon::reload`), so an `add` or `revoke` takes effect within a
//! second without touching the route table.
//!
//! Per request the guard hashes the presented key and compares it with every stored hash in
//! constant time ([`Registry::identify`]); the key and its hash never leave this module in any
//! form (`Debug` shows names only). A known client carries its route scope, expiry, rate limit
//! (GCRA, governor) and daily budget (UTC day). The counters live in [`ClientState`], handed on
//! from one loaded table to the next while the client's key and limits are unchanged, so
//! reloads of the config or of this file never reset them.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine as _;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::error::ProxyError;

/// What every client key starts with, so a leaked one is recognisable (secret scanners, logs).
pub const KEY_PREFIX: &str = "sp_";
const DAY: u64 = 24 * 60 * 60;

/// The state file of the config at `config`: `<stem>.clients.toml` in the same directory.
pub fn state_path(config: &Path) -> PathBuf {
    let stem = config
        .file_stem()
        .map_or_else(|| "proxy".into(), |s| s.to_string_lossy().into_owned());
    config.with_file_name(format!("{stem}.clients.toml"))
}

/// A fresh key: 32 bytes from the OS's random source, base64url without padding (43 chars).
pub fn new_key() -> std::io::Result<zeroize::Zeroizing<String>> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut *bytes).map_err(std::io::Error::other)?;
    let mut key = zeroize::Zeroizing::new(String::with_capacity(KEY_PREFIX.len() + 43));
    key.push_str(KEY_PREFIX);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(*bytes, &mut key);
    Ok(key)
}

/// The stored form of a key. A plain SHA-256 is enough here (no salt, no slow hash): the key has
/// 256 bits of entropy, so there is no dictionary to try and a preimage search is hopeless,
/// while every request can afford one fast hash.
pub fn hash_key(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// Why the state file could not be read, parsed or written. Never holds a key or a hash.
#[derive(Debug, thiserror::Error)]
pub enum ClientsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{path} is not a valid client file: {message}")]
    Invalid { path: String, message: String },
}

/// The state file as written: `[clients.NAME]` tables.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    #[serde(default)]
    pub clients: BTreeMap<String, ClientEntry>,
}

/// One `[clients.NAME]` table. `Debug` leaves the hash out.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClientEntry {
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// The routes the key may use; absent: every route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<String>>,
    /// `N/PERIOD`, e.g. `60/1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<String>,
    /// Requests per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily: Option<u64>,
    /// RFC 3339, UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// RFC 3339, UTC.
    pub created: String,
}

impl std::fmt::Debug for ClientEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientEntry")
            .field("routes", &self.routes)
            .field("rate", &self.rate)
            .field("daily", &self.daily)
            .field("expires", &self.expires)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// Letters, digits, `-`, `_`, `.`: names go into log lines and metric labels as they are.
pub fn is_client_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `N/PERIOD`: `60/m`, `10/1s`, `1000/1h`, `5/30s`, `100/day`.
pub fn parse_rate(text: &str) -> Result<Quota, String> {
    let bad = || format!("`{text}` is not a rate; write N/PERIOD, e.g. 60/m, 10/s, 1000/1h, 5/30s");
    let (count, period) = text.split_once('/').ok_or_else(bad)?;
    let count = count
        .trim()
        .parse::<u32>()
        .ok()
        .and_then(NonZeroU32::new)
        .ok_or_else(bad)?;
    let period = match period.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        "d" | "day" => Duration::from_secs(DAY),
        other => humantime::parse_duration(other).map_err(|_| bad())?,
    };
    Quota::with_period(period / count.get())
        .map(|quota| quota.allow_burst(count))
        .ok_or_else(bad)
}

/// Reads the state file; a missing file is an empty one.
pub fn read_file(path: &Path) -> Result<ClientFile, ClientsError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(ClientFile::default()),
        Err(source) => {
            return Err(ClientsError::Read {
                path: path.display().to_string(),
                source,
            });
        }
    };
    toml::from_str(&text).map_err(|error| ClientsError::Invalid {
        path: path.display().to_string(),
        // toml's message quotes the offending line, which may hold a hash: keep the first line.
        message: error.message().lines().next().unwrap_or("").to_string(),
    })
}

const HEADER: &str = "# Client keys of secretproxy, managed with `secretproxy client add|list|revoke` and\n\
# `secretproxy run`. Only a SHA-256 of each key is stored; the keys themselves were shown once.\n\n";

/// Changes the state file under an exclusive lock (`<file>.lock`), so concurrent `client add`
/// and `run` never lose each other's entries; the new content replaces the file atomically
/// (temp file in the same directory, mode 0600, fsync, rename).
pub fn update<T>(path: &Path, change: impl FnOnce(&mut ClientFile) -> anyhow::Result<T>) -> anyhow::Result<T> {
    let write_error = |source| ClientsError::Write {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut lock_name = path.file_name().unwrap_or_default().to_os_string();
    lock_name.push(".lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(lock_name))
        .map_err(write_error)?;
    // Held until `lock` is dropped (closing the file releases it).
    #[cfg(unix)]
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| write_error(std::io::Error::from(e)))?;
    let mut file = read_file(path)?;
    let result = change(&mut file)?;
    let text = format!(
        "{HEADER}{}",
        toml::to_string(&file).map_err(|e| write_error(std::io::Error::other(e)))?
    );
    let mut temp = tempfile::Builder::new()
        .prefix(".clients")
        .tempfile_in(dir)
        .map_err(write_error)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        temp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(write_error)?;
    }
    std::io::Write::write_all(&mut temp, text.as_bytes()).map_err(write_error)?;
    temp.as_file().sync_all().map_err(write_error)?;
    temp.persist(path).map_err(|e| write_error(e.error))?;
    drop(lock);
    Ok(result)
}

/// The counters of one client; carried from table to table while its key and limits stay.
pub struct ClientState {
    bucket: Option<DefaultDirectRateLimiter>,
    daily: Mutex<DailyCount>,
    clock: DefaultClock,
}

#[derive(Default)]
struct DailyCount {
    day: u64,
    used: u64,
}

/// A client the daemon knows, built from its entry. `Debug` shows the name only.
pub struct Client {
    pub name: Arc<str>,
    hash: [u8; 32],
    /// Sorted; `None`: every route.
    routes: Option<Vec<String>>,
    rate: Option<Quota>,
    daily: Option<u64>,
    expires: Option<SystemTime>,
    state: Arc<ClientState>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({})", self.name)
    }
}

impl Client {
    fn build(name: &str, entry: &ClientEntry, previous: Option<&Table>) -> Result<Client, String> {
        if !is_client_name(name) {
            return Err(format!("`{name}` is not a client name"));
        }
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&entry.sha256, &mut hash)
            .map_err(|_| format!("clients.{name}.sha256 is not a hex SHA-256"))?;
        let rate = entry
            .rate
            .as_deref()
            .map(parse_rate)
            .transpose()
            .map_err(|e| format!("clients.{name}.rate: {e}"))?;
        let expires = entry
            .expires
            .as_deref()
            .map(humantime::parse_rfc3339_weak)
            .transpose()
            .map_err(|_| format!("clients.{name}.expires is not an RFC 3339 time"))?;
        let mut routes = entry.routes.clone();
        if let Some(routes) = &mut routes {
            routes.sort();
            routes.dedup();
        }
        let carried = previous
            .and_then(|table| table.clients.iter().find(|c| *c.name == *name))
            .filter(|old| old.hash == hash && old.rate == rate && old.daily == entry.daily)
            .map(|old| old.state.clone());
        let state = carried.unwrap_or_else(|| {
            let clock = DefaultClock::default();
            Arc::new(ClientState {
                bucket: rate.map(|quota| RateLimiter::direct_with_clock(quota, clock.clone())),
                daily: Mutex::new(DailyCount::default()),
                clock,
            })
        });
        Ok(Client {
            name: Arc::from(name),
            hash,
            routes,
            rate,
            daily: entry.daily,
            expires,
            state,
        })
    }

    /// Refuses an expired key (`401`) and a route outside the key's scope (`403`).
    pub fn admit(&self, route: Option<&str>, now: SystemTime) -> Result<(), ProxyError> {
        if self.expires.is_some_and(|expires| now >= expires) {
            return Err(ProxyError::ClientKeyExpired {
                client: self.name.to_string(),
            });
        }
        if let (Some(routes), Some(route)) = (&self.routes, route)
            && routes.binary_search_by(|r| r.as_str().cmp(route)).is_err()
        {
            return Err(ProxyError::ClientRouteNotAllowed {
                client: self.name.to_string(),
                route: route.to_string(),
            });
        }
        Ok(())
    }

    /// Takes one request from the client's rate bucket and daily budget.
    pub fn spend(&self) -> Result<(), ProxyError> {
        let state = &self.state;
        if let Some(bucket) = &state.bucket
            && let Err(not_until) = bucket.check()
        {
            return Err(ProxyError::ClientLimited {
                client: self.name.to_string(),
                retry_after: not_until.wait_time_from(state.clock.now()),
                daily: false,
            });
        }
        if let Some(limit) = self.daily {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let today = now / DAY;
            let mut count = state.daily.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if count.day != today {
                *count = DailyCount { day: today, used: 0 };
            }
            if count.used >= limit {
                return Err(ProxyError::ClientLimited {
                    client: self.name.to_string(),
                    retry_after: Duration::from_secs((today + 1) * DAY - now),
                    daily: true,
                });
            }
            count.used += 1;
        }
        Ok(())
    }
}

/// One loaded state file.
#[derive(Default)]
pub struct Table {
    clients: Vec<Arc<Client>>,
    /// The file could not be read or parsed: no key is valid, and keys count as in use (fail
    /// closed: a revoke that left a broken file must not reopen keyless access).
    broken: bool,
}

impl Table {
    /// Builds a table from `file`, carrying each unchanged client's counters over from `previous`.
    pub fn build(file: &ClientFile, previous: Option<&Table>) -> Result<Table, String> {
        let clients = file
            .clients
            .iter()
            .map(|(name, entry)| Client::build(name, entry, previous).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Table { clients, broken: false })
    }
}

/// The client table serving now, shared by every generation (a config reload keeps it) and
/// swapped whole when the state file changes.
#[derive(Default)]
pub struct Registry {
    table: ArcSwap<Table>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let table = self.table.load();
        f.debug_struct("Registry")
            .field("clients", &table.clients.len())
            .field("broken", &table.broken)
            .finish()
    }
}

impl Registry {
    /// True once any client key exists (or the file is unreadable): keyless requests are then
    /// refused except on `allow-keyless` routes.
    pub fn in_use(&self) -> bool {
        let table = self.table.load();
        table.broken || !table.clients.is_empty()
    }

    /// The client whose key hashes to the same value. Every stored hash is compared, in constant
    /// time, whatever matched: the time taken says nothing about which hash came close.
    pub fn identify(&self, presented: &[u8]) -> Option<Arc<Client>> {
        let hash = hash_key(presented);
        let table = self.table.load();
        let mut found = None;
        for client in &table.clients {
            if bool::from(client.hash.ct_eq(&hash)) {
                found = Some(client.clone());
            }
        }
        found
    }

    /// Loads the state file at `path` (a missing file: no clients) and swaps it in. On failure
    /// the registry fails closed and the error is returned for the log.
    pub fn load(&self, path: &Path) -> Result<usize, ClientsError> {
        let previous = self.table.load_full();
        let built = read_file(path).and_then(|file| {
            Table::build(&file, Some(&previous)).map_err(|message| ClientsError::Invalid {
                path: path.display().to_string(),
                message,
            })
        });
        match built {
            Ok(table) => {
                let count = table.clients.len();
                self.table.store(Arc::new(table));
                Ok(count)
            }
            Err(error) => {
                self.table.store(Arc::new(Table {
                    clients: Vec::new(),
                    broken: true,
                }));
                Err(error)
            }
        }
    }

    /// Loads the file and logs the outcome (names and counts only).
    pub fn load_logged(&self, path: &Path) {
        match self.load(path) {
            Ok(count) => tracing::info!(clients = count, file = %path.display(), "client keys loaded"),
            Err(error) => tracing::error!(
                %error,
                "client keys unavailable; every request that needs a key is refused until the file is fixed"
            ),
        }
    }
}

/// Now as RFC 3339 (seconds, UTC), the form the state file uses.
pub fn timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str) -> ClientEntry {
        ClientEntry {
            sha256: hex::encode(hash_key(key.as_bytes())),
            routes: Some(vec!["b".into(), "a".into()]),
            rate: Some("2/1h".into()),
            daily: None,
            expires: None,
            created: timestamp(SystemTime::now()),
        }
    }

    #[test]
    fn keys_are_random_prefixed_and_long() {
        let a = new_key().unwrap();
        let b = new_key().unwrap();
        assert!(a.starts_with(KEY_PREFIX) && a.len() == 46, "{}", a.len());
        assert_ne!(*a, *b);
    }

    #[test]
    fn rates() {
        assert!(parse_rate("60/m").is_ok());
        assert!(parse_rate("5/30s").is_ok());
        assert!(parse_rate("1000/day").is_ok());
        assert!(parse_rate("0/m").is_err());
        assert!(parse_rate("60").is_err());
        assert!(parse_rate("x/m").is_err());
    }

    #[test]
    fn identify_scope_expiry_and_carry_over() {
        let registry = Registry::default();
        assert!(!registry.in_use());
        let mut file = ClientFile::default();
        file.clients.insert("agent".into(), entry("sp_one"));
        registry.table.store(Arc::new(Table::build(&file, None).unwrap()));
        assert!(registry.in_use());
        assert!(registry.identify(b"sp_two").is_none());
        let client = registry.identify(b"sp_one").unwrap();
        assert!(client.admit(Some("a"), SystemTime::now()).is_ok());
        assert!(matches!(
            client.admit(Some("c"), SystemTime::now()),
            Err(ProxyError::ClientRouteNotAllowed { .. })
        ));
        client.spend().unwrap();
        client.spend().unwrap();
        assert!(matches!(
            client.spend(),
            Err(ProxyError::ClientLimited { daily: false, .. })
        ));

        // Another client added: the first keeps its used-up bucket.
        file.clients.insert("other".into(), entry("sp_other"));
        let previous = registry.table.load_full();
        registry
            .table
            .store(Arc::new(Table::build(&file, Some(&previous)).unwrap()));
        assert!(registry.identify(b"sp_one").unwrap().spend().is_err());

        // Expired.
        let mut expired = entry("sp_three");
        expired.expires = Some(timestamp(SystemTime::now() - Duration::from_secs(5)));
        file.clients.insert("old".into(), expired);
        let table = Table::build(&file, None).unwrap();
        let old = table.clients.iter().find(|c| &*c.name == "old").unwrap();
        assert!(matches!(
            old.admit(None, SystemTime::now()),
            Err(ProxyError::ClientKeyExpired { .. })
        ));
        // Nothing secret in Debug output.
        let shown = format!("{:?} {:?} {registry:?}", file, table.clients);
        assert!(!shown.contains(&file.clients["agent"].sha256), "{shown}");
    }

    #[test]
    fn daily_budget() {
        let mut e = entry("k");
        e.rate = None;
        e.routes = None;
        e.daily = Some(1);
        let mut file = ClientFile::default();
        file.clients.insert("c".into(), e);
        let table = Table::build(&file, None).unwrap();
        table.clients[0].spend().unwrap();
        assert!(matches!(
            table.clients[0].spend(),
            Err(ProxyError::ClientLimited { daily: true, .. })
        ));
    }

    #[test]
    fn the_file_is_written_private_and_a_broken_one_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(&dir.path().join("proxy.toml"));
        assert!(path.ends_with("proxy.clients.toml"));
        update(&path, |file| {
            file.clients.insert("a".into(), entry("sp_a"));
            Ok(())
        })
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let registry = Registry::default();
        assert_eq!(registry.load(&path).unwrap(), 1);
        std::fs::write(&path, "[clients.a]\nsha256 = 3\n").unwrap();
        let error = registry.load(&path).unwrap_err().to_string();
        assert!(registry.in_use() && registry.identify(b"sp_a").is_none(), "{error}");
    }
}
