//! Declarative HMAC request signing (`auth = { hmac = { ... } }`): a template of the string to
//! sign over the request as sent, HMAC-SHA256 or -SHA512 with a key from a secret, the signature
//! hex or base64 in a header or a query parameter, and a timestamp in a header or a parameter.
//!
//! It covers the common exchange and B2B schemes (see the README): Binance (`timestamp` and
//! `signature` query parameters over `{query}{body}`), Coinbase Exchange (base64 key, base64
//! signature of `{timestamp}{method}{target}{body}` in `CB-ACCESS-SIGN`), OKX (RFC 3339
//! timestamps) and Bybit (`{timestamp}${key}5000{query}{body}`, the API key inside the message).
//! The API key header itself is an ordinary injected header (`headers = { ... }`).

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue};
use sha2::{Digest, Sha256, Sha512};
use toml::Spanned;
use zeroize::Zeroizing;

use super::{Outgoing, RawHmac};
use crate::configkit::{ConfigError, Source};
use crate::features::validate::RequestBody;
use crate::http::error::ProxyError;
use crate::secrets::SecretSource;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Hex,
    Base64,
}

/// How the key is stored in its secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEncoding {
    /// The secret's bytes are the key (the default).
    Raw,
    Base64,
    Hex,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timestamp {
    /// Seconds since the Unix epoch (the default).
    Unix,
    UnixMs,
    /// `2020-12-08T09:08:57.715Z`.
    Rfc3339,
}

/// One piece of the string to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Literal(String),
    Timestamp,
    Method,
    Path,
    /// The query as sent, with the timestamp parameter and without the signature parameter.
    Query,
    /// The path, then `?query` when there is one.
    Target,
    Body,
    BodySha256,
    BodySha512,
    Secret(String),
}

/// Where the signature goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Header { name: HeaderName, prefix: String },
    Query(String),
}

/// A validated `hmac` table.
#[derive(Debug, Clone)]
pub struct HmacScheme {
    pub secret: String,
    pub key_encoding: KeyEncoding,
    pub algorithm: Algorithm,
    pub encoding: Encoding,
    pub message: Vec<Piece>,
    pub place: Place,
    pub timestamp: Timestamp,
    pub timestamp_header: Option<HeaderName>,
    pub timestamp_query: Option<String>,
}

