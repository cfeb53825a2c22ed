//! Response shaping: `response.transform` (a jq program run with jaq on JSON bodies, see
//! [`super::jq`]) and `response.headers` (set or remove headers on the way to the client).
//!
//! Programs are compiled once, at config load, so a typo is a config error with its position,
//! never a runtime surprise. A transformed body must be buffered: only up to the route's
//! `transform-limit`; a bigger body, or one that is not JSON, gets a 502 or passes through
//! unchanged (`on-transform-error`). Only 2xx answers to non-HEAD requests are transformed: an
//! upstream error keeps its own shape.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Response, StatusCode, header};
use http_body::Body as _;
use http_body_util::BodyExt;
use serde_json::json;

use super::jq::{Transform, TransformFailure};
use crate::config::raw::RawResponse;
use crate::config::size::size;
use crate::config::{ConfigError, Source};
use crate::http::body::{BoxError, ProxyBody, full};
use crate::http::error::json_response;

/// Default for `response.transform-limit`.
pub const DEFAULT_TRANSFORM_LIMIT: u64 = 4 * 1024 * 1024;

/// Headers a route may not set or remove on responses: they frame the connection.
const FRAMING_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "trailer",
    "upgrade",
];

/// What happens when a body cannot be transformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Answer 502 with a JSON error.
    #[default]
    Error,
    /// Send the upstream's body unchanged.
    Pass,
}

/// A route's response settings.
#[derive(Debug, Clone, Default)]
pub struct ResponsePolicy {
    pub transform: Option<Arc<Transform>>,
    pub transform_limit: u64,
    pub on_error: OnError,
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    pub remove_headers: Vec<HeaderName>,
}

impl ResponsePolicy {
    /// Validates `routes.NAME.response`.
    pub(crate) fn from_raw(
        raw: Option<&toml::Spanned<RawResponse>>,
        route: &str,
        source: &Source<'_>,
    ) -> Result<ResponsePolicy, ConfigError> {
        let key = |field: &str| format!("routes.{route}.response.{field}");
        let mut policy = ResponsePolicy {
            transform_limit: DEFAULT_TRANSFORM_LIMIT,
            ..ResponsePolicy::default()
        };
        let Some(raw) = raw else { return Ok(policy) };
        let raw = raw.get_ref();
        if let Some(program) = &raw.transform {
            let compiled = Transform::compile(program.get_ref()).map_err(|error| {
                // Point into the program when the TOML string holds it verbatim (no escapes).
                let value_start = program.span().start + 1;
                let verbatim = source
                    .text
                    .get(value_start..value_start + program.get_ref().len())
                    .is_some_and(|text| text == program.get_ref());
                let at = if verbatim {
                    value_start + error.offset
                } else {
                    program.span().start
                };
                source
                    .error(at..at, key("transform"), format!("jq: {}", error.message))
                    .with_help(format!("at character {} of the program", error.offset + 1))
            })?;
            policy.transform = Some(Arc::new(compiled));
        }
        policy.transform_limit = size(
            raw.transform_limit.as_ref(),
            &key("transform-limit"),
            DEFAULT_TRANSFORM_LIMIT,
            source,
        )?;
        if let Some(mode) = &raw.on_transform_error {
            policy.on_error = match mode.get_ref().as_str() {
                "error" => OnError::Error,
                "pass" => OnError::Pass,
                other => {
                    return Err(source
                        .error(
                            mode.span(),
                            key("on-transform-error"),
                            format!("`{other}` is not a choice"),
                        )
                        .with_help("write \"error\" (answer 502) or \"pass\" (send the body unchanged)"));
                }
            };
        }
        if let Some(headers) = &raw.headers {
            let name_of = |text: &str, span: std::ops::Range<usize>, field: String| {
                let name = HeaderName::from_bytes(text.as_bytes()).map_err(|_| {
                    source.error(
                        span.clone(),
                        field.clone(),
                        format!("`{text}` is not a valid header name"),
                    )
                })?;
                if FRAMING_HEADERS.contains(&name.as_str()) {
                    return Err(source.error(
                        span,
                        field,
                        format!("`{text}` frames the connection and cannot be changed"),
                    ));
                }
                Ok(name)
            };
            for (name, value) in &headers.get_ref().set {
                let field = key(&format!("headers.set.{name}"));
                let header = name_of(name, value.span(), field.clone())?;
                if value.get_ref().contains("${") {
                    return Err(source
                        .error(
                            value.span(),
                            field,
                            "response headers are sent to the client; they cannot hold a secret",
                        )
                        .with_help("write the value literally"));
                }
                let parsed = HeaderValue::from_str(value.get_ref())
                    .map_err(|_| source.error(value.span(), field, "not a valid header value"))?;
                policy.set_headers.push((header, parsed));
            }
            for name in &headers.get_ref().remove {
                policy
                    .remove_headers
                    .push(name_of(name.get_ref(), name.span(), key("headers.remove"))?);
            }
        }
        Ok(policy)
    }

