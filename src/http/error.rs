//! The one error type of the request path and its table of codes.
//!
//! Every refusal and failure a client can see is a [`ProxyError`]. [`ProxyError::spec`] is the
//! table: it decides, in one place, the status, the stable `code`, which side the failure came
//! from, and whether the connection is closed after the answer. [`ProxyError::into_response`]
//! builds the one JSON envelope `{"error", "code", "route"?, "hint"?, ...}` with
//! `Cache-Control: no-store`.
//!
//! Bodies are built from names and fixed text only: a secret's name and how to set it, a route
//! name, a refused origin or host (client input, echoed to the client that sent it). Upstream
//! text reaches an error only after the route's redactor has scrubbed it, and never for
//! encodings (see [`ProxyError::Unscrubbable`]).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use super::body::{ProxyBody, full};

/// Where a failure came from; decides whose log line it is and which metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The request was refused: the client can fix it.
    Client,
    /// The upstream (or a transform of its answer) failed.
    Upstream,
    /// The daemon itself cannot serve the route right now (a missing secret).
    Internal,
}

/// One row of the code table.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub status: StatusCode,
    pub code: &'static str,
    pub side: Side,
    /// The rest of the request cannot be trusted or is not worth reading: end the connection.
    pub close: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches `{path}`")]
    NoRoute {
        path: String,
        /// The closest route's path, told only to loopback clients.
        near: Option<String>,
    },
    #[error("method not allowed on route `{route}`")]
    MethodNotAllowed { route: String, allow: String },
    #[error("secret `{secret}` is not available: {reason}")]
    SecretUnavailable {
        secret: String,
        reason: String,
        hint: String,
        unreachable: bool,
    },
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request body could not be read (malformed chunked framing, a client that vanished).
    #[error("the request body is malformed")]
    BadBody,
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// The request target is not a canonical origin-form path.
    #[error("bad request path: {0}")]
    BadPath(#[from] PathError),
    /// Both `Content-Length` and `Transfer-Encoding`: the connection is closed after the answer.
    #[error("the request has both Content-Length and Transfer-Encoding")]
    AmbiguousFraming,
    /// Refused by the browser boundary (origin, fetch metadata, host, non-browser policy).
    #[error("{reason}")]
    Forbidden {
        code: &'static str,
        reason: String,
        /// The config line that would allow it.
        hint: Option<String>,
    },
    #[error("a valid client key is required (`Authorization: Bearer ...` or `X-Secretproxy-Token`)")]
    ClientToken,
    #[error("the request body is larger than this route's limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// The request failed the route's `request` rules (query, content type, schema).
    #[error("{message}")]
    Invalid {
        status: StatusCode,
        code: &'static str,
        message: String,
        reasons: Vec<String>,
    },
    /// Over the route's rate limit or daily quota.
    #[error("{}", if *daily { "the route's daily quota is used up" } else { "too many requests for this route" })]
    RateLimited { retry_after: Duration, daily: bool },
    /// An answer in a coding that cannot be decoded for scrubbing; fixed text, nothing quoted from
    /// the upstream.
    #[error("the upstream answered in {0}, which cannot be scrubbed of secrets")]
    Unscrubbable(&'static str),
    /// The upstream's answer had ambiguous framing (both `Content-Length` and
    /// `Transfer-Encoding`): it could be a truncated or smuggled response.
    #[error("the upstream's answer has ambiguous framing")]
    UpstreamFraming,
    /// The proxy's own endpoints answer loopback clients only, never through a front proxy.
    #[error("{}", if *forwarded { "the /_secretproxy endpoints do not answer requests forwarded by a reverse proxy" } else { "the /_secretproxy endpoints answer loopback clients only" })]
    AdminNotLocal { forwarded: bool },
    #[error("unknown endpoint; the proxy serves /_secretproxy/health{{,/live,/ready}} and /_secretproxy/metrics")]
    NoEndpoint,
    /// The route's OAuth2 token source could not get a token: the endpoint is unreachable,
    /// timed out or failed (5xx). Names the source, never its credentials.
    #[error("no token from OAuth2 token source `{token_source}`: {reason}")]
    TokenUnavailable { token_source: String, reason: String },
    /// The token endpoint refused the client's credentials or answered with no usable token.
    #[error("OAuth2 token source `{token_source}` got no token: {reason}")]
    TokenRefused { token_source: String, reason: String },
    /// The upstream answered a WebSocket handshake with another status than `101`; the client
    /// gets that status (a `4xx`/`5xx`), with no upstream text.
    #[error("the upstream refused the WebSocket upgrade with status {}", status.as_u16())]
    UpgradeRefused { status: StatusCode },
    /// The upstream's `101` is not a valid WebSocket handshake (wrong accept key, an extension or
    /// subprotocol nobody asked for).
    #[error("the upstream's WebSocket handshake is invalid: {0}")]
    WebSocketHandshake(&'static str),
    /// The route's transform failed or passed a bound.
    #[error("{message}")]
    Transform { code: &'static str, message: String },
    /// A client key past its `expires` time (`secretproxy client add --expires`).
    #[error("the client key of `{client}` has expired")]
    ClientKeyExpired { client: String },
    /// A client key used on a route outside its scope (`client add --routes`).
    #[error("the client key of `{client}` may not use route `{route}`")]
    ClientRouteNotAllowed { client: String, route: String },
    /// Over the client key's own rate limit or daily budget.
    #[error("{}", if *daily { format!("the daily budget of client `{client}` is used up") } else { format!("too many requests from client `{client}`") })]
    ClientLimited {
        client: String,
        retry_after: Duration,
        daily: bool,
    },
    /// The route signs a hash of the body, and the body declares no length (chunked).
    #[error("this route signs the request body, so it needs a Content-Length of at most {limit} bytes")]
    LengthRequired { limit: u64 },
    /// A signer's secret (key, certificate) cannot be used as configured. Names the setting or
    /// the secret, never a value.
    #[error("the route's request signing cannot be done: {reason}")]
    SignerUnusable { reason: String },
    /// The upstream refused the TLS handshake over the client certificate (mTLS).
    #[error("the upstream refused the TLS connection: {0}")]
    UpstreamTlsRefused(&'static str),
    /// The shared store (`[state]`) did not answer in time and the route or webhook fails
    /// closed (`on-error = "deny"`).
    #[error("the shared state store is unavailable and this endpoint fails closed (on-error = \"deny\")")]
    StateUnavailable,
}

impl ProxyError {
    /// A 503 for secret `name` of `secrets` that could not be read, naming how to set it.
    pub fn secret_unavailable(
        secrets: &crate::secrets::SecretCache,
        name: &str,
        error: &crate::secrets::LookupError,
    ) -> Self {
        ProxyError::SecretUnavailable {
            secret: name.to_string(),
            unreachable: error.is_unreachable(),
            reason: error.to_string(),
            hint: secrets
                .source(name)
                .map(|source| source.how_to_set(name))
                .unwrap_or_default(),
        }
    }

    /// The code table: status, code, side and connection handling of every error.
    pub fn spec(&self) -> Spec {
        use Side::{Client, Internal, Upstream};
        let (status, code, side, close) = match self {
            ProxyError::NoRoute { .. } => (StatusCode::NOT_FOUND, "no_route", Client, false),
            ProxyError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", Client, false)
            }
            ProxyError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request", Client, false),
            ProxyError::BadBody => (StatusCode::BAD_REQUEST, "bad_request_body", Client, true),
            ProxyError::BadPath(_) => (StatusCode::BAD_REQUEST, "bad_path", Client, false),
            ProxyError::AmbiguousFraming => (StatusCode::BAD_REQUEST, "ambiguous_framing", Client, true),
            ProxyError::Forbidden { code, .. } => (StatusCode::FORBIDDEN, *code, Client, false),
            ProxyError::ClientToken => (StatusCode::UNAUTHORIZED, "client_token", Client, false),
            ProxyError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", Client, true),
            ProxyError::Invalid { status, code, .. } => (*status, *code, Client, false),
            ProxyError::RateLimited { daily: false, .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "rate_limited", Client, false)
            }
            ProxyError::RateLimited { daily: true, .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "daily_quota_exceeded", Client, false)
            }
            ProxyError::SecretUnavailable { unreachable: true, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "secret_store_unreachable",
                Internal,
                false,
            ),
            ProxyError::SecretUnavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "secret_missing", Internal, false)
            }
            ProxyError::Unreachable(_) => (StatusCode::BAD_GATEWAY, "upstream_unreachable", Upstream, false),
            ProxyError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", Upstream, false),
            ProxyError::Unscrubbable(_) => (StatusCode::BAD_GATEWAY, "upstream_unscrubbable", Upstream, false),
            ProxyError::UpstreamFraming => (StatusCode::BAD_GATEWAY, "upstream_framing", Upstream, false),
            ProxyError::Transform {
                code: code @ "transform_busy",
                ..
            } => (StatusCode::SERVICE_UNAVAILABLE, *code, Internal, false),
            ProxyError::Transform { code, .. } => (StatusCode::BAD_GATEWAY, *code, Upstream, false),
            ProxyError::TokenUnavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "token_unavailable", Upstream, false)
            }
            ProxyError::TokenRefused { .. } => (StatusCode::BAD_GATEWAY, "token_refused", Upstream, false),
            ProxyError::AdminNotLocal { .. } => (StatusCode::FORBIDDEN, "forbidden", Client, false),
            ProxyError::NoEndpoint => (StatusCode::NOT_FOUND, "no_endpoint", Client, false),
            ProxyError::ClientKeyExpired { .. } => (StatusCode::UNAUTHORIZED, "client_key_expired", Client, false),
            ProxyError::ClientRouteNotAllowed { .. } => {
                (StatusCode::FORBIDDEN, "client_route_not_allowed", Client, false)
            }
            ProxyError::ClientLimited { daily: false, .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "client_rate_limited", Client, false)
            }
            ProxyError::ClientLimited { daily: true, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "client_daily_budget_exceeded",
                Client,
                false,
            ),
            ProxyError::LengthRequired { .. } => (StatusCode::LENGTH_REQUIRED, "length_required", Client, true),
            ProxyError::SignerUnusable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "signer_unusable", Internal, false),
            ProxyError::UpstreamTlsRefused(_) => (StatusCode::BAD_GATEWAY, "upstream_tls_refused", Upstream, false),
            ProxyError::StateUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "state_unavailable", Internal, false),
            ProxyError::UpgradeRefused { status } => {
                let passed = if status.is_client_error() || status.is_server_error() {
                    *status
                } else {
                    StatusCode::BAD_GATEWAY
                };
                (passed, "websocket_refused", Upstream, false)
            }
            ProxyError::WebSocketHandshake(_) => (StatusCode::BAD_GATEWAY, "websocket_handshake", Upstream, false),
        };
        Spec {
            status,
            code,
            side,
            close,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.spec().status
    }

    /// A stable machine-readable name for the error.
    pub fn code(&self) -> &'static str {
        self.spec().code
    }

    /// The JSON answer; `route` names the route that refused, when one did.
    pub fn into_response(self, route: Option<&str>) -> Response<ProxyBody> {
        let spec = self.spec();
        let mut body = json!({ "error": self.to_string(), "code": spec.code });
        if let Some(route) = route {
            body["route"] = Value::from(route);
        }
        let mut retry_after = None;
        match &self {
            ProxyError::SecretUnavailable { secret, hint, .. } => {
                body["secret"] = Value::from(secret.as_str());
                body["hint"] = Value::from(hint.as_str());
            }
            ProxyError::Forbidden { hint: Some(hint), .. } => body["hint"] = Value::from(hint.as_str()),
            ProxyError::NoRoute { path, near } => {
                body["path"] = Value::from(path.as_str());
                if let Some(near) = near {
                    body["hint"] = Value::from(format!("did you mean the route `{near}`?"));
                }
            }
            ProxyError::Invalid { reasons, .. } => body["reasons"] = Value::from(reasons.clone()),
            ProxyError::ClientKeyExpired { client } => {
                body["hint"] = Value::from(format!(
                    "issue a new key: secretproxy client revoke {client} && secretproxy client add {client}"
                ));
            }
            ProxyError::ClientRouteNotAllowed { client, .. } => {
                body["hint"] = Value::from(format!(
                    "see the key's routes with `secretproxy client list`; a key for more routes needs a new `client add` (revoke `{client}` first)"
                ));
            }
            ProxyError::UpgradeRefused { status } => body["upstream_status"] = Value::from(status.as_u16()),
            ProxyError::TokenUnavailable {
                token_source: source, ..
            }
            | ProxyError::TokenRefused {
                token_source: source, ..
            } => {
                body["token_source"] = Value::from(source.as_str());
                body["hint"] = Value::from(format!(
                    "check `[oauth2.{source}]` and `secretproxy check`; the daemon's log has the details"
                ));
            }
            ProxyError::UpstreamTlsRefused(_) => {
                body["hint"] = Value::from("check the route's `client-cert` and `client-key` (mTLS)");
            }
            ProxyError::RateLimited { retry_after: after, .. }
            | ProxyError::ClientLimited { retry_after: after, .. } => {
                let seconds = (after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1);
                body["retry_after"] = Value::from(seconds);
                retry_after = Some(seconds);
            }
            _ => {}
        }
        let mut response = json_response(spec.status, &body);
        let headers = response.headers_mut();
        if let ProxyError::MethodNotAllowed { allow, .. } = &self
            && let Ok(value) = HeaderValue::from_str(allow)
        {
            headers.insert(header::ALLOW, value);
        }
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if spec.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// A JSON response with `Cache-Control: no-store`.
pub fn json_response(status: StatusCode, body: &Value) -> Response<ProxyBody> {
    let mut text = body.to_string();
    text.push('\n');
    let mut response = Response::new(full(Bytes::from(text)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Why a request target was refused (`features::path` checks it). Messages name the rule, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("CONNECT is not supported")]
    Connect,
    #[error("absolute-form and authority-form request targets are not accepted; send `/path`")]
    NotOriginForm,
    #[error("the path contains a `.` or `..` segment (or one of only dots and spaces)")]
    DotSegment,
    #[error("the path contains an empty segment (`//`)")]
    EmptySegment,
    #[error("the path contains an encoded `/` or `\\`, or a raw `\\`")]
    Slash,
    #[error("the path contains a `;` parameter")]
    Semicolon,
    #[error("the path contains a control character")]
    Control,
    #[error("the path has malformed percent-encoding")]
    Encoding,
    #[error("the path is percent-encoded too many times over")]
    TooDeep,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_closes_by_the_table_only() {
        let closing = ProxyError::BodyTooLarge { limit: 1 }.into_response(Some("r"));
        assert_eq!(closing.headers()[header::CONNECTION], "close");
        let open = ProxyError::ClientToken.into_response(None);
        assert!(open.headers().get(header::CONNECTION).is_none());
    }

    #[test]
    fn rate_limit_rounds_retry_after_up() {
        let response = ProxyError::RateLimited {
            retry_after: Duration::from_millis(1200),
            daily: false,
        }
        .into_response(Some("r"));
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }
}
