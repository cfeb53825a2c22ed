//! The HTTP/1.1 fast path: the simplest requests, read and answered without hyper's server.
//!
//! Most requests a local proxy sees are `GET`s and small `POST`s on keep-alive connections. For
//! those, hyper's server dispatch was the largest part of the proxy's own CPU per request. This
//! module serves them directly: it parses each head with `httparse` (as hyper does) in a reused
//! buffer, runs the request through [`crate::pipeline::Proxy::handle`], and writes the response
//! head and body itself. hyper stays the server for everything else, and stays the reference
//! for what this module accepts:
//!
//! - A head is taken only when it is plainly valid and simple: `HTTP/1.1`; `GET`, `POST`, `PUT`,
//!   `PATCH`, `DELETE` or `OPTIONS`; an origin-form target; no body or one `Content-Length` of
//!   digits (no `Transfer-Encoding`); no `Expect` or `Upgrade`; at most one `Connection` header,
//!   saying `keep-alive` or `close`; within `max-header-size` and hyper's 100 headers.
//! - Anything else — a chunked body, malformed or ambiguous framing, an oversized head, a
//!   WebSocket upgrade, `HEAD`, `HTTP/1.0` — is **declined**: the connection, with the bytes read
//!   so far (from the start of that head), goes to hyper's server for the rest of its life,
//!   exactly as if hyper had read it from the start (see [`crate::daemon::framing::Sniffed`]). So hyper keeps every
//!   framing defence for what is not plain, and answers every malformed request.
//! - A taken head becomes the same request hyper would have built (method, URI, version,
//!   headers in order, values sharing the read buffer) with the body length hyper would read;
//!   the unit tests check that against hyper on generated heads, and answers written here
//!   against hyper's, byte for byte.
//! - A body streams to the handler as it arrives, one chunk at a time (the next is read once
//!   the handler took the last), also while the answer is written. A body cut short by the
//!   client is an error to the handler; a body the handler leaves unread closes the connection
//!   after the answer, so its bytes are never read as a next request.
//! - Responses follow hyper's HTTP/1.1 encoding: the same status line, header order and lower
//!   case, `content-length` from the body's exact size or the handler's header, otherwise
//!   `transfer-encoding: chunked`; no body for `204` and `304`; a cached `date`; `connection:
//!   close` when the client asked to close or the server is draining. A body that fails, or
//!   yields more or less than its declared length, ends the connection, as with hyper.
//! - Timeouts and closing as with hyper: `header-timeout` runs from the moment the connection
//!   waits for a head (so it also closes idle keep-alive connections); a client that closes its
//!   side while its request is in flight cancels the request; a draining server closes idle
//!   connections and answers in-flight requests with `connection: close`.
//!
//! `SECRETPROXY_HTTP1=hyper` turns the fast path off (every connection goes to hyper), for
//! comparison.

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::features::guard::Connection;
use crate::http::body::{BodyCut, ClientBody, Fed, Feeder};
use crate::http::deadline::Deadline;

/// hyper's default limit on the number of request headers; more is declined (hyper: `431`).
const MAX_HEADERS: usize = 100;
/// The longest request body hyper takes (`u64::MAX - 2`; the two above mean "chunked" and "until
/// close" to it).
const MAX_LENGTH: u64 = u64::MAX - 2;
/// hyper's limit on a request target's length; longer is declined (hyper: `414`).
const MAX_URI_LEN: usize = (u16::MAX - 1) as usize;
/// The read buffer's first size, and the least free space kept for a read.
const READ_CHUNK: usize = 8 * 1024;
/// Body bytes gathered before a write (larger frames are written as they come).
const WRITE_GATHER: usize = 64 * 1024;
/// The read buffer's size while a request body streams in.
const BODY_CHUNK: usize = 16 * 1024;

/// Whether the fast path serves connections (`SECRETPROXY_HTTP1=hyper` turns it off).
pub fn enabled() -> bool {
    std::env::var("SECRETPROXY_HTTP1").map_or(true, |value| value != "hyper")
}

