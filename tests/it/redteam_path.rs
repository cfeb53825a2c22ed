//! Red team, class "one path, decoded once": a percent-encoded letter must not dodge a narrower
//! route. A wide `/api/x/{*rest}` and a narrow `/api/x/admin/{*rest}` with a stricter origin
//! list, fewer methods, a required query parameter and a rate limit; every encoding of the
//! narrow path must meet every one of the narrow route's rules, and the upstream must receive
//! the one normal form of the path that was matched. Raw TCP, so no client library normalises
//! the attack away.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{TestProxy, Upstream, assert_no_secret};

const WIDE_SECRET: &str = "sk_wide_PathSecret_4410";
const NARROW_SECRET: &str = "sk_narrow_PathSecret_9923";
const ALLOWED: &str = "http://app.localhost:5173";
const OTHER: &str = "http://other.localhost:5173";

/// Spellings of `/api/x/admin/<rest>` that all mean the narrow route, with the `rest` the
/// upstream must receive. Every unreserved character appears encoded, in both hex cases.
const NARROW: &[(&str, &str)] = &[
    ("/api/x/admin/y", "y"),
    ("/api/x/%61dmin/y", "y"),
    ("/api/x/a%64min/y", "y"),
    ("/api/x/%61%64%6d%69%6e/y", "y"),
    ("/api/x/%61%64%6D%69%6E/y", "y"),
    ("/api/x/%61%64%6D%69%6e/y", "y"),
    ("/%61pi/%78/admin/y", "y"),
    ("/api/x/adm%69n/%79", "y"),
    ("/api/x/admin/%7E%7e%2D%2d%5F%5f", "~~--__"),
    ("/api/x/admin/a%2eb%2Ec", "a.b.c"),
    ("/api/x/admin/%30%39%41%5A%61%7a", "09AZaz"),
    ("/api/x/admin/%c3%a9", "%C3%A9"),
    ("/api/x/admin/%C3%A9", "%C3%A9"),
    ("/api/x/admin/a%20b", "a%20b"),
    ("/api/x/admin/100%25", "100%25"),
    ("/api/x/admin/%2561", "%2561"),
];

/// Paths that differ from `admin` only in case: routes match case-sensitively, so these are
/// the wide route, and the upstream sees the letters as the client sent them (decoded).
const WIDE: &[(&str, &str)] = &[
    ("/api/x/%41dmin/y", "Admin/y"),
    ("/api/x/ADMIN/y", "ADMIN/y"),
    ("/api/x/%41%44%4D%49%4E/y", "ADMIN/y"),
    ("/api/x/other/%7e", "other/~"),
];

async fn setup(burst: usize) -> (Upstream, TestProxy) {
    let upstream = Upstream::echo().await;
    let u = upstream.url();
    let proxy = TestProxy::builder()
        .secret("wide", WIDE_SECRET)
        .secret("narrow", NARROW_SECRET)
        .toml(&format!(
            "[server]\nallowed-origins = [\"{ALLOWED}\", \"{OTHER}\"]\n\
             [routes.wide]\npath = \"/api/x/{{*rest}}\"\nmethods = [\"GET\", \"POST\"]\nupstream = \"{u}/wide/{{rest}}\"\n\
             auth = {{ bearer = \"wide\" }}\n\
             [routes.narrow]\npath = \"/api/x/admin/{{*rest}}\"\nmethods = [\"GET\"]\nupstream = \"{u}/narrow/{{rest}}\"\n\
             auth = {{ bearer = \"narrow\" }}\nallowed-origins = [\"{ALLOWED}\"]\n\
             request.query = {{ ticket = {{ pattern = \"[0-9]+\" }} }}\n\
             rate-limit = {{ requests = 1, per = \"1h\", burst = {burst} }}\n"
        ))
        .start()
        .await;
    (upstream, proxy)
}

/// One raw request; returns the status, the JSON body's `code` and the whole response text.
async fn send(addr: SocketAddr, method: &str, target: &str, origin: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nOrigin: {origin}\r\nConnection: close\r\n\r\n",
        addr.port()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("{target}: no complete answer within 20 s"),
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let code = serde_json::from_str::<Value>(body.trim())
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_string))
        .unwrap_or_default();
    assert_no_secret(&text, &[WIDE_SECRET, NARROW_SECRET], target);
    (status, code, text)
}

