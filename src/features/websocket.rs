//! WebSocket routes (`websocket = true`): an `Upgrade: websocket` request is relayed to the
//! upstream as a WebSocket session, after the same phases as any request of the route.
//!
//! The handshake request has passed the guard (host, origin, fetch metadata, client token), the
//! route guard, validation, the rate limit, the secrets and injection before it gets here, so a
//! refused client never causes an upstream connection. The proxy then opens its own connection
//! to the upstream (never pooled: the upgrade keeps it; `wss` through the route's TLS settings),
//! sends its own handshake with the route's injected headers and query and a fresh key, checks
//! the `101` (accept key, no extension, a subprotocol the client offered), and only then answers
//! the client `101`. Frames are relayed both ways by two independent pumps until either side
//! closes; close frames go through with their code, pings and pongs pass through.
//!
//! Invariants:
//! - Every message from the upstream (text, binary, ping, pong, close reason) is scrubbed whole
//!   with the route's redactor before it reaches the client (unless the route turned scrubbing
//!   off). Messages are whole: tungstenite reassembles fragments, so a secret split across
//!   frames is still found. `permessage-deflate` is never offered upstream (the client's
//!   `Sec-WebSocket-Extensions` stays behind), so every frame is readable; an upstream that
//!   chooses an extension anyway is refused (`502 websocket_handshake`).
//! - Bounded: a message (and a frame) is at most `websocket-max-message`; a session ends after
//!   `websocket-idle-timeout` without a message either way, and at `websocket-max-duration`;
//!   on shutdown both sides get a `1001` close. Closing waits at most [`CLOSE_GRACE`].
//! - One access line per session, written when it ends: status `101`, its duration, payload
//!   bytes and messages both ways, and how it ended (`outcome`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use secrecy::SecretString;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::configkit::duration::{Zero, duration};
use crate::configkit::raw::RawSize;
use crate::configkit::{ConfigError, Source};
use crate::features::scrub::Redactor;
use crate::http::body::{ProxyBody, empty};
use crate::http::error::ProxyError;
use crate::pipeline::access::AccessRecord;
use crate::pipeline::metrics::Metrics;
use crate::pipeline::plan::RoutePlan;

/// A session ends this long after its last message in either direction, by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// The longest a session lasts, by default.
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(60 * 60);
/// The largest message (and frame) either side may send, by default.
pub const DEFAULT_MAX_MESSAGE: u64 = 16 << 20;
/// How long a closing side gets to answer the close frame before its connection is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(3);

static SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
static SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");
static SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");
static SEC_WEBSOCKET_PROTOCOL: HeaderName = HeaderName::from_static("sec-websocket-protocol");
static SEC_WEBSOCKET_EXTENSIONS: HeaderName = HeaderName::from_static("sec-websocket-extensions");

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
        let timeout = |value: &Option<toml::Spanned<String>>, field: &str, default| match value {
            None => Ok(default),
            Some(text) => duration(
                text,
                &key(field),
                Zero::Refused,
                Some("e.g. \"30s\", \"5m\", \"1h\""),
                source,
            ),
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

    fn config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_message))
    }
}

/// The server's shutdown signal, handed to upgrade requests by the server: a session closes both
/// sides with `1001` when it changes, and the drain waits until every receiver is dropped.
#[derive(Debug, Clone)]
pub struct Draining(pub watch::Receiver<()>);

/// Where the session's access record goes: the request's handler sends it once the `101` is
/// answered, and the session writes the line when it ends.
pub type LineAtEnd = oneshot::Sender<AccessRecord>;

