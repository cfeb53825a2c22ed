//! OAuth2 client credentials (RFC 6749 4.4): the `[oauth2.NAME]` token sources and the routes
//! that use them with `auth = { oauth2 = "NAME" }`.
//!
//! This module owns the table's validation (`OAuth2Config::from_raw`), the token request (form
//! encoding and client authentication), the token cache ([`TokenCache`]) and the token source of
//! a generation ([`TokenSource`]), which a reload carries over while its config is unchanged so
//! a reload never re-mints.
//!
//! Invariants:
//! - **Minted on first use**, then cached; renewed ahead of expiry ([`renew_after`]). A token
//!   past its expiry is never handed out; one in its renewal window is handed out while another
//!   request renews it (or when renewing fails), since it is still valid.
//! - **Single flight**: one mint in flight per source, however many requests wait; the waiters
//!   share its outcome, a failure included, so a down endpoint costs one attempt per wave of
//!   requests, not one per request.
//! - **401**: the pipeline reports the token the upstream refused ([`TokenSource::rejected`]);
//!   only that exact token is dropped (by identity), so many requests failing with the same token
//!   cause exactly one re-mint.
//! - **Shared with `[state]`** ([`shared`]): the replicas read one sealed token from the store
//!   and one of them mints (under a short lock) when it is missing, due or refused; the local
//!   cache stays the first layer, and any store failure falls back to a local mint.
//! - Tokens and client secrets are secrets: the token is a `SecretString` (zeroized on drop),
//!   rendered credentials live in `Zeroizing` buffers, errors quote only the endpoint's status and
//!   its RFC 6749 `error` code, never a body, a header or a credential.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::configkit::template::{ValuePart, ValueTemplate, is_name};
use crate::configkit::{ConfigError, Source};
use crate::http::error::ProxyError;
use crate::secrets::{SecretCache, SecretSource};
use crate::upstream::{Upstream, Upstreams};

pub mod shared;

/// Lifetime assumed when the endpoint sends no `expires_in` (RFC 6749 makes it optional); a
/// token revoked earlier is still replaced on the upstream's 401.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Default limit for one token request, connect to last body byte.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a token response that is read.
const MAX_RESPONSE: usize = 64 * 1024;

/// How the client authenticates to the token endpoint (RFC 6749 2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `Authorization: Basic base64(urlencode(id):urlencode(secret))` (the default).
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Body,
}

/// A validated `[oauth2.NAME]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct OAuth2Config {
    pub name: String,
    pub token_url: url::Url,
    pub client_id: ValueTemplate,
    pub client_secret: ValueTemplate,
    pub scopes: Vec<String>,
    pub audience: Option<String>,
    /// Extra form fields, in order.
    pub params: Vec<(String, String)>,
    pub client_auth: ClientAuth,
    pub ca_file: Option<std::path::PathBuf>,
    pub timeout: Duration,
}

/// Form fields the proxy sets itself; `params` may not override them.
const RESERVED_PARAMS: &[&str] = &["grant_type", "client_id", "client_secret", "scope", "audience"];

/// `[oauth2.NAME]`: an OAuth2 client-credentials token source.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawOAuth2 {
    pub token_url: toml::Spanned<String>,
    /// A template: may take `${secret}`.
    pub client_id: toml::Spanned<String>,
    /// A template naming at least one secret.
    pub client_secret: toml::Spanned<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub audience: Option<String>,
    #[serde(default)]
    pub params: BTreeMap<String, toml::Spanned<String>>,
    /// `"basic"` (default) or `"body"`.
    pub client_auth: Option<toml::Spanned<String>>,
    pub ca_file: Option<toml::Spanned<String>>,
    pub timeout: Option<toml::Spanned<String>>,
}

