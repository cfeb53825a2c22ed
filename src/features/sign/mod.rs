//! Computed request credentials: AWS SigV4 and HMAC request signing (`auth = { aws-sigv4 = {..} }`,
//! `auth = { hmac = {..} }`) and TLS client certificates to the upstream (`client-cert`,
//! `client-key`).
//!
//! This module owns their config (raw types, validation into [`Signing`] on the route), the
//! signing step of the pipeline ([`RequestSigner::sign`]: after the injected headers and query
//! are final, before send) and what `check` and `route test` show of them ([`Signing::describe`]).
//!
//! Invariants:
//! - A signature covers the request exactly as sent: the signer may rewrite the target into the
//!   form it signs (SigV4's canonical query, S3's path encoding; HMAC's timestamp and signature
//!   parameters) and the pipeline sends that target.
//! - A body is read only when the scheme hashes it, and then only up to [`signed_body_limit`]:
//!   a chunked body is refused (`411 length_required`), a larger one `413`, never buffered
//!   silently. Other bodies (S3's `UNSIGNED-PAYLOAD`) stream untouched, as do all responses.
//! - Keys live in `Zeroizing` buffers and injected header values are marked sensitive; errors
//!   name the secret or the setting, never a value, a signature or a hash of one.

pub mod hmac;
pub mod mtls;
pub mod sigv4;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use http_body_util::BodyExt;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::Digest;
use toml::Spanned;
use zeroize::Zeroizing;

use crate::configkit::template::{ValuePart, ValueTemplate};
use crate::configkit::{ConfigError, Source};
use crate::features::validate::RequestBody;
use crate::http::error::ProxyError;
use crate::secrets::SecretSource;

/// The body a signer reads to hash when the route sets no `max-body`.
pub const DEFAULT_SIGNED_BODY: u64 = 1024 * 1024;
/// The most of a body any signer reads to hash, whatever the route's `max-body`.
pub const MAX_SIGNED_BODY: u64 = 16 * 1024 * 1024;
/// Bodies hashed on the blocking pool rather than on an async worker.
const HASH_INLINE: usize = 64 * 1024;

/// The most of a body a signer reads to hash on a route with this `max-body`.
pub fn signed_body_limit(max_body: Option<u64>) -> u64 {
    max_body.map_or(DEFAULT_SIGNED_BODY, |limit| limit.min(MAX_SIGNED_BODY))
}

/// `auth = { aws-sigv4 = { ... } }` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawSigV4 {
    pub service: Spanned<String>,
    pub region: Spanned<String>,
    /// Templates: may take `${secret}`.
    pub access_key_id: Spanned<String>,
    pub secret_access_key: Spanned<String>,
    pub session_token: Option<Spanned<String>>,
    /// `"unsigned"` (the default for s3) or `"hash"` (the default otherwise).
    pub payload: Option<Spanned<String>>,
}

/// `auth = { hmac = { ... } }` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawHmac {
    /// Name of the secret holding the signing key.
    pub secret: Spanned<String>,
    pub secret_encoding: Option<Spanned<String>>,
    pub algorithm: Option<Spanned<String>>,
    pub encoding: Option<Spanned<String>>,
    /// The string to sign: `{timestamp}`, `{method}`, `{path}`, `{query}`, `{target}`, `{body}`,
    /// `{body-sha256}`, `{body-sha512}` and `${secret}`.
    pub message: Spanned<String>,
    pub signature_header: Option<Spanned<String>>,
    pub signature_prefix: Option<Spanned<String>>,
    pub signature_query: Option<Spanned<String>>,
    pub timestamp: Option<Spanned<String>>,
    pub timestamp_header: Option<Spanned<String>>,
    pub timestamp_query: Option<Spanned<String>>,
}

/// A route's computed credentials.
#[derive(Debug, Clone, Default)]
pub struct Signing {
    pub signer: Option<RequestSigner>,
    /// `client-cert` and `client-key`: the secrets holding the PEM certificate chain and key.
    pub client_cert: Option<ClientCert>,
}

