//! The optional shared store (`[state]`): Redis or Valkey holding what replicas must agree on —
//! rate-limit buckets and daily quotas (one Lua script, `gcra.lua`) and webhook replay memory
//! (`SET NX PX`) and minted OAuth2 tokens, sealed (`features::oauth2::shared`) under a short mint
//! lock. Without `[state]` every feature keeps its counters and tokens in process, as before.
//!
//! Invariants:
//! - **Bounded**: every operation runs under `timeout` (default [`DEFAULT_TIMEOUT`]), connect
//!   included; a slow or down store never holds a request longer. The caller then applies its
//!   `on-error` policy ([`OnError`]).
//! - **No timeout per request while down**: a circuit breaker ([`breaker`]) skips the store after
//!   a few consecutive failures and probes it again after `cool-down`; recovery is automatic
//!   (the connection manager reconnects, the probe closes the breaker).
//! - **No secrets in the store**: keys hold route and webhook names, a day, and SHA-256 digests
//!   (of an `Origin`, of a webhook signature, of a token source's parameters); values are
//!   counters, timestamps and AES-256-GCM ciphertexts of tokens (the key never reaches the
//!   store). The store's
//!   own password is a `[secrets]` entry (`password = "NAME"`), read when connecting; a URL with
//!   a password in it is refused at load.
//! - One [`Store`] per `[state]` table: a reload with an equal table keeps it (and its
//!   connection and breaker); route plans and the webhooks get an `Arc` of it.
//!
//! Data model (under `key-prefix`, default [`DEFAULT_PREFIX`]); `{NAME}` is a literal hash tag,
//! so a route's keys share a Redis Cluster slot:
//! - `rl:{ROUTE}` and `rl:{ROUTE}:o:DIGEST` (per `Origin`): the GCRA theoretical arrival time in
//!   microseconds, expiring when the bucket is full again.
//! - `quota:{ROUTE}:YYYY-MM-DD`: requests counted on that UTC day, expiring an hour after it.
//! - `wh:{WEBHOOK}:DIGEST`: a webhook signature accepted, expiring when its timestamp leaves the
//!   tolerance.
//! - `oauth2:{DIGEST}`: a sealed OAuth2 token, expiring with the token; `oauth2:{DIGEST}:lock`:
//!   the replica minting it, expiring after the source's `timeout`.

pub mod breaker;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use crate::configkit::duration::timeout_or;
use crate::configkit::{ConfigError, Source};
use crate::secrets::{SecretSource, SecretStore};
use breaker::{Breaker, Gate, Health};

/// Default per-operation limit: a loopback or same-zone Redis answers in well under a
/// millisecond; 50 ms leaves room for a loaded host without letting a dead store be felt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
/// Default time the breaker keeps the store skipped before probing it again.
pub const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(2);
pub const DEFAULT_PREFIX: &str = "secretproxy:";
/// How long the first connection may take when a store is created (in the background).
const WARM_UP: Duration = Duration::from_secs(5);

/// What a feature does when the store cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Fall back to this process's own counters (the default): limits hold per replica, replays
    /// are caught when they hit the same replica.
    Local,
    /// Let the request through unchecked (fail open).
    Allow,
    /// Refuse with `503 state_unavailable` (fail closed); readiness then needs the store.
    Deny,
}

impl OnError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::Local => "local",
            OnError::Allow => "allow",
            OnError::Deny => "deny",
        }
    }

    /// Parses an `on-error` value at `key`.
    pub(crate) fn from_raw(
        raw: &toml::Spanned<String>,
        key: &str,
        source: &Source<'_>,
    ) -> Result<OnError, ConfigError> {
        match raw.get_ref().as_str() {
            "local" => Ok(OnError::Local),
            "allow" => Ok(OnError::Allow),
            "deny" => Ok(OnError::Deny),
            other => Err(source
                .error(raw.span(), key, format!("`{other}` is not a choice"))
                .with_help(
                    "write \"local\" (this replica's own counters), \"allow\" (let it through) or \"deny\" (503)",
                )),
        }
    }
}

