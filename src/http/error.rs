//! Every way a proxied request can fail, mapped to a status code and a JSON body.
//!
//! Bodies are built from names and fixed text only: a secret name and how to set it, a route
//! name, an error class. Upstream error text is scrubbed of secret values before it is used.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use super::body::{ProxyBody, full};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches this path")]
    NoRoute,
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
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    #[error("upstream did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The request target is not a canonical origin-form path.
    #[error("bad request path: {0}")]
    BadPath(#[from] crate::features::path::PathError),
    /// Both `Content-Length` and `Transfer-Encoding`: the connection is closed after the answer.
    #[error("the request has both Content-Length and Transfer-Encoding")]
    AmbiguousFraming,
    /// Refused by the browser boundary (origin, fetch metadata, host, non-browser policy).
    #[error("{reason}")]
    Forbidden { code: &'static str, reason: String },
    #[error("a valid client token is required (`Authorization: Bearer ...` or `X-Secretproxy-Token`)")]
    ClientToken,
    #[error("the request body is larger than this route's limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// An answer in a coding that cannot be decoded for scrubbing; fixed text, nothing quoted from
    /// the upstream.
    #[error("the upstream answered in {0}, which cannot be scrubbed of secrets")]
    Unscrubbable(&'static str),
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

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::SecretUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Unreachable(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadPath(_) | ProxyError::AmbiguousFraming => StatusCode::BAD_REQUEST,
            ProxyError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ProxyError::ClientToken => StatusCode::UNAUTHORIZED,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Unscrubbable(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// A stable machine-readable name for the error.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::MethodNotAllowed { .. } => "method_not_allowed",
            ProxyError::SecretUnavailable { unreachable: true, .. } => "secret_store_unreachable",
            ProxyError::SecretUnavailable { .. } => "secret_missing",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::Unreachable(_) => "upstream_unreachable",
            ProxyError::Timeout(_) => "upstream_timeout",
            ProxyError::BadPath(_) => "bad_path",
            ProxyError::AmbiguousFraming => "ambiguous_framing",
            ProxyError::Forbidden { code, .. } => code,
            ProxyError::ClientToken => "client_token",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::Unscrubbable(_) => "upstream_unscrubbable",
        }
    }

    pub fn into_response(self, route: Option<&str>) -> Response<ProxyBody> {
        let mut body = json!({ "error": self.to_string(), "code": self.code() });
        if let Some(route) = route {
            body["route"] = Value::from(route);
        }
        if let ProxyError::SecretUnavailable { secret, hint, .. } = &self {
            body["secret"] = Value::from(secret.as_str());
            body["hint"] = Value::from(hint.as_str());
        }
        let mut response = json_response(self.status(), &body);
        if let ProxyError::MethodNotAllowed { allow, .. } = &self
            && let Ok(value) = HeaderValue::from_str(allow)
        {
            response.headers_mut().insert(header::ALLOW, value);
        }
        // The rest of the request cannot be trusted or is not worth reading: end the connection.
        if matches!(self, ProxyError::AmbiguousFraming | ProxyError::BodyTooLarge { .. }) {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
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
