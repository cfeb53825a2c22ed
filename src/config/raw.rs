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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawServer {
    pub listen: Option<Spanned<String>>,
    pub allowed_origins: Option<Spanned<Vec<Spanned<String>>>>,
    pub allowed_hosts: Option<Spanned<Vec<Spanned<String>>>>,
    pub allow_non_browser: Option<bool>,
    pub client_token: Option<Spanned<String>>,
    #[serde(default)]
    pub allow_remote: bool,
    pub max_header_size: Option<Spanned<RawSize>>,
    pub header_timeout: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
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
    #[serde(default)]
    pub keep_set_cookie: bool,
    #[serde(default)]
    pub allow_http: bool,
    pub ca_file: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<String>>,
    pub allowed_origins: Option<Spanned<Vec<Spanned<String>>>>,
    pub max_body: Option<Spanned<RawSize>>,
    pub scrub_response: Option<bool>,
}

/// Shorthands for the `Authorization` header.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawAuth {
    /// `Authorization: Bearer <secret>`.
    pub bearer: Option<String>,
    /// `Authorization: Basic base64(username:<secret>)`.
    pub basic: Option<RawBasic>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawBasic {
    pub username: String,
    /// Name of the secret holding the password.
    pub password: String,
}
