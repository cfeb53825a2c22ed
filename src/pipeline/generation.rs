//! One generation of live state: the validated config, its route table, its secrets, the client
//! key registry, the shared store (`[state]`) and one plan per route (upstream pools, metric
//! handles, scrubber slot). Built completely (blocking: secrets are read) before it is swapped
//! in, so a request always runs against one consistent generation from start to end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::pipeline::metrics::{Metrics, RouteMetrics};
use crate::pipeline::plan::RoutePlan;
use crate::pipeline::routes::{Lookup, RouteTable};
use crate::secrets::{SecretCache, SecretStore};
use crate::upstream::{ClientError, Upstreams};

#[derive(Debug)]
pub struct Generation {
    /// Counts up from 1 with every successful (re)load.
    pub number: u64,
    pub config: Arc<Config>,
    pub table: RouteTable,
    pub secrets: SecretCache,
    /// One plan per route, in the config's order (the route table's values index it).
    pub plans: Vec<RoutePlan>,
    /// Metric handles for requests that matched no route.
    pub unrouted: Arc<RouteMetrics>,
    /// Metric handles of each webhook, in the config's order.
    pub hook_metrics: Vec<(Arc<str>, Arc<RouteMetrics>)>,
    /// Rate-limit buckets and daily quotas of the routes that have them.
    pub limits: crate::features::ratelimit::Limiters,
    /// `[webhooks.NAME]` endpoints by path.
    pub hooks: crate::features::webhooks::Hooks,
    /// `[oauth2.NAME]` token sources (carried over across reloads while their config is equal).
    pub oauth2: crate::features::oauth2::TokenSources,
    /// The static site, when `static-dir` is set.
    pub site: Option<crate::features::static_site::Site>,
    /// The client keys: one registry for the daemon's life, handed from generation to
    /// generation (a config reload keeps keys and their counters) and reloaded on its own when
    /// the state file changes.
    pub clients: Arc<crate::features::clients::Registry>,
    /// The shared store of `[state]` (kept across reloads while the table is equal).
    pub store: Option<Arc<crate::features::store::Store>>,
}

impl crate::features::guard::Gate for Generation {
    fn access(&self) -> &crate::configkit::access::Access {
        &self.config.server.access
    }

    fn clients(&self) -> &crate::features::clients::Registry {
        &self.clients
    }

    fn secrets(&self) -> &SecretCache {
        &self.secrets
    }
}

impl crate::features::cors::Preflight for Generation {
    fn route_at<'a>(
        &'a self,
        method: &http::Method,
        path: &'a str,
    ) -> Option<(&'a crate::configkit::RouteBase, usize)> {
        match self.table.lookup(method, path) {
            Lookup::Found { route, index, .. } | Lookup::MethodNotAllowed { route, index } => {
                Some((&route.base, index))
            }
            Lookup::NotFound => None,
        }
    }

    fn allow(&self, index: usize) -> http::HeaderValue {
        self.plans[index].allow.clone()
    }

    fn credentials_in_use(&self) -> bool {
        self.config.server.access.client_token.is_some() || self.clients.in_use()
    }
}

impl crate::features::store::StoreUse for Generation {
    fn store(&self) -> Option<&Arc<crate::features::store::Store>> {
        self.store.as_ref()
    }

    fn fails_closed(&self) -> bool {
        Generation::fails_closed(self)
    }
}

impl Generation {
    /// Builds a generation. Blocks while secrets are read; run it off the async threads.
    pub fn build(config: Config, store: Arc<dyn SecretStore>, number: u64) -> Result<Generation, ClientError> {
        Generation::build_after(config, store, number, None)
    }

