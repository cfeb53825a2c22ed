//! The browser boundary and the size and time limits, as configured.
//!
//! [`Access`] says who may call: which browser origins (exact `scheme://host:port`), which
//! `Host` names (DNS rebinding), whether clients without browser metadata (curl, SDKs) are
//! welcome, and which secret is the client token. [`ServerLimits`] bounds what one client can
//! make the daemon hold: header bytes, header time, connections. A route's `max-body` bounds the
//! request body. Everything here is validated once; the request guard only compares.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::ConfigError;
use super::duration::{Zero, duration};
use super::error::Source;
use super::raw::{RawServer, RawSize};
use super::size::parse_size;
use super::template::{ValuePart, ValueTemplate};

/// Default request body limit of a route (`max-body`).
pub const DEFAULT_MAX_BODY: u64 = 10 * 1024 * 1024;
/// Default limit for the request line plus headers; more gets `431`.
pub const DEFAULT_MAX_HEADER_SIZE: usize = 32 * 1024;
/// Default time a client gets to send its request headers, and how long an idle keep-alive
/// connection stays open (hyper runs one timer for both).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on concurrently open client connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Who may call the proxy.
#[derive(Debug, Clone)]
pub struct Access {
    /// Browser origins allowed to call, serialized as browsers send them
    /// (`http://localhost:5173`). Empty: no browser page may call.
    pub allowed_origins: Vec<String>,
    /// `Host` names accepted on top of `localhost`, `127.0.0.1` and `[::1]`: `name` (any port
    /// the daemon listens on) or `name:port`, lowercase.
    pub allowed_hosts: Vec<String>,
    /// Requests with neither `Origin` nor `Sec-Fetch-Site` (curl, SDKs, scripts) are served.
    pub allow_non_browser: bool,
    /// Name of the secret every request must present, if any.
    pub client_token: Option<String>,
    /// Listening on a non-loopback address was explicitly asked for.
    pub allow_remote: bool,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            allow_non_browser: true,
            client_token: None,
            allow_remote: false,
        }
    }
}

impl Access {
    /// Why the daemon may not listen on `addr`, if it may not: a non-loopback address needs
    /// `allow-remote = true` and a client token.
    pub fn listen_refusal(&self, addr: SocketAddr) -> Option<String> {
        if addr.ip().is_loopback() {
            return None;
        }
        if !self.allow_remote {
            return Some(format!(
                "listening on {addr} would expose the secrets to the network; set `[server] allow-remote = true` and a `client-token` to do that on purpose"
            ));
        }
        if self.client_token.is_none() {
            return Some(format!(
                "listening on {addr} needs `[server] client-token`, so only clients that know it can spend the secrets"
            ));
        }
        None
    }
}

/// Limits on what one client can make the daemon hold.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub max_header_size: usize,
    pub header_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_header_size: DEFAULT_MAX_HEADER_SIZE,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

type Secrets = std::collections::BTreeMap<String, crate::secrets::SecretSource>;

pub(crate) fn access(raw: &RawServer, secrets: &Secrets, source: &Source<'_>) -> Result<Access, ConfigError> {
    let allowed_origins = match &raw.allowed_origins {
        None => Vec::new(),
        Some(list) => origins(list, "server.allowed-origins", source)?,
    };
    let mut allowed_hosts = Vec::new();
    for host in raw.allowed_hosts.iter().flat_map(|list| list.get_ref()) {
        let text = host.get_ref().trim().to_ascii_lowercase();
        let valid = !text.is_empty()
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']'));
        if !valid {
            return Err(source
                .error(
                    host.span(),
                    "server.allowed-hosts",
                    format!("`{}` is not a host name", host.get_ref()),
                )
                .with_help(
                    "write a name as clients send it in `Host`, e.g. \"myhost.local\" or \"myhost.local:8787\"",
                ));
        }
        allowed_hosts.push(text);
    }
    let client_token = match &raw.client_token {
        None => None,
        Some(text) => Some(client_token(text, secrets, source)?),
    };
    Ok(Access {
        allowed_origins,
        allowed_hosts,
        allow_non_browser: raw.allow_non_browser.unwrap_or(true),
        client_token,
        allow_remote: raw.allow_remote,
    })
}

fn client_token(text: &Spanned<String>, secrets: &Secrets, source: &Source<'_>) -> Result<String, ConfigError> {
    let key = "server.client-token";
    let name = match ValueTemplate::parse(text.get_ref()).map(|t| t.parts) {
        Ok(parts) => match parts.as_slice() {
            [ValuePart::Secret(name)] => name.clone(),
            _ => {
                return Err(source
                    .error(text.span(), key, "the client token must be a secret, written `${name}`")
                    .with_help("store the token like any other secret and declare it in `[secrets.NAME]`"));
            }
        },
        Err(message) => return Err(source.error(text.span(), key, message)),
    };
    if !secrets.contains_key(&name) {
        return Err(source
            .error(text.span(), key, format!("unknown secret `{name}`"))
            .with_help(format!("declare it in a `[secrets.{name}]` table")));
    }
    Ok(name)
}

