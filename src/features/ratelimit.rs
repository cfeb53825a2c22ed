//! Rate limits per route: `rate-limit = { requests = 60, per = "1m", burst = 10 }`, one bucket
//! for the whole route or one per client `Origin` (GCRA), and an optional `daily` quota per route
//! (UTC days). Over a limit: `429` with `Retry-After`.
//!
//! Only requests that passed validation count: a refused request never reaches the upstream, so
//! it costs nothing the limit protects.
//!
//! Where the counters live is [`LimitState`]: this process's memory (the governor crate), or,
//! with `[state]`, the shared store, so every replica draws from one bucket and one quota (the
//! same GCRA, run as a Lua script in Redis; see `features::store`). A shared limit keeps a
//! memory limiter beside it for `on-error = "local"`.
//!
//! Reload is a diff: [`Limiters::build`] hands a route the very limiter (an `Arc`) of the previous
//! generation when its `rate-limit` (and store, and `on-error`) is equal, so buckets and daily
//! quotas survive reloads that do not change them (a `route add` of another route, any unrelated
//! edit); a changed or new limit starts fresh.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{HeaderMap, header};

use crate::configkit::duration::{Zero, duration};
use crate::configkit::{ConfigError, Source};
use crate::features::store::{self, OnError, Store, Verdict};
use crate::http::error::ProxyError;

/// Per-origin buckets are pruned of idle entries once there are this many.
const PRUNE_AT: usize = 4096;
const DAY: u64 = 24 * 60 * 60;

/// Whose requests share a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKey {
    /// Every client of the route.
    Route,
    /// One bucket per `Origin` header value; clients without one share a bucket.
    Origin,
}

/// A validated `rate-limit` table. Equal tables mean the same counters may carry on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub quota: Quota,
    pub key: LimitKey,
    pub daily: Option<u64>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRateLimit {
    pub requests: toml::Spanned<u64>,
    pub per: toml::Spanned<String>,
    pub burst: Option<toml::Spanned<u64>>,
    /// `"route"` (one bucket, the default) or `"origin"` (one per client `Origin`).
    pub key: Option<toml::Spanned<String>>,
    /// Requests per UTC day for the whole route.
    pub daily: Option<toml::Spanned<u64>>,
}

impl RateLimit {
    pub(crate) fn from_raw(
        raw: Option<&toml::Spanned<RawRateLimit>>,
        route: &str,
        source: &Source<'_>,
    ) -> Result<Option<RateLimit>, ConfigError> {
        let Some(raw) = raw else { return Ok(None) };
        let key = |field: &str| format!("routes.{route}.rate-limit.{field}");
        let raw = raw.get_ref();
        let positive = |value: &toml::Spanned<u64>, field: &str| -> Result<NonZeroU32, ConfigError> {
            u32::try_from(*value.get_ref())
                .ok()
                .and_then(NonZeroU32::new)
                .ok_or_else(|| source.error(value.span(), key(field), "must be a whole number from 1 to 4294967295"))
        };
        let requests = positive(&raw.requests, "requests")?;
        let per = duration(
            &raw.per,
            &key("per"),
            Zero::Refused,
            Some("e.g. \"1s\", \"1m\", \"1h\""),
            source,
        )?;
        let burst = match &raw.burst {
            Some(burst) => positive(burst, "burst")?,
            None => requests,
        };
        let quota = Quota::with_period(per / requests.get())
            .ok_or_else(|| {
                source.error(
                    raw.per.span(),
                    key("per"),
                    "the period is too short for that many requests",
                )
            })?
            .allow_burst(burst);
        let limit_key = match raw.key.as_ref().map(|k| (k, k.get_ref().as_str())) {
            None | Some((_, "route")) => LimitKey::Route,
            Some((_, "origin")) => LimitKey::Origin,
            Some((k, other)) => {
                return Err(source
                    .error(k.span(), key("key"), format!("`{other}` is not a choice"))
                    .with_help("write \"route\" (one bucket) or \"origin\" (one per client Origin)"));
            }
        };
        let daily = match &raw.daily {
            Some(daily) if *daily.get_ref() == 0 => {
                return Err(source.error(daily.span(), key("daily"), "a daily quota must be at least 1"));
            }
            Some(daily) => Some(*daily.get_ref()),
            None => None,
        };
        Ok(Some(RateLimit {
            quota,
            key: limit_key,
            daily,
        }))
    }
}

