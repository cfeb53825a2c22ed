//! Request framing as the client wrote it, read from the raw bytes of a connection.
//!
//! hyper resolves a request head with both `Content-Length` and `Transfer-Encoding` the RFC 9112
//! way (the chunked coding wins, `Content-Length` is dropped, the connection closes after the
//! response), so by the time the proxy sees the request the ambiguity is gone. Such a request is
//! the signature of a smuggling attempt and is refused instead: [`Sniffed`] wraps the client
//! stream, follows the HTTP/1.1 message framing (heads, `Content-Length` bodies, chunked bodies
//! with trailers) over the bytes hyper reads, and records one verdict per request head, in order.
//! The server attaches the verdict to the matching request. Conflicting `Content-Length`s are
//! already refused by hyper itself (`400`, connection closed). When the framing cannot be
//! followed (malformed input that hyper will reject anyway) the sniffer stops looking.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest head followed; longer ones get `431` from hyper.
const MAX_HEAD: usize = 1024 * 1024 + 4096;

/// One verdict per request head on a connection: `true` when the head was ambiguous.
#[derive(Debug, Clone, Default)]
pub struct Verdicts(Arc<Mutex<VecDeque<bool>>>);

impl Verdicts {
    /// The verdict for the next request hyper hands over (`false` once the sniffer stopped).
    pub fn next_is_ambiguous(&self) -> bool {
        self.0.lock().expect("verdict lock").pop_front().unwrap_or(false)
    }

    fn push(&self, ambiguous: bool) {
        self.0.lock().expect("verdict lock").push_back(ambiguous);
    }
}

enum State {
    Head(Vec<u8>),
    Body(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    ChunkEnd,
    Trailers(Vec<u8>),
    Stopped,
}

/// A client stream whose request framing is followed as it is read.
pub struct Sniffed<IO> {
    io: IO,
    /// Bytes already read from `io` (by the HTTP/1 fast path, from the start of a head), read
    /// again first.
    prefix: Bytes,
    state: State,
    verdicts: Verdicts,
}

impl<IO> Sniffed<IO> {
    /// Follows `io` from the start of a request head; `prefix` holds bytes of it already read.
    pub fn new(io: IO, prefix: Bytes, verdicts: Verdicts) -> Self {
        Sniffed {
            io,
            prefix,
            state: State::Head(Vec::new()),
            verdicts,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let state = std::mem::replace(&mut self.state, State::Stopped);
            let (next, used) = self.step(state, bytes);
            self.state = next;
            bytes = &bytes[used..];
        }
    }

    /// Consumes a prefix of `bytes` in `state`; returns the next state and how much was used.
    fn step(&self, state: State, bytes: &[u8]) -> (State, usize) {
        let take = |left: u64| bytes.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let line_end = || bytes.iter().position(|b| *b == b'\n').map(|at| at + 1);
        match state {
            State::Stopped => (State::Stopped, bytes.len()),
            State::Body(left) => {
                let used = take(left);
                let left = left - used as u64;
                (
                    if left == 0 {
                        State::Head(Vec::new())
                    } else {
                        State::Body(left)
                    },
                    used,
                )
            }
            State::ChunkData(left) => {
                let used = take(left);
                let left = left - used as u64;
                (
                    if left == 0 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(left)
                    },
                    used,
                )
            }
            State::ChunkEnd => match line_end() {
                Some(at) => (State::ChunkSize(Vec::new()), at),
                None => (State::ChunkEnd, bytes.len()),
            },
            State::Head(mut buf) => match head_end(&buf, bytes) {
                // A head within one read (the usual case) is parsed where it lies.
                Some(at) if buf.is_empty() => (self.after_head(&bytes[..at]), at),
                Some(at) => {
                    buf.extend_from_slice(&bytes[..at]);
                    (self.after_head(&buf), at)
                }
                None => {
                    buf.extend_from_slice(bytes);
                    (
                        if buf.len() > MAX_HEAD {
                            State::Stopped
                        } else {
                            State::Head(buf)
                        },
                        bytes.len(),
                    )
                }
            },
            State::ChunkSize(mut buf) => match line_end() {
                Some(at) => {
                    buf.extend_from_slice(&bytes[..at]);
                    let line = String::from_utf8_lossy(&buf);
                    let digits = line.trim().split([';', ' ', '\t']).next().unwrap_or("");
                    let next = match u64::from_str_radix(digits, 16) {
                        Ok(0) => State::Trailers(Vec::new()),
                        Ok(size) => State::ChunkData(size),
                        Err(_) => State::Stopped,
                    };
                    (next, at)
                }
                None => {
                    buf.extend_from_slice(bytes);
                    (
                        if buf.len() > MAX_HEAD {
                            State::Stopped
                        } else {
                            State::ChunkSize(buf)
                        },
                        bytes.len(),
                    )
                }
            },
            State::Trailers(mut buf) => match line_end() {
                Some(at) => {
                    buf.extend_from_slice(&bytes[..at]);
                    let blank = buf == b"\r\n" || buf == b"\n";
                    (
                        if blank {
                            State::Head(Vec::new())
                        } else {
                            State::Trailers(Vec::new())
                        },
                        at,
                    )
                }
                None => {
                    buf.extend_from_slice(bytes);
                    (
                        if buf.len() > MAX_HEAD {
                            State::Stopped
                        } else {
                            State::Trailers(buf)
                        },
                        bytes.len(),
                    )
                }
            },
        }
    }

