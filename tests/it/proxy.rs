//! The core proxy path: injection, header policy, errors, streaming, redirects, TLS.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::harness::{Recorded, TestProxy, Upstream, assert_no_secret, client, text};

const SECRET: &str = "ghp_TopSecretValue_123";

#[tokio::test]
async fn injects_header_and_query_and_replaces_client_values() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::builder()
        .secret("gh", SECRET)
        .secret("qk", "query key/with&special=chars")
        .toml(&format!(
            r#"[routes.github]
path = "/api/github/{{*rest}}"
methods = ["GET", "POST"]
upstream = "{}/v3/{{rest}}"
headers = {{ Authorization = "Bearer ${{gh}}", X-Api-Version = "2022" }}
query = {{ key = "${{qk}}" }}"#,
            upstream.url()
        ))
        .start()
        .await;

    let response = client()
        .get(proxy.url("/api/github/user/repos?per_page=5&key=client-value&q=a%20b"))
        .header("Authorization", "Bearer client-token")
        .header("X-Api-Version", "client")
        .header("X-Custom", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.only();
    assert_eq!(seen.method, "GET");
    assert_eq!(
        seen.target,
        "/v3/user/repos?per_page=5&q=a%20b&key=query+key%2Fwith%26special%3Dchars"
    );
    assert_eq!(seen.header("authorization"), Some(format!("Bearer {SECRET}").as_str()));
    assert_eq!(seen.header_count("authorization"), 1);
    assert_eq!(seen.header("x-api-version"), Some("2022"));
    assert_eq!(seen.header_count("x-api-version"), 1);
    assert_eq!(seen.header("x-custom"), Some("kept"));
    assert_eq!(seen.header("host"), Some(upstream.addr.to_string().as_str()));
}

#[tokio::test]
async fn auth_shorthands_inject_bearer_and_basic() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::builder()
        .secret("tok", SECRET)
        .secret("pw", "p@ss")
        .toml(&format!(
            "[routes.bearer]\npath = \"/b\"\nupstream = \"{u}/b\"\nauth = {{ bearer = \"tok\" }}\n\
             [routes.basic]\npath = \"/basic\"\nupstream = \"{u}/basic\"\nauth = {{ basic = {{ username = \"me\", password = \"pw\" }} }}\n",
            u = upstream.url()
        ))
        .start()
        .await;
    client().get(proxy.url("/b")).send().await.unwrap();
    client().get(proxy.url("/basic")).send().await.unwrap();
    let received = upstream.received();
    assert_eq!(
        received[0].header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    // base64("me:p@ss")
    assert_eq!(received[1].header("authorization"), Some("Basic bWU6cEBzcw=="));
}

#[tokio::test]
async fn hop_by_hop_cookies_and_client_credentials_are_not_forwarded() {
    let upstream = Upstream::start(|_| async {
        let mut response = text(200, "ok");
        let headers = response.headers_mut();
        headers.insert("set-cookie", "session=upstream".parse().unwrap());
        headers.insert("connection", "x-upstream-hop".parse().unwrap());
        headers.insert("x-upstream-hop", "1".parse().unwrap());
        headers.insert("x-upstream-kept", "1".parse().unwrap());
        response
    })
    .await;
    let proxy = TestProxy::builder()
        .toml(&format!(
            "[routes.plain]\npath = \"/p\"\nupstream = \"{u}/p\"\n\
             [routes.cookies]\npath = \"/c\"\nupstream = \"{u}/c\"\nkeep-set-cookie = true\nforward-headers = [\"Authorization\", \"Cookie\"]\n",
            u = upstream.url()
        ))
        .start()
        .await;

    let response = client()
        .get(proxy.url("/p"))
        .header("Cookie", "mine=1")
        .header("Authorization", "Bearer users-own")
        .header("Connection", "x-client-hop")
        .header("X-Client-Hop", "1")
        .header("Proxy-Authorization", "Basic eA==")
        .header("TE", "trailers")
        .header("X-Client-Kept", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers().get("set-cookie"), None);
    assert_eq!(response.headers().get("x-upstream-hop"), None);
    assert!(response.headers().get("x-upstream-kept").is_some());
    let seen = upstream.only();
    for withheld in ["cookie", "authorization", "x-client-hop", "proxy-authorization", "te"] {
        assert_eq!(seen.header(withheld), None, "{withheld} reached the upstream");
    }
    assert_eq!(seen.header("x-client-kept"), Some("1"));

    let response = client()
        .get(proxy.url("/c"))
        .header("Cookie", "mine=1")
        .header("Authorization", "Bearer users-own")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers().get("set-cookie").unwrap(), "session=upstream");
    let seen = &upstream.received()[1];
    assert_eq!(seen.header("cookie"), Some("mine=1"));
    assert_eq!(seen.header("authorization"), Some("Bearer users-own"));
}