/// What a buffer's first request head is to the fast path.
// Made once per request and consumed at once: boxing the request would cost an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// A head the fast path serves; its bytes have been taken from the buffer.
    Ready {
        request: Request<()>,
        /// The client said `Connection: close`.
        close: bool,
        /// The body's `Content-Length` (0 without one).
        length: u64,
    },
    /// The head is not complete yet.
    Partial,
    /// hyper serves this head and the rest of the connection; the buffer is untouched.
    Decline,
}

/// Shows the method and path only: the headers and query may hold a client's key or token.
impl std::fmt::Debug for Parsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Parsed::Ready { request, close, length } => f
                .debug_struct("Ready")
                .field("method", request.method())
                .field("path", &request.uri().path())
                .field("close", close)
                .field("length", length)
                .finish_non_exhaustive(),
            Parsed::Partial => f.write_str("Partial"),
            Parsed::Decline => f.write_str("Decline"),
        }
    }
}

/// What a connection keeps between requests so that parsing a head allocates nothing: the header
/// positions of the head being parsed, and the map of the last response for the next request's
/// headers (as hyper does).
#[derive(Default)]
pub struct Scratch {
    fields: Vec<(usize, usize, usize, usize)>,
    headers: Option<HeaderMap>,
}

/// Parses the request head at the start of `buf` (see the module's rules).
pub fn parse(buf: &mut BytesMut, max_header_size: usize, scratch: &mut Scratch) -> Parsed {
    let mut storage = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_request_with_uninit_headers(&mut parsed, buf, &mut storage) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < max_header_size => return Parsed::Partial,
        _ => return Parsed::Decline,
    };
    if len > max_header_size || parsed.version != Some(1) {
        return Parsed::Decline;
    }
    let method = match parsed.method {
        Some("GET") => Method::GET,
        Some("POST") => Method::POST,
        Some("PUT") => Method::PUT,
        Some("PATCH") => Method::PATCH,
        Some("DELETE") => Method::DELETE,
        Some("OPTIONS") => Method::OPTIONS,
        _ => return Parsed::Decline,
    };
    let path = parsed.path.unwrap_or_default();
    if !path.starts_with('/') || path.len() > MAX_URI_LEN {
        return Parsed::Decline;
    }
    let base = buf.as_ptr() as usize;
    let offset = |slice: &[u8]| slice.as_ptr() as usize - base;
    let path = (offset(path.as_bytes()), path.len());
    let mut close = false;
    let mut connection = false;
    let mut length = None;
    let fields = &mut scratch.fields;
    fields.clear();
    for header in parsed.headers.iter() {
        let name = header.name.as_bytes();
        let value = header.value;
        if name.eq_ignore_ascii_case(b"content-length") {
            // One length, digits only, within what hyper accepts (it drops a repeated equal
            // value from the headers: declined, so the request is the one hyper builds).
            match digits(value) {
                Some(declared) if length.is_none() && declared <= MAX_LENGTH => length = Some(declared),
                _ => return Parsed::Decline,
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            if connection {
                return Parsed::Decline;
            }
            connection = true;
            if value.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if !value.eq_ignore_ascii_case(b"keep-alive") {
                return Parsed::Decline;
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Parsed::Decline;
        }
        fields.push((offset(name), name.len(), offset(value), value.len()));
    }
    let head = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path.0..path.0 + path.1)) else {
        restore(buf, head);
        return Parsed::Decline;
    };
    let mut headers = scratch.headers.take().unwrap_or_default();
    headers.clear();
    headers.reserve(fields.len());
    for &(name, name_len, value, value_len) in fields.iter() {
        // Both hold for what httparse accepts, but a failure declines rather than panics.
        let name = HeaderName::from_bytes(&head[name..name + name_len]);
        let value = HeaderValue::from_maybe_shared(head.slice(value..value + value_len));
        let (Ok(name), Ok(value)) = (name, value) else {
            restore(buf, head);
            return Parsed::Decline;
        };
        headers.append(name, value);
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Parsed::Ready {
        request,
        close,
        length: length.unwrap_or(0),
    }
}