enum Bucket {
    Route(DefaultDirectRateLimiter),
    Origin(DefaultKeyedRateLimiter<String>),
}

/// The counters of one route in this process's memory: the GCRA bucket(s) and the daily count.
pub struct MemoryLimiter {
    bucket: Bucket,
    daily: Option<(u64, Mutex<DailyCount>)>,
    clock: DefaultClock,
}

#[derive(Default)]
struct DailyCount {
    day: u64,
    used: u64,
}

/// Where a route's counters live.
pub enum LimitState {
    /// This process's memory.
    Memory(MemoryLimiter),
    /// The shared store, with this process's memory for `on-error = "local"`.
    Shared(SharedLimiter),
}

/// A route's limit in the shared store.
pub struct SharedLimiter {
    store: Arc<Store>,
    key: LimitKey,
    /// `rl:{ROUTE}` under the store's prefix; per-origin buckets append `:o:DIGEST`.
    bucket: String,
    /// `quota:{ROUTE}:` under the store's prefix; the UTC date is appended.
    quota: String,
    emission: Duration,
    burst: u32,
    daily: Option<u64>,
    on_error: OnError,
    local: MemoryLimiter,
}

impl LimitState {
    fn memory(limit: &RateLimit) -> MemoryLimiter {
        let clock = DefaultClock::default();
        let bucket = match limit.key {
            LimitKey::Route => Bucket::Route(RateLimiter::direct_with_clock(limit.quota, clock.clone())),
            LimitKey::Origin => Bucket::Origin(RateLimiter::dashmap_with_clock(limit.quota, clock.clone())),
        };
        let daily = limit.daily.map(|n| (n, Mutex::new(DailyCount::default())));
        MemoryLimiter { bucket, daily, clock }
    }

    fn new(route: &str, limit: &RateLimit, shared: Option<(&Arc<Store>, OnError)>) -> LimitState {
        let local = LimitState::memory(limit);
        match shared {
            None => LimitState::Memory(local),
            Some((store, on_error)) => LimitState::Shared(SharedLimiter {
                store: store.clone(),
                key: limit.key,
                bucket: store.key(&format!("rl:{{{route}}}")),
                quota: store.key(&format!("quota:{{{route}}}:")),
                emission: limit.quota.replenish_interval(),
                burst: limit.quota.burst_size().get(),
                daily: limit.daily,
                on_error,
                local,
            }),
        }
    }

    /// Takes one request from the bucket and quota, or says when to come back (or, for a shared
    /// limit whose store cannot answer, applies the route's `on-error`).
    pub async fn check(&self, headers: &HeaderMap) -> Result<(), ProxyError> {
        match self {
            LimitState::Memory(memory) => memory.check(headers).map_err(ProxyError::from),
            LimitState::Shared(shared) => shared.check(headers).await,
        }
    }
}

impl SharedLimiter {
    async fn check(&self, headers: &HeaderMap) -> Result<(), ProxyError> {
        // The bucket's dimension. A per-client-key dimension (client keys) is one more arm here:
        // `format!("{}:k:{id}", self.bucket)` with the key's id, never the key itself.
        let bucket = match self.key {
            LimitKey::Route => std::borrow::Cow::Borrowed(self.bucket.as_str()),
            LimitKey::Origin => {
                let origin = headers.get(header::ORIGIN).map_or(&b""[..], |v| v.as_bytes());
                std::borrow::Cow::Owned(format!("{}:o:{}", self.bucket, store::digest(&[origin])))
            }
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let today = now / DAY;
        let quota = format!("{}{}", self.quota, store::utc_date(today));
        let daily = self.daily.map(|limit| (limit, (today + 1) * DAY));
        match self.store.rate(&bucket, &quota, self.emission, self.burst, daily).await {
            Ok(Verdict::Allowed) => Ok(()),
            Ok(Verdict::Limited { retry_after, daily }) => Err(ProxyError::RateLimited { retry_after, daily }),
            Err(_) => {
                self.store.fell_back("rate_limit", self.on_error);
                match self.on_error {
                    OnError::Local => self.local.check(headers).map_err(ProxyError::from),
                    OnError::Allow => Ok(()),
                    OnError::Deny => Err(ProxyError::StateUnavailable),
                }
            }
        }
    }
}

/// One route's limit as configured, and the counters that enforce it.
struct RouteLimit {
    limit: RateLimit,
    /// The store (by identity) and policy the state was built for.
    shared: Option<(usize, OnError)>,
    state: Arc<LimitState>,
}

/// The rate limits of one config generation, by route name.
#[derive(Default)]
pub struct Limiters {
    by_route: HashMap<String, RouteLimit>,
}

impl std::fmt::Debug for Limiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiters")
            .field("routes", &self.by_route.len())
            .finish()
    }
}

