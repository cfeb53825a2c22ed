//! The access log: one line per request, written when its response body ends.
//!
//! Lines do not go through `tracing`'s formatter: each is formatted straight into one shared
//! buffer (no per-field allocation) and a dedicated thread writes the buffer to stderr at least
//! every half second, at once when it passes 32 KiB, and on shutdown ([`flush`]), so no line is
//! lost. The `RUST_LOG` filter still decides: the target is `secretproxy::access`, at INFO for
//! answered requests and WARN for refusals and 5xx answers.
//!
//! Human lines read `INFO GET /api/gh/user -> gh (api.github.com) 200 upstream=200 12.3ms in=0B
//! out=1532B client=127.0.0.1`; JSON lines keep the fields of earlier versions (`method`,
//! `route`, `path`, `query`, `status`, `upstream_status`, `error`, `duration_ms`, `bytes_in`,
//! `bytes_out`, `outcome`) plus `upstream` (the host) and `client` (the peer's address, or the one
//! a trusted proxy forwarded, see `features::forwarded`). A record holds no secret: the query has
//! injected values replaced by `[REDACTED]` before it gets here.

use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::http::body::{BoxError, ProxyBody};
use crate::pipeline::metrics::{InFlight, RouteMetrics};

/// Flush when the buffer passes this size, without waiting for the timer.
const FLUSH_AT: usize = 32 * 1024;
/// The longest a line waits in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// The shape of access lines; set once by the logging setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human lines; `color` adds ANSI colours to the level.
    Pretty { color: bool },
    /// Human lines for journald: a `<N>` priority prefix, no timestamp, no colour.
    Journald,
    /// One JSON object per line.
    Json,
}

struct Sink {
    format: Format,
    buffer: Mutex<Vec<u8>>,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Sets the line format and starts the flushing thread; later calls are ignored.
pub fn init(format: Format) {
    let mut fresh = false;
    SINK.get_or_init(|| {
        fresh = true;
        Sink {
            format,
            buffer: Mutex::new(Vec::with_capacity(FLUSH_AT * 2)),
        }
    });
    if fresh {
        let _ = std::thread::Builder::new().name("access-log".into()).spawn(|| {
            loop {
                std::thread::sleep(FLUSH_EVERY);
                flush();
            }
        });
    }
}

/// Writes out every buffered line; called by the timer thread and at shutdown.
pub fn flush() {
    if let Some(sink) = SINK.get() {
        let mut buffer = sink.buffer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        write_out(&mut buffer);
    }
}

fn write_out(buffer: &mut Vec<u8>) {
    if !buffer.is_empty() {
        let _ = std::io::stderr().lock().write_all(buffer);
        buffer.clear();
    }
}

/// What the access line says about one request.
pub struct AccessRecord {
    /// The client: the TCP peer, or the address a trusted proxy forwarded for
    /// (`features::forwarded`).
    pub client: std::net::IpAddr,
    pub method: http::Method,
    /// The request target as received (its path and query are logged).
    pub uri: http::Uri,
    pub route: Option<Arc<str>>,
    /// The query as sent upstream with injected values redacted; the client's query when `None`.
    pub query: Option<String>,
    pub upstream: Option<Arc<str>>,
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub error: Option<&'static str>,
    pub started: Instant,
    pub bytes_in: Arc<AtomicU64>,
    pub metrics: Arc<RouteMetrics>,
    /// Holds the request in the in-flight gauge until the line is written; counts it then.
    pub in_flight: InFlight,
    /// The client key's name (or `client-token`) the request came with; never the key.
    pub client_key: Option<Arc<str>>,
    /// A WebSocket session's messages (client to upstream, upstream to client), set when it ends.
    pub frames: Option<(u64, u64)>,
}

impl AccessRecord {
    /// Writes the line of a WebSocket session when it ends ([`crate::pipeline::websocket`]):
    /// `bytes_in` holds the client's payload bytes, `bytes_out` is the upstream's as sent.
    pub fn finish_session(self, bytes_out: u64, outcome: &'static str) {
        self.emit(bytes_out, outcome);
    }

