//! The secrets of one config generation, kept in memory and kept current.
//!
//! Every secret is read when the generation is built. After that, a value older than
//! [`REFRESH_AFTER`] is read again when a request needs it, so `secretproxy secret set` and
//! `secret delete` (or a replaced secret file, a keyring that unlocks later) reach a running
//! daemon within seconds: a changed value swaps the `Arc` requests take, a deleted one makes the
//! routes using it answer `503` again. Environment variables cannot change under a running
//! process and are not read again once present.
//!
//! Invariants:
//! - **Single flight**: at most one lookup per secret is in flight, however many requests wait
//!   for it, so a hung keyring holds one blocking thread per secret, never the blocking pool.
//! - Lookups run on tokio's blocking pool (D-Bus, file reads), in a task of their own, so a
//!   request that goes away never leaves a lookup half done.
//! - A request waits for a lookup for a bounded time only ([`Waits`]); past it, it gets the last
//!   known state and the lookup finishes in the background.
//! - A store that is unreachable on a refresh keeps the last value in use (a flaky D-Bus must
//!   not turn into 503s); only an entry that is gone or unusable drops it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{LookupError, SecretSource, SecretStore};

/// How long a lookup's result (value or failure) is used before the store is asked again.
pub const REFRESH_AFTER: Duration = Duration::from_secs(2);

/// How long a request waits for a lookup in flight.
#[derive(Debug, Clone, Copy)]
pub struct Waits {
    /// When a value is known: a short wait, so a deletion is seen at once but a slow store costs
    /// little. The bound counts from the start of the lookup, so behind a hung store only the
    /// requests of that first moment wait at all.
    pub with_value: Duration,
    /// When the secret is missing: long enough for a keyring that is being unlocked.
    pub without_value: Duration,
}

impl Default for Waits {
    fn default() -> Self {
        Waits {
            with_value: Duration::from_millis(500),
            without_value: Duration::from_secs(5),
        }
    }
}

/// The state of one named secret.
struct Slot {
    name: String,
    source: SecretSource,
    state: Mutex<SlotState>,
    /// Bumped when a lookup finishes; requests waiting for a lookup watch it.
    done: watch::Sender<u64>,
}

struct SlotState {
    value: Option<Arc<SecretString>>,
    error: Option<LookupError>,
    checked: Instant,
    /// When the lookup in flight started, if one is.
    flight: Option<Instant>,
}

impl SlotState {
    fn result(&self) -> Result<Arc<SecretString>, LookupError> {
        match &self.value {
            Some(value) => Ok(value.clone()),
            None => Err(self.error.clone().expect("a slot without a value has an error")),
        }
    }
}

/// Named secrets with their current values or the reason they are missing.
pub struct SecretCache {
    store: Arc<dyn SecretStore>,
    slots: BTreeMap<String, Arc<Slot>>,
    waits: Waits,
}

