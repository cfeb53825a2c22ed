//! Inbound webhooks: `[webhooks.NAME]` receives a provider's signed POST, verifies the signature
//! with the signing secret from the secret store, and forwards the request unchanged (method,
//! headers, body, query) to a loopback `target`.
//!
//! Nothing reaches the target unless the signature verifies: the body is read whole (up to
//! `max-body`) before anything is sent, and a bad, missing or stale signature is answered `401`
//! by the proxy itself. MACs are compared in constant time (the `hmac` crate's `verify_slice`).
//! For the timestamped schemes (Stripe, Slack, Standard Webhooks) a timestamp outside the
//! tolerance is refused, and a signature already accepted within it is refused as a replay.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::{Bytes, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use secrecy::ExposeSecret;
use serde_json::json;
use sha2::Sha256;

use crate::config::raw::RawWebhook;
use crate::config::size::size;
use crate::config::{ConfigError, Source};
use crate::proxy::body::{BoxError, ProxyBody};
use crate::proxy::error::{ProxyError, json_response};
use crate::proxy::headers::strip_hop_by_hop;
use crate::proxy::upstream::{error_chain, install_crypto_provider};
use crate::secrets::{SecretCache, SecretSource};

/// Default replay tolerance for the timestamped schemes (what Stripe and Slack recommend).
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// Default for `max-body` (GitHub caps payloads at 25 MB; most are far smaller).
pub const DEFAULT_MAX_BODY: u64 = 25 * 1024 * 1024;
/// How long the target may take to answer.
const TARGET_TIMEOUT: Duration = Duration::from_secs(30);
/// The replay memory never holds more signatures than this.
const MAX_REMEMBERED: usize = 100_000;

/// How a provider signs its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// `X-Hub-Signature-256: sha256=<hex HMAC(body)>`.
    GitHub,
    /// `Stripe-Signature: t=<ts>,v1=<hex HMAC("ts.body")>`.
    Stripe,
    /// `X-Slack-Signature: v0=<hex HMAC("v0:ts:body")>` with `X-Slack-Request-Timestamp`.
    Slack,
    /// `webhook-signature: v1,<base64 HMAC("id.ts.body")>` with `webhook-id` and
    /// `webhook-timestamp`; the secret is `whsec_<base64 key>`.
    StandardWebhooks,
    /// `<header>: <hex or base64 HMAC(body)>`, optionally prefixed `sha256=`.
    HmacSha256 { header: HeaderName },
}

impl Scheme {
    fn timestamped(&self) -> bool {
        matches!(self, Scheme::Stripe | Scheme::Slack | Scheme::StandardWebhooks)
    }
}

/// A validated `[webhooks.NAME]`.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub name: String,
    pub path: String,
    pub scheme: Scheme,
    /// Name of the signing secret in `[secrets]`.
    pub secret: String,
    pub target: url::Url,
    pub tolerance: Duration,
    pub max_body: u64,
}

