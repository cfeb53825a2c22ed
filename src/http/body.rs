//! Body types of the proxy: the boxed response body, and the request body wrapper that counts
//! its bytes and reports its end.
//!
//! Bodies are never collected on the request path: frames pass through as they arrive, and byte
//! counts are taken on the way (the access log is the pipeline's `access` module).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body type of every answer the proxy gives.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A client's request body: hyper's, one the HTTP/1 fast path reads off the connection and feeds
/// in ([`Fed`]), or none (see `daemon::fast`).
#[derive(Debug)]
pub enum ClientBody {
    Hyper(hyper::body::Incoming),
    Fed(Fed),
    Empty,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ClientBody::Fed(body) => body.poll_frame(cx),
            ClientBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(body) => body.is_end_stream(),
            ClientBody::Fed(body) => body.left == 0,
            ClientBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(body) => body.size_hint(),
            ClientBody::Fed(body) => SizeHint::with_exact(body.left),
            ClientBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// The client closed the connection (or it failed) before its request body ended.
#[derive(Debug, thiserror::Error)]
#[error("the client's connection ended before its request body did")]
pub struct BodyCut;

/// A `Content-Length` body whose chunks the connection's reader sends as they arrive, one at a
/// time (the reader waits until this side has taken the last one).
#[derive(Debug)]
pub struct Fed {
    chunks: tokio::sync::mpsc::Receiver<Result<Bytes, BodyCut>>,
    left: u64,
}

/// Where the connection's reader sends a [`Fed`] body's chunks.
pub type Feeder = tokio::sync::mpsc::Sender<Result<Bytes, BodyCut>>;

impl Fed {
    /// A body of `length` bytes, and where its chunks go in.
    pub fn channel(length: u64) -> (Feeder, Fed) {
        let (feeder, chunks) = tokio::sync::mpsc::channel(1);
        (feeder, Fed { chunks, left: length })
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        match self.chunks.poll_recv(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                self.left = self.left.saturating_sub(chunk.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(cut))) => {
                self.left = 0;
                Poll::Ready(Some(Err(cut.into())))
            }
            // The reader went away before the end: the connection is gone.
            Poll::Ready(None) => {
                self.left = 0;
                Poll::Ready(Some(Err(BodyCut.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// What became of a request body on its way upstream: whether it ended, and whether reading it
/// from the client failed. Shared between the body and the pipeline.
#[derive(Debug, Default)]
pub struct Upload {
    ended: tokio::sync::Notify,
    done: std::sync::atomic::AtomicBool,
    failed: std::sync::atomic::AtomicBool,
}

impl Upload {
    /// Resolves once the body has been read to its end (at once for an empty body).
    pub async fn ended(&self) {
        let notified = self.ended.notified();
        if self.done.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }

    /// True when reading the client's body failed (malformed chunked framing, a reset).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn end(&self) {
        if !self.done.swap(true, Ordering::AcqRel) {
            self.ended.notify_waiters();
        }
    }
}

/// A request body that counts its bytes into `count` as they pass and reports its end and its
/// read errors to an [`Upload`].
pub struct Watched<B> {
    inner: B,
    count: Arc<AtomicU64>,
    upload: Arc<Upload>,
}

impl<B: Body> Watched<B> {
    pub fn new(inner: B, count: Arc<AtomicU64>, upload: Arc<Upload>) -> Self {
        if inner.is_end_stream() {
            upload.end();
        }
        Watched { inner, count, upload }
    }
}

impl<B> Body for Watched<B>
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
        match &polled {
            Poll::Ready(None) => self.upload.end(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.upload.end(),
            Poll::Ready(Some(Err(_))) => {
                self.upload.failed.store(true, Ordering::Release);
                self.upload.end();
            }
            _ => {}
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
