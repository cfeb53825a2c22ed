//! Inbound webhooks: `[webhooks.NAME]` receives a provider's signed POST, verifies the signature
//! with the signing secret from the secret store, and forwards the request unchanged (method,
//! headers, body, query) to a loopback `target`.
//!
//! This module owns the config (`[webhooks.NAME]` -> [`Webhook`]), the routing by path
//! ([`Hooks::find`]) and the forwarding to the target ([`Hooks::handle`]); the schemes themselves
//! live in `signature.rs`. Nothing reaches the target unless the signature verifies: the body is
//! read whole (up to `max-body`) before anything is sent, and a bad, missing, stale or replayed
//! signature is answered `401` by the proxy itself. With `[state]`, the replay memory is the
//! shared store's (`SET NX PX`), so a delivery replayed to another replica is refused too; when
//! the store cannot answer, the webhook's `on-error` decides.

mod signature;

pub use signature::{Rejection, Scheme};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use secrecy::ExposeSecret;
use serde_json::json;

use signature::{Replays, verify};

use crate::configkit::duration::{Zero, duration};
use crate::configkit::size::size;
use crate::configkit::{ConfigError, Source};
use crate::features::store::{OnError, Store};
use crate::http::body::{BoxError, ClientBody, ProxyBody};
use crate::http::error::{ProxyError, json_response};
use crate::http::headers::strip_hop_by_hop;
use crate::secrets::{SecretCache, SecretSource};
use crate::upstream::{ClientError, Upstream, Upstreams};

/// Default replay tolerance for the timestamped schemes (what Stripe and Slack recommend).
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// Default for `max-body` (GitHub caps payloads at 25 MB; most are far smaller).
pub const DEFAULT_MAX_BODY: u64 = 25 * 1024 * 1024;
/// How long the target may take to answer.
const TARGET_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// What the replay check does when `[state]` cannot answer; `None`: `[state]`'s default.
    pub on_error: Option<OnError>,
}

/// `[webhooks.NAME]`: an inbound, signed endpoint forwarded to a local target.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawWebhook {
    pub path: toml::Spanned<String>,
    pub verify: toml::Spanned<String>,
    /// Name of the `[secrets]` entry holding the signing secret.
    pub secret: toml::Spanned<String>,
    pub target: toml::Spanned<String>,
    pub tolerance: Option<toml::Spanned<String>>,
    /// The signature header for `verify = "hmac-sha256"`.
    pub header: Option<toml::Spanned<String>>,
    pub max_body: Option<toml::Spanned<crate::configkit::raw::RawSize>>,
    /// What the replay check does when `[state]` cannot answer.
    pub on_error: Option<toml::Spanned<String>>,
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
        if path.starts_with(crate::features::admin::PREFIX) {
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
            .filter(|url| matches!(url.scheme(), "http" | "https") && crate::configkit::template::is_loopback_url(url))
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
                duration(text, &key("tolerance"), Zero::Refused, None, source)?
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
            on_error: match &raw.on_error {
                Some(value) => Some(OnError::from_raw(value, &key("on-error"), source)?),
                None => None,
            },
        })
    }
}

