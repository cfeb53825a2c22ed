//! Every refusal explains itself: the JSON body and the daemon's WARN line name the refused value
//! and the config line that would allow it; a 404 names the path and the closest route; the
//! default (human) log has one compact line per request and prints the route table at start.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Daemon, Upstream, assert_no_secret, binary, client, text};

const SECRET: &str = "sk_live_RefusalSecret_3307";

fn config(upstream: &str) -> String {
    format!(
        "[server]\nallowed-origins = [\"http://localhost:5173\"]\n\
         [secrets.k]\nenv = \"REFUSAL_SECRET\"\n\
         [routes.github]\npath = \"/api/github/{{*rest}}\"\nupstream = \"{upstream}/{{rest}}\"\nauth = {{ bearer = \"k\" }}\n\
         [routes.admin]\npath = \"/api/admin/{{*rest}}\"\nupstream = \"{upstream}/admin/{{rest}}\"\nauth = {{ bearer = \"k\" }}\n\
         allowed-origins = [\"http://localhost:5173\"]\n"
    )
}

#[tokio::test]
async fn refusals_name_the_value_and_the_fix() {
    let upstream = Upstream::start(|_| async { text(200, "ok") }).await;
    let daemon = Daemon::start(&config(&upstream.url()), &[("REFUSAL_SECRET", SECRET)]);

    // 127.0.0.1 while localhost is listed: the most common dead end.
    let response = client()
        .get(daemon.url("/api/github/user"))
        .header("origin", "http://127.0.0.1:5173")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], "origin_not_allowed");
    assert!(
        body["error"].as_str().unwrap().contains("`http://127.0.0.1:5173`"),
        "{body}"
    );
    let hint = body["hint"].as_str().unwrap();
    assert!(hint.contains("allowed-origins = [\"http://127.0.0.1:5173\"]"), "{hint}");
    assert!(hint.contains("localhost and 127.0.0.1"), "{hint}");

    // A foreign Host: named, with the allowed-hosts line.
    let response = client()
        .get(daemon.url("/api/github/user"))
        .header("host", format!("proxy.example:{}", daemon.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], "host_not_allowed");
    assert!(body["error"].as_str().unwrap().contains("proxy.example"), "{body}");
    assert!(
        body["hint"]
            .as_str()
            .unwrap()
            .contains("allowed-hosts = [\"proxy.example\"]"),
        "{body}"
    );

    // A near miss: the path and the closest route.
    let response = client().get(daemon.url("/api/github")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["path"], "/api/github");
    assert!(body["hint"].as_str().unwrap().contains("/api/github/{*rest}"), "{body}");

    assert!(upstream.received().is_empty(), "a refused request reached the upstream");
    let logs = daemon.wait_for_log("\"target\":\"secretproxy::access\"", 3, Duration::from_secs(10));
    let lines: Vec<Value> = logs.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let warned_origin = lines.iter().any(|l| {
        l["level"] == "WARN"
            && l["code"] == "origin_not_allowed"
            && l["message"].as_str().unwrap_or("").contains("http://127.0.0.1:5173")
            && l["hint"].as_str().unwrap_or("").contains("allowed-origins")
    });
    assert!(warned_origin, "no WARN line naming the origin and the fix:\n{logs}");
    let access_warns = lines
        .iter()
        .filter(|l| l["target"] == "secretproxy::access" && l["level"] == "WARN")
        .count();
    assert_eq!(access_warns, 3, "refusals are WARN access lines:\n{logs}");
    let (status, logs) = daemon.terminate();
    assert!(status.success());
    assert_no_secret(&logs, &[SECRET], "daemon logs");
}

/// The default log: the route table at start, then one compact line per request naming the
/// route and the upstream host; WARN for refusals.
#[tokio::test]
async fn the_default_log_is_one_readable_line_per_request() {
    let upstream = Upstream::start(|_| async { text(200, "hello") }).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config(&upstream.url())).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let stderr = dir.path().join("stderr.log");
    let mut child = binary()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--config"])
        .arg(&path)
        .env("REFUSAL_SECRET", SECRET)
        .env_remove("RUST_LOG")
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let ok = loop {
        match client().get(format!("{url}/api/github/user")).send().await {
            Ok(response) => break response,
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("daemon did not answer: {err}"),
        }
    };
    assert_eq!(ok.status(), 200);
    let missing = client().get(format!("{url}/nowhere")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
    let logs = std::fs::read_to_string(&stderr).unwrap();
    let host = upstream.url().trim_start_matches("http://").to_string();
    assert!(
        logs.contains(&format!("route github: GET,HEAD /api/github/{{*rest}} -> {host}"))
            || logs.contains(&format!("/api/github/{{*rest}} -> {host}")),
        "no route table line:\n{logs}"
    );
    let line = logs
        .lines()
        .find(|l| l.contains("GET /api/github/user"))
        .unwrap_or_else(|| panic!("no access line:\n{logs}"));
    assert!(line.contains(" INFO "), "{line}");
    assert!(line.contains(&format!("-> github ({host}) 200 upstream=200")), "{line}");
    let refused = logs
        .lines()
        .find(|l| l.contains("GET /nowhere"))
        .unwrap_or_else(|| panic!("no access line for the 404:\n{logs}"));
    assert!(
        refused.contains(" WARN ") && refused.contains("404 error=no_route"),
        "{refused}"
    );
    assert!(line.len() < 160, "access line too long: {line}");
    assert_no_secret(&logs, &[SECRET], "daemon logs");
}

/// `RUST_LOG=secretproxy=debug` shows each outbound request as `route test` would: method, URL
/// and headers, injected values as their template and never as values.
#[tokio::test]
async fn debug_logging_shows_the_outbound_request_masked() {
    let upstream = Upstream::start(|_| async { text(200, "ok") }).await;
    let config = format!(
        "[secrets.k]\nenv = \"REFUSAL_SECRET\"\n\
         [routes.weather]\npath = \"/api/weather\"\nupstream = \"{}/data\"\nquery = {{ appid = \"${{k}}\" }}\n\
         headers = {{ X-Api-Key = \"key ${{k}}\" }}\n",
        upstream.url()
    );
    let daemon = Daemon::start(
        &config,
        &[("REFUSAL_SECRET", SECRET), ("RUST_LOG", "secretproxy=debug")],
    );
    let response = client()
        .get(daemon.url("/api/weather?city=Oslo"))
        .header("x-trace", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let logs = daemon.wait_for_log("sending upstream", 1, Duration::from_secs(10));
    let line = logs.lines().find(|l| l.contains("sending upstream")).unwrap();
    let host = upstream.url().trim_start_matches("http://").to_string();
    assert!(
        line.contains(&format!("GET http://{host}/data?city=Oslo&appid=[REDACTED]")),
        "{line}"
    );
    assert!(line.contains("x-api-key: key ${k} (injected)"), "{line}");
    assert!(line.contains("x-trace: abc"), "{line}");
    let (_, logs) = daemon.terminate();
    assert_no_secret(&logs, &[SECRET], "debug logs");
}
