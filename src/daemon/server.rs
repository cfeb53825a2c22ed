//! The accept loops and graceful shutdown.
//!
//! By default each usable core runs a worker: a single-threaded runtime with an accept loop of its
//! own on the shared listening socket, which serves every connection it accepts start to end (and
//! keeps its own idle upstream connections, see [`crate::upstream::set_worker`]).
//!
//! One shutdown future stops accepting; in-flight requests and streams then get up to the drain
//! deadline to finish before the connections are dropped. Connections allow upgrades: a
//! WebSocket session (see [`crate::pipeline::websocket`]) outlives its connection's HTTP part,
//! gets the shutdown signal through the request's extensions, closes both sides with `1001`,
//! and is drained under the same deadline.
//!
//! A connection is served by the HTTP/1.1 fast path ([`fast`]) until a request that is not plain
//! comes, and from that request on by hyper's server.
//!
//! Limits against hostile clients live here (values from `[server]`, read at start): request
//! headers over `max-header-size` get `431` from hyper; a client that does not finish its headers
//! within `header-timeout` is disconnected, and the same timer closes idle keep-alive
//! connections; past `max-connections` open connections a new one gets a fixed `503` and is
//! closed. The bytes hyper reads pass through [`framing::Sniffed`] so ambiguous request framing
//! can be refused (see [`crate::daemon::framing`]); the fast path takes no head that could be.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::daemon::{fast, framing};
use crate::features::guard::Connection;
use crate::http::body::ClientBody;
use crate::pipeline::Proxy;

/// The answer to a connection over `max-connections`.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 79\r\nretry-after: 1\r\nconnection: close\r\n\r\n{\"error\":\"too many open connections; try again\",\"code\":\"too_many_connections\"}\n";
/// Binds the listen address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// What every accept loop shares.
struct Shared {
    proxy: Arc<Proxy>,
    http: http1::Builder,
    permits: Arc<tokio::sync::Semaphore>,
    max_connections: usize,
    limits: crate::configkit::access::ServerLimits,
    /// Simple requests are served by [`fast`] (`SECRETPROXY_HTTP1=hyper` turns it off).
    fast: bool,
    /// Each connection and WebSocket session holds a clone; the drain waits until all are dropped.
    draining: watch::Receiver<()>,
}

/// Serves connections from `listener` until `shutdown` resolves, then drains for up to `drain`.
///
/// With `workers` > 1 the caller's runtime accepts on the listener and so do `workers - 1`
/// threads of their own, each a single-threaded runtime (like nginx's worker processes): a
/// connection is served start to end on the thread that accepted it, with no work stealing and no
/// cross-thread wake-ups. Every loop waits on the same socket, so an idle worker picks up the next
/// connection first; this also works for a socket systemd passed.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
    workers: usize,
) -> std::io::Result<()> {
    // hyper-util's GracefulShutdown cannot watch a connection that allows upgrades: the drain
    // watches the receivers instead.
    let (stop, draining) = watch::channel(());
    let (quit, quitting) = watch::channel(false);
    let limits = proxy.live().current().config.server.limits.clone();
    let mut http = http1::Builder::new();
    // The header-read timer is armed for every request: a deadline list instead of a timer-wheel
    // entry each time (see `http::deadline`).
    http.timer(crate::http::deadline::DeadlineTimer)
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_size)
        .keep_alive(true)
        // Head and body through one flat buffer (see the upstream client's builder).
        .writev(false);
    let shared = Arc::new(Shared {
        proxy,
        http,
        permits: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
        max_connections: limits.max_connections,
        limits,
        fast: fast::enabled(),
        draining,
    });
    let listener = spawn_workers(listener, &shared, &quitting, workers)?;
    tokio::select! {
        () = accept(listener, shared.clone(), quitting) => {}
        () = shutdown => {}
    }
    // Every loop stops accepting; the socket closes when the last one drops its copy.
    let _ = quit.send(true);
    tracing::info!(
        deadline_secs = drain.as_secs(),
        "shutting down: no new connections, draining in-flight requests"
    );
    drop(shared);
    let _ = stop.send(());
    match tokio::time::timeout(drain, stop.closed()).await {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!("drain deadline passed; closing remaining connections"),
    }
    Ok(())
}

