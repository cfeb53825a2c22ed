//! Request validation, all before the upstream is contacted: required query parameters and
//! their patterns (`request.query`), allowed content types (`request.content-types`) and a JSON
//! Schema for JSON bodies (`request.schema`, a file, JSON text or a TOML table).
//!
//! Failures are `400` (`422` for a body that breaks the schema) with every reason in the JSON
//! body. Only a route with a schema buffers its request body, and only up to `schema-limit`
//! (`413` beyond it); every other body keeps streaming.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode, header};
use http_body::Body as _;
use http_body_util::BodyExt;
use percent_encoding::percent_decode_str;
use regex::Regex;
use serde_json::Value;

use crate::configkit::size::size;
use crate::configkit::{ConfigError, Source, relative_to_config};
use crate::http::body::{ClientBody, Upload, Watched};
use crate::http::error::ProxyError;
use crate::upstream::UpstreamBody;

/// Default for `request.schema-limit`.
pub const DEFAULT_SCHEMA_LIMIT: u64 = 1024 * 1024;
/// At most this many schema errors are reported.
const MAX_REASONS: usize = 20;

/// One `request.query` entry.
#[derive(Debug, Clone)]
pub struct QueryRule {
    pub name: String,
    pub required: bool,
    /// Anchored: the whole decoded value must match.
    pub pattern: Option<Regex>,
}

/// A compiled JSON Schema.
pub struct Schema {
    validator: jsonschema::Validator,
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Schema")
    }
}

/// A route's request checks.
#[derive(Debug, Clone, Default)]
pub struct RequestRules {
    pub query: Vec<QueryRule>,
    /// Lowercase media types (`application/json`); empty = any.
    pub content_types: Vec<String>,
    pub schema: Option<Arc<Schema>>,
    pub schema_limit: u64,
}

/// A refused request: status, code and reasons.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub reasons: Vec<String>,
}

impl From<Refusal> for ProxyError {
    fn from(refusal: Refusal) -> ProxyError {
        ProxyError::Invalid {
            status: refusal.status,
            code: refusal.code,
            message: refusal.message,
            reasons: refusal.reasons,
        }
    }
}

impl Refusal {
    fn bad(message: &str, reasons: Vec<String>) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_request",
            message: message.to_string(),
            reasons,
        }
    }
}

/// `request.*` on a route: checks made before the upstream is contacted.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawRequest {
    #[serde(default)]
    pub query: std::collections::BTreeMap<String, toml::Spanned<RawQueryRule>>,
    pub schema: Option<toml::Spanned<RawSchema>>,
    pub schema_limit: Option<toml::Spanned<crate::configkit::raw::RawSize>>,
    pub content_types: Option<toml::Spanned<Vec<toml::Spanned<String>>>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawQueryRule {
    pub required: Option<bool>,
    pub pattern: Option<toml::Spanned<String>>,
}

/// A JSON Schema: a file path, JSON text, or a TOML table.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
pub enum RawSchema {
    Text(String),
    Table(toml::Table),
}

impl RequestRules {
    /// Validates `routes.NAME.request`.
    pub(crate) fn from_raw(
        raw: Option<&toml::Spanned<RawRequest>>,
        route: &str,
        source: &Source<'_>,
    ) -> Result<RequestRules, ConfigError> {
        let key = |field: &str| format!("routes.{route}.request.{field}");
        let mut rules = RequestRules {
            schema_limit: DEFAULT_SCHEMA_LIMIT,
            ..RequestRules::default()
        };
        let Some(raw) = raw else { return Ok(rules) };
        let raw = raw.get_ref();
        for (name, rule) in &raw.query {
            let field = key(&format!("query.{name}"));
            if name.is_empty() {
                return Err(source.error(rule.span(), field, "query parameter names may not be empty"));
            }
            let pattern = match &rule.get_ref().pattern {
                None => None,
                Some(pattern) => Some(Regex::new(&format!("^(?:{})$", pattern.get_ref())).map_err(|error| {
                    source.error(
                        pattern.span(),
                        format!("{field}.pattern"),
                        format!(
                            "not a valid regular expression: {}",
                            error.to_string().lines().last().unwrap_or("")
                        ),
                    )
                })?),
            };
            rules.query.push(QueryRule {
                name: name.clone(),
                required: rule.get_ref().required.unwrap_or(true),
                pattern,
            });
        }
        if let Some(types) = &raw.content_types {
            for media in types.get_ref() {
                let text = media.get_ref().trim().to_ascii_lowercase();
                if text
                    .split_once('/')
                    .is_none_or(|(a, b)| a.is_empty() || b.is_empty() || b.contains(';'))
                {
                    return Err(source
                        .error(
                            media.span(),
                            key("content-types"),
                            format!("`{}` is not a media type", media.get_ref()),
                        )
                        .with_help(
                            "write the type without parameters, e.g. \"application/json\" or \"multipart/form-data\"",
                        ));
                }
                rules.content_types.push(text);
            }
        }
        if let Some(schema) = &raw.schema {
            let field = key("schema");
            let value: Value = match schema.get_ref() {
                RawSchema::Table(table) => serde_json::to_value(table).map_err(|e| {
                    source.error(
                        schema.span(),
                        field.clone(),
                        format!("cannot use the table as JSON: {e}"),
                    )
                })?,
                RawSchema::Text(text) if text.trim_start().starts_with('{') => serde_json::from_str(text)
                    .map_err(|e| source.error(schema.span(), field.clone(), format!("not valid JSON: {e}")))?,
                RawSchema::Text(path) => {
                    let file = relative_to_config(source, Path::new(path));
                    let text = std::fs::read_to_string(&file).map_err(|e| {
                        source.error(
                            schema.span(),
                            field.clone(),
                            format!("cannot read `{}`: {e}", file.display()),
                        )
                    })?;
                    serde_json::from_str(&text).map_err(|e| {
                        source.error(
                            schema.span(),
                            field.clone(),
                            format!("`{}` is not valid JSON: {e}", file.display()),
                        )
                    })?
                }
            };
            let validator = jsonschema::validator_for(&value)
                .map_err(|e| source.error(schema.span(), field, format!("not a valid JSON Schema: {e}")))?;
            rules.schema = Some(Arc::new(Schema { validator }));
        }
        rules.schema_limit = size(
            raw.schema_limit.as_ref(),
            &key("schema-limit"),
            DEFAULT_SCHEMA_LIMIT,
            source,
        )?;
        Ok(rules)
    }