#[tokio::test]
async fn every_spelling_of_the_narrow_path_meets_the_narrow_rules() {
    let (upstream, proxy) = setup(NARROW.len()).await;
    for (path, rest) in NARROW {
        // The narrow route's origin list, not the server's wider one.
        let (status, code, text) = send(proxy.addr, "GET", &format!("{path}?ticket=1"), OTHER).await;
        assert_eq!((status, code.as_str()), (403, "origin_not_allowed"), "{path}: {text}");
        // The narrow route's methods.
        let (status, _, text) = send(proxy.addr, "POST", &format!("{path}?ticket=1"), ALLOWED).await;
        assert_eq!(status, 405, "{path}: {text}");
        // The narrow route's validation.
        let (status, _, text) = send(proxy.addr, "GET", path, ALLOWED).await;
        assert_eq!(status, 400, "{path}: {text}");
        assert!(
            upstream.received().is_empty(),
            "{path}: a refused request reached the upstream"
        );

        // Allowed: the narrow upstream, with the normal form of the path and the query as sent.
        let (status, _, text) = send(proxy.addr, "GET", &format!("{path}?ticket=1"), ALLOWED).await;
        assert_eq!(status, 200, "{path}: {text}");
        let seen = upstream.only();
        assert_eq!(seen.target, format!("/narrow/{rest}?ticket=1"), "{path}");
        assert_eq!(
            seen.header("authorization"),
            Some(format!("Bearer {NARROW_SECRET}").as_str()),
            "{path}"
        );
        upstream.requests.lock().unwrap().clear();
    }
    // The burst is used up by exactly the allowed requests above, whatever their spelling: the
    // spellings share the narrow route's one bucket.
    for (path, _) in NARROW {
        let (status, code, text) = send(proxy.addr, "GET", &format!("{path}?ticket=1"), ALLOWED).await;
        assert_eq!((status, code.as_str()), (429, "rate_limited"), "{path}: {text}");
    }
    assert!(
        upstream.received().is_empty(),
        "a rate-limited request reached the upstream"
    );
    proxy.shutdown().await;
}

/// Every subset of the letters of `admin` percent-encoded, in lower- and upper-case hex: all 64
/// spellings meet the narrow route's origin list and reach no upstream.
#[tokio::test]
async fn every_encoding_of_every_letter_is_the_narrow_route() {
    let (upstream, proxy) = setup(1).await;
    for mask in 0u32..32 {
        for upper in [false, true] {
            let segment: String = "admin"
                .bytes()
                .enumerate()
                .map(|(i, b)| match (mask >> i & 1 == 1, upper) {
                    (false, _) => char::from(b).to_string(),
                    (true, false) => format!("%{b:02x}"),
                    (true, true) => format!("%{b:02X}"),
                })
                .collect();
            let path = format!("/api/x/{segment}/y?ticket=1");
            let (status, code, text) = send(proxy.addr, "GET", &path, OTHER).await;
            assert_eq!((status, code.as_str()), (403, "origin_not_allowed"), "{path}: {text}");
        }
    }
    assert!(
        upstream.received().is_empty(),
        "an encoded spelling reached an upstream"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn case_differences_are_the_wide_route_and_reach_it_normalised() {
    let (upstream, proxy) = setup(1).await;
    for (path, rest) in WIDE {
        // The server-wide origin list applies (the narrow route's would refuse this origin).
        let (status, _, text) = send(proxy.addr, "POST", path, OTHER).await;
        assert_eq!(status, 200, "{path}: {text}");
        let seen = upstream.only();
        assert_eq!(seen.method, "POST", "{path}");
        assert_eq!(seen.target, format!("/wide/{rest}"), "{path}");
        assert_eq!(
            seen.header("authorization"),
            Some(format!("Bearer {WIDE_SECRET}").as_str()),
            "{path}"
        );
        upstream.requests.lock().unwrap().clear();
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_old_refusals_stand_in_either_hex_case() {
    let (upstream, proxy) = setup(1).await;
    for path in [
        "/api/x/admin%2fy",
        "/api/x/admin%2Fy",
        "/api/x/%2e%2e/admin/y",
        "/api/x/%2E%2E/admin/y",
        "/api/x/.%2e/admin/y",
        "/api/x/admin/%5cy",
        "/api/x/admin/%5Cy",
        "/api/x/%252e%252e/admin/y",
    ] {
        let (status, _, text) = send(proxy.addr, "GET", &format!("{path}?ticket=1"), ALLOWED).await;
        assert_eq!(status, 400, "{path}: {text}");
    }
    assert!(upstream.received().is_empty(), "a refused path reached the upstream");
    proxy.shutdown().await;
}
