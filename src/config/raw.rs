//! The config file exactly as written: serde types with `deny_unknown_fields` and spans, so
//! validation in `config::mod` can name the line and column of every mistake.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub secrets: BTreeMap<String, Spanned<RawSecret>>,
    #[serde(default)]
    pub routes: BTreeMap<String, Spanned<RawRoute>>,
    #[serde(default)]
    pub webhooks: BTreeMap<String, Spanned<RawWebhook>>,
    /// `[oauth2.NAME]` token sources (validated in `features::oauth2`).
    #[serde(default)]
    pub oauth2: BTreeMap<String, Spanned<RawOAuth2>>,
    /// `[state]`: the shared store (validated in `features::store`).
    pub state: Option<Spanned<RawState>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawServer {
    pub listen: Option<Spanned<String>>,
    pub static_dir: Option<Spanned<String>>,
    pub spa_fallback: Option<Spanned<bool>>,
    pub shutdown_timeout: Option<Spanned<String>>,
    pub allowed_origins: Option<Spanned<Vec<Spanned<String>>>>,
    pub allowed_hosts: Option<Spanned<Vec<Spanned<String>>>>,
    pub allow_non_browser: Option<bool>,
    pub client_token: Option<Spanned<String>>,
    #[serde(default)]
    pub allow_remote: bool,
    pub max_header_size: Option<Spanned<RawSize>>,
    pub header_timeout: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
    /// Not ready, still serving, for this long after SIGTERM before the drain (Kubernetes).
    pub shutdown_delay: Option<Spanned<String>>,
    /// Peers whose `X-Forwarded-For`/`Forwarded` are believed (`features::forwarded`).
    pub trusted_proxies: Option<Spanned<Vec<Spanned<String>>>>,
}

/// A byte size: an integer, `"10MiB"`-style text, or `"unlimited"` where allowed.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSecret {
    pub keyring: Option<Spanned<RawKeyring>>,
    pub env: Option<Spanned<String>>,
    pub file: Option<Spanned<String>>,
    /// A systemd credential ID, read from `$CREDENTIALS_DIRECTORY/ID`.
    pub credential: Option<Spanned<String>>,
}

