//! AWS SigV4 through the real binary, checked by an independent implementation: the upstream
//! (tests/sign/server.py) recomputes every signature with botocore over the request it received
//! and answers 403 on a mismatch, so a 200 proves botocore agrees. Covers a GET with a query, a
//! POST with a hashed JSON body, the session token, a streamed (chunked) and a large upload to
//! an S3 route with UNSIGNED-PAYLOAD, the refusals of bodies a hashing route cannot read, and a
//! wrong key (refused by the upstream: the check is real). No key or token in logs or answers.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use sha2::Digest;

use crate::harness::{Daemon, assert_no_secret, client, python};

pub const ACCESS_KEY_ID: &str = "AKIDSECRETPROXYTEST";
const SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYsp-test-key";
const SESSION_TOKEN: &str = "IQoJb3JpZ2luX2VjEPT//////////session+token/sp=";

/// The signature-checking upstream, killed when dropped.
pub struct SignServer {
    child: Child,
    pub port: u16,
}

impl SignServer {
    pub fn start(envs: &[(&str, &str)]) -> SignServer {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sign/server.py");
        let mut command = Command::new(python());
        command
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the signature server did not print its port (got {line:?})")
        });
        SignServer { child, port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for SignServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn start_daemon(config: String, envs: Vec<(&'static str, String)>) -> Daemon {
    tokio::task::spawn_blocking(move || {
        let mut all: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.push(("RUST_LOG", "secretproxy=debug,info"));
        Daemon::start(&config, &all)
    })
    .await
    .unwrap()
}

pub async fn json(response: reqwest::Response) -> (u16, Value, String) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, value, text)
}

fn config(server: &SignServer) -> String {
    format!(
        r#"[secrets.aws-id]
env = "AWS_ID"
[secrets.aws-secret]
env = "AWS_SECRET"
[secrets.aws-token]
env = "AWS_TOKEN"
[secrets.wrong-secret]
env = "AWS_WRONG"

[routes.api]
path = "/api/{{*rest}}"
upstream = "{api}/{{rest}}"
methods = ["GET", "POST"]
auth = {{ aws-sigv4 = {{ service = "execute-api", region = "eu-west-1", access-key-id = "${{aws-id}}", secret-access-key = "${{aws-secret}}", session-token = "${{aws-token}}" }} }}

[routes.small]
path = "/small/{{*rest}}"
upstream = "{api}/{{rest}}"
methods = ["POST"]
max-body = 1024
auth = {{ aws-sigv4 = {{ service = "execute-api", region = "eu-west-1", access-key-id = "${{aws-id}}", secret-access-key = "${{aws-secret}}", session-token = "${{aws-token}}" }} }}

[routes.bucket]
path = "/bucket/{{*key}}"
upstream = "{api}/{{key}}"
methods = ["GET", "PUT"]
auth = {{ aws-sigv4 = {{ service = "s3", region = "eu-west-1", access-key-id = "${{aws-id}}", secret-access-key = "${{aws-secret}}", session-token = "${{aws-token}}" }} }}

[routes.wrong]
path = "/wrong/{{*rest}}"
upstream = "{api}/{{rest}}"
auth = {{ aws-sigv4 = {{ service = "execute-api", region = "eu-west-1", access-key-id = "${{aws-id}}", secret-access-key = "${{wrong-secret}}", session-token = "${{aws-token}}" }} }}
"#,
        api = server.url("/aws"),
    )
}

fn envs() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ID", ACCESS_KEY_ID.to_string()),
        ("AWS_SECRET", SECRET_ACCESS_KEY.to_string()),
        ("AWS_TOKEN", SESSION_TOKEN.to_string()),
        ("AWS_WRONG", "not-the-key-the-upstream-knows".to_string()),
    ]
}

