//! State that must survive a reload or follow a keyring change, through the built binary:
//! rate-limit buckets and daily quotas carry over a `route add` of another route and start fresh
//! when their own limit changes; `secret set` and `secret delete` reach a running daemon within
//! seconds (the real Secret Service). Values never show in logs, outputs or responses.

use std::process::Output;
use std::time::{Duration, Instant};

use crate::harness::{
    Daemon, Upstream, assert_no_secret, binary, client, require_session_bus, secret_tool_store, unique,
};

const SECRET: &str = "sk_state_Secret_5120";

/// Polls `check` every 50 ms until it is true (at most `limit`); returns how long it took.
async fn until<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what} did not happen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get(url: &str) -> (u16, String) {
    let response = client().get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn code(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_string))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_and_quotas_survive_an_unrelated_reload_and_reset_when_changed() {
    let upstream = Upstream::echo().await;
    let u = upstream.url();
    let config = format!(
        "[secrets.key]\nenv = \"TEST_STATE_KEY\"\n\
         [routes.quota]\npath = \"/quota\"\nupstream = \"{u}/quota\"\nauth = {{ bearer = \"key\" }}\n\
         rate-limit = {{ requests = 100, per = \"1s\", daily = 2 }}\n\
         [routes.bucket]\npath = \"/bucket\"\nupstream = \"{u}/bucket\"\nauth = {{ bearer = \"key\" }}\n\
         rate-limit = {{ requests = 1, per = \"1h\" }}\n"
    );
    let daemon = Daemon::start(&config, &[("TEST_STATE_KEY", SECRET)]);
    let mut bodies = String::new();
    for path in ["/quota", "/quota", "/bucket"] {
        let (status, body) = get(&daemon.url(path)).await;
        assert_eq!(status, 200, "{path}: {body}");
        bodies.push_str(&body);
    }

    // `route add` of another route: a reload that leaves both limits as they were.
    let output = binary()
        .args(["route", "add", "other", "--path", "/other", "--upstream"])
        .arg(format!("{u}/other"))
        .arg("--config")
        .arg(&daemon.config_path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    until(Duration::from_secs(10), "the added route", || async {
        get(&daemon.url("/other")).await.0 == 200
    })
    .await;
    daemon.wait_for_log("config reloaded", 1, Duration::from_secs(10));
    let (status, body) = get(&daemon.url("/quota")).await;
    assert_eq!((status, code(&body).as_str()), (429, "daily_quota_exceeded"), "{body}");
    let (status, body) = get(&daemon.url("/bucket")).await;
    assert_eq!((status, code(&body).as_str()), (429, "rate_limited"), "{body}");
    assert_eq!(upstream.received().len(), 4, "a limited request reached the upstream");

    // The quota's own limit changes: it starts fresh; the bucket, unchanged, stays used up.
    let text = std::fs::read_to_string(&daemon.config_path).unwrap();
    assert!(text.contains("daily = 2"), "{text}");
    let temp = daemon.config_path.with_extension("toml.tmp");
    std::fs::write(&temp, text.replace("daily = 2", "daily = 3")).unwrap();
    std::fs::rename(&temp, &daemon.config_path).unwrap();
    daemon.wait_for_log("config reloaded", 2, Duration::from_secs(10));
    let (status, body) = get(&daemon.url("/quota")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&daemon.url("/bucket")).await;
    assert_eq!((status, code(&body).as_str()), (429, "rate_limited"), "{body}");
    bodies.push_str(&body);

    let (status, logs) = daemon.terminate();
    assert!(status.success(), "{logs}");
    assert_no_secret(&logs, &[SECRET], "daemon logs");
    assert_no_secret(&bodies, &[SECRET], "responses");
}

/// `secretproxy secret ARGS --config PATH`, with `input` on a piped stdin; must succeed.
fn secret_command(args: &[&str], config: &std::path::Path, input: &str) -> Output {
    let args: Vec<&str> = std::iter::once("secret").chain(args.iter().copied()).collect();
    let output = crate::cli_secret::run_with_stdin(&args, config, input);
    assert!(output.status.success(), "secret {args:?}: {output:?}");
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_set_and_delete_reach_a_running_daemon_within_seconds() {
    require_session_bus();
    let account = unique("state");
    let values = [
        format!("first_{account}_value"),
        format!("second_{account}_value"),
        format!("third_{account}_value"),
    ];
    secret_tool_store("secretproxy", &account, &values[0]);
    let upstream = Upstream::echo().await;
    let config = format!(
        "[secrets.gh]\nkeyring = \"{account}\"\n\
         [routes.gh]\npath = \"/gh\"\nupstream = \"{}/gh\"\nauth = {{ bearer = \"gh\" }}\n",
        upstream.url()
    );
    let daemon = Daemon::start(&config, &[]);
    let url = daemon.url("/gh");
    let mut texts = String::new();
    let bearer = |value: &str| format!("Bearer {value}");
    let last_seen = || {
        upstream
            .received()
            .last()
            .and_then(|r| r.header("authorization").map(str::to_string))
    };
    assert_eq!(get(&url).await.0, 200);
    assert_eq!(last_seen(), Some(bearer(&values[0])));

    // A changed value: the next requests carry it within seconds, without a reload.
    let output = secret_command(&["set", "gh"], &daemon.config_path, &format!("{}\n", values[1]));
    texts.push_str(&String::from_utf8_lossy(&output.stdout));
    let changed = until(Duration::from_secs(10), "the changed value in use", || async {
        get(&url).await.0 == 200 && last_seen() == Some(bearer(&values[1]))
    })
    .await;

    // Deleted: the route answers 503 again, and nothing reaches the upstream.
    let output = secret_command(&["delete", "gh"], &daemon.config_path, "");
    texts.push_str(&String::from_utf8_lossy(&output.stdout));
    let seen_before = upstream.received().len();
    let deleted = until(Duration::from_secs(10), "the deletion seen", || async {
        let (status, body) = get(&url).await;
        status == 503 && code(&body) == "secret_missing"
    })
    .await;
    let after_delete = upstream.received().len();
    assert!(
        upstream.received()[seen_before..]
            .iter()
            .all(|r| r.header("authorization") == Some(bearer(&values[1]).as_str())),
        "a value other than the last stored one was sent"
    );
    let (status, body) = get(&url).await;
    assert_eq!(status, 503, "{body}");
    texts.push_str(&body);
    assert_eq!(
        upstream.received().len(),
        after_delete,
        "a request without the secret reached the upstream"
    );

    // Set again: served again.
    secret_command(&["set", "gh"], &daemon.config_path, &values[2]);
    let restored = until(Duration::from_secs(10), "the new value in use", || async {
        get(&url).await.0 == 200 && last_seen() == Some(bearer(&values[2]))
    })
    .await;
    eprintln!("seen by the running daemon after: set {changed:?}, delete {deleted:?}, set again {restored:?}");

    let (status, logs) = daemon.terminate();
    assert!(status.success(), "{logs}");
    for line in [
        "secret changed; the new value is in use",
        "secret is no longer available",
        "secret is now available",
    ] {
        assert!(logs.contains(line), "{line:?} not logged:\n{logs}");
    }
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    assert_no_secret(&logs, &values, "daemon logs");
    assert_no_secret(&texts, &values, "command outputs and responses");
}
