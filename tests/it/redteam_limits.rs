//! Red team, limits: `max-body` on every path, the response timeout never cutting an upload that
//! keeps going, ambiguous upstream framing, and malformed chunked request bodies. Each case
//! asserts what the client got AND what the upstream received.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::{TestProxy, Upstream, assert_no_secret, client, text};

const SECRET: &str = "sk_live_LimitsSecret_5519";

async fn proxy_for(upstream: &str, route_extra: &str) -> TestProxy {
    TestProxy::builder()
        .secret("k", SECRET)
        .toml(&format!(
            "[routes.api]\npath = \"/api/{{*rest}}\"\nmethods = [\"GET\", \"POST\"]\nupstream = \"{upstream}/{{rest}}\"\n\
             auth = {{ bearer = \"k\" }}\n{route_extra}\n"
        ))
        .start()
        .await
}

/// Sends raw bytes to `addr` and reads the answer until the server closes or `wait` passes.
async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return String::from_utf8_lossy(&out).into_owned(),
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&out).contains("\r\n\r\n{") && out.ends_with(b"}\n") {
                    return String::from_utf8_lossy(&out).into_owned();
                }
            }
        }
    }
}

fn json_body(response: &str) -> Value {
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body.trim()).unwrap_or(Value::Null)
}

/// A chunked body over `max-body` never reaches the upstream whole: not on a streaming route, not
/// on a route that buffers the body for its schema check.
#[tokio::test]
async fn max_body_holds_for_chunked_bodies_on_every_path() {
    let upstream = Upstream::echo().await;
    for (case, extra) in [
        ("streaming", "max-body = \"1KiB\""),
        ("schema", "max-body = \"1KiB\"\nrequest.schema = { type = \"object\" }"),
    ] {
        let proxy = proxy_for(&upstream.url(), extra).await;
        // Valid JSON of 8 KiB, sent chunked (no Content-Length) in 512-byte pieces.
        let json = format!("{{\"pad\":\"{}\"}}", "x".repeat(8 * 1024));
        let pieces: Vec<Result<Bytes, std::io::Error>> = json
            .as_bytes()
            .chunks(512)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(pieces));
        let response = client()
            .post(proxy.url("/api/upload"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        // The proxy answers 413 and closes; a client still sending may see the close instead.
        if let Ok(response) = response {
            assert_eq!(response.status(), 413, "{case}");
            let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
            assert_eq!(body["code"], "body_too_large", "{case}");
        }
        let complete: Vec<_> = upstream
            .received()
            .into_iter()
            .filter(|r| r.body.len() >= json.len())
            .collect();
        assert!(complete.is_empty(), "{case}: the upstream got the whole oversized body");
        proxy.shutdown().await;
    }
}

/// The response timeout counts from the end of the request body: a slow upload that keeps
/// going is never cut, and an upstream that stays silent after the upload still times out.
#[tokio::test]
async fn response_timeout_starts_when_the_upload_ends() {
    let upstream = Upstream::echo().await;
    let proxy = proxy_for(&upstream.url(), "response-timeout = \"1s\"").await;
    // 8 pieces, 300 ms apart: 2.1 s of upload, twice the response timeout.
    let pieces = futures_util::stream::unfold(0u32, |i| async move {
        if i == 8 {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Some((Ok::<_, std::io::Error>(Bytes::from(format!("piece-{i};"))), i + 1))
    });
    let response = client()
        .post(proxy.url("/api/slow"))
        .body(reqwest::Body::wrap_stream(pieces))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let received = upstream.only();
    assert_eq!(
        String::from_utf8_lossy(&received.body),
        (0..8).map(|i| format!("piece-{i};")).collect::<String>()
    );
    proxy.shutdown().await;

    // An upstream that reads the request and never answers: 504 after the timeout.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = silent.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            held.push(stream);
        }
    });
    let proxy = proxy_for(&format!("http://{silent_addr}"), "response-timeout = \"1s\"").await;
    let response = client().get(proxy.url("/api/x")).send().await.unwrap();
    assert_eq!(response.status(), 504);
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], "upstream_timeout");
    proxy.shutdown().await;
}

/// An upstream answer whose framing is ambiguous could be truncated or smuggled: 502, and none
/// of its bytes reach the client.
#[tokio::test]
async fn ambiguous_upstream_framing_is_refused() {
    let heads = [
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
    ];
    for head in heads {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = format!("{head}b\r\nsmuggled-ok\r\n0\r\n\r\n");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        let proxy = proxy_for(&format!("http://{addr}"), "").await;
        let response = client().get(proxy.url("/api/x")).send().await.unwrap();
        assert_eq!(response.status(), 502, "{head:?}");
        let body = response.text().await.unwrap();
        assert!(!body.contains("smuggled"), "{head:?}: {body}");
        let json: Value = serde_json::from_str(&body).unwrap();
        assert!(
            json["code"] == "upstream_framing" || json["code"] == "upstream_unreachable",
            "{head:?}: {body}"
        );
        proxy.shutdown().await;
    }
}

/// A malformed chunked request body is the client's fault: 400, not a gateway error.
#[tokio::test]
async fn malformed_chunked_request_bodies_get_400() {
    let upstream = Upstream::start(|_| async { text(200, "fine") }).await;
    let proxy = proxy_for(&upstream.url(), "").await;
    let bodies: [&[u8]; 3] = [
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello world, longer than five\r\n0\r\n\r\n",
        b"fffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    ];
    for body in bodies {
        let mut request = format!(
            "POST /api/x HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
            proxy.addr
        )
        .into_bytes();
        request.extend_from_slice(body);
        let answer = raw(proxy.addr, &request, Duration::from_secs(10)).await;
        let status: u16 = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        assert_eq!(status, 400, "{:?}: {answer}", String::from_utf8_lossy(body));
        assert_eq!(json_body(&answer)["code"], "bad_request_body", "{answer}");
        assert_no_secret(&answer, &[SECRET], "400 answer");
    }
    proxy.shutdown().await;
}
