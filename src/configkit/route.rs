//! What every route has, feature-independent: its name, path, methods, upstream, injected
//! headers and query, header policy, timeouts, secrets and browser and size limits. The features
//! read a route through this (`config::Route` derefs to it); the tables a feature owns stay in
//! `config::Route` next to it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, Method};

use super::StripHeaders;
use super::template::{UrlTemplate, ValueTemplate};

/// The feature-independent part of one route (see the module docs).
#[derive(Debug, Clone)]
pub struct RouteBase {
    pub name: String,
    /// matchit syntax: `/api/{id}/x/{*rest}`.
    pub path: String,
    pub methods: Vec<Method>,
    pub upstream: UrlTemplate,
    /// Injected headers; they replace any the client sent with the same name.
    pub headers: Vec<(HeaderName, ValueTemplate)>,
    /// Injected query parameters; they replace any the client sent with the same name.
    pub query: Vec<(String, ValueTemplate)>,
    /// Client headers forwarded although they are withheld by default (Authorization, Cookie,
    /// Host).
    pub forward_headers: Vec<HeaderName>,
    /// Client headers never sent upstream (`strip-headers`, default [`super::DEFAULT_STRIPPED`]).
    pub strip_headers: StripHeaders,
    /// Pass the upstream's `Set-Cookie` to the client (dropped by default).
    pub keep_set_cookie: bool,
    /// Extra PEM roots trusted for this route's upstream, on top of the OS trust store.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// Every secret this route injects.
    pub secrets: BTreeSet<String>,
    /// Origins allowed on this route, narrowing `[server] allowed-origins`; `None`: the server's.
    pub allowed_origins: Option<Vec<String>>,
    /// Request body limit in bytes (`413` beyond it); `None`: unlimited.
    pub max_body: Option<u64>,
    /// Replace injected values echoed in the upstream's response headers and body by
    /// `[REDACTED]` (default on).
    pub scrub_response: bool,
    /// `auth = { oauth2 = "NAME" }`: the token source whose bearer token is injected.
    pub oauth2: Option<String>,
    /// `allow-keyless = true`: once client keys are in use, requests without one are still
    /// served here (from loopback sockets) — what browser pages of the allowed origins call.
    pub allow_keyless: bool,
}