    fn after_head(&self, head: &[u8]) -> State {
        let mut headers = [const { std::mem::MaybeUninit::uninit() }; 128];
        let mut request = httparse::Request::new(&mut []);
        if !matches!(
            request.parse_with_uninit_headers(head, &mut headers),
            Ok(httparse::Status::Complete(_))
        ) {
            return State::Stopped;
        }
        let headers = &*request.headers;
        let named = |name: &'static str| headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name));
        let chunked = named("transfer-encoding").next_back().map(|h| {
            String::from_utf8_lossy(h.value)
                .rsplit(',')
                .next()
                .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
        });
        let length = |h: &httparse::Header<'_>| {
            std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let first_length = named("content-length").next().map(length);
        self.verdicts.push(chunked.is_some() && first_length.is_some());
        match (chunked, first_length) {
            (Some(true), _) => State::ChunkSize(Vec::new()),
            (Some(false), _) => State::Stopped,
            (None, None) => State::Head(Vec::new()),
            (None, Some(Some(0))) => State::Head(Vec::new()),
            (None, Some(Some(first))) if named("content-length").all(|h| length(h) == Some(first)) => {
                State::Body(first)
            }
            (None, Some(_)) => State::Stopped,
        }
    }
}

/// Where the head that `buf` started ends within `bytes` (just past its blank line).
fn head_end(buf: &[u8], bytes: &[u8]) -> Option<usize> {
    // A `\r\n\r\n` split between reads begins in the last three bytes of `buf`.
    let overlap = buf.len().min(3);
    if overlap > 0 {
        let mut joint = [0u8; 6];
        let new = bytes.len().min(3);
        joint[..overlap].copy_from_slice(&buf[buf.len() - overlap..]);
        joint[overlap..overlap + new].copy_from_slice(&bytes[..new]);
        if let Some(at) = joint[..overlap + new]
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
        {
            return Some(at + 4 - overlap);
        }
    }
    // A head is a few short lines: checking each line end is cheaper than a substring search.
    memchr::memchr_iter(b'\n', bytes)
        .find(|&at| at >= 3 && &bytes[at - 3..=at] == b"\r\n\r\n")
        .map(|at| at + 1)
}

impl<IO: AsyncRead + Unpin> AsyncRead for Sniffed<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        if !this.prefix.is_empty() {
            let take = this.prefix.len().min(buf.remaining());
            let taken = this.prefix.split_to(take);
            buf.put_slice(&taken);
            this.feed(&taken);
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            this.feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Sniffed<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(input: &[&[u8]]) -> Vec<bool> {
        let verdicts = Verdicts::default();
        let mut sniffed = Sniffed::new(tokio::io::empty(), Bytes::new(), verdicts.clone());
        for piece in input {
            sniffed.feed(piece);
        }
        verdicts.0.lock().unwrap().iter().copied().collect()
    }

    #[test]
    fn follows_pipelined_requests() {
        let input: &[u8] = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /b HTTP/1.1\r\nHost: x\r\n\r\n\
POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
POST /d HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(verdicts(&[input]), [false, false, false, true]);
        // The same bytes one at a time.
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(verdicts(&bytes), [false, false, false, true]);
    }

    /// Bytes the fast path read before it handed the connection over come first, and their
    /// framing is followed like the rest.
    #[tokio::test]
    async fn a_prefix_is_read_and_followed_first() {
        use tokio::io::AsyncReadExt;
        let verdicts = Verdicts::default();
        let prefix =
            Bytes::from_static(b"POST /a HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n");
        let rest: &[u8] = b"\r\nGET /b HTTP/1.1\r\n\r\n";
        let mut sniffed = Sniffed::new(rest, prefix.clone(), verdicts.clone());
        let mut read = Vec::new();
        sniffed.read_to_end(&mut read).await.unwrap();
        assert_eq!(read, [&prefix[..], rest].concat());
        assert_eq!(
            verdicts.0.lock().unwrap().iter().copied().collect::<Vec<_>>(),
            [true, false]
        );
    }

    #[test]
    fn stops_on_garbage() {
        assert_eq!(
            verdicts(&[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET / HTTP/1.1\r\n\r\n"]),
            [false]
        );
    }
}