/// Parses the string-to-sign template.
pub fn parse_message(text: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(index) = rest.find(['{', '$', '}']) {
        literal.push_str(&rest[..index]);
        let tail = &rest[index..];
        if let Some(after) = tail.strip_prefix("{{") {
            literal.push('{');
            rest = after;
            continue;
        }
        if let Some(after) = tail.strip_prefix("}}") {
            literal.push('}');
            rest = after;
            continue;
        }
        let (secret, open) = if let Some(after) = tail.strip_prefix("${") {
            (true, after)
        } else if let Some(after) = tail.strip_prefix('{') {
            (false, after)
        } else if let Some(after) = tail.strip_prefix('$') {
            literal.push('$');
            rest = after;
            continue;
        } else {
            return Err("a lone `}`; write `}}` for a literal brace".to_string());
        };
        let Some(end) = open.find('}') else {
            return Err("a `{` without its `}`".to_string());
        };
        let name = &open[..end];
        rest = &open[end + 1..];
        if !literal.is_empty() {
            pieces.push(Piece::Literal(std::mem::take(&mut literal)));
        }
        pieces.push(if secret {
            if !crate::configkit::template::is_name(name) {
                return Err(format!("`${{{name}}}` is not a secret name"));
            }
            Piece::Secret(name.to_string())
        } else {
            match name {
                "timestamp" => Piece::Timestamp,
                "method" => Piece::Method,
                "path" => Piece::Path,
                "query" => Piece::Query,
                "target" => Piece::Target,
                "body" => Piece::Body,
                "body-sha256" => Piece::BodySha256,
                "body-sha512" => Piece::BodySha512,
                other => {
                    return Err(format!(
                        "`{{{other}}}` is not a placeholder; use {{timestamp}}, {{method}}, {{path}}, {{query}}, {{target}}, {{body}}, {{body-sha256}}, {{body-sha512}} or ${{secret}}"
                    ));
                }
            }
        });
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    Ok(pieces)
}

impl HmacScheme {
    pub(super) fn from_raw(
        route: &str,
        raw: &Spanned<RawHmac>,
        secrets: &BTreeMap<String, SecretSource>,
        used: &mut BTreeSet<String>,
        source: &Source<'_>,
    ) -> Result<HmacScheme, ConfigError> {
        let key = |field: &str| format!("routes.{route}.auth.hmac.{field}");
        let inner = raw.get_ref();
        let choice =
            |value: &Option<Spanned<String>>, field: &str, options: &[&str]| -> Result<Option<usize>, ConfigError> {
                let Some(value) = value else { return Ok(None) };
                match options.iter().position(|o| *o == value.get_ref().as_str()) {
                    Some(index) => Ok(Some(index)),
                    None => Err(source
                        .error(
                            value.span(),
                            key(field),
                            format!("`{}` is not one of the choices", value.get_ref()),
                        )
                        .with_help(format!(
                            "use {}",
                            options
                                .iter()
                                .map(|o| format!("\"{o}\""))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))),
                }
            };
        super::declared(
            inner.secret.get_ref(),
            inner.secret.span(),
            &key("secret"),
            secrets,
            source,
        )?;
        used.insert(inner.secret.get_ref().clone());
        let key_encoding = match choice(&inner.secret_encoding, "secret-encoding", &["raw", "base64", "hex"])? {
            None | Some(0) => KeyEncoding::Raw,
            Some(1) => KeyEncoding::Base64,
            _ => KeyEncoding::Hex,
        };
        let algorithm = match choice(&inner.algorithm, "algorithm", &["sha256", "sha512"])? {
            None | Some(0) => Algorithm::Sha256,
            _ => Algorithm::Sha512,
        };
        let encoding = match choice(&inner.encoding, "encoding", &["hex", "base64"])? {
            None | Some(0) => Encoding::Hex,
            _ => Encoding::Base64,
        };
        let timestamp = match choice(&inner.timestamp, "timestamp", &["unix", "unix-ms", "rfc3339"])? {
            None | Some(0) => Timestamp::Unix,
            Some(1) => Timestamp::UnixMs,
            _ => Timestamp::Rfc3339,
        };
        let message = parse_message(inner.message.get_ref())
            .map_err(|m| source.error(inner.message.span(), key("message"), m))?;
        for piece in &message {
            if let Piece::Secret(name) = piece {
                super::declared(name, inner.message.span(), &key("message"), secrets, source)?;
                used.insert(name.clone());
            }
        }
        let header = |value: &Spanned<String>, field: &str| -> Result<HeaderName, ConfigError> {
            let name = HeaderName::from_bytes(value.get_ref().as_bytes()).map_err(|_| {
                source.error(
                    value.span(),
                    key(field),
                    format!("`{}` is not a header name", value.get_ref()),
                )
            })?;
            if matches!(
                name.as_str(),
                "host" | "content-length" | "transfer-encoding" | "connection"
            ) {
                return Err(source.error(value.span(), key(field), format!("`{name}` is managed by the proxy")));
            }
            Ok(name)
        };
        let parameter = |value: &Spanned<String>, field: &str| -> Result<String, ConfigError> {
            let name = value.get_ref();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return Err(source.error(
                    value.span(),
                    key(field),
                    format!("`{name}` is not a plain query parameter name"),
                ));
            }
            Ok(name.clone())
        };
        let place = match (&inner.signature_header, &inner.signature_query) {
            (Some(name), None) => Place::Header {
                name: header(name, "signature-header")?,
                prefix: inner
                    .signature_prefix
                    .as_ref()
                    .map(|p| p.get_ref().clone())
                    .unwrap_or_default(),
            },
            (None, Some(name)) if inner.signature_prefix.is_none() => Place::Query(parameter(name, "signature-query")?),
            (None, Some(name)) => {
                return Err(source.error(
                    name.span(),
                    key("signature-prefix"),
                    "a prefix applies to `signature-header` only",
                ));
            }
            _ => {
                return Err(source
                    .error(
                        raw.span(),
                        key("signature-header"),
                        "give exactly one of `signature-header` or `signature-query`",
                    )
                    .with_help("e.g. `signature-header = \"X-Signature\"` or `signature-query = \"signature\"`"));
            }
        };
        if inner
            .signature_prefix
            .as_ref()
            .is_some_and(|p| p.get_ref().contains(['\r', '\n', '\0']))
        {
            return Err(source.error(raw.span(), key("signature-prefix"), "may not contain line breaks"));
        }
        let timestamp_header = inner
            .timestamp_header
            .as_ref()
            .map(|h| header(h, "timestamp-header"))
            .transpose()?;
        let timestamp_query = inner
            .timestamp_query
            .as_ref()
            .map(|q| parameter(q, "timestamp-query"))
            .transpose()?;
        Ok(HmacScheme {
            secret: inner.secret.get_ref().clone(),
            key_encoding,
            algorithm,
            encoding,
            message,
            place,
            timestamp,
            timestamp_header,
            timestamp_query,
        })
    }

    fn needs_body(&self) -> bool {
        self.message
            .iter()
            .any(|p| matches!(p, Piece::Body | Piece::BodySha256 | Piece::BodySha512))
    }

    /// `hmac-sha256 (hex in X-Signature, unix timestamp)` and the like, for `check`.
    pub fn describe(&self) -> String {
        let algorithm = match self.algorithm {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        };
        let encoding = match self.encoding {
            Encoding::Hex => "hex",
            Encoding::Base64 => "base64",
        };
        let place = match &self.place {
            Place::Header { name, .. } => format!("header {name}"),
            Place::Query(name) => format!("query {name}"),
        };
        format!("hmac-{algorithm} ({encoding} in {place})")
    }

    /// The secrets the scheme reads (names).
    pub fn secret_names(&self) -> Vec<String> {
        let mut names = vec![self.secret.clone()];
        for piece in &self.message {
            if let Piece::Secret(name) = piece
                && !names.contains(name)
            {
                names.push(name.clone());
            }
        }
        names
    }

    /// The header and query names that carry signed values (masked by `route test`).
    pub fn masked_names(&self) -> (Option<&HeaderName>, Option<&str>) {
        match &self.place {
            Place::Header { name, .. } => (Some(name), None),
            Place::Query(name) => (None, Some(name)),
        }
    }

    pub(super) async fn sign(&self, out: &mut Outgoing<'_>) -> Result<(RequestBody, PathAndQuery), ProxyError> {
        let body = std::mem::replace(&mut out.body, RequestBody::Buffered(Bytes::new()));
        let (body, bytes) = if self.needs_body() {
            let bytes = super::read_body(body, out.headers, super::signed_body_limit(out.max_body)).await?;
            (RequestBody::Buffered(bytes.clone()), Some(bytes))
        } else {
            (body, None)
        };
        let stamp = timestamp(self.timestamp, std::time::SystemTime::now());

        // The query as sent: the route's, then the timestamp parameter; the signature last.
        let path = out.path_and_query.path().to_string();
        let mut query = Zeroizing::new(out.path_and_query.query().unwrap_or("").to_string());
        let mut logged = out.logged_query.clone().unwrap_or_else(|| query.to_string());
        let append = |query: &mut String, logged: &mut String, name: &str, value: &str, shown: &str| {
            for text in [&mut *query, &mut *logged] {
                if !text.is_empty() {
                    text.push('&');
                }
            }
            query.push_str(&format!("{name}={value}"));
            logged.push_str(&format!("{name}={shown}"));
        };
        if let Some(name) = &self.timestamp_query {
            let value: String = url::form_urlencoded::byte_serialize(stamp.as_bytes()).collect();
            append(&mut query, &mut logged, name, &value, &value);
        }
        let key = self.key(out)?;
        let hashes = self.body_hashes(bytes.as_ref()).await;
        let mut message = Zeroizing::new(Vec::with_capacity(256 + bytes.as_ref().map_or(0, Bytes::len)));
        for piece in &self.message {
            match piece {
                Piece::Literal(text) => message.extend_from_slice(text.as_bytes()),
                Piece::Timestamp => message.extend_from_slice(stamp.as_bytes()),
                Piece::Method => message.extend_from_slice(out.method.as_str().as_bytes()),
                Piece::Path => message.extend_from_slice(path.as_bytes()),
                Piece::Query => message.extend_from_slice(query.as_bytes()),
                Piece::Target => {
                    message.extend_from_slice(path.as_bytes());
                    if !query.is_empty() {
                        message.push(b'?');
                        message.extend_from_slice(query.as_bytes());
                    }
                }
                Piece::Body => message.extend_from_slice(bytes.as_deref().unwrap_or_default()),
                Piece::BodySha256 => message.extend_from_slice(hashes.0.as_bytes()),
                Piece::BodySha512 => message.extend_from_slice(hashes.1.as_bytes()),
                Piece::Secret(name) => message.extend_from_slice(super::expose(&out.secret(name))),
            }
        }
        // A large body is MACed on the blocking pool, off the async workers.
        let mac = if message.len() > super::HASH_INLINE {
            let algorithm = self.algorithm;
            tokio::task::spawn_blocking(move || mac(algorithm, &key, &message))
                .await
                .expect("a MAC does not panic")
        } else {
            mac(self.algorithm, &key, &message)
        };
        let signature = Zeroizing::new(match self.encoding {
            Encoding::Hex => hex::encode(&*mac),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(&*mac),
        });
        let unusable = || ProxyError::SignerUnusable {
            reason: "the timestamp or signature cannot be sent".into(),
        };
        match &self.place {
            Place::Header { name, prefix } => {
                let value = crate::features::inject::sensitive_header(&format!("{prefix}{}", signature.as_str()))
                    .ok_or_else(unusable)?;
                out.headers.insert(name.clone(), value);
            }
            Place::Query(name) => {
                let value: String = url::form_urlencoded::byte_serialize(signature.as_bytes()).collect();
                append(&mut query, &mut logged, name, &value, "[REDACTED]");
            }
        }
        if let Some(name) = &self.timestamp_header {
            out.headers
                .insert(name.clone(), HeaderValue::from_str(&stamp).map_err(|_| unusable())?);
        }
        if !query.is_empty() || out.logged_query.is_some() {
            *out.logged_query = Some(logged);
        }
        let target = Zeroizing::new(if query.is_empty() {
            path
        } else {
            format!("{path}?{}", query.as_str())
        });
        let path_and_query = PathAndQuery::try_from(target.as_str()).map_err(|_| unusable())?;
        Ok((body, path_and_query))
    }

    /// The hex SHA-256 and SHA-512 of the body, for the placeholders that use them (empty
    /// otherwise); a large body is hashed on the blocking pool.
    async fn body_hashes(&self, bytes: Option<&Bytes>) -> (String, String) {
        let wants = |wanted: &Piece| self.message.contains(wanted);
        let (sha256, sha512) = (wants(&Piece::BodySha256), wants(&Piece::BodySha512));
        if !sha256 && !sha512 {
            return (String::new(), String::new());
        }
        let bytes = bytes.cloned().unwrap_or_default();
        let small = bytes.len() <= super::HASH_INLINE;
        let hash = move || {
            (
                if sha256 {
                    hex::encode(Sha256::digest(&bytes))
                } else {
                    String::new()
                },
                if sha512 {
                    hex::encode(Sha512::digest(&bytes))
                } else {
                    String::new()
                },
            )
        };
        if small {
            hash()
        } else {
            tokio::task::spawn_blocking(hash).await.expect("hashing does not panic")
        }
    }

    /// The signing key from its secret, decoded as configured.
    fn key(&self, out: &Outgoing<'_>) -> Result<Zeroizing<Vec<u8>>, ProxyError> {
        let value = out.secret(&self.secret);
        let text = super::expose(&value);
        let refused = |encoding: &str| ProxyError::SignerUnusable {
            reason: format!("secret `{}` is not valid {encoding} (secret-encoding)", self.secret),
        };
        Ok(Zeroizing::new(match self.key_encoding {
            KeyEncoding::Raw => text.to_vec(),
            KeyEncoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| refused("base64"))?,
            KeyEncoding::Hex => hex::decode(text).map_err(|_| refused("hex"))?,
        }))
    }
}