impl OAuth2Config {
    pub(crate) fn from_raw(
        name: &str,
        raw: &toml::Spanned<RawOAuth2>,
        secrets: &BTreeMap<String, SecretSource>,
        source: &Source<'_>,
    ) -> Result<OAuth2Config, ConfigError> {
        let key = |field: &str| format!("oauth2.{name}.{field}");
        if !is_name(name) {
            return Err(source.error(
                raw.span(),
                format!("oauth2.{name}"),
                "token source names may hold only letters, digits, `-` and `_`",
            ));
        }
        let raw = raw.get_ref();
        let url_text = raw.token_url.get_ref();
        let token_url = url::Url::parse(url_text)
            .ok()
            .filter(|url| matches!(url.scheme(), "https" | "http") && url.host().is_some())
            .ok_or_else(|| {
                source.error(
                    raw.token_url.span(),
                    key("token-url"),
                    format!("`{url_text}` is not an http(s) URL"),
                )
            })?;
        if !token_url.username().is_empty() || token_url.password().is_some() || token_url.fragment().is_some() {
            return Err(source
                .error(
                    raw.token_url.span(),
                    key("token-url"),
                    "the token URL may not hold credentials or a fragment",
                )
                .with_help("put the client id and secret in `client-id` and `client-secret`"));
        }
        if token_url.scheme() == "http" && !is_loopback(&token_url) {
            return Err(source
                .error(
                    raw.token_url.span(),
                    key("token-url"),
                    "plain http would send the client secret unencrypted",
                )
                .with_help("use https; plain http is allowed to loopback addresses only"));
        }
        let template = |value: &toml::Spanned<String>, field: &str| -> Result<ValueTemplate, ConfigError> {
            let template =
                ValueTemplate::parse(value.get_ref()).map_err(|m| source.error(value.span(), key(field), m))?;
            for secret in template.secrets() {
                if !secrets.contains_key(secret) {
                    return Err(source
                        .error(value.span(), key(field), format!("unknown secret `{secret}`"))
                        .with_help(format!("declare it in a `[secrets.{secret}]` table")));
                }
            }
            if template
                .parts
                .iter()
                .any(|p| matches!(p, ValuePart::Literal(text) if text.contains(['\r', '\n', '\0'])))
            {
                return Err(source.error(value.span(), key(field), "may not contain line breaks"));
            }
            Ok(template)
        };
        let client_id = template(&raw.client_id, "client-id")?;
        let client_secret = template(&raw.client_secret, "client-secret")?;
        if client_secret.secrets().next().is_none() {
            return Err(source
                .error(
                    raw.client_secret.span(),
                    key("client-secret"),
                    "the client secret must come from a secret, not the config file",
                )
                .with_help(format!(
                    "e.g. `client-secret = \"${{{name}-secret}}\"` with a `[secrets.{name}-secret]` table"
                )));
        }
        let client_auth = match raw.client_auth.as_ref().map(|v| v.get_ref().as_str()) {
            None | Some("basic") => ClientAuth::Basic,
            Some("body") => ClientAuth::Body,
            Some(other) => {
                return Err(source
                    .error(
                        raw.client_auth.as_ref().expect("matched Some").span(),
                        key("client-auth"),
                        format!("`{other}` is not a client authentication method"),
                    )
                    .with_help("use \"basic\" (the default) or \"body\""));
            }
        };
        let mut params = Vec::new();
        for (field, value) in &raw.params {
            if field.is_empty() || RESERVED_PARAMS.contains(&field.as_str()) {
                return Err(source
                    .error(
                        value.span(),
                        format!("oauth2.{name}.params.{field}"),
                        format!("`{field}` is set by the proxy and cannot be a parameter"),
                    )
                    .with_help("use `scopes`, `audience`, `client-id` and `client-secret` for those"));
            }
            params.push((field.clone(), value.get_ref().clone()));
        }
        let ca_file = match &raw.ca_file {
            None => None,
            Some(path) => Some(crate::configkit::ca_file(path, key("ca-file"), source)?),
        };
        let timeout = match &raw.timeout {
            None => DEFAULT_TIMEOUT,
            Some(text) => crate::configkit::duration::duration(
                text,
                &key("timeout"),
                crate::configkit::duration::Zero::Refused,
                Some("e.g. \"10s\""),
                source,
            )?,
        };
        Ok(OAuth2Config {
            name: name.to_string(),
            token_url,
            client_id,
            client_secret,
            scopes: raw.scopes.clone(),
            audience: raw.audience.clone(),
            params,
            client_auth,
            ca_file,
            timeout,
        })
    }

    /// Every secret the source reads.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.client_id.secrets().chain(self.client_secret.secrets())
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// The form body of a token request: `grant_type=client_credentials`, the scopes (one
/// space-separated `scope`), the audience, the extra params and, for `client-auth = "body"`, the
/// credentials. Zeroized when dropped.
pub fn token_form(config: &OAuth2Config, credentials: Option<(&str, &str)>) -> Zeroizing<String> {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "client_credentials");
    if !config.scopes.is_empty() {
        form.append_pair("scope", &config.scopes.join(" "));
    }
    if let Some(audience) = &config.audience {
        form.append_pair("audience", audience);
    }
    for (name, value) in &config.params {
        form.append_pair(name, value);
    }
    if let Some((id, secret)) = credentials {
        form.append_pair("client_id", id);
        form.append_pair("client_secret", secret);
    }
    Zeroizing::new(form.finish())
}

