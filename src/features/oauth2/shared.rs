//! OAuth2 tokens shared through the store (`[state]`): one mint across replicas.
//!
//! A token source with a store reads the shared token first (`GET`); when there is none, or it
//! is due for renewal, one replica takes a short mint lock (`SET NX PX <source timeout>`),
//! mints, writes the token for its remaining lifetime and releases the lock (compare-and-delete);
//! the others wait for the new token (polling with a small, bounded backoff, at most the
//! source's `timeout`) and, if none comes, mint themselves. A token the upstream refused (401) is
//! deleted for every replica, but only while the store still holds that very token, so a wave of
//! 401s across N replicas costs one mint, not N.
//!
//! Invariants:
//! - **Never in clear**: the stored value is `version || nonce || AES-256-GCM(renew-at ||
//!   expires-at || token)` with a random nonce per write and the key name as associated data.
//!   The key is HKDF-SHA256 of the client secret (info: purpose, token URL, client id), so every
//!   replica with the same credentials derives it and the store alone cannot decrypt. A value
//!   that does not open (rotated secret, tampering, another format) counts as absent and is
//!   overwritten. Key material lives in `Zeroizing` buffers.
//! - **Key names hold no credential**: `oauth2:{DIGEST}` with DIGEST the SHA-256 of the token
//!   URL, client id, scopes, audience and params (length-prefixed), hex.
//! - **The store is only an optimisation here**: a token can always be minted locally, so any
//!   store error, timeout or open breaker falls back to a local mint (counted as an `oauth2`
//!   fallback with policy `local`); `on-error` does not apply to tokens.
//! - The local single-flight cache (`TokenCache`) stays the first layer: a request with a fresh
//!   local token never reaches the store.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::{Credentials, MintError, OAuth2Config, Token, TokenSource};
use crate::features::store::{OnError, Store, StoreError};

/// The first byte of every stored value: the format (bumped if the layout ever changes, so an
/// old replica treats a new value as absent instead of misreading it).
const VERSION: u8 = 1;
/// The longest pause between two polls of a replica waiting for another one's mint.
const MAX_POLL: Duration = Duration::from_millis(100);
/// The first pause.
const FIRST_POLL: Duration = Duration::from_millis(5);

/// The AEAD key of one token source, derived from its client secret.
pub struct TokenCipher {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for TokenCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCipher([REDACTED])")
    }
}

/// 32 bytes of HKDF output, kept in our own zeroized buffer rather than a ring key type.
struct KeyLength;

impl ring::hkdf::KeyType for KeyLength {
    fn len(&self) -> usize {
        32
    }
}

/// A token as it is stored, before sealing or after opening.
#[derive(Debug, PartialEq, Eq)]
pub struct Stored {
    /// Unix milliseconds from which the token is due for renewal.
    pub renew_at_ms: u64,
    /// Unix milliseconds at which it expires.
    pub expires_at_ms: u64,
}

impl TokenCipher {
    /// The key every replica with this client secret, token URL and client id derives.
    pub fn derive(client_secret: &str, token_url: &str, client_id: &str) -> TokenCipher {
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"secretproxy oauth2 token store");
        let prk = salt.extract(client_secret.as_bytes());
        let url_len = (token_url.len() as u64).to_be_bytes();
        let info: [&[u8]; 4] = [
            b"secretproxy oauth2 token v1 aes-256-gcm",
            &url_len,
            token_url.as_bytes(),
            client_id.as_bytes(),
        ];
        let mut key = Zeroizing::new([0u8; 32]);
        prk.expand(&info, KeyLength)
            .and_then(|okm| okm.fill(key.as_mut()))
            .expect("32 bytes is within HKDF-SHA256's output limit");
        TokenCipher { key }
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, self.key.as_ref()).expect("a 32-byte AES-256 key"))
    }

    /// `VERSION || nonce || ciphertext+tag` of the token and its times, bound to `name` (the key
    /// it is stored under, so a value copied to another key does not open).
    pub fn seal(&self, name: &str, times: &Stored, token: &SecretString) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the OS random source is available");
        let value = token.expose_secret().as_bytes();
        let mut sealed = Zeroizing::new(Vec::with_capacity(16 + value.len() + 16));
        sealed.extend_from_slice(&times.renew_at_ms.to_be_bytes());
        sealed.extend_from_slice(&times.expires_at_ms.to_be_bytes());
        sealed.extend_from_slice(value);
        let aad = [&[VERSION][..], name.as_bytes()].concat();
        self.aead()
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&aad), &mut *sealed)
            .expect("a token fits in one AES-GCM message");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The token and its times, or `None` when `blob` does not open under this key for `name`
    /// (another secret, tampered with, another format).
    pub fn open(&self, name: &str, blob: &[u8]) -> Option<(Stored, SecretString)> {
        let (&version, rest) = blob.split_first()?;
        if version != VERSION || rest.len() < NONCE_LEN + 16 {
            return None;
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let aad = [&[VERSION][..], name.as_bytes()].concat();
        let mut buffer = Zeroizing::new(sealed.to_vec());
        let plain = self
            .aead()
            .open_in_place(nonce, Aad::from(&aad), &mut buffer[..])
            .ok()?;
        if plain.len() < 17 {
            return None;
        }
        let (times, token) = plain.split_at(16);
        let token = std::str::from_utf8(token).ok()?;
        let stored = Stored {
            renew_at_ms: u64::from_be_bytes(times[..8].try_into().ok()?),
            expires_at_ms: u64::from_be_bytes(times[8..].try_into().ok()?),
        };
        Some((stored, SecretString::from(token.to_string())))
    }
}

