//! The fast path against hyper's server: the same heads parsed to the same requests, the same
//! responses encoded to the same bytes, and whole connections answered alike.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::{Facts, Parsed, Scratch, Served, parse, serve};
use crate::features::guard::Connection;
use crate::http::body::{BoxError, ClientBody};

const MAX_HEADER_SIZE: usize = 4096;

/// A request as a comparable value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    uri: String,
    version: http::Version,
    headers: Vec<(String, Vec<u8>)>,
}

fn seen<B>(request: &Request<B>) -> Seen {
    Seen {
        method: request.method().to_string(),
        uri: request.uri().to_string(),
        version: request.version(),
        headers: request
            .headers()
            .iter()
            .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
            .collect(),
    }
}

fn hyper_builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .max_header_size(MAX_HEADER_SIZE)
        .keep_alive(true)
        .writev(false);
    builder
}

/// A request and its body's length.
type SeenWithLength = (Seen, Option<u64>);

/// What hyper's server makes of `input`: the first request it hands to its service (with its
/// body's length), if any.
async fn hyper_parse(input: &[u8]) -> Option<(Seen, Option<u64>)> {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let first: Arc<Mutex<Option<SeenWithLength>>> = Arc::default();
    let record = first.clone();
    let service = service_fn(move |request: Request<Incoming>| {
        let mut first = record.lock().unwrap();
        if first.is_none() {
            let length = http_body::Body::size_hint(request.body()).exact();
            *first = Some((seen(&request), length));
        }
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
    });
    client.write_all(input).await.unwrap();
    client.shutdown().await.unwrap();
    let _ = hyper_builder().serve_connection(TokioIo::new(server), service).await;
    first.lock().unwrap().take()
}

/// One of `usual`, `weight` times as often as one of `odd`.
fn mostly(weight: u32, usual: Vec<&'static str>, odd: Vec<&'static str>) -> impl Strategy<Value = &'static str> {
    prop_oneof![weight => prop::sample::select(usual), 1 => prop::sample::select(odd)]
}

/// Pieces of request heads: the usual, the odd and the hostile.
fn head() -> impl Strategy<Value = Vec<u8>> {
    let method = mostly(
        4,
        vec!["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        vec!["HEAD", "CONNECT", "TRACE", "get", "G\u{e9}T", "", "PRI"],
    );
    let target = mostly(
        3,
        vec![
            "/",
            "/v1/models",
            "/a/b?c=d&e=%41",
            "/%2e%2e/etc",
            "//double",
            "/q?x=\"y\"",
        ],
        vec![
            "/caf\u{e9}",
            "/a b",
            "/a\tb",
            "*",
            "http://example.com/x",
            "example.com:443",
            "/#frag",
            "/{}|^`",
        ],
    );
    let version = mostly(
        6,
        vec!["HTTP/1.1"],
        vec!["HTTP/1.0", "HTTP/2.0", "http/1.1", "HTTP/1.1 "],
    );
    let name = mostly(
        4,
        vec![
            "Host",
            "host",
            "Accept",
            "X-Api-Key",
            "TE",
            "Origin",
            "Cookie",
            "X-Forwarded-For",
        ],
        vec![
            "Content-Length",
            "content-length",
            "Transfer-Encoding",
            "Connection",
            "Expect",
            "Upgrade",
            "X-\u{e9}",
            "Bad Name",
            "Bad:Name",
            "",
        ],
    );
    let value = mostly(
        3,
        vec![
            "",
            "0",
            "localhost:8080",
            "application/json",
            " padded ",
            "tab\tinside",
            "keep-alive",
            "close",
        ],
        vec![
            "00",
            "5",
            "-1",
            "Close",
            "keep-alive, Upgrade",
            "chunked",
            "100-continue",
            "websocket",
            "caf\u{e9}",
            "a\u{7f}b",
        ],
    );
    let line_end = prop_oneof![4 => Just("\r\n"), 1 => Just("\n")];
    let headers = prop::collection::vec((name, value, line_end.clone()), 0..6);
    let mutate = prop::bool::weighted(0.2);
    (method, target, version, line_end, headers, mutate, any::<(u16, u8)>()).prop_map(
        |(method, target, version, end, headers, mutate, (at, byte))| {
            let mut head = format!("{method} {target} {version}{end}").into_bytes();
            for (name, value, end) in headers {
                head.extend_from_slice(format!("{name}: {value}{end}").as_bytes());
            }
            head.extend_from_slice(b"\r\n");
            if mutate {
                let at = usize::from(at) % head.len();
                head[at] = byte;
            }
            head
        },
    )
}

/// A head the fast path takes is the request hyper builds from it, with the body length hyper
/// reads, and the bytes after it stay in the buffer; a head it declines is left whole for hyper. 3,000 generated heads (a
/// fixed seed), of which the fast path must take and decline a fair share each.
#[test]
fn a_taken_head_is_the_request_hyper_builds() {
    use proptest::strategy::ValueTree;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let rests = ["", "GET / HTTP/1.1\r\n\r\n", "garbage", "hello"];
    let (mut taken, mut declined) = (0, 0);
    for case in 0..3000 {
        let head = head().new_tree(&mut runner).unwrap().current();
        let mut input = head.clone();
        input.extend_from_slice(rests[case % rests.len()].as_bytes());
        let mut buf = BytesMut::from(&input[..]);
        let shown = String::from_utf8_lossy(&input).into_owned();
        match parse(&mut buf, MAX_HEADER_SIZE, &mut Scratch::default()) {
            Parsed::Ready { request, close, length } => {
                taken += 1;
                let hyper = runtime.block_on(hyper_parse(&input));
                let (theirs, hyper_length) = hyper.unwrap_or_else(|| panic!("hyper refused a taken head: {shown:?}"));
                assert_eq!(seen(&request), theirs, "{shown:?}");
                assert_eq!(
                    Some(length),
                    hyper_length,
                    "another body length than hyper's: {shown:?}"
                );
                assert_eq!(&buf[..], &input[head.len()..], "{shown:?}");
                let asks_close = request
                    .headers()
                    .get(http::header::CONNECTION)
                    .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"close"));
                assert_eq!(close, asks_close, "{shown:?}");
            }
            Parsed::Decline | Parsed::Partial => {
                declined += 1;
                assert_eq!(&buf[..], &input[..], "{shown:?}");
            }
        }
    }
    assert!(taken > 600 && declined > 600, "taken {taken}, declined {declined}");
}

