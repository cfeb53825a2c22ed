//! Red team: one case per known way a local key proxy fails. Each case asserts the refusal AND
//! that the upstream received nothing (or, for scrubbing, that the client never saw the secret).
//! Raw TCP clients are used where an HTTP library would normalise the attack away.
//!
//! This file: who may call (origins, CORS, fetch metadata, Host, client token, remote listen).
//! [`input`]: hostile input (paths, smuggling, sizes, slow clients, connection floods) and
//! secrets coming back (echoing upstreams, upstream errors).

mod input;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Recorded, TestProxy, Upstream, assert_no_secret, binary, client, text};

const SECRET: &str = "sk_live_RedTeamSecret_7781";
const ALLOWED: &str = "http://app.localhost:5173";
const EVIL: &str = "https://evil.example";

/// An echo upstream and a proxy with one allowed origin, a 1 KiB body limit and a 1 s header
/// timeout; `extra` is appended to `[server]`.
async fn setup(extra: &str) -> (Upstream, TestProxy) {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::builder()
        .secret("k", SECRET)
        .toml(&format!(
            "[server]\nallowed-origins = [\"{ALLOWED}\"]\nheader-timeout = \"1s\"\n{extra}\n\
             [routes.api]\npath = \"/api/{{*rest}}\"\nmethods = [\"GET\", \"POST\"]\nupstream = \"{}/v1/{{rest}}\"\n\
             auth = {{ bearer = \"k\" }}\nmax-body = \"1KiB\"\n",
            upstream.url()
        ))
        .start()
        .await;
    (upstream, proxy)
}

/// Sends raw bytes, then reads until the server closes or `wait` passes. Returns the text read
/// and whether the server closed the connection.
async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_all(&mut stream, wait).await
}

async fn read_all(stream: &mut TcpStream, wait: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
        }
    }
}

fn status(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

fn code(response: &str) -> String {
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str::<Value>(body.trim()).map_or(String::new(), |v| v["code"].as_str().unwrap_or("").to_string())
}

fn assert_untouched(upstream: &Upstream, case: &str) {
    let received: Vec<Recorded> = upstream.received();
    assert!(received.is_empty(), "{case}: the upstream was contacted: {received:?}");
}

#[tokio::test]
async fn forbidden_origin_is_refused_for_get_post_and_preflight() {
    let (upstream, proxy) = setup("").await;
    let get = client()
        .get(proxy.url("/api/user"))
        .header("Origin", EVIL)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 403);
    assert!(get.headers().get("access-control-allow-origin").is_none());
    let body: Value = serde_json::from_str(&get.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], "origin_not_allowed");
    let post = client()
        .post(proxy.url("/api/charge"))
        .header("Origin", EVIL)
        .header("Content-Type", "text/plain")
        .body("amount=100")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 403);
    let null_origin = client()
        .get(proxy.url("/api/user"))
        .header("Origin", "null")
        .send()
        .await
        .unwrap();
    assert_eq!(null_origin.status(), 403);
    let preflight = client()
        .request(reqwest::Method::OPTIONS, proxy.url("/api/user"))
        .header("Origin", EVIL)
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 403);
    assert!(preflight.headers().get("access-control-allow-origin").is_none());
    let text = preflight.text().await.unwrap();
    assert_no_secret(&text, &[SECRET], "refusal body");
    assert_untouched(&upstream, "forbidden origin");
}

#[tokio::test]
async fn preflight_from_an_allowed_origin_is_answered_by_the_proxy() {
    let (upstream, proxy) = setup("").await;
    let preflight = client()
        .request(reqwest::Method::OPTIONS, proxy.url("/api/user"))
        .header("Origin", ALLOWED)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "content-type, x-trace, authorization, host",
        )
        .header("Access-Control-Request-Private-Network", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], ALLOWED);
    assert_eq!(h["vary"], "Origin");
    assert_eq!(h["access-control-allow-methods"], "GET, POST, HEAD");
    assert_eq!(h["access-control-allow-headers"], "content-type, x-trace");
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(h["access-control-allow-private-network"], "true");
    assert_untouched(&upstream, "preflight");

    // The actual request carries the proxy's CORS headers.
    let get = client()
        .get(proxy.url("/api/user"))
        .header("Origin", ALLOWED)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    assert_eq!(get.headers()["access-control-allow-origin"], ALLOWED);
    assert!(get.headers().get_all("vary").iter().any(|v| v == "Origin"));
}

#[tokio::test]
async fn upstream_cors_headers_are_replaced_and_routes_narrow_origins() {
    let upstream = Upstream::start(|_| async {
        let mut response = text(200, "ok");
        response
            .headers_mut()
            .insert("access-control-allow-origin", "*".parse().unwrap());
        response
            .headers_mut()
            .insert("access-control-allow-credentials", "true".parse().unwrap());
        response
    })
    .await;
    let other = "http://other.localhost:3000";
    let proxy = TestProxy::builder()
        .secret("k", SECRET)
        .toml(&format!(
            "[server]\nallowed-origins = [\"{ALLOWED}\", \"{other}\"]\n\
             [routes.wide]\npath = \"/wide\"\nupstream = \"{u}/w\"\nauth = {{ bearer = \"k\" }}\n\
             [routes.narrow]\npath = \"/narrow\"\nupstream = \"{u}/n\"\nauth = {{ bearer = \"k\" }}\nallowed-origins = [\"{ALLOWED}\"]\n",
            u = upstream.url()
        ))
        .start()
        .await;
    let no_origin = client().get(proxy.url("/wide")).send().await.unwrap();
    assert!(no_origin.headers().get("access-control-allow-origin").is_none());
    assert!(no_origin.headers().get("access-control-allow-credentials").is_none());
    let wide = client()
        .get(proxy.url("/wide"))
        .header("Origin", other)
        .send()
        .await
        .unwrap();
    assert_eq!(wide.headers()["access-control-allow-origin"], other);
    let narrow = client()
        .get(proxy.url("/narrow"))
        .header("Origin", other)
        .send()
        .await
        .unwrap();
    assert_eq!(narrow.status(), 403);
    assert_eq!(upstream.received().len(), 2, "the narrowed route was not forwarded");
}