    /// Like [`Generation::build`], carrying over from `previous` the state the new config did not
    /// change: the rate-limit buckets and quotas of routes whose limit is equal, and the OAuth2
    /// token sources (with their tokens) whose table is equal.
    pub fn build_after(
        config: Config,
        store: Arc<dyn SecretStore>,
        number: u64,
        previous: Option<&Generation>,
    ) -> Result<Generation, ClientError> {
        let state_store = crate::features::store::Store::build(
            config.state.as_ref(),
            previous.and_then(|p| p.store.as_ref()),
            store.clone(),
            &config.secrets,
        );
        let limits = crate::features::ratelimit::Limiters::build(
            &config.routes,
            previous.map(|p| &p.limits),
            state_store.as_ref(),
        );
        let mut upstreams = Upstreams::default();
        let mut plans = config
            .routes
            .iter()
            .map(|route| RoutePlan::build(route, &mut upstreams, &limits))
            .collect::<Result<Vec<_>, _>>()?;
        let oauth2 = crate::features::oauth2::build_sources(
            &config.oauth2,
            previous.map(|p| &p.oauth2),
            &mut upstreams,
            state_store.as_ref(),
        )?;
        for plan in &mut plans {
            plan.oauth2 = plan.route.oauth2.as_ref().and_then(|name| oauth2.get(name).cloned());
            // mTLS pools carry over while the certificate is the same (features::sign::mtls).
            if let (Some(slot), Some(previous)) = (&plan.client_cert, previous)
                && let Some(old) = previous.plans.iter().find(|old| old.name == plan.name)
                && let Some(old_slot) = &old.client_cert
            {
                slot.carry_from(old_slot);
            }
        }
        let hook_metrics = config
            .webhooks
            .iter()
            .map(|hook| {
                let label = format!("webhook:{}", hook.name);
                (Arc::from(label.as_str()), Arc::new(RouteMetrics::new(&label)))
            })
            .collect();
        let secrets = SecretCache::load(store, &config.secrets);
        Ok(Generation {
            plans,
            unrouted: Arc::new(RouteMetrics::new(crate::pipeline::metrics::NO_ROUTE)),
            hook_metrics,
            limits,
            oauth2,
            hooks: crate::features::webhooks::Hooks::build(&config.webhooks, state_store.clone())?,
            site: config
                .server
                .static_site
                .clone()
                .map(crate::features::static_site::Site::new),
            store: state_store,
            number,
            clients: previous.map_or_else(Default::default, |p| p.clients.clone()),
            table: RouteTable::new(&config),
            config: Arc::new(config),
            secrets,
        })
    }

    /// True when some route with a rate limit, or some webhook, fails closed on the shared store
    /// (`on-error = "deny"`, its own or `[state]`'s): then readiness needs the store.
    pub fn fails_closed(&self) -> bool {
        use crate::features::store::OnError;
        let Some(state) = &self.config.state else {
            return false;
        };
        let denies = |own: Option<OnError>| own.unwrap_or(state.on_error) == OnError::Deny;
        self.config
            .routes
            .iter()
            .any(|route| route.rate_limit.is_some() && denies(route.on_error))
            || self.config.webhooks.iter().any(|hook| denies(hook.on_error))
    }

    /// Names of the secrets that are unavailable right now (never their values).
    pub fn missing_secrets(&self) -> Vec<String> {
        self.secrets
            .status()
            .into_iter()
            .filter(|(_, _, error)| error.is_some())
            .map(|(name, _, _)| name)
            .collect()
    }

    /// Logs one line per secret that could not be read: its name, who uses it (routes and
    /// webhooks) and what to do. A source that cannot exist outside systemd (a credential) gets
    /// one short line without a how-to: a terminal user cannot and should not provide it.
    pub fn log_missing_secrets(&self) -> usize {
        let mut missing = 0;
        for (name, source, error) in self.secrets.status() {
            let Some(error) = error else { continue };
            missing += 1;
            let users: Vec<String> = self
                .config
                .routes_using(&name)
                .map(|r| format!("route {}", r.name))
                .chain(
                    self.config
                        .webhooks
                        .iter()
                        .filter(|w| w.secret == name)
                        .map(|w| format!("webhook {}", w.name)),
                )
                .collect();
            let used_by = if users.is_empty() {
                "nothing".to_string()
            } else {
                users.join(", ")
            };
            if !source.available_here() {
                tracing::warn!(secret = %name, used_by = %used_by, "secret unavailable: `{name}` is a systemd credential, given only to a systemd service");
            } else {
                tracing::warn!(
                    secret = %name,
                    used_by = %used_by,
                    "secret unavailable: `{name}` ({error}); {}; used by {used_by} (503 until it is set)",
                    source.how_to_fix(&name, &error)
                );
            }
        }
        missing
    }
}

