//! WebSocket routes (`websocket = true`): the route's policy and the client's handshake, the
//! upstream's answer to the proxy's handshake, and the scrubbing of upstream messages. The
//! pipeline opens the upstream connection and relays the session (`pipeline::websocket`).
//!
//! The handshake request has passed the guard (host, origin, fetch metadata, client token), the
//! route guard, validation, the rate limit, the secrets and injection before it gets here, so a
//! refused client never causes an upstream connection. The proxy then opens its own connection
//! to the upstream (never pooled: the upgrade keeps it; `wss` through the route's TLS settings),
//! sends its own handshake with the route's injected headers and query and a fresh key, checks
//! the `101` (`check_upstream_answer`: accept key, no extension, a subprotocol the client
//! offered), and only then answers the client `101`.
//!
//! Invariants:
//! - Every message from the upstream (text, binary, ping, pong, close reason) is scrubbed whole
//!   with the route's redactor (`scrub`) before it reaches the client (unless the route turned
//!   scrubbing off). Messages are whole: tungstenite reassembles fragments, so a secret split
//!   across frames is still found. `permessage-deflate` is never offered upstream (the client's
//!   `Sec-WebSocket-Extensions` stays behind), so every frame is readable; an upstream that
//!   chooses an extension anyway is refused (`502 websocket_handshake`).
//! - Bounded: [`WebSocketPolicy`] holds the largest message (and frame), the idle timeout and the
//!   session's time limit that the relay enforces.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use hyper::upgrade::OnUpgrade;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use crate::configkit::duration::timeout_or;
use crate::configkit::raw::RawSize;
use crate::configkit::{ConfigError, Source};
use crate::features::scrub::Redactor;
use crate::http::error::ProxyError;

/// A session ends this long after its last message in either direction, by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// The longest a session lasts, by default.
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(60 * 60);
/// The largest message (and frame) either side may send, by default.
pub const DEFAULT_MAX_MESSAGE: u64 = 16 << 20;

pub(crate) static SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
pub(crate) static SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");
pub(crate) static SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");
pub(crate) static SEC_WEBSOCKET_PROTOCOL: HeaderName = HeaderName::from_static("sec-websocket-protocol");
pub(crate) static SEC_WEBSOCKET_EXTENSIONS: HeaderName = HeaderName::from_static("sec-websocket-extensions");

/// The `websocket*` keys of a route's table (`[routes.NAME]`), as written.
#[derive(Clone, Copy)]
pub struct RawWebSocket<'a> {
    pub websocket: &'a Option<toml::Spanned<bool>>,
    pub websocket_idle_timeout: &'a Option<toml::Spanned<String>>,
    pub websocket_max_duration: &'a Option<toml::Spanned<String>>,
    pub websocket_max_message: &'a Option<toml::Spanned<RawSize>>,
}

/// A route's WebSocket bounds (`websocket = true` and the `websocket-*` keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketPolicy {
    /// No message either way for this long ends the session (`1001` to both sides).
    pub idle_timeout: Duration,
    /// A session ends at this age (`1001` to both sides).
    pub max_duration: Duration,
    /// The largest message or frame, in bytes; a larger one ends the session (`1009`).
    pub max_message: usize,
}