/// A client's valid WebSocket handshake on a WebSocket route.
pub struct ClientHandshake {
    policy: WebSocketPolicy,
    /// `Sec-WebSocket-Accept` for the client's key.
    accept: HeaderValue,
    /// The subprotocols the client offered, in its order.
    protocols: Vec<String>,
    on_upgrade: OnUpgrade,
    draining: Option<Draining>,
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

/// An upgrade the upstream accepted: the client's `101` and the session's access line.
pub struct Opened {
    pub response: Response<ProxyBody>,
    pub upstream_status: u16,
    pub line: LineAtEnd,
}

/// Send, for an upgrade: the upstream handshake on a connection of its own, then the client's
/// `101` and a task that relays the session. `headers` are the upstream headers as injected.
pub async fn open(
    plan: &RoutePlan,
    metrics: &Metrics,
    client: ClientHandshake,
    mut headers: HeaderMap,
    path_and_query: PathAndQuery,
    redactor: Option<Arc<Redactor>>,
    values: &[Arc<SecretString>],
) -> Result<Opened, ProxyError> {
    let route = &plan.route;
    // The client's key, version and extensions belong to its own handshake with the proxy; the
    // upstream gets the proxy's. The subprotocol offer goes through as the client made it.
    for name in [
        &SEC_WEBSOCKET_KEY,
        &SEC_WEBSOCKET_ACCEPT,
        &SEC_WEBSOCKET_VERSION,
        &SEC_WEBSOCKET_EXTENSIONS,
    ] {
        headers.remove(name);
    }
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(SEC_WEBSOCKET_VERSION.clone(), HeaderValue::from_static("13"));
    headers.insert(
        SEC_WEBSOCKET_KEY.clone(),
        HeaderValue::from_str(&key).expect("a base64 key is a header value"),
    );
    // Error text may quote the upstream: scrubbed like a response, whatever the route says.
    let unreachable = |text: String| {
        let text = match redactor.clone().or_else(|| plan.redactor(values)) {
            Some(redactor) => redactor.text(&text),
            None => text,
        };
        ProxyError::Unreachable(text)
    };
    let sent_at = std::time::Instant::now();
    let (io, host) = match plan.upstream.connect_upgradable().await {
        Ok(connected) => connected,
        Err(crate::upstream::SendError::ConnectTimeout(after)) => return Err(ProxyError::Timeout(after)),
        Err(error) => return Err(unreachable(error.chain())),
    };
    headers.entry(header::HOST).or_insert(host);
    tracing::debug!(route = %route.name, path = path_and_query.path(), "opening a WebSocket session upstream");
    let handshake = async {
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, http_body_util::Empty<Bytes>>(TokioIo::new(io))
            .await?;
        // Runs until the upgrade hands the connection over (or it fails).
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(error = %error, "upstream WebSocket handshake connection ended");
            }
        });
        let mut request = Request::new(http_body_util::Empty::new());
        *request.uri_mut() = Uri::from(path_and_query);
        *request.headers_mut() = headers;
        sender.send_request(request).await
    };
    let response = match tokio::time::timeout(route.response_timeout, handshake).await {
        Err(_) => return Err(ProxyError::Timeout(route.response_timeout)),
        Ok(Err(error)) => return Err(unreachable(crate::http::error_chain(&error))),
        Ok(Ok(response)) => response,
    };
    plan.metrics.upstream_answered(metrics, sent_at.elapsed());
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(ProxyError::UpgradeRefused {
            status: response.status(),
        });
    }
    let protocol = check_upstream_answer(response.headers(), &key, &client.protocols)?;
    let upstream = hyper::upgrade::on(response)
        .await
        .map_err(|error| unreachable(crate::http::error_chain(&error)))?;

    let mut answer = Response::new(empty());
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let answer_headers = answer.headers_mut();
    answer_headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    answer_headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    answer_headers.insert(SEC_WEBSOCKET_ACCEPT.clone(), client.accept.clone());
    if let Some(protocol) = protocol {
        answer_headers.insert(SEC_WEBSOCKET_PROTOCOL.clone(), protocol);
    }
    let (line, record) = oneshot::channel();
    let redactor = if route.scrub_response { redactor } else { None };
    tokio::spawn(session(client, upstream, record, redactor));
    Ok(Opened {
        response: answer,
        upstream_status: StatusCode::SWITCHING_PROTOCOLS.as_u16(),
        line,
    })
}

