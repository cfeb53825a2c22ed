//! The runtime half of WebSocket routes: after the route's phases and the client's handshake
//! (`features::websocket`), [`open`] sends the proxy's own handshake upstream and answers the
//! client `101`, and a task relays the session until it ends. Frames are relayed both ways by two
//! independent pumps until either side closes; close frames go through with their code, pings
//! and pongs pass through.
//!
//! Invariants:
//! - Every message from the upstream is scrubbed whole with the route's redactor
//!   (`features::websocket::scrub`) before it reaches the client (unless the route turned scrubbing off).
//! - Bounded: a message (and a frame) is at most `websocket-max-message`; a session ends after
//!   `websocket-idle-timeout` without a message either way, and at `websocket-max-duration`;
//!   on shutdown both sides get a `1001` close. Closing waits at most [`CLOSE_GRACE`].
//! - One access line per session, written when it ends: status `101`, its duration, payload
//!   bytes and messages both ways, and how it ended (`outcome`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, header};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use secrecy::SecretString;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::features::scrub::Redactor;
use crate::features::websocket::{
    ClientHandshake, Draining, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, WebSocketPolicy, check_upstream_answer, scrub,
};
use crate::http::body::{ProxyBody, empty};
use crate::http::error::ProxyError;
use crate::pipeline::access::AccessRecord;
use crate::pipeline::metrics::Metrics;
use crate::pipeline::plan::RoutePlan;

/// How long a closing side gets to answer the close frame before its connection is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Where the session's access record goes: the request's handler sends it once the `101` is
/// answered, and the session writes the line when it ends.
pub type LineAtEnd = oneshot::Sender<AccessRecord>;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
