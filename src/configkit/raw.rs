//! The raw serde types several features read: the `[server]` table (access, limits, the static
//! site, trusted proxies) and byte sizes. A feature's own table lives next to its validation.

use serde::Deserialize;
use toml::Spanned;

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