#[derive(Debug, Clone)]
pub struct ClientCert {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone)]
pub enum RequestSigner {
    SigV4(SigV4),
    Hmac(hmac::HmacScheme),
}

/// Whether SigV4 hashes the body or sends `UNSIGNED-PAYLOAD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    Unsigned,
    Hash,
}

/// A validated `aws-sigv4` table.
#[derive(Debug, Clone)]
pub struct SigV4 {
    pub service: String,
    pub region: String,
    pub access_key_id: ValueTemplate,
    pub secret_access_key: ValueTemplate,
    pub session_token: Option<ValueTemplate>,
    pub payload: Payload,
}

/// Parses a template field whose secrets must all be declared.
pub(crate) fn template(
    value: &Spanned<String>,
    key: String,
    secrets: &BTreeMap<String, SecretSource>,
    used: &mut BTreeSet<String>,
    source: &Source<'_>,
) -> Result<ValueTemplate, ConfigError> {
    let template = ValueTemplate::parse(value.get_ref()).map_err(|m| source.error(value.span(), key.clone(), m))?;
    if template
        .parts
        .iter()
        .any(|p| matches!(p, ValuePart::Literal(text) if text.contains(['\r', '\n', '\0'])))
    {
        return Err(source.error(value.span(), key, "may not contain line breaks"));
    }
    for secret in template.secrets() {
        declared(secret, value.span(), &key, secrets, source)?;
        used.insert(secret.to_string());
    }
    Ok(template)
}

/// Checks that `name` is a declared secret.
pub(crate) fn declared(
    name: &str,
    span: std::ops::Range<usize>,
    key: &str,
    secrets: &BTreeMap<String, SecretSource>,
    source: &Source<'_>,
) -> Result<(), ConfigError> {
    if secrets.contains_key(name) {
        return Ok(());
    }
    Err(source
        .error(span, key.to_string(), format!("unknown secret `{name}`"))
        .with_help(format!("declare it in a `[secrets.{name}]` table")))
}

impl SigV4 {
    fn from_raw(
        route: &str,
        raw: &Spanned<RawSigV4>,
        secrets: &BTreeMap<String, SecretSource>,
        used: &mut BTreeSet<String>,
        source: &Source<'_>,
    ) -> Result<SigV4, ConfigError> {
        let key = |field: &str| format!("routes.{route}.auth.aws-sigv4.{field}");
        let inner = raw.get_ref();
        let word = |value: &Spanned<String>, field: &str| -> Result<String, ConfigError> {
            let text = value.get_ref();
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                return Err(source
                    .error(value.span(), key(field), format!("`{text}` is not an AWS {field} name"))
                    .with_help("e.g. `service = \"s3\"`, `region = \"eu-west-1\"`"));
            }
            Ok(text.clone())
        };
        let service = word(&inner.service, "service")?;
        let region = word(&inner.region, "region")?;
        let access_key_id = template(&inner.access_key_id, key("access-key-id"), secrets, used, source)?;
        let secret_access_key = template(
            &inner.secret_access_key,
            key("secret-access-key"),
            secrets,
            used,
            source,
        )?;
        if secret_access_key.secrets().next().is_none() {
            return Err(source
                .error(
                    inner.secret_access_key.span(),
                    key("secret-access-key"),
                    "the secret access key must come from a secret, not the config file",
                )
                .with_help("e.g. `secret-access-key = \"${aws-secret}\"` with a `[secrets.aws-secret]` table"));
        }
        let session_token = match &inner.session_token {
            Some(value) => Some(template(value, key("session-token"), secrets, used, source)?),
            None => None,
        };
        let payload = match inner.payload.as_ref().map(|p| (p, p.get_ref().as_str())) {
            None if service == "s3" => Payload::Unsigned,
            None => Payload::Hash,
            Some((_, "unsigned")) => Payload::Unsigned,
            Some((_, "hash")) => Payload::Hash,
            Some((value, other)) => {
                return Err(source
                    .error(value.span(), key("payload"), format!("`{other}` is not a payload mode"))
                    .with_help("use \"unsigned\" (stream the body; S3) or \"hash\" (read and hash it)"));
            }
        };
        Ok(SigV4 {
            service,
            region,
            access_key_id,
            secret_access_key,
            session_token,
            payload,
        })
    }
}