    fn emit(self, bytes_out: u64, outcome: &'static str) {
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        self.metrics
            .request_finished(self.in_flight.metrics(), &self.method, self.status, bytes_in, bytes_out);
        if let Some(client) = &self.client_key {
            self.in_flight.metrics().client_request(client, self.status);
        }
        let warn = self.error.is_some() || self.status >= 500;
        let enabled = if warn {
            tracing::enabled!(target: "secretproxy::access", tracing::Level::WARN)
        } else {
            tracing::enabled!(target: "secretproxy::access", tracing::Level::INFO)
        };
        if !enabled {
            return;
        }
        let line = Line {
            record: &self,
            bytes_in,
            bytes_out,
            outcome,
            warn,
            format: Format::Pretty { color: false },
        };
        let Some(sink) = SINK.get() else {
            // No daemon logging set up (an embedding program or a test): go through tracing.
            tracing::info!(target: "secretproxy::access", "{line}");
            return;
        };
        let mut buffer = sink.buffer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = Line {
            format: sink.format,
            ..line
        }
        .write(&mut buffer);
        if buffer.len() >= FLUSH_AT {
            write_out(&mut buffer);
        }
    }
}

#[derive(Clone, Copy)]
struct Line<'a> {
    record: &'a AccessRecord,
    bytes_in: u64,
    bytes_out: u64,
    outcome: &'static str,
    warn: bool,
    format: Format,
}

impl Line<'_> {
    fn write(&self, out: &mut Vec<u8>) -> std::io::Result<()> {
        let r = self.record;
        let duration = r.started.elapsed();
        let query = r.query.as_deref().or(r.uri.query()).unwrap_or("");
        let level = if self.warn { "WARN" } else { "INFO" };
        match self.format {
            Format::Json => {
                write!(
                    out,
                    "{{\"timestamp\":\"{}\",\"level\":\"{level}\",\"message\":\"request\",\"method\":",
                    humantime::format_rfc3339_micros(SystemTime::now())
                )?;
                json_str(out, r.method.as_str())?;
                out.extend_from_slice(b",\"route\":");
                json_str(out, r.route.as_deref().unwrap_or(crate::pipeline::metrics::NO_ROUTE))?;
                out.extend_from_slice(b",\"path\":");
                json_str(out, r.uri.path())?;
                out.extend_from_slice(b",\"query\":");
                json_str(out, query)?;
                write!(out, ",\"status\":{}", r.status)?;
                if let Some(status) = r.upstream_status {
                    write!(out, ",\"upstream_status\":{status}")?;
                }
                if let Some(upstream) = &r.upstream {
                    out.extend_from_slice(b",\"upstream\":");
                    json_str(out, upstream)?;
                }
                if let Some(error) = r.error {
                    out.extend_from_slice(b",\"error\":");
                    json_str(out, error)?;
                }
                if let Some(client) = &r.client_key {
                    out.extend_from_slice(b",\"client_key\":");
                    json_str(out, client)?;
                }
                if let Some((frames_in, frames_out)) = r.frames {
                    write!(out, ",\"frames_in\":{frames_in},\"frames_out\":{frames_out}")?;
                }
                let millis = (duration.as_secs_f64() * 1_000_000.0).round() / 1000.0;
                writeln!(
                    out,
                    ",\"client\":\"{}\",\"duration_ms\":{millis},\"bytes_in\":{},\"bytes_out\":{},\"outcome\":\"{}\",\"target\":\"secretproxy::access\"}}",
                    r.client, self.bytes_in, self.bytes_out, self.outcome
                )
            }
            Format::Pretty { .. } | Format::Journald => {
                match self.format {
                    Format::Journald => write!(out, "<{}>", if self.warn { 4 } else { 6 })?,
                    Format::Pretty { color } => {
                        write!(out, "{} ", humantime::format_rfc3339_millis(SystemTime::now()))?;
                        match (color, self.warn) {
                            (true, true) => out.extend_from_slice(b"\x1b[33m WARN\x1b[0m "),
                            (true, false) => out.extend_from_slice(b"\x1b[32m INFO\x1b[0m "),
                            (false, true) => out.extend_from_slice(b" WARN "),
                            (false, false) => out.extend_from_slice(b" INFO "),
                        }
                    }
                    Format::Json => unreachable!(),
                }
                write!(out, "{} {}", r.method, r.uri.path())?;
                if !query.is_empty() {
                    write!(out, "?{query}")?;
                }
                match (&r.route, &r.upstream) {
                    (Some(route), Some(upstream)) => write!(out, " -> {route} ({upstream})")?,
                    (Some(route), None) => write!(out, " -> {route}")?,
                    _ => {}
                }
                write!(out, " {}", r.status)?;
                if let Some(status) = r.upstream_status {
                    write!(out, " upstream={status}")?;
                }
                if let Some(error) = r.error {
                    write!(out, " error={error}")?;
                }
                if let Some(client) = &r.client_key {
                    write!(out, " client_key={client}")?;
                }
                write!(
                    out,
                    " {:.1}ms in={}B out={}B",
                    duration.as_secs_f64() * 1000.0,
                    self.bytes_in,
                    self.bytes_out
                )?;
                if let Some((frames_in, frames_out)) = r.frames {
                    write!(out, " frames_in={frames_in} frames_out={frames_out}")?;
                }
                if self.outcome != "complete" {
                    write!(out, " outcome={}", self.outcome)?;
                }
                write!(out, " client={}", r.client)?;
                out.push(b'\n');
                Ok(())
            }
        }
    }
}