/// `Basic base64(urlencode(id):urlencode(secret))`: RFC 6749 2.3.1 form-encodes both before
/// they are joined, so a `:` in the id cannot shift the split.
pub fn basic_credentials(id: &str, secret: &str) -> Zeroizing<String> {
    let encode = |text: &str| Zeroizing::new(url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>());
    let pair = Zeroizing::new(format!("{}:{}", encode(id).as_str(), encode(secret).as_str()));
    Zeroizing::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
    ))
}

/// When a token of this lifetime is renewed, counted from when it was requested: at 80 % of its
/// lifetime or 60 s before it expires, whichever is earlier, but never before half of it (so a
/// token that lives under two minutes is still used for a while instead of being re-minted for
/// every request).
pub fn renew_after(lifetime: Duration) -> Duration {
    let margin = (lifetime / 5).max(Duration::from_secs(60).min(lifetime / 2));
    lifetime - margin
}

/// One minted token.
pub struct Token {
    pub value: Arc<SecretString>,
    pub renew_at: Instant,
    pub expires_at: Instant,
    /// The sealed value in the shared store, when the token came from it or went to it: what a
    /// 401 compares before deleting the shared key.
    pub shared: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token([REDACTED])")
    }
}

impl Token {
    /// A token requested at `requested` that lives `lifetime` from then.
    pub fn new(value: SecretString, requested: Instant, lifetime: Duration) -> Token {
        Token {
            value: Arc::new(value),
            renew_at: requested + renew_after(lifetime),
            expires_at: requested + lifetime,
            shared: None,
        }
    }
}

/// Why a mint failed: what the client is told (no secret in any field).
#[derive(Debug, Clone)]
pub enum MintError {
    /// The endpoint could not be reached, timed out or failed (5xx): try later.
    Unavailable(String),
    /// The endpoint answered, refusing the credentials or with an unusable answer.
    Refused(String),
    /// A secret the source needs is missing.
    Secret(Box<ProxyErrorParts>),
}

/// The fields of a `SecretUnavailable` error, kept cloneable for waiters sharing a failure.
#[derive(Debug, Clone)]
pub struct ProxyErrorParts {
    pub secret: String,
    pub reason: String,
    pub hint: String,
    pub unreachable: bool,
}

impl MintError {
    pub fn into_proxy_error(self, source: &str) -> ProxyError {
        match self {
            MintError::Unavailable(reason) => ProxyError::TokenUnavailable {
                token_source: source.to_string(),
                reason,
            },
            MintError::Refused(reason) => ProxyError::TokenRefused {
                token_source: source.to_string(),
                reason,
            },
            MintError::Secret(parts) => ProxyError::SecretUnavailable {
                secret: parts.secret,
                reason: parts.reason,
                hint: parts.hint,
                unreachable: parts.unreachable,
            },
        }
    }
}

/// The cached token and the outcome of the last mint.
#[derive(Default)]
struct CacheState {
    token: Option<Arc<Token>>,
    /// Mints attempted so far; a waiter that sees it move on takes that mint's outcome.
    attempts: u64,
    last_error: Option<MintError>,
}

/// The cache and single-flight logic, apart from HTTP so it runs on a paused clock in tests.
#[derive(Default)]
pub struct TokenCache {
    state: std::sync::Mutex<CacheState>,
    /// Held while a mint is in flight.
    minting: tokio::sync::Mutex<()>,
}