impl std::fmt::Debug for SecretCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCache")
            .field("names", &self.slots.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl SecretCache {
    /// Reads every secret now (blocking). Missing ones are recorded, not fatal.
    pub fn load(store: Arc<dyn SecretStore>, secrets: &BTreeMap<String, SecretSource>) -> SecretCache {
        let slots = secrets
            .iter()
            .map(|(name, source)| {
                let (value, error) = match store.fetch(source) {
                    Ok(value) => (Some(Arc::new(value)), None),
                    Err(error) => (None, Some(error)),
                };
                let state = SlotState {
                    value,
                    error,
                    checked: Instant::now(),
                    flight: None,
                };
                let slot = Slot {
                    name: name.clone(),
                    source: source.clone(),
                    state: Mutex::new(state),
                    done: watch::Sender::new(0),
                };
                (name.clone(), Arc::new(slot))
            })
            .collect();
        SecretCache {
            store,
            slots,
            waits: Waits::default(),
        }
    }

    /// The same cache with other waiting bounds (tests).
    pub fn with_waits(mut self, waits: Waits) -> SecretCache {
        self.waits = waits;
        self
    }

    /// The current value of `name`, reading it again first if the last read is older than
    /// [`REFRESH_AFTER`] (waiting a bounded time for that read).
    pub async fn get(&self, name: &str) -> Result<Arc<SecretString>, LookupError> {
        let slot = self
            .slots
            .get(name)
            .expect("config validation guarantees every used secret is declared");
        let (mut done, deadline) = {
            let mut state = lock(&slot.state);
            let settled = matches!(slot.source, SecretSource::Env(_)) && state.value.is_some();
            if settled || state.checked.elapsed() < REFRESH_AFTER {
                return state.result();
            }
            // Subscribed under the lock: a lookup finishing after this point is seen.
            let done = slot.done.subscribe();
            let started = match state.flight {
                Some(started) => started,
                None => {
                    let now = Instant::now();
                    state.flight = Some(now);
                    tokio::spawn(refresh(self.store.clone(), slot.clone()));
                    now
                }
            };
            let wait = if state.value.is_some() {
                self.waits.with_value
            } else {
                self.waits.without_value
            };
            (done, started + wait)
        };
        // Only until the lookup has run for the bound: behind a hung store, later requests do
        // not wait at all.
        let _ = tokio::time::timeout_at(deadline, done.changed()).await;
        lock(&slot.state).result()
    }

    /// Starts a read of every secret whose last read is older than [`REFRESH_AFTER`] and that no
    /// lookup is reading now, without waiting for any. The readiness probe calls it: a pod that
    /// is not ready gets no requests, so nothing else would read a missing secret again.
    pub fn refresh_stale(&self) {
        for slot in self.slots.values() {
            let mut state = lock(&slot.state);
            let settled = matches!(slot.source, SecretSource::Env(_)) && state.value.is_some();
            if settled || state.flight.is_some() || state.checked.elapsed() < REFRESH_AFTER {
                continue;
            }
            state.flight = Some(Instant::now());
            tokio::spawn(refresh(self.store.clone(), slot.clone()));
        }
    }

    /// Each secret's name, source and, if it is missing, why.
    pub fn status(&self) -> Vec<(String, SecretSource, Option<LookupError>)> {
        self.slots
            .iter()
            .map(|(name, slot)| {
                let state = lock(&slot.state);
                (name.clone(), slot.source.clone(), state.error.clone())
            })
            .collect()
    }

    pub fn source(&self, name: &str) -> Option<&SecretSource> {
        self.slots.get(name).map(|slot| &slot.source)
    }
}

fn lock(state: &Mutex<SlotState>) -> std::sync::MutexGuard<'_, SlotState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The one lookup in flight for `slot`: reads the store off the async threads, records what it
/// found (logging changes by name only) and wakes the waiting requests.
async fn refresh(store: Arc<dyn SecretStore>, slot: Arc<Slot>) {
    let source = slot.source.clone();
    let result = tokio::task::spawn_blocking(move || store.fetch(&source))
        .await
        .unwrap_or_else(|_| {
            Err(LookupError::Unreachable {
                from: slot.source.to_string(),
                detail: "the lookup task failed".into(),
            })
        });
    {
        let mut state = lock(&slot.state);
        state.checked = Instant::now();
        state.flight = None;
        let name = slot.name.as_str();
        match (result, &state.value) {
            (Ok(value), Some(old)) => {
                if value.expose_secret() != old.expose_secret() {
                    tracing::info!(secret = name, source = %slot.source, "secret changed; the new value is in use");
                    state.value = Some(Arc::new(value));
                }
            }
            (Ok(value), None) => {
                tracing::info!(secret = name, source = %slot.source, "secret is now available");
                state.value = Some(Arc::new(value));
                state.error = None;
            }
            (Err(error), Some(_)) if error.is_unreachable() => {
                tracing::warn!(
                    secret = name,
                    source = %slot.source,
                    reason = %error,
                    "secret could not be read again; its last value stays in use"
                );
            }
            (Err(error), Some(_)) => {
                tracing::warn!(
                    secret = name,
                    source = %slot.source,
                    reason = %error,
                    "secret is no longer available; routes using it answer 503 until it is set"
                );
                state.value = None;
                state.error = Some(error);
            }
            (Err(error), None) => state.error = Some(error),
        }
    }
    slot.done.send_modify(|n| *n += 1);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::secrets::memory::MemoryStore;

    fn one(store: Arc<dyn SecretStore>, source: &SecretSource) -> SecretCache {
        SecretCache::load(store, &BTreeMap::from([("x".to_string(), source.clone())]))
    }

    /// Makes the last read of `x` old enough to be read again.
    fn age(cache: &SecretCache) {
        let mut state = cache.slots["x"].state.lock().unwrap();
        state.checked = Instant::now() - REFRESH_AFTER;
    }

    #[tokio::test]
    async fn missing_changed_and_deleted_values_are_read_again() {
        let store = Arc::new(MemoryStore::default());
        let source = SecretSource::File("/x".into());
        let cache = one(store.clone(), &source);
        assert!(matches!(cache.get("x").await, Err(LookupError::Missing { .. })));
        store.values.lock().unwrap().insert(source.to_string(), "v1".into());
        // Within the refresh window the miss is remembered.
        assert!(cache.get("x").await.is_err());
        age(&cache);
        let first = cache.get("x").await.unwrap();
        assert_eq!(first.expose_secret(), "v1");
        assert!(cache.status()[0].2.is_none());

        // The same value keeps its Arc; a changed one swaps it.
        age(&cache);
        assert!(Arc::ptr_eq(&first, &cache.get("x").await.unwrap()));
        store.values.lock().unwrap().insert(source.to_string(), "v2".into());
        assert_eq!(cache.get("x").await.unwrap().expose_secret(), "v1", "within the window");
        age(&cache);
        assert_eq!(cache.get("x").await.unwrap().expose_secret(), "v2");

        // Deleted: missing again, with the reason.
        store.values.lock().unwrap().clear();
        age(&cache);
        assert!(matches!(cache.get("x").await, Err(LookupError::Missing { .. })));
        assert!(cache.status()[0].2.is_some());
    }

    /// Counts lookups and holds each one until released.
    struct Gate {
        calls: AtomicUsize,
        open: Mutex<bool>,
        opened: std::sync::Condvar,
        value: Mutex<Result<String, LookupError>>,
    }

    impl Gate {
        fn new(value: Result<String, LookupError>) -> Arc<Gate> {
            Arc::new(Gate {
                calls: AtomicUsize::new(0),
                open: Mutex::new(true),
                opened: std::sync::Condvar::new(),
                value: Mutex::new(value),
            })
        }

        fn set_open(&self, open: bool) {
            *self.open.lock().unwrap() = open;
            self.opened.notify_all();
        }
    }

    impl SecretStore for Gate {
        fn fetch(&self, _: &SecretSource) -> Result<SecretString, LookupError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
            self.value.lock().unwrap().clone().map(SecretString::from)
        }
    }

    const LONG: Waits = Waits {
        with_value: Duration::from_secs(60),
        without_value: Duration::from_secs(60),
    };

    #[tokio::test]
    async fn one_lookup_in_flight_however_many_requests_wait() {
        let missing = LookupError::Missing { from: "test".into() };
        let gate = Gate::new(Err(missing));
        let source = SecretSource::File("/x".into());
        let cache = Arc::new(one(gate.clone(), &source).with_waits(LONG));
        assert_eq!(gate.calls.load(Ordering::SeqCst), 1, "the load");

        *gate.value.lock().unwrap() = Ok("fresh".into());
        gate.set_open(false);
        age(&cache);
        let waiting: Vec<_> = (0..64)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get("x").await })
            })
            .collect();
        // Every request is waiting once the one lookup has started and they all had a turn.
        while gate.calls.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        assert_eq!(gate.calls.load(Ordering::SeqCst), 2, "one lookup for 64 requests");
        gate.set_open(true);
        for request in waiting {
            assert_eq!(request.await.unwrap().unwrap().expose_secret(), "fresh");
        }
        assert_eq!(gate.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_hung_store_delays_one_request_briefly_and_no_other() {
        let gate = Gate::new(Ok("old".into()));
        let source = SecretSource::File("/x".into());
        let short = Waits {
            with_value: Duration::from_secs(1),
            without_value: Duration::from_secs(1),
        };
        let cache = one(gate.clone(), &source).with_waits(short);
        gate.set_open(false);
        age(&cache);
        // The first request waits for the bound, then uses the last value.
        assert_eq!(cache.get("x").await.unwrap().expose_secret(), "old");
        // Later ones do not wait on the hung lookup, nor start another.
        let started = std::time::Instant::now();
        for _ in 0..20 {
            assert_eq!(cache.get("x").await.unwrap().expose_secret(), "old");
        }
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        assert_eq!(gate.calls.load(Ordering::SeqCst), 2);
        gate.set_open(true);
    }

    #[tokio::test]
    async fn an_unreachable_store_keeps_the_last_value() {
        let gate = Gate::new(Ok("kept".into()));
        let source = SecretSource::File("/x".into());
        let cache = one(gate.clone(), &source);
        *gate.value.lock().unwrap() = Err(LookupError::Unreachable {
            from: "test".into(),
            detail: "down".into(),
        });
        age(&cache);
        assert_eq!(cache.get("x").await.unwrap().expose_secret(), "kept");
        assert!(cache.status()[0].2.is_none());
    }

    #[tokio::test]
    async fn refresh_stale_reads_old_entries_without_waiting() {
        let store = Arc::new(MemoryStore::default());
        let source = SecretSource::File("/x".into());
        let cache = one(store.clone(), &source);
        assert!(cache.status()[0].2.is_some());
        store.values.lock().unwrap().insert(source.to_string(), "v1".into());
        // Fresh: nothing is read.
        cache.refresh_stale();
        assert!(cache.slots["x"].state.lock().unwrap().flight.is_none());
        age(&cache);
        let mut done = cache.slots["x"].done.subscribe();
        cache.refresh_stale();
        done.changed().await.unwrap();
        assert!(cache.status()[0].2.is_none(), "resolved by the background read");
    }

    #[test]
    fn debug_names_no_value() {
        let store = Arc::new(MemoryStore::default());
        let source = SecretSource::Env("X".into());
        store
            .values
            .lock()
            .unwrap()
            .insert(source.to_string(), "hunter2-value".into());
        let cache = one(store, &source);
        assert!(!format!("{cache:?}").contains("hunter2"));
    }
}
