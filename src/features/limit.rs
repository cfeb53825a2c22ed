//! A route's request body limit (`max-body`), enforced twice: a declared `Content-Length` over
//! the limit is refused before the upstream is contacted, and a body without one (chunked) is
//! counted while it streams and cut off with an error as soon as it passes the limit, so the
//! upstream never receives a complete oversized body and the client gets `413`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, header};
use http_body::{Body, Frame, SizeHint};

use crate::configkit::RouteBase;
use crate::http::body::BoxError;
use crate::http::error::ProxyError;

/// Refuses a request whose declared length is over the route's limit.
pub fn check_declared(route: &RouteBase, headers: &HeaderMap) -> Result<(), ProxyError> {
    let Some(limit) = route.max_body else {
        return Ok(());
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(length) if length > limit => Err(ProxyError::BodyTooLarge { limit }),
        _ => Ok(()),
    }
}

/// Whether a streamed body was cut off at its limit; shared between the body and the pipeline.
#[derive(Debug, Clone, Default)]
pub struct Overrun(Arc<AtomicBool>);

impl Overrun {
    pub fn happened(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("request body over the route's limit of {0} bytes")]
struct TooLarge(u64);

/// A request body that fails once more than `limit` bytes have passed.
pub struct Limited<B> {
    inner: B,
    limit: Option<u64>,
    seen: u64,
    overrun: Overrun,
}

impl<B> Limited<B> {
    pub fn new(inner: B, limit: Option<u64>, overrun: Overrun) -> Self {
        Limited {
            inner,
            limit,
            seen: 0,
            overrun,
        }
    }
}

impl<B> Body for Limited<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.overrun.happened() {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let (Some(limit), Some(data)) = (self.limit, frame.data_ref()) {
            self.seen += data.len() as u64;
            if self.seen > limit {
                self.overrun.0.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(Box::new(TooLarge(limit)))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full};

    use super::*;

    #[tokio::test]
    async fn cuts_off_past_the_limit() {
        let overrun = Overrun::default();
        let body = Limited::new(Full::new(Bytes::from(vec![0u8; 11])), Some(10), overrun.clone());
        assert!(body.collect().await.is_err());
        assert!(overrun.happened());
        let overrun = Overrun::default();
        let body = Limited::new(Full::new(Bytes::from(vec![0u8; 10])), Some(10), overrun.clone());
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 10);
        assert!(!overrun.happened());
    }
}