impl WebSocketPolicy {
    /// The route's policy, `None` unless it sets `websocket = true`. The `websocket-*` keys are
    /// refused on other routes (they would silently do nothing), and the route must take `GET`.
    pub(crate) fn from_raw(
        raw: RawWebSocket<'_>,
        name: &str,
        methods: &[Method],
        source: &Source<'_>,
    ) -> Result<Option<WebSocketPolicy>, ConfigError> {
        let key = |field: &str| format!("routes.{name}.{field}");
        let enabled = raw.websocket.as_ref().is_some_and(|flag| *flag.get_ref());
        if !enabled {
            let stray = [
                (
                    "websocket-idle-timeout",
                    raw.websocket_idle_timeout.as_ref().map(|v| v.span()),
                ),
                (
                    "websocket-max-duration",
                    raw.websocket_max_duration.as_ref().map(|v| v.span()),
                ),
                (
                    "websocket-max-message",
                    raw.websocket_max_message.as_ref().map(|v| v.span()),
                ),
            ];
            if let Some((field, Some(span))) = stray.into_iter().find(|(_, span)| span.is_some()) {
                return Err(source
                    .error(span, key(field), "applies only to WebSocket routes")
                    .with_help("set `websocket = true` on this route, or remove the key"));
            }
            return Ok(None);
        }
        if !methods.contains(&Method::GET) {
            let span = raw.websocket.as_ref().map(|flag| flag.span()).unwrap_or_default();
            return Err(source
                .error(
                    span,
                    key("websocket"),
                    "a WebSocket handshake is a GET, which this route does not take",
                )
                .with_help("add \"GET\" to the route's methods"));
        }
        let timeout = |value: &Option<toml::Spanned<String>>, field: &str, default| {
            timeout_or(
                value.as_ref(),
                &key(field),
                default,
                "e.g. \"30s\", \"5m\", \"1h\"",
                source,
            )
        };
        let max_message = crate::configkit::size::size(
            raw.websocket_max_message.as_ref(),
            &key("websocket-max-message"),
            DEFAULT_MAX_MESSAGE,
            source,
        )?;
        Ok(Some(WebSocketPolicy {
            idle_timeout: timeout(
                raw.websocket_idle_timeout,
                "websocket-idle-timeout",
                DEFAULT_IDLE_TIMEOUT,
            )?,
            max_duration: timeout(
                raw.websocket_max_duration,
                "websocket-max-duration",
                DEFAULT_MAX_DURATION,
            )?,
            max_message: usize::try_from(max_message).unwrap_or(usize::MAX),
        }))
    }

    /// The message and frame bounds for tungstenite, on both sides of the relay.
    pub(crate) fn config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_message))
    }
}

/// The server's shutdown signal, handed to upgrade requests by the server: a session closes both
/// sides with `1001` when it changes, and the drain waits until every receiver is dropped.
#[derive(Debug, Clone)]
pub struct Draining(pub watch::Receiver<()>);

/// A client's valid WebSocket handshake on a WebSocket route.
pub struct ClientHandshake {
    pub(crate) policy: WebSocketPolicy,
    /// `Sec-WebSocket-Accept` for the client's key.
    pub(crate) accept: HeaderValue,
    /// The subprotocols the client offered, in its order.
    pub(crate) protocols: Vec<String>,
    pub(crate) on_upgrade: OnUpgrade,
    pub(crate) draining: Option<Draining>,
}

/// What the handshake reads of a route (`config::Route` answers it): its policy, `None` unless
/// it sets `websocket = true`.
pub trait WebSocketRoute {
    fn websocket(&self) -> Option<&WebSocketPolicy>;
}

/// The route's handshake, when this request is one on a WebSocket route; `None` for every other
/// request (a route without `websocket = true` drops `Upgrade` as a hop-by-hop header).
pub fn client_handshake(route: &impl WebSocketRoute, parts: &mut Parts) -> Result<Option<ClientHandshake>, ProxyError> {
    let Some(policy) = route.websocket() else {
        return Ok(None);
    };
    if !has_token(&parts.headers, &header::UPGRADE, "websocket") {
        return Ok(None);
    }
    if parts.method != Method::GET || parts.version != http::Version::HTTP_11 {
        return Err(ProxyError::BadRequest(
            "a WebSocket handshake is an HTTP/1.1 GET".into(),
        ));
    }
    if !has_token(&parts.headers, &header::CONNECTION, "upgrade") {
        return Err(ProxyError::BadRequest(
            "a WebSocket handshake needs `Connection: Upgrade`".into(),
        ));
    }
    if parts.headers.get(&SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return Err(ProxyError::BadRequest(
            "only WebSocket version 13 is spoken (`Sec-WebSocket-Version: 13`)".into(),
        ));
    }
    let mut keys = parts.headers.get_all(&SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(key), None)
            if base64::engine::general_purpose::STANDARD
                .decode(key.as_bytes())
                .is_ok_and(|bytes| bytes.len() == 16) =>
        {
            key
        }
        _ => {
            return Err(ProxyError::BadRequest(
                "the `Sec-WebSocket-Key` header is missing or malformed".into(),
            ));
        }
    };
    let accept = derive_accept(key.as_bytes());
    let on_upgrade = parts
        .extensions
        .remove::<OnUpgrade>()
        .ok_or_else(|| ProxyError::BadRequest("this connection cannot be upgraded".into()))?;
    Ok(Some(ClientHandshake {
        policy: policy.clone(),
        accept,
        protocols: tokens(&parts.headers, &SEC_WEBSOCKET_PROTOCOL)
            .map(str::to_string)
            .collect(),
        on_upgrade,
        draining: parts.extensions.remove::<Draining>(),
    }))
}