impl TokenCache {
    fn state(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current token, minting one with `mint` when there is none, it is due for renewal or it
    /// expired. `mint` returns the token and when it was requested.
    pub async fn get<F, Fut>(&self, mint: F) -> Result<Arc<Token>, MintError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Token, MintError>>,
    {
        let (valid, seen) = {
            let state = self.state();
            let now = Instant::now();
            match &state.token {
                Some(token) if now < token.renew_at => return Ok(token.clone()),
                Some(token) if now < token.expires_at => (Some(token.clone()), state.attempts),
                _ => (None, state.attempts),
            }
        };
        let _flight = match valid {
            // Still valid: whoever holds the lock renews it; this request need not wait.
            Some(valid) => match self.minting.try_lock() {
                Ok(guard) => guard,
                Err(_) => return Ok(valid),
            },
            None => self.minting.lock().await,
        };
        {
            let state = self.state();
            if state.attempts != seen {
                // A mint finished while this request waited: share its outcome.
                let now = Instant::now();
                match (&state.token, &state.last_error) {
                    (Some(token), _) if now < token.renew_at => return Ok(token.clone()),
                    (Some(token), Some(_)) if now < token.expires_at => return Ok(token.clone()),
                    (_, Some(error)) => return Err(error.clone()),
                    _ => {}
                }
            }
        }
        let outcome = mint().await;
        let mut state = self.state();
        state.attempts += 1;
        match outcome {
            Ok(token) => {
                let token = Arc::new(token);
                state.token = Some(token.clone());
                state.last_error = None;
                Ok(token)
            }
            Err(error) => {
                state.last_error = Some(error.clone());
                match &state.token {
                    // Renewal failed but the token has not expired: keep using it.
                    Some(token) if Instant::now() < token.expires_at => Ok(token.clone()),
                    _ => {
                        state.token = None;
                        Err(error)
                    }
                }
            }
        }
    }

    /// Whether a token that has not expired is cached (due for renewal or not).
    pub fn holds_valid(&self) -> bool {
        self.state()
            .token
            .as_ref()
            .is_some_and(|token| Instant::now() < token.expires_at)
    }

    /// Drops `token` when it is still the current one (the upstream refused it). Returns whether
    /// it was.
    pub fn rejected(&self, token: &Arc<Token>) -> bool {
        let mut state = self.state();
        if state.token.as_ref().is_some_and(|current| Arc::ptr_eq(current, token)) {
            state.token = None;
            return true;
        }
        false
    }
}

/// One `[oauth2.NAME]` token source of a generation.
pub struct TokenSource {
    pub config: OAuth2Config,
    upstream: Arc<Upstream>,
    target: PathAndQuery,
    cache: TokenCache,
    mints: AtomicU64,
    /// The shared store of the generation (`[state]`), swapped when a reload carries the source
    /// over to a generation with another store.
    store: arc_swap::ArcSwapOption<crate::features::store::Store>,
    /// The stored form of the last token the upstream refused: the next shared read neither
    /// takes it again nor leaves it for the other replicas.
    refused: std::sync::Mutex<Option<Arc<[u8]>>>,
}

/// The rendered client id and secret of one mint (zeroized on drop).
pub(crate) struct Credentials {
    id: Zeroizing<String>,
    secret: Zeroizing<String>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("name", &self.config.name)
            .field("token_url", &self.config.token_url.as_str())
            .finish_non_exhaustive()
    }
}

/// The token sources of a generation, by name.
pub type TokenSources = BTreeMap<String, Arc<TokenSource>>;

/// Builds the sources of `configs`, carrying over from `previous` every source whose config is
/// unchanged (with its cached token); each shares its tokens through `store` when there is one.
pub fn build_sources(
    configs: &[OAuth2Config],
    previous: Option<&TokenSources>,
    upstreams: &mut Upstreams,
    store: Option<&Arc<crate::features::store::Store>>,
) -> Result<TokenSources, crate::upstream::ClientError> {
    let mut sources = TokenSources::new();
    for config in configs {
        if let Some(kept) = previous
            .and_then(|p| p.get(&config.name))
            .filter(|s| s.config == *config)
        {
            kept.store.store(store.cloned());
            sources.insert(config.name.clone(), kept.clone());
            continue;
        }
        let upstream = upstreams
            .for_origin(&config.token_url, config.ca_file.as_deref(), config.timeout)
            .map_err(|message| crate::upstream::ClientError {
                route: format!("oauth2.{}", config.name),
                message,
            })?;
        let target = match config.token_url.query() {
            Some(query) => format!("{}?{query}", config.token_url.path()),
            None => config.token_url.path().to_string(),
        };
        let target = PathAndQuery::try_from(target).map_err(|_| crate::upstream::ClientError {
            route: format!("oauth2.{}", config.name),
            message: "the token URL's path is not valid".into(),
        })?;
        sources.insert(
            config.name.clone(),
            Arc::new(TokenSource {
                config: config.clone(),
                upstream,
                target,
                cache: TokenCache::default(),
                mints: AtomicU64::new(0),
                store: arc_swap::ArcSwapOption::new(store.cloned()),
                refused: std::sync::Mutex::new(None),
            }),
        );
    }
    Ok(sources)
}