    pub fn is_active(&self) -> bool {
        !self.query.is_empty() || !self.content_types.is_empty() || self.schema.is_some()
    }

    /// Checks the query and the content type; the body is not touched.
    pub fn check_head(&self, query: Option<&str>, headers: &HeaderMap, has_body: bool) -> Result<(), Refusal> {
        let mut reasons = Vec::new();
        let pairs: Vec<(String, String)> = query
            .unwrap_or("")
            .split('&')
            .filter(|piece| !piece.is_empty())
            .map(|piece| {
                let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
                let decode = |text: &str| {
                    percent_decode_str(&text.replace('+', " "))
                        .decode_utf8_lossy()
                        .into_owned()
                };
                (decode(name), decode(value))
            })
            .collect();
        for rule in &self.query {
            let values: Vec<&str> = pairs
                .iter()
                .filter(|(name, _)| *name == rule.name)
                .map(|(_, v)| v.as_str())
                .collect();
            if values.is_empty() {
                if rule.required {
                    reasons.push(format!("query parameter `{}` is required", rule.name));
                }
                continue;
            }
            if let Some(pattern) = &rule.pattern
                && values.iter().any(|value| !pattern.is_match(value))
            {
                reasons.push(format!(
                    "query parameter `{}` must match `{}`",
                    rule.name,
                    display_pattern(pattern)
                ));
            }
        }
        if has_body && (!self.content_types.is_empty() || self.schema.is_some()) {
            let essence = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
            let allowed: Vec<&str> = if self.content_types.is_empty() {
                vec!["application/json"]
            } else {
                self.content_types.iter().map(String::as_str).collect()
            };
            match essence {
                Some(essence) if allowed.contains(&essence.as_str()) => {}
                Some(essence) => reasons.push(format!(
                    "content type `{essence}` is not accepted; send one of {}",
                    allowed.join(", ")
                )),
                None => reasons.push(format!(
                    "a Content-Type header is required: one of {}",
                    allowed.join(", ")
                )),
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(Refusal::bad("the request is invalid", reasons))
        }
    }

    /// For a route with a schema: reads the body (up to the limit) and validates it. JSON bodies
    /// only: another accepted content type passes without a schema check.
    ///
    /// The route's `max-body` holds here too: a body past it is refused with `413` (and the
    /// connection closed) before anything reaches the upstream.
    pub async fn check_body(
        &self,
        headers: &HeaderMap,
        body: ClientBody,
        max_body: Option<u64>,
    ) -> Result<Bytes, ProxyError> {
        let schema = self.schema.clone().expect("check_body is only called with a schema");
        let mut buffer = BytesMut::new();
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| ProxyError::BadBody)?;
            if let Ok(data) = frame.into_data() {
                buffer.extend_from_slice(&data);
                if let Some(limit) = max_body
                    && buffer.len() as u64 > limit
                {
                    return Err(ProxyError::BodyTooLarge { limit });
                }
                if buffer.len() as u64 > self.schema_limit {
                    return Err(Refusal {
                        status: StatusCode::PAYLOAD_TOO_LARGE,
                        code: "body_too_large",
                        message: format!(
                            "the request body is larger than this route validates ({} bytes)",
                            self.schema_limit
                        ),
                        reasons: Vec::new(),
                    }
                    .into());
                }
            }
        }
        let bytes = buffer.freeze();
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
            .is_some_and(|essence| essence == "application/json" || essence.ends_with("+json"));
        if !is_json {
            return Ok(bytes);
        }
        // Parsing and checking a large body is CPU work: keep it off the async workers.
        let large = is_large(bytes.len());
        let check = move || schema_reasons(&schema, &bytes).map(|()| bytes);
        let checked = if large {
            tokio::task::spawn_blocking(check)
                .await
                .unwrap_or_else(|_| Err(Refusal::bad("the request body could not be checked", Vec::new())))
        } else {
            check()
        };
        checked.map_err(ProxyError::from)
    }
}