/// Puts a taken head back in front of the rest of the buffer (a decline after the split).
fn restore(buf: &mut BytesMut, head: Bytes) {
    let mut whole = BytesMut::with_capacity(head.len() + buf.len());
    whole.extend_from_slice(&head);
    whole.extend_from_slice(buf);
    *buf = whole;
}

/// How a response body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Exactly this many bytes follow the head.
    Length(u64),
    Chunked,
}

/// The length hyper's dispatcher tells its encoder: none for a body already at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyLength {
    None,
    Known(u64),
    Unknown,
}

/// The value as text, as hyper reads the headers it looks into (other values match nothing).
fn text(value: &HeaderValue) -> Option<&str> {
    value.to_str().ok()
}

/// `chunked` is the last coding (hyper's `is_chunked_`).
fn is_chunked(value: &HeaderValue) -> bool {
    text(value)
        .and_then(|text| text.rsplit(',').next())
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
}

/// A comma-separated value holds `token` (hyper's `connection_has`).
fn has_token(value: &HeaderValue, token: &str) -> bool {
    text(value).is_some_and(|text| text.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
}

/// A `Content-Length` value: digits only, within `u64` (hyper's `from_digits`).
fn content_length(value: &HeaderValue) -> Option<u64> {
    digits(value.as_bytes())
}

fn digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |total, byte| {
        let digit = byte.checked_sub(b'0').filter(|digit| *digit < 10)?;
        total.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Encodes a response head into `out` as hyper's HTTP/1.1 server does for a request that is not
/// `HEAD` or `CONNECT`. `close` adds `connection: close` (the client asked, or the server is
/// draining). Returns the body's framing and whether the connection closes after it, or `None`
/// for a head hyper would refuse to send (the connection then closes without an answer).
fn encode_head(
    status: StatusCode,
    reason: Option<&[u8]>,
    headers: &mut HeaderMap,
    body: BodyLength,
    close: bool,
    out: &mut Vec<u8>,
) -> Option<(Framing, bool)> {
    if status.is_informational() {
        return None;
    }
    let mut last = close;
    if close {
        match headers.entry(header::CONNECTION) {
            header::Entry::Occupied(mut entry) => {
                if !entry.iter().any(|value| has_token(value, "close")) {
                    entry.append(HeaderValue::from_static("close"));
                }
            }
            header::Entry::Vacant(entry) => {
                entry.insert(HeaderValue::from_static("close"));
            }
        }
    }
    if status == StatusCode::OK && reason.is_none() {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        let canonical = status.canonical_reason().unwrap_or("<none>").as_bytes();
        out.extend_from_slice(reason.unwrap_or(canonical));
        out.extend_from_slice(b"\r\n");
    }
    // `204` and `304` have no body, so no chunked coding either.
    let bodiless = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let mut framing = Framing::Length(0);
    let mut wrote_len = false;
    let mut wrote_date = false;
    let mut length_written: Option<u64> = None;
    // A special header's values are joined on one line, left open until the name changes:
    // `chunked` is then appended to a `transfer-encoding` line whose last value lacks it.
    let mut open_line = false;
    let mut add_chunked = false;
    let mut previous: Option<&HeaderName> = None;
    for (name, value) in headers.iter() {
        let same = previous.is_some_and(|previous| std::ptr::eq(previous, name));
        if !same {
            if open_line {
                out.extend_from_slice(if add_chunked { b", chunked\r\n" } else { b"\r\n" });
            }
            open_line = false;
            add_chunked = false;
            previous = Some(name);
        }
        let joined = |out: &mut Vec<u8>, open: bool, prefix: &[u8]| {
            out.extend_from_slice(if open { b", " } else { prefix });
            out.extend_from_slice(value.as_bytes());
        };
        match *name {
            header::CONTENT_LENGTH => match body {
                BodyLength::Known(known) => {
                    if wrote_len && !open_line {
                        return None;
                    }
                    if !open_line {
                        framing = Framing::Length(known);
                        joined(out, false, b"content-length: ");
                        wrote_len = true;
                        open_line = true;
                    }
                }
                BodyLength::Unknown => {
                    if wrote_len && !open_line {
                        return None;
                    }
                    let len = content_length(value)?;
                    match length_written {
                        Some(previous) if previous != len => return None,
                        Some(_) => {}
                        None => {
                            framing = Framing::Length(len);
                            joined(out, false, b"content-length: ");
                            wrote_len = true;
                            open_line = true;
                            length_written = Some(len);
                        }
                    }
                }
                // No body to send: the header is dropped (a `0` is written below).
                BodyLength::None => {}
            },
            header::TRANSFER_ENCODING => {
                if wrote_len && !open_line {
                    return None;
                }
                if bodiless {
                    continue;
                }
                wrote_len = true;
                add_chunked = !is_chunked(value);
                if !open_line {
                    framing = Framing::Chunked;
                }
                joined(out, open_line, b"transfer-encoding: ");
                open_line = true;
            }
            header::CONNECTION => {
                if has_token(value, "close") {
                    last = true;
                }
                joined(out, open_line, b"connection: ");
                open_line = true;
            }
            header::TRAILER => {
                if bodiless {
                    continue;
                }
                joined(out, open_line, b"trailer: ");
                open_line = true;
            }
            _ => {
                if *name == header::DATE {
                    wrote_date = true;
                }
                out.extend_from_slice(name.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    if open_line {
        out.extend_from_slice(if add_chunked { b", chunked\r\n" } else { b"\r\n" });
    }
    if !wrote_len {
        framing = match body {
            BodyLength::Unknown if bodiless => Framing::Length(0),
            BodyLength::Unknown => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
            BodyLength::None | BodyLength::Known(0) => {
                if !bodiless {
                    out.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::Length(0)
            }
            BodyLength::Known(_) if bodiless => Framing::Length(0),
            BodyLength::Known(len) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
                out.extend_from_slice(b"\r\n");
                Framing::Length(len)
            }
        };
    }
    if bodiless {
        framing = Framing::Length(0);
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Some((framing, last))
}

thread_local! {
    /// The `date` value of the current second, formatted once a second per thread.
    static DATE: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
}

/// Appends the current time as an HTTP date.
fn date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs());
    DATE.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            *cached = (second, httpdate::fmt_http_date(now).into_bytes());
        }
        out.extend_from_slice(&cached.1);
    });
}

/// What became of a connection the fast path served.
pub enum Served<IO> {
    /// It ended (closed by either side, timed out, or the server drained).
    Closed,
    /// A head the fast path does not take: hyper serves the connection from that head on.
    Declined(IO, Bytes),
}

/// The fixed facts of a connection and the server's limits.
pub struct Facts {
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
    pub header_timeout: Duration,
    pub max_header_size: usize,
}

/// Serves `stream` until it ends or declines a head (see the module documentation); `handle`
/// answers each request ([`crate::pipeline::Proxy::handle`]).
pub async fn serve<IO, H, F, B>(
    mut stream: IO,
    handle: H,
    facts: Facts,
    mut draining: watch::Receiver<()>,
) -> Served<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Request<ClientBody>, Connection) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut scratch = Scratch::default();
    loop {
        // The head, within the header timeout; an idle connection closes when the server drains.
        let mut timeout = Deadline::after(facts.header_timeout);
        let (request, close, length) = loop {
            if !buf.is_empty() {
                match parse(&mut buf, facts.max_header_size, &mut scratch) {
                    Parsed::Ready { request, close, length } => break (request, close, length),
                    Parsed::Partial => {}
                    Parsed::Decline => return Served::Declined(stream, buf.freeze()),
                }
            }
            make_room(&mut buf, READ_CHUNK);
            let idle = buf.is_empty();
            tokio::select! {
                biased;
                read = stream.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => return Served::Closed,
                    Ok(_) => {}
                },
                () = &mut timeout => {
                    tracing::debug!(peer = %facts.peer, "read header from client timeout");
                    return Served::Closed;
                }
                changed = draining.changed(), if idle => {
                    let _ = changed;
                    return Served::Closed;
                }
            }
        };
        drop(timeout);
        let connection = Connection {
            peer: facts.peer,
            local: facts.local,
            ambiguous_framing: false,
        };
        let (body, mut reader) = if length == 0 {
            (ClientBody::Empty, Reader::Watching)
        } else {
            let (feeder, body) = Fed::channel(length);
            (ClientBody::Fed(body), Reader::Feeding { feeder, left: length })
        };
        // The request runs while its body is read and the connection watched for the client
        // closing its side. Pinned where it is made: the future is large, and a move would copy it.
        let mut handled = std::pin::pin!(handle(request.map(|()| body), connection));
        let response = loop {
            tokio::select! {
                biased;
                response = &mut handled => break response,
                gone = reader.run(&mut stream, &mut buf) => if gone {
                    return Served::Closed;
                }
            }
        };
        let close = close || !matches!(draining.has_changed(), Ok(false));
        match respond(
            &mut stream,
            &mut buf,
            &mut out,
            &mut scratch,
            &mut reader,
            response,
            close,
        )
        .await
        {
            // The next head comes after this body: the connection is kept only once it was read.
            Ok(true) if matches!(reader, Reader::Watching) => {}
            Ok(_) => {
                let _ = stream.shutdown().await;
                return Served::Closed;
            }
            Err(_) => return Served::Closed,
        }
    }
}