/// The fields of a token response that matter.
#[derive(serde::Deserialize)]
struct TokenResponse<'a> {
    #[serde(borrow)]
    access_token: Option<std::borrow::Cow<'a, str>>,
    token_type: Option<std::borrow::Cow<'a, str>>,
    expires_in: Option<serde_json::Value>,
}

/// The `error` member of a refusal, when it is a plain RFC 6749 code.
#[derive(serde::Deserialize)]
struct ErrorResponse<'a> {
    #[serde(borrow)]
    error: Option<std::borrow::Cow<'a, str>>,
}

impl TokenSource {
    /// The current token, minted or renewed as needed.
    pub async fn token(&self, secrets: &SecretCache) -> Result<Arc<Token>, ProxyError> {
        self.cache
            .get(|| self.obtain(secrets))
            .await
            .map_err(|error| error.into_proxy_error(&self.config.name))
    }

    /// A token for the cache: through the shared store when there is one, else minted here.
    async fn obtain(&self, secrets: &SecretCache) -> Result<Token, MintError> {
        let credentials = self.credentials(secrets).await?;
        match self.store.load_full() {
            Some(store) => shared::obtain(self, &store, &credentials).await,
            None => self.mint(&credentials).await,
        }
    }

    /// The stored form of the last refused token, if it came through the store.
    fn refused(&self) -> Option<Arc<[u8]>> {
        self.refused.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The upstream answered 401 with `token`: drop it so the next request mints.
    pub fn rejected(&self, token: &Arc<Token>) -> bool {
        let dropped = self.cache.rejected(token);
        if dropped && let Some(stored) = &token.shared {
            *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(stored.clone());
        }
        if dropped {
            tracing::info!(token_source = %self.config.name, "the upstream refused the token (401); minting a new one");
        }
        dropped
    }

    /// Tokens minted since the source was built.
    pub fn mints(&self) -> u64 {
        self.mints.load(Ordering::Relaxed)
    }

    /// The client id and secret, rendered from their secrets.
    async fn credentials(&self, secrets: &SecretCache) -> Result<Credentials, MintError> {
        let mut values: BTreeMap<&str, Arc<SecretString>> = BTreeMap::new();
        for secret in self.config.secrets() {
            if values.contains_key(secret) {
                continue;
            }
            match secrets.get(secret).await {
                Ok(value) => {
                    values.insert(secret, value);
                }
                Err(error) => {
                    let ProxyError::SecretUnavailable {
                        secret,
                        reason,
                        hint,
                        unreachable,
                    } = ProxyError::secret_unavailable(secrets, secret, &error)
                    else {
                        unreachable!("secret_unavailable builds SecretUnavailable")
                    };
                    return Err(MintError::Secret(Box::new(ProxyErrorParts {
                        secret,
                        reason,
                        hint,
                        unreachable,
                    })));
                }
            }
        }
        let lookup = |secret: &str| values[secret].clone();
        Ok(Credentials {
            id: crate::features::inject::render_value(&self.config.client_id, lookup),
            secret: crate::features::inject::render_value(&self.config.client_secret, lookup),
        })
    }

    /// One token request to the endpoint.
    async fn mint(&self, credentials: &Credentials) -> Result<Token, MintError> {
        let name = &self.config.name;
        let (id, secret) = (&credentials.id, &credentials.secret);
        let (form, authorization) = match self.config.client_auth {
            ClientAuth::Basic => (token_form(&self.config, None), Some(basic_credentials(id, secret))),
            ClientAuth::Body => (token_form(&self.config, Some((id, secret))), None),
        };
        let mut request = Request::new(
            http_body_util::Full::new(Bytes::copy_from_slice(form.as_bytes()))
                .map_err(|never| match never {})
                .boxed(),
        );
        *request.method_mut() = Method::POST;
        let headers = request.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(authorization) = authorization {
            let Some(value) = crate::features::inject::sensitive_header(&authorization) else {
                return Err(MintError::Refused(
                    "the client id or secret holds characters a header cannot carry".into(),
                ));
            };
            headers.insert(header::AUTHORIZATION, value);
        }
        drop(form);

        let requested = Instant::now();
        let exchange = async {
            let response = self
                .upstream
                .send(self.target.clone(), request)
                .await
                .map_err(|error| MintError::Unavailable(format!("cannot reach the token endpoint: {error}")))?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|_| {
                    MintError::Unavailable(format!("the token endpoint's answer ({status}) could not be read"))
                })?
                .to_bytes();
            Ok::<_, MintError>((status, Zeroizing::new(body.to_vec())))
        };
        let (status, body) = tokio::time::timeout(self.config.timeout, exchange)
            .await
            .map_err(|_| {
                MintError::Unavailable(format!(
                    "the token endpoint did not answer within {:?}",
                    self.config.timeout
                ))
            })??;
        let token = parse_token_response(status, &body, requested)?;
        let count = self.mints.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(
            token_source = %name,
            lifetime_s = (token.expires_at - requested).as_secs(),
            mints = count,
            "minted an OAuth2 token"
        );
        Ok(token)
    }
}

