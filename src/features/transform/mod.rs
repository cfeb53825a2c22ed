//! Response shaping: `response.transform` (a jq program run with jaq on JSON bodies, see
//! [`super::jq`]) and `response.headers` (set or remove headers on the way to the client).
//!
//! Programs are compiled once, at config load, so a typo is a config error with its position,
//! never a runtime surprise. A transformed body must be buffered: only up to the route's
//! `transform-limit`; a bigger body, or one that is not JSON, gets a 502 or passes through
//! unchanged (`on-transform-error`). Only 2xx answers to non-HEAD requests are transformed: an
//! upstream error keeps its own shape.
//!
//! Programs never run in the daemon: a [`pool`] of sandboxed [`worker`] processes runs them,
//! bounded in memory, stack and time, so no program and no input can crash, wedge or exhaust
//! the daemon. A bound that is hit gives `502 transform_limit`; a `200` from a transform is
//! always strict RFC 8259 JSON ([`strict`] checks every output).

pub mod pool;
pub mod protocol;
pub mod strict;
pub mod worker;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Response, header};
use http_body::Body as _;
use http_body_util::BodyExt;

use super::jq::{CompileError, Program};
use crate::configkit::size::size;
use crate::configkit::{ConfigError, Source};
use crate::http::body::{BoxError, ProxyBody, full};
use crate::http::error::ProxyError;

/// Default for `response.transform-limit`.
pub const DEFAULT_TRANSFORM_LIMIT: u64 = 4 * 1024 * 1024;
/// The longest `response.transform` program.
pub const MAX_PROGRAM_LEN: usize = 8 * 1024;
/// A transform's output may be this many times its route's `transform-limit` (at least 1 MiB).
pub const OUTPUT_FACTOR: u64 = 4;

/// A route's jq program: checked by compiling it at config load, run by a worker.
pub struct Transform {
    program: Arc<str>,
}

impl std::fmt::Debug for Transform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Transform").field(&self.program).finish()
    }
}

impl Transform {
    /// Compiles `program` to report its errors; workers compile it again where it runs.
    ///
    /// jaq's parser recurses per nesting level (and per element of a list), so the daemon
    /// compiles on a thread with the workers' stack, and programs are at most
    /// [`MAX_PROGRAM_LEN`] bytes: no config, loaded or reloaded, can overflow the daemon's stack.
    pub fn compile(program: &str) -> Result<Transform, CompileError> {
        if program.len() > MAX_PROGRAM_LEN {
            return Err(CompileError {
                offset: 0,
                message: format!("the program is longer than {MAX_PROGRAM_LEN} bytes"),
            });
        }
        let checked = std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("transform-compile".into())
                .stack_size(worker::ENGINE_STACK)
                .spawn_scoped(scope, || Program::compile(program).map(drop))
                .map(|thread| thread.join())
        });
        match checked {
            Ok(Ok(result)) => result?,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            // No thread to be had: compile here (the program is short enough for most stacks).
            Err(_) => drop(Program::compile(program)?),
        }
        Ok(Transform {
            program: program.into(),
        })
    }

    pub fn program(&self) -> &str {
        &self.program
    }

    /// Runs the program on `input` in a transform worker; `limit` is the route's
    /// `transform-limit` (the output may be [`OUTPUT_FACTOR`] times that).
    pub async fn run(&self, input: Bytes, limit: u64) -> Result<Bytes, TransformFailure> {
        let budget = pool::Budget {
            max_output: limit.saturating_mul(OUTPUT_FACTOR).max(1024 * 1024),
            timeout: pool::CALL_TIMEOUT,
        };
        pool::Pool::global()
            .run(self.program.clone(), input, budget)
            .await
            .map_err(|error| match error {
                pool::CallError::NotJson => TransformFailure::NotJson,
                pool::CallError::TooDeep => TransformFailure::TooDeep,
                pool::CallError::Program(message) => TransformFailure::Program(message),
                pool::CallError::Limit(message) => TransformFailure::Limit(message),
                pool::CallError::Busy => TransformFailure::Busy,
                pool::CallError::Unavailable => TransformFailure::Unavailable,
            })
    }
}

/// Why a body was not transformed.
#[derive(Debug)]
pub enum TransformFailure {
    TooLarge(u64),
    NotJson,
    TooDeep,
    Program(String),
    Upstream(String),
    /// A bound of the sandbox was hit (time, memory, stack, output size).
    Limit(String),
    /// Every worker stayed busy past the queue timeout.
    Busy,
    /// No worker could be started.
    Unavailable,
}

