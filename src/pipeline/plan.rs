//! The per-route plan: everything a route's requests need that depends only on the config,
//! built once when a generation is built (start and every reload).
//!
//! A request that matched carries `&RoutePlan`; nothing on its path looks anything up by route
//! name or takes a generation-wide lock. The plan holds the validated route, its upstream (with
//! the connection pool), the precomputed `Allow` header, its metric handles and the slot for its
//! response scrubber, which is built from the secret values the first request reads and rebuilt
//! only when a value changes (a new `Arc` in the secret cache).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use secrecy::SecretString;

use crate::config::Route;
use crate::features::ratelimit::{LimitState, Limiters};
use crate::features::scrub::Redactor;
use crate::pipeline::metrics::RouteMetrics;
use crate::upstream::{ClientError, Upstream, Upstreams};

/// One route, ready to serve.
pub struct RoutePlan {
    pub route: Route,
    /// The route's name, shared with access records without copying.
    pub name: Arc<str>,
    pub upstream: Arc<Upstream>,
    /// The upstream's host, for the access line.
    pub upstream_host: Arc<str>,
    /// The `Allow` header for `405` answers and preflights.
    pub allow: HeaderValue,
    pub metrics: Arc<RouteMetrics>,
    /// The route's rate-limit counters (carried over across reloads while the limit is equal).
    pub limiter: Option<Arc<LimitState>>,
    /// The route's OAuth2 token source (`auth = { oauth2 = "NAME" }`), shared by the routes
    /// naming it.
    pub oauth2: Option<Arc<crate::features::oauth2::TokenSource>>,
    /// The route's mTLS upstream (`client-cert`/`client-key`), built for the current values.
    pub client_cert: Option<crate::features::sign::mtls::ClientCertSlot>,
    redactor: ArcSwapOption<CachedRedactor>,
}

/// The identities of the secret values a redactor was built from, and the redactor.
struct CachedRedactor {
    identity: Vec<usize>,
    redactor: Option<Arc<Redactor>>,
}

impl std::fmt::Debug for RoutePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutePlan")
            .field("route", &self.route.name)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl RoutePlan {
    pub fn build(route: &Route, upstreams: &mut Upstreams, limits: &Limiters) -> Result<RoutePlan, ClientError> {
        let upstream = upstreams.for_route(route)?;
        let allow = HeaderValue::from_str(&crate::pipeline::routes::allow_header(route))
            .unwrap_or_else(|_| HeaderValue::from_static("GET"));
        Ok(RoutePlan {
            name: Arc::from(route.name.as_str()),
            upstream_host: Arc::from(upstream.host()),
            upstream,
            allow,
            metrics: Arc::new(RouteMetrics::new(&route.name)),
            limiter: limits.for_route(&route.name),
            oauth2: None,
            client_cert: crate::features::sign::mtls::ClientCertSlot::for_route(route, &route.signing),
            redactor: ArcSwapOption::empty(),
            route: route.clone(),
        })
    }

    /// The upstream to send to: the route's pool, or with a client certificate the pool that
    /// presents the certificate in `values` (the route's secret values).
    pub fn upstream_for(
        &self,
        values: &[Arc<SecretString>],
    ) -> Result<std::borrow::Cow<'_, Arc<Upstream>>, crate::http::error::ProxyError> {
        match &self.client_cert {
            None => Ok(std::borrow::Cow::Borrowed(&self.upstream)),
            Some(slot) => slot.upstream(values).map(std::borrow::Cow::Owned),
        }
    }

    /// The route's scrubber for these secret values (`None` when it injects none); built on the
    /// first request and again only when a value changed. Values past the route's named secrets
    /// are extra injected values (the OAuth2 token), scrubbed too.
    pub fn redactor(&self, values: &[Arc<SecretString>]) -> Option<Arc<Redactor>> {
        let same = |cached: &CachedRedactor| {
            cached.identity.len() == values.len()
                && cached
                    .identity
                    .iter()
                    .zip(values)
                    .all(|(known, value)| *known == Arc::as_ptr(value) as usize)
        };
        if let Some(cached) = &*self.redactor.load()
            && same(cached)
        {
            return cached.redactor.clone();
        }
        let names: Vec<&String> = self.route.secrets.iter().collect();
        let extra: Vec<&SecretString> = values[names.len().min(values.len())..].iter().map(|v| &**v).collect();
        let redactor = Redactor::for_route_and(
            &self.route,
            |name| {
                let index = names
                    .iter()
                    .position(|n| *n == name)
                    .expect("route.secrets lists every used secret");
                SecretString::clone(&values[index])
            },
            &extra,
        )
        .map(Arc::new);
        self.redactor.store(Some(Arc::new(CachedRedactor {
            identity: values.iter().map(|value| Arc::as_ptr(value) as usize).collect(),
            redactor: redactor.clone(),
        })));
        redactor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn redactors_are_built_once_per_set_of_secret_values() {
        let config = crate::config::Config::parse(
            "[secrets.k]\nenv = \"K\"\n[routes.r]\npath = \"/r\"\nupstream = \"https://x.example/\"\nauth = { bearer = \"k\" }\n",
            "t",
        )
        .unwrap();
        let limits = crate::features::ratelimit::Limiters::build(&config.routes, None, None);
        let plan = RoutePlan::build(&config.routes[0], &mut Upstreams::default(), &limits).unwrap();
        let first = Arc::new(SecretString::from("value-one".to_string()));
        let a = plan.redactor(std::slice::from_ref(&first)).unwrap();
        let b = plan.redactor(std::slice::from_ref(&first)).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        // A new value (a secret that arrived later) gets a new redactor that knows it.
        let second = Arc::new(SecretString::from("value-two".to_string()));
        let c = plan.redactor(std::slice::from_ref(&second)).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        let mut headers = HeaderMap::new();
        headers.insert("x-echo", HeaderValue::from_static("value-two"));
        c.headers(&mut headers);
        assert_eq!(headers["x-echo"], "[REDACTED]");
        assert!(!format!("{plan:?}{c:?}").contains("value"));
    }
}