impl Webhook {
    pub(crate) fn from_raw(
        name: &str,
        raw: &RawWebhook,
        secrets: &std::collections::BTreeMap<String, SecretSource>,
        source: &Source<'_>,
    ) -> Result<Webhook, ConfigError> {
        let key = |field: &str| format!("webhooks.{name}.{field}");
        let path = raw.path.get_ref();
        if !path.starts_with('/')
            || path.contains(['{', '}', '?', '#'])
            || path.split('/').any(|s| s == "." || s == "..")
        {
            return Err(source
                .error(raw.path.span(), key("path"), "a webhook path is a fixed absolute path")
                .with_help("e.g. \"/hooks/github\"; parameters, queries and `..` are not allowed"));
        }
        if path.starts_with("/_secretproxy") {
            return Err(source.error(raw.path.span(), key("path"), "paths under `/_secretproxy` are reserved"));
        }
        let scheme = match raw.verify.get_ref().as_str() {
            "github" => Scheme::GitHub,
            "stripe" => Scheme::Stripe,
            "slack" => Scheme::Slack,
            "standard-webhooks" => Scheme::StandardWebhooks,
            "hmac-sha256" => {
                let text = raw.header.as_ref().map_or("X-Signature", |h| h.get_ref().as_str());
                let header = HeaderName::from_bytes(text.as_bytes()).map_err(|_| {
                    let span = raw.header.as_ref().map_or(raw.verify.span(), |h| h.span());
                    source.error(span, key("header"), format!("`{text}` is not a valid header name"))
                })?;
                Scheme::HmacSha256 { header }
            }
            other => {
                return Err(source
                    .error(
                        raw.verify.span(),
                        key("verify"),
                        format!("`{other}` is not a known signature scheme"),
                    )
                    .with_help(
                        "write one of \"github\", \"stripe\", \"slack\", \"standard-webhooks\", \"hmac-sha256\"",
                    ));
            }
        };
        if let (Some(header), false) = (&raw.header, matches!(scheme, Scheme::HmacSha256 { .. })) {
            return Err(source.error(
                header.span(),
                key("header"),
                "only `verify = \"hmac-sha256\"` takes a header",
            ));
        }
        if !secrets.contains_key(raw.secret.get_ref()) {
            return Err(source
                .error(
                    raw.secret.span(),
                    key("secret"),
                    format!("unknown secret `{}`", raw.secret.get_ref()),
                )
                .with_help(format!("declare it in a `[secrets.{}]` table", raw.secret.get_ref())));
        }
        let target = url::Url::parse(raw.target.get_ref())
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && is_loopback(url))
            .ok_or_else(|| {
                source
                    .error(
                        raw.target.span(),
                        key("target"),
                        "the target must be an http(s) URL on this machine",
                    )
                    .with_help("e.g. \"http://127.0.0.1:3000/webhooks/github\" (loopback or localhost only)")
            })?;
        let tolerance = match &raw.tolerance {
            None => DEFAULT_TOLERANCE,
            Some(text) => {
                if !scheme.timestamped() {
                    return Err(source
                        .error(text.span(), key("tolerance"), "this scheme signs no timestamp")
                        .with_help("only stripe, slack and standard-webhooks take a tolerance"));
                }
                humantime::parse_duration(text.get_ref())
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        source.error(
                            text.span(),
                            key("tolerance"),
                            format!("`{}` is not a duration", text.get_ref()),
                        )
                    })?
            }
        };
        Ok(Webhook {
            name: name.to_string(),
            path: path.clone(),
            scheme,
            secret: raw.secret.get_ref().clone(),
            target,
            tolerance,
            max_body: size(raw.max_body.as_ref(), &key("max-body"), DEFAULT_MAX_BODY, source)?,
        })
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Why a signature was refused. Fixed text only: never a secret, never the expected MAC.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    Missing(&'static str),
    Malformed(&'static str),
    Mismatch,
    Stale,
    Replayed,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::Missing(what) => write!(f, "missing {what}"),
            Rejection::Malformed(what) => write!(f, "malformed {what}"),
            Rejection::Mismatch => f.write_str("the signature does not match"),
            Rejection::Stale => f.write_str("the timestamp is outside the allowed tolerance"),
            Rejection::Replayed => f.write_str("this signature was already used"),
        }
    }
}

/// A signature that verified, and (for timestamped schemes) when it stops being fresh.
struct Verified {
    replay_key: Option<(Vec<u8>, u64)>,
}

