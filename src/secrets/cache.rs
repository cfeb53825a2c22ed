//! The secrets of one config generation, read once and kept in memory.
//!
//! A secret that was missing (or whose store was unreachable) is looked up again on demand, at
//! most once per [`RETRY_AFTER`], so `secretproxy secret set` or a keyring that unlocks later
//! takes effect without a restart. A present secret is kept until the next reload.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::SecretString;

use super::{LookupError, SecretSource, SecretStore};

/// How long a failed lookup is remembered before the store is asked again.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);

/// The state of one named secret.
struct Slot {
    source: SecretSource,
    state: Mutex<SlotState>,
}

struct SlotState {
    value: Option<Arc<SecretString>>,
    error: Option<LookupError>,
    checked: Instant,
}

/// Named secrets with their current values or the reason they are missing.
pub struct SecretCache {
    store: Arc<dyn SecretStore>,
    slots: BTreeMap<String, Slot>,
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
                };
                (
                    name.clone(),
                    Slot {
                        source: source.clone(),
                        state: Mutex::new(state),
                    },
                )
            })
            .collect();
        SecretCache { store, slots }
    }

    /// The current value of `name`, asking the store again if it was missing long enough ago.
    pub async fn get(&self, name: &str) -> Result<Arc<SecretString>, LookupError> {
        let slot = self
            .slots
            .get(name)
            .expect("config validation guarantees every used secret is declared");
        {
            let state = slot.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(value) = &state.value {
                return Ok(value.clone());
            }
            if state.checked.elapsed() < RETRY_AFTER {
                return Err(state.error.clone().expect("a slot without a value has an error"));
            }
        }
        let store = self.store.clone();
        let source = slot.source.clone();
        let result = tokio::task::spawn_blocking(move || store.fetch(&source))
            .await
            .unwrap_or_else(|_| {
                Err(LookupError::Unreachable {
                    from: slot.source.to_string(),
                    detail: "the lookup task failed".into(),
                })
            });
        let mut state = slot.state.lock().unwrap_or_else(|e| e.into_inner());
        state.checked = Instant::now();
        match result {
            Ok(value) => {
                tracing::info!(secret = name, source = %slot.source, "secret is now available");
                let value = Arc::new(value);
                state.value = Some(value.clone());
                state.error = None;
                Ok(value)
            }
            Err(error) => {
                state.error = Some(error.clone());
                Err(error)
            }
        }
    }

    /// Each secret's name, source and, if it is missing, why.
    pub fn status(&self) -> Vec<(String, SecretSource, Option<LookupError>)> {
        self.slots
            .iter()
            .map(|(name, slot)| {
                let state = slot.state.lock().unwrap_or_else(|e| e.into_inner());
                (name.clone(), slot.source.clone(), state.error.clone())
            })
            .collect()
    }

    pub fn source(&self, name: &str) -> Option<&SecretSource> {
        self.slots.get(name).map(|slot| &slot.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::memory::MemoryStore;
    use secrecy::ExposeSecret;

    #[tokio::test]
    async fn missing_secret_is_retried_after_a_while() {
        let store = Arc::new(MemoryStore::default());
        let source = SecretSource::Env("X".into());
        let cache = SecretCache::load(store.clone(), &BTreeMap::from([("x".to_string(), source.clone())]));
        assert!(matches!(cache.get("x").await, Err(LookupError::Missing { .. })));
        store.values.lock().unwrap().insert(source.to_string(), "v".into());
        // Within the retry window the miss is remembered.
        assert!(cache.get("x").await.is_err());
        cache.slots["x"].state.lock().unwrap().checked -= RETRY_AFTER;
        assert_eq!(cache.get("x").await.unwrap().expose_secret(), "v");
        assert!(cache.status()[0].2.is_none());
    }
}