/// A validated `[state]` table. Equal tables keep the same [`Store`] across reloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    /// `redis://` or `rediss://` URL, without a password.
    pub url: String,
    pub key_prefix: String,
    pub timeout: Duration,
    pub cool_down: Duration,
    /// The default for routes and webhooks without their own `on-error`.
    pub on_error: OnError,
    /// The `[secrets]` entry holding the store's password.
    pub password: Option<String>,
    /// `ca-file`: PEM roots trusted for `rediss://` instead of the OS trust store (path and the
    /// bytes read at load, so a reload with a changed file builds a new store).
    pub ca: Option<(std::path::PathBuf, Vec<u8>)>,
}

/// `[state]`: the shared store (Redis/Valkey) for replicas.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawState {
    pub url: toml::Spanned<String>,
    pub key_prefix: Option<toml::Spanned<String>>,
    pub timeout: Option<toml::Spanned<String>>,
    pub cool_down: Option<toml::Spanned<String>>,
    /// `"local"`, `"allow"` or `"deny"`: the default for routes and webhooks.
    pub on_error: Option<toml::Spanned<String>>,
    /// Name of the `[secrets]` entry holding the store's password.
    pub password: Option<toml::Spanned<String>>,
    /// PEM roots trusted for a `rediss://` store instead of the OS trust store.
    pub ca_file: Option<toml::Spanned<String>>,
}

impl StateConfig {
    pub(crate) fn from_raw(
        raw: &toml::Spanned<RawState>,
        secrets: &std::collections::BTreeMap<String, SecretSource>,
        source: &Source<'_>,
    ) -> Result<StateConfig, ConfigError> {
        let raw = raw.get_ref();
        let url_text = raw.url.get_ref();
        let parsed = url::Url::parse(url_text)
            .ok()
            .filter(|url| matches!(url.scheme(), "redis" | "rediss") && url.host_str().is_some())
            .ok_or_else(|| {
                source
                    .error(raw.url.span(), "state.url", "not a redis:// or rediss:// URL")
                    .with_help("e.g. \"redis://127.0.0.1:6379/0\" (or rediss:// for TLS)")
            })?;
        if parsed.password().is_some() {
            // Said without quoting the URL: the value is a password.
            return Err(source
                .error(
                    raw.url.span(),
                    "state.url",
                    "the URL holds a password, which would be a secret in the config file",
                )
                .with_help("store it as a secret and name it: `password = \"redis\"` with a `[secrets.redis]` table"));
        }
        redis::Client::open(url_text.as_str())
            .map_err(|error| source.error(raw.url.span(), "state.url", format!("not a usable Redis URL: {error}")))?;
        let password = match &raw.password {
            Some(name) if !secrets.contains_key(name.get_ref()) => {
                return Err(source
                    .error(
                        name.span(),
                        "state.password",
                        format!("unknown secret `{}`", name.get_ref()),
                    )
                    .with_help(format!("declare it in a `[secrets.{}]` table", name.get_ref())));
            }
            Some(name) => Some(name.get_ref().clone()),
            None => None,
        };
        let limited = |value: &Option<toml::Spanned<String>>, key: &str, default| {
            timeout_or(value.as_ref(), key, default, "e.g. \"50ms\", \"1s\"", source)
        };
        let ca = match &raw.ca_file {
            None => None,
            Some(_) if parsed.scheme() != "rediss" => {
                let span = raw.ca_file.as_ref().map_or(0..0, |c| c.span());
                return Err(source
                    .error(
                        span,
                        "state.ca-file",
                        "a CA file is for TLS, and the URL is not rediss://",
                    )
                    .with_help("write the URL as rediss://HOST:PORT/DB"));
            }
            Some(path) => {
                let resolved = crate::configkit::ca_file(path, "state.ca-file".into(), source)?;
                let pem = std::fs::read(&resolved)
                    .map_err(|error| source.error(path.span(), "state.ca-file", format!("cannot be read: {error}")))?;
                Some((resolved, pem))
            }
        };
        let key_prefix = raw
            .key_prefix
            .as_ref()
            .map_or_else(|| DEFAULT_PREFIX.to_string(), |p| p.get_ref().clone());
        Ok(StateConfig {
            url: url_text.clone(),
            key_prefix,
            timeout: limited(&raw.timeout, "state.timeout", DEFAULT_TIMEOUT)?,
            cool_down: limited(&raw.cool_down, "state.cool-down", DEFAULT_COOL_DOWN)?,
            on_error: match &raw.on_error {
                Some(value) => OnError::from_raw(value, "state.on-error", source)?,
                None => OnError::Local,
            },
            password,
            ca,
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FallbackLabels {
    op: &'static str,
    policy: &'static str,
}

/// The store's counters, registered once per process by the pipeline's `metrics::Metrics`
/// and handed to each [`Store`] (clones share the series).
#[derive(Clone, Default)]
pub struct StoreMetrics {
    errors: Family<OpLabels, Counter>,
    fallbacks: Family<FallbackLabels, Counter>,
}

impl StoreMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "state_errors",
            "Shared-store operations that failed or timed out, by operation",
            self.errors.clone(),
        );
        registry.register(
            "state_fallbacks",
            "Requests decided by their on-error policy because the shared store did not answer (or was skipped while down), by operation and policy",
            self.fallbacks.clone(),
        );
    }
}

/// Why an operation has no answer from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the shared store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the shared store failed: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the shared store is skipped while it is down")]
    Skipped,
    #[error("the shared store's password is unavailable: {0}")]
    Password(String),
}

