//! OAuth2 client credentials through the real binary, against a token endpoint and a protected
//! API built on Authlib (tests/oauth2/server.py, run from the venv scripts/test creates): Authlib
//! authenticates the client (so the RFC 6749 encoding of the Basic credentials is checked by the
//! library), issues the tokens and refuses expired or revoked ones with 401. Its `/stats` counts
//! mints and API outcomes, which is what the tests wait on (bounded polling, no sleeps).
//!
//! Every test checks that neither the client secret nor any issued token shows up in the
//! daemon's logs (at debug level), error bodies or responses.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Daemon, assert_no_secret, binary, client, python};

pub(crate) const CLIENT_ID: &str = "shop-app";
/// Characters RFC 6749 2.3.1 makes the client form-encode before Basic auth.
pub(crate) const CLIENT_SECRET: &str = "s3cr:t&pa%ss+word/Ω";

async fn json(response: reqwest::Response) -> Value {
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

/// The Authlib server, killed when dropped.
pub(crate) struct AuthServer {
    child: Child,
    port: u16,
    args: Vec<String>,
}

impl AuthServer {
    pub(crate) fn start(args: &[&str]) -> AuthServer {
        AuthServer::start_on(0, args.iter().map(|a| a.to_string()).collect())
    }

    fn start_on(port: u16, args: Vec<String>) -> AuthServer {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oauth2/server.py");
        let mut child = Command::new(python())
            .arg(script)
            .args(["--client-id", CLIENT_ID, "--port", &port.to_string()])
            .args(&args)
            .env("OAUTH2_CLIENT_SECRET", CLIENT_SECRET)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the Authlib server did not print its port (got {line:?})")
        });
        AuthServer { child, port, args }
    }

    /// Stops the server (its port is free again when this returns).
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new server on the same port (the token store starts empty).
    fn restart(&mut self) {
        self.stop();
        *self = AuthServer::start_on(self.port, self.args.clone());
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub(crate) async fn stats(&self) -> Value {
        json(client().get(self.url("/stats")).send().await.unwrap()).await
    }

    pub(crate) async fn count(&self, name: &str) -> u64 {
        self.stats().await[name].as_u64().unwrap()
    }

    pub(crate) async fn tokens(&self) -> Vec<String> {
        let stats = self.stats().await;
        stats["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect()
    }

    pub(crate) async fn revoke(&self) {
        let response = client().post(self.url("/admin/revoke")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn config(server: &AuthServer, client_auth: &str) -> String {
    format!(
        r#"[secrets.pay-id]
env = "PAY_ID"
[secrets.pay-secret]
env = "PAY_SECRET"

[oauth2.pay]
token-url = "{token}"
client-id = "${{pay-id}}"
client-secret = "${{pay-secret}}"
scopes = ["orders:read", "orders:write"]
audience = "https://api.shop.example"
params = {{ resource = "orders" }}
client-auth = "{client_auth}"

[routes.pay]
path = "/pay/{{*rest}}"
upstream = "{api}/{{rest}}"
methods = ["GET", "POST"]
auth = {{ oauth2 = "pay" }}

[routes.strict]
path = "/strict/{{*rest}}"
upstream = "{strict}/{{rest}}"
methods = ["GET"]
auth = {{ oauth2 = "pay" }}
"#,
        token = server.url("/token"),
        api = server.url("/api"),
        strict = server.url("/always401"),
    )
}

async fn start_daemon(config: String) -> Daemon {
    tokio::task::spawn_blocking(move || {
        Daemon::start(
            &config,
            &[
                ("PAY_ID", CLIENT_ID),
                ("PAY_SECRET", CLIENT_SECRET),
                ("RUST_LOG", "secretproxy=debug,info"),
            ],
        )
    })
    .await
    .unwrap()
}

/// The client secret, every token issued and the logs/bodies to search.
async fn assert_nothing_leaked(server: &AuthServer, daemon: &Daemon, bodies: &str) {
    let tokens = server.tokens().await;
    let mut secrets: Vec<&str> = tokens.iter().map(String::as_str).collect();
    secrets.push(CLIENT_SECRET);
    assert!(!tokens.is_empty());
    assert_no_secret(&daemon.logs(), &secrets, "daemon logs");
    assert_no_secret(bodies, &secrets, "responses");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_minted_once_for_100_concurrent_requests_and_kept_across_a_reload() {
    let server = AuthServer::start(&["--mint-delay-ms", "300"]);
    let daemon = start_daemon(config(&server, "basic")).await;
    let mut bodies = String::new();

    let http = client();
    let requests = (0..100).map(|i| {
        let http = http.clone();
        let url = daemon.url(&format!("/pay/orders/{i}"));
        async move {
            let response = http.get(url).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    });
    for (status, body) in futures_util::future::join_all(requests).await {
        assert_eq!(status, 200, "{body}");
        bodies.push_str(&body);
    }
    let stats = server.stats().await;
    assert_eq!(stats["mints"], 1, "{stats}");
    assert_eq!(stats["api_ok"], 100);
    // Authlib parsed the form: scope, audience and extra params arrived; Basic auth kept the
    // credentials out of the body.
    let form = &stats["last_form"];
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["scope"], "orders:read orders:write");
    assert_eq!(form["audience"], "https://api.shop.example");
    assert_eq!(form["resource"], "orders");
    assert!(form.get("client_id").is_none(), "{form}");

    // An upstream that echoes the token gets it redacted.
    let response = http.get(daemon.url("/pay/echo")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let echoed: Value = json(response).await;
    assert_eq!(echoed["authorization"], "Bearer [REDACTED]");
    bodies.push_str(&echoed.to_string());

    // A reload that leaves `[oauth2.pay]` unchanged keeps its token: no re-mint.
    let text = std::fs::read_to_string(&daemon.config_path).unwrap();
    std::fs::write(
        &daemon.config_path,
        format!(
            "{text}\n[routes.other]\npath = \"/other\"\nupstream = \"{}\"\n",
            server.url("/x")
        ),
    )
    .unwrap();
    daemon.signal("HUP");
    daemon.wait_for_log("config reloaded", 1, Duration::from_secs(30));
    let response = http.get(daemon.url("/pay/after-reload")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(server.count("mints").await, 1);

    assert_nothing_leaked(&server, &daemon, &bodies).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_renewed_before_it_expires() {
    // Three-second tokens (renewed after 1.5 s, leaving a loaded machine 1.5 s to deliver the
    // request), client credentials in the form body this time.
    let server = AuthServer::start(&["--expires-in", "3", "--auth", "post"]);
    let daemon = start_daemon(config(&server, "body")).await;
    let http = client();
    let mut bodies = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.count("mints").await < 3 {
        assert!(Instant::now() < deadline, "three mints did not happen within 30 s");
        let response = http.get(daemon.url("/pay/tick")).send().await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, 200, "{body}");
        bodies.push_str(&body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Renewed ahead of expiry: Authlib never saw an expired token (a stale one would have been
    // refused with 401 and show here even though the retry hid it from the client).
    let stats = server.stats().await;
    assert_eq!(stats["api_401"], 0, "{stats}");
    assert_eq!(stats["last_form"]["client_id"], CLIENT_ID);
    assert_nothing_leaked(&server, &daemon, &bodies).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_401_triggers_exactly_one_remint_and_retry() {
    let server = AuthServer::start(&[]);
    let daemon = start_daemon(config(&server, "basic")).await;
    let http = client();
    let mut bodies = String::new();
    assert_eq!(http.get(daemon.url("/pay/warm")).send().await.unwrap().status(), 200);
    assert_eq!(server.count("mints").await, 1);

    // A revoked token: the POST (small body, sent again) succeeds after one re-mint.
    server.revoke().await;
    let response = http
        .post(daemon.url("/pay/orders"))
        .header("content-type", "application/json")
        .body(r#"{"amount":"10.00"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = json(response).await;
    assert_eq!(answer["body"], r#"{"amount":"10.00"}"#);
    assert_eq!(answer["method"], "POST");
    let stats = server.stats().await;
    assert_eq!((stats["mints"].as_u64(), stats["api_401"].as_u64()), (Some(2), Some(1)));

    // Twenty requests that all meet the revoked token: still exactly one re-mint.
    server.revoke().await;
    let requests = (0..20).map(|_| http.get(daemon.url("/pay/again")).send());
    for response in futures_util::future::join_all(requests).await {
        assert_eq!(response.unwrap().status(), 200);
    }
    assert_eq!(server.count("mints").await, 3);

    // An upstream that refuses every token: one re-mint and one retry, then its 401.
    let before = server.stats().await;
    let response = http.get(daemon.url("/strict/x")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    bodies.push_str(&response.text().await.unwrap());
    let after = server.stats().await;
    assert_eq!(after["mints"].as_u64().unwrap(), before["mints"].as_u64().unwrap() + 1);
    assert_eq!(
        after["api_401"].as_u64().unwrap(),
        before["api_401"].as_u64().unwrap() + 2
    );

    // A streamed (chunked) body is not sent twice: the client gets the 401, the next request
    // gets a fresh token.
    server.revoke().await;
    let chunks = futures_util::stream::iter(vec![Ok::<_, std::io::Error>("part1,"), Ok("part2")]);
    let response = http
        .post(daemon.url("/pay/stream"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    bodies.push_str(&response.text().await.unwrap());
    let mints = server.count("mints").await;
    assert_eq!(http.get(daemon.url("/pay/next")).send().await.unwrap().status(), 200);
    assert_eq!(server.count("mints").await, mints + 1);

    assert_nothing_leaked(&server, &daemon, &bodies).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_down_gives_token_unavailable_and_recovers() {
    let mut server = AuthServer::start(&[]);
    let mut text = config(&server, "basic");
    // A second source whose secret the endpoint refuses.
    text.push_str(&format!(
        r#"
[secrets.wrong]
env = "WRONG_SECRET"
[oauth2.wrong]
token-url = "{}"
client-id = "{CLIENT_ID}"
client-secret = "${{wrong}}"
[routes.wrong]
path = "/wrong/{{*rest}}"
upstream = "{}/{{rest}}"
auth = {{ oauth2 = "wrong" }}
"#,
        server.url("/token"),
        server.url("/api")
    ));
    let daemon = tokio::task::spawn_blocking(move || {
        Daemon::start(
            &text,
            &[
                ("PAY_ID", CLIENT_ID),
                ("PAY_SECRET", CLIENT_SECRET),
                ("WRONG_SECRET", "not-the-secret-xyz"),
                ("RUST_LOG", "secretproxy=debug,info"),
            ],
        )
    })
    .await
    .unwrap();
    let http = client();
    let mut bodies = String::new();

    server.stop();
    let response = http.get(daemon.url("/pay/x")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let error: Value = json(response).await;
    assert_eq!(error["code"], "token_unavailable", "{error}");
    assert_eq!(error["token_source"], "pay");
    assert_eq!(error["route"], "pay");
    bodies.push_str(&error.to_string());

    server.restart();
    let response = http.get(daemon.url("/pay/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    bodies.push_str(&response.text().await.unwrap());
    assert_eq!(server.count("mints").await, 1);

    // Refused credentials: 502 naming the source and the RFC 6749 error, not the secret.
    let response = http.get(daemon.url("/wrong/x")).send().await.unwrap();
    assert_eq!(response.status(), 502);
    let error: Value = json(response).await;
    assert_eq!(error["code"], "token_refused", "{error}");
    assert_eq!(error["token_source"], "wrong");
    assert!(error["error"].as_str().unwrap().contains("invalid_client"), "{error}");
    bodies.push_str(&error.to_string());
    assert!(server.count("refused_clients").await >= 1);
    assert_no_secret(&daemon.logs(), &["not-the-secret-xyz"], "daemon logs");
    assert_no_secret(&bodies, &["not-the-secret-xyz"], "responses");

    assert_nothing_leaked(&server, &daemon, &bodies).await;
}

#[test]
fn check_lists_token_sources_with_their_secrets_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(
        &path,
        r#"[secrets.pay-id]
env = "CHECK_PAY_ID"
[secrets.pay-secret]
env = "CHECK_PAY_SECRET"
[oauth2.pay]
token-url = "https://auth.example/v1/oauth2/token"
client-id = "${pay-id}"
client-secret = "${pay-secret}"
[routes.pay]
path = "/pay/{*rest}"
upstream = "https://api.example/{rest}"
auth = { oauth2 = "pay" }
"#,
    )
    .unwrap();
    let output = binary()
        .args(["check", "--config"])
        .arg(&path)
        .env("CHECK_PAY_ID", "id-value-123")
        .env_remove("CHECK_PAY_SECRET")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a missing client secret is a problem");
    let row = stdout
        .lines()
        .find(|line| line.starts_with("pay ") && line.contains("auth.example"))
        .unwrap_or_else(|| panic!("no token source row:\n{stdout}"));
    assert!(
        row.contains("pay-id: present") && row.contains("pay-secret: missing"),
        "{row}"
    );
    assert!(stdout.contains("oauth2:pay"), "{stdout}");
    assert_no_secret(&format!("{stdout}{stderr}"), &["id-value-123"], "check output");
}

#[test]
fn reload_keeps_an_unchanged_source_and_replaces_a_changed_one() {
    use secretproxy::pipeline::generation::Generation;
    use std::sync::Arc;
    let text = |scope: &str| {
        format!(
            "[secrets.s]\nfile = \"/nonexistent/secretproxy-oauth2-test\"\n[oauth2.pay]\ntoken-url = \"https://auth.example/token\"\nclient-id = \"me\"\nclient-secret = \"${{s}}\"\nscopes = [\"{scope}\"]\n[oauth2.other]\ntoken-url = \"https://auth.example/token\"\nclient-id = \"me\"\nclient-secret = \"${{s}}\"\n"
        )
    };
    let build = |text: &str, previous: Option<&Generation>| {
        let config = secretproxy::config::Config::parse(text, "t").unwrap();
        Generation::build_after(config, Arc::new(secretproxy::secrets::SystemStore), 1, previous).unwrap()
    };
    let first = build(&text("a"), None);
    let same = build(&text("a"), Some(&first));
    assert!(Arc::ptr_eq(&first.oauth2["pay"], &same.oauth2["pay"]));
    let changed = build(&text("b"), Some(&same));
    assert!(!Arc::ptr_eq(&same.oauth2["pay"], &changed.oauth2["pay"]));
    assert!(Arc::ptr_eq(&same.oauth2["other"], &changed.oauth2["other"]));
    // Debug output names the source and its endpoint only.
    let debug = format!("{:?}", changed.oauth2["pay"]);
    assert!(debug.contains("pay") && debug.contains("auth.example"), "{debug}");
}

/// `route add NAME --preset paypal` writes the token source and the route, and — pointed at the
/// Authlib server standing in for PayPal — the daemon mints a token and calls the API with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_paypal_preset_writes_a_token_source_that_works() {
    let server = AuthServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(
        &path,
        "[secrets.pay-client-id]\nenv = \"PAY_ID\"\n[secrets.pay-client-secret]\nenv = \"PAY_SECRET\"\n",
    )
    .unwrap();
    let added = crate::cli::run(&["route", "add", "pay", "--preset", "paypal", "--secret", "pay"], &path);
    assert_eq!(added.status.code(), Some(0), "{}", crate::cli::stderr(&added));
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(
        written.contains(
            "[oauth2.pay]\ntoken-url = \"https://api-m.paypal.com/v1/oauth2/token\"\nclient-id = \"${pay-client-id}\"\nclient-secret = \"${pay-client-secret}\"\n"
        ),
        "{written}"
    );
    assert!(
        written.contains("upstream = \"https://api-m.paypal.com/{rest}\""),
        "{written}"
    );
    assert!(written.contains("auth = { oauth2 = \"pay\" }"), "{written}");
    assert!(
        !crate::cli::stdout(&added).contains("declared secret"),
        "the secrets existed"
    );

    let served = written
        .replace("https://api-m.paypal.com/v1/oauth2/token", &server.url("/token"))
        .replace("https://api-m.paypal.com", &server.url("/api"));
    let daemon = start_daemon(served).await;
    let response = client()
        .get(daemon.url("/api/pay/v2/checkout/orders/1"))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.count("mints").await, 1);
    assert_nothing_leaked(&server, &daemon, &body).await;
}