impl std::fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = Vec::new();
        self.write(&mut out).map_err(|_| std::fmt::Error)?;
        f.write_str(String::from_utf8_lossy(&out).trim_end())
    }
}

/// Writes `text` as a JSON string (quoted and escaped) without allocating.
fn json_str(out: &mut Vec<u8>, text: &str) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, text).map_err(std::io::Error::other)
}

/// A response body that writes the access line when it ends.
pub struct Logged {
    inner: ProxyBody,
    record: Option<AccessRecord>,
    bytes_out: u64,
    /// The body's exact length when known up front (a file, a fixed answer): hyper stops
    /// polling once it has sent that many bytes, so reaching it means complete.
    expected: Option<u64>,
}

impl Logged {
    /// `length` is the body's length when the response declares it (`Content-Length`).
    pub fn new(inner: ProxyBody, record: AccessRecord, length: Option<u64>) -> Self {
        Logged {
            expected: inner.size_hint().exact().or(length),
            inner,
            record: Some(record),
            bytes_out: 0,
        }
    }

    /// A body whose request is logged elsewhere: a `101` whose WebSocket session writes the
    /// line when it ends.
    pub fn detached(inner: ProxyBody) -> Self {
        Logged {
            expected: None,
            inner,
            record: None,
            bytes_out: 0,
        }
    }

    fn is_complete(&self) -> bool {
        self.inner.is_end_stream() || self.expected == Some(self.bytes_out)
    }

    fn finish(&mut self, outcome: &'static str) {
        if let Some(record) = self.record.take() {
            record.emit(self.bytes_out, outcome);
        }
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes_out += data.len() as u64;
                }
                // A body that knows it is done (a file, a fixed-size answer) may never be polled
                // again: hyper stops at its end. It is complete now.
                if self.is_complete() {
                    self.finish("complete");
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish("upstream_body_error"),
            Poll::Ready(None) => self.finish("complete"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        // hyper drops an empty body without polling it; that is a complete response.
        let outcome = if self.is_complete() { "complete" } else { "client_gone" };
        self.finish(outcome);
    }
}