/// The generation currently serving, swappable without blocking requests, and the metrics that
/// outlive every generation.
pub struct Live {
    current: ArcSwap<Generation>,
    next_number: AtomicU64,
    metrics: Arc<Metrics>,
    /// Whether the shutdown has begun (the readiness probe's answer across generations).
    readiness: crate::features::admin::Readiness,
}

impl Live {
    pub fn new(generation: Generation) -> Live {
        let next = generation.number + 1;
        let metrics = Arc::new(Metrics::new());
        if let Some(store) = &generation.store {
            store.attach_metrics(metrics.store());
        }
        Live {
            current: ArcSwap::from_pointee(generation),
            next_number: AtomicU64::new(next),
            metrics,
            readiness: Default::default(),
        }
    }

    /// The process's readiness beyond its config (see `features::admin`).
    pub fn readiness(&self) -> &crate::features::admin::Readiness {
        &self.readiness
    }

    /// The process's metrics; the reload code counts reloads here.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// The number the next generation should carry.
    pub fn next_number(&self) -> u64 {
        self.next_number.fetch_add(1, Ordering::Relaxed)
    }

    pub fn swap(&self, generation: Generation) {
        if let Some(store) = &generation.store {
            store.attach_metrics(self.metrics.store());
        }
        self.current.store(Arc::new(generation));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::SystemStore;

    fn generation(state: &str, previous: Option<&Generation>) -> Generation {
        let text = format!(
            "{state}\n[routes.a]\npath = \"/a\"\nupstream = \"https://x.example/\"\nrate-limit = {{ requests = 1, per = \"1h\" }}\n"
        );
        let config = Config::parse(&text, "t").unwrap();
        Generation::build_after(config, Arc::new(SystemStore), 1, previous).unwrap()
    }

    #[test]
    fn the_store_and_shared_limits_carry_over_while_state_is_unchanged() {
        let state = "[state]\nurl = \"redis://127.0.0.1:1/0\"";
        let first = generation(state, None);
        let second = generation(state, Some(&first));
        let (a, b) = (first.store.as_ref().unwrap(), second.store.as_ref().unwrap());
        assert!(Arc::ptr_eq(a, b), "an equal [state] keeps the connection and breaker");
        assert!(Arc::ptr_eq(
            &first.limits.for_route("a").unwrap(),
            &second.limits.for_route("a").unwrap()
        ));
        assert!(!second.fails_closed());

        let changed = generation(&format!("{state}\non-error = \"deny\""), Some(&second));
        assert!(!Arc::ptr_eq(b, changed.store.as_ref().unwrap()));
        assert!(changed.fails_closed(), "a limited route now fails closed");
        assert!(matches!(
            changed.limits.for_route("a").as_deref(),
            Some(crate::features::ratelimit::LimitState::Shared(_))
        ));

        // [state] removed: back to memory counters.
        let local = generation("", Some(&changed));
        assert!(local.store.is_none());
        assert!(matches!(
            local.limits.for_route("a").as_deref(),
            Some(crate::features::ratelimit::LimitState::Memory(_))
        ));
    }

    #[tokio::test]
    async fn ready_needs_the_store_only_when_something_fails_closed() {
        use crate::features::store::store_ready;
        assert!(store_ready(&generation("", None)).await, "no [state]");
        // Nothing listens on port 1: the store is unreachable.
        let state = "[state]\nurl = \"redis://127.0.0.1:1/0\"\ntimeout = \"200ms\"";
        assert!(store_ready(&generation(state, None)).await, "fails open: ready");
        let closed = generation(&format!("{state}\non-error = \"deny\""), None);
        assert!(
            !store_ready(&closed).await,
            "fails closed and the store is down: not ready"
        );
    }
}
