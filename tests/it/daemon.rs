//! The built binary end to end: logs, exit codes, keyring, and no secret anywhere in its output.

use crate::harness::{
    Daemon, Upstream, assert_no_secret, binary, client, require_session_bus, secret_tool_store, unique,
};

const ENV_SECRET: &str = "sk_live_EnvSecret_4242";

#[tokio::test]
async fn serves_logs_access_lines_and_never_a_secret() {
    require_session_bus();
    let account = unique("daemon");
    let keyring_secret = format!("kr_{account}_value");
    secret_tool_store("secretproxy", &account, &keyring_secret);
    let upstream = Upstream::start(|request: crate::harness::Recorded| async move {
        // A hostile upstream that echoes what it got, secrets included.
        crate::harness::text(200, format!("{} {:?}", request.target, request.headers))
    })
    .await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = format!(
        "[secrets.stripe]\nenv = \"TEST_STRIPE_KEY\"\n[secrets.gh]\nkeyring = \"{account}\"\n[secrets.gone]\nenv = \"TEST_NOT_SET_ANYWHERE\"\n\
         [routes.stripe]\npath = \"/stripe/{{*rest}}\"\nupstream = \"{u}/v1/{{rest}}\"\nauth = {{ bearer = \"stripe\" }}\nquery = {{ api_key = \"${{stripe}}\" }}\n\
         [routes.gh]\npath = \"/gh/{{*rest}}\"\nupstream = \"{u}/{{rest}}\"\nheaders = {{ Authorization = \"token ${{gh}}\" }}\n\
         [routes.down]\npath = \"/down\"\nupstream = \"http://{closed}/x\"\nquery = {{ api_key = \"${{stripe}}\" }}\n\
         [routes.gone]\npath = \"/gone\"\nupstream = \"{u}/gone\"\nauth = {{ bearer = \"gone\" }}\n",
        u = upstream.url()
    );
    let daemon = Daemon::start(&config, &[("TEST_STRIPE_KEY", ENV_SECRET)]);

    let ok = client()
        .get(daemon.url("/stripe/charges?limit=3"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let ok = client().get(daemon.url("/gh/user")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let mut bodies = String::new();
    for path in ["/down", "/gone", "/nowhere"] {
        let response = client().get(daemon.url(path)).send().await.unwrap();
        assert!(response.status().is_client_error() || response.status().is_server_error());
        bodies += &response.text().await.unwrap();
    }
    let received = upstream.received();
    assert_eq!(received[0].target, format!("/v1/charges?limit=3&api_key={ENV_SECRET}"));
    assert_eq!(
        received[0].header("authorization"),
        Some(format!("Bearer {ENV_SECRET}").as_str())
    );
    assert_eq!(
        received[1].header("authorization"),
        Some(format!("token {keyring_secret}").as_str())
    );

    let (status, logs) = daemon.terminate();
    assert!(status.success(), "exit status {status:?}\n{logs}");
    assert_no_secret(&logs, &[ENV_SECRET, &keyring_secret], "daemon logs");
    assert_no_secret(&bodies, &[ENV_SECRET, &keyring_secret], "error bodies");

    let access: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "secretproxy::access")
        .collect();
    assert_eq!(access.len(), 5, "{logs}");
    let stripe = access.iter().find(|v| v["route"] == "stripe").unwrap();
    assert_eq!(stripe["query"], "limit=3&api_key=[REDACTED]");
    assert_eq!(stripe["status"], 200);
    assert_eq!(stripe["upstream_status"], 200);
    assert!(stripe["bytes_out"].as_u64().unwrap() > 0);
    assert_eq!(stripe["method"], "GET");
    assert_eq!(stripe["path"], "/stripe/charges");
    assert!(stripe["duration_ms"].as_f64().is_some());
    let down = access.iter().find(|v| v["route"] == "down").unwrap();
    assert_eq!(down["status"], 502);
    assert!(
        logs.contains("\"secret\":\"gone\""),
        "missing secret not logged:\n{logs}"
    );
    assert!(logs.contains("environment variable `TEST_NOT_SET_ANYWHERE`"), "{logs}");
}

#[tokio::test]
async fn starts_without_a_reachable_keyring_and_answers_503() {
    let upstream = Upstream::echo().await;
    let config = format!(
        "[secrets.gh]\nkeyring = \"whatever\"\n[routes.gh]\npath = \"/gh\"\nupstream = \"{}/gh\"\nauth = {{ bearer = \"gh\" }}\n",
        upstream.url()
    );
    let daemon = Daemon::start(
        &config,
        &[("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/secretproxy-bus")],
    );
    let response = client().get(daemon.url("/gh")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], "secret_store_unreachable");
    assert!(upstream.received().is_empty());
    let (status, _) = daemon.terminate();
    assert!(status.success());
}

#[test]
fn config_error_names_file_line_column_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(
        &path,
        "[routes.gh]\npath = \"/gh/{*rest}\"\nupstrem = \"https://api.github.com/{rest}\"\n",
    )
    .unwrap();
    let output = binary().args(["serve", "--config"]).arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8(output.stderr).unwrap();
    let expected = format!(
        "error: {}:3:1: routes.gh.upstrem: unknown field `upstrem`",
        path.display()
    );
    assert!(stderr.starts_with(&expected), "{stderr}");
    assert!(stderr.contains("help: did you mean `upstream`?"), "{stderr}");
}

