//! Live reload and graceful shutdown of the built binary: the config file rewritten under load,
//! invalid edits, SIGHUP, a `listen` change and the other restart-only settings, a watcher that
//! wakes for the config only, and SIGTERM during a slow stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::mpsc;

use crate::harness::{Daemon, TestBody, Upstream, assert_no_secret, binary, client};

const SECRET: &str = "sk_reload_Secret_9931";

/// Replaces `path` the way most editors save: a temp file renamed over it.
fn write_by_rename(path: &std::path::Path, text: &str) {
    let temp = path.with_extension("toml.swp");
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

/// Polls `url` until it answers `status` (at most 10 s).
async fn wait_for_status(url: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(response) = client().get(url).send().await
            && response.status() == status
        {
            return;
        }
        assert!(Instant::now() < deadline, "{url} never answered {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn versioned_config(upstream: &str, version: usize) -> String {
    format!(
        "# reload test, version {version}\n[secrets.key]\nenv = \"TEST_RELOAD_KEY\"\n\n\
         [routes.stable]\npath = \"/stable\"\nupstream = \"{upstream}/stable\"\nquery = {{ key = \"${{key}}\" }}\n\n\
         [routes.v{version}]\npath = \"/v{version}\"\nupstream = \"{upstream}/v{version}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_rewrites_under_load_drop_no_request_and_new_routes_take_effect() {
    let upstream = Upstream::echo().await;
    let daemon = Daemon::start(&versioned_config(&upstream.url(), 0), &[("TEST_RELOAD_KEY", SECRET)]);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let url = daemon.url("/stable");
    let load = tokio::spawn({
        let (stop, sent, failures) = (stop.clone(), sent.clone(), failures.clone());
        async move {
            let pooled = client();
            while !stop.load(Ordering::Relaxed) {
                let n = sent.fetch_add(1, Ordering::Relaxed);
                // Mostly a kept-alive connection, sometimes a fresh one.
                let client = if n % 4 == 0 { client() } else { pooled.clone() };
                match client.get(&url).send().await {
                    Ok(response) if response.status() == 200 => {
                        let _ = response.bytes().await;
                    }
                    Ok(response) => failures.lock().unwrap().push(format!("status {}", response.status())),
                    Err(error) => failures.lock().unwrap().push(format!("{error:?}")),
                }
            }
        }
    });

    let started = Instant::now();
    for version in 1..=20 {
        let text = versioned_config(&upstream.url(), version);
        if version % 2 == 0 {
            std::fs::write(&daemon.config_path, text).unwrap();
        } else {
            write_by_rename(&daemon.config_path, &text);
        }
        wait_for_status(&daemon.url(&format!("/v{version}")), 200).await;
        let old = client()
            .get(daemon.url(&format!("/v{}", version - 1)))
            .send()
            .await
            .unwrap();
        assert_eq!(
            old.status(),
            404,
            "the route of version {} is still served",
            version - 1
        );
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();

    let failures = failures.lock().unwrap().clone();
    let sent = sent.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {failures:?}",
        failures.len()
    );
    assert!(sent >= 20, "the load loop sent only {sent} requests");
    assert!(elapsed < Duration::from_secs(60), "20 reloads took {elapsed:?}");
    let stable = upstream
        .received()
        .iter()
        .filter(|r| r.target.starts_with("/stable"))
        .count();
    assert!(stable >= sent - 1, "upstream saw {stable} of {sent}");

    let (status, logs) = daemon.terminate();
    assert!(status.success(), "{status:?}\n{logs}");
    assert!(logs.matches("config reloaded").count() >= 20, "{logs}");
    assert!(!logs.contains("config reload failed"), "{logs}");
    assert_no_secret(&logs, &[SECRET], "daemon logs");
    eprintln!("20 reloads in {elapsed:?} while {sent} requests ran; 0 failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_edit_is_logged_with_its_location_and_the_old_table_keeps_serving() {
    let upstream = Upstream::echo().await;
    let good = format!(
        "[secrets.key]\nenv = \"TEST_RELOAD_KEY\"\n[routes.a]\npath = \"/a\"\nupstream = \"{u}/a\"\nauth = {{ bearer = \"key\" }}\n",
        u = upstream.url()
    );
    let daemon = Daemon::start(&good, &[("TEST_RELOAD_KEY", SECRET)]);

    // A misspelled key, saved by rename.
    write_by_rename(
        &daemon.config_path,
        &format!(
            "{good}[routes.b]\npath = \"/b\"\nupstrem = \"{u}/b\"\n",
            u = upstream.url()
        ),
    );
    let logs = daemon.wait_for_log("config reload failed", 1, Duration::from_secs(10));
    let expected = format!(
        "{}:9:1: routes.b.upstrem: unknown field `upstrem`",
        daemon.config_path.display()
    );
    assert!(logs.contains(&expected), "{expected} not in\n{logs}");
    assert!(logs.contains("did you mean `upstream`?"), "{logs}");

    // A semantic error, written in place.
    std::fs::write(
        &daemon.config_path,
        format!(
            "{good}[routes.b]\npath = \"/b\"\nupstream = \"{u}/b\"\nheaders = {{ X = \"${{nope}}\" }}\n",
            u = upstream.url()
        ),
    )
    .unwrap();
    let logs = daemon.wait_for_log("config reload failed", 2, Duration::from_secs(10));
    assert!(
        logs.contains(&format!("{}:10:", daemon.config_path.display())) && logs.contains("unknown secret `nope`"),
        "{logs}"
    );

    // The old table still serves, secret included; the half-added route does not exist.
    let a = client().get(daemon.url("/a")).send().await.unwrap();
    assert_eq!(a.status(), 200);
    assert_eq!(client().get(daemon.url("/b")).send().await.unwrap().status(), 404);
    assert_eq!(
        upstream.only().header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );

    // Fixing the file brings the new route in.
    write_by_rename(
        &daemon.config_path,
        &format!(
            "{good}[routes.b]\npath = \"/b\"\nupstream = \"{u}/b\"\n",
            u = upstream.url()
        ),
    );
    wait_for_status(&daemon.url("/b"), 200).await;

    let (status, logs) = daemon.terminate();
    assert!(status.success());
    assert_no_secret(&logs, &[SECRET], "daemon logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_reads_secrets_again() {
    let upstream = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("key");
    std::fs::write(&secret_file, "first-value-1111\n").unwrap();
    let config = format!(
        "[secrets.key]\nfile = {:?}\n[routes.a]\npath = \"/a\"\nupstream = \"{}/a\"\nauth = {{ bearer = \"key\" }}\n",
        secret_file.display().to_string(),
        upstream.url()
    );
    let daemon = Daemon::start(&config, &[]);
    assert_eq!(client().get(daemon.url("/a")).send().await.unwrap().status(), 200);

    // SIGHUP reads every secret again at once (without it, within seconds on use).
    std::fs::write(&secret_file, "second-value-2222\n").unwrap();
    daemon.signal("HUP");
    daemon.wait_for_log("\"trigger\":\"SIGHUP\"", 1, Duration::from_secs(10));
    assert_eq!(client().get(daemon.url("/a")).send().await.unwrap().status(), 200);
    let received = upstream.received();
    assert_eq!(received[0].header("authorization"), Some("Bearer first-value-1111"));
    assert_eq!(received[1].header("authorization"), Some("Bearer second-value-2222"));

    let (status, logs) = daemon.terminate();
    assert!(status.success(), "{logs}");
    assert!(logs.contains("\"generation\":2"), "{logs}");
    assert_no_secret(&logs, &["first-value-1111", "second-value-2222"], "daemon logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_change_is_logged_as_needing_a_restart() {
    use std::io::BufRead;
    let upstream = Upstream::echo().await;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (first, second) = (free(), free());
    let config = |listen: std::net::SocketAddr, route: &str| {
        format!(
            "[server]\nlisten = \"{listen}\"\n[routes.{route}]\npath = \"/{route}\"\nupstream = \"{}/{route}\"\n",
            upstream.url()
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config(first, "a")).unwrap();
    // Without --listen, so the file's address is the one in use.
    let mut child = binary()
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let logs = Arc::new(std::sync::Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn({
        let logs = logs.clone();
        move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                logs.lock().unwrap().push_str(&(line + "\n"));
            }
        }
    });
    wait_for_status(&format!("http://{first}/a"), 200).await;

    write_by_rename(&path, &config(second, "b"));
    wait_for_status(&format!("http://{first}/b"), 200).await;
    let text = logs.lock().unwrap().clone();
    assert!(
        text.contains("server.listen changed; it takes effect only after a restart")
            && text.contains(&format!("\"to\":\"{second}\"")),
        "{text}"
    );
    assert!(
        std::net::TcpStream::connect(second).is_err(),
        "bound the new address without a restart"
    );

    let _ = std::process::Command::new("kill").arg(child.id().to_string()).status();
    assert!(child.wait().unwrap().success());
}

/// An upstream whose response is `chunks` pieces, one every `interval`.
async fn slow_upstream(chunks: usize, interval: Duration) -> Upstream {
    Upstream::start(move |_| async move {
        let (tx, mut rx) = mpsc::channel::<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>(1);
        tokio::spawn(async move {
            for i in 0..chunks {
                if i > 0 {
                    tokio::time::sleep(interval).await;
                }
                if tx
                    .send(Ok(Frame::data(Bytes::from(format!("chunk {i}\n")))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let body: TestBody = BodyExt::boxed(StreamBody::new(stream));
        http::Response::new(body)
    })
    .await
}

fn slow_config(upstream: &Upstream, extra: &str) -> String {
    format!(
        "{extra}[secrets.key]\nenv = \"TEST_RELOAD_KEY\"\n[routes.slow]\npath = \"/slow\"\nupstream = \"{}/slow\"\nauth = {{ bearer = \"key\" }}\n",
        upstream.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_in_flight_finishes_on_the_table_it_started_with() {
    let upstream = slow_upstream(6, Duration::from_millis(250)).await;
    let daemon = Daemon::start(&slow_config(&upstream, ""), &[("TEST_RELOAD_KEY", SECRET)]);
    let mut response = client().get(daemon.url("/slow")).send().await.unwrap();
    let mut body = response.chunk().await.unwrap().unwrap().to_vec();

    // The route disappears from the config while its stream is running.
    write_by_rename(
        &daemon.config_path,
        "[routes.other]\npath = \"/other\"\nupstream = \"https://other.example/\"\n",
    );
    wait_for_status(&daemon.url("/slow"), 404).await;
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    let expected: String = (0..6).map(|i| format!("chunk {i}\n")).collect();
    assert_eq!(String::from_utf8(body).unwrap(), expected);

    let (status, logs) = daemon.terminate();
    assert!(status.success());
    assert_no_secret(&logs, &[SECRET], "daemon logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_stream_finish_then_exits_0() {
    let upstream = slow_upstream(6, Duration::from_millis(300)).await;
    let daemon = Daemon::start(&slow_config(&upstream, ""), &[("TEST_RELOAD_KEY", SECRET)]);
    let mut response = client().get(daemon.url("/slow")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b"chunk 0\n");

    daemon.signal("TERM");
    daemon.wait_for_log("shutting down", 1, Duration::from_secs(5));
    // No new connections once shutdown began.
    assert!(client().get(daemon.url("/slow")).send().await.is_err());

    let mut body = first.to_vec();
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    let expected: String = (0..6).map(|i| format!("chunk {i}\n")).collect();
    assert_eq!(String::from_utf8(body).unwrap(), expected);

    let (status, logs) = daemon.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(logs.contains("all connections drained"), "{logs}");
    assert_no_secret(&logs, &[SECRET], "daemon logs");
}

/// Several workers (by default one single-threaded runtime per core, each accepting on the shared
/// socket) serve every connection, and SIGTERM drains the streams in flight on all of them; the
/// work-stealing runtime (`SECRETPROXY_RUNTIME=shared`, kept for comparison) does the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_serve_every_connection_and_drain_on_sigterm() {
    for runtime in ["per-core", "shared"] {
        let upstream = slow_upstream(4, Duration::from_millis(200)).await;
        let daemon = Daemon::start(
            &slow_config(&upstream, ""),
            &[
                ("TEST_RELOAD_KEY", SECRET),
                ("SECRETPROXY_WORKER_THREADS", "3"),
                ("SECRETPROXY_RUNTIME", runtime),
            ],
        );
        // The worker threads name themselves as they start.
        let pid = daemon.child.id();
        let names = || -> Vec<String> {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .unwrap()
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
                .collect()
        };
        let workers = |names: &[String]| names.iter().filter(|name| name.starts_with("secretproxy-wor")).count();
        let want = if runtime == "per-core" { 2 } else { 0 };
        let deadline = Instant::now() + Duration::from_secs(10);
        while workers(&names()) != want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(workers(&names()), want, "{runtime}: {:?}", names());

        // Six streams, each on a connection of its own, all open at once.
        let mut streams = Vec::new();
        for _ in 0..6 {
            let mut response = client().get(daemon.url("/slow")).send().await.unwrap();
            assert_eq!(response.status(), 200, "{runtime}");
            let first = response.chunk().await.unwrap().unwrap();
            streams.push((response, first.to_vec()));
        }
        daemon.signal("TERM");
        daemon.wait_for_log("shutting down", 1, Duration::from_secs(5));
        assert!(client().get(daemon.url("/slow")).send().await.is_err(), "{runtime}");
        let expected: String = (0..4).map(|i| format!("chunk {i}\n")).collect();
        for (mut response, mut body) in streams {
            while let Some(chunk) = response.chunk().await.unwrap() {
                body.extend_from_slice(&chunk);
            }
            assert_eq!(String::from_utf8(body).unwrap(), expected, "{runtime}");
        }
        let (status, logs) = daemon.wait(Duration::from_secs(10));
        assert_eq!(status.code(), Some(0), "{runtime}: {logs}");
        assert!(logs.contains("all connections drained"), "{runtime}: {logs}");
        assert_no_secret(&logs, &[SECRET], "daemon logs");
        let received = upstream.received();
        assert_eq!(received.len(), 6, "{runtime}");
        let bearer = format!("Bearer {SECRET}");
        assert!(
            received
                .iter()
                .all(|r| r.header("authorization") == Some(bearer.as_str()))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_bounds_the_drain_and_a_second_signal_exits_at_once() {
    // The deadline: a stream that would run 30 s is cut after the configured 1 s; exit 0.
    let upstream = slow_upstream(100, Duration::from_millis(300)).await;
    let daemon = Daemon::start(
        &slow_config(&upstream, "[server]\nshutdown-timeout = \"1s\"\n"),
        &[("TEST_RELOAD_KEY", SECRET)],
    );
    let mut response = client().get(daemon.url("/slow")).send().await.unwrap();
    response.chunk().await.unwrap().unwrap();
    let started = Instant::now();
    daemon.signal("TERM");
    let (status, logs) = daemon.wait(Duration::from_secs(15));
    let took = started.elapsed();
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert!(logs.contains("drain deadline passed"), "{logs}");
    assert_no_secret(&logs, &[SECRET], "daemon logs");

    // A second signal: no waiting for the 30 s default deadline; exit status 1.
    let daemon = Daemon::start(&slow_config(&upstream, ""), &[("TEST_RELOAD_KEY", SECRET)]);
    let mut response = client().get(daemon.url("/slow")).send().await.unwrap();
    response.chunk().await.unwrap().unwrap();
    daemon.signal("TERM");
    daemon.wait_for_log("shutting down", 1, Duration::from_secs(5));
    let started = Instant::now();
    daemon.signal("INT");
    let (status, logs) = daemon.wait(Duration::from_secs(10));
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(status.code(), Some(1), "{logs}");
    assert!(logs.contains("second signal"), "{logs}");
    assert_no_secret(&logs, &[SECRET], "daemon logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_add_reaches_a_running_daemon() {
    let upstream = Upstream::echo().await;
    let daemon = Daemon::start(
        &format!(
            "[secrets.key]\nenv = \"TEST_RELOAD_KEY\"\n[routes.a]\npath = \"/a\"\nupstream = \"{}/a\"\n",
            upstream.url()
        ),
        &[("TEST_RELOAD_KEY", SECRET)],
    );
    let output = binary()
        .args(["route", "add", "added", "--path", "/added/{*rest}", "--upstream"])
        .arg(format!("{}/x/{{rest}}", upstream.url()))
        .args(["--header", "X-Key: ${key}", "--config"])
        .arg(&daemon.config_path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    wait_for_status(&daemon.url("/added/deep/path"), 200).await;
    let seen = upstream.only();
    assert_eq!(seen.target, "/x/deep/path");
    assert_eq!(seen.header("x-key"), Some(SECRET));
    let (status, logs) = daemon.terminate();
    assert!(status.success());
    assert_no_secret(&logs, &[SECRET], "daemon logs");
    assert_no_secret(&String::from_utf8_lossy(&output.stdout), &[SECRET], "route add output");
}

/// A daemon listening beyond loopback (allowed with `allow-remote` and a client token) refuses a
/// reload that would drop the token: the old table, token check included, keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_cannot_drop_the_client_token_of_a_remote_socket() {
    const TOKEN: &str = "client-token-reload-7781";
    let upstream = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, TOKEN).unwrap();
    let route = format!(
        "[secrets.key]\nenv = \"TEST_RELOAD_KEY\"\n[routes.a]\npath = \"/a\"\nupstream = \"{}/a\"\nauth = {{ bearer = \"key\" }}\n",
        upstream.url()
    );
    let guarded = format!(
        "[server]\nallow-remote = true\nclient-token = \"${{token}}\"\n[secrets.token]\nfile = {:?}\n{route}",
        token_path.display().to_string()
    );
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, &guarded).unwrap();
    let daemon = Daemon::start_listening(dir, path.clone(), "0.0.0.0:0", &[("TEST_RELOAD_KEY", SECRET)]);
    let url = format!("http://127.0.0.1:{}/a", daemon.addr.port());
    assert_eq!(client().get(&url).send().await.unwrap().status(), 401);

    std::fs::write(&path, &route).unwrap();
    daemon.signal("HUP");
    let logs = daemon.wait_for_log("config reload failed", 1, Duration::from_secs(20));
    assert!(logs.contains("allow-remote"), "{logs}");
    assert_eq!(client().get(&url).send().await.unwrap().status(), 401);
    let with_token = client()
        .get(&url)
        .header("X-Secretproxy-Token", TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 200);
    let (status, logs) = daemon.terminate();
    assert!(status.success(), "{logs}");
    assert_no_secret(&logs, &[SECRET, TOKEN], "daemon logs");
}

/// Logging that shows every reload attempt, including those that find the text unchanged.
const RELOAD_DEBUG: (&str, &str) = ("RUST_LOG", "info,secretproxy::daemon::reload=debug");
const UNCHANGED: &str = "config unchanged; not reloaded";
const RELOADED: &str = "config reloaded";

/// Context switches of every thread of process `pid`: how often it woke up.
fn wakeups(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            if let Some(n) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += n.trim().parse::<u64>().unwrap();
            }
        }
    }
    total
}

/// Writes, reads and renames everything in the config's directory except the config, with
/// pauses longer than the debounce so a watcher woken by any of it would log a reload attempt.
fn busy_neighbours(dir: &std::path::Path, config: &std::path::Path) {
    use std::io::Write;
    let log = dir.join("proxy.log");
    for round in 0..5 {
        for line in 0..200 {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
            writeln!(file, "{{\"round\":{round},\"line\":{line}}}").unwrap();
            drop(file);
            let _ = std::fs::read(config).unwrap();
        }
        let other = dir.join("other.toml.tmp");
        std::fs::write(&other, "x").unwrap();
        std::fs::rename(&other, dir.join("other.toml")).unwrap();
        std::fs::remove_file(dir.join("other.toml")).unwrap();
        // A pause longer than the debounce: proving an absence needs time to pass, not a condition.
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_wakes_for_the_config_only() {
    let upstream = Upstream::echo().await;
    let route = |name: &str| {
        format!(
            "[routes.{name}]\npath = \"/{name}\"\nupstream = \"{}/{name}\"\n",
            upstream.url()
        )
    };
    let first = route("a");
    let daemon = Daemon::start(&first, &[RELOAD_DEBUG]);
    let path = daemon.config_path.clone();
    let dir = path.parent().unwrap().to_path_buf();

    // The first event after start, with the text that is serving: nothing is rebuilt.
    std::fs::write(&path, &first).unwrap();
    let logs = daemon.wait_for_log(UNCHANGED, 1, Duration::from_secs(10));
    assert_eq!(logs.matches(RELOADED).count(), 0, "{logs}");

    // A log file written in a loop next to the config, reads of the config, other files renamed:
    // no reload attempt at all, and the daemon is not even woken (1000 writes and reads would
    // cost hundreds of wake-ups with a directory watch; an idle daemon has a few dozen).
    let pid = daemon.child.id();
    let before = wakeups(pid);
    tokio::task::spawn_blocking({
        let (dir, path) = (dir.clone(), path.clone());
        move || busy_neighbours(&dir, &path)
    })
    .await
    .unwrap();
    let woken = wakeups(pid) - before;
    eprintln!("daemon wake-ups during 1000 writes next to the config: {woken}");
    assert!(woken < 100, "the daemon woke {woken} times for writes to other files");

    // An edit in place still reloads...
    let second = format!("{first}{}", route("b"));
    std::fs::write(&path, &second).unwrap();
    daemon.wait_for_log(RELOADED, 1, Duration::from_secs(10));
    wait_for_status(&daemon.url("/b"), 200).await;
    // ...and so does a rename-save.
    write_by_rename(&path, &format!("{second}{}", route("c")));
    daemon.wait_for_log(RELOADED, 2, Duration::from_secs(10));
    wait_for_status(&daemon.url("/c"), 200).await;

    let (status, logs) = daemon.terminate();
    assert!(status.success(), "{logs}");
    assert_eq!(
        logs.matches(UNCHANGED).count(),
        1,
        "the neighbours woke the watcher:\n{logs}"
    );
    assert_eq!(logs.matches(RELOADED).count(), 2, "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_only_settings_are_named_and_the_rest_is_applied() {
    let upstream = Upstream::echo().await;
    let route = |name: &str| {
        format!(
            "[routes.{name}]\npath = \"/{name}\"\nupstream = \"{}/{name}\"\n",
            upstream.url()
        )
    };
    let daemon = Daemon::start(&route("a"), &[]);
    let edited = format!(
        "[server]\nmax-connections = 7\nheader-timeout = \"3s\"\nmax-header-size = \"20KiB\"\nshutdown-timeout = \"2s\"\n{}{}",
        route("a"),
        route("b")
    );
    write_by_rename(&daemon.config_path, &edited);
    wait_for_status(&daemon.url("/b"), 200).await;
    let logs = daemon.wait_for_log("takes effect only after a restart", 4, Duration::from_secs(10));
    for setting in [
        "server.max-connections",
        "server.header-timeout",
        "server.max-header-size",
        "server.shutdown-timeout",
    ] {
        assert!(
            logs.lines().any(|line| line.contains("\"WARN\"")
                && line.contains(&format!("{setting} changed; it takes effect only after a restart"))),
            "{setting}:\n{logs}"
        );
    }
    // Another edit that keeps them: still different from what runs, so still named.
    write_by_rename(&daemon.config_path, &format!("{edited}{}", route("c")));
    wait_for_status(&daemon.url("/c"), 200).await;
    daemon.wait_for_log("server.max-connections changed", 2, Duration::from_secs(10));
    let (status, logs) = daemon.terminate();
    assert!(status.success(), "{logs}");
}