/// A request over a limit: how long until it may be retried.
#[derive(Debug)]
pub struct Limited {
    pub retry_after: Duration,
    pub daily: bool,
}

impl From<Limited> for ProxyError {
    fn from(limited: Limited) -> ProxyError {
        ProxyError::RateLimited {
            retry_after: limited.retry_after,
            daily: limited.daily,
        }
    }
}

/// What the limiters read of a route (`config::Route` answers it): its name, its `rate-limit`
/// and its `on-error`.
pub trait LimitedRoute {
    fn name(&self) -> &str;
    fn rate_limit(&self) -> Option<&RateLimit>;
    fn on_error(&self) -> Option<OnError>;
}

impl Limiters {
    /// The limiters of `routes`, in the shared `store` when there is one. A route whose
    /// `rate-limit` equals its limit in `previous` (matched by route name), with the same store
    /// and `on-error`, keeps that limiter and so its buckets and quota.
    pub fn build<R: LimitedRoute>(routes: &[R], previous: Option<&Limiters>, store: Option<&Arc<Store>>) -> Limiters {
        let mut kept = 0;
        let by_route: HashMap<String, RouteLimit> = routes
            .iter()
            .filter_map(|route| {
                let limit = route.rate_limit()?;
                let shared = store.map(|store| {
                    let on_error = route.on_error().unwrap_or(store.config.on_error);
                    (store, on_error)
                });
                let identity = shared.map(|(store, on_error)| (Arc::as_ptr(store) as usize, on_error));
                let carried = previous
                    .and_then(|previous| previous.by_route.get(route.name()))
                    .filter(|old| old.limit == *limit && old.shared == identity)
                    .map(|old| old.state.clone());
                kept += usize::from(carried.is_some());
                let state = carried.unwrap_or_else(|| Arc::new(LimitState::new(route.name(), limit, shared)));
                Some((
                    route.name().to_string(),
                    RouteLimit {
                        limit: limit.clone(),
                        shared: identity,
                        state,
                    },
                ))
            })
            .collect();
        if previous.is_some() && !by_route.is_empty() {
            tracing::debug!(
                kept,
                fresh = by_route.len() - kept,
                "rate limits carried over from the previous config"
            );
        }
        Limiters { by_route }
    }

    /// The counters of route `name`, for its plan; `None` when it has no limit.
    pub fn for_route(&self, name: &str) -> Option<Arc<LimitState>> {
        self.by_route.get(name).map(|limit| limit.state.clone())
    }
}