/// The hex SHA-256 naming a token source's shared key: token URL, client id, scopes, audience
/// and params, each length-prefixed (so no two sources collide by shifting a boundary). The
/// client secret is not part of it: a rotated secret finds the old value, cannot open it and
/// overwrites it.
pub fn key_digest(config: &OAuth2Config, client_id: &str) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    field(b"secretproxy oauth2 v1");
    field(config.token_url.as_str().as_bytes());
    field(client_id.as_bytes());
    field(&(config.scopes.len() as u64).to_be_bytes());
    for scope in &config.scopes {
        field(scope.as_bytes());
    }
    match &config.audience {
        Some(audience) => {
            field(b"audience");
            field(audience.as_bytes());
        }
        None => field(b"no audience"),
    }
    field(&(config.params.len() as u64).to_be_bytes());
    for (name, value) in &config.params {
        field(name.as_bytes());
        field(value.as_bytes());
    }
    hex::encode(hasher.finalize())
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `instant` (tokio's clock) as Unix milliseconds, through the present.
fn to_unix_ms(instant: Instant, now: Instant, now_ms: u64) -> u64 {
    if instant >= now {
        now_ms.saturating_add(u64::try_from((instant - now).as_millis()).unwrap_or(u64::MAX))
    } else {
        now_ms.saturating_sub(u64::try_from((now - instant).as_millis()).unwrap_or(u64::MAX))
    }
}

/// Unix milliseconds as an instant of tokio's clock (the past clamps to a little before now).
fn from_unix_ms(ms: u64, now: Instant, now_ms: u64) -> Instant {
    if ms >= now_ms {
        now + Duration::from_millis(ms - now_ms)
    } else {
        now.checked_sub(Duration::from_millis(now_ms - ms)).unwrap_or(now)
    }
}

/// One shared read-or-mint of a source, with its key names and cipher.
struct Shared<'a> {
    source: &'a TokenSource,
    store: &'a Store,
    credentials: &'a Credentials,
    key: String,
    lock: String,
    cipher: TokenCipher,
}

/// The token of `source`, through the store: shared when the store answers, minted here when it
/// does not (as without a store).
pub(super) async fn obtain(source: &TokenSource, store: &Store, credentials: &Credentials) -> Result<Token, MintError> {
    let digest = key_digest(&source.config, &credentials.id);
    let shared = Shared {
        source,
        store,
        credentials,
        key: store.key(&format!("oauth2:{{{digest}}}")),
        lock: store.key(&format!("oauth2:{{{digest}}}:lock")),
        cipher: TokenCipher::derive(&credentials.secret, source.config.token_url.as_str(), &credentials.id),
    };
    match shared.run().await {
        Ok(outcome) => outcome,
        Err(error) => {
            store.fell_back("oauth2", OnError::Local);
            tracing::debug!(
                token_source = %source.config.name,
                error = %error,
                "shared store unavailable for the token; minting locally"
            );
            source.mint(credentials).await
        }
    }
}