impl Signing {
    /// The signer of a route's `auth` table (`aws-sigv4` or `hmac`), if it has one; the secrets
    /// it names are added to `used`.
    pub(crate) fn signer_from_auth(
        route: &str,
        sigv4: Option<&Spanned<RawSigV4>>,
        hmac: Option<&Spanned<RawHmac>>,
        secrets: &BTreeMap<String, SecretSource>,
        used: &mut BTreeSet<String>,
        source: &Source<'_>,
    ) -> Result<Option<RequestSigner>, ConfigError> {
        match (sigv4, hmac) {
            (None, None) => Ok(None),
            (Some(raw), None) => Ok(Some(RequestSigner::SigV4(SigV4::from_raw(
                route, raw, secrets, used, source,
            )?))),
            (None, Some(raw)) => Ok(Some(RequestSigner::Hmac(hmac::HmacScheme::from_raw(
                route, raw, secrets, used, source,
            )?))),
            (Some(raw), Some(_)) => Err(source
                .error(
                    raw.span(),
                    format!("routes.{route}.auth"),
                    "give one of `aws-sigv4` or `hmac`",
                )
                .with_help("a request carries one signature")),
        }
    }

    /// One line per signer for `check` and `route show`: its kind and the secrets it reads
    /// (names only).
    pub fn describe(&self) -> Vec<(String, Vec<String>)> {
        let mut lines = Vec::new();
        match &self.signer {
            Some(RequestSigner::SigV4(sigv4)) => {
                let mut names: Vec<String> = sigv4.access_key_id.secrets().map(str::to_string).collect();
                names.extend(sigv4.secret_access_key.secrets().map(str::to_string));
                if let Some(token) = &sigv4.session_token {
                    names.extend(token.secrets().map(str::to_string));
                }
                names.dedup();
                let payload = match sigv4.payload {
                    Payload::Unsigned => "unsigned payload",
                    Payload::Hash => "hashed payload",
                };
                lines.push((
                    format!("aws-sigv4 ({} {}, {payload})", sigv4.service, sigv4.region),
                    names,
                ));
            }
            Some(RequestSigner::Hmac(scheme)) => lines.push((scheme.describe(), scheme.secret_names())),
            None => {}
        }
        if let Some(cert) = &self.client_cert {
            lines.push((
                "mtls (client certificate)".to_string(),
                vec![cert.cert.clone(), cert.key.clone()],
            ));
        }
        lines
    }
}

/// A request on its way upstream, as the signing step sees it.
pub struct Outgoing<'a> {
    pub method: &'a Method,
    pub headers: &'a mut HeaderMap,
    pub path_and_query: PathAndQuery,
    pub body: RequestBody,
    /// The upstream's host (`Host` / `:authority`), as the client sends it.
    pub host: &'a str,
    pub max_body: Option<u64>,
    /// The route's secrets (names) and their current values, in the same order.
    pub names: &'a BTreeSet<String>,
    pub values: &'a [Arc<SecretString>],
    /// The query as logged (injected and signed values redacted).
    pub logged_query: &'a mut Option<String>,
}

impl Outgoing<'_> {
    fn secret(&self, name: &str) -> Arc<SecretString> {
        let index = self
            .names
            .iter()
            .position(|n| n == name)
            .expect("route.secrets lists every used secret");
        self.values[index].clone()
    }

    fn render(&self, template: &ValueTemplate) -> Zeroizing<String> {
        crate::features::inject::render_value(template, |name| self.secret(name))
    }
}

impl RequestSigner {
    /// Signs the request: sets the signature's headers in `out.headers` and returns the body and
    /// target to send (the target as signed; a body that was read to be hashed is buffered).
    pub async fn sign(&self, mut out: Outgoing<'_>) -> Result<(RequestBody, PathAndQuery), ProxyError> {
        match self {
            RequestSigner::SigV4(sigv4) => sigv4.sign(&mut out).await,
            RequestSigner::Hmac(scheme) => scheme.sign(&mut out).await,
        }
    }
}