impl MemoryLimiter {
    fn check(&self, headers: &HeaderMap) -> Result<(), Limited> {
        let verdict = match &self.bucket {
            Bucket::Route(bucket) => bucket.check(),
            Bucket::Origin(buckets) => {
                if buckets.len() >= PRUNE_AT {
                    buckets.retain_recent();
                }
                let origin = headers
                    .get(header::ORIGIN)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .unwrap_or_default();
                buckets.check_key(&origin)
            }
        };
        if let Err(not_until) = verdict {
            return Err(Limited {
                retry_after: not_until.wait_time_from(self.clock.now()),
                daily: false,
            });
        }
        if let Some((limit, count)) = &self.daily {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let today = now / DAY;
            let mut count = count.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if count.day != today {
                *count = DailyCount { day: today, used: 0 };
            }
            if count.used >= *limit {
                return Err(Limited {
                    retry_after: Duration::from_secs((today + 1) * DAY - now),
                    daily: true,
                });
            }
            count.used += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Route};

    fn limiters(limit: &str) -> Limiters {
        let text = format!("[routes.a]\npath = \"/a\"\nupstream = \"https://x/\"\nrate-limit = {limit}\n");
        Limiters::build(&Config::parse(&text, "t").unwrap().routes, None, None)
    }

    fn routes(text: &str) -> Vec<Route> {
        Config::parse(text, "t").unwrap().routes
    }

    impl Limiters {
        /// Route `name`'s check, as its plan runs it (memory limiters answer at once).
        fn check(&self, name: &str, headers: &HeaderMap) -> Result<(), Limited> {
            match self.for_route(name).as_deref() {
                None => Ok(()),
                Some(LimitState::Memory(memory)) => memory.check(headers),
                Some(LimitState::Shared(_)) => unreachable!("no store in these tests"),
            }
        }
    }

    #[test]
    fn unchanged_limits_carry_over_and_changed_ones_start_fresh() {
        let none = HeaderMap::new();
        let a = "[routes.a]\npath = \"/a\"\nupstream = \"https://x/\"\nrate-limit = { requests = 1, per = \"1h\", daily = 5 }\n";
        let b = "[routes.b]\npath = \"/b\"\nupstream = \"https://x/\"\nrate-limit = { requests = 1, per = \"1h\" }\n";
        let first = Limiters::build(&routes(&format!("{a}{b}")), None, None);
        assert!(first.check("a", &none).is_ok());
        assert!(first.check("b", &none).is_ok());

        // Another route added, `a` and `b` unchanged (b moved in the file): both stay used up.
        let c = "[routes.c]\npath = \"/c\"\nupstream = \"https://x/\"\n";
        let second = Limiters::build(&routes(&format!("{b}{c}{a}")), Some(&first), None);
        assert!(second.check("a", &none).is_err());
        assert!(second.check("b", &none).is_err());

        // `a`'s limit changed: a fresh bucket; `b` still carries on.
        let a2 = a.replace("daily = 5", "daily = 6");
        let third = Limiters::build(&routes(&format!("{a2}{b}")), Some(&second), None);
        assert!(third.check("a", &none).is_ok());
        assert!(third.check("b", &none).is_err());

        // A route removed and added again starts fresh.
        let fourth = Limiters::build(&routes(b), Some(&third), None);
        let fifth = Limiters::build(&routes(&format!("{a2}{b}")), Some(&fourth), None);
        assert!(fifth.check("a", &none).is_ok());
    }

    #[test]
    fn burst_then_refused_with_retry_after() {
        let limiters = limiters("{ requests = 1, per = \"1h\", burst = 2 }");
        let none = HeaderMap::new();
        assert!(limiters.check("a", &none).is_ok());
        assert!(limiters.check("a", &none).is_ok());
        let limited = limiters.check("a", &none).unwrap_err();
        assert!(limited.retry_after > Duration::from_secs(3500), "{limited:?}");
    }

    #[test]
    fn origins_have_their_own_buckets() {
        let limiters = limiters("{ requests = 1, per = \"1h\", key = \"origin\" }");
        let mut a = HeaderMap::new();
        a.insert(header::ORIGIN, "http://a.test".parse().unwrap());
        let mut b = HeaderMap::new();
        b.insert(header::ORIGIN, "http://b.test".parse().unwrap());
        assert!(limiters.check("a", &a).is_ok());
        assert!(limiters.check("a", &a).is_err());
        assert!(limiters.check("a", &b).is_ok());
    }

    #[test]
    fn daily_quota() {
        let limiters = limiters("{ requests = 100, per = \"1s\", daily = 2 }");
        let none = HeaderMap::new();
        assert!(limiters.check("a", &none).is_ok());
        assert!(limiters.check("a", &none).is_ok());
        let limited = limiters.check("a", &none).unwrap_err();
        assert!(limited.daily && limited.retry_after <= Duration::from_secs(DAY));
    }

    #[test]
    fn bad_values_are_config_errors() {
        let text =
            "[routes.a]\npath = \"/a\"\nupstream = \"https://x/\"\nrate-limit = { requests = 0, per = \"1m\" }\n";
        let error = Config::parse(text, "t").unwrap_err().to_string();
        assert!(error.starts_with("t:4:27: routes.a.rate-limit.requests"), "{error}");
    }
}