/// The read side of a connection while a request is in flight.
enum Reader {
    /// Reading the request's body and handing it over chunk by chunk.
    Feeding { feeder: Feeder, left: u64 },
    /// The body is read (or there is none): watching for the client closing its side.
    Watching,
    /// The body was not read to its end (the handler dropped it, or the client's side ended):
    /// nothing more is read, and the connection closes after the response.
    Done,
}

impl Reader {
    /// One step: a chunk of the body handed over, or (when watching) the client gone, which
    /// resolves to `true`. Cancel-safe: bytes read are kept in `buf`.
    async fn run<IO: AsyncRead + Unpin>(&mut self, stream: &mut IO, buf: &mut BytesMut) -> bool {
        match self {
            Reader::Feeding { feeder, left } => {
                // Room in the body's channel first, so the chunk read next has somewhere to go.
                let Ok(permit) = feeder.reserve().await else {
                    *self = Reader::Done;
                    return false;
                };
                if buf.is_empty() {
                    make_room(buf, BODY_CHUNK);
                    match stream.read_buf(buf).await {
                        Ok(0) | Err(_) => {
                            permit.send(Err(BodyCut));
                            *self = Reader::Done;
                            return false;
                        }
                        Ok(_) => {}
                    }
                }
                let take = usize::try_from(*left).map_or(buf.len(), |left| left.min(buf.len()));
                permit.send(Ok(buf.split_to(take).freeze()));
                *left -= take as u64;
                if *left == 0 {
                    *self = Reader::Watching;
                }
                false
            }
            Reader::Watching => {
                client_gone(stream, buf).await;
                true
            }
            Reader::Done => std::future::pending().await,
        }
    }
}

