//! WebSocket routes through the built binary, between a real client and a real upstream: both are
//! the Python `websockets` library (tests/websocket/peer.py, run from tests/.venv). The upstream
//! only accepts a handshake that carries the injected header and query parameter, and reports
//! what it saw (handshake headers, close codes) as JSON lines; the tests wait on those lines and
//! on the client's exit, never on sleeps.
//!
//! Every test checks that the key shows up in none of the daemon's logs (at debug level) nor in
//! anything the client received.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Daemon, assert_no_secret, python};

const KEY: &str = "wsk-live-4f3e2d1c0b9a88776655";

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/websocket/peer.py")
}

/// The upstream WebSocket server, killed when dropped; its event lines are collected.
struct Upstream {
    child: Child,
    port: u16,
    events: Arc<Mutex<Vec<Value>>>,
}

impl Upstream {
    fn start() -> Upstream {
        Upstream::start_with(&[])
    }

    fn start_with(args: &[&str]) -> Upstream {
        let mut child = Command::new(python())
            .arg(script())
            .args(["serve", "--key", KEY])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let Ok(port) = first.trim().parse() else {
            let _ = child.kill();
            panic!("the WebSocket upstream did not print its port (got {first:?})");
        };
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in lines {
                let Ok(line) = line else { break };
                if let Ok(event) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(event);
                }
            }
        });
        Upstream { child, port, events }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Waits (at most 30 s) for an event named `name` on `path`.
    fn wait_for(&self, name: &str, path: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(event) = self
                .events()
                .into_iter()
                .find(|e| e["event"] == name && e["path"] == path)
            {
                return event;
            }
            assert!(
                Instant::now() < deadline,
                "no {name} event for {path}; events: {:?}",
                self.events()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(upstream: &Upstream) -> String {
    format!(
        r#"[server]
allowed-origins = ["http://localhost:5173"]

[secrets.ws]
env = "WS_TEST_KEY"

[routes.live]
path = "/live/{{*rest}}"
upstream = "{url}/{{rest}}"
websocket = true
headers = {{ X-Api-Key = "${{ws}}" }}
query = {{ key = "${{ws}}" }}

[routes.quiet]
path = "/quiet/{{*rest}}"
upstream = "{url}/{{rest}}"
websocket = true
websocket-idle-timeout = "1s"
headers = {{ X-Api-Key = "${{ws}}" }}
query = {{ key = "${{ws}}" }}

[routes.keyless]
path = "/keyless/{{*rest}}"
upstream = "{url}/{{rest}}"
websocket = true

[routes.plain]
path = "/plain/{{*rest}}"
upstream = "{url}/{{rest}}"
headers = {{ X-Api-Key = "${{ws}}" }}
query = {{ key = "${{ws}}" }}
"#,
        url = upstream.url()
    )
}

fn daemon(upstream: &Upstream) -> Daemon {
    Daemon::start(&config(upstream), &[("WS_TEST_KEY", KEY), ("RUST_LOG", "debug")])
}

fn client_command(daemon: &Daemon, scenario: &str, path: &str, origin: Option<&str>) -> Command {
    let mut command = Command::new(python());
    command
        .arg(script())
        .args(["client", scenario, &format!("ws://{}{path}", daemon.addr)])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(origin) = origin {
        command.args(["--origin", origin]);
    }
    command
}

/// Runs the Python client to its end and returns what it reported.
fn run_client(daemon: &Daemon, scenario: &str, path: &str, origin: Option<&str>) -> Value {
    let output = client_command(daemon, scenario, path, origin).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "client failed: {stdout}\nlogs:\n{}",
        daemon.logs()
    );
    assert_no_secret(&stdout, &[KEY], "what the client received");
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|_| panic!("client printed no JSON: {stdout}"))
}