/// The upstream's `101` must finish the handshake the proxy started: `Upgrade: websocket`, the
/// accept key for the proxy's key, no extension (none was offered) and, if a subprotocol is
/// chosen, one the client offered. Returns the chosen subprotocol for the client's `101`.
fn check_upstream_answer(
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

/// Messages and payload bytes that went one way. (Both pumps run in the session's one task;
/// atomics only because the task must be `Send`.)
#[derive(Default)]
struct Counts {
    messages: AtomicU64,
    bytes: AtomicU64,
}

impl Counts {
    fn add(&self, message: &Message) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(message.len() as u64, Ordering::Relaxed);
    }

    fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// When the last message went either way.
struct Activity {
    since: Instant,
    /// Milliseconds from `since` to the last message.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            since: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let elapsed = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(elapsed, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.since + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }
}

/// How one direction's pump stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Its source sent a close frame (passed on), then ended.
    Closed,
    /// Its source ended or failed without a close frame.
    SourceGone,
    /// A message too large for `websocket-max-message` (the session ends with `1009`).
    TooLarge,
    /// Its destination could not take a message.
    SinkGone,
}

/// The relay of one session, from the client's upgrade to the access line.
async fn session(
    client: ClientHandshake,
    upstream: Upgraded,
    record: oneshot::Receiver<AccessRecord>,
    redactor: Option<Arc<Redactor>>,
) {
    let ClientHandshake {
        policy,
        on_upgrade,
        draining,
        ..
    } = client;
    let config = policy.config();
    let mut upstream = WebSocketStream::from_raw_socket(TokioIo::new(upstream), Role::Client, Some(config)).await;
    let record = record.await.ok();
    let up = Counts::default();
    let down = Counts::default();
    let outcome = match on_upgrade.await {
        Ok(client) => {
            let client = WebSocketStream::from_raw_socket(TokioIo::new(client), Role::Server, Some(config)).await;
            relay(client, upstream, &policy, redactor.as_deref(), draining, &up, &down).await
        }
        Err(_) => {
            let frame = close_frame(CloseCode::Away, "the client went away");
            let _ = tokio::time::timeout(CLOSE_GRACE, upstream.close(Some(frame))).await;
            "client_gone"
        }
    };
    tracing::debug!(
        outcome,
        messages_in = up.messages(),
        messages_out = down.messages(),
        "WebSocket session ended"
    );
    if let Some(mut record) = record {
        record.bytes_in.fetch_add(up.bytes(), Ordering::Relaxed);
        record.frames = Some((up.messages(), down.messages()));
        record.finish_session(down.bytes(), outcome);
    }
}