/// The generator is not so hostile that the fast path never takes a head: most plain ones pass.
#[test]
fn plain_heads_are_taken() {
    for head in [
        &b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        b"POST /v1/chat HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        b"DELETE /x?y=1 HTTP/1.1\nHost: a\n\n",
        b"OPTIONS /x HTTP/1.1\r\nOrigin: http://a\r\nAccess-Control-Request-Method: POST\r\n\r\n",
    ] {
        let (parsed, rest) = parsed(head);
        assert!(matches!(parsed, Parsed::Ready { .. }), "{head:?}");
        assert!(rest.is_empty());
    }
    for head in [
        &b"GET / HTTP/1.0\r\n\r\n"[..],
        b"HEAD / HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
        b"GET http://a/ HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
    ] {
        let (parsed, rest) = parsed(head);
        assert!(matches!(parsed, Parsed::Decline), "{head:?}");
        assert_eq!(&rest[..], head, "a declined head is left whole");
    }
    let (partial, _) = parsed(b"GET / HTTP/1.1\r\nHost: a\r\n");
    assert!(matches!(partial, Parsed::Partial));
    let oversized = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEADER_SIZE));
    assert!(matches!(parsed(oversized.as_bytes()).0, Parsed::Decline));
}

/// The parsed head's `Debug` names the method and path, never a header value or the query: a
/// client's key or token may be in either.
#[test]
fn a_parsed_head_shows_no_credential() {
    let key = "spk_live_ClientKey_4471";
    let head = format!("GET /v1/models?key={key} HTTP/1.1\r\nAuthorization: Bearer {key}\r\nX-Api-Key: {key}\r\n\r\n");
    let (parsed, _) = parsed(head.as_bytes());
    let shown = format!("{parsed:?}");
    assert!(shown.contains("/v1/models"), "{shown}");
    assert!(!shown.contains(key), "{shown}");
}

/// What `parse` makes of `input`, and what it leaves in the buffer.
fn parsed(input: &[u8]) -> (Parsed, BytesMut) {
    let mut buf = BytesMut::from(input);
    (parse(&mut buf, MAX_HEADER_SIZE, &mut Scratch::default()), buf)
}

type TestBody = UnsyncBoxBody<Bytes, BoxError>;

/// A response made afresh for each server.
type Make = fn() -> Response<TestBody>;