impl SigV4 {
    async fn sign(&self, out: &mut Outgoing<'_>) -> Result<(RequestBody, PathAndQuery), ProxyError> {
        let style = if self.service == "s3" {
            sigv4::PathStyle::S3
        } else {
            sigv4::PathStyle::Normalized
        };
        let body = std::mem::replace(&mut out.body, RequestBody::Buffered(Bytes::new()));
        let (body, payload_hash) = match self.payload {
            Payload::Unsigned => (body, sigv4::UNSIGNED_PAYLOAD.to_string()),
            Payload::Hash => {
                let bytes = read_body(body, out.headers, signed_body_limit(out.max_body)).await?;
                let hash = hash_hex(bytes.clone(), |b| hex::encode(sha2::Sha256::digest(b))).await;
                (RequestBody::Buffered(bytes), hash)
            }
        };
        // The target as sent is the target as signed: S3's path in AWS's encoding, the query in
        // canonical order and encoding.
        let path = match style {
            sigv4::PathStyle::S3 => sigv4::s3_path(out.path_and_query.path()),
            sigv4::PathStyle::Normalized => out.path_and_query.path().to_string(),
        };
        let query = sigv4::canonical_query(out.path_and_query.query().unwrap_or(""));
        let target = Zeroizing::new(if query.is_empty() {
            path.clone()
        } else {
            format!("{path}?{}", query.as_str())
        });
        let path_and_query = PathAndQuery::try_from(target.as_str())
            .map_err(|_| ProxyError::BadRequest("the path cannot be signed".into()))?;

        let amz_date = sigv4::amz_date(std::time::SystemTime::now());
        let access_key_id = out.render(&self.access_key_id);
        let secret_access_key = out.render(&self.secret_access_key);
        let token = self.session_token.as_ref().map(|t| out.render(t));
        let unusable = |what: &str| ProxyError::SignerUnusable {
            reason: format!("the AWS {what} cannot be sent in a header (control characters)"),
        };
        let headers = &mut *out.headers;
        for name in ["x-amz-date", "x-amz-content-sha256", "x-amz-security-token"] {
            headers.remove(name);
        }
        if !headers.contains_key(header::HOST) {
            let host = HeaderValue::from_str(out.host).map_err(|_| unusable("host"))?;
            headers.insert(header::HOST, host);
        }
        headers.insert(
            HeaderName::from_static("x-amz-date"),
            HeaderValue::from_str(&amz_date).expect("digits and letters"),
        );
        headers.insert(
            HeaderName::from_static("x-amz-content-sha256"),
            HeaderValue::from_str(&payload_hash).expect("hex or a constant"),
        );
        if let Some(token) = &token {
            let value = crate::features::inject::sensitive_header(token).ok_or_else(|| unusable("session token"))?;
            headers.insert(HeaderName::from_static("x-amz-security-token"), value);
        }
        let mut signed: Vec<(String, String)> = Vec::new();
        for (name, value) in headers.iter() {
            let name = name.as_str();
            if name == "host" || name == "content-type" || name == "content-md5" || name.starts_with("x-amz-") {
                let value = std::str::from_utf8(value.as_bytes()).map_err(|_| {
                    ProxyError::BadRequest(format!("the `{name}` header is not text, so it cannot be signed"))
                })?;
                signed.push((name.to_string(), value.to_string()));
            }
        }
        let uri = sigv4::canonical_uri(path_and_query.path(), style);
        let canonical = sigv4::Canonical {
            method: out.method.as_str(),
            uri: &uri,
            query: &query,
            headers: &signed,
            payload_hash: &payload_hash,
        };
        let scope = sigv4::Scope {
            amz_date: &amz_date,
            region: &self.region,
            service: &self.service,
        };
        let (signature, signed_headers) = sigv4::signature(&canonical, &scope, &secret_access_key);
        let authorization = Zeroizing::new(sigv4::authorization(
            &access_key_id,
            &scope,
            &signed_headers,
            &signature,
        ));
        let value =
            crate::features::inject::sensitive_header(&authorization).ok_or_else(|| unusable("access key id"))?;
        headers.insert(header::AUTHORIZATION, value);
        Ok((body, path_and_query))
    }
}