/// Keeps at least half of `size` free for the next read, reserving `size` when less is left.
fn make_room(buf: &mut BytesMut, size: usize) {
    if buf.capacity() - buf.len() < size / 2 {
        buf.reserve(size);
    }
}

/// Resolves when the client closes its side (or the connection fails) while its request is in
/// flight. Bytes that arrive meanwhile (a pipelined request) are kept, and then it waits no more,
/// like hyper.
async fn client_gone<IO: AsyncRead + Unpin>(stream: &mut IO, buf: &mut BytesMut) {
    if buf.is_empty() {
        make_room(buf, READ_CHUNK);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    std::future::pending().await
}

/// Writes `response`; `Ok(true)` when the connection stays open for the next request.
async fn respond<IO, B>(
    stream: &mut IO,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    scratch: &mut Scratch,
    reader: &mut Reader,
    response: Response<B>,
    close: bool,
) -> io::Result<bool>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
{
    let (mut parts, mut body) = response.into_parts();
    let length = if body.is_end_stream() {
        BodyLength::None
    } else {
        body.size_hint().exact().map_or(BodyLength::Unknown, BodyLength::Known)
    };
    let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
    out.clear();
    let Some((framing, last)) = encode_head(
        parts.status,
        reason.map(|reason| reason.as_bytes()),
        &mut parts.headers,
        length,
        close,
        out,
    ) else {
        tracing::warn!(status = %parts.status, "response head cannot be sent; closing the connection");
        return Ok(false);
    };
    // The map's room serves the next request's headers.
    parts.headers.clear();
    scratch.headers = Some(parts.headers);
    let mut left = match framing {
        Framing::Length(len) => Some(len),
        Framing::Chunked => None,
    };
    // Whether the body went out whole; after a cut one the connection ends with what was written.
    let whole = if left == Some(0) {
        true
    } else if length == BodyLength::None {
        // A chunked head for a body already at its end: only the last chunk follows.
        end_of_body(left, out)
    } else {
        loop {
            // A frame ready now joins the bytes gathered; otherwise they go out while it is awaited.
            let frame = match futures_util::FutureExt::now_or_never(body.frame()) {
                Some(frame) => frame,
                None => {
                    stream.write_all(out).await?;
                    out.clear();
                    loop {
                        tokio::select! {
                            biased;
                            frame = body.frame() => break frame,
                            gone = reader.run(stream, buf) => if gone {
                                return Ok(false);
                            }
                        }
                    }
                }
            };
            let data = match frame {
                None => break end_of_body(left, out),
                Some(Err(_)) => break false,
                // Trailers are not sent (the client did not ask for them).
                Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
            };
            if !data.is_empty() {
                let mut data = &data[..];
                let mut longer = false;
                match &mut left {
                    Some(left) => {
                        let take = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                        longer = take < data.len();
                        data = &data[..take];
                        *left -= take as u64;
                    }
                    None => {
                        let _ = write!(out, "{:x}\r\n", data.len());
                    }
                }
                if data.len() > WRITE_GATHER {
                    // A large frame goes out as it is, not through the gathering buffer.
                    stream.write_all(out).await?;
                    out.clear();
                    stream.write_all(data).await?;
                } else {
                    out.extend_from_slice(data);
                }
                if left.is_none() {
                    out.extend_from_slice(b"\r\n");
                }
                if longer {
                    // Longer than declared: what fits is sent, then the connection ends.
                    break false;
                }
            }
            if body.is_end_stream() {
                break end_of_body(left, out);
            }
            if left == Some(0) {
                break true;
            }
            if out.len() >= WRITE_GATHER {
                stream.write_all(out).await?;
                out.clear();
            }
        }
    };
    if !out.is_empty() {
        stream.write_all(out).await?;
        out.clear();
    }
    if out.capacity() > 2 * WRITE_GATHER {
        *out = Vec::with_capacity(READ_CHUNK);
    }
    // The body (and the access line it writes) is done before the next head is read.
    drop(body);
    Ok(whole && !last)
}

/// At the body's end: adds the last chunk of a chunked body. False when a body of declared length
/// came short (the client must not wait for the rest).
fn end_of_body(left: Option<u64>, out: &mut Vec<u8>) -> bool {
    match left {
        Some(left) => left == 0,
        None => {
            out.extend_from_slice(b"0\r\n\r\n");
            true
        }
    }
}

#[cfg(test)]
mod tests;