fn mac(key: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, Rejection> {
    headers
        .get(name)
        .ok_or(Rejection::Missing(name))?
        .to_str()
        .map_err(|_| Rejection::Malformed(name))
}

fn fresh(timestamp: &str, tolerance: Duration, now: u64, what: &'static str) -> Result<u64, Rejection> {
    let ts: u64 = timestamp.trim().parse().map_err(|_| Rejection::Malformed(what))?;
    if now.abs_diff(ts) > tolerance.as_secs() {
        return Err(Rejection::Stale);
    }
    Ok(ts)
}

/// Checks one request's signature. `now` is Unix seconds.
fn verify(
    scheme: &Scheme,
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
    tolerance: Duration,
    now: u64,
) -> Result<Verified, Rejection> {
    let expires = |ts: u64| ts + tolerance.as_secs();
    match scheme {
        Scheme::GitHub => {
            let value = header(headers, "x-hub-signature-256")?;
            let hex_mac = value
                .strip_prefix("sha256=")
                .ok_or(Rejection::Malformed("x-hub-signature-256"))?;
            let given = hex::decode(hex_mac).map_err(|_| Rejection::Malformed("x-hub-signature-256"))?;
            mac(secret, &[body])
                .verify_slice(&given)
                .map_err(|_| Rejection::Mismatch)?;
            Ok(Verified { replay_key: None })
        }
        Scheme::Stripe => {
            let value = header(headers, "stripe-signature")?;
            let mut timestamp = None;
            let mut signatures = Vec::new();
            for item in value.split(',') {
                match item.trim().split_once('=') {
                    Some(("t", ts)) => timestamp = Some(ts),
                    Some(("v1", sig)) => signatures.push(sig),
                    _ => {}
                }
            }
            let ts_text = timestamp.ok_or(Rejection::Malformed("stripe-signature"))?;
            if signatures.is_empty() {
                return Err(Rejection::Malformed("stripe-signature"));
            }
            let ts = fresh(ts_text, tolerance, now, "stripe-signature")?;
            let expected = mac(secret, &[ts_text.as_bytes(), b".", body]);
            let matched = signatures.iter().find_map(|sig| {
                let given = hex::decode(sig).ok()?;
                expected.clone().verify_slice(&given).ok().map(|()| given)
            });
            let given = matched.ok_or(Rejection::Mismatch)?;
            Ok(Verified {
                replay_key: Some((given, expires(ts))),
            })
        }
        Scheme::Slack => {
            let ts_text = header(headers, "x-slack-request-timestamp")?;
            let value = header(headers, "x-slack-signature")?;
            let ts = fresh(ts_text, tolerance, now, "x-slack-request-timestamp")?;
            let hex_mac = value
                .strip_prefix("v0=")
                .ok_or(Rejection::Malformed("x-slack-signature"))?;
            let given = hex::decode(hex_mac).map_err(|_| Rejection::Malformed("x-slack-signature"))?;
            mac(secret, &[b"v0:", ts_text.as_bytes(), b":", body])
                .verify_slice(&given)
                .map_err(|_| Rejection::Mismatch)?;
            Ok(Verified {
                replay_key: Some((given, expires(ts))),
            })
        }
        Scheme::StandardWebhooks => {
            let id = header(headers, "webhook-id")?;
            let ts_text = header(headers, "webhook-timestamp")?;
            let value = header(headers, "webhook-signature")?;
            let ts = fresh(ts_text, tolerance, now, "webhook-timestamp")?;
            let key = match secret.strip_prefix(b"whsec_") {
                Some(encoded) => base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|_| Rejection::Malformed("signing secret (expected whsec_<base64>)"))?,
                None => secret.to_vec(),
            };
            let expected = mac(&key, &[id.as_bytes(), b".", ts_text.as_bytes(), b".", body]);
            let matched = value.split(' ').find_map(|candidate| {
                let encoded = candidate.strip_prefix("v1,")?;
                let given = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
                expected.clone().verify_slice(&given).ok().map(|()| given)
            });
            let given = matched.ok_or(Rejection::Mismatch)?;
            Ok(Verified {
                replay_key: Some((given, expires(ts))),
            })
        }
        Scheme::HmacSha256 { header: name } => {
            let value = headers
                .get(name)
                .ok_or(Rejection::Missing("signature header"))?
                .to_str()
                .map_err(|_| Rejection::Malformed("signature header"))?;
            let text = value.trim();
            let text = text.strip_prefix("sha256=").unwrap_or(text);
            let given = hex::decode(text)
                .ok()
                .filter(|bytes| bytes.len() == 32)
                .or_else(|| base64::engine::general_purpose::STANDARD.decode(text).ok())
                .ok_or(Rejection::Malformed("signature header"))?;
            mac(secret, &[body])
                .verify_slice(&given)
                .map_err(|_| Rejection::Mismatch)?;
            Ok(Verified { replay_key: None })
        }
    }
}

