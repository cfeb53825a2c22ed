//! Rate limits per route: `rate-limit = { requests = 60, per = "1m", burst = 10 }`, one bucket
//! for the whole route or one per client `Origin` (GCRA, the governor crate), and an optional
//! `daily` quota per route (UTC days). Over a limit: `429` with `Retry-After`.
//!
//! Only requests that passed validation count: a refused request never reaches the upstream, so
//! it costs nothing the limit protects. Buckets live in the config generation: a reload starts
//! them afresh.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use serde_json::json;

use crate::config::duration::{Zero, duration};
use crate::config::raw::RawRateLimit;
use crate::config::{ConfigError, Route, Source};
use crate::http::body::ProxyBody;
use crate::http::error::json_response;

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

/// A validated `rate-limit` table.
#[derive(Debug, Clone)]
pub struct RateLimit {
    pub quota: Quota,
    pub key: LimitKey,
    pub daily: Option<u64>,
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

struct RouteLimiter {
    bucket: Bucket,
    daily: Option<(u64, Mutex<DailyCount>)>,
}

#[derive(Default)]
struct DailyCount {
    day: u64,
    used: u64,
}

/// The live buckets of one config generation.
#[derive(Default)]
pub struct Limiters {
    by_route: HashMap<String, RouteLimiter>,
    clock: DefaultClock,
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

impl Limited {
    pub fn into_response(self, route: &str) -> Response<ProxyBody> {
        let seconds = self.retry_after.as_secs() + u64::from(self.retry_after.subsec_nanos() > 0);
        let seconds = seconds.max(1);
        let (message, code) = if self.daily {
            ("the route's daily quota is used up", "daily_quota_exceeded")
        } else {
            ("too many requests for this route", "rate_limited")
        };
        let body = json!({ "error": message, "code": code, "route": route, "retry_after": seconds });
        let mut response = json_response(StatusCode::TOO_MANY_REQUESTS, &body);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        response
    }

    pub fn code(&self) -> &'static str {
        if self.daily {
            "daily_quota_exceeded"
        } else {
            "rate_limited"
        }
    }
}

impl Limiters {
    pub fn build(routes: &[Route]) -> Limiters {
        let clock = DefaultClock::default();
        let by_route = routes
            .iter()
            .filter_map(|route| {
                let limit = route.rate_limit.as_ref()?;
                let bucket = match limit.key {
                    LimitKey::Route => Bucket::Route(RateLimiter::direct_with_clock(limit.quota, clock.clone())),
                    LimitKey::Origin => Bucket::Origin(RateLimiter::dashmap_with_clock(limit.quota, clock.clone())),
                };
                let daily = limit.daily.map(|n| (n, Mutex::new(DailyCount::default())));
                Some((route.name.clone(), RouteLimiter { bucket, daily }))
            })
            .collect();
        Limiters { by_route, clock }
    }

    /// Takes one request from the route's bucket and quota, or says when to come back.
    pub fn check(&self, route: &str, headers: &HeaderMap) -> Result<(), Limited> {
        let Some(limiter) = self.by_route.get(route) else {
            return Ok(());
        };
        let verdict = match &limiter.bucket {
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
        if let Some((limit, count)) = &limiter.daily {
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
    use crate::config::Config;

    fn limiters(limit: &str) -> Limiters {
        let text = format!("[routes.a]\npath = \"/a\"\nupstream = \"https://x/\"\nrate-limit = {limit}\n");
        Limiters::build(&Config::parse(&text, "t").unwrap().routes)
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