/// Relays both ways until the session ends; returns the access line's outcome.
async fn relay<C, U>(
    client: WebSocketStream<C>,
    upstream: WebSocketStream<U>,
    policy: &WebSocketPolicy,
    redactor: Option<&Redactor>,
    draining: Option<Draining>,
    up_counts: &Counts,
    down_counts: &Counts,
) -> &'static str
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut to_client, mut from_client) = client.split();
    let (mut to_upstream, mut from_upstream) = upstream.split();
    let activity = Activity::new();
    let deadline = Instant::now() + policy.max_duration;
    // Held until the session has closed both sides: the server's drain waits for it.
    let _held = draining.clone();
    let stop = async move {
        match draining {
            Some(Draining(mut receiver)) => {
                let _ = receiver.changed().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    let mut up = Box::pin(pump(&mut from_client, &mut to_upstream, None, &activity, up_counts));
    let mut down = Box::pin(pump(
        &mut from_upstream,
        &mut to_client,
        redactor,
        &activity,
        down_counts,
    ));
    let ended = tokio::select! {
        end = &mut up => Ok((Side::Client, end)),
        end = &mut down => Ok((Side::Upstream, end)),
        () = idle(&activity, policy.idle_timeout) => Err(("idle_timeout", "idle timeout")),
        () = tokio::time::sleep_until(deadline) => Err(("max_duration", "session time limit")),
        () = &mut stop => Err(("shutdown", "the proxy is shutting down")),
    };
    match ended {
        // A clean close from one side: the other answers it through its own pump.
        Ok((Side::Client, End::Closed)) => {
            let _ = tokio::time::timeout(CLOSE_GRACE, down).await;
            "complete"
        }
        Ok((Side::Upstream, End::Closed)) => {
            let _ = tokio::time::timeout(CLOSE_GRACE, up).await;
            "complete"
        }
        Ok((side, end)) => {
            drop(up);
            drop(down);
            // Which side is gone: the pump's source, or its destination.
            let client_gone = (side == Side::Client) == (end != End::SinkGone);
            let (code, outcome) = match end {
                End::TooLarge => (CloseCode::Size, "message_too_large"),
                _ if client_gone => (CloseCode::Away, "client_gone"),
                _ => (CloseCode::Away, "upstream_gone"),
            };
            let reason = if end == End::TooLarge {
                "message too large"
            } else if client_gone {
                "the client went away"
            } else {
                "the upstream went away"
            };
            tokio::join!(
                close_side(&mut to_client, &mut from_client, close_frame(code, reason)),
                close_side(&mut to_upstream, &mut from_upstream, close_frame(code, reason)),
            );
            outcome
        }
        Err((outcome, reason)) => {
            drop(up);
            drop(down);
            tokio::join!(
                close_side(&mut to_client, &mut from_client, close_frame(CloseCode::Away, reason)),
                close_side(
                    &mut to_upstream,
                    &mut from_upstream,
                    close_frame(CloseCode::Away, reason)
                ),
            );
            outcome
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Upstream,
}

/// Passes messages from `from` to `to` (scrubbed when `redactor` is given) until `from` ends.
async fn pump<R, W>(from: &mut R, to: &mut W, redactor: Option<&Redactor>, activity: &Activity, counts: &Counts) -> End
where
    R: Stream<Item = Result<Message, WsError>> + Unpin,
    W: Sink<Message, Error = WsError> + Unpin,
{
    let mut closing = false;
    loop {
        match from.next().await {
            Some(Ok(message)) => {
                activity.touch();
                let close = message.is_close();
                let message = match redactor {
                    Some(redactor) => scrub(redactor, message),
                    None => message,
                };
                counts.add(&message);
                // After a close the other side may already have closed too: nothing to report.
                if to.send(message).await.is_err() && !close && !closing {
                    return End::SinkGone;
                }
                closing |= close;
            }
            None => return if closing { End::Closed } else { End::SourceGone },
            Some(Err(_)) if closing => return End::Closed,
            Some(Err(WsError::Capacity(_))) => return End::TooLarge,
            Some(Err(_)) => return End::SourceGone,
        }
    }
}

/// Resolves once no message went either way for `limit`.
async fn idle(activity: &Activity, limit: Duration) {
    loop {
        let due = activity.last() + limit;
        if Instant::now() >= due {
            return;
        }
        tokio::time::sleep_until(due).await;
    }
}

/// Sends `frame` to one side and reads until it answers (or [`CLOSE_GRACE`] passes).
async fn close_side<W, R>(to: &mut W, from: &mut R, frame: CloseFrame)
where
    W: Sink<Message, Error = WsError> + Unpin,
    R: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if to.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = from.next().await {}
    })
    .await;
}

fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

/// The largest payload of a control frame (RFC 6455 5.5), and of a close reason after its code.
const CONTROL_PAYLOAD: usize = 125;
const CLOSE_REASON: usize = 123;

/// A message from the upstream with every form of the route's secrets replaced, whole.
fn scrub(redactor: &Redactor, message: Message) -> Message {
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

    /// The proxy's relay between two in-memory peers, on the test's (paused) clock.
    async fn relayed(
        policy: WebSocketPolicy,
    ) -> (
        WebSocketStream<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
        tokio::task::JoinHandle<&'static str>,
    ) {
        let (client_side, proxy_client) = tokio::io::duplex(64 * 1024);
        let (proxy_upstream, upstream_side) = tokio::io::duplex(64 * 1024);
        let relay = tokio::spawn(async move {
            let config = Some(policy.config());
            let client = WebSocketStream::from_raw_socket(proxy_client, Role::Server, config).await;
            let upstream = WebSocketStream::from_raw_socket(proxy_upstream, Role::Client, config).await;
            let (up, down) = (Counts::default(), Counts::default());
            relay(client, upstream, &policy, None, None, &up, &down).await
        });
        let client = WebSocketStream::from_raw_socket(client_side, Role::Client, None).await;
        let upstream = WebSocketStream::from_raw_socket(upstream_side, Role::Server, None).await;
        (client, upstream, relay)
    }

    /// Reads until the close frame; returns it and when it came.
    async fn close_of(side: &mut WebSocketStream<tokio::io::DuplexStream>) -> (Option<CloseFrame>, Instant) {
        loop {
            match side.next().await {
                Some(Ok(Message::Close(frame))) => return (frame, Instant::now()),
                Some(Ok(_)) => {}
                other => panic!("no close frame: {other:?}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_session_still_ends_at_its_time_limit() {
        let started = Instant::now();
        let policy = WebSocketPolicy {
            idle_timeout: Duration::from_secs(10),
            max_duration: Duration::from_secs(60),
            max_message: 1 << 20,
        };
        let (mut client, mut upstream, relay) = relayed(policy).await;
        // A message every 5 s keeps the session from idling out.
        let upstream_side = tokio::spawn(async move { close_of(&mut upstream).await });
        let (frame, at) = loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(5)) => {
                    let _ = client.send(Message::text("tick")).await;
                }
                message = client.next() => match message {
                    Some(Ok(Message::Close(frame))) => break (frame, Instant::now()),
                    other => panic!("unexpected {other:?}"),
                },
            }
        };
        let frame = frame.unwrap();
        assert_eq!(
            (frame.code, frame.reason.as_str()),
            (CloseCode::Away, "session time limit")
        );
        assert_eq!(at - started, Duration::from_secs(60));
        let (upstream_frame, _) = upstream_side.await.unwrap();
        assert_eq!(upstream_frame.unwrap().code, CloseCode::Away);
        assert_eq!(relay.await.unwrap(), "max_duration");
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_session_ends_after_its_idle_timeout() {
        let started = Instant::now();
        let policy = WebSocketPolicy {
            idle_timeout: Duration::from_secs(10),
            max_duration: Duration::from_secs(3600),
            max_message: 1 << 20,
        };
        let (mut client, mut upstream, relay) = relayed(policy).await;
        // One message at 4 s: the idle clock starts again from it.
        tokio::time::sleep(Duration::from_secs(4)).await;
        client.send(Message::text("hi")).await.unwrap();
        let upstream_side = tokio::spawn(async move { close_of(&mut upstream).await });
        let (frame, at) = close_of(&mut client).await;
        assert_eq!(frame.unwrap().reason.as_str(), "idle timeout");
        assert_eq!(at - started, Duration::from_secs(14));
        assert_eq!(upstream_side.await.unwrap().0.unwrap().code, CloseCode::Away);
        assert_eq!(relay.await.unwrap(), "idle_timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn an_oversized_message_ends_the_session_with_1009() {
        let policy = WebSocketPolicy {
            idle_timeout: Duration::from_secs(10),
            max_duration: Duration::from_secs(3600),
            max_message: 1024,
        };
        let (mut client, mut upstream, relay) = relayed(policy).await;
        let upstream_side = tokio::spawn(async move { close_of(&mut upstream).await });
        client.send(Message::text("x".repeat(2048))).await.unwrap();
        let (upstream_frame, _) = upstream_side.await.unwrap();
        assert_eq!(upstream_frame.unwrap().code, CloseCode::Size);
        assert_eq!(close_of(&mut client).await.0.unwrap().code, CloseCode::Size);
        assert_eq!(relay.await.unwrap(), "message_too_large");
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
