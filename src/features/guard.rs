//! The request guard: who may call, decided before any route is matched or secret is read.
//!
//! Checks run in this order, and the first refusal answers: ambiguous framing (`400`, connection
//! closed), the request target ([`super::path`], `400`), the `Host` header against the loopback
//! names and `allowed-hosts` (`403`, DNS rebinding), `Origin` against `allowed-origins` or the
//! proxy's own origin (`403`, every method), `Sec-Fetch-Site` on requests without `Origin` (`403`
//! for `cross-site` and `same-site`: `<img>`, `<script>`, navigations, no-cors posts), the
//! non-browser policy, and who the caller is ([`Caller`]: a client key, the client token, or no
//! key). None of these contacts an upstream. Keys are compared in constant time and removed from
//! the request before it is forwarded.
//!
//! Once keys are in use (a client key exists, see [`super::clients`], or `client-token` is set),
//! [`Caller::require`] refuses a request without a valid key (`401`) everywhere it is asked —
//! routes, `/_secretproxy` endpoints, unmatched paths — except on routes marked
//! `allow-keyless = true`, and only on a loopback socket. `Origin` exempts nothing: any local
//! process can send any `Origin`. A client key is then held to its scope, expiry and limits.
//!
//! The readiness and liveness probes (`features::admin`) pass the browser rules only (`Origin`,
//! `Sec-Fetch-Site`): a kubelet calls them with the pod's IP as `Host`, without a key. Every
//! other path, `/_secretproxy/health` included, goes through all of them. Forwarding headers play
//! no part here: `Host` and `Origin` are judged as the request carries them, also behind a load
//! balancer (see `features::forwarded`).

use std::net::SocketAddr;
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use super::clients::Client;
use crate::configkit::RouteBase;
use crate::configkit::access::Access;
use crate::http::error::ProxyError;

/// What the server knows of the connection a request came in on (passed along with the request,
/// not in its extensions: that would cost a map allocation per request).
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub peer: SocketAddr,
    /// The address the connection was accepted on.
    pub local: Option<SocketAddr>,
    /// The request's head had both `Content-Length` and `Transfer-Encoding` (the server saw the
    /// raw bytes; hyper drops one of the two before the request gets here).
    pub ambiguous_framing: bool,
}

/// The header a client may use for the client token instead of `Authorization: Bearer`.
pub static TOKEN_HEADER: HeaderName = HeaderName::from_static("x-secretproxy-token");

/// Fetch metadata's site relation (browsers send it with every request).
static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// Names every client may use in `Host`, with the port the daemon listens on.
const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// Who is calling, as far as keys tell.
#[derive(Debug, Clone, Default)]
pub enum Caller {
    /// No keys are in use: every caller is served as before keys existed.
    #[default]
    Open,
    /// Keys are in use and the request carries none (or an `Authorization` that is not one).
    /// `loopback`: it came in on a loopback socket, where `allow-keyless` routes serve it.
    Keyless { loopback: bool },
    /// `X-Secretproxy-Token` with a value that is no key.
    Invalid,
    /// The `[server] client-token`: a key for every route.
    Token,
    /// A client key from the state file.
    Client(Arc<Client>),
}

/// The name logged and counted for the client token.
pub const TOKEN_CLIENT: &str = "client-token";

impl Caller {
    /// The client's name for the access line and metrics (never the key).
    pub fn name(&self) -> Option<Arc<str>> {
        match self {
            Caller::Client(client) => Some(client.name.clone()),
            Caller::Token => Some(Arc::from(TOKEN_CLIENT)),
            _ => None,
        }
    }

    /// Refuses a request that needs a valid key and has none; for a client key, checks expiry
    /// and (once the route is known) scope. `route` is `None` for the proxy's own endpoints and
    /// paths no route matches, which need a key whenever keys are in use.
    pub fn require(&self, route: Option<&RouteBase>) -> Result<(), ProxyError> {
        match self {
            Caller::Open | Caller::Token => Ok(()),
            Caller::Client(client) => client.admit(route.map(|r| r.name.as_str()), std::time::SystemTime::now()),
            Caller::Keyless { loopback: true } if route.is_some_and(|r| r.allow_keyless) => Ok(()),
            Caller::Keyless { .. } | Caller::Invalid => Err(ProxyError::ClientToken),
        }
    }

    /// Takes one request from a client key's rate limit and daily budget.
    pub fn spend(&self) -> Result<(), ProxyError> {
        match self {
            Caller::Client(client) => client.spend(),
            _ => Ok(()),
        }
    }
}