/// The webhooks of one config generation: the table by path, the client for targets, and the
/// signatures seen recently.
pub struct Hooks {
    by_path: HashMap<String, Webhook>,
    /// Each webhook's loopback target, by webhook name (the same client as routes use).
    targets: HashMap<String, Arc<Upstream>>,
    replays: Replays,
    /// The shared store: with it, replay memory is shared by every replica.
    store: Option<Arc<Store>>,
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
    pub fn build(webhooks: &[Webhook], store: Option<Arc<Store>>) -> Result<Hooks, ClientError> {
        let mut upstreams = Upstreams::default();
        let mut targets = HashMap::new();
        for hook in webhooks {
            let target = upstreams
                .for_origin(&hook.target, None, Duration::from_secs(5))
                .map_err(|message| ClientError {
                    route: format!("webhook:{}", hook.name),
                    message,
                })?;
            targets.insert(hook.name.clone(), target);
        }
        Ok(Hooks {
            by_path: webhooks.iter().map(|hook| (hook.path.clone(), hook.clone())).collect(),
            targets,
            replays: Replays::default(),
            store,
        })
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
        body: ClientBody,
        bytes_in: &AtomicU64,
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
            Ok(body) => {
                bytes_in.fetch_add(body.len() as u64, Ordering::Relaxed);
                body
            }
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
        );
        let verified = match verified {
            Ok(verified) => self.remember(hook, verified, now).await,
            Err(rejection) => Err(Some(rejection)),
        };
        if let Err(None) = verified {
            let error = ProxyError::StateUnavailable;
            tracing::warn!(webhook = %hook.name, "webhook refused: the shared store cannot check for replays (on-error = \"deny\")");
            return Handled {
                error: Some(error.code()),
                response: error.into_response(None),
                target_status: None,
            };
        }
        if let Err(Some(rejection)) = verified {
            tracing::warn!(webhook = %hook.name, reason = %rejection, "webhook signature refused");
            return refuse(
                StatusCode::UNAUTHORIZED,
                "signature_invalid",
                format!("signature verification failed: {rejection}"),
            );
        }

        let path = hook.target.path();
        let target = match parts.uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.to_string(),
        };
        let Ok(target) = PathAndQuery::try_from(target) else {
            return refuse(StatusCode::BAD_REQUEST, "bad_request", "the query is not valid".into());
        };
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        headers.remove(header::HOST);
        headers.remove(header::EXPECT);
        let mut outbound = Request::new(Full::new(body).map_err(|never| match never {}).boxed());
        *outbound.method_mut() = Method::POST;
        *outbound.headers_mut() = headers;
        let upstream = &self.targets[&hook.name];
        match tokio::time::timeout(TARGET_TIMEOUT, upstream.send(target, outbound)).await {
            Ok(Ok(answer)) => {
                let status = answer.status().as_u16();
                let (mut head, body) = answer.into_parts();
                strip_hop_by_hop(&mut head.headers);
                head.extensions = http::Extensions::new();
                Handled {
                    response: Response::from_parts(head, body.map_err(|e| Box::new(e) as BoxError).boxed_unsync()),
                    error: None,
                    target_status: Some(status),
                }
            }
            Ok(Err(error)) => {
                let error = ProxyError::Unreachable(error.chain());
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
}

impl Hooks {
    /// The replay check of a verified signature: in the shared store when there is one (a
    /// digest of the signature, never the signature, kept until it is stale anyway), else in
    /// this process. `Err(None)`: the store could not answer and the webhook fails closed.
    async fn remember(&self, hook: &Webhook, verified: signature::Verified, now: u64) -> Result<(), Option<Rejection>> {
        let Some(store) = &self.store else {
            return self.replays.remember(verified, now).map_err(Some);
        };
        let Some((signature, expires)) = verified.replay_key() else {
            return Ok(());
        };
        let key = store.key(&format!(
            "wh:{{{}}}:{}",
            hook.name,
            crate::features::store::digest(&[signature])
        ));
        // Fresh until `expires` (and a second, for replicas whose clocks differ a little).
        let ttl = Duration::from_secs(expires.saturating_sub(now) + 1);
        match store.remember(&key, ttl).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Some(Rejection::Replayed)),
            Err(_) => {
                let policy = hook.on_error.unwrap_or(store.config.on_error);
                store.fell_back("webhook_replay", policy);
                match policy {
                    OnError::Local => self.replays.remember(verified, now).map_err(Some),
                    OnError::Allow => Ok(()),
                    OnError::Deny => Err(None),
                }
            }
        }
    }
}

/// The whole body, or `Err(None)` past `limit`, `Err(Some(reason))` when reading failed.
async fn read_limited(mut body: ClientBody, limit: u64) -> Result<Bytes, Option<String>> {
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