impl Shared<'_> {
    /// The stored token at `blob` as a [`Token`] of this process, if it opens and has not
    /// expired.
    fn open(&self, blob: &Arc<[u8]>) -> Option<Token> {
        let (stored, value) = self.cipher.open(&self.key, blob)?;
        let (now, now_ms) = (Instant::now(), unix_ms_now());
        if stored.expires_at_ms <= now_ms {
            return None;
        }
        Some(Token {
            value: Arc::new(value),
            renew_at: from_unix_ms(stored.renew_at_ms, now, now_ms),
            expires_at: from_unix_ms(stored.expires_at_ms, now, now_ms),
            shared: Some(blob.clone()),
        })
    }

    /// The token at `blob` when it is a new one (neither the `stale` one seen before nor the
    /// `refused` one), opens, and is not due for renewal.
    fn fresh(&self, blob: &Arc<[u8]>, stale: Option<&Arc<[u8]>>, refused: Option<&Arc<[u8]>>) -> Option<Token> {
        if stale == Some(blob) || refused == Some(blob) {
            return None;
        }
        self.open(blob).filter(|token| Instant::now() < token.renew_at)
    }

    /// `Err` only for a store failure (the caller then mints locally).
    async fn run(&self) -> Result<Result<Token, MintError>, StoreError> {
        let refused = self.source.refused();
        // 1. The shared token, when it is fresh.
        let mut stale: Option<Arc<[u8]>> = None;
        if let Some(blob) = self.store.get_bytes("oauth2_get", &self.key).await? {
            let blob: Arc<[u8]> = blob.into();
            if refused.as_ref() == Some(&blob) {
                // The upstream refused this very token: gone for every replica, unless another
                // replica replaced it in the meantime.
                self.store.delete_if("oauth2_delete", &self.key, &blob).await?;
            } else if let Some(token) = self.open(&blob) {
                if Instant::now() < token.renew_at {
                    return Ok(Ok(token));
                }
                stale = Some(blob);
            }
            // A value that does not open counts as absent; the next mint overwrites it.
        }

        // 2. One replica mints.
        let timeout = self.source.config.timeout;
        let deadline = Instant::now() + timeout;
        let mut lock_value = [0u8; 16];
        SystemRandom::new()
            .fill(&mut lock_value)
            .expect("the OS random source is available");
        let lock_value = hex::encode(lock_value);
        if self
            .store
            .set_bytes("oauth2_lock", &self.lock, lock_value.as_bytes(), timeout, true)
            .await?
        {
            // Between the read and the lock another replica may have minted and released: look
            // again before minting (else a slow reader mints a second token for the same wave).
            if let Ok(Some(blob)) = self.store.get_bytes("oauth2_get", &self.key).await {
                let blob: Arc<[u8]> = blob.into();
                if let Some(token) = self.fresh(&blob, stale.as_ref(), refused.as_ref()) {
                    let _ = self
                        .store
                        .delete_if("oauth2_unlock", &self.lock, lock_value.as_bytes())
                        .await;
                    return Ok(Ok(token));
                }
            }
            return Ok(self.mint_and_share(lock_value.as_bytes()).await);
        }

        // 3. Another replica is minting. A still-valid stale token serves at once when this
        // process has none (its requests would otherwise wait); with a valid local token, this
        // one request waits for the new one while the others keep using the local token.
        if let Some(token) = stale.as_ref().and_then(|blob| self.open(blob))
            && !self.source.cache.holds_valid()
        {
            return Ok(Ok(token));
        }
        let mut pause = FIRST_POLL;
        loop {
            let now = Instant::now();
            if now >= deadline {
                tracing::debug!(token_source = %self.source.config.name, "no shared token within the timeout; minting locally");
                break;
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(MAX_POLL);
            let (blob, locked) = self.store.get_with("oauth2_wait", &self.key, &self.lock).await?;
            if let Some(token) = blob.and_then(|blob| self.fresh(&blob.into(), stale.as_ref(), refused.as_ref())) {
                return Ok(Ok(token));
            }
            if !locked {
                // The lock went without a new token: the other replica's mint failed.
                break;
            }
        }
        // A token is never worse than without a store.
        Ok(self.source.mint(self.credentials).await)
    }

    /// Mints as the lock holder, shares the token for its remaining lifetime and releases the
    /// lock.
    async fn mint_and_share(&self, lock_value: &[u8]) -> Result<Token, MintError> {
        let mut outcome = self.source.mint(self.credentials).await;
        if let Ok(token) = &mut outcome {
            let (now, now_ms) = (Instant::now(), unix_ms_now());
            let remaining = token.expires_at.saturating_duration_since(now);
            if !remaining.is_zero() {
                let stored = Stored {
                    renew_at_ms: to_unix_ms(token.renew_at, now, now_ms),
                    expires_at_ms: to_unix_ms(token.expires_at, now, now_ms),
                };
                let blob: Arc<[u8]> = self.cipher.seal(&self.key, &stored, &token.value).into();
                match self
                    .store
                    .set_bytes("oauth2_set", &self.key, &blob, remaining, false)
                    .await
                {
                    Ok(_) => token.shared = Some(blob),
                    Err(error) => {
                        self.store.fell_back("oauth2", OnError::Local);
                        tracing::debug!(token_source = %self.source.config.name, error = %error, "the minted token could not be shared");
                    }
                }
            }
        }
        // The lock expires by itself after the timeout if this fails.
        let _ = self.store.delete_if("oauth2_unlock", &self.lock, lock_value).await;
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> Stored {
        Stored {
            renew_at_ms: 1_700_000_000_000,
            expires_at_ms: 1_700_000_300_000,
        }
    }

    #[test]
    fn sealed_tokens_round_trip_and_hold_nothing_in_clear() {
        let cipher = TokenCipher::derive("client-s3cret", "https://auth.example/token", "shop-app");
        let token = SecretString::from("tok-Very-Secret-123".to_string());
        let blob = cipher.seal("secretproxy:oauth2:{ab}", &stored(), &token);
        let (times, value) = cipher.open("secretproxy:oauth2:{ab}", &blob).unwrap();
        assert_eq!(times, stored());
        assert_eq!(value.expose_secret(), "tok-Very-Secret-123");
        let text = String::from_utf8_lossy(&blob);
        assert!(!text.contains("tok-Very-Secret") && !text.contains("client-s3cret"));
        // A fresh nonce per write: the same token seals differently.
        assert_ne!(blob, cipher.seal("secretproxy:oauth2:{ab}", &stored(), &token));
        assert_eq!(format!("{cipher:?}"), "TokenCipher([REDACTED])");
        // The same credentials derive the same key on every replica.
        let again = TokenCipher::derive("client-s3cret", "https://auth.example/token", "shop-app");
        assert!(again.open("secretproxy:oauth2:{ab}", &blob).is_some());
    }

    #[test]
    fn wrong_key_tampering_or_another_name_do_not_open() {
        let cipher = TokenCipher::derive("client-s3cret", "https://auth.example/token", "shop-app");
        let blob = cipher.seal("k", &stored(), &SecretString::from("tok".to_string()));
        let rotated = TokenCipher::derive("rotated-secret", "https://auth.example/token", "shop-app");
        assert!(rotated.open("k", &blob).is_none());
        let other_id = TokenCipher::derive("client-s3cret", "https://auth.example/token", "other-app");
        assert!(other_id.open("k", &blob).is_none());
        let other_url = TokenCipher::derive("client-s3cret", "https://evil.example/token", "shop-app");
        assert!(other_url.open("k", &blob).is_none());
        assert!(cipher.open("another-key", &blob).is_none());
        for index in 0..blob.len() {
            let mut tampered = blob.clone();
            tampered[index] ^= 0x01;
            assert!(cipher.open("k", &tampered).is_none(), "byte {index}");
        }
        assert!(cipher.open("k", &blob[..blob.len() - 1]).is_none());
        assert!(cipher.open("k", b"").is_none());
        assert!(cipher.open("k", b"tok").is_none());
    }

    fn config() -> OAuth2Config {
        OAuth2Config {
            name: "pay".into(),
            token_url: url::Url::parse("https://auth.example/token").unwrap(),
            client_id: crate::configkit::template::ValueTemplate::parse("${id}").unwrap(),
            client_secret: crate::configkit::template::ValueTemplate::parse("${secret}").unwrap(),
            scopes: vec!["read".into(), "write".into()],
            audience: Some("https://api.example/".into()),
            params: vec![("resource".into(), "orders".into())],
            client_auth: super::super::ClientAuth::Basic,
            ca_file: None,
            timeout: super::super::DEFAULT_TIMEOUT,
        }
    }

    #[test]
    fn key_digest_is_stable_and_free_of_the_client_id() {
        let digest = key_digest(&config(), "shop-app-client-id");
        // Pinned (computed independently): replicas of different builds must find each other's
        // tokens.
        assert_eq!(
            digest,
            "23bdba727896c44f2067ddeb776139ad66efbd402421c0fd5febb85a275d40c4"
        );
        assert_eq!(digest.len(), 64);
        assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!digest.contains("shop-app"));
        assert_ne!(digest, key_digest(&config(), "another-id"));
        let mut scopes = config();
        scopes.scopes = vec!["readwrite".into()];
        assert_ne!(digest, key_digest(&scopes, "shop-app-client-id"));
        let mut shifted = config();
        shifted.scopes = vec!["rea".into(), "dwrite".into()];
        assert_ne!(digest, key_digest(&shifted, "shop-app-client-id"));
        let mut audience = config();
        audience.audience = None;
        assert_ne!(digest, key_digest(&audience, "shop-app-client-id"));
        let mut params = config();
        params.params.clear();
        assert_ne!(digest, key_digest(&params, "shop-app-client-id"));
    }

    #[tokio::test(start_paused = true)]
    async fn times_convert_through_unix_milliseconds() {
        let (now, now_ms) = (Instant::now(), 1_000_000);
        let later = now + Duration::from_secs(90);
        assert_eq!(to_unix_ms(later, now, now_ms), 1_090_000);
        assert_eq!(from_unix_ms(1_090_000, now, now_ms), later);
        tokio::time::advance(Duration::from_secs(10)).await;
        let now = Instant::now();
        let earlier = now - Duration::from_secs(5);
        assert_eq!(to_unix_ms(earlier, now, now_ms), 995_000);
        assert_eq!(from_unix_ms(995_000, now, now_ms), earlier);
    }
}