/// The HMAC of `message` under `key`.
pub fn mac(algorithm: Algorithm, key: &[u8], message: &[u8]) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(match algorithm {
        Algorithm::Sha256 => {
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        Algorithm::Sha512 => {
            let mut mac = <Hmac<Sha512> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
    })
}

/// The timestamp text for `at`.
pub fn timestamp(format: Timestamp, at: std::time::SystemTime) -> String {
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    match format {
        Timestamp::Unix => since.as_secs().to_string(),
        Timestamp::UnixMs => since.as_millis().to_string(),
        Timestamp::Rfc3339 => humantime::format_rfc3339_millis(at).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_templates_parse() {
        assert_eq!(
            parse_message("{timestamp}{method}{target}{body}").unwrap(),
            vec![Piece::Timestamp, Piece::Method, Piece::Target, Piece::Body]
        );
        assert_eq!(
            parse_message("a{{b}}${k}5000{query}$").unwrap(),
            vec![
                Piece::Literal("a{b}".into()),
                Piece::Secret("k".into()),
                Piece::Literal("5000".into()),
                Piece::Query,
                Piece::Literal("$".into())
            ]
        );
        assert!(parse_message("{nope}").unwrap_err().contains("not a placeholder"));
        assert!(parse_message("{body").is_err());
        assert!(parse_message("x}").is_err());
    }

    #[test]
    fn binance_documented_example() {
        // Binance's API documentation, "SIGNED Endpoint Examples for POST /api/v3/order",
        // HMAC-SHA256 of the query string with its example secret key.
        let key = b"NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j";
        let message = b"symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559";
        assert_eq!(
            hex::encode(&*mac(Algorithm::Sha256, key, message)),
            "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
        );
    }

    #[test]
    fn rfc4231_sha512() {
        // RFC 4231 test case 2.
        assert_eq!(
            hex::encode(&*mac(Algorithm::Sha512, b"Jefe", b"what do ya want for nothing?")),
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
        assert_eq!(
            timestamp(
                Timestamp::Rfc3339,
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_607_418_537_715)
            ),
            "2020-12-08T09:08:57.715Z"
        );
    }
}