/// `allow-keyless` opens a route to local processes only: on a socket open to the network
/// (`allow-remote`), a keyless request is refused like anywhere else.
fn on_loopback(connection: &Connection) -> bool {
    connection.local.is_none_or(|local| local.ip().is_loopback())
}

/// What the guard reads of the current generation (`pipeline::generation::Generation` answers
/// it): the browser boundary, the client keys and the secrets (for the client token's value).
pub trait Gate {
    fn access(&self) -> &Access;
    fn clients(&self) -> &super::clients::Registry;
    fn secrets(&self) -> &crate::secrets::SecretCache;
}

/// Runs every server-wide check and tells who is calling; on success the request may be
/// matched, and [`Caller::require`] decides, per destination, whether a key was needed.
pub async fn admit(generation: &impl Gate, parts: &mut Parts, connection: &Connection) -> Result<Caller, ProxyError> {
    if connection.ambiguous_framing {
        return Err(ProxyError::AmbiguousFraming);
    }
    super::path::check(&parts.method, &parts.uri)?;
    normalise_uri(&mut parts.uri)?;
    let access = generation.access();
    if super::admin::is_probe(parts.uri.path()) {
        // A kubelet sends the pod's IP as `Host` and cannot hold the client token; the probes
        // spend no secret and say nothing secret, so only the browser rules apply to them.
        return check_caller(access, &parts.headers, true).map(|()| Caller::Open);
    }
    check_host(access, &parts.headers, connection.local)?;
    check_caller(access, &parts.headers, access.allow_non_browser)?;
    let clients = generation.clients();
    if access.client_token.is_none() && !clients.in_use() {
        return Ok(Caller::Open);
    }
    if super::cors::is_preflight(parts) {
        // A preflight never carries credentials; it is answered without contacting anyone.
        return Ok(Caller::Keyless {
            loopback: on_loopback(connection),
        });
    }
    identify(
        generation,
        access.client_token.as_deref(),
        &mut parts.headers,
        on_loopback(connection),
    )
    .await
}

/// Rewrites the request's path to its one normal form (see [`super::path`]), so matching, every
/// route rule and the upstream all see the same path; the query is left as it came.
fn normalise_uri(uri: &mut http::Uri) -> Result<(), super::path::PathError> {
    let normal = super::path::normalise_path(uri.path());
    let std::borrow::Cow::Owned(path) = normal else {
        return Ok(());
    };
    let target = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    // Decoding unreserved characters and upper-casing hex keeps a valid target valid; were it
    // ever not, the request is refused rather than matched on the raw form.
    *uri = http::Uri::try_from(target).map_err(|_| super::path::PathError::Encoding)?;
    Ok(())
}

/// A route's narrower origin list, after the route is known.
pub fn admit_route(route: &RouteBase, headers: &HeaderMap) -> Result<(), ProxyError> {
    if let (Some(allowed), Some(origin)) = (&route.allowed_origins, headers.get(header::ORIGIN))
        && !allowed.iter().any(|a| a.as_bytes() == origin.as_bytes())
        && !same_origin(headers, origin)
    {
        return Err(origin_refused(origin, allowed, &format!("[routes.{}]", route.name)));
    }
    Ok(())
}

/// True when `origin` is in the server's list and, once the route is known, in the route's.
pub fn origin_allowed(access: &Access, route: Option<&RouteBase>, origin: &HeaderValue) -> bool {
    let listed = |list: &[String]| list.iter().any(|a| a.as_bytes() == origin.as_bytes());
    listed(&access.allowed_origins) && route.and_then(|r| r.allowed_origins.as_deref()).is_none_or(listed)
}

/// A page served by the proxy itself: `Origin` is `http://` plus the (already checked) `Host`.
/// No other page can have that origin while the daemon holds the port.
pub fn same_origin(headers: &HeaderMap, origin: &HeaderValue) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    origin
        .to_str()
        .ok()
        .and_then(|o| o.strip_prefix("http://"))
        .is_some_and(|o| o.eq_ignore_ascii_case(host))
}

fn forbidden(code: &'static str, reason: &str) -> ProxyError {
    ProxyError::Forbidden {
        hint: None,
        code,
        reason: reason.to_string(),
    }
}

/// A refusal that names the refused value and the config line that would allow it.
fn forbidden_with(code: &'static str, reason: String, hint: String) -> ProxyError {
    ProxyError::Forbidden {
        code,
        reason,
        hint: Some(hint),
    }
}