/// `SECRETPROXY_WORKER_THREADS=1` runs the daemon on a single-threaded runtime: serving, a
/// SIGHUP reload (which reads secrets on the blocking pool) and a graceful stop all still work.
#[tokio::test]
async fn single_worker_runtime_serves_reloads_and_stops() {
    let upstream = Upstream::echo().await;
    let route = |name: &str| {
        format!(
            "[secrets.stripe]\nenv = \"TEST_STRIPE_KEY\"\n[routes.{name}]\npath = \"/{name}\"\nupstream = \"{}/{name}\"\nauth = {{ bearer = \"stripe\" }}\n",
            upstream.url()
        )
    };
    let daemon = Daemon::start(
        &route("before"),
        &[("TEST_STRIPE_KEY", ENV_SECRET), ("SECRETPROXY_WORKER_THREADS", "1")],
    );
    assert_eq!(client().get(daemon.url("/before")).send().await.unwrap().status(), 200);
    std::fs::write(&daemon.config_path, route("after")).unwrap();
    daemon.signal("HUP");
    daemon.wait_for_log("config reloaded", 1, std::time::Duration::from_secs(20));
    assert_eq!(client().get(daemon.url("/after")).send().await.unwrap().status(), 200);
    assert_eq!(client().get(daemon.url("/before")).send().await.unwrap().status(), 404);
    let received = upstream.received();
    assert_eq!(received.len(), 2);
    assert!(
        received
            .iter()
            .all(|r| r.header("authorization") == Some(format!("Bearer {ENV_SECRET}").as_str()))
    );
    let (status, logs) = daemon.terminate();
    assert!(status.success(), "{logs}");
    assert_no_secret(&logs, &[ENV_SECRET], "daemon logs");
}

/// Each worker keeps its own idle upstream connections: a request takes only a connection that
/// its own worker's runtime drives (no wake-up crosses threads), and each worker reuses its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_reuses_its_own_upstream_connections() {
    use http_body_util::BodyExt;
    let upstream = Upstream::echo().await;
    let base = url::Url::parse(&upstream.url()).unwrap();
    let pool = secretproxy::upstream::Upstreams::default()
        .for_origin(&base, None, std::time::Duration::from_secs(5))
        .unwrap();
    // Two workers, each a thread with a single-threaded runtime that stays up until the end;
    // `turn` tells a worker to send one request, `done` reports the status it got.
    let worker = |n: usize| {
        let pool = pool.clone();
        let (turn, mut turns) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (report, done) = std::sync::mpsc::channel::<u16>();
        let thread = std::thread::spawn(move || {
            secretproxy::upstream::set_worker(n);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                while turns.recv().await.is_some() {
                    let body: secretproxy::upstream::UpstreamBody =
                        http_body_util::Empty::new().map_err(|never| match never {}).boxed();
                    let response = pool
                        .send(http::uri::PathAndQuery::from_static("/x"), http::Request::new(body))
                        .await
                        .unwrap();
                    let status = response.status().as_u16();
                    response.into_body().collect().await.unwrap();
                    report.send(status).unwrap();
                }
            });
        });
        (turn, done, thread)
    };
    let (first, first_done, first_thread) = worker(0);
    let (second, second_done, second_thread) = worker(1);
    let connections = || upstream.connections.load(std::sync::atomic::Ordering::SeqCst);
    let ask = |turn: &tokio::sync::mpsc::UnboundedSender<()>, done: &std::sync::mpsc::Receiver<u16>| {
        turn.send(()).unwrap();
        assert_eq!(done.recv_timeout(std::time::Duration::from_secs(10)).unwrap(), 200);
    };
    for _ in 0..3 {
        ask(&first, &first_done);
    }
    assert_eq!(connections(), 1, "worker 0 reuses its connection");
    // Worker 0's connection is idle and alive, but worker 1 opens its own.
    for _ in 0..3 {
        ask(&second, &second_done);
    }
    assert_eq!(connections(), 2, "worker 1 keeps a connection of its own");
    ask(&first, &first_done);
    assert_eq!(connections(), 2, "worker 0 still has its own");
    drop((first, second));
    first_thread.join().unwrap();
    second_thread.join().unwrap();
    assert_eq!(upstream.received().len(), 7);
}