fn full(text: &'static str) -> TestBody {
    Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn streamed(chunks: &'static [&'static str]) -> TestBody {
    let frames = chunks
        .iter()
        .map(|chunk| Ok::<_, BoxError>(Frame::data(Bytes::from_static(chunk.as_bytes()))));
    StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
}

fn with(status: StatusCode, headers: &[(&'static str, &'static str)], body: TestBody) -> Response<TestBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let map: &mut HeaderMap = response.headers_mut();
    for (name, value) in headers {
        map.append(*name, http::HeaderValue::from_static(value));
    }
    response
}

/// Responses the pipeline gives, and the odd ones hyper's encoder has rules for.
fn responses() -> Vec<(&'static str, Make)> {
    vec![
        ("ok", || {
            with(StatusCode::OK, &[("content-type", "application/json")], full("{}"))
        }),
        ("empty", || with(StatusCode::OK, &[], full(""))),
        ("created", || {
            with(StatusCode::CREATED, &[("x-a", "1"), ("x-a", "2")], full("made"))
        }),
        ("streamed", || {
            with(StatusCode::OK, &[("x-b", "b")], streamed(&["one", "", "two"]))
        }),
        ("streamed with length", || {
            with(StatusCode::OK, &[("content-length", "6")], streamed(&["one", "two"]))
        }),
        ("known with length", || {
            with(StatusCode::OK, &[("content-length", "5")], full("hello"))
        }),
        ("empty with stale length", || {
            with(StatusCode::OK, &[("content-length", "9")], full(""))
        }),
        ("no content", || with(StatusCode::NO_CONTENT, &[("x-c", "c")], full(""))),
        ("no content, streamed", || {
            with(StatusCode::NO_CONTENT, &[], streamed(&["x"]))
        }),
        ("not modified", || {
            with(StatusCode::NOT_MODIFIED, &[("etag", "\"1\"")], full(""))
        }),
        ("te chunked", || {
            with(StatusCode::OK, &[("transfer-encoding", "chunked")], streamed(&["ab"]))
        }),
        ("connection", || {
            with(
                StatusCode::OK,
                &[("connection", "keep-alive"), ("connection", "x")],
                full("k"),
            )
        }),
        ("closing", || {
            with(StatusCode::PAYLOAD_TOO_LARGE, &[("connection", "close")], full("big"))
        }),
        ("own date", || {
            with(StatusCode::OK, &[("date", "Thu, 01 Jan 1970 00:00:00 GMT")], full("d"))
        }),
        ("trailer", || {
            with(StatusCode::OK, &[("trailer", "x-t")], streamed(&["t"]))
        }),
        ("odd status", || {
            with(StatusCode::from_u16(599).unwrap(), &[], full("?"))
        }),
        ("reason", || {
            let mut response = with(StatusCode::OK, &[], full("r"));
            response
                .extensions_mut()
                .insert(hyper::ext::ReasonPhrase::from_static(b"Fine"));
            response
        }),
    ]
}

/// Everything the server wrote until it closed, with the `date` line's value blanked. The input's
/// last request asks to close (a client that closes its side first cancels its request).
async fn answer_bytes(mut client: tokio::io::DuplexStream, input: &[u8]) -> String {
    client.write_all(input).await.unwrap();
    let mut written = Vec::new();
    client.read_to_end(&mut written).await.unwrap();
    let text = String::from_utf8_lossy(&written).into_owned();
    text.split("\r\n")
        .map(|line| if line.starts_with("date: ") { "date: -" } else { line })
        .collect::<Vec<_>>()
        .join("\r\n")
}

async fn by_hyper(input: &[u8], make: Make) -> String {
    let (client, server) = tokio::io::duplex(1 << 20);
    let service = service_fn(move |_request: Request<Incoming>| async move { Ok::<_, Infallible>(make()) });
    let serving = tokio::spawn(hyper_builder().serve_connection(TokioIo::new(server), service));
    let answer = answer_bytes(client, input).await;
    let _ = serving.await;
    answer
}

fn facts() -> Facts {
    Facts {
        peer: "127.0.0.1:1".parse().unwrap(),
        local: None,
        header_timeout: std::time::Duration::from_secs(30),
        max_header_size: MAX_HEADER_SIZE,
    }
}

async fn by_fast_path(input: &[u8], make: Make) -> String {
    let (client, server) = tokio::io::duplex(1 << 20);
    let (_keep, draining) = watch::channel(());
    let serving = tokio::spawn(async move {
        let handle = move |_request: Request<ClientBody>, _connection: Connection| async move { make() };
        match serve(server, handle, facts(), draining).await {
            Served::Closed => {}
            Served::Declined(..) => panic!("the fast path declined a plain request"),
        }
    });
    let answer = answer_bytes(client, input).await;
    serving.await.unwrap();
    answer
}

