//! Makes an upstream answer readable for scrubbing: a body compressed with gzip, deflate, br or
//! zstd (every `Content-Encoding` header, every coding of each list) is decoded as it streams and
//! handed on as plaintext, without `Content-Encoding` and `Content-Length`.
//!
//! Scrubbing routes ask for `Accept-Encoding: identity`, but an upstream may compress anyway. A
//! secret inside compressed bytes cannot be found, so what cannot be decoded (an unknown coding, a
//! coding in `Transfer-Encoding`) is refused with a 502 that quotes nothing the upstream sent.
//! Decoding is streaming only, through bounded buffers: a decompression bomb costs time spent
//! sending its output to the client, never memory. A corrupt stream ends the body with an error.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZlibDecoder, ZstdDecoder};
use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, header};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::io::{AsyncBufRead, AsyncRead, BufReader};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::http::body::{BoxError, ProxyBody};
use crate::http::error::ProxyError;

/// Size of each decoded chunk and of the buffers between stacked decoders.
const CHUNK: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Coding {
    Gzip,
    /// HTTP's `deflate` is the zlib format (RFC 9110 8.4.1.2).
    Deflate,
    Brotli,
    Zstd,
}

/// Decodes the answer's content codings, outermost last in the header as applied last; see the
/// module docs. Refuses a `Transfer-Encoding` other than `chunked` and codings it does not know.
pub fn decode(headers: &mut HeaderMap, body: ProxyBody) -> Result<ProxyBody, ProxyError> {
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let text = value
            .to_str()
            .map_err(|_| ProxyError::Unscrubbable("a transfer coding other than chunked"))?;
        if tokens(text).any(|coding| !coding.eq_ignore_ascii_case("chunked")) {
            return Err(ProxyError::Unscrubbable("a transfer coding other than chunked"));
        }
    }
    let mut codings = Vec::new();
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let unknown = || ProxyError::Unscrubbable("a content coding that cannot be decoded");
        for token in tokens(value.to_str().map_err(|_| unknown())?) {
            codings.push(match token.to_ascii_lowercase().as_str() {
                "gzip" | "x-gzip" => Coding::Gzip,
                "deflate" => Coding::Deflate,
                "br" => Coding::Brotli,
                "zstd" => Coding::Zstd,
                "identity" => continue,
                _ => return Err(unknown()),
            });
        }
    }
    headers.remove(header::CONTENT_ENCODING);
    if codings.is_empty() {
        return Ok(body);
    }
    headers.remove(header::CONTENT_LENGTH);
    // A HEAD answer, a 204 or a 304 has no bytes to decode.
    if body.is_end_stream() {
        return Ok(body);
    }
    Ok(decoded(body, &codings))
}

fn tokens(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|token| !token.is_empty())
}

type Trailers = Arc<Mutex<Option<HeaderMap>>>;

fn decoded(body: ProxyBody, codings: &[Coding]) -> ProxyBody {
    let trailers = Trailers::default();
    let compressed = DataFrames {
        body,
        trailers: trailers.clone(),
    };
    let mut reader: Pin<Box<dyn AsyncBufRead + Send>> = Box::pin(StreamReader::new(compressed));
    let mut codings = codings.iter().rev().peekable();
    let mut last: Option<Pin<Box<dyn AsyncRead + Send>>> = None;
    while let Some(coding) = codings.next() {
        let decoder: Pin<Box<dyn AsyncRead + Send>> = match coding {
            Coding::Gzip => {
                let mut decoder = GzipDecoder::new(reader);
                // Concatenated gzip members are one stream, as gunzip reads them.
                decoder.multiple_members(true);
                Box::pin(decoder)
            }
            Coding::Deflate => Box::pin(ZlibDecoder::new(reader)),
            Coding::Brotli => Box::pin(BrotliDecoder::new(reader)),
            Coding::Zstd => Box::pin(ZstdDecoder::new(reader)),
        };
        if codings.peek().is_none() {
            last = Some(decoder);
            break;
        }
        reader = Box::pin(BufReader::with_capacity(CHUNK, decoder));
    }
    let plain = last.expect("at least one coding");
    Decoded {
        stream: ReaderStream::with_capacity(plain, CHUNK),
        trailers,
        done: false,
    }
    .boxed_unsync()
}

/// The data frames of a body as a byte stream; trailers are set aside for [`Decoded`].
struct DataFrames {
    body: ProxyBody,
    trailers: Trailers,
}

