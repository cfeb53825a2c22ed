//! Uploads stream through the real binary: a 256 MiB raw body and a 64 MiB multipart body reach
//! a real upstream byte for byte (SHA-256 on both sides), while the daemon's peak memory stays
//! far below the body size, so nothing on the way held it whole.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use crate::harness::{Daemon, assert_no_secret, client};

const SECRET: &str = "sk_upload_SecretValue_99";
const CHUNK: usize = 1024 * 1024;

/// An upstream that hashes the body as it arrives and answers with its length and SHA-256.
async fn hashing_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = service_fn(|request: http::Request<Incoming>| async move {
                    let (parts, mut body) = request.into_parts();
                    let mut hasher = Sha256::new();
                    let mut length = 0u64;
                    while let Some(Ok(frame)) = body.frame().await {
                        if let Ok(data) = frame.into_data() {
                            length += data.len() as u64;
                            hasher.update(&data);
                        }
                    }
                    let header = |name: &str| {
                        parts
                            .headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    };
                    let answer = json!({
                        "length": length,
                        "sha256": hex::encode(hasher.finalize()),
                        "content_type": header("content-type"),
                        "content_length": header("content-length"),
                        "authorization": header("authorization"),
                    });
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(answer.to_string()))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// `count` chunks of 1 MiB of pseudo-random bytes, each stamped with its index so a reordered
/// or repeated chunk changes the hash.
fn chunks(count: usize) -> Vec<Bytes> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let block: Vec<u8> = (0..CHUNK / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect();
    (0..count)
        .map(|index| {
            let mut chunk = block.clone();
            chunk[..8].copy_from_slice(&(index as u64).to_le_bytes());
            Bytes::from(chunk)
        })
        .collect::<Vec<_>>()
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_raw_and_multipart_uploads_stream_through_unchanged() {
    let upstream = hashing_upstream().await;
    let config = format!(
        "[secrets.store]\nenv = \"STORE_TOKEN\"\n\
             [routes.raw]\npath = \"/upload/raw\"\nmethods = [\"PUT\"]\nupstream = \"http://{upstream}/raw\"\nauth = {{ bearer = \"store\" }}\nmax-body = \"1GiB\"\n\
             [routes.form]\npath = \"/upload/form\"\nmethods = [\"POST\"]\nupstream = \"http://{upstream}/form\"\nauth = {{ bearer = \"store\" }}\nmax-body = \"1GiB\"\n\
             request.content-types = [\"multipart/form-data\"]\n"
    );
    let daemon = tokio::task::spawn_blocking(move || Daemon::start(&config, &[("STORE_TOKEN", SECRET)]))
        .await
        .unwrap();
    let pid = daemon.child.id();

    // Raw, chunked: 256 MiB, generated lazily from one 1 MiB block so the client holds little.
    let block = chunks(1).pop().unwrap();
    let total_chunks = 256usize;
    let expected = {
        let mut hasher = Sha256::new();
        for index in 0..total_chunks {
            let mut chunk = block.to_vec();
            chunk[..8].copy_from_slice(&(index as u64).to_le_bytes());
            hasher.update(&chunk);
        }
        hex::encode(hasher.finalize())
    };
    // Reset the daemon's peak-RSS mark (Linux: 5 > clear_refs), so VmHWM covers the upload.
    let baseline = rss_kib(pid, "VmRSS:");
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let stream = futures_util::stream::iter(0..total_chunks).map(move |index| {
        let mut chunk = block.to_vec();
        chunk[..8].copy_from_slice(&(index as u64).to_le_bytes());
        Ok::<_, Infallible>(Bytes::from(chunk))
    });
    let started = std::time::Instant::now();
    let response = client()
        .put(daemon.url("/upload/raw"))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    let elapsed = started.elapsed();
    let peak_growth_mib = rss_kib(pid, "VmHWM:").saturating_sub(baseline) / 1024;
    assert_eq!(seen["length"], (total_chunks * CHUNK) as u64);
    assert_eq!(seen["sha256"], expected.as_str(), "the upstream got different bytes");
    // The upstream echoes the Authorization it got; response scrubbing replaces exactly the
    // injected value, so `[REDACTED]` here proves the secret was injected (and kept from us).
    assert_eq!(seen["authorization"], "Bearer [REDACTED]");
    assert!(
        peak_growth_mib < 48,
        "the daemon's peak RSS grew by {peak_growth_mib} MiB during a 256 MiB upload: something buffered it"
    );
    eprintln!("256 MiB raw upload through the daemon: {elapsed:?}, its peak RSS growth {peak_growth_mib} MiB");

    // Multipart with a Content-Length: 64 MiB file part.
    let boundary = "----secretproxy-test-boundary";
    let head = Bytes::from(format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    ));
    let tail = Bytes::from(format!("\r\n--{boundary}--\r\n"));
    let parts: Vec<Bytes> = std::iter::once(head)
        .chain(chunks(64))
        .chain(std::iter::once(tail))
        .collect();
    let length: usize = parts.iter().map(Bytes::len).sum();
    let mut hasher = Sha256::new();
    for part in &parts {
        hasher.update(part);
    }
    let expected = hex::encode(hasher.finalize());
    let stream = futures_util::stream::iter(parts).map(Ok::<_, Infallible>);
    let response = client()
        .post(daemon.url("/upload/form"))
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .header("content-length", length.to_string())
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["length"], length as u64);
    assert_eq!(seen["sha256"], expected.as_str());
    assert_eq!(
        seen["content_length"],
        length.to_string(),
        "the length is passed on, not re-chunked"
    );
    assert!(
        seen["content_type"]
            .as_str()
            .unwrap()
            .starts_with("multipart/form-data; boundary=")
    );

    // A refused upload: 400, and no secret in the body.
    let response = client()
        .post(daemon.url("/upload/form"))
        .header("content-type", "application/octet-stream")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_no_secret(&response.text().await.unwrap(), &[SECRET], "refused upload body");
    let (status, logs) = tokio::task::spawn_blocking(move || daemon.terminate()).await.unwrap();
    assert!(status.success());
    assert!(
        logs.contains("\"bytes_in\":268435456"),
        "the access line counts every byte:\n{logs}"
    );
    assert_no_secret(&logs, &[SECRET], "daemon logs");
}