/// A token endpoint's answer as a [`Token`] requested at `requested`, or why it is unusable.
/// Error text holds the status and the RFC 6749 `error` code only, never the body.
pub fn parse_token_response(status: StatusCode, body: &[u8], requested: Instant) -> Result<Token, MintError> {
    if status.is_server_error() {
        return Err(MintError::Unavailable(format!(
            "the token endpoint failed with {status}"
        )));
    }
    if !status.is_success() {
        let code = serde_json::from_slice::<ErrorResponse>(body)
            .ok()
            .and_then(|e| e.error)
            .filter(|code| code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        return Err(MintError::Refused(match code {
            Some(code) => format!("the token endpoint refused with {status} `{code}`"),
            None if status.is_redirection() => {
                format!("the token endpoint redirected ({status}); redirects are not followed")
            }
            None => format!("the token endpoint refused with {status}"),
        }));
    }
    let parsed: TokenResponse = serde_json::from_slice(body)
        .map_err(|_| MintError::Refused("the token endpoint's answer is not a JSON token response".into()))?;
    let token = parsed
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| MintError::Refused("the token endpoint's answer has no `access_token`".into()))?;
    if let Some(kind) = &parsed.token_type
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(MintError::Refused(format!(
            "the token endpoint issued a `{}` token; only bearer tokens are supported",
            kind.chars()
                .filter(char::is_ascii_alphanumeric)
                .take(32)
                .collect::<String>()
        )));
    }
    if token.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err(MintError::Refused(
            "the access token holds characters a header cannot carry".into(),
        ));
    }
    // Some providers send `expires_in` as a string.
    let lifetime = match parsed.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .filter(|seconds| *seconds > 0)
    .map_or(DEFAULT_LIFETIME, Duration::from_secs);
    let value = SecretString::from(Zeroizing::new(token.into_owned()).as_str().to_string());
    Ok(Token::new(value, requested, lifetime))
}