/// The upstream's `101` must finish the handshake the proxy started: `Upgrade: websocket`, the
/// accept key for the proxy's key, no extension (none was offered) and, if a subprotocol is
/// chosen, one the client offered. Returns the chosen subprotocol for the client's `101`.
pub(crate) fn check_upstream_answer(
    headers: &HeaderMap,
    key: &str,
    offered: &[String],
) -> Result<Option<HeaderValue>, ProxyError> {
    if !has_token(headers, &header::UPGRADE, "websocket") || !has_token(headers, &header::CONNECTION, "upgrade") {
        return Err(ProxyError::WebSocketHandshake("its 101 does not upgrade to websocket"));
    }
    let expected = derive_accept(key.as_bytes());
    let mut accepts = headers.get_all(&SEC_WEBSOCKET_ACCEPT).iter();
    if !matches!((accepts.next(), accepts.next()), (Some(accept), None) if *accept == expected) {
        return Err(ProxyError::WebSocketHandshake(
            "its Sec-WebSocket-Accept does not match the key",
        ));
    }
    if headers.contains_key(&SEC_WEBSOCKET_EXTENSIONS) {
        return Err(ProxyError::WebSocketHandshake(
            "it chose an extension the proxy did not offer",
        ));
    }
    let mut chosen = headers.get_all(&SEC_WEBSOCKET_PROTOCOL).iter();
    match (chosen.next(), chosen.next()) {
        (None, _) => Ok(None),
        (Some(protocol), None)
            if protocol
                .to_str()
                .is_ok_and(|name| offered.iter().any(|offer| offer == name.trim())) =>
        {
            Ok(Some(protocol.clone()))
        }
        _ => Err(ProxyError::WebSocketHandshake(
            "it chose a subprotocol the client did not offer",
        )),
    }
}

fn derive_accept(key: &[u8]) -> HeaderValue {
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key);
    HeaderValue::from_str(&accept).expect("base64 is a header value")
}

/// The comma-separated tokens of every `name` header.
fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// The largest payload of a control frame (RFC 6455 5.5), and of a close reason after its code.
const CONTROL_PAYLOAD: usize = 125;
const CLOSE_REASON: usize = 123;

/// A message from the upstream with every form of the route's secrets replaced, whole.
pub(crate) fn scrub(redactor: &Redactor, message: Message) -> Message {
    match message {
        Message::Text(text) => Message::Text(redactor.text(text.as_str()).into()),
        Message::Binary(data) => Message::Binary(Bytes::from(redactor.bytes(&data))),
        Message::Ping(data) => Message::Ping(control(redactor.bytes(&data))),
        Message::Pong(data) => Message::Pong(control(redactor.bytes(&data))),
        Message::Close(Some(frame)) => {
            let mut reason = redactor.text(frame.reason.as_str());
            if reason.len() > CLOSE_REASON {
                let mut end = CLOSE_REASON;
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                reason.truncate(end);
            }
            Message::Close(Some(CloseFrame {
                code: frame.code,
                reason: reason.into(),
            }))
        }
        other => other,
    }
}