/// A client-sent value as it may be quoted back: printable and bounded.
fn quoted(value: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(value)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(120)
        .collect();
    text
}

/// The same origin with `localhost` and `127.0.0.1` swapped, if it names one of them: browsers
/// treat the two as different origins, a common reason for a refused page.
fn loopback_twin(origin: &str) -> Option<String> {
    if origin.contains("://localhost") {
        Some(origin.replacen("://localhost", "://127.0.0.1", 1))
    } else if origin.contains("://127.0.0.1") {
        Some(origin.replacen("://127.0.0.1", "://localhost", 1))
    } else {
        None
    }
}

/// The refusal of a page whose origin is not in `list`, with the line that would allow it.
fn origin_refused(origin: &HeaderValue, list: &[String], table: &str) -> ProxyError {
    let origin = quoted(origin.as_bytes());
    let mut hint = format!("to allow this page, add it under {table}: allowed-origins = [\"{origin}\"]");
    if let Some(twin) = loopback_twin(&origin)
        && list.contains(&twin)
    {
        hint.push_str(&format!(
            " (`{twin}` is listed, but browsers treat localhost and 127.0.0.1 as different origins)"
        ));
    }
    forbidden_with(
        "origin_not_allowed",
        format!("the page's origin `{origin}` is not in {table} allowed-origins"),
        hint,
    )
}

fn check_host(access: &Access, headers: &HeaderMap, local: Option<SocketAddr>) -> Result<(), ProxyError> {
    let refused = || {
        let host = headers
            .get(header::HOST)
            .map(|h| quoted(h.as_bytes()))
            .unwrap_or_default();
        let name = split_host(&host).map_or(host.as_str(), |(name, _)| name);
        forbidden_with(
            "host_not_allowed",
            format!("the Host header `{host}` names a host this proxy does not serve"),
            format!(
                "if this proxy should answer to that name (behind a reverse proxy or on a LAN), add under [server]: allowed-hosts = [\"{name}\"]"
            ),
        )
    };
    let mut hosts = headers.get_all(header::HOST).iter();
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return Err(refused());
    };
    let host = host.to_str().map_err(|_| refused())?;
    // Lower-cased only when it has to be (clients send `localhost:PORT` as it is).
    let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    };
    let host = &*host;
    let (name, port) = split_host(host).ok_or_else(refused)?;
    let port_matches = local.is_none_or(|local| port.unwrap_or(80) == local.port());
    if LOOPBACK_NAMES.contains(&name) && port_matches {
        return Ok(());
    }
    let listed = access
        .allowed_hosts
        .iter()
        .any(|allowed| *allowed == host || (allowed == name && port_matches));
    if listed { Ok(()) } else { Err(refused()) }
}

/// `name[:port]`, with IPv6 literals kept in brackets.
fn split_host(host: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = if host.starts_with('[') {
        let end = host.find(']')?;
        let port = host[end + 1..].strip_prefix(':');
        if port.is_none() && end + 1 != host.len() {
            return None;
        }
        (&host[..=end], port)
    } else {
        match host.bytes().rposition(|b| b == b':') {
            Some(colon) => (&host[..colon], Some(&host[colon + 1..])),
            None => (host, None),
        }
    };
    match port {
        None => Some((name, None)),
        Some(port) => port.parse::<u16>().ok().map(|p| (name, Some(p))),
    }
}

/// The browser rules; `non_browser` says whether a request without browser metadata may pass.
fn check_caller(access: &Access, headers: &HeaderMap, non_browser: bool) -> Result<(), ProxyError> {
    let mut origins = headers.get_all(header::ORIGIN).iter();
    match (origins.next(), origins.next()) {
        (Some(origin), None) => {
            return if origin_allowed(access, None, origin) || same_origin(headers, origin) {
                Ok(())
            } else {
                Err(origin_refused(origin, &access.allowed_origins, "[server]"))
            };
        }
        (Some(_), Some(_)) => return Err(forbidden("origin_not_allowed", "more than one Origin header")),
        (None, _) => {}
    }
    match headers.get(&SEC_FETCH_SITE).map(HeaderValue::as_bytes) {
        Some(b"cross-site" | b"same-site") => Err(forbidden(
            "cross_site",
            "a request from another site without an Origin header (an image, script, navigation or form) may not use this proxy",
        )),
        Some(_) => Ok(()),
        None if non_browser => Ok(()),
        None => Err(forbidden_with(
            "non_browser",
            "requests without browser metadata are turned off (`[server] allow-non-browser = false`)".into(),
            "to let scripts and SDKs call, set under [server]: allow-non-browser = true (with a client-token to limit who may)".into(),
        )),
    }
}

