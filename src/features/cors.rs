//! CORS, answered by the proxy itself.
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) that passed the
//! guard is answered here and never forwarded: the exact origin (never `*`), `Vary: Origin`, the
//! route's methods, the requested headers minus those the proxy controls, a max age, and
//! `Access-Control-Allow-Private-Network` when Chrome asks for it. On actual responses the
//! upstream's own `Access-Control-*` headers are dropped and, for an allowed origin, replaced by
//! the proxy's. CORS headers only tell the browser what it may read; the guard is what refuses.

use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};

use super::guard;
use crate::configkit::RouteBase;
use crate::configkit::access::Access;
use crate::http::body::{ProxyBody, empty};
use crate::http::error::ProxyError;

/// How long a browser may cache a preflight answer.
pub const MAX_AGE_SECS: u32 = 600;

/// Request headers a page may not choose: they belong to the connection or the proxy.
const CONTROLLED: [&str; 11] = [
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
    "cookie",
    "authorization",
];

/// `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
pub fn is_preflight(parts: &Parts) -> bool {
    parts.method == Method::OPTIONS
        && parts.headers.contains_key(header::ORIGIN)
        && parts.headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// What a preflight reads of the current generation (`pipeline::generation::Generation` answers
/// it).
pub trait Preflight {
    /// The route `path` reaches with `method` (or, for another method, the route it names) and
    /// its index; `None` when no route matches.
    fn route_at<'a>(&'a self, method: &Method, path: &'a str) -> Option<(&'a RouteBase, usize)>;
    /// Route `index`'s `Access-Control-Allow-Methods` value.
    fn allow(&self, index: usize) -> HeaderValue;
    /// A client token or client keys are in use, so a page may send `Authorization`.
    fn credentials_in_use(&self) -> bool;
}

/// Answers a preflight that passed the guard; returns the response and the route's name.
pub fn preflight(generation: &impl Preflight, parts: &Parts) -> (Response<ProxyBody>, Option<usize>) {
    let requested = parts
        .headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .unwrap_or(Method::GET);
    let (route, index) = match generation.route_at(&requested, parts.uri.path()) {
        Some(found) => found,
        None => {
            let error = ProxyError::NoRoute {
                path: parts.uri.path().to_string(),
                near: None,
            };
            return (error.into_response(None), None);
        }
    };
    let name = Some(index);
    if let Err(error) = guard::admit_route(route, &parts.headers) {
        return (error.into_response(Some(&route.name)), name);
    }
    let origin = parts
        .headers
        .get(header::ORIGIN)
        .cloned()
        .expect("a preflight has an Origin");
    let token = generation.credentials_in_use();

    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, generation.allow(index));
    let allowed = allowed_request_headers(route, &parts.headers, token);
    if !allowed.is_empty()
        && let Ok(value) = HeaderValue::from_str(&allowed.join(", "))
    {
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, value);
    }
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(MAX_AGE_SECS));
    if parts
        .headers
        .get("access-control-request-private-network")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
    {
        headers.insert(
            HeaderName::from_static("access-control-allow-private-network"),
            HeaderValue::from_static("true"),
        );
    }
    (response, name)
}

/// The names in `Access-Control-Request-Headers` the page may send on this route.
fn allowed_request_headers(route: &RouteBase, request: &HeaderMap, token: bool) -> Vec<String> {
    request
        .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .filter(|name| {
            let Ok(parsed) = HeaderName::from_bytes(name.as_bytes()) else {
                return false;
            };
            if parsed == guard::TOKEN_HEADER || (token && parsed == header::AUTHORIZATION) {
                return token;
            }
            let injected = route.headers.iter().any(|(h, _)| *h == parsed);
            let controlled = CONTROLLED.contains(&name.as_str()) && !route.forward_headers.contains(&parsed);
            !injected && !controlled && !name.starts_with("proxy-")
        })
        .collect()
}

/// Drops the upstream's CORS headers: only the proxy decides who may read a response.
pub fn strip_upstream(headers: &mut HeaderMap) {
    if !headers.keys().any(|name| name.as_str().starts_with("access-control-")) {
        return;
    }
    let upstream: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for name in upstream {
        headers.remove(name);
    }
}

/// Adds `Access-Control-Allow-Origin` for an allowed origin, and `Vary: Origin` always, to a
/// response that is not a preflight answer.
pub fn decorate(
    response: &mut Response<ProxyBody>,
    access: &Access,
    route: Option<&impl std::ops::Deref<Target = RouteBase>>,
    origin: Option<&HeaderValue>,
) {
    let headers = response.headers_mut();
    if headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        return;
    }
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = origin else { return };
    if !guard::origin_allowed(access, route.map(|route| &**route), origin) {
        return;
    }
    let exposed: Vec<&str> = headers
        .keys()
        .map(HeaderName::as_str)
        .filter(|name| *name != "set-cookie" && *name != "vary")
        .collect();
    if !exposed.is_empty()
        && let Ok(value) = HeaderValue::from_str(&exposed.join(", "))
    {
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, value);
    }
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
}