#[tokio::test]
async fn cross_site_fetch_metadata_without_origin_is_refused() {
    let (upstream, proxy) = setup("").await;
    for site in ["cross-site", "same-site"] {
        for method in [reqwest::Method::GET, reqwest::Method::POST] {
            let response = client()
                .request(method.clone(), proxy.url("/api/user"))
                .header("Sec-Fetch-Site", site)
                .header("Sec-Fetch-Mode", "no-cors")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 403, "{method} {site}");
            let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
            assert_eq!(body["code"], "cross_site");
        }
    }
    assert_untouched(&upstream, "cross-site metadata");
}

#[tokio::test]
async fn foreign_host_is_refused() {
    let (upstream, proxy) = setup("").await;
    let port = proxy.addr.port();
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("localhost:{}", port.wrapping_add(1)),
        format!("127.0.0.2:{port}"),
    ] {
        let request = format!("GET /api/user HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let (response, _) = raw(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(status(&response), 403, "{host}: {response}");
        assert_eq!(code(&response), "host_not_allowed");
    }
    let no_host = b"GET /api/user HTTP/1.0\r\n\r\n";
    let (response, _) = raw(proxy.addr, no_host, Duration::from_secs(5)).await;
    assert_eq!(status(&response), 403, "{response}");
    assert_untouched(&upstream, "foreign host");
    // The listen names themselves work.
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let request = format!("GET /api/ok HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let (response, _) = raw(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(status(&response), 200, "{host}: {response}");
    }
}

#[tokio::test]
async fn client_token_is_required_compared_and_removed() {
    let upstream = Upstream::echo().await;
    let token = "ct_ClientToken_0099";
    let proxy = TestProxy::builder()
        .secret("k", SECRET)
        .secret("ct", token)
        .toml(&format!(
            "[server]\nclient-token = \"${{ct}}\"\nallowed-origins = [\"{ALLOWED}\"]\n\
             [routes.api]\npath = \"/api/{{*rest}}\"\nupstream = \"{}/v1/{{rest}}\"\nauth = {{ bearer = \"k\" }}\n",
            upstream.url()
        ))
        .start()
        .await;
    let none = client().get(proxy.url("/api/a")).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let wrong = client()
        .get(proxy.url("/api/a"))
        .header("X-Secretproxy-Token", "ct_ClientToken_0098")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let body = wrong.text().await.unwrap();
    assert_no_secret(&body, &[token, SECRET], "token refusal");
    assert_untouched(&upstream, "client token");

    let by_header = client()
        .get(proxy.url("/api/b"))
        .header("X-Secretproxy-Token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(by_header.status(), 200);
    let by_bearer = client()
        .get(proxy.url("/api/c"))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(by_bearer.status(), 200);
    for seen in upstream.received() {
        assert!(seen.header("x-secretproxy-token").is_none());
        assert_eq!(seen.header("authorization"), Some(format!("Bearer {SECRET}").as_str()));
        assert_no_secret(
            &format!("{:?} {}", seen.headers, seen.target),
            &[token],
            "forwarded request",
        );
    }
    // A preflight carries no credentials and is answered without the token.
    let preflight = client()
        .request(reqwest::Method::OPTIONS, proxy.url("/api/a"))
        .header("Origin", ALLOWED)
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "x-secretproxy-token")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(
        preflight.headers()["access-control-allow-headers"],
        "x-secretproxy-token"
    );
}

#[tokio::test]
async fn non_browser_clients_can_be_turned_off() {
    let (upstream, proxy) = setup("allow-non-browser = false").await;
    let curl = client().get(proxy.url("/api/a")).send().await.unwrap();
    assert_eq!(curl.status(), 403);
    let body: Value = serde_json::from_str(&curl.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], "non_browser");
    assert_untouched(&upstream, "non-browser");
    let page = client()
        .get(proxy.url("/api/a"))
        .header("Origin", ALLOWED)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
}

#[tokio::test]
async fn remote_listen_is_refused_without_opt_in_and_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        "[routes.a]\npath = \"/a\"\nupstream = \"https://example.com/\"\n",
    )
    .unwrap();
    let output = binary()
        .args(["serve", "--listen", "0.0.0.0:0", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("allow-remote"), "{stderr}");

    std::fs::write(&config, "[server]\nlisten = \"0.0.0.0:8787\"\nallow-remote = true\n").unwrap();
    let output = binary().args(["serve", "--config"]).arg(&config).output().unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("server.listen") && stderr.contains("client-token"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_proxys_own_origin_is_same_origin_but_a_lookalike_is_not() {
    let (upstream, proxy) = setup("").await;
    let own = format!("http://{}", proxy.addr);
    let response = client()
        .post(proxy.url("/api/own"))
        .header("Origin", &own)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let lookalike = format!("http://localhost:{}", proxy.addr.port());
    let response = client()
        .post(proxy.url("/api/lookalike"))
        .header("Origin", &lookalike)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let https = format!("https://{}", proxy.addr);
    let response = client()
        .post(proxy.url("/api/tls"))
        .header("Origin", &https)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let received = upstream.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].target, "/v1/own");
}