async fn json(response: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value, String) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap();
    let value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    (status, headers, value, body)
}

#[tokio::test]
async fn errors_are_json_with_the_right_status_and_no_secret() {
    let upstream = Upstream::start(|request: Recorded| async move {
        if request.target.starts_with("/slow") {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        text(200, "late")
    })
    .await;
    // A port that refuses connections: bind, read the port, close.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let proxy = TestProxy::builder()
        .secret("key", SECRET)
        .secret_toml("[secrets.absent]\nfile = \"/nonexistent/secretproxy-test\"\n")
        .toml(&format!(
            "[routes.items]\npath = \"/items/{{id}}\"\nmethods = [\"PUT\", \"DELETE\"]\nupstream = \"{u}/items/{{id}}\"\n\
             [routes.down]\npath = \"/down\"\nupstream = \"http://{closed}/x\"\nquery = {{ key = \"${{key}}\" }}\nheaders = {{ X-Key = \"${{key}}\" }}\n\
             [routes.slow]\npath = \"/slow\"\nupstream = \"{u}/slow\"\nresponse-timeout = \"300ms\"\nquery = {{ key = \"${{key}}\" }}\n\
             [routes.missing]\npath = \"/missing\"\nupstream = \"{u}/m\"\nheaders = {{ X-Key = \"${{absent}}\" }}\n",
            u = upstream.url()
        ))
        .start()
        .await;
    let mut bodies = String::new();

    let (status, _, body, raw) = json(client().get(proxy.url("/nowhere")).send().await.unwrap()).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("no_route")));
    bodies += &raw;

    let (status, headers, body, raw) = json(client().get(proxy.url("/items/7")).send().await.unwrap()).await;
    assert_eq!((status, body["code"].as_str()), (405, Some("method_not_allowed")));
    assert_eq!(headers["allow"], "PUT, DELETE");
    bodies += &raw;

    let (status, _, body, raw) = json(client().get(proxy.url("/down")).send().await.unwrap()).await;
    assert_eq!((status, body["code"].as_str()), (502, Some("upstream_unreachable")));
    assert!(
        body["error"].as_str().unwrap().contains("upstream unreachable"),
        "{raw}"
    );
    bodies += &raw;

    let (status, _, body, raw) = json(client().get(proxy.url("/slow")).send().await.unwrap()).await;
    assert_eq!((status, body["code"].as_str()), (504, Some("upstream_timeout")));
    bodies += &raw;

    let (status, _, body, raw) = json(client().get(proxy.url("/missing")).send().await.unwrap()).await;
    assert_eq!(
        (status, body["code"].as_str(), body["secret"].as_str()),
        (503, Some("secret_missing"), Some("absent"))
    );
    assert!(
        body["hint"].as_str().unwrap().contains("/nonexistent/secretproxy-test"),
        "{raw}"
    );
    bodies += &raw;

    // Only the slow route reached the upstream; the 404/405/503 never did.
    assert_eq!(
        upstream
            .received()
            .iter()
            .map(|r| r.target.split('?').next().unwrap().to_string())
            .collect::<Vec<_>>(),
        ["/slow"]
    );
    assert_no_secret(&bodies, &[SECRET], "error bodies");
}

#[tokio::test]
async fn missing_secret_is_picked_up_without_restart() {
    let upstream = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("late");
    let proxy = TestProxy::builder()
        .secret_toml(&format!("[secrets.late]\nfile = {:?}\n", path.display().to_string()))
        .toml(&format!(
            "[routes.r]\npath = \"/r\"\nupstream = \"{}/r\"\nauth = {{ bearer = \"late\" }}\n",
            upstream.url()
        ))
        .start()
        .await;
    assert_eq!(client().get(proxy.url("/r")).send().await.unwrap().status(), 503);
    std::fs::write(&path, "now-present").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = client().get(proxy.url("/r")).send().await.unwrap().status();
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "secret never picked up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(upstream.only().header("authorization"), Some("Bearer now-present"));
}