/// `bytes` hashed by `hash`, on the blocking pool when large.
async fn hash_hex(bytes: Bytes, hash: fn(&[u8]) -> String) -> String {
    if bytes.len() <= HASH_INLINE {
        return hash(&bytes);
    }
    tokio::task::spawn_blocking(move || hash(&bytes))
        .await
        .expect("hashing does not panic")
}

/// The whole body, read to be hashed: no body, a buffered one, or one that declares at most
/// `limit` bytes. A chunked body (no declared length) is refused with `411`, a larger one `413`.
pub async fn read_body(body: RequestBody, headers: &HeaderMap, limit: u64) -> Result<Bytes, ProxyError> {
    match body {
        RequestBody::Buffered(bytes) if bytes.len() as u64 > limit => Err(ProxyError::BodyTooLarge { limit }),
        RequestBody::Buffered(bytes) => Ok(bytes),
        RequestBody::Stream(stream) if http_body::Body::is_end_stream(&stream) => Ok(Bytes::new()),
        RequestBody::Stream(stream) => {
            let declared = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            match declared {
                None => Err(ProxyError::LengthRequired { limit }),
                Some(length) if length > limit => Err(ProxyError::BodyTooLarge { limit }),
                Some(length) => Ok(http_body_util::Limited::new(stream, length as usize)
                    .collect()
                    .await
                    .map_err(|_| ProxyError::BadBody)?
                    .to_bytes()),
            }
        }
    }
}