/// `Bearer <token>` as a sensitive header value.
pub fn bearer_header(token: &Token) -> Option<HeaderValue> {
    let text = Zeroizing::new(format!("Bearer {}", token.value.expose_secret()));
    crate::features::inject::sensitive_header(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(auth: ClientAuth) -> OAuth2Config {
        OAuth2Config {
            name: "pay".into(),
            token_url: url::Url::parse("https://auth.example/token").unwrap(),
            client_id: ValueTemplate::parse("${id}").unwrap(),
            client_secret: ValueTemplate::parse("${secret}").unwrap(),
            scopes: vec!["read:a".into(), "write b".into()],
            audience: Some("https://api.example/".into()),
            params: vec![("resource".into(), "x&y=z".into())],
            client_auth: auth,
            ca_file: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    #[test]
    fn form_encodes_every_field() {
        let form = token_form(&config(ClientAuth::Basic), None);
        assert_eq!(
            form.as_str(),
            "grant_type=client_credentials&scope=read%3Aa+write+b&audience=https%3A%2F%2Fapi.example%2F&resource=x%26y%3Dz"
        );
        let form = token_form(&config(ClientAuth::Body), Some(("my id", "s3c:r&t+")));
        assert!(
            form.ends_with("&client_id=my+id&client_secret=s3c%3Ar%26t%2B"),
            "{}",
            form.as_str()
        );
    }

    #[test]
    fn basic_auth_form_encodes_before_base64() {
        // RFC 6749 2.3.1: the id and secret are form-encoded, then joined with `:`.
        let header = basic_credentials("id:with colon", "p@ss/wörd");
        let encoded = header.strip_prefix("Basic ").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            "id%3Awith+colon:p%40ss%2Fw%C3%B6rd"
        );
        assert_eq!(basic_credentials("a", "b").as_str(), "Basic YTpi");
    }

    #[test]
    fn renewal_is_ahead_of_expiry() {
        assert_eq!(renew_after(Duration::from_secs(3600)), Duration::from_secs(2880));
        assert_eq!(renew_after(Duration::from_secs(300)), Duration::from_secs(240));
        // 60 s before expiry is earlier than 80 % here.
        assert_eq!(renew_after(Duration::from_secs(120)), Duration::from_secs(60));
        // Very short tokens: renewed at half their life, never at once.
        assert_eq!(renew_after(Duration::from_secs(2)), Duration::from_secs(1));
        for seconds in 1..5000 {
            let lifetime = Duration::from_secs(seconds);
            let renew = renew_after(lifetime);
            assert!(renew < lifetime && renew >= lifetime / 2, "{seconds}");
        }
    }

    #[test]
    fn token_responses() {
        let now = Instant::now();
        let ok = parse_token_response(
            StatusCode::OK,
            br#"{"access_token":"tok-123","token_type":"Bearer","expires_in":"100"}"#,
            now,
        )
        .unwrap();
        assert_eq!(ok.value.expose_secret(), "tok-123");
        assert_eq!(ok.expires_at - now, Duration::from_secs(100));
        assert_eq!(format!("{ok:?}"), "Token([REDACTED])");
        let default = parse_token_response(StatusCode::OK, br#"{"access_token":"t"}"#, now).unwrap();
        assert_eq!(default.expires_at - now, DEFAULT_LIFETIME);

        let refused = parse_token_response(
            StatusCode::UNAUTHORIZED,
            br#"{"error":"invalid_client","error_description":"secret hunter2 is wrong"}"#,
            now,
        )
        .unwrap_err();
        let text = format!("{refused:?}");
        assert!(text.contains("invalid_client") && !text.contains("hunter2"), "{text}");
        assert!(matches!(
            parse_token_response(StatusCode::BAD_GATEWAY, b"tok-123", now),
            Err(MintError::Unavailable(_))
        ));
        let mac = parse_token_response(StatusCode::OK, br#"{"access_token":"tok-9","token_type":"mac"}"#, now);
        assert!(matches!(mac, Err(MintError::Refused(text)) if !text.contains("tok-9")));
    }

    const SECRETS: &str = "[secrets.id]\nenv = \"ID\"\n[secrets.sec]\nenv = \"SEC\"\n";

    fn parse(extra: &str) -> Result<crate::config::Config, String> {
        crate::config::Config::parse(&format!("{SECRETS}{extra}"), "proxy.toml").map_err(|e| e.to_string())
    }

    fn source(fields: &str) -> String {
        format!(
            "[oauth2.pay]\ntoken-url = \"https://auth.example/token\"\nclient-id = \"${{id}}\"\nclient-secret = \"${{sec}}\"\n{fields}"
        )
    }

    const ROUTE: &str = "[routes.r]\npath = \"/r\"\nupstream = \"https://api.example/\"\nauth = { oauth2 = \"pay\" }\n";

    #[test]
    fn config_tables_validate() {
        let config = parse(&format!(
            "{}{ROUTE}",
            source("scopes = [\"a\"]\naudience = \"x\"\nparams = { resource = \"r\" }\nclient-auth = \"body\"\ntimeout = \"5s\"\n")
        ))
        .unwrap();
        let pay = &config.oauth2[0];
        assert_eq!(
            (pay.client_auth, pay.timeout),
            (ClientAuth::Body, Duration::from_secs(5))
        );
        assert_eq!(config.routes[0].oauth2.as_deref(), Some("pay"));
        assert!(config.routes[0].headers.is_empty());
        assert_eq!(pay.secrets().collect::<Vec<_>>(), ["id", "sec"]);
        // Loopback http is fine.
        parse("[oauth2.l]\ntoken-url = \"http://127.0.0.1:9/token\"\nclient-id = \"me\"\nclient-secret = \"${sec}\"\n")
            .unwrap();

        let cases = [
            (
                source("").replace("https://auth.example", "http://auth.example"),
                "plain http",
            ),
            (source("").replace("${sec}", "${nope}"), "unknown secret `nope`"),
            (source("").replace("${sec}", "literal"), "must come from a secret"),
            (source("client-auth = \"jwt\"\n"), "not a client authentication method"),
            (source("params = { grant_type = \"password\" }\n"), "set by the proxy"),
            (source("tokenurl = \"x\"\n"), "unknown field"),
            (ROUTE.to_string(), "unknown token source `pay`"),
            (
                format!(
                    "{}{}",
                    source(""),
                    ROUTE.replace("oauth2 = \"pay\"", "oauth2 = \"pay\", bearer = \"id\"")
                ),
                "exactly one of",
            ),
            (
                format!("{}{ROUTE}headers = {{ Authorization = \"x\" }}\n", source("")),
                "both set the same header",
            ),
            (
                format!("{}{ROUTE}forward-headers = [\"authorization\"]\n", source("")),
                "injected by this route",
            ),
        ];
        for (text, expected) in cases {
            let message = parse(&text).expect_err(&text);
            assert!(message.contains(expected), "{expected:?} not in {message}");
        }
    }

    fn minted(value: &str, lifetime: u64) -> Token {
        Token::new(
            SecretString::from(value.to_string()),
            Instant::now(),
            Duration::from_secs(lifetime),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn cached_then_renewed_ahead_of_expiry_never_stale() {
        let cache = TokenCache::default();
        let mints = AtomicU64::new(0);
        let mint = || async {
            let n = mints.fetch_add(1, Ordering::SeqCst);
            Ok(minted(&format!("t{n}"), 100))
        };
        let first = cache.get(mint).await.unwrap();
        assert_eq!(first.value.expose_secret(), "t0");
        tokio::time::advance(Duration::from_secs(49)).await;
        assert!(Arc::ptr_eq(&cache.get(mint).await.unwrap(), &first));
        // 100 s lifetime: renewed from 50 s (60 s before expiry would be 40 s, capped at half).
        tokio::time::advance(Duration::from_secs(2)).await;
        let second = cache.get(mint).await.unwrap();
        assert_eq!(second.value.expose_secret(), "t1");
        assert_eq!(mints.load(Ordering::SeqCst), 2);

        // A failed renewal keeps the still-valid token, an expired one is never handed out.
        tokio::time::advance(Duration::from_secs(60)).await;
        let failing = || async { Err(MintError::Unavailable("down".into())) };
        assert!(Arc::ptr_eq(&cache.get(failing).await.unwrap(), &second));
        tokio::time::advance(Duration::from_secs(40)).await;
        assert!(matches!(cache.get(failing).await, Err(MintError::Unavailable(_))));
        // And it recovers.
        assert_eq!(cache.get(mint).await.unwrap().value.expose_secret(), "t2");
    }

    #[tokio::test(start_paused = true)]
    async fn single_flight_and_one_remint_per_rejected_token() {
        let cache = Arc::new(TokenCache::default());
        let mints = Arc::new(AtomicU64::new(0));
        let (release, gate) = tokio::sync::watch::channel(false);
        let mut waiters = Vec::new();
        for _ in 0..100 {
            let cache = cache.clone();
            let mints = mints.clone();
            let mut gate = gate.clone();
            waiters.push(tokio::spawn(async move {
                cache
                    .get(|| async move {
                        mints.fetch_add(1, Ordering::SeqCst);
                        let _ = gate.wait_for(|open| *open).await;
                        Ok(minted("shared", 100))
                    })
                    .await
                    .unwrap()
            }));
        }
        tokio::task::yield_now().await;
        release.send(true).unwrap();
        let mut tokens = Vec::new();
        for waiter in waiters {
            tokens.push(waiter.await.unwrap());
        }
        assert_eq!(mints.load(Ordering::SeqCst), 1);
        assert!(tokens.iter().all(|t| Arc::ptr_eq(t, &tokens[0])));

        // Every request that saw the refused token reports it; only the first drops it.
        let refused = tokens[0].clone();
        assert!(cache.rejected(&refused));
        assert!(!cache.rejected(&refused));
        let fresh = cache
            .get(|| async {
                mints.fetch_add(1, Ordering::SeqCst);
                Ok(minted("fresh", 100))
            })
            .await
            .unwrap();
        assert!(!cache.rejected(&refused));
        assert_eq!(fresh.value.expose_secret(), "fresh");
        assert_eq!(mints.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_share_a_failed_mint() {
        let cache = Arc::new(TokenCache::default());
        let attempts = Arc::new(AtomicU64::new(0));
        let mut waiters = Vec::new();
        for _ in 0..20 {
            let cache = cache.clone();
            let attempts = attempts.clone();
            waiters.push(tokio::spawn(async move {
                cache
                    .get(|| async move {
                        attempts.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        Err(MintError::Unavailable("down".into()))
                    })
                    .await
            }));
        }
        for waiter in waiters {
            assert!(waiter.await.unwrap().is_err());
        }
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
    }
}