impl Stream for DataFrames {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(io::Error::other(error)))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => return Poll::Ready(Some(Ok(data))),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            *self.trailers.lock().unwrap_or_else(|e| e.into_inner()) = Some(trailers);
                        }
                    }
                },
            }
        }
    }
}

/// The decoded bytes, then the trailers of the compressed body.
struct Decoded {
    stream: ReaderStream<Pin<Box<dyn AsyncRead + Send>>>,
    trailers: Trailers,
    done: bool,
}

impl Body for Decoded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.stream).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(data))) => Poll::Ready(Some(Ok(Frame::data(data)))),
            Poll::Ready(Some(Err(error))) => {
                self.done = true;
                Poll::Ready(Some(Err(Box::new(CorruptBody(error.kind())))))
            }
            Poll::Ready(None) => {
                self.done = true;
                let trailers = self.trailers.lock().unwrap_or_else(|e| e.into_inner()).take();
                Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
            }
        }
    }
}

/// A compressed body that could not be decoded (or whose transfer failed). Only the error kind
/// is kept: decoder messages may quote bytes of the stream.
#[derive(Debug, thiserror::Error)]
#[error("the upstream's compressed body could not be decoded ({0})")]
struct CorruptBody(io::ErrorKind);

#[cfg(test)]
mod tests {
    use http_body_util::StreamBody;

    use super::*;

    fn body_of(chunks: Vec<Vec<u8>>) -> ProxyBody {
        let frames = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from(c)))),
        );
        StreamBody::new(frames).boxed_unsync()
    }

    async fn gzip(bytes: &[u8]) -> Vec<u8> {
        use tokio::io::AsyncWriteExt;
        let mut encoder = async_compression::tokio::write::GzipEncoder::new(Vec::new());
        encoder.write_all(bytes).await.unwrap();
        encoder.shutdown().await.unwrap();
        encoder.into_inner()
    }

    #[tokio::test]
    async fn stacked_codings_in_two_headers_are_all_decoded() {
        let plain = b"hello, compressed world".repeat(100);
        let twice = gzip(&gzip(&plain).await).await;
        let mut headers = HeaderMap::new();
        headers.append(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        headers.append(header::CONTENT_ENCODING, "identity, x-gzip".parse().unwrap());
        headers.insert(header::CONTENT_LENGTH, twice.len().into());
        let chunks = twice.chunks(7).map(<[u8]>::to_vec).collect();
        let body = decode(&mut headers, body_of(chunks)).unwrap();
        assert!(headers.is_empty(), "{headers:?}");
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], &plain[..]);
    }

    #[tokio::test]
    async fn unknown_codings_and_transfer_codings_are_refused_quoting_nothing() {
        for (name, value) in [
            (header::CONTENT_ENCODING, "gzip, x-secret-coding"),
            (header::CONTENT_ENCODING, "compress"),
            (header::TRANSFER_ENCODING, "gzip, chunked"),
            (header::TRANSFER_ENCODING, "x-secret-coding"),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(name, value.parse().unwrap());
            let error = decode(&mut headers, body_of(vec![])).err().unwrap();
            assert_eq!(error.code(), "upstream_unscrubbable");
            let text = format!("{error} {error:?}");
            assert!(!text.contains("x-secret") && !text.contains("compress"), "{text}");
            assert!(!text.contains("gzip"), "{text}");
        }
    }

    #[tokio::test]
    async fn a_corrupt_stream_ends_the_body_with_an_error() {
        let mut broken = gzip(b"some text that is long enough to matter").await;
        broken.truncate(broken.len() - 12);
        broken.extend_from_slice(b"SECRETSECRET");
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        let body = decode(&mut headers, body_of(vec![broken])).unwrap();
        let error = body.collect().await.err().unwrap();
        assert!(!error.to_string().contains("SECRET"));
    }

    /// A bomb (64 MiB of zeros in about 64 KiB of gzip) decodes in bounded chunks: the whole is
    /// never held, each frame is at most one chunk.
    #[tokio::test]
    async fn a_bomb_streams_in_bounded_chunks() {
        let compressed = gzip(&vec![0u8; 64 << 20]).await;
        assert!(compressed.len() < 1 << 20);
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        let mut body = decode(&mut headers, body_of(vec![compressed])).unwrap();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.len() <= CHUNK);
            total += data.len();
        }
        assert_eq!(total, 64 << 20);
    }
}