impl TransformFailure {
    /// The error code in the JSON body and the access log.
    pub fn code(&self) -> &'static str {
        match self {
            TransformFailure::Limit(_) | TransformFailure::TooDeep => "transform_limit",
            TransformFailure::Busy => "transform_busy",
            TransformFailure::Unavailable => "transform_unavailable",
            _ => "transform_failed",
        }
    }
}

impl std::fmt::Display for TransformFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransformFailure::TooLarge(limit) => {
                write!(
                    f,
                    "the upstream's body is larger than the transform limit ({limit} bytes)"
                )
            }
            TransformFailure::NotJson => f.write_str("the upstream's body is not JSON"),
            TransformFailure::TooDeep => write!(
                f,
                "the upstream's body nests deeper than {} levels",
                super::jq::MAX_DEPTH
            ),
            TransformFailure::Program(message) | TransformFailure::Limit(message) => f.write_str(message),
            TransformFailure::Upstream(message) => write!(f, "reading the upstream's body failed: {message}"),
            TransformFailure::Busy => f.write_str("every transform worker is busy; try again"),
            TransformFailure::Unavailable => f.write_str("the transform worker could not start"),
        }
    }
}

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

/// `response.*` on a route: reshape the upstream's answer.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawResponse {
    /// A jq program run on JSON bodies.
    pub transform: Option<toml::Spanned<String>>,
    /// The most of a body the transform buffers, e.g. `"4MiB"` or a byte count.
    pub transform_limit: Option<toml::Spanned<crate::configkit::raw::RawSize>>,
    /// `"error"` (502, the default) or `"pass"` (send the body unchanged).
    pub on_transform_error: Option<toml::Spanned<String>>,
    pub headers: Option<toml::Spanned<RawResponseHeaders>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawResponseHeaders {
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, toml::Spanned<String>>,
    #[serde(default)]
    pub remove: Vec<toml::Spanned<String>>,
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
                Ok(bytes) => (
                    transform.run(bytes.clone(), self.transform_limit).await,
                    Buffered::Whole(bytes),
                ),
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
                let code = failure.code();
                let error = ProxyError::Transform {
                    code,
                    message: format!("the response could not be transformed: {failure}"),
                };
                (error.into_response(Some(route)), Some(code))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deepest_programs_compile_without_overflowing_the_callers_stack() {
        // jaq's parser and compiler recurse once per nesting level, whatever the construct.
        // This test's thread has the default 2 MiB stack; compiling runs on the engine's.
        let n = MAX_PROGRAM_LEN;
        let shapes = [
            ("list", format!("[{}1]", "1,".repeat(n / 2 - 2))),
            ("parens", format!("{}1{}", "(".repeat(n / 2 - 1), ")".repeat(n / 2 - 1))),
            ("arrays", format!("{}1{}", "[".repeat(n / 2 - 1), "]".repeat(n / 2 - 1))),
            ("negations", format!("{}1", "-".repeat(n - 1))),
            ("pipes", format!("{}.", ".|".repeat(n / 2 - 1))),
            ("sums", format!("{}1", "1+".repeat(n / 2 - 1))),
            ("alternatives", format!("{}1", "1//".repeat(n / 3 - 1))),
            (
                "objects",
                format!("{}1{}", "{a:".repeat(n / 4 - 1), "}".repeat(n / 4 - 1)),
            ),
            ("tries", format!("{}1", "try ".repeat(n / 4 - 1))),
            (
                "interpolations",
                format!("{}1{}", "\"\\(".repeat(n / 5 - 1), ")\"".repeat(n / 5 - 1)),
            ),
            (
                "conditionals",
                format!(
                    "{}1{}",
                    "if . then ".repeat(n / 21 - 1),
                    " else . end".repeat(n / 21 - 1)
                ),
            ),
            ("optionals", format!("1{}", "?".repeat(n - 1))),
            ("indexes", format!(".{}", "[0]".repeat(n / 3 - 1))),
            ("fields", ".a".repeat(n / 2 - 1)),
        ];
        for (shape, program) in shapes {
            assert!(program.len() <= MAX_PROGRAM_LEN, "{shape}");
            assert!(Transform::compile(&program).is_ok(), "{shape}");
        }
        let too_long = format!("[{}1]", "1,".repeat(MAX_PROGRAM_LEN / 2));
        let error = Transform::compile(&too_long).unwrap_err();
        assert!(error.message.contains("longer than"), "{}", error.message);
    }
}