#[tokio::test]
async fn sse_first_event_arrives_before_upstream_finishes() {
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release_rx = std::sync::Mutex::new(Some(release_rx));
    let upstream = Upstream::start(move |_| {
        let release = release_rx.lock().unwrap().take().expect("one stream");
        async move {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>(4);
            tokio::spawn(async move {
                tx.send(Ok(Frame::data(Bytes::from("data: first\n\n")))).await.unwrap();
                // The rest only comes once the client has seen the first event.
                release.await.unwrap();
                tx.send(Ok(Frame::data(Bytes::from("data: second\n\n")))).await.unwrap();
            });
            let body = BodyExt::boxed(StreamBody::new(tokio_stream_from(rx)));
            let mut response = http::Response::new(body);
            response
                .headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            response
        }
    })
    .await;
    let proxy = TestProxy::builder()
        .secret("k", SECRET)
        .toml(&format!(
            "[routes.sse]\npath = \"/sse\"\nupstream = \"{}/events\"\nauth = {{ bearer = \"k\" }}\n",
            upstream.url()
        ))
        .start()
        .await;
    let response = client().get(proxy.url("/sse")).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("first event in time")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"data: first\n\n");
    release_tx.send(()).unwrap();
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(rest, b"data: second\n\n");
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn redirects_are_passed_back_not_followed() {
    let elsewhere = Upstream::echo().await;
    let location = format!("{}/steal", elsewhere.url());
    let upstream = Upstream::start(move |_| {
        let location = location.clone();
        async move {
            let mut response = text(302, "");
            response.headers_mut().insert("location", location.parse().unwrap());
            response
        }
    })
    .await;
    let proxy = TestProxy::builder()
        .secret("k", SECRET)
        .toml(&format!(
            "[routes.r]\npath = \"/r\"\nupstream = \"{}/r\"\nauth = {{ bearer = \"k\" }}\n",
            upstream.url()
        ))
        .start()
        .await;
    let response = client().get(proxy.url("/r")).send().await.unwrap();
    assert_eq!(response.status(), 302);
    assert_eq!(
        response.headers()["location"],
        format!("{}/steal", elsewhere.url()).as_str()
    );
    assert_eq!(upstream.received().len(), 1);
    assert!(elsewhere.received().is_empty(), "the redirect was followed");
}

#[tokio::test]
async fn request_body_streams_to_the_upstream_intact() {
    let upstream = Upstream::start(|request: Recorded| async move {
        let digest = format!(
            "{}:{}",
            request.body.len(),
            request.body.iter().map(|b| *b as u64).sum::<u64>()
        );
        text(201, digest)
    })
    .await;
    let proxy = TestProxy::builder()
        .toml(&format!(
            "[routes.up]\npath = \"/upload\"\nmethods = [\"POST\"]\nupstream = \"{}/upload\"\n",
            upstream.url()
        ))
        .start()
        .await;
    let payload: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let expected = format!("{}:{}", payload.len(), payload.iter().map(|b| *b as u64).sum::<u64>());
    let response = client().post(proxy.url("/upload")).body(payload).send().await.unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.text().await.unwrap(), expected);
    let seen = upstream.only();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.header("content-length"), Some("8388608"));
}

/// A self-signed certificate for `localhost`: the upstream's rustls server config, and the
/// certificate as a PEM file in `dir` for the route's `ca-file`.
fn localhost_tls(dir: &std::path::Path) -> (tokio_rustls::rustls::ServerConfig, std::path::PathBuf) {
    secretproxy::upstream::install_crypto_provider();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, cert.cert.pem()).unwrap();
    let key = tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let tls = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    (tls, ca_path)
}

#[tokio::test]
async fn https_upstream_is_verified_and_ca_file_trusts_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, ca_path) = localhost_tls(dir.path());
    let upstream = Upstream::start_tls(std::sync::Arc::new(tls), |_| async { text(200, "over tls") }).await;
    let port = upstream.addr.port();
    let proxy = TestProxy::builder()
        .secret("k", SECRET)
        .toml(&format!(
            "[routes.trusted]\npath = \"/trusted\"\nupstream = \"https://localhost:{port}/t\"\nca-file = {:?}\nauth = {{ bearer = \"k\" }}\n\
             [routes.untrusted]\npath = \"/untrusted\"\nupstream = \"https://localhost:{port}/u\"\nauth = {{ bearer = \"k\" }}\n",
            ca_path.display().to_string()
        ))
        .start()
        .await;
    let response = client().get(proxy.url("/trusted")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "over tls");
    assert_eq!(
        upstream.only().header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );

    let response = client().get(proxy.url("/untrusted")).send().await.unwrap();
    assert_eq!(response.status(), 502);
    let body = response.text().await.unwrap();
    assert_no_secret(&body, &[SECRET], "TLS error body");
    assert_eq!(
        upstream.received().len(),
        1,
        "the unverified upstream received a request"
    );
}

