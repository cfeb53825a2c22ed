//! Client keys end to end, with the built binary: `client add|list|revoke` against a running
//! daemon (scope, rate, daily budget, expiry, revocation within a second, counters kept across a
//! config reload), keyless requests refused once keys exist except on `allow-keyless` routes, and
//! the client token as a key for every route. Keys, their hashes and the upstream secret appear
//! in no log line, error body, `client list` output or metric.

use std::time::{Duration, Instant};

use crate::harness::{Daemon, TestProxy, Upstream, assert_no_secret, binary, client};

const SECRET: &str = "sk-upstream-ClientKeys-5521";

fn config(upstream: &Upstream, dir: &std::path::Path) -> String {
    let secret = dir.join("k.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let url = upstream.url();
    format!(
        "[secrets.k]\nfile = {secret:?}\n\
         [routes.a]\npath = \"/a/{{*rest}}\"\nupstream = \"{url}/a/{{rest}}\"\nauth = {{ bearer = \"k\" }}\n\
         [routes.b]\npath = \"/b/{{*rest}}\"\nupstream = \"{url}/b/{{rest}}\"\nauth = {{ bearer = \"k\" }}\n\
         [routes.open]\npath = \"/open/{{*rest}}\"\nupstream = \"{url}/open/{{rest}}\"\nauth = {{ bearer = \"k\" }}\nallow-keyless = true\n"
    )
}

/// Runs `secretproxy client ARGS --config PATH`; (exit success, stdout, stderr).
fn cli(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let output = binary()
        .arg("client")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `client add`, returning the key (the last line of stdout).
fn add(config: &std::path::Path, args: &[&str]) -> String {
    let (ok, stdout, stderr) = cli(config, &[&["add"], args].concat());
    assert!(ok, "client add failed: {stderr}");
    let key = stdout.lines().last().unwrap().to_string();
    assert!(key.starts_with("sp_") && key.len() >= 46, "{stdout}");
    key
}

struct Answer {
    status: u16,
    code: String,
    body: String,
    retry_after: Option<String>,
}

async fn call(url: &str, key: Option<&str>) -> Answer {
    let mut request = client().get(url);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body = response.text().await.unwrap();
    let code = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_string))
        .unwrap_or_default();
    Answer {
        status,
        code,
        body,
        retry_after,
    }
}

