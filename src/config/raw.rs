//! The config file exactly as written: serde types with `deny_unknown_fields` and spans, so
//! validation in `config::mod` can name the line and column of every mistake.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub use crate::configkit::raw::{RawServer, RawSize};
use crate::features::oauth2::RawOAuth2;
use crate::features::ratelimit::RawRateLimit;
use crate::features::store::RawState;
use crate::features::transform::RawResponse;
use crate::features::validate::RawRequest;
use crate::features::webhooks::RawWebhook;

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
    /// Client headers never sent upstream; `None`: [`crate::configkit::DEFAULT_STRIPPED`].
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
    /// `websocket = true`: `Upgrade: websocket` requests are relayed (policy in `features::websocket`,
    /// the relay in `pipeline::websocket`).
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