/// Finds the key in `X-Secretproxy-Token` (always removed) or `Authorization: Bearer` / `token` (removed
/// when it holds a key; otherwise left for routes that forward the client's own credentials).
async fn identify(
    generation: &impl Gate,
    token: Option<&str>,
    headers: &mut HeaderMap,
    loopback: bool,
) -> Result<Caller, ProxyError> {
    let in_header = headers.remove(&TOKEN_HEADER);
    let presented = match &in_header {
        Some(value) => Some(value.as_bytes()),
        None => headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes)
            // `token KEY` is how GitHub's clients (gh, Octokit) send a token.
            .and_then(|value| value.strip_prefix(b"Bearer ").or_else(|| value.strip_prefix(b"token "))),
    };
    let Some(presented) = presented else {
        return Ok(Caller::Keyless { loopback });
    };
    let mut caller = generation.clients().identify(presented).map(Caller::Client);
    if caller.is_none()
        && let Some(name) = token
    {
        let expected = generation
            .secrets()
            .get(name)
            .await
            .map_err(|error| ProxyError::secret_unavailable(generation.secrets(), name, &error))?;
        if bool::from(presented.ct_eq(expected.expose_secret().as_bytes())) {
            caller = Some(Caller::Token);
        }
    }
    match (caller, in_header.is_some()) {
        (Some(caller), from_header) => {
            if !from_header {
                headers.remove(header::AUTHORIZATION);
            }
            Ok(caller)
        }
        (None, true) => Ok(Caller::Invalid),
        (None, false) => Ok(Caller::Keyless { loopback }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyless_routes_are_open_on_loopback_sockets_only() {
        let config = crate::config::Config::parse(
            "[routes.open]\npath = \"/o\"\nupstream = \"https://x.example/\"\nallow-keyless = true\n\
             [routes.closed]\npath = \"/c\"\nupstream = \"https://x.example/\"\n",
            "t",
        )
        .unwrap();
        let (open, closed) = (&config.routes[1], &config.routes[0]);
        assert!(open.allow_keyless && !closed.allow_keyless);
        let keyless = |local: &str| Caller::Keyless {
            loopback: on_loopback(&Connection {
                peer: "127.0.0.1:50000".parse().unwrap(),
                local: Some(local.parse().unwrap()),
                ambiguous_framing: false,
            }),
        };
        let loopback = keyless("127.0.0.1:8787");
        let network = keyless("192.168.1.20:8787");
        assert!(loopback.require(Some(open)).is_ok());
        assert!(loopback.require(Some(closed)).is_err());
        assert!(network.require(Some(open)).is_err());
        assert!(loopback.require(None).is_err());
        assert!(Caller::Invalid.require(Some(open)).is_err());
        assert!(Caller::Open.require(Some(closed)).is_ok());
        assert!(Caller::Token.require(None).is_ok());
    }

    #[test]
    fn host_names() {
        assert_eq!(split_host("localhost:8787"), Some(("localhost", Some(8787))));
        assert_eq!(split_host("[::1]:8787"), Some(("[::1]", Some(8787))));
        assert_eq!(split_host("[::1]"), Some(("[::1]", None)));
        assert_eq!(split_host("example.com"), Some(("example.com", None)));
        assert_eq!(split_host("x:notaport"), None);
        assert_eq!(split_host("[::1]x"), None);
    }

    #[test]
    fn hosts_are_checked_with_the_port() {
        let local = Some("127.0.0.1:8787".parse().unwrap());
        let mut access = Access::default();
        let host = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, value.parse().unwrap());
            headers
        };
        assert!(check_host(&access, &host("127.0.0.1:8787"), local).is_ok());
        assert!(check_host(&access, &host("LOCALHOST:8787"), local).is_ok());
        assert!(check_host(&access, &host("localhost:9999"), local).is_err());
        assert!(check_host(&access, &host("evil.example:8787"), local).is_err());
        assert!(check_host(&access, &HeaderMap::new(), local).is_err());
        access.allowed_hosts = vec!["box.lan".into(), "other.lan:1234".into()];
        assert!(check_host(&access, &host("box.lan:8787"), local).is_ok());
        assert!(check_host(&access, &host("other.lan:1234"), local).is_ok());
        assert!(check_host(&access, &host("other.lan:8787"), local).is_err());
    }
}