/// Polls until `check` holds for the answer (bounded); returns how long it took.
async fn until(url: &str, key: Option<&str>, limit: Duration, check: impl Fn(&Answer) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let answer = call(url, key).await;
        if check(&answer) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "condition not met within {limit:?}; last answer {} {}",
            answer.status,
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_keys_are_scoped_limited_expire_and_revoke_in_a_running_daemon() {
    let upstream = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config(&upstream, dir.path());
    let daemon = Daemon::start(&text, &[]);
    let path = daemon.config_path.clone();
    let url = |p: &str| daemon.url(p);

    // No keys yet: served as before keys existed.
    assert_eq!(call(&url("/a/x"), None).await.status, 200);

    let agent = add(&path, &["agent", "--routes", "a", "--rate", "4/1h"]);
    let state = std::fs::read_to_string(dir_of(&path).join("proxy.clients.toml")).unwrap();
    assert!(!state.contains(&agent), "the key itself is stored");
    // Keys exist now: keyless requests are refused, except on the allow-keyless route.
    until(&url("/a/x"), None, Duration::from_secs(5), |a| a.status == 401).await;
    let keyless = call(&url("/b/x"), None).await;
    assert_eq!((keyless.status, keyless.code.as_str()), (401, "client_token"));
    assert_eq!(call(&url("/open/x"), None).await.status, 200);
    // An Origin header exempts nothing.
    let posing = client()
        .get(url("/a/x"))
        .header("Origin", format!("http://{}", daemon.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(posing.status(), 401);
    assert_eq!(call(&url("/_secretproxy/health"), None).await.status, 401);
    assert_eq!(call(&url("/nothing"), None).await.status, 401);

    // The key: its route works (the upstream sees the real key, not the client's), other routes 403.
    let first = call(&url("/a/one"), Some(&agent)).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let seen = upstream.received().pop().unwrap();
    assert_eq!(seen.header("authorization"), Some(format!("Bearer {SECRET}").as_str()));
    let via_header = client()
        .get(url("/a/two"))
        .header("X-Secretproxy-Token", &agent)
        .send()
        .await
        .unwrap();
    assert_eq!(via_header.status(), 200);
    let seen = upstream.received().pop().unwrap();
    assert!(seen.header("x-secretproxy-token").is_none());
    // GitHub's clients send `Authorization: token KEY`.
    let as_token = client()
        .get(url("/a/two"))
        .header("Authorization", format!("token {agent}"))
        .send()
        .await
        .unwrap();
    assert_eq!(as_token.status(), 200);
    let seen = upstream.received().pop().unwrap();
    assert_eq!(seen.header("authorization"), Some(format!("Bearer {SECRET}").as_str()));
    let scoped = call(&url("/b/x"), Some(&agent)).await;
    assert_eq!(
        (scoped.status, scoped.code.as_str()),
        (403, "client_route_not_allowed"),
        "{}",
        scoped.body
    );
    // A wrong key in the proxy's own header is refused even on the keyless route.
    let wrong = client()
        .get(url("/open/x"))
        .header("X-Secretproxy-Token", "sp_not-a-key")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    // Rate: 4 per hour, three used above.
    assert_eq!(call(&url("/a/three"), Some(&agent)).await.status, 200);
    let limited = call(&url("/a/four"), Some(&agent)).await;
    assert_eq!(
        (limited.status, limited.code.as_str()),
        (429, "client_rate_limited"),
        "{}",
        limited.body
    );
    assert!(limited.retry_after.is_some());

    // Daily budget.
    let budget = add(&path, &["budget", "--daily", "2"]);
    until(&url("/b/x"), Some(&budget), Duration::from_secs(5), |a| a.status == 200).await;
    assert_eq!(call(&url("/b/y"), Some(&budget)).await.status, 200);
    let spent = call(&url("/b/z"), Some(&budget)).await;
    assert_eq!(
        (spent.status, spent.code.as_str()),
        (429, "client_daily_budget_exceeded"),
        "{}",
        spent.body
    );

    // A config edit reloads the routes; the keys' counters carry on.
    std::fs::write(&path, format!("{text}# edited\n")).unwrap();
    daemon.wait_for_log("config reloaded", 1, Duration::from_secs(10));
    assert_eq!(call(&url("/b/z"), Some(&budget)).await.status, 429);
    assert_eq!(call(&url("/a/five"), Some(&agent)).await.status, 429);

    // Expiry.
    let short = add(&path, &["short", "--expires", "1s"]);
    until(&url("/a/x"), Some(&short), Duration::from_secs(10), |a| {
        a.status == 401 && a.code == "client_key_expired"
    })
    .await;

    // Listing shows names, never keys or hashes.
    let (ok, listed, _) = cli(&path, &["list"]);
    assert!(ok);
    for name in ["agent", "budget", "short", "expired"] {
        assert!(listed.contains(name), "{listed}");
    }
    let state = std::fs::read_to_string(dir_of(&path).join("proxy.clients.toml")).unwrap();
    let hashes: Vec<String> = state
        .lines()
        .filter_map(|l| l.strip_prefix("sha256 = \""))
        .map(|h| h.trim_end_matches('"').to_string())
        .collect();
    assert_eq!(hashes.len(), 3, "{state}");

    // `check` reports the keys the same way, and warns about a scope naming a missing route.
    let mut stale = clients_state_without_route(&state, "a", "gone");
    stale.push('\n');
    let check_dir = tempfile::tempdir().unwrap();
    let check_config = check_dir.path().join("proxy.toml");
    std::fs::write(&check_config, &text).unwrap();
    std::fs::write(check_dir.path().join("proxy.clients.toml"), &stale).unwrap();
    let checked = binary()
        .arg("check")
        .arg("--config")
        .arg(&check_config)
        .output()
        .unwrap();
    let check_out = String::from_utf8_lossy(&checked.stdout).into_owned();
    let check_err = String::from_utf8_lossy(&checked.stderr).into_owned();
    assert!(checked.status.success(), "{check_out}{check_err}");
    assert!(check_out.contains("client keys"), "{check_out}");
    for name in ["agent", "budget", "short"] {
        assert!(check_out.contains(name), "{check_out}");
    }
    assert!(
        check_err.contains("client key `agent` names route `gone`, which this config does not have"),
        "{check_err}"
    );

    // Metrics count per client name.
    let metrics = client()
        .get(url("/_secretproxy/metrics"))
        .bearer_auth(&budget)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("client=\"agent\""), "{metrics}");

    // Revocation takes effect in the running daemon within a second.
    let (ok, said, _) = cli(&path, &["revoke", "budget"]);
    assert!(ok, "{said}");
    let took = until(&url("/a/x"), Some(&budget), Duration::from_secs(5), |a| a.status == 401).await;
    // The promise is "within a second" (inotify, 100 ms debounce); the poll above is bounded
    // more loosely so a loaded machine cannot make this flaky. The time is printed for the record.
    eprintln!("revocation reached the running daemon after {took:?}");
    let (ok, _, missing) = cli(&path, &["revoke", "budget"]);
    assert!(!ok && missing.contains("no client `budget`"), "{missing}");

    let logs = daemon.logs();
    assert!(
        logs.contains("\"client_key\":\"agent\""),
        "the access line names the client:\n{logs}"
    );
    let mut secrets: Vec<&str> = vec![SECRET, &agent, &budget, &short];
    secrets.extend(hashes.iter().map(String::as_str));
    assert_no_secret(&logs, &secrets, "daemon logs");
    assert_no_secret(&listed, &secrets, "client list");
    assert_no_secret(&format!("{check_out}{check_err}"), &secrets, "check");
    assert_no_secret(&metrics, &secrets, "metrics");
    for answer in [keyless, scoped, limited, spent] {
        assert_no_secret(&answer.body, &secrets, "error body");
    }
}

/// The clients file with one key's scope `from` renamed to `to` (a route the config lacks).
fn clients_state_without_route(state: &str, from: &str, to: &str) -> String {
    state.replace(&format!("routes = [\"{from}\"]"), &format!("routes = [\"{to}\"]"))
}

fn dir_of(path: &std::path::Path) -> &std::path::Path {
    path.parent().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_add_checks_its_arguments() {
    let upstream = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config(&upstream, dir.path())).unwrap();
    let (ok, _, error) = cli(&path, &["add", "x", "--routes", "nope"]);
    assert!(!ok && error.contains("no route `nope`"), "{error}");
    let (ok, _, error) = cli(&path, &["add", "x", "--rate", "lots"]);
    assert!(!ok && error.contains("N/PERIOD"), "{error}");
    let (ok, _, error) = cli(&path, &["add", "bad name"]);
    assert!(!ok && error.contains("not a client name"), "{error}");
    let key = add(&path, &["x"]);
    let (ok, _, error) = cli(&path, &["add", "x"]);
    assert!(!ok && error.contains("revoke it first"), "{error}");
    assert_no_secret(&error, &[&key], "error");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("proxy.clients.toml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

/// The client token is a key for every route; `allow-keyless` routes stay open without one.
#[tokio::test]
async fn the_client_token_is_a_key_for_every_route_and_keyless_routes_stay_open() {
    let upstream = Upstream::echo().await;
    let token = "ct_TokenForEveryRoute_3141";
    let url = upstream.url();
    let proxy = TestProxy::builder()
        .secret("k", SECRET)
        .secret("ct", token)
        .toml(&format!(
            "[server]\nclient-token = \"${{ct}}\"\n\
             [routes.a]\npath = \"/a/{{*rest}}\"\nupstream = \"{url}/{{rest}}\"\nauth = {{ bearer = \"k\" }}\n\
             [routes.open]\npath = \"/open/{{*rest}}\"\nupstream = \"{url}/{{rest}}\"\nauth = {{ bearer = \"k\" }}\nallow-keyless = true\n"
        ))
        .start()
        .await;
    assert_eq!(call(&proxy.url("/a/x"), None).await.status, 401);
    assert_eq!(call(&proxy.url("/open/x"), None).await.status, 200);
    assert_eq!(call(&proxy.url("/a/x"), Some(token)).await.status, 200);
    assert_eq!(call(&proxy.url("/open/x"), Some(token)).await.status, 200);
    assert_eq!(call(&proxy.url("/_secretproxy/health"), None).await.status, 401);
    let unknown = call(&proxy.url("/elsewhere"), None).await;
    assert_eq!(unknown.status, 401, "no route hints for callers without a key");
    for seen in upstream.received() {
        assert_no_secret(&format!("{:?}", seen.headers), &[token], "forwarded request");
    }
}
