//! The accept loop and graceful shutdown.
//!
//! One shutdown future stops accepting; in-flight requests and streams then get up to the drain
//! deadline to finish before the connections are dropped. Connections allow upgrades: a
//! WebSocket session (see [`crate::pipeline::websocket`]) outlives its connection's HTTP part,
//! gets the shutdown signal through the request's extensions, closes both sides with `1001`,
//! and is drained under the same deadline.
//!
//! Limits against hostile clients live here (values from `[server]`, read at start): request
//! headers over `max-header-size` get `431` from hyper; a client that does not finish its headers
//! within `header-timeout` is disconnected, and the same timer closes idle keep-alive
//! connections; past `max-connections` open connections a new one gets a fixed `503` and is
//! closed. Each connection's bytes pass through [`framing::Sniffed`] so ambiguous request framing
//! can be refused (see [`crate::daemon::framing`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::daemon::framing;
use crate::features::guard::Connection;
use crate::pipeline::Proxy;

/// The answer to a connection over `max-connections`.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 79\r\nretry-after: 1\r\nconnection: close\r\n\r\n{\"error\":\"too many open connections; try again\",\"code\":\"too_many_connections\"}\n";
/// Binds the listen address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves connections from `listener` until `shutdown` resolves, then drains for up to `drain`.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, shutdown: impl Future<Output = ()>, drain: Duration) {
    // Every connection and WebSocket session holds a receiver; the drain waits until all are
    // dropped. (hyper-util's GracefulShutdown cannot watch a connection that allows upgrades.)
    let (stop, draining) = tokio::sync::watch::channel(());
    let limits = proxy.live().current().config.server.limits.clone();
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_size)
        .keep_alive(true)
        // Head and body through one flat buffer (see the upstream client's builder).
        .writev(false);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, limit = limits.max_connections, "connection refused: too many open connections");
                    tokio::spawn(refuse_busy(stream));
                    continue;
                };
                let local = stream.local_addr().ok();
                let verdicts = framing::Verdicts::default();
                let stream = framing::Sniffed::new(stream, verdicts.clone());
                let proxy = proxy.clone();
                let session_drain = crate::features::websocket::Draining(draining.clone());
                let service = service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                    let proxy = proxy.clone();
                    if request.headers().contains_key(hyper::header::UPGRADE) {
                        request.extensions_mut().insert(session_drain.clone());
                    }
                    let connection = Connection {
                        peer,
                        local,
                        ambiguous_framing: verdicts.next_is_ambiguous(),
                    };
                    async move { Ok::<_, Infallible>(proxy.handle(request, connection).await) }
                });
                let connection = http.serve_connection(TokioIo::new(stream), service).with_upgrades();
                let mut watch = draining.clone();
                tokio::spawn(async move {
                    tokio::pin!(connection);
                    let ended = tokio::select! {
                        ended = connection.as_mut() => ended,
                        _ = watch.changed() => {
                            connection.as_mut().graceful_shutdown();
                            connection.await
                        }
                    };
                    if let Err(err) = ended {
                        tracing::debug!(%peer, error = %err, "connection ended with an error");
                    }
                    drop(watch);
                    drop(permit);
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(
        deadline_secs = drain.as_secs(),
        "shutting down: no new connections, draining in-flight requests"
    );
    drop(draining);
    let _ = stop.send(());
    match tokio::time::timeout(drain, stop.closed()).await {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!("drain deadline passed; closing remaining connections"),
    }
}

/// Answers a connection over the cap with a fixed `503` and closes it, within a second.
async fn refuse_busy(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(BUSY).await?;
        stream.shutdown().await
    })
    .await;
}