/// The webhooks of one config generation: the table by path, the client for targets, and the
/// signatures seen recently.
pub struct Hooks {
    by_path: HashMap<String, Webhook>,
    client: reqwest::Client,
    seen: Mutex<HashMap<Vec<u8>, u64>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks").field("paths", &self.by_path.keys()).finish()
    }
}

/// What handling a webhook produced, for the access line.
pub struct Handled {
    pub response: Response<ProxyBody>,
    pub error: Option<&'static str>,
    pub target_status: Option<u16>,
}

impl Hooks {
    pub fn build(webhooks: &[Webhook]) -> Hooks {
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("a client without custom TLS settings builds");
        Hooks {
            by_path: webhooks.iter().map(|hook| (hook.path.clone(), hook.clone())).collect(),
            client,
            seen: Mutex::new(HashMap::new()),
        }
    }

    pub fn find(&self, path: &str) -> Option<&Webhook> {
        if self.by_path.is_empty() {
            return None;
        }
        self.by_path.get(path)
    }

    /// Verifies the request and forwards it to the target, or refuses it.
    pub async fn handle(
        &self,
        hook: &Webhook,
        secrets: &SecretCache,
        parts: http::request::Parts,
        body: Incoming,
    ) -> Handled {
        let refuse = |status: StatusCode, code: &'static str, message: String| Handled {
            response: json_response(status, &json!({ "error": message, "code": code, "webhook": hook.name })),
            error: Some(code),
            target_status: None,
        };
        if parts.method != Method::POST {
            let mut handled = refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "webhooks take POST only".into(),
            );
            handled
                .response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return handled;
        }
        let body = match read_limited(body, hook.max_body).await {
            Ok(body) => body,
            Err(None) => {
                return refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("the body is larger than this webhook accepts ({} bytes)", hook.max_body),
                );
            }
            Err(Some(reason)) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("the body could not be read: {reason}"),
                );
            }
        };
        let secret = match secrets.get(&hook.secret).await {
            Ok(secret) => secret,
            Err(error) => {
                let source = secrets.source(&hook.secret).expect("validated at load");
                let error = ProxyError::SecretUnavailable {
                    secret: hook.secret.clone(),
                    unreachable: error.is_unreachable(),
                    reason: error.to_string(),
                    hint: source.how_to_set(&hook.secret),
                };
                return Handled {
                    error: Some(error.code()),
                    response: error.into_response(None),
                    target_status: None,
                };
            }
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let verified = verify(
            &hook.scheme,
            &parts.headers,
            &body,
            secret.expose_secret().as_bytes(),
            hook.tolerance,
            now,
        )
        .and_then(|verified| self.remember(verified, now));
        if let Err(rejection) = verified {
            tracing::warn!(webhook = %hook.name, reason = %rejection, "webhook signature refused");
            return refuse(
                StatusCode::UNAUTHORIZED,
                "signature_invalid",
                format!("signature verification failed: {rejection}"),
            );
        }

        let mut target = hook.target.clone();
        if let Some(query) = parts.uri.query() {
            target.set_query(Some(query));
        }
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        headers.remove(header::HOST);
        headers.remove(header::EXPECT);
        let mut outbound = reqwest::Request::new(Method::POST, target);
        *outbound.headers_mut() = headers;
        *outbound.body_mut() = Some(reqwest::Body::from(body));
        match tokio::time::timeout(TARGET_TIMEOUT, self.client.execute(outbound)).await {
            Ok(Ok(answer)) => {
                let status = answer.status().as_u16();
                let mut response: Response<reqwest::Body> = answer.into();
                strip_hop_by_hop(response.headers_mut());
                Handled {
                    response: response.map(|b| b.map_err(|e| Box::new(e.without_url()) as BoxError).boxed_unsync()),
                    error: None,
                    target_status: Some(status),
                }
            }
            Ok(Err(error)) => {
                let error = ProxyError::Unreachable(error_chain(&error.without_url()));
                tracing::warn!(webhook = %hook.name, error = %error, "webhook target failed");
                Handled {
                    error: Some(error.code()),
                    response: error.into_response(None),
                    target_status: None,
                }
            }
            Err(_) => {
                let error = ProxyError::Timeout(TARGET_TIMEOUT);
                Handled {
                    error: Some(error.code()),
                    response: error.into_response(None),
                    target_status: None,
                }
            }
        }
    }

    /// Refuses a signature seen before within its tolerance; remembers new ones.
    fn remember(&self, verified: Verified, now: u64) -> Result<(), Rejection> {
        let Some((signature, expires)) = verified.replay_key else {
            return Ok(());
        };
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if seen.get(&signature).is_some_and(|until| *until >= now) {
            return Err(Rejection::Replayed);
        }
        if seen.len() >= MAX_REMEMBERED {
            seen.retain(|_, until| *until >= now);
        }
        seen.insert(signature, expires);
        Ok(())
    }
}

