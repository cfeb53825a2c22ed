//! Response scrubbing: an upstream that echoes a value the route injected (a debug endpoint, an
//! error page quoting the request, a misconfigured API) has it replaced by `[REDACTED]` in
//! everything that goes back to the client: header names (such a header is dropped), header
//! values, the body, trailers, and error text quoting the upstream.
//!
//! Every form a client could decode back to a secret is found: any mix of raw and percent-encoded
//! characters, JSON escapes, base64/base64url at any alignment (so `Basic` credentials too) and
//! hex. The body is scrubbed as it streams, holding back only a tail that could still become a
//! match (`scan` says how). A compressed answer is decoded first ([`crate::features::decode`]).
//! The automaton's pattern memory is not zeroized on drop; it lives as long as the generation.

mod forms;
mod scan;
mod view;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::configkit::RouteBase as Route;
use crate::http::body::{BoxError, ProxyBody};

pub use scan::REDACTED;
use scan::{Engine, Scanner};

/// Finds every injected value of one route, in every decodable form, in response bytes.
pub struct Redactor {
    exact: Engine,
    /// The same forms, ASCII case ignored: HTTP lower-cases header names.
    caseless: Engine,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redactor([REDACTED])")
    }
}

impl Redactor {
    /// The redactor for a route's injected secrets; `None` when the route injects none.
    pub fn for_route(route: &Route, secret: impl Fn(&str) -> SecretString) -> Option<Redactor> {
        Redactor::for_route_and(route, secret, &[])
    }

    /// Like [`Redactor::for_route`], also finding `extra` values the route injects that are not
    /// named secrets (its OAuth2 token).
    pub fn for_route_and(
        route: &Route,
        secret: impl Fn(&str) -> SecretString,
        extra: &[&SecretString],
    ) -> Option<Redactor> {
        let mut forms: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        for name in &route.secrets {
            forms::add_forms(&mut forms, secret(name).expose_secret().as_bytes());
        }
        for value in extra {
            forms::add_forms(&mut forms, value.expose_secret().as_bytes());
        }
        Redactor::new(&forms)
    }

    /// The redactor for these values (each in all its forms).
    pub fn from_values<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<Redactor> {
        let mut forms = Vec::new();
        for value in values {
            forms::add_forms(&mut forms, value);
        }
        Redactor::new(&forms)
    }

    fn new(forms: &[Zeroizing<Vec<u8>>]) -> Option<Redactor> {
        Some(Redactor {
            exact: Engine::new(forms, false)?,
            caseless: Engine::new(forms, true)?,
        })
    }

    /// `bytes` with every form of every injected value replaced by `[REDACTED]`.
    pub fn bytes(&self, bytes: &[u8]) -> Vec<u8> {
        self.exact.scrub(bytes).0
    }

    /// `text` with every form of every injected value replaced by `[REDACTED]`.
    pub fn text(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.bytes(text.as_bytes())).into_owned()
    }

    /// Drops every header whose name holds a form of a secret (in either case), and scrubs every
    /// header value in place.
    pub fn headers(&self, headers: &mut HeaderMap) {
        // Most headers hold no escape and no raw form: one automaton pass each, no allocation.
        let dirty = |engine: &Engine, bytes: &[u8]| !engine.clean(bytes) && engine.scrub(bytes).1;
        if headers
            .keys()
            .any(|name| dirty(&self.caseless, name.as_str().as_bytes()))
        {
            let named: Vec<http::HeaderName> = headers
                .keys()
                .filter(|name| dirty(&self.caseless, name.as_str().as_bytes()))
                .cloned()
                .collect();
            for name in named {
                headers.remove(name);
            }
        }
        for value in headers.values_mut() {
            if self.exact.clean(value.as_bytes()) {
                continue;
            }
            let (scrubbed, redacted) = self.exact.scrub(value.as_bytes());
            if redacted {
                *value = HeaderValue::from_bytes(&scrubbed).unwrap_or(HeaderValue::from_static("[REDACTED]"));
            }
        }
    }

    /// Wraps a response body so it comes out scrubbed, trailers included.
    pub fn body(self: Arc<Self>, body: ProxyBody) -> ProxyBody {
        Scrubbed {
            inner: body,
            redactor: self,
            scanner: Scanner::default(),
            trailers: None,
            done: false,
        }
        .boxed_unsync()
    }
}

struct Scrubbed {
    inner: ProxyBody,
    redactor: Arc<Redactor>,
    scanner: Scanner,
    /// Trailers that arrived while held bytes still had to go out.
    trailers: Option<HeaderMap>,
    done: bool,
}

impl Body for Scrubbed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let out = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                // The held tail is dropped: it may be the start of a secret.
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => this.scanner.push(&this.redactor.exact, &data),
                    Err(frame) => {
                        if let Ok(mut trailers) = frame.into_trailers() {
                            this.redactor.headers(&mut trailers);
                            this.trailers = Some(trailers);
                        }
                        this.done = true;
                        this.scanner.finish(&this.redactor.exact)
                    }
                },
                Poll::Ready(None) => {
                    this.done = true;
                    this.scanner.finish(&this.redactor.exact)
                }
            };
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests;