/// The access line of the session on `path` (JSON logs), once written.
fn access_line(daemon: &Daemon, path: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = daemon.logs().lines().find_map(|line| {
            let value: Value = serde_json::from_str(line).ok()?;
            (value["target"] == "secretproxy::access" && value["path"] == path).then_some(value)
        });
        if let Some(line) = found {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no access line for {path}:\n{}",
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn handshake_is_injected_and_frames_flow_both_ways_scrubbed() {
    let upstream = Upstream::start();
    let daemon = daemon(&upstream);
    let seen = run_client(&daemon, "frames", "/live/echo", None);

    // The upstream accepted only because the proxy injected the header and the query parameter;
    // the client's compression offer stayed behind, so every frame is plain.
    let connect = upstream.wait_for("connect", "/echo");
    assert_eq!(connect["header_ok"], true, "{connect}");
    assert_eq!(connect["query_ok"], true, "{connect}");
    assert_eq!(connect["upgrade"], "websocket");
    assert_eq!(connect["extensions"], Value::Null, "{connect}");
    assert_eq!(connect["protocols"], "chat.v1");
    assert_eq!(seen["subprotocol"], "chat.v1", "{seen}");
    assert_eq!(seen["extensions"], serde_json::json!([]), "{seen}");

    // Text and binary both ways; echoed secrets replaced in both kinds of message.
    assert_eq!(seen["text"], "hello", "{seen}");
    assert_eq!(seen["binary"], "000162696e617279ff", "{seen}");
    assert_eq!(seen["leak_text"], "you sent the key [REDACTED], keep it safe", "{seen}");
    assert_eq!(
        seen["leak_binary"],
        format!("00{}ff", hex::encode("[REDACTED]")),
        "{seen}"
    );
    assert_eq!(seen["pong"], true, "{seen}");

    // The client's close code reaches the upstream, and the client gets its close answered.
    let closed = upstream.wait_for("closed", "/echo");
    assert_eq!(closed["code"], 4001, "{closed}");
    assert_eq!(closed["reason"], "bye");
    assert_eq!(seen["close_code"], 4001, "{seen}");

    // One access line for the session: 101, messages and payload bytes both ways.
    let line = access_line(&daemon, "/live/echo");
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["upstream_status"], 101, "{line}");
    assert_eq!(line["outcome"], "complete", "{line}");
    assert_eq!(line["query"], "key=[REDACTED]", "{line}");
    // hello, binary, leak, ping, close from the client; two echoes, two leaks and the pong back
    // (the close that answers the client's is not a message of its own).
    assert_eq!(line["frames_in"], 5, "{line}");
    assert!(line["frames_out"].as_u64().unwrap() >= 5, "{line}");
    assert!(line["bytes_in"].as_u64().unwrap() >= 22, "{line}");
    assert!(line["bytes_out"].as_u64().unwrap() >= 40, "{line}");

    let metrics = reqwest_metrics(&daemon);
    assert!(
        metrics.contains("secretproxy_requests_total{route=\"live\",method=\"GET\",status=\"101\"} 1"),
        "{metrics}"
    );
    let (_, logs) = daemon.terminate();
    assert_no_secret(&logs, &[KEY], "daemon logs");
}

/// The metrics text, fetched with a plain blocking request.
fn reqwest_metrics(daemon: &Daemon) -> String {
    let url = daemon.url("/_secretproxy/metrics");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(crate::harness::get_text(&url))
}

#[test]
fn upstream_close_code_reaches_the_client_with_its_reason_scrubbed() {
    let upstream = Upstream::start();
    let daemon = daemon(&upstream);
    let seen = run_client(&daemon, "server-close", "/live/echo", None);
    assert_eq!(seen["close_code"], 4002, "{seen}");
    assert_eq!(seen["close_reason"], "done with [REDACTED]", "{seen}");
    let line = access_line(&daemon, "/live/echo");
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["outcome"], "complete", "{line}");
    let (_, logs) = daemon.terminate();
    assert_no_secret(&logs, &[KEY], "daemon logs");
}