fn server() -> SignServer {
    SignServer::start(&[
        ("SIGV4_ACCESS_KEY_ID", ACCESS_KEY_ID),
        ("SIGV4_SECRET", SECRET_ACCESS_KEY),
        ("SIGV4_TOKEN", SESSION_TOKEN),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigv4_requests_verified_by_botocore() {
    let server = server();
    let daemon = start_daemon(config(&server), envs()).await;
    let http = client();
    let mut bodies = String::new();

    // GET with a query in no particular order, an encoded space and a slash in a value.
    let response = http
        .get(daemon.url("/api/items/a%20b?z=1&prefix=a%2Fb&A=x+y&empty"))
        .header("x-amz-meta-note", "from the client")
        .send()
        .await
        .unwrap();
    let (status, body, text) = json(response).await;
    assert_eq!(status, 200, "{text}");
    bodies.push_str(&text);
    let signed: Vec<&str> = body["signed_headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        signed,
        [
            "host",
            "x-amz-content-sha256",
            "x-amz-date",
            "x-amz-meta-note",
            "x-amz-security-token"
        ]
    );
    assert_eq!(
        body["payload"],
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );

    // POST with a JSON body: hashed, and the hash is the body's.
    let payload = br#"{"name":"widget","tags":["a","b"],"price":12.5}"#;
    let response = http
        .post(daemon.url("/api/items"))
        .header("content-type", "application/json")
        .body(payload.to_vec())
        .send()
        .await
        .unwrap();
    let (status, body, text) = json(response).await;
    assert_eq!(status, 200, "{text}");
    bodies.push_str(&text);
    assert_eq!(body["payload"], hex::encode(sha2::Sha256::digest(payload)));
    assert!(body["signed_headers"].to_string().contains("content-type"), "{body}");

    // A wrong key: the upstream's own check refuses it.
    let response = http.get(daemon.url("/wrong/items")).send().await.unwrap();
    let (status, body, text) = json(response).await;
    assert_eq!(status, 403, "{text}");
    assert_eq!(body["error"], "signature mismatch");
    bodies.push_str(&text);

    let logs = daemon.logs();
    assert!(logs.contains("sending upstream"), "debug logs are on: {logs}");
    assert_no_secret(&logs, &[SECRET_ACCESS_KEY, SESSION_TOKEN], "daemon logs");
    assert_no_secret(&bodies, &[SECRET_ACCESS_KEY, SESSION_TOKEN], "responses");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_uploads_stream_with_unsigned_payload() {
    let server = server();
    let daemon = start_daemon(config(&server), envs()).await;
    let http = client();

    // A streamed (chunked) upload of 8 MiB: nothing buffered, the body arrives whole.
    let chunk = vec![b'x'; 64 * 1024];
    let mut expected = sha2::Sha256::new();
    for _ in 0..128 {
        expected.update(&chunk);
    }
    let stream =
        futures_util::stream::iter((0..128).map(move |_| Ok::<_, std::io::Error>(bytes::Bytes::from(chunk.clone()))));
    let response = http
        .put(daemon.url("/bucket/photos/a b$.jpg"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    let (status, body, text) = json(response).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(body["payload"], "UNSIGNED-PAYLOAD");
    assert_eq!(body["chunked"], true);
    assert_eq!(body["bytes"], 8 * 1024 * 1024);
    assert_eq!(body["sha256"], hex::encode(expected.finalize()));
    // S3's path encoding is what was sent and signed.
    assert_eq!(body["target"], "/aws/photos/a%20b%24.jpg");

    // A large upload with a Content-Length streams too.
    let large = vec![7u8; 3 * 1024 * 1024 + 5];
    let response = http
        .put(daemon.url("/bucket/big.bin"))
        .body(large.clone())
        .send()
        .await
        .unwrap();
    let (status, body, text) = json(response).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(body["bytes"], large.len());
    assert_eq!(body["sha256"], hex::encode(sha2::Sha256::digest(&large)));

    // A GET on the bucket with a listing query.
    let response = http
        .get(daemon.url("/bucket/photos/?list-type=2&prefix=photos%2F&max-keys=10"))
        .send()
        .await
        .unwrap();
    let (status, _, text) = json(response).await;
    assert_eq!(status, 200, "{text}");

    assert_no_secret(&daemon.logs(), &[SECRET_ACCESS_KEY, SESSION_TOKEN], "daemon logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashing_routes_refuse_bodies_they_cannot_read() {
    let server = server();
    let daemon = start_daemon(config(&server), envs()).await;
    let http = client();

    // Chunked: no length to bound the read, so 411 before anything is sent.
    let stream = futures_util::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{}"))));
    let response = http
        .post(daemon.url("/api/items"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    let (status, body, text) = json(response).await;
    assert_eq!(status, 411, "{text}");
    assert_eq!(body["code"], "length_required");

    // Larger than the route's max-body: 413.
    let response = http
        .post(daemon.url("/small/items"))
        .body(vec![b'a'; 4096])
        .send()
        .await
        .unwrap();
    let (status, body, text) = json(response).await;
    assert_eq!(status, 413, "{text}");
    assert_eq!(body["code"], "body_too_large");

    // Within it: signed and accepted.
    let response = http
        .post(daemon.url("/small/items"))
        .body(vec![b'a'; 1000])
        .send()
        .await
        .unwrap();
    let (status, _, text) = json(response).await;
    assert_eq!(status, 200, "{text}");
    assert_no_secret(&daemon.logs(), &[SECRET_ACCESS_KEY, SESSION_TOKEN], "daemon logs");
}

/// `check` (the built binary) lists each signer with its secrets' state, and no value; `route
/// test` shows the signed request with the signature, token and keys masked.
#[test]
fn check_and_route_test_show_signers_without_values() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        r#"[secrets.aws-id]
env = "SIGN_CHECK_ID"
[secrets.aws-secret]
env = "SIGN_CHECK_SECRET"
[secrets.aws-token]
env = "SIGN_CHECK_TOKEN"
[secrets.ex-secret]
env = "SIGN_CHECK_HMAC"
[secrets.cert]
env = "SIGN_CHECK_CERT"
[secrets.key]
env = "SIGN_CHECK_KEY"

[routes.uploads]
path = "/s3/{*key}"
upstream = "https://bucket.s3.eu-west-1.amazonaws.com/{key}"
methods = ["PUT"]
auth = { aws-sigv4 = { service = "s3", region = "eu-west-1", access-key-id = "${aws-id}", secret-access-key = "${aws-secret}", session-token = "${aws-token}" } }

[routes.exchange]
path = "/ex/{*rest}"
upstream = "https://api.exchange.example/{rest}"
auth = { hmac = { secret = "ex-secret", algorithm = "sha512", encoding = "base64", message = "{timestamp}{method}{target}", signature-header = "X-Sig", timestamp-header = "X-Ts" } }

[routes.bank]
path = "/bank/{*rest}"
upstream = "https://bank.example/{rest}"
client-cert = "cert"
client-key = "key"
"#,
    )
    .unwrap();
    let values = [
        ("SIGN_CHECK_ID", "AKIDCHECKVALUE"),
        ("SIGN_CHECK_SECRET", "check-secret-access-key"),
        ("SIGN_CHECK_TOKEN", "check-session-token"),
        ("SIGN_CHECK_HMAC", "check-hmac-key"),
        ("SIGN_CHECK_CERT", "not a certificate"),
    ];
    let secrets: Vec<&str> = values.iter().map(|(_, v)| *v).collect();
    let output = crate::harness::binary()
        .args(["check", "--config"])
        .arg(&config)
        .envs(values)
        .env_remove("SIGN_CHECK_KEY")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "the client key is missing: {text}");
    assert!(text.contains("aws-sigv4 (s3 eu-west-1, unsigned payload)"), "{text}");
    assert!(
        text.contains("aws-id: present, aws-secret: present, aws-token: present"),
        "{text}"
    );
    assert!(text.contains("hmac-sha512 (base64 in header x-sig)"), "{text}");
    assert!(text.contains("mtls (client certificate)"), "{text}");
    assert!(text.contains("cert: present, key: missing"), "{text}");
    assert_no_secret(&text, &secrets, "check output");

    let output = crate::harness::binary()
        .args(["route", "test", "uploads", "/s3/photos/cat.jpg", "--config"])
        .arg(&config)
        .envs(values)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("Authorization: AWS4-HMAC-SHA256 Credential=****/"),
        "{text}"
    );
    assert!(text.contains("Signature=****"), "{text}");
    assert!(text.contains("X-Amz-Security-Token: ****"), "{text}");
    assert_no_secret(&text, &secrets, "route test output");
}
