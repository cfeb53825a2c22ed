//! The per-route plan: everything a route's requests need that depends only on the config,
//! built once when a generation is built (start and every reload).
//!
//! A request that matched carries `&RoutePlan`; nothing on its path looks anything up by route
//! name or takes a generation-wide lock. The plan holds the validated route, its upstream (with
//! the connection pool), the precomputed `Allow` header, its metric handles and the slot for its
//! response scrubber and its injected headers, which are built from the secret values the first
//! request reads and rebuilt only when a value changes (a new `Arc` in the secret cache).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use http::{HeaderName, HeaderValue};
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
    headers: ArcSwapOption<CachedHeaders>,
}

/// The secret values a redactor was built from, and the redactor.
struct CachedRedactor {
    identity: Vec<Arc<SecretString>>,
    redactor: Option<Arc<Redactor>>,
}

/// The secret values the injected headers were rendered from, and the headers (sensitive
/// values: never logged, `Sensitive` in `Debug`).
struct CachedHeaders {
    identity: Vec<Arc<SecretString>>,
    headers: Arc<[(HeaderName, HeaderValue)]>,
}

/// Whether `identity` holds exactly these values (the same `Arc`s, in order). A cache keeps
/// the `Arc`s it was built from, not their addresses: a value it was built from cannot be freed
/// and another one allocated at its address while it is cached.
fn same_values(identity: &[Arc<SecretString>], values: &[Arc<SecretString>]) -> bool {
    identity.len() == values.len()
        && identity
            .iter()
            .zip(values)
            .all(|(known, value)| Arc::ptr_eq(known, value))
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
            headers: ArcSwapOption::empty(),
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
        if let Some(cached) = &*self.redactor.load()
            && same_values(&cached.identity, values)
        {
            return cached.redactor.clone();
        }
        let named = self.route.secrets.len().min(values.len());
        let extra: Vec<&SecretString> = values[named..].iter().map(|v| &**v).collect();
        let redactor = Redactor::for_route_and(
            &self.route,
            |name| SecretString::clone(&self.value_of(values, name)),
            &extra,
        )
        .map(Arc::new);
        self.redactor.store(Some(Arc::new(CachedRedactor {
            identity: values.to_vec(),
            redactor: redactor.clone(),
        })));
        redactor
    }

    /// The value of the route's secret `name` among `values` (in the order of `route.secrets`).
    pub fn value_of(&self, values: &[Arc<SecretString>], name: &str) -> Arc<SecretString> {
        let index = self
            .route
            .secrets
            .iter()
            .position(|n| n == name)
            .expect("route.secrets lists every used secret");
        values[index].clone()
    }

    /// The route's `headers` rendered with these values of its named secrets (in the order of
    /// `route.secrets`); rendered on the first request and again only when a value changed. A
    /// value a header cannot carry (a control character) is refused on every request.
    pub fn injected_headers(
        &self,
        values: &[Arc<SecretString>],
    ) -> Result<Arc<[(HeaderName, HeaderValue)]>, crate::http::error::ProxyError> {
        if let Some(cached) = &*self.headers.load()
            && same_values(&cached.identity, values)
        {
            return Ok(cached.headers.clone());
        }
        let secret = |name: &str| self.value_of(values, name);
        let mut headers = Vec::with_capacity(self.route.headers.len());
        for (name, template) in &self.route.headers {
            let text = crate::features::inject::render_value(template, secret);
            match crate::features::inject::sensitive_header(&text) {
                Some(value) => headers.push((name.clone(), value)),
                None => {
                    return Err(crate::http::error::ProxyError::SecretUnavailable {
                        secret: template.secrets().collect::<Vec<_>>().join(","),
                        unreachable: false,
                        reason: format!("its value cannot be used in the `{name}` header (control characters)"),
                        hint: "store the value without line breaks".into(),
                    });
                }
            }
        }
        let headers: Arc<[(HeaderName, HeaderValue)]> = headers.into();
        self.headers.store(Some(Arc::new(CachedHeaders {
            identity: values.to_vec(),
            headers: headers.clone(),
        })));
        Ok(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    /// The plan of a route that injects one secret as a bearer token.
    fn bearer_plan() -> RoutePlan {
        let config = crate::config::Config::parse(
            "[secrets.k]\nenv = \"K\"\n[routes.r]\npath = \"/r\"\nupstream = \"https://x.example/\"\nauth = { bearer = \"k\" }\n",
            "t",
        )
        .unwrap();
        let limits = crate::features::ratelimit::Limiters::build(&config.routes, None, None);
        RoutePlan::build(&config.routes[0], &mut Upstreams::default(), &limits).unwrap()
    }

    #[test]
    fn redactors_are_built_once_per_set_of_secret_values() {
        let plan = bearer_plan();
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

    /// A value dropped by the secret cache after a request, and a new one the allocator puts at
    /// its address, must not be taken for each other: the caches hold the values they were built
    /// from, so every new value is rendered and scrubbed as itself.
    #[test]
    fn a_new_value_at_a_freed_values_address_is_not_mistaken_for_it() {
        let plan = bearer_plan();
        for round in 0..50 {
            let value = Arc::new(SecretString::from(format!("rotated-{round:03}")));
            let headers = plan.injected_headers(std::slice::from_ref(&value)).unwrap();
            assert_eq!(headers[0].1, format!("Bearer rotated-{round:03}").as_str());
            let redactor = plan.redactor(std::slice::from_ref(&value)).unwrap();
            let mut echoed = HeaderMap::new();
            echoed.insert("x-echo", HeaderValue::from_str(&format!("rotated-{round:03}")).unwrap());
            redactor.headers(&mut echoed);
            assert_eq!(echoed["x-echo"], "[REDACTED]", "round {round}");
            // Both caches hold the value, so its address cannot be reused while they are built
            // from it.
            assert_eq!(Arc::strong_count(&value), 3);
        }
    }

    #[test]
    fn injected_headers_are_rendered_once_per_set_of_secret_values() {
        let plan = bearer_plan();
        let first = Arc::new(SecretString::from("value-one".to_string()));
        let a = plan.injected_headers(std::slice::from_ref(&first)).unwrap();
        let b = plan.injected_headers(std::slice::from_ref(&first)).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a[0].0, http::header::AUTHORIZATION);
        assert_eq!(a[0].1, "Bearer value-one");
        assert!(a[0].1.is_sensitive());
        // A new value (a rotated secret) is rendered anew.
        let second = Arc::new(SecretString::from("value-two".to_string()));
        let c = plan.injected_headers(std::slice::from_ref(&second)).unwrap();
        assert_eq!(c[0].1, "Bearer value-two");
        assert!(!format!("{plan:?}{:?}", c[0].1).contains("value-two"));
        // A value no header can carry is refused every time, and its error names no value.
        let broken = Arc::new(SecretString::from("line\nzq7x".to_string()));
        for _ in 0..2 {
            let error = plan.injected_headers(std::slice::from_ref(&broken)).unwrap_err();
            assert!(!format!("{error:?}{error}").contains("zq7x"));
        }
        assert!(Arc::ptr_eq(
            &c,
            &plan.injected_headers(std::slice::from_ref(&second)).unwrap()
        ));
    }
}