/// The whole body, or `Err(None)` past `limit`, `Err(Some(reason))` when reading failed.
async fn read_limited(mut body: Incoming, limit: u64) -> Result<Bytes, Option<String>> {
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Some(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            buffer.extend_from_slice(&data);
            if buffer.len() as u64 > limit {
                return Err(None);
            }
        }
    }
    Ok(buffer.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_mac(key: &[u8], parts: &[&[u8]]) -> String {
        hex::encode(mac(key, parts).finalize().into_bytes())
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap()))
            .collect()
    }

    const TOL: Duration = DEFAULT_TOLERANCE;

    #[test]
    fn github() {
        let sig = format!("sha256={}", hex_mac(b"s", &[b"{}"]));
        let ok = headers(&[("x-hub-signature-256", &sig)]);
        assert!(verify(&Scheme::GitHub, &ok, b"{}", b"s", TOL, 0).is_ok());
        assert_eq!(
            verify(&Scheme::GitHub, &ok, b"{ }", b"s", TOL, 0).err(),
            Some(Rejection::Mismatch)
        );
        assert!(matches!(
            verify(&Scheme::GitHub, &HeaderMap::new(), b"{}", b"s", TOL, 0),
            Err(Rejection::Missing(_))
        ));
    }

    #[test]
    fn slack_and_standard_webhooks() {
        let sig = format!("v0={}", hex_mac(b"s", &[b"v0:1000:", b"body"]));
        let ok = headers(&[("x-slack-request-timestamp", "1000"), ("x-slack-signature", &sig)]);
        assert!(verify(&Scheme::Slack, &ok, b"body", b"s", TOL, 1100).is_ok());
        assert_eq!(
            verify(&Scheme::Slack, &ok, b"body", b"s", TOL, 2000).err(),
            Some(Rejection::Stale)
        );

        let key = b"0123456789abcdef";
        let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key));
        let raw = mac(key, &[b"msg_1.1000.body"]).finalize().into_bytes();
        let sig = format!("v1,bogus v1,{}", base64::engine::general_purpose::STANDARD.encode(raw));
        let ok = headers(&[
            ("webhook-id", "msg_1"),
            ("webhook-timestamp", "1000"),
            ("webhook-signature", &sig),
        ]);
        assert!(verify(&Scheme::StandardWebhooks, &ok, b"body", secret.as_bytes(), TOL, 1000).is_ok());
        assert_eq!(
            verify(&Scheme::StandardWebhooks, &ok, b"body!", secret.as_bytes(), TOL, 1000).err(),
            Some(Rejection::Mismatch)
        );
    }

    #[test]
    fn generic_hmac_accepts_hex_and_base64() {
        let scheme = Scheme::HmacSha256 {
            header: HeaderName::from_static("x-signature"),
        };
        let raw = mac(b"k", &[b"b"]).finalize().into_bytes();
        for value in [
            hex::encode(raw),
            format!("sha256={}", hex::encode(raw)),
            base64::engine::general_purpose::STANDARD.encode(raw),
        ] {
            let map = headers(&[("x-signature", &value)]);
            assert!(verify(&scheme, &map, b"b", b"k", TOL, 0).is_ok(), "{value}");
        }
    }
}