/// Each response, sent for pipelined requests and for one whose client asks to close, comes out
/// of the fast path byte for byte as out of hyper (but for the date's value).
#[tokio::test]
async fn responses_are_written_as_hyper_writes_them() {
    let inputs: [&[u8]; 2] = [
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\nGET /3 HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\n\r\n",
    ];
    for (name, make) in responses() {
        for input in inputs {
            let hyper = by_hyper(input, make).await;
            let fast = by_fast_path(input, make).await;
            assert_eq!(fast, hyper, "{name}, for {:?}", String::from_utf8_lossy(input));
            assert!(hyper.starts_with("HTTP/1.1 "), "{name}: {hyper}");
        }
    }
}

/// A transfer coding other than `chunked` (the pipeline strips the header from upstream answers,
/// so none reaches here) gets `chunked` appended on its own line. hyper 1.12 also appends it to
/// the next joined header (`connection: close, chunked`), so this one is not compared with it.
#[tokio::test]
async fn a_transfer_coding_gets_chunked_appended_to_its_own_line() {
    let coded: Make = || with(StatusCode::OK, &[("transfer-encoding", "gzip")], streamed(&["zz"]));
    let answer = by_fast_path(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", coded).await;
    assert_eq!(
        answer,
        "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\ndate: -\r\n\r\n2\r\nzz\r\n0\r\n\r\n"
    );
}

/// A body that fails, or that is shorter or longer than its declared length, ends the connection
/// after what was written: the client never takes a cut answer for a whole one.
#[tokio::test]
async fn a_broken_body_ends_the_connection() {
    let failing: Make = || {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"part"))),
            Err("upstream reset".into()),
        ];
        with(
            StatusCode::OK,
            &[],
            StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync(),
        )
    };
    let short: Make = || with(StatusCode::OK, &[("content-length", "10")], streamed(&["abc"]));
    let long: Make = || with(StatusCode::OK, &[("content-length", "2")], streamed(&["abc", "def"]));
    let two = b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\nConnection: close\r\n\r\n";
    let answer = by_fast_path(two, failing).await;
    assert!(answer.ends_with("\r\n\r\n4\r\npart\r\n"), "{answer}");
    let answer = by_fast_path(two, short).await;
    assert!(answer.ends_with("\r\n\r\nabc"), "{answer}");
    let answer = by_fast_path(two, long).await;
    assert!(answer.ends_with("\r\n\r\nab"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
}

/// A declined head hands over the connection with every byte from that head on, and requests
/// before it were answered.
#[tokio::test]
async fn a_declined_head_hands_over_the_bytes_from_it_on() {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let (_keep, draining) = watch::channel(());
    let input = b"GET /1 HTTP/1.1\r\n\r\nPOST /2 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    client.write_all(input).await.unwrap();
    let make: Make = || with(StatusCode::OK, &[], full("ok"));
    let handle = move |_request: Request<ClientBody>, _connection: Connection| async move { make() };
    let Served::Declined(_, rest) = serve(server, handle, facts(), draining).await else {
        panic!("the chunked body was not declined");
    };
    assert_eq!(&rest[..], &input[19..]);
    let mut first = [0u8; 17];
    client.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200 OK\r\n");
}

/// The header timeout closes a connection whose head does not come (paused clock), and a
/// draining server closes an idle one.
#[tokio::test(start_paused = true)]
async fn a_silent_or_idle_connection_is_closed() {
    let make: Make = || with(StatusCode::OK, &[], full("ok"));
    let handle = move |_request: Request<ClientBody>, _connection: Connection| async move { make() };
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let (_keep, draining) = watch::channel(());
    client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let served = serve(server, handle, facts(), draining).await;
    assert!(matches!(served, Served::Closed));

    let (client, server) = tokio::io::duplex(1 << 16);
    let (stop, draining) = watch::channel(());
    let serving = tokio::spawn(async move { matches!(serve(server, handle, facts(), draining).await, Served::Closed) });
    tokio::task::yield_now().await;
    stop.send(()).unwrap();
    assert!(serving.await.unwrap());
    drop(client);
}

/// A client that closes its side while its request is in flight cancels the request (the
/// handler's future is dropped, as hyper drops its service's), and the connection ends.
#[tokio::test]
async fn a_client_that_goes_away_cancels_its_request() {
    struct Dropped(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = dropped.clone();
    let handle = move |_request: Request<ClientBody>, _connection: Connection| {
        let guard = Dropped(flag.clone());
        async move {
            std::future::pending::<()>().await;
            drop(guard);
            with(StatusCode::OK, &[], full("never"))
        }
    };
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let (_keep, draining) = watch::channel(());
    client.write_all(b"GET /slow HTTP/1.1\r\n\r\n").await.unwrap();
    client.shutdown().await.unwrap();
    assert!(matches!(serve(server, handle, facts(), draining).await, Served::Closed));
    assert!(
        dropped.load(std::sync::atomic::Ordering::SeqCst),
        "the request was not cancelled"
    );
}

/// An echo of the request's body, as the pipeline reads one: frames until the end or an error.
async fn echo_body(request: Request<ClientBody>) -> Response<TestBody> {
    let path = request.uri().path().to_string();
    match request.into_body().collect().await {
        Ok(body) => {
            let body = body.to_bytes();
            let text = format!("{path} {} {}", body.len(), String::from_utf8_lossy(&body));
            with(
                StatusCode::OK,
                &[],
                Full::new(Bytes::from(text))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
        }
        Err(_) => with(StatusCode::BAD_REQUEST, &[("connection", "close")], full("cut")),
    }
}

async fn echo_by_hyper(input: &[u8]) -> String {
    let (client, server) = tokio::io::duplex(1 << 20);
    let service = service_fn(|request: Request<Incoming>| async move {
        Ok::<_, Infallible>(echo_body(request.map(ClientBody::Hyper)).await)
    });
    let serving = tokio::spawn(hyper_builder().serve_connection(TokioIo::new(server), service));
    let answer = answer_bytes(client, input).await;
    let _ = serving.await;
    answer
}

async fn echo_by_fast_path(input: &[u8]) -> String {
    let (client, server) = tokio::io::duplex(1 << 20);
    let (_keep, draining) = watch::channel(());
    let serving = tokio::spawn(async move {
        let handle = |request: Request<ClientBody>, _connection: Connection| echo_body(request);
        matches!(serve(server, handle, facts(), draining).await, Served::Closed)
    });
    let answer = answer_bytes(client, input).await;
    assert!(serving.await.unwrap(), "the fast path declined");
    answer
}

/// `Content-Length` bodies, pipelined with bodiless requests, some larger than a read: each
/// handler reads the body hyper would have handed it, and the answers match hyper's byte for byte.
#[tokio::test]
async fn bodies_are_read_as_hyper_reads_them() {
    let large = "x".repeat(100_000);
    let inputs = [
        "POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nConnection: close\r\n\r\n".to_string(),
        format!(
            "PUT /big HTTP/1.1\r\nContent-Length: {}\r\n\r\n{large}POST /zero HTTP/1.1\r\nContent-Length: 00\r\n\r\n\
             PATCH /c HTTP/1.1\r\ncontent-length: 3\r\nConnection: close\r\n\r\nabc",
            large.len()
        ),
    ];
    for input in &inputs {
        let hyper = echo_by_hyper(input.as_bytes()).await;
        let fast = echo_by_fast_path(input.as_bytes()).await;
        assert_eq!(fast, hyper);
        assert!(
            hyper.contains("/big 100000 xxx") || hyper.contains("/a 5 hello"),
            "{hyper}"
        );
    }
}

/// A body cut short by the client closing its side reaches the handler as an error (the pipeline
/// answers `400 bad_request_body`); a body the handler leaves unread closes the connection after
/// the answer, so its bytes are never taken for a next request.
#[tokio::test]
async fn a_cut_or_unread_body_ends_the_connection() {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let (_keep, draining) = watch::channel(());
    let serving = tokio::spawn(async move {
        let handle = |request: Request<ClientBody>, _connection: Connection| echo_body(request);
        serve(server, handle, facts(), draining).await
    });
    client
        .write_all(b"POST /cut HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    client.shutdown().await.unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
    assert!(matches!(serving.await.unwrap(), Served::Closed));

    let unread: Make = || with(StatusCode::PAYLOAD_TOO_LARGE, &[], full("too big"));
    let smuggled = b"POST /x HTTP/1.1\r\nContent-Length: 40\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n\r\n";
    let answer = by_fast_path(smuggled, unread).await;
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}