/// `keyring = "account"` or `keyring = { service = "...", account = "..." }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawKeyring {
    Account(String),
    Entry(RawKeyringEntry),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeyringEntry {
    pub service: String,
    pub account: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRoute {
    pub path: Spanned<String>,
    pub upstream: Spanned<String>,
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub query: BTreeMap<String, Spanned<String>>,
    pub auth: Option<Spanned<RawAuth>>,
    #[serde(default)]
    pub forward_headers: Vec<Spanned<String>>,
    /// Client headers never sent upstream; `None`: [`crate::config::DEFAULT_STRIPPED`].
    pub strip_headers: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub keep_set_cookie: bool,
    #[serde(default)]
    pub allow_http: bool,
    pub ca_file: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<String>>,
    pub response: Option<Spanned<RawResponse>>,
    pub request: Option<Spanned<RawRequest>>,
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    pub allowed_origins: Option<Spanned<Vec<Spanned<String>>>>,
    pub max_body: Option<Spanned<RawSize>>,
    pub scrub_response: Option<bool>,
    /// Serve requests without a client key once keys are in use (see `features::guard`).
    #[serde(default)]
    pub allow_keyless: bool,
    /// Secret names holding the PEM client certificate chain and key (mTLS, `features::sign`).
    pub client_cert: Option<Spanned<String>>,
    pub client_key: Option<Spanned<String>>,
    /// What the route's shared rate limit does when `[state]` cannot answer.
    pub on_error: Option<Spanned<String>>,
    /// `websocket = true`: `Upgrade: websocket` requests are relayed (see `features::websocket`).
    pub websocket: Option<Spanned<bool>>,
    pub websocket_idle_timeout: Option<Spanned<String>>,
    pub websocket_max_duration: Option<Spanned<String>>,
    pub websocket_max_message: Option<Spanned<RawSize>>,
}

/// Shorthands for the `Authorization` header.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawAuth {
    /// `Authorization: Bearer <secret>`.
    pub bearer: Option<String>,
    /// `Authorization: Basic base64(username:<secret>)`.
    pub basic: Option<RawBasic>,
    /// `Authorization: Bearer <token>` from the `[oauth2.NAME]` token source.
    pub oauth2: Option<String>,
    /// AWS Signature Version 4 over each request (`features::sign`).
    pub aws_sigv4: Option<Spanned<crate::features::sign::RawSigV4>>,
    /// A declarative HMAC signature over each request (`features::sign`).
    pub hmac: Option<Spanned<crate::features::sign::RawHmac>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawBasic {
    pub username: String,
    /// Name of the secret holding the password.
    pub password: String,
}

/// `response.*` on a route: reshape the upstream's answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawResponse {
    /// A jq program run on JSON bodies.
    pub transform: Option<Spanned<String>>,
    /// The most of a body the transform buffers, e.g. `"4MiB"` or a byte count.
    pub transform_limit: Option<Spanned<RawSize>>,
    /// `"error"` (502, the default) or `"pass"` (send the body unchanged).
    pub on_transform_error: Option<Spanned<String>>,
    pub headers: Option<Spanned<RawResponseHeaders>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawResponseHeaders {
    #[serde(default)]
    pub set: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub remove: Vec<Spanned<String>>,
}

/// `request.*` on a route: checks made before the upstream is contacted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRequest {
    #[serde(default)]
    pub query: BTreeMap<String, Spanned<RawQueryRule>>,
    pub schema: Option<Spanned<RawSchema>>,
    pub schema_limit: Option<Spanned<RawSize>>,
    pub content_types: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawQueryRule {
    pub required: Option<bool>,
    pub pattern: Option<Spanned<String>>,
}

/// A JSON Schema: a file path, JSON text, or a TOML table.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSchema {
    Text(String),
    Table(toml::Table),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRateLimit {
    pub requests: Spanned<u64>,
    pub per: Spanned<String>,
    pub burst: Option<Spanned<u64>>,
    /// `"route"` (one bucket, the default) or `"origin"` (one per client `Origin`).
    pub key: Option<Spanned<String>>,
    /// Requests per UTC day for the whole route.
    pub daily: Option<Spanned<u64>>,
}

/// `[webhooks.NAME]`: an inbound, signed endpoint forwarded to a local target.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawWebhook {
    pub path: Spanned<String>,
    pub verify: Spanned<String>,
    /// Name of the `[secrets]` entry holding the signing secret.
    pub secret: Spanned<String>,
    pub target: Spanned<String>,
    pub tolerance: Option<Spanned<String>>,
    /// The signature header for `verify = "hmac-sha256"`.
    pub header: Option<Spanned<String>>,
    pub max_body: Option<Spanned<RawSize>>,
    /// What the replay check does when `[state]` cannot answer.
    pub on_error: Option<Spanned<String>>,
}

/// `[oauth2.NAME]`: an OAuth2 client-credentials token source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawOAuth2 {
    pub token_url: Spanned<String>,
    /// A template: may take `${secret}`.
    pub client_id: Spanned<String>,
    /// A template naming at least one secret.
    pub client_secret: Spanned<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub audience: Option<String>,
    #[serde(default)]
    pub params: BTreeMap<String, Spanned<String>>,
    /// `"basic"` (default) or `"body"`.
    pub client_auth: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}

/// `[state]`: the shared store (Redis/Valkey) for replicas.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawState {
    pub url: Spanned<String>,
    pub key_prefix: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub cool_down: Option<Spanned<String>>,
    /// `"local"`, `"allow"` or `"deny"`: the default for routes and webhooks.
    pub on_error: Option<Spanned<String>>,
    /// Name of the `[secrets]` entry holding the store's password.
    pub password: Option<Spanned<String>>,
    /// PEM roots trusted for a `rediss://` store instead of the OS trust store.
    pub ca_file: Option<Spanned<String>>,
}