/// The upstream client keeps HTTP/1.1 connections alive across requests, and speaks HTTP/2 to an
/// upstream that offers it by ALPN, multiplexing concurrent requests on one connection.
#[tokio::test]
async fn upstream_connections_are_reused_and_h2_is_used_when_offered() {
    let plain = Upstream::start(|_| async { text(200, "plain") }).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut tls, ca_path) = localhost_tls(dir.path());
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let h2 = Upstream::start_tls(std::sync::Arc::new(tls), |_| async { text(200, "over h2") }).await;
    let proxy = TestProxy::builder()
        .secret("k", SECRET)
        .toml(&format!(
            "[routes.plain]\npath = \"/plain/{{*rest}}\"\nupstream = \"{}/{{rest}}\"\nauth = {{ bearer = \"k\" }}\n\
             [routes.h2]\npath = \"/h2/{{*rest}}\"\nupstream = \"https://localhost:{}/{{rest}}\"\nca-file = {:?}\nauth = {{ bearer = \"k\" }}\n",
            plain.url(),
            h2.addr.port(),
            ca_path.display().to_string()
        ))
        .start()
        .await;
    let http = client();
    for i in 0..10 {
        let response = http.get(proxy.url(&format!("/plain/{i}"))).send().await.unwrap();
        assert_eq!(response.text().await.unwrap(), "plain");
    }
    let reused = plain.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(reused, 1, "ten sequential requests used {reused} upstream connections");
    assert!(plain.received().iter().all(|r| r.version == http::Version::HTTP_11));

    let requests = (0..20).map(|i| {
        let http = http.clone();
        let url = proxy.url(&format!("/h2/{i}"));
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    });
    for body in futures_util::future::join_all(requests).await {
        assert_eq!(body, "over h2");
    }
    let received = h2.received();
    assert_eq!(received.len(), 20);
    assert!(
        received.iter().all(|r| r.version == http::Version::HTTP_2),
        "{received:?}"
    );
    assert!(
        received
            .iter()
            .all(|r| r.header("authorization") == Some(format!("Bearer {SECRET}").as_str()))
    );
    let connections = h2.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        connections <= 2,
        "20 concurrent h2 requests used {connections} connections"
    );
    proxy.shutdown().await;
}

/// Browser-only headers (the calling page, fetch metadata, client hints) do not reach the third
/// party by default; a route's own `strip-headers` replaces the default list.
#[tokio::test]
async fn browser_headers_are_stripped_before_the_upstream() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::builder()
        .secret("k", SECRET)
        .toml(&format!(
            "[server]\nallowed-origins = [\"http://localhost:5173\"]\n\
             [routes.default]\npath = \"/d/{{*rest}}\"\nupstream = \"{u}/{{rest}}\"\nauth = {{ bearer = \"k\" }}\n\
             [routes.custom]\npath = \"/c/{{*rest}}\"\nupstream = \"{u}/{{rest}}\"\nauth = {{ bearer = \"k\" }}\n\
             strip-headers = [\"User-Agent\", \"X-Debug-*\"]\nheaders = {{ User-Agent = \"my-app/1.0\" }}\n",
            u = upstream.url()
        ))
        .start()
        .await;
    let browser = |url: String| {
        client()
            .get(url)
            .header("origin", "http://localhost:5173")
            .header("referer", "http://localhost:5173/page?user=42")
            .header("sec-fetch-site", "same-site")
            .header("sec-fetch-mode", "cors")
            .header("sec-ch-ua-platform", "\"Linux\"")
            .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/156")
            .header("x-debug-trace", "1")
            .header("accept-language", "nb-NO")
    };
    assert_eq!(browser(proxy.url("/d/x")).send().await.unwrap().status(), 200);
    assert_eq!(browser(proxy.url("/c/x")).send().await.unwrap().status(), 200);
    let received = upstream.received();
    let default = &received[0];
    for gone in [
        "origin",
        "referer",
        "sec-fetch-site",
        "sec-fetch-mode",
        "sec-ch-ua-platform",
    ] {
        assert_eq!(default.header(gone), None, "default route forwarded {gone}");
    }
    assert_eq!(default.header("accept-language"), Some("nb-NO"));
    assert!(default.header("user-agent").unwrap().contains("Chrome"));
    let custom = &received[1];
    assert_eq!(custom.header("user-agent"), Some("my-app/1.0"), "the injected one wins");
    assert_eq!(custom.header("x-debug-trace"), None);
    assert_eq!(
        custom.header("origin"),
        Some("http://localhost:5173"),
        "its own list replaced the default"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn example_config_is_valid() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml.example")).unwrap();
    let config = secretproxy::config::Config::parse(&text, "proxy.toml.example").unwrap_or_else(|e| panic!("{e}"));
    assert!(!config.routes.is_empty());
    assert!(!config.secrets.is_empty());
}

