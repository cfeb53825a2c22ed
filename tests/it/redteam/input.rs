//! Red team, hostile input: path tricks, smuggling, oversized headers and bodies, slow clients,
//! connection floods; and secrets coming back from the upstream. Helpers are in the parent.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{SECRET, assert_untouched, code, raw, read_all, setup, status};
use crate::harness::{Daemon, Recorded, TestProxy, Upstream, assert_no_secret, client, text};

#[tokio::test]
async fn path_tricks_are_refused_before_matching() {
    let (upstream, proxy) = setup("").await;
    let up = upstream.addr;
    let targets = [
        "/api/../admin".to_string(),
        "/api/x/../../admin".to_string(),
        "/api/./x".to_string(),
        "/api/%2e%2e/admin".to_string(),
        "/api/%2E%2e/admin".to_string(),
        "/api/.%2e/admin".to_string(),
        "/api/%252e%252e/admin".to_string(),
        "/api/x%2f..%2fadmin".to_string(),
        "/api/x%2F..".to_string(),
        "/api/x%5c..%5cadmin".to_string(),
        "/api/x\\..\\admin".to_string(),
        "/api//admin".to_string(),
        "//api/x".to_string(),
        "/api/..;/admin".to_string(),
        "/api/x;a=b".to_string(),
        "/api/x%00".to_string(),
        "/api/x%0d%0aX-Injected:%201".to_string(),
        "/api/%c0%ae%c0%ae/admin".to_string(),
        format!("http://{up}/v1/admin"),
        format!("http://127.0.0.1:{}/api/x", proxy.addr.port()),
    ];
    for target in &targets {
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            proxy.addr
        );
        let (response, _) = raw(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(status(&response), 400, "{target}: {response}");
        assert_no_secret(&response, &[SECRET], "path refusal");
    }
    let connect = format!("CONNECT {up} HTTP/1.1\r\nHost: {up}\r\n\r\n");
    let (response, _) = raw(proxy.addr, connect.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status(&response), 400, "CONNECT: {response}");
    let control = format!("GET /api/a\x01b HTTP/1.1\r\nHost: {}\r\n\r\n", proxy.addr);
    let (response, _) = raw(proxy.addr, control.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status(&response), 400, "raw control character: {response}");
    assert_untouched(&upstream, "path tricks");
}

#[tokio::test]
async fn smuggling_headers_get_400_and_a_closed_connection() {
    let (upstream, proxy) = setup("").await;
    let host = proxy.addr;
    let smuggled = format!("GET /api/smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let cases = [
        format!(
            "POST /api/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /api/x HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /api/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nContent-Length: 60\r\n\r\nhello{smuggled}"
        ),
        format!("POST /api/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5, 60\r\n\r\nhello{smuggled}"),
    ];
    for case in &cases {
        let (response, closed) = raw(proxy.addr, case.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(status(&response), 400, "{case}\n=> {response}");
        assert!(closed, "the connection stayed open after:\n{case}");
        assert_eq!(
            response.matches("HTTP/1.1").count(),
            1,
            "the smuggled request was answered: {response}"
        );
    }
    // After a clean first request on a kept-alive connection, an ambiguous second one is refused too.
    let pipelined = format!(
        "GET /api/first HTTP/1.1\r\nHost: {host}\r\n\r\nPOST /api/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    let (response, closed) = raw(proxy.addr, pipelined.as_bytes(), Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("HTTP/1.1 400"), "{response}");
    assert!(closed);
    let received = upstream.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].target, "/v1/first");
}