/// Bodies this large are checked on the blocking pool.
fn is_large(length: usize) -> bool {
    length > 64 * 1024
}

/// Parses `bytes` as JSON and checks it against `schema`.
fn schema_reasons(schema: &Schema, bytes: &[u8]) -> Result<(), Refusal> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Refusal::bad("the request body is not valid JSON", vec![e.to_string()]))?;
    let reasons: Vec<String> = schema
        .validator
        .iter_errors(&value)
        .take(MAX_REASONS)
        .map(|error| {
            let path = error.instance_path().to_string();
            let at = if path.is_empty() { "/".to_string() } else { path };
            format!("{at}: {}", error.masked())
        })
        .collect();
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(Refusal {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "schema_violation",
            message: "the request body does not match the route's schema".to_string(),
            reasons,
        })
    }
}

/// The request body on its way upstream: still streaming, or read whole for the schema check.
pub enum RequestBody {
    Stream(ClientBody),
    Buffered(Bytes),
}

impl RequestBody {
    /// The body for the upstream, counting streamed bytes into `count`, cutting a stream off
    /// past `limit` (recorded in `overrun`) and reporting its end and read errors to `upload`.
    pub fn into_upstream(
        self,
        count: Arc<AtomicU64>,
        limit: Option<u64>,
        overrun: &crate::features::limit::Overrun,
        upload: Arc<Upload>,
    ) -> UpstreamBody {
        match self {
            RequestBody::Stream(body) => {
                let limited = crate::features::limit::Limited::new(body, limit, overrun.clone());
                BodyExt::map_err(Watched::new(limited, count, upload), Into::into).boxed()
            }
            RequestBody::Buffered(bytes) => {
                let body = Watched::new(http_body_util::Full::new(bytes), count, upload);
                BodyExt::map_err(body, |never| match never {}).boxed()
            }
        }
    }
}

impl RequestRules {
    /// Reads and checks the body when the route has a schema; otherwise leaves it streaming.
    pub async fn prepare_body(
        &self,
        headers: &HeaderMap,
        body: ClientBody,
        max_body: Option<u64>,
    ) -> Result<RequestBody, ProxyError> {
        if self.schema.is_none() || body.is_end_stream() {
            return Ok(RequestBody::Stream(body));
        }
        self.check_body(headers, body, max_body)
            .await
            .map(RequestBody::Buffered)
    }
}

/// The pattern as the user wrote it (without the anchors added at load).
fn display_pattern(pattern: &Regex) -> &str {
    let text = pattern.as_str();
    text.strip_prefix("^(?:")
        .and_then(|t| t.strip_suffix(")$"))
        .unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn rules(request: &str) -> RequestRules {
        let text = format!("[routes.a]\npath = \"/a\"\nupstream = \"https://x/\"\n{request}\n");
        Config::parse(&text, "t").unwrap().routes[0].request.clone()
    }

    #[test]
    fn query_rules() {
        let rules = rules(
            "request.query = { page = { pattern = \"[0-9]+\" }, sort = { required = false, pattern = \"asc|desc\" } }",
        );
        let none = HeaderMap::new();
        assert!(rules.check_head(Some("page=2&sort=asc"), &none, false).is_ok());
        assert!(rules.check_head(Some("page=2"), &none, false).is_ok());
        let refused = rules.check_head(Some("page=2x&sort=up"), &none, false).unwrap_err();
        assert_eq!(refused.reasons.len(), 2, "{refused:?}");
        assert!(refused.reasons[0].contains("`[0-9]+`"));
        let refused = rules.check_head(None, &none, false).unwrap_err();
        assert_eq!(refused.reasons, ["query parameter `page` is required"]);
    }

    #[test]
    fn bad_pattern_is_a_config_error() {
        let text =
            "[routes.a]\npath = \"/a\"\nupstream = \"https://x/\"\nrequest.query = { q = { pattern = \"(\" } }\n";
        let error = Config::parse(text, "t").unwrap_err().to_string();
        assert!(error.starts_with("t:4:35: routes.a.request.query.q.pattern"), "{error}");
    }

    #[test]
    fn inline_schema_forms() {
        assert!(
            rules("request.schema = { type = \"object\", required = [\"email\"] }")
                .schema
                .is_some()
        );
        assert!(rules("request.schema = '{\"type\": \"array\"}'").schema.is_some());
        let text = "[routes.a]\npath = \"/a\"\nupstream = \"https://x/\"\nrequest.schema = { type = 12 }\n";
        assert!(
            Config::parse(text, "t")
                .unwrap_err()
                .to_string()
                .contains("not a valid JSON Schema")
        );
    }
}
