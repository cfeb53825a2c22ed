//! Body types of the proxy and the access log that is written when a response body ends.
//!
//! Bodies are never collected: frames pass through as they arrive, and byte counts are taken on
//! the way. The access line is written when the response body finishes, fails, or is dropped
//! because the client went away, so its duration and byte count cover the whole stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};

use crate::daemon::metrics::InFlight;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body type of every answer the proxy gives.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Counts the bytes of a body as they pass.
pub struct Counted<B> {
    inner: B,
    count: Arc<AtomicU64>,
}

impl<B> Counted<B> {
    pub fn new(inner: B, count: Arc<AtomicU64>) -> Self {
        Counted { inner, count }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
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

/// What the access line says about one request. Holds no secret: the query has injected values
/// replaced by `[REDACTED]` before it gets here.
#[derive(Debug)]
pub struct AccessRecord {
    pub method: http::Method,
    pub route: Option<String>,
    pub path: String,
    pub query: Option<String>,
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub error: Option<&'static str>,
    pub started: Instant,
    pub bytes_in: Arc<AtomicU64>,
    /// Holds the request in the in-flight gauge until the line is written; counts it then.
    pub in_flight: InFlight,
}

impl AccessRecord {
    fn emit(self, bytes_out: u64, outcome: &'static str) {
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        self.in_flight.metrics().request_finished(
            self.route.as_deref(),
            &self.method,
            self.status,
            bytes_in,
            bytes_out,
        );
        tracing::info!(
            target: "secretproxy::access",
            method = %self.method,
            route = self.route.as_deref().unwrap_or(crate::daemon::metrics::NO_ROUTE),
            path = %self.path,
            query = self.query.as_deref().unwrap_or(""),
            status = self.status,
            upstream_status = self.upstream_status,
            error = self.error,
            duration_ms = (duration_ms * 1000.0).round() / 1000.0,
            bytes_in,
            bytes_out,
            outcome,
            "request"
        );
    }
}

/// A response body that writes the access line when it ends.
pub struct Logged {
    inner: ProxyBody,
    record: Option<AccessRecord>,
    bytes_out: u64,
}

impl Logged {
    pub fn new(inner: ProxyBody, record: AccessRecord) -> Self {
        Logged {
            inner,
            record: Some(record),
            bytes_out: 0,
        }
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
        let outcome = if self.inner.is_end_stream() {
            "complete"
        } else {
            "client_gone"
        };
        self.finish(outcome);
    }
}