#[test]
fn a_disallowed_origin_is_refused_before_any_upstream_contact() {
    let upstream = Upstream::start();
    let daemon = daemon(&upstream);
    let seen = run_client(&daemon, "frames", "/live/echo", Some("http://evil.example"));
    assert_eq!(seen["status"], 403, "{seen}");
    let body: Value = serde_json::from_str(seen["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["code"], "origin_not_allowed", "{body}");
    // An allowed page gets through; the upstream's first handshake is that one.
    let allowed = run_client(&daemon, "server-close", "/live/echo", Some("http://localhost:5173"));
    assert_eq!(allowed["close_code"], 4002, "{allowed}");
    upstream.wait_for("closed", "/echo");
    let events = upstream.events();
    let handshakes: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "connect" || e["event"] == "refused")
        .collect();
    assert_eq!(
        handshakes.len(),
        1,
        "the refused client reached the upstream: {events:?}"
    );
    let (_, logs) = daemon.terminate();
    assert_no_secret(&logs, &[KEY], "daemon logs");
}

#[test]
fn an_upstream_refusal_passes_its_status_and_a_plain_route_drops_upgrade() {
    let upstream = Upstream::start();
    let daemon = daemon(&upstream);
    // No key injected: the upstream answers 401, which the client gets with the proxy's code.
    let seen = run_client(&daemon, "frames", "/keyless/echo", None);
    assert_eq!(seen["status"], 401, "{seen}");
    let body: Value = serde_json::from_str(seen["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["code"], "websocket_refused", "{body}");
    assert_eq!(body["upstream_status"], 401, "{body}");
    assert_eq!(upstream.wait_for("refused", "/echo")["header_ok"], false);

    // A route without `websocket = true` forwards the request without `Upgrade`: the upstream
    // sees a plain GET and refuses to switch, so no session opens.
    let plain = run_client(&daemon, "frames", "/plain/echo", None);
    assert_ne!(plain["status"], Value::Null, "{plain}");
    assert_ne!(plain["status"], 101, "{plain}");
    let (_, logs) = daemon.terminate();
    assert_no_secret(&logs, &[KEY], "daemon logs");
}

#[test]
fn an_idle_session_is_closed_on_both_sides() {
    let upstream = Upstream::start();
    let daemon = daemon(&upstream);
    // Neither side sends anything: the route's 1 s idle timeout closes both with 1001.
    let seen = run_client(&daemon, "wait-close", "/quiet/silent", None);
    assert_eq!(seen["close_code"], 1001, "{seen}");
    assert_eq!(seen["close_reason"], "idle timeout", "{seen}");
    let closed = upstream.wait_for("closed", "/silent");
    assert_eq!(closed["code"], 1001, "{closed}");
    let line = access_line(&daemon, "/quiet/silent");
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["outcome"], "idle_timeout", "{line}");
    let (_, logs) = daemon.terminate();
    assert_no_secret(&logs, &[KEY], "daemon logs");
}

#[test]
fn shutdown_closes_open_sessions_with_going_away() {
    let upstream = Upstream::start();
    let daemon = daemon(&upstream);
    let mut client = client_command(&daemon, "wait-close", "/live/silent", None)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    let opened = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(
        opened.contains("open"),
        "the client did not open its session: {opened:?}"
    );
    upstream.wait_for("connect", "/silent");

    let (status, logs) = daemon.terminate();
    assert!(status.success(), "{status:?}\n{logs}");
    let report = lines.last().and_then(Result::ok).unwrap_or_default();
    assert!(client.wait().unwrap().success());
    let seen: Value = serde_json::from_str(&report).unwrap_or_else(|_| panic!("{report}"));
    assert_eq!(seen["close_code"], 1001, "{seen}");
    assert_eq!(seen["close_reason"], "the proxy is shutting down", "{seen}");
    assert_eq!(upstream.wait_for("closed", "/silent")["code"], 1001);
    assert!(logs.contains("\"outcome\":\"shutdown\""), "{logs}");
    assert_no_secret(&logs, &[KEY], "daemon logs");
}

#[test]
fn a_wss_upstream_is_verified_and_gets_the_injected_handshake() {
    // A private CA the route trusts through `ca-file`; the upstream speaks wss.
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ca, key) = (dir.path().join("ca.pem"), dir.path().join("key.pem"));
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    std::fs::write(&key, cert.signing_key.serialize_pem()).unwrap();
    let upstream = Upstream::start_with(&["--tls-cert", ca.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let config = format!(
        r#"[secrets.ws]
env = "WS_TEST_KEY"

[routes.secure]
path = "/secure/{{*rest}}"
upstream = "https://localhost:{port}/{{rest}}"
ca-file = {ca:?}
websocket = true
headers = {{ X-Api-Key = "${{ws}}" }}
query = {{ key = "${{ws}}" }}

[routes.untrusted]
path = "/untrusted/{{*rest}}"
upstream = "https://localhost:{port}/{{rest}}"
websocket = true
headers = {{ X-Api-Key = "${{ws}}" }}
"#,
        port = upstream.port,
        ca = ca.display().to_string(),
    );
    let daemon = Daemon::start(&config, &[("WS_TEST_KEY", KEY), ("RUST_LOG", "debug")]);
    let seen = run_client(&daemon, "frames", "/secure/echo", None);
    assert_eq!(seen["text"], "hello", "{seen}");
    assert_eq!(seen["leak_text"], "you sent the key [REDACTED], keep it safe", "{seen}");
    assert_eq!(upstream.wait_for("closed", "/echo")["code"], 4001);
    let connect = upstream.wait_for("connect", "/echo");
    assert_eq!(
        (connect["header_ok"].clone(), connect["query_ok"].clone()),
        (Value::Bool(true), Value::Bool(true))
    );

    // Without the CA the certificate is refused before any handshake is sent.
    let refused = run_client(&daemon, "frames", "/untrusted/echo", None);
    assert_eq!(refused["status"], 502, "{refused}");
    let body: Value = serde_json::from_str(refused["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["code"], "upstream_unreachable", "{body}");
    let (_, logs) = daemon.terminate();
    assert_no_secret(&logs, &[KEY], "daemon logs");
}

/// `secretproxy client add NAME ARGS --config PATH` against the daemon's config; returns the key
/// (the last line of its output).
fn add_client_key(daemon: &Daemon, name: &str, args: &[&str]) -> String {
    let output = crate::harness::binary()
        .args(["client", "add", name])
        .args(args)
        .arg("--config")
        .arg(&daemon.config_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "client add failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().last().unwrap().to_string()
}

#[test]
fn client_keys_gate_websocket_sessions_and_never_reach_the_upstream() {
    let upstream = Upstream::start();
    let daemon = daemon(&upstream);
    let agent = add_client_key(&daemon, "ws-agent", &["--routes", "live"]);
    let other = add_client_key(&daemon, "other", &["--routes", "plain"]);
    // The running daemon picks the keys up from its clients file: once it has, a keyless
    // handshake is refused with 401 (waited on, not slept for).
    let deadline = Instant::now() + Duration::from_secs(30);
    let keyless = loop {
        let seen = run_client(&daemon, "frames", "/live/echo", None);
        if seen["status"] == 401 {
            break seen;
        }
        assert!(Instant::now() < deadline, "keyless handshakes still pass: {seen}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let body: Value = serde_json::from_str(keyless["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["code"], "client_token", "{body}");
    let handshakes_before = upstream.events().len();

    // A key for another route: 403 before any upstream contact.
    let output = client_command(&daemon, "frames", "/live/echo", None)
        .args(["--bearer", &other])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let scoped: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(scoped["status"], 403, "{scoped}");
    let body: Value = serde_json::from_str(scoped["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["code"], "client_route_not_allowed", "{body}");
    assert_eq!(
        upstream.events().len(),
        handshakes_before,
        "a refused handshake reached the upstream: {:?}",
        upstream.events()
    );

    // The route's key: the session opens with the injected secret, frames flow and are
    // scrubbed, and the client key itself is stripped from the upstream handshake.
    let output = client_command(&daemon, "frames", "/live/echo", None)
        .args(["--bearer", &agent])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "client failed: {stdout}");
    assert_no_secret(&stdout, &[KEY, &agent], "what the client received");
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(seen["text"], "hello", "{seen}");
    assert_eq!(seen["leak_text"], "you sent the key [REDACTED], keep it safe", "{seen}");
    // The handshake of this session: the first one after the refusals above.
    let deadline = Instant::now() + Duration::from_secs(30);
    let connect = loop {
        if let Some(event) = upstream.events()[handshakes_before..]
            .iter()
            .find(|e| e["event"] == "connect")
        {
            break event.clone();
        }
        assert!(Instant::now() < deadline, "no keyed handshake: {:?}", upstream.events());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(connect["header_ok"], true, "{connect}");
    assert_eq!(connect["authorization"], Value::Null, "{connect}");
    assert_eq!(connect["token"], Value::Null, "{connect}");

    // The session's access line (written when it ends) names the key by its name only.
    let deadline = Instant::now() + Duration::from_secs(30);
    let session = loop {
        let found = daemon.logs().lines().find_map(|line| {
            let value: Value = serde_json::from_str(line).ok()?;
            (value["target"] == "secretproxy::access" && value["status"] == 101).then_some(value)
        });
        if let Some(line) = found {
            break line;
        }
        assert!(Instant::now() < deadline, "no 101 access line:\n{}", daemon.logs());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(session["client_key"], "ws-agent", "{session}");
    assert_eq!(session["path"], "/live/echo", "{session}");

    let events = serde_json::to_string(&upstream.events()).unwrap();
    assert_no_secret(&events, &[&agent, &other], "what the upstream saw");
    let (_, logs) = daemon.terminate();
    assert_no_secret(&logs, &[KEY, &agent, &other], "daemon logs");
}