/// The current value of a secret as key bytes.
pub(crate) fn expose(value: &SecretString) -> &[u8] {
    value.expose_secret().as_bytes()
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const SECRETS: &str = "[secrets.id]\nenv = \"I\"\n[secrets.key]\nenv = \"K\"\n[secrets.cert]\nenv = \"C\"\n";

    fn err(route: &str) -> String {
        match Config::parse(
            &format!("{SECRETS}[routes.r]\npath = \"/r\"\nupstream = \"https://x.example/\"\n{route}\n"),
            "t.toml",
        ) {
            Ok(_) => panic!("accepted: {route}"),
            Err(error) => error.to_string(),
        }
    }

    fn ok(route: &str) -> crate::config::Route {
        Config::parse(
            &format!("{SECRETS}[routes.r]\npath = \"/r\"\nupstream = \"https://x.example/\"\n{route}\n"),
            "t.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .routes
        .remove(0)
    }

    #[test]
    fn sigv4_config() {
        let route = ok(
            r#"auth = { aws-sigv4 = { service = "s3", region = "eu-west-1", access-key-id = "${id}", secret-access-key = "${key}" } }"#,
        );
        let Some(super::RequestSigner::SigV4(sigv4)) = &route.signing.signer else {
            panic!("no signer");
        };
        assert_eq!(sigv4.payload, super::Payload::Unsigned);
        assert_eq!(route.secrets.iter().collect::<Vec<_>>(), ["id", "key"]);
        let route = ok(
            r#"auth = { aws-sigv4 = { service = "bedrock", region = "us-east-1", access-key-id = "AKIDLITERAL", secret-access-key = "${key}" } }"#,
        );
        assert!(
            matches!(&route.signing.signer, Some(super::RequestSigner::SigV4(s)) if s.payload == super::Payload::Hash)
        );

        let message = err(
            r#"auth = { aws-sigv4 = { service = "s3", region = "eu-west-1", access-key-id = "${id}", secret-access-key = "plain" } }"#,
        );
        assert!(
            message
                .contains("routes.r.auth.aws-sigv4.secret-access-key: the secret access key must come from a secret"),
            "{message}"
        );
        let message = err(
            r#"auth = { aws-sigv4 = { service = "s3", region = "eu-west-1", access-key-id = "${nope}", secret-access-key = "${key}" } }"#,
        );
        assert!(message.contains("unknown secret `nope`"), "{message}");
        let message = err(
            r#"auth = { aws-sigv4 = { service = "s3", region = "eu-west-1", access-key-id = "${id}", secret-access-key = "${key}", payload = "maybe" } }"#,
        );
        assert!(message.contains("`maybe` is not a payload mode"), "{message}");
        let message = err(
            r#"auth = { aws-sigv4 = { service = "s3", region = "eu west", access-key-id = "${id}", secret-access-key = "${key}" } }"#,
        );
        assert!(message.contains("is not an AWS region name"), "{message}");
        let message = err(
            r#"auth = { bearer = "id", aws-sigv4 = { service = "s3", region = "eu-west-1", access-key-id = "${id}", secret-access-key = "${key}" } }"#,
        );
        assert!(message.contains("give exactly one of"), "{message}");
        let message = err(
            r#"auth = { aws-sigv4 = { service = "s3", region = "eu-west-1", access-key-id = "${id}", secret-access-key = "${key}" }, hmac = { secret = "key", message = "{body}", signature-header = "X-Sig" } }"#,
        );
        assert!(message.contains("give one of `aws-sigv4` or `hmac`"), "{message}");
        let message = err(
            r#"auth = { aws-sigv4 = { service = "s3", region = "eu-west-1", access-key-id = "${id}", secret-access-key = "${key}", extra = 1 } }"#,
        );
        assert!(message.contains("extra"), "{message}");
    }

    #[test]
    fn hmac_config() {
        let route = ok(
            r#"auth = { hmac = { secret = "key", algorithm = "sha512", encoding = "base64", message = "{timestamp}${id}{body-sha256}", signature-header = "X-Sig", timestamp-header = "X-Ts" } }"#,
        );
        assert_eq!(route.secrets.iter().collect::<Vec<_>>(), ["id", "key"]);
        let message = err(r#"auth = { hmac = { secret = "key", message = "{body}" } }"#);
        assert!(
            message.contains("give exactly one of `signature-header` or `signature-query`"),
            "{message}"
        );
        let message = err(r#"auth = { hmac = { secret = "key", message = "{when}", signature-header = "X-Sig" } }"#);
        assert!(message.contains("`{when}` is not a placeholder"), "{message}");
        let message = err(
            r#"auth = { hmac = { secret = "key", algorithm = "md5", message = "{body}", signature-header = "X-Sig" } }"#,
        );
        assert!(
            message.contains("routes.r.auth.hmac.algorithm: `md5` is not one of the choices"),
            "{message}"
        );
        let message = err(r#"auth = { hmac = { secret = "nope", message = "{body}", signature-header = "X-Sig" } }"#);
        assert!(message.contains("unknown secret `nope`"), "{message}");
        let message = err(
            r#"auth = { hmac = { secret = "key", message = "{body}", signature-query = "sig", signature-prefix = "v1=" } }"#,
        );
        assert!(message.contains("signature-header` only"), "{message}");
    }

    #[test]
    fn client_cert_config() {
        let route = ok("client-cert = \"cert\"\nclient-key = \"key\"");
        assert!(route.signing.client_cert.is_some());
        assert_eq!(route.secrets.iter().collect::<Vec<_>>(), ["cert", "key"]);
        let message = err("client-cert = \"cert\"");
        assert!(message.contains("`client-key` is missing"), "{message}");
        let message = err("client-cert = \"cert\"\nclient-key = \"nope\"");
        assert!(message.contains("unknown secret `nope`"), "{message}");
        let message = match Config::parse(
            &format!(
                "{SECRETS}[routes.r]\npath = \"/r\"\nupstream = \"http://127.0.0.1:9/\"\nclient-cert = \"cert\"\nclient-key = \"key\"\n"
            ),
            "t.toml",
        ) {
            Ok(_) => panic!("accepted"),
            Err(error) => error.to_string(),
        };
        assert!(
            message.contains("a client certificate needs an https upstream"),
            "{message}"
        );
    }
}
