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
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::SecretUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Unreachable(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
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
