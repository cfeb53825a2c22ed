//! `secretproxy run -- CMD`, with the built binary and the real OpenAI Python SDK
//! (tests/run/agent.py, tests/.venv's python) against a local OpenAI-compatible upstream that
//! answers only the real key. Both modes: a daemon already running, and one `run` starts and
//! stops. The agent's environment (its own dump and /proc/PID/environ, read from outside while it
//! runs) holds no real value; the call succeeds through the proxy; the key stops working when
//! the agent exits; the exit code passes through; a SIGTERM to `run` reaches the command and the
//! key is revoked.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Daemon, Recorded, Upstream, assert_no_secret, binary, client, python, text};

const REAL: &str = "sk-real-OpenAI-key-for-run-mode-7734";

/// Chat completions for `Authorization: Bearer REAL` only.
async fn openai_upstream() -> Upstream {
    Upstream::start(|request: Recorded| async move {
        let authorized = request.header("authorization") == Some(format!("Bearer {REAL}").as_str());
        let mut response = if !authorized {
            text(
                401,
                r#"{"error":{"message":"bad key","type":"invalid_request_error","code":"invalid_api_key"}}"#,
            )
        } else if request.target == "/v1/chat/completions" && request.method == http::Method::POST {
            text(
                200,
                serde_json::json!({
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "test-model",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "hello through the proxy"}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
                })
                .to_string(),
            )
        } else {
            text(404, r#"{"error":{"message":"not found"}}"#)
        };
        response
            .headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        response
    })
    .await
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config whose `openai` route reads the real key from `$OPENAI_API_KEY`, as a user's would.
fn write_config(dir: &Path, port: u16, upstream: &Upstream) -> PathBuf {
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n\
             [secrets.openai]\nenv = \"OPENAI_API_KEY\"\n\
             [routes.openai]\npath = \"/api/openai/{{*rest}}\"\nupstream = \"{}/{{rest}}\"\nmethods = [\"GET\", \"POST\"]\nauth = {{ bearer = \"openai\" }}\n",
            upstream.url()
        ),
    )
    .unwrap();
    path
}

/// `secretproxy run` with the real key in its environment (twice: the config's variable and a
/// copy under another name), proxies unset so the SDK talks to loopback directly.
fn run_command(config: &Path) -> Command {
    let mut command = binary();
    command
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("OPENAI_API_KEY", REAL)
        .env("MY_COPY_OF_THE_KEY", REAL)
        .env_remove("OPENAI_BASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        command.env_remove(var);
    }
    command
}

struct AgentRun {
    code: Option<i32>,
    output: String,
    report: serde_json::Value,
    proc_environ: String,
}

/// Runs the agent through `run`, reading its /proc/PID/environ while it waits for `go`.
async fn run_agent(config: &Path, reports: &Path) -> AgentRun {
    let agent = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/run/agent.py");
    let mut child = run_command(config)
        .arg("--")
        .arg(python())
        .arg(agent)
        .arg(reports)
        .arg("7")
        .spawn()
        .unwrap();
    let pid_file = reports.join("pid");
    let started = Instant::now();
    while !pid_file.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            let output = child.wait_with_output().unwrap();
            panic!(
                "run exited ({status}) before the agent started: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the agent did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let proc_environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap()).into_owned();
    std::fs::write(reports.join("go"), "").unwrap();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report = std::fs::read_to_string(reports.join("report.json"))
        .unwrap_or_else(|_| panic!("the agent wrote no report; run said:\n{text}"));
    AgentRun {
        code: output.status.code(),
        output: text,
        report: serde_json::from_str(&report).unwrap(),
        proc_environ,
    }
}

/// What every run must show: the call went through, no real value in the agent's environment,
/// the key is scoped to the run and exit code 7 passed through.
fn check_agent(run: &AgentRun, port: u16) -> String {
    assert_eq!(run.report["reply"], "hello through the proxy", "{}", run.output);
    assert_eq!(run.code, Some(7), "{}", run.output);
    let env = &run.report["env"];
    assert_eq!(env["OPENAI_BASE_URL"], format!("http://127.0.0.1:{port}/api/openai/v1"));
    assert_eq!(env["SECRETPROXY_URL"], format!("http://127.0.0.1:{port}"));
    assert!(
        env.get("MY_COPY_OF_THE_KEY").is_none(),
        "a copy of the key was passed on"
    );
    let key = env["OPENAI_API_KEY"].as_str().unwrap().to_string();
    assert!(key.starts_with("sp_"), "{key}");
    assert_eq!(env["SECRETPROXY_TOKEN"], key.as_str());
    assert_no_secret(&run.report.to_string(), &[REAL], "the agent's environment");
    assert_no_secret(&run.proc_environ, &[REAL], "/proc/PID/environ");
    assert!(run.proc_environ.contains(&key));
    assert_no_secret(&run.output, &[REAL, &key], "run's output");
    key
}

fn no_run_clients(config: &Path) {
    let state = std::fs::read_to_string(config.with_file_name("proxy.clients.toml")).unwrap_or_default();
    assert!(!state.contains("[clients.run-"), "a run key was left behind:\n{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_uses_a_running_daemon_and_the_key_dies_with_the_command() {
    let upstream = openai_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, &upstream);
    let daemon_dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_listening(
        daemon_dir,
        config.clone(),
        &format!("127.0.0.1:{port}"),
        &[("OPENAI_API_KEY", REAL)],
    );
    // A standing client key, so keys stay in use after the run's is revoked (with none left, the
    // daemon is open to keyless callers again, as before keys existed).
    let standing = binary()
        .args(["client", "add", "standing", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(standing.status.success());
    let reports = tempfile::tempdir().unwrap();
    let run = run_agent(&config, reports.path()).await;
    let key = check_agent(&run, port);
    no_run_clients(&config);

    // The key stops working once the command has exited (the daemon watches the file).
    let url = daemon.url("/api/openai/v1/models");
    let started = Instant::now();
    loop {
        let status = client().get(&url).bearer_auth(&key).send().await.unwrap().status();
        if status == 401 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the run's key still works: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // SIGTERM to `run` reaches the command (128+15 passed through) and the key is revoked.
    let ready = dir.path().join("ready");
    let mut child = run_command(&config)
        .arg("--")
        .arg("sh")
        .arg("-c")
        .arg(format!("touch {}; exec sleep 60", ready.display()))
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !ready.exists() {
        assert!(started.elapsed() < Duration::from_secs(30), "the command did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let state = std::fs::read_to_string(config.with_file_name("proxy.clients.toml")).unwrap();
    assert!(state.contains("[clients.run-"), "{state}");
    assert!(
        Command::new("kill")
            .arg(child.id().to_string())
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(143));
    no_run_clients(&config);

    assert_no_secret(&daemon.logs(), &[REAL, &key], "daemon logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_starts_a_daemon_for_the_command_and_stops_it_after() {
    let upstream = openai_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, &upstream);
    let reports = tempfile::tempdir().unwrap();
    let run = run_agent(&config, reports.path()).await;
    check_agent(&run, port);
    no_run_clients(&config);
    // The daemon went with the command.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the daemon started by run still listens"
    );
    assert_eq!(upstream.received().len(), 1);
}