/// A rate-limit verdict from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Limited { retry_after: Duration, daily: bool },
}

/// The connection to the shared store, its breaker and its counters.
pub struct Store {
    pub config: StateConfig,
    manager: tokio::sync::OnceCell<ConnectionManager>,
    breaker: Breaker,
    metrics: OnceLock<StoreMetrics>,
    secrets: Arc<dyn SecretStore>,
    password: Option<SecretSource>,
    gcra: redis::Script,
    /// Deletes a key only while it holds a given value (a mint lock, a refused token).
    compare_delete: redis::Script,
    /// A background PING of the readiness probe is in flight.
    pinging: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.config.url)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// The store of `config` (no connection yet: the first operation connects, on the runtime).
    pub fn new(
        config: StateConfig,
        secrets: Arc<dyn SecretStore>,
        sources: &std::collections::BTreeMap<String, SecretSource>,
    ) -> Store {
        crate::upstream::install_crypto_provider();
        let password = config.password.as_ref().and_then(|name| sources.get(name).cloned());
        Store {
            breaker: Breaker::new(config.cool_down),
            config,
            manager: tokio::sync::OnceCell::new(),
            metrics: OnceLock::new(),
            secrets,
            password,
            gcra: redis::Script::new(include_str!("gcra.lua")),
            compare_delete: redis::Script::new(COMPARE_DELETE),
            pinging: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The store to use for `config`: `previous` when its table is equal (connection, breaker
    /// and all), else a new one.
    pub fn build(
        config: Option<&StateConfig>,
        previous: Option<&Arc<Store>>,
        secrets: Arc<dyn SecretStore>,
        sources: &std::collections::BTreeMap<String, SecretSource>,
    ) -> Option<Arc<Store>> {
        let config = config?;
        if let Some(previous) = previous.filter(|p| p.config == *config) {
            return Some(previous.clone());
        }
        let store = Arc::new(Store::new(config.clone(), secrets, sources));
        // Connect now, off the request path, so the first request does not pay for the TCP and
        // TLS handshakes under its `timeout`. (No runtime: a CLI check or a unit test.)
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(store.clone().warm_up());
        }
        Some(store)
    }

    /// Connects and pings once, with more patience than one operation gets. A failure is only
    /// logged: requests then find the store down through the breaker as usual.
    async fn warm_up(self: Arc<Store>) {
        let attempt = async {
            let mut connection = self.connection().await?;
            redis::cmd("PING").query_async::<String>(&mut connection).await?;
            Ok::<(), StoreError>(())
        };
        match tokio::time::timeout(WARM_UP, attempt).await {
            Ok(Ok(())) => {
                self.breaker.succeeded();
                tracing::debug!("shared store connected");
            }
            Ok(Err(error)) => tracing::warn!(error = %error, "shared store not reachable at start"),
            Err(_) => tracing::warn!("shared store did not answer within {WARM_UP:?} at start"),
        }
    }

    /// Hands the store the process's counters (once; later calls keep the first).
    pub fn attach_metrics(&self, metrics: StoreMetrics) {
        let _ = self.metrics.set(metrics);
    }

    /// A key under the prefix.
    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.config.key_prefix)
    }

    pub fn health(&self) -> Health {
        self.breaker.health()
    }

    /// The health document's `state` entry.
    pub fn health_json(&self) -> serde_json::Value {
        serde_json::json!({
            "status": self.breaker.health().as_str(),
            "consecutive_errors": self.breaker.failures(),
            "on_error": self.config.on_error.as_str(),
        })
    }

    /// Counts a request decided by its `on-error` policy.
    pub fn fell_back(&self, op: &'static str, policy: OnError) {
        if let Some(metrics) = self.metrics.get() {
            metrics
                .fallbacks
                .get_or_create(&FallbackLabels {
                    op,
                    policy: policy.as_str(),
                })
                .inc();
        }
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let manager = self
            .manager
            .get_or_try_init(|| async {
                use redis::IntoConnectionInfo;
                let mut info = self.config.url.as_str().into_connection_info()?;
                if let Some(source) = self.password.clone() {
                    let secrets = self.secrets.clone();
                    let value = tokio::task::spawn_blocking(move || secrets.fetch(&source))
                        .await
                        .map_err(|_| StoreError::Password("the lookup failed".into()))?
                        .map_err(|error| StoreError::Password(error.to_string()))?;
                    let settings = info.redis_settings().clone().set_password(value.expose_secret());
                    info = info.set_redis_settings(settings);
                }
                let client = match &self.config.ca {
                    Some((_, pem)) => redis::Client::build_with_tls(
                        info,
                        redis::TlsCertificates {
                            client_tls: None,
                            root_cert: Some(pem.clone()),
                        },
                    )?,
                    None => redis::Client::open(info)?,
                };
                // Our own timeout bounds every operation; the manager only reconnects, quickly
                // and without piling retries up behind a dead store.
                let config = ConnectionManagerConfig::new()
                    .set_number_of_retries(1)
                    .set_connection_timeout(Some(self.config.timeout.max(Duration::from_millis(500))))
                    .set_response_timeout(None);
                Ok::<_, StoreError>(ConnectionManager::new_lazy_with_config(client, config)?)
            })
            .await?;
        Ok(manager.clone())
    }

    /// Runs one store operation through the breaker, under the timeout, counting failures.
    async fn run<T, F, Fut>(&self, op: &'static str, operation: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if self.breaker.gate() == Gate::Skip {
            return Err(StoreError::Skipped);
        }
        let attempt = async {
            let connection = self.connection().await?;
            Ok::<T, StoreError>(operation(connection).await?)
        };
        let result = match tokio::time::timeout(self.config.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(self.config.timeout)),
        };
        match &result {
            Ok(_) => {
                if self.breaker.succeeded() {
                    tracing::info!(op, "shared store reachable again; shared limits resume");
                }
            }
            Err(error) => {
                if let Some(metrics) = self.metrics.get() {
                    metrics.errors.get_or_create(&OpLabels { op }).inc();
                }
                if self.breaker.failed() {
                    tracing::warn!(
                        op,
                        error = %error,
                        cool_down = ?self.config.cool_down,
                        "shared store unreachable; skipping it (each route's on-error decides) until a probe succeeds"
                    );
                } else {
                    tracing::debug!(op, error = %error, "shared store operation failed");
                }
            }
        }
        result
    }

    /// One request through a shared rate limit (and daily quota when `daily` is set).
    pub async fn rate(
        &self,
        bucket: &str,
        quota_key: &str,
        emission: Duration,
        burst: u32,
        daily: Option<(u64, u64)>,
    ) -> Result<Verdict, StoreError> {
        let (limit, day_end) = daily.unwrap_or((0, 0));
        let mut invocation = self.gcra.key(bucket);
        invocation
            .key(quota_key)
            .arg(u64::try_from(emission.as_micros()).unwrap_or(u64::MAX).max(1))
            .arg(burst)
            .arg(limit)
            .arg(day_end);
        let (allowed, retry_us, daily): (i64, i64, i64) = self
            .run("rate_limit", |mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        if allowed == 1 {
            return Ok(Verdict::Allowed);
        }
        Ok(Verdict::Limited {
            retry_after: Duration::from_micros(u64::try_from(retry_us).unwrap_or(0)),
            daily: daily == 1,
        })
    }

    /// Remembers `key` for `ttl` unless it is already there: `Ok(true)` the first time,
    /// `Ok(false)` for a repeat within `ttl`.
    pub async fn remember(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut command = redis::cmd("SET");
        command.arg(key).arg(1).arg("NX").arg("PX").arg(millis);
        let answer: Option<String> = self
            .run("webhook_replay", |mut connection| async move {
                command.query_async(&mut connection).await
            })
            .await?;
        Ok(answer.is_some())
    }

    /// The bytes at `key`, if any.
    pub async fn get_bytes(&self, op: &'static str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut command = redis::cmd("GET");
        command.arg(key);
        self.run(op, |mut connection| async move {
            command.query_async(&mut connection).await
        })
        .await
    }

    /// The bytes at `key` and whether `other` exists, read at one instant (`MGET`; with a Redis
    /// Cluster both keys must share a hash tag).
    pub async fn get_with(
        &self,
        op: &'static str,
        key: &str,
        other: &str,
    ) -> Result<(Option<Vec<u8>>, bool), StoreError> {
        let mut command = redis::cmd("MGET");
        command.arg(key).arg(other);
        let (value, other): (Option<Vec<u8>>, Option<Vec<u8>>) = self
            .run(op, |mut connection| async move {
                command.query_async(&mut connection).await
            })
            .await?;
        Ok((value, other.is_some()))
    }

    /// Sets `key` to `value` for `ttl` (`SET PX`), or only when it is absent (`NX`): then
    /// `Ok(false)` when it was there.
    pub async fn set_bytes(
        &self,
        op: &'static str,
        key: &str,
        value: &[u8],
        ttl: Duration,
        only_new: bool,
    ) -> Result<bool, StoreError> {
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut command = redis::cmd("SET");
        command.arg(key).arg(value);
        if only_new {
            command.arg("NX");
        }
        command.arg("PX").arg(millis);
        let answer: Option<String> = self
            .run(op, |mut connection| async move {
                command.query_async(&mut connection).await
            })
            .await?;
        Ok(answer.is_some())
    }

    /// Deletes `key` only while it holds exactly `expected` (one Lua script, atomic): a lock is
    /// released only by its holder, a token deleted only while it is the one that was refused.
    pub async fn delete_if(&self, op: &'static str, key: &str, expected: &[u8]) -> Result<bool, StoreError> {
        let mut invocation = self.compare_delete.key(key);
        invocation.arg(expected);
        let deleted: i64 = self
            .run(op, |mut connection| async move {
                invocation.invoke_async(&mut connection).await
            })
            .await?;
        Ok(deleted == 1)
    }

    /// For the (synchronous) readiness probe: starts one `PING` in the background, unless one
    /// is in flight, so the state the next probe reads is fresh even without traffic.
    pub fn check_in_background(self: &Arc<Store>) {
        use std::sync::atomic::Ordering;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.pinging.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = self.clone();
        runtime.spawn(async move {
            store.ping().await;
            store.pinging.store(false, Ordering::Release);
        });
    }

    /// A `PING` through the breaker: true when the store answered in time.
    pub async fn ping(&self) -> bool {
        self.run("ping", |mut connection| async move {
            redis::cmd("PING").query_async::<String>(&mut connection).await
        })
        .await
        .is_ok()
    }
}