/// Starts `workers - 1` threads that accept on copies of `listener`, each on a single-threaded
/// runtime that runs until the process exits (so their connections drain like the others).
/// Returns the listener for the caller's own loop. A worker that cannot start is logged and
/// skipped: the others serve.
fn spawn_workers(
    listener: TcpListener,
    shared: &Arc<Shared>,
    quitting: &watch::Receiver<bool>,
    workers: usize,
) -> std::io::Result<TcpListener> {
    if workers < 2 {
        return Ok(listener);
    }
    let socket = listener.into_std()?;
    for n in 1..workers {
        let copy = match socket.try_clone() {
            Ok(copy) => copy,
            Err(err) => {
                tracing::warn!(error = %err, "cannot start worker {n}: the listening socket cannot be shared");
                break;
            }
        };
        let shared = shared.clone();
        let quitting = quitting.clone();
        let started = std::thread::Builder::new()
            .name(format!("secretproxy-worker-{n}"))
            .spawn(move || {
                crate::upstream::set_worker(n);
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        tracing::warn!(error = %err, "worker {n} cannot start its runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    match TcpListener::from_std(copy) {
                        Ok(listener) => accept(listener, shared, quitting).await,
                        Err(err) => tracing::warn!(error = %err, "worker {n} cannot use the listening socket"),
                    }
                    // Its connections keep being served until the process exits.
                    std::future::pending::<()>().await;
                });
            });
        if let Err(err) = started {
            tracing::warn!(error = %err, "cannot start worker {n}");
        }
    }
    TcpListener::from_std(socket)
}

/// One accept loop: serves each accepted connection on this thread's runtime until `quitting`.
async fn accept(listener: TcpListener, shared: Arc<Shared>, mut quitting: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            // Once told to stop, a loop accepts nothing more, even a connection already waiting:
            // it stays in the backlog and is refused when the last copy of the socket closes.
            biased;
            () = quit_asked(&mut quitting) => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = shared.permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = shared.max_connections, "connection refused: too many open connections");
            tokio::spawn(refuse_busy(stream));
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let watch = shared.draining.clone();
            let local = stream.local_addr().ok();
            let (stream, read) = if shared.fast {
                let facts = fast::Facts {
                    peer,
                    local,
                    header_timeout: shared.limits.header_timeout,
                    max_header_size: shared.limits.max_header_size,
                };
                let proxy = &shared.proxy;
                let handler = |request, connection| proxy.handle(request, connection);
                match fast::serve(stream, handler, facts, watch.clone()).await {
                    fast::Served::Closed => return drop(permit),
                    fast::Served::Declined(stream, read) => (stream, read),
                }
            } else {
                (stream, bytes::Bytes::new())
            };
            with_hyper(stream, read, &shared, peer, local, watch).await;
            drop(permit);
        });
    }
}

/// Serves a connection with hyper's server from a request head on: the whole connection, or its
/// rest after the fast path declined a head (`read`: the bytes it had read from that head on).
async fn with_hyper(
    stream: tokio::net::TcpStream,
    read: bytes::Bytes,
    shared: &Shared,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    mut watch: watch::Receiver<()>,
) {
    let verdicts = framing::Verdicts::default();
    let stream = framing::Sniffed::new(stream, read, verdicts.clone());
    let proxy = shared.proxy.clone();
    let session_drain = crate::features::websocket::Draining(shared.draining.clone());
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
        async move { Ok::<_, Infallible>(proxy.handle(request.map(ClientBody::Hyper), connection).await) }
    });
    let connection = shared
        .http
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
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
}

/// Resolves once the accept loops are told to stop (or the server is gone).
async fn quit_asked(quitting: &mut watch::Receiver<bool>) {
    let _ = quitting.wait_for(|quit| *quit).await;
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
