//! The request guard: who may call, decided before any route is matched or secret is read.
//!
//! Checks run in this order, and the first refusal answers: ambiguous framing (`400`, connection
//! closed), the request target ([`super::path`], `400`), the `Host` header against the loopback
//! names and `allowed-hosts` (`403`, DNS rebinding), `Origin` against `allowed-origins` or the
//! proxy's own origin (`403`, every method), `Sec-Fetch-Site` on requests without `Origin` (`403`
//! for `cross-site` and `same-site`: `<img>`, `<script>`, navigations, no-cors posts), the
//! non-browser policy, and the client token (`401`). None of these contacts an upstream. The
//! client token is compared in constant time and removed from the request before it is forwarded.
//!
//! The readiness and liveness probes (`features::admin`) pass the browser rules only (`Origin`,
//! `Sec-Fetch-Site`): a kubelet calls them with the pod's IP as `Host`, without a token. Every
//! other path, `/_secretproxy/health` included, goes through all of them. Forwarding headers play
//! no part here: `Host` and `Origin` are judged as the request carries them, also behind a load
//! balancer (see `features::forwarded`).

use std::net::SocketAddr;

use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::config::Route;
use crate::config::access::Access;
use crate::http::error::ProxyError;
use crate::pipeline::generation::Generation;

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

/// Names every client may use in `Host`, with the port the daemon listens on.
const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// Runs every server-wide check; on success the request may be matched and forwarded.
pub async fn admit(generation: &Generation, parts: &mut Parts, connection: &Connection) -> Result<(), ProxyError> {
    if connection.ambiguous_framing {
        return Err(ProxyError::AmbiguousFraming);
    }
    super::path::check(&parts.method, &parts.uri)?;
    normalise_uri(&mut parts.uri)?;
    let access = &generation.config.server.access;
    if super::admin::is_probe(parts.uri.path()) {
        // A kubelet sends the pod's IP as `Host` and cannot hold the client token; the probes
        // spend no secret and say nothing secret, so only the browser rules apply to them.
        return check_caller(access, &parts.headers, true);
    }
    check_host(access, &parts.headers, connection.local)?;
    check_caller(access, &parts.headers, access.allow_non_browser)?;
    if let Some(name) = &access.client_token
        && !super::cors::is_preflight(parts)
    {
        check_token(generation, name, &mut parts.headers).await?;
    }
    Ok(())
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
pub fn admit_route(route: &Route, headers: &HeaderMap) -> Result<(), ProxyError> {
    if let (Some(allowed), Some(origin)) = (&route.allowed_origins, headers.get(header::ORIGIN))
        && !allowed.iter().any(|a| a.as_bytes() == origin.as_bytes())
        && !same_origin(headers, origin)
    {
        return Err(origin_refused(origin, allowed, &format!("[routes.{}]", route.name)));
    }
    Ok(())
}

/// True when `origin` is in the server's list and, once the route is known, in the route's.
pub fn origin_allowed(access: &Access, route: Option<&Route>, origin: &HeaderValue) -> bool {
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
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
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
    match headers.get("sec-fetch-site").map(HeaderValue::as_bytes) {
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

async fn check_token(generation: &Generation, name: &str, headers: &mut HeaderMap) -> Result<(), ProxyError> {
    let expected = generation
        .secrets
        .get(name)
        .await
        .map_err(|error| ProxyError::secret_unavailable(&generation.secrets, name, &error))?;
    let expected = expected.expose_secret().as_bytes();
    let matches = |presented: &[u8]| bool::from(presented.ct_eq(expected));

    let in_header = headers.remove(&TOKEN_HEADER);
    if let Some(value) = in_header {
        return if matches(value.as_bytes()) {
            Ok(())
        } else {
            Err(ProxyError::ClientToken)
        };
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(matches);
    if bearer {
        headers.remove(header::AUTHORIZATION);
        Ok(())
    } else {
        Err(ProxyError::ClientToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