/// `DEL KEYS[1]` only while it holds `ARGV[1]`.
const COMPARE_DELETE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// A short hex digest of client input or a signature, so keys hold neither.
pub fn digest(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hex::encode(&hasher.finalize()[..16])
}

/// `YYYY-MM-DD` of the UTC day `days` after 1970-01-01 (civil-from-days, H. Hinnant).
pub fn utc_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// What readiness reads of a generation (`pipeline::generation::Generation` answers it).
pub trait StoreUse {
    fn store(&self) -> Option<&Arc<Store>>;
    fn fails_closed(&self) -> bool;
}

/// Whether the store lets this generation serve: true without `[state]`, and true when no route
/// or webhook fails closed (`on-error = "deny"`); otherwise the store must answer a `PING`.
/// For the readiness probe.
pub async fn store_ready(generation: &impl StoreUse) -> bool {
    let Some(store) = generation.store() else {
        return true;
    };
    if !generation.fails_closed() {
        return true;
    }
    store.ping().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(19_723), "2024-01-01");
        assert_eq!(utc_date(19_782), "2024-02-29");
        assert_eq!(utc_date(20_423), "2025-12-01");
    }

    fn parse(state: &str) -> Result<Config, String> {
        Config::parse(&format!("[secrets.r]\nenv = \"R\"\n[state]\n{state}\n"), "t").map_err(|e| e.to_string())
    }

    #[test]
    fn state_table_validation() {
        let config = parse("url = \"redis://127.0.0.1:6379/0\"").unwrap();
        let state = config.state.unwrap();
        assert_eq!(state.timeout, DEFAULT_TIMEOUT);
        assert_eq!(state.on_error, OnError::Local);
        assert_eq!(state.key_prefix, DEFAULT_PREFIX);

        let config = parse("url = \"rediss://cache.internal:6380/2\"\ntimeout = \"20ms\"\non-error = \"deny\"\npassword = \"r\"\nkey-prefix = \"app1:\"").unwrap();
        let state = config.state.unwrap();
        assert_eq!(
            (state.timeout, state.on_error),
            (Duration::from_millis(20), OnError::Deny)
        );

        let error = parse("url = \"redis://:hunter2@127.0.0.1/0\"").unwrap_err();
        assert!(error.contains("state.url") && error.contains("password"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
        let error = parse("url = \"http://127.0.0.1/\"").unwrap_err();
        assert!(error.contains("state.url"), "{error}");
        let error = parse("url = \"redis://127.0.0.1/\"\non-error = \"maybe\"").unwrap_err();
        assert!(error.contains("state.on-error"), "{error}");
        let error = parse("url = \"redis://127.0.0.1/\"\npassword = \"nope\"").unwrap_err();
        assert!(error.contains("unknown secret `nope`"), "{error}");
    }

    #[test]
    fn on_error_needs_a_store_and_a_limit() {
        let route = |extra: &str| {
            format!("[routes.a]\npath = \"/a\"\nupstream = \"https://x.example/\"\n{extra}on-error = \"deny\"\n")
        };
        let limit = "rate-limit = { requests = 1, per = \"1s\" }\n";
        let error = Config::parse(&route(limit), "t").unwrap_err().to_string();
        assert!(
            error.contains("routes.a.on-error") && error.contains("no `[state]`"),
            "{error}"
        );
        let state = "[state]\nurl = \"redis://127.0.0.1/0\"\n";
        let error = Config::parse(&format!("{state}{}", route("")), "t")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("routes.a.on-error") && error.contains("has none"),
            "{error}"
        );
        let config = Config::parse(&format!("{state}{}", route(limit)), "t").unwrap();
        assert_eq!(config.routes[0].on_error, Some(OnError::Deny));
    }

    #[test]
    fn keys_hold_digests_not_input() {
        let a = digest(&[b"https://a.example"]);
        assert_eq!(a.len(), 32);
        assert_ne!(a, digest(&[b"https://b.example"]));
    }
}