    pub fn is_active(&self) -> bool {
        self.transform.is_some() || !self.set_headers.is_empty() || !self.remove_headers.is_empty()
    }

    /// Applies the policy to an upstream response. Returns the response and, when the transform
    /// failed, the error code for the access line.
    pub async fn apply(
        &self,
        method: &Method,
        route: &str,
        response: Response<ProxyBody>,
    ) -> (Response<ProxyBody>, Option<&'static str>) {
        let (mut response, failed) = match &self.transform {
            Some(transform) if response.status().is_success() && *method != Method::HEAD => {
                self.transform(transform, route, response).await
            }
            _ => (response, None),
        };
        let headers = response.headers_mut();
        for name in &self.remove_headers {
            headers.remove(name);
        }
        for (name, value) in &self.set_headers {
            headers.insert(name.clone(), value.clone());
        }
        (response, failed)
    }

    async fn transform(
        &self,
        transform: &Transform,
        route: &str,
        response: Response<ProxyBody>,
    ) -> (Response<ProxyBody>, Option<&'static str>) {
        let (mut parts, body) = response.into_parts();
        let encoded = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        let json_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_none_or(|v| is_json_type(v.as_bytes()));

        let (outcome, body) = if encoded || !json_type {
            (Err(TransformFailure::NotJson), Buffered::Untouched(body))
        } else {
            match collect_limited(body, self.transform_limit).await {
                Ok(bytes) => (transform.run(&bytes), Buffered::Whole(bytes)),
                Err((failure, rest)) => (Err(failure), rest),
            }
        };
        match outcome {
            Ok(shaped) => {
                parts.headers.remove(header::CONTENT_LENGTH);
                parts.headers.remove(header::ETAG);
                parts
                    .headers
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                (Response::from_parts(parts, full(shaped)), None)
            }
            Err(failure) if self.on_error == OnError::Pass && !matches!(failure, TransformFailure::Upstream(_)) => {
                tracing::debug!(route, reason = %failure, "transform skipped; body passed through");
                (Response::from_parts(parts, body.into_body()), None)
            }
            Err(failure) => {
                tracing::warn!(route, reason = %failure, "response transform failed");
                let body = json!({
                    "error": format!("the response could not be transformed: {failure}"),
                    "code": "transform_failed",
                    "route": route,
                });
                (json_response(StatusCode::BAD_GATEWAY, &body), Some("transform_failed"))
            }
        }
    }
}

/// `application/json`, `application/problem+json`, `text/json` ...
fn is_json_type(value: &[u8]) -> bool {
    let text = String::from_utf8_lossy(value).to_ascii_lowercase();
    let essence = text.split(';').next().unwrap_or("").trim();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// A body that was read whole, partly, or not at all.
enum Buffered {
    Whole(Bytes),
    /// What was read so far, then the rest of the stream.
    Prefix(Bytes, ProxyBody),
    Untouched(ProxyBody),
}

impl Buffered {
    fn into_body(self) -> ProxyBody {
        match self {
            Buffered::Whole(bytes) => full(bytes),
            Buffered::Untouched(body) => body,
            Buffered::Prefix(prefix, rest) => {
                let head = futures_util::stream::once(async move { Ok::<_, BoxError>(http_body::Frame::data(prefix)) });
                let tail = http_body_util::BodyStream::new(rest);
                http_body_util::StreamBody::new(futures_util::StreamExt::chain(head, tail)).boxed_unsync()
            }
        }
    }
}

/// Reads a body up to `limit` bytes; past it, hands back what was read and the rest.
async fn collect_limited(mut body: ProxyBody, limit: u64) -> Result<Bytes, (TransformFailure, Buffered)> {
    if body.size_hint().lower() > limit {
        return Err((TransformFailure::TooLarge(limit), Buffered::Untouched(body)));
    }
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                let failure = TransformFailure::Upstream(error.to_string());
                return Err((failure, Buffered::Whole(Bytes::new())));
            }
        };
        if let Ok(data) = frame.into_data() {
            buffer.extend_from_slice(&data);
            if buffer.len() as u64 > limit {
                return Err((
                    TransformFailure::TooLarge(limit),
                    Buffered::Prefix(buffer.freeze(), body),
                ));
            }
        }
    }
    Ok(buffer.freeze())
}