/// Writes at most 16 bytes at a time with a pause after each, so TLS records reach the reader
/// split across many TCP segments.
struct Trickle {
    tcp: tokio::net::TcpStream,
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl tokio::io::AsyncRead for Trickle {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Trickle {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Some(pause) = self.pause.as_mut() {
            std::task::ready!(pause.as_mut().poll(cx));
            self.pause = None;
        }
        let size = buf.len().min(16);
        let written = std::task::ready!(std::pin::Pin::new(&mut self.tcp).poll_write(cx, &buf[..size]))?;
        self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(1))));
        std::task::Poll::Ready(Ok(written))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A TLS upstream that trickles its bytes (records split across TCP segments, a chunked body
/// with pauses) and then closes its idle keep-alive connection: the upstream client reads each
/// record as it completes, notices the close while the connection sits in the pool (and closes
/// its own side), and the next request goes on a fresh connection.
#[tokio::test]
async fn a_trickling_tls_upstream_is_read_to_the_end_and_its_close_is_noticed() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let (tls, ca_path) = localhost_tls(dir.path());
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (heads, mut seen) = mpsc::unbounded_channel::<String>();
    let (ended, mut closed) = mpsc::unbounded_channel::<bool>();
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tcp.set_nodelay(true).unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let (acceptor, heads, ended) = (acceptor.clone(), heads.clone(), ended.clone());
            tokio::spawn(async move {
                let mut tls = acceptor.accept(Trickle { tcp, pause: None }).await.unwrap();
                let mut buffer = Vec::new();
                for _ in 0..2 {
                    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 512];
                        let n = tls.read(&mut chunk).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                    }
                    let end = buffer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let head: Vec<u8> = buffer.drain(..end).collect();
                    heads.send(String::from_utf8(head).unwrap()).unwrap();
                    tls.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                        .await
                        .unwrap();
                    tls.flush().await.unwrap();
                    for part in 0..3 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        tls.write_all(format!("7\r\npart {part}\n\r\n").as_bytes())
                            .await
                            .unwrap();
                        tls.flush().await.unwrap();
                    }
                    tls.write_all(b"0\r\n\r\n").await.unwrap();
                    tls.flush().await.unwrap();
                }
                // Closes the idle connection (close_notify, then FIN), then waits for the
                // client to close its side.
                tls.shutdown().await.unwrap();
                let mut rest = [0u8; 64];
                let closed_by_client = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut rest))
                    .await
                    .is_ok();
                ended.send(closed_by_client).unwrap();
            });
        }
    });
    let proxy = TestProxy::builder()
        .secret("k", SECRET)
        .toml(&format!(
            "[routes.slow]\npath = \"/slow\"\nupstream = \"https://localhost:{port}/t\"\nca-file = {:?}\nauth = {{ bearer = \"k\" }}\n",
            ca_path.display().to_string()
        ))
        .start()
        .await;
    let client = client();
    for _ in 0..2 {
        let response = client.get(proxy.url("/slow")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "part 0\npart 1\npart 2\n");
        let head = seen.recv().await.unwrap();
        assert!(head.starts_with("GET /t HTTP/1.1\r\n"), "{head}");
        assert!(head.contains(&format!("authorization: Bearer {SECRET}\r\n")), "{head}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the second request reused the connection"
    );
    assert!(
        closed.recv().await.unwrap(),
        "the proxy never closed its side of the connection the upstream closed"
    );
    let response = client.get(proxy.url("/slow")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert_eq!(body, "part 0\npart 1\npart 2\n");
    assert_no_secret(&body, &[SECRET], "response body");
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "a fresh connection after the close");
}