/// Normalizes an origin list; `*`, `null` and anything with a path are refused.
pub(crate) fn origins(
    list: &Spanned<Vec<Spanned<String>>>,
    key: &str,
    source: &Source<'_>,
) -> Result<Vec<String>, ConfigError> {
    let mut origins = Vec::new();
    for origin in list.get_ref() {
        let normalized = normalize_origin(origin.get_ref()).map_err(|message| {
            let error = source.error(origin.span(), key, &message);
            if message.contains("; write ") {
                error
            } else {
                error.with_help("write the exact origin the page is served from, e.g. \"http://localhost:5173\"")
            }
        })?;
        if !origins.contains(&normalized) {
            origins.push(normalized);
        }
    }
    Ok(origins)
}

/// An origin as a browser serializes it in the `Origin` header.
pub fn normalize_origin(text: &str) -> Result<String, String> {
    if text == "*" || text.eq_ignore_ascii_case("null") {
        return Err(format!("`{text}` would let any page call; list each origin"));
    }
    if !text.contains("://") {
        // `localhost:5173` parses as scheme `localhost` with path `5173`; say what is missing.
        return Err(format!(
            "`{text}` has no scheme; write \"http://{text}\" (or https:// if the page is served over TLS)"
        ));
    }
    let url = url::Url::parse(text).map_err(|_| format!("`{text}` is not an origin (scheme://host[:port])"))?;
    let bare = url.path().is_empty() || url.path() == "/";
    if !bare || url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!(
            "`{text}` is not an origin: it may not have a path, query or user"
        ));
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("`{text}` has no host"))?;
    Ok(match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    })
}

/// A route's `max-body`: `None` means unlimited.
pub(crate) fn max_body(
    raw: &Option<Spanned<RawSize>>,
    key: &str,
    source: &Source<'_>,
) -> Result<Option<u64>, ConfigError> {
    match raw {
        None => Ok(Some(DEFAULT_MAX_BODY)),
        Some(value) => match value.get_ref() {
            RawSize::Text(text) if text.trim().eq_ignore_ascii_case("unlimited") => Ok(None),
            size => size_value(size, value.span(), key, source).map(Some),
        },
    }
}

pub(crate) fn limits(raw: &RawServer, source: &Source<'_>) -> Result<ServerLimits, ConfigError> {
    let mut limits = ServerLimits::default();
    if let Some(value) = &raw.max_header_size {
        let key = "server.max-header-size";
        let size = size_value(value.get_ref(), value.span(), key, source)?;
        if !(1024..=1024 * 1024).contains(&size) {
            return Err(source.error(value.span(), key, "must be between 1KiB and 1MiB"));
        }
        limits.max_header_size = size as usize;
    }
    if let Some(text) = &raw.header_timeout {
        limits.header_timeout = duration(
            text,
            "server.header-timeout",
            Zero::Refused,
            Some("e.g. \"5s\", \"30s\""),
            source,
        )?;
    }
    if let Some(count) = &raw.max_connections {
        limits.max_connections = usize::try_from(*count.get_ref())
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| source.error(count.span(), "server.max-connections", "must be a positive number"))?;
    }
    Ok(limits)
}

fn size_value(size: &RawSize, span: Range<usize>, key: &str, source: &Source<'_>) -> Result<u64, ConfigError> {
    let parsed = match size {
        RawSize::Bytes(n) => u64::try_from(*n).map_err(|_| "a size may not be negative".to_string()),
        RawSize::Text(text) => parse_size(text),
    };
    parsed.map_err(|message| {
        source
            .error(span, key, message)
            .with_help("e.g. 1048576, \"512KiB\", \"10MiB\", \"1GB\"")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("512 kb"), Ok(512_000));
        assert_eq!(parse_size("7"), Ok(7));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn origins_normalize_like_browsers() {
        assert_eq!(
            normalize_origin("HTTP://LocalHost:5173/").unwrap(),
            "http://localhost:5173"
        );
        assert_eq!(
            normalize_origin("https://app.example:443").unwrap(),
            "https://app.example"
        );
        assert_eq!(
            normalize_origin("chrome-extension://abcdef").unwrap(),
            "chrome-extension://abcdef"
        );
        for bad in ["*", "null", "http://x/path", "localhost:5173", "http://u@x"] {
            assert!(normalize_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn remote_listen_needs_opt_in_and_token() {
        let mut access = Access::default();
        assert!(access.listen_refusal("127.0.0.1:1".parse().unwrap()).is_none());
        assert!(access.listen_refusal("[::1]:1".parse().unwrap()).is_none());
        assert!(access.listen_refusal("0.0.0.0:1".parse().unwrap()).is_some());
        access.allow_remote = true;
        assert!(access.listen_refusal("0.0.0.0:1".parse().unwrap()).is_some());
        access.client_token = Some("t".into());
        assert!(access.listen_refusal("0.0.0.0:1".parse().unwrap()).is_none());
    }
}