/// A scrubbed control payload, cut to the size a control frame may carry.
fn control(mut bytes: Vec<u8>) -> Bytes {
    bytes.truncate(CONTROL_PAYLOAD);
    Bytes::from(bytes)
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    use super::*;

    #[test]
    fn upstream_messages_are_scrubbed_whole() {
        let redactor = Redactor::from_values([b"sk-live-0123456789".as_slice()]).unwrap();
        let text = scrub(
            &redactor,
            Message::text("key=sk-live-0123456789 and sk%2Dlive-0123456789"),
        );
        assert_eq!(text, Message::text("key=[REDACTED] and [REDACTED]"));
        let binary = scrub(
            &redactor,
            Message::Binary(Bytes::from_static(b"\x00sk-live-0123456789\xff")),
        );
        assert_eq!(binary, Message::Binary(Bytes::from_static(b"\x00[REDACTED]\xff")));
        let close = scrub(
            &redactor,
            Message::Close(Some(CloseFrame {
                code: CloseCode::Library(4000),
                reason: format!("bad key sk-live-0123456789{}", "x".repeat(200)).into(),
            })),
        );
        let Message::Close(Some(frame)) = close else { panic!() };
        assert_eq!(frame.code, CloseCode::Library(4000));
        assert!(frame.reason.as_str().starts_with("bad key [REDACTED]"));
        assert_eq!(frame.reason.len(), CLOSE_REASON);
        let ping = scrub(&redactor, Message::Ping(Bytes::from_static(b"sk-live-0123456789")));
        assert_eq!(ping, Message::Ping(Bytes::from_static(b"[REDACTED]")));
    }

    #[test]
    fn upstream_answer_must_finish_the_handshake() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        // RFC 6455's example key and accept value.
        headers.insert(
            SEC_WEBSOCKET_ACCEPT.clone(),
            HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        );
        let offered = vec!["chat".to_string()];
        assert_eq!(check_upstream_answer(&headers, key, &offered).unwrap(), None);
        headers.insert(SEC_WEBSOCKET_PROTOCOL.clone(), HeaderValue::from_static("chat"));
        assert_eq!(
            check_upstream_answer(&headers, key, &offered).unwrap(),
            Some(HeaderValue::from_static("chat"))
        );
        headers.insert(SEC_WEBSOCKET_PROTOCOL.clone(), HeaderValue::from_static("other"));
        assert!(check_upstream_answer(&headers, key, &offered).is_err());
        headers.remove(&SEC_WEBSOCKET_PROTOCOL);
        headers.insert(
            SEC_WEBSOCKET_EXTENSIONS.clone(),
            HeaderValue::from_static("permessage-deflate"),
        );
        assert!(check_upstream_answer(&headers, key, &offered).is_err());
        headers.remove(&SEC_WEBSOCKET_EXTENSIONS);
        headers.insert(SEC_WEBSOCKET_ACCEPT.clone(), HeaderValue::from_static("AAAA"));
        assert!(check_upstream_answer(&headers, key, &offered).is_err());
    }

    #[test]
    fn keys_are_checked() {
        let route = |extra: &str| {
            crate::config::Config::parse(
                &format!("[routes.ws]\npath = \"/ws\"\nupstream = \"http://127.0.0.1:9/\"\n{extra}"),
                "t",
            )
        };
        let policy = route("websocket = true\nwebsocket-idle-timeout = \"2s\"\n")
            .unwrap()
            .routes[0]
            .websocket
            .clone()
            .unwrap();
        assert_eq!(policy.idle_timeout, Duration::from_secs(2));
        assert_eq!(policy.max_duration, DEFAULT_MAX_DURATION);
        assert!(route("").unwrap().routes[0].websocket.is_none());
        let stray = route("websocket-max-duration = \"1h\"\n").unwrap_err().to_string();
        assert!(
            stray.contains("routes.ws.websocket-max-duration: applies only to WebSocket routes"),
            "{stray}"
        );
        let post = route("websocket = true\nmethods = [\"POST\"]\n")
            .unwrap_err()
            .to_string();
        assert!(post.contains("is a GET"), "{post}");
        assert!(route("websocket = true\nwebsocket-idle-timeout = \"0s\"\n").is_err());
    }
}