#[tokio::test]
async fn oversized_header_and_body_are_refused() {
    let (upstream, proxy) = setup("").await;
    let big = "a".repeat(40 * 1024);
    let request = format!("GET /api/x HTTP/1.1\r\nHost: {}\r\nX-Big: {big}\r\n\r\n", proxy.addr);
    let (response, closed) = raw(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status(&response), 431, "{response}");
    assert!(closed);

    let declared = client()
        .post(proxy.url("/api/upload"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), 413);
    let body: Value = serde_json::from_str(&declared.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], "body_too_large");
    assert_untouched(&upstream, "oversized header and declared body");

    // Without a Content-Length the body is counted while it streams and cut off at the limit.
    let chunks = futures_util::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 512]))));
    let streamed = client()
        .post(proxy.url("/api/upload"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 413);
    for seen in upstream.received() {
        assert!(seen.body.len() <= 1024, "the upstream got {} bytes", seen.body.len());
    }
    // Within the limit is fine.
    let ok = client()
        .post(proxy.url("/api/upload"))
        .body(vec![b'x'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn slow_client_is_cut_off_while_others_are_served() {
    let (upstream, proxy) = setup("").await;
    let started = Instant::now();
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(b"GET /api/slow HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    // Others are served while the slow client dawdles.
    for _ in 0..5 {
        let response = client().get(proxy.url("/api/fast")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let (_, closed) = read_all(&mut slow, Duration::from_secs(5)).await;
    assert!(closed, "the slow client was never disconnected");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    assert!(upstream.received().iter().all(|r| r.target == "/v1/fast"));

    // An idle keep-alive connection is closed by the same timer.
    let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!("GET /api/once HTTP/1.1\r\nHost: {}\r\n\r\n", proxy.addr);
    idle.write_all(request.as_bytes()).await.unwrap();
    let (response, closed) = read_all(&mut idle, Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(closed, "the idle keep-alive connection stayed open");
}

#[tokio::test]
async fn connections_over_the_cap_get_503_and_the_daemon_recovers() {
    let (upstream, proxy) = setup("max-connections = 2").await;
    let first = TcpStream::connect(proxy.addr).await.unwrap();
    let second = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let request = format!("GET /api/x HTTP/1.1\r\nHost: {}\r\n\r\n", proxy.addr);
    let (response, closed) = raw(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status(&response), 503, "{response}");
    assert_eq!(code(&response), "too_many_connections");
    assert!(closed);
    assert_untouched(&upstream, "connection cap");
    drop(first);
    drop(second);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = client().get(proxy.url("/api/after")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

/// The connection cap holds for the whole daemon, not per worker: with three workers accepting
/// on the socket, two open connections (wherever they landed) fill a cap of two.
#[tokio::test]
async fn the_connection_cap_is_shared_by_every_worker() {
    use tokio::io::AsyncReadExt;
    let upstream = Upstream::echo().await;
    let config = format!(
        "[server]\nmax-connections = 2\n[routes.api]\npath = \"/api/{{*rest}}\"\nupstream = \"{}/{{rest}}\"\n",
        upstream.url()
    );
    let daemon = Daemon::start(&config, &[("SECRETPROXY_WORKER_THREADS", "3")]);
    let request = format!("GET /api/x HTTP/1.1\r\nHost: {}\r\n\r\n", daemon.addr);
    // Two connections, each answered once and kept open: both hold their place under the cap.
    // (Connections arriving at the same moment may take their places in any order, since each
    // worker accepts on its own thread; one after the other they cannot.)
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(daemon.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        while !String::from_utf8_lossy(&answer).contains("\"target\"") {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(status(&String::from_utf8_lossy(&answer)), 200);
        open.push(stream);
    }
    let (response, closed) = raw(daemon.addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(status(&response), 503, "{response}");
    assert_eq!(code(&response), "too_many_connections");
    assert!(closed);
    drop(open);
    let (status_code, logs) = daemon.terminate();
    assert!(status_code.success(), "{logs}");
    assert!(logs.contains("too many open connections"), "{logs}");
}

#[tokio::test]
async fn an_upstream_that_echoes_the_secret_is_redacted_even_across_chunks() {
    let upstream = Upstream::start(|request: Recorded| async move {
        let auth = request.header("authorization").unwrap_or("").to_string();
        let encoding = request.header("accept-encoding").unwrap_or("").to_string();
        let key = auth.trim_start_matches("Bearer ").to_string();
        let encoded: String = url::form_urlencoded::byte_serialize(key.as_bytes()).collect();
        // The secret comes back split over several frames, in a header and URL-encoded.
        let (head, tail) = key.split_at(7);
        let pieces = vec![
            format!("accept-encoding={encoding}; you sent: {head}"),
            format!("{tail} and again "),
            format!("{encoded} {key}"),
        ];
        let frames = futures_util::stream::iter(
            pieces
                .into_iter()
                .map(|p| Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper::body::Frame::data(Bytes::from(p)))),
        );
        let mut response = http::Response::new(http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(frames)));
        response.headers_mut().insert("x-debug-auth", auth.parse().unwrap());
        response
    })
    .await;
    let proxy = TestProxy::builder()
        .secret("k", SECRET)
        .toml(&format!(
            "[routes.echo]\npath = \"/echo\"\nupstream = \"{u}/e\"\nauth = {{ bearer = \"k\" }}\n\
             [routes.raw]\npath = \"/raw\"\nupstream = \"{u}/r\"\nauth = {{ bearer = \"k\" }}\nscrub-response = false\n",
            u = upstream.url()
        ))
        .start()
        .await;
    let response = client()
        .get(proxy.url("/echo"))
        .header("Accept-Encoding", "gzip, br")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-debug-auth"], "Bearer [REDACTED]");
    let mut seen = format!("{:?}", response.headers());
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert_no_secret(&seen, &[SECRET], "scrubbed response");
    assert!(seen.contains("accept-encoding=identity"), "{seen}");
    assert_eq!(seen.matches("[REDACTED]").count(), 4, "{seen}");

    // Switched off per route, the echo passes (which is what proves the scrubbing above).
    let unscrubbed = crate::harness::get_text(&proxy.url("/raw")).await;
    assert!(unscrubbed.contains(SECRET));
}

#[tokio::test]
async fn an_undecodable_answer_on_a_scrubbing_route_is_refused() {
    let upstream = Upstream::start(|_| async {
        let mut response = text(200, vec![0x1f, 0x8b, 0x08, 0x00]);
        response
            .headers_mut()
            .insert("content-encoding", "compress".parse().unwrap());
        response
    })
    .await;
    let proxy = TestProxy::builder()
        .secret("k", SECRET)
        .toml(&format!(
            "[routes.z]\npath = \"/z\"\nupstream = \"{}/z\"\nauth = {{ bearer = \"k\" }}\n",
            upstream.url()
        ))
        .start()
        .await;
    let response = client().get(proxy.url("/z")).send().await.unwrap();
    assert_eq!(response.status(), 502);
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], "upstream_unscrubbable");
}

#[tokio::test]
async fn an_unreachable_upstream_with_a_query_secret_leaks_nothing() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let daemon = Daemon::start(
        &format!(
            "[secrets.k]\nenv = \"REDTEAM_KEY\"\n\
             [routes.down]\npath = \"/down/{{*rest}}\"\nupstream = \"http://{closed}/v1/{{rest}}\"\nquery = {{ api_key = \"${{k}}\" }}\n"
        ),
        &[("REDTEAM_KEY", SECRET), ("RUST_BACKTRACE", "1")],
    );
    let response = client()
        .get(daemon.url(&format!("/down/x?api_key={SECRET}&q=1")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body = response.text().await.unwrap();
    assert!(body.contains("upstream_unreachable"), "{body}");
    assert_no_secret(&body, &[SECRET], "error body");
    let (_, logs) = daemon.terminate();
    assert!(logs.contains("api_key=[REDACTED]"), "{logs}");
    // The client's own copy of the value in the URL is its business; the injected one is not
    // logged anywhere else.
    let without_client_query = logs.replace(&format!("api_key={SECRET}&q=1"), "");
    assert_no_secret(&without_client_query, &[SECRET], "daemon logs");
}

/// One keep-alive connection whose requests go to the fast path (bodiless or with a
/// `Content-Length` body) and then to hyper (the first chunked one, and every one after it): each
/// is answered in order, the upstream sees each once with its body, the secret the upstream echoes
/// is redacted on both paths, and `Connection: close` closes.
#[tokio::test]
async fn a_connection_moves_from_the_fast_path_to_hyper_with_every_answer_in_order() {
    let upstream = Upstream::start(|request: Recorded| async move {
        let auth = request.header("authorization").unwrap_or("").to_string();
        let body = serde_json::json!({
            "method": request.method.as_str(),
            "target": request.target,
            "body": String::from_utf8_lossy(&request.body),
            "auth": auth,
        });
        text(200, body.to_string())
    })
    .await;
    let proxy = TestProxy::builder()
        .secret("k", SECRET)
        .toml(&format!(
            "[routes.api]\npath = \"/api/{{*rest}}\"\nmethods = [\"GET\", \"POST\", \"DELETE\"]\n\
             upstream = \"{}/v1/{{rest}}\"\nauth = {{ bearer = \"k\" }}\n",
            upstream.url()
        ))
        .start()
        .await;
    let host = proxy.addr;
    let requests = format!(
        "GET /api/one HTTP/1.1\r\nHost: {host}\r\n\r\n\
         DELETE /api/two?x=1 HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n\
         POST /api/three HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n\r\nhello\
         POST /api/four HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nworld\r\n0\r\n\r\n\
         GET /api/five HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    );
    let (response, closed) = raw(proxy.addr, requests.as_bytes(), Duration::from_secs(10)).await;
    assert!(
        closed,
        "the connection stayed open after `Connection: close`: {response}"
    );
    assert_eq!(response.matches("HTTP/1.1 200 OK\r\n").count(), 5, "{response}");
    let targets = ["/v1/one", "/v1/two?x=1", "/v1/three", "/v1/four", "/v1/five"];
    let order: Vec<usize> = targets
        .iter()
        .map(|target| {
            response
                .find(target)
                .unwrap_or_else(|| panic!("{target} missing: {response}"))
        })
        .collect();
    assert!(
        order.windows(2).all(|pair| pair[0] < pair[1]),
        "answers out of order: {response}"
    );
    assert!(response.contains("\"body\":\"hello\""), "{response}");
    assert!(response.contains("\"body\":\"world\""), "{response}");
    assert_eq!(response.matches("Bearer [REDACTED]").count(), 5, "{response}");
    assert_eq!(response.matches("connection: close").count(), 1, "{response}");
    assert_no_secret(&response, &[SECRET], "answers on both paths");
    let received: Vec<String> = upstream.received().into_iter().map(|r| r.target).collect();
    assert_eq!(received, targets);
}
