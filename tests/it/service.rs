//! The built binary as systemd runs it: sd_notify messages on a `NOTIFY_SOCKET` the test binds,
//! the watchdog, socket activation (`systemd-socket-activate`), `credential` secrets from a
//! `CREDENTIALS_DIRECTORY` the test makes, and journald-friendly log lines.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{Daemon, Upstream, assert_no_secret, binary, client};

const SECRET: &str = "sk_cred_Service_9931";

/// A unix datagram socket standing in for systemd's notify socket.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            socket,
            path,
            _dir: dir,
        }
    }

    /// The next message, or `None` after `timeout`.
    fn recv(&self, timeout: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8(buf[..n].to_vec()).unwrap()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => None,
            Err(e) => panic!("notify socket: {e}"),
        }
    }

    /// Waits for a message containing `line`, returning it; skips others (e.g. watchdog pings).
    fn expect(&self, line: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.recv(left) {
                Some(message) if message.lines().any(|l| l == line) => return message,
                Some(message) => seen.push(message),
                None => break,
            }
        }
        panic!("no notify message with {line:?} within {within:?}; got {seen:?}");
    }
}

/// The binary started with the given arguments and environment, stderr captured.
struct Spawned {
    child: Child,
    logs: Arc<Mutex<String>>,
}

impl Spawned {
    fn start(mut command: Command) -> Spawned {
        use std::io::BufRead;
        command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        Spawned { child, logs }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for exit status 0 and returns the logs, checked for the secret.
    fn exits_cleanly(&mut self) -> String {
        let (status, logs) = self.wait(Duration::from_secs(40));
        assert!(status.success(), "{status:?}\n{logs}");
        assert_no_secret(&logs, &[SECRET], "daemon logs");
        logs
    }

    fn wait(&mut self, within: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                return (status, self.logs.lock().unwrap().clone());
            }
            assert!(
                Instant::now() < deadline,
                "daemon still running; logs:\n{}",
                self.logs.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What every notify test starts from: an echo upstream, a config routing `/api` to it with a
/// file secret, and a notify socket.
struct Unit {
    upstream: Upstream,
    config: std::path::PathBuf,
    notify: NotifySocket,
    _dir: tempfile::TempDir,
}

impl Unit {
    async fn new() -> Unit {
        let upstream = Upstream::echo().await;
        let dir = tempfile::tempdir().unwrap();
        let config = config_with_secret(dir.path(), &upstream);
        Unit {
            upstream,
            config,
            notify: NotifySocket::bind(),
            _dir: dir,
        }
    }

    /// `secretproxy serve` on `listen` with this unit's config and notify socket.
    fn serve(&self, listen: &str) -> Command {
        let mut command = binary();
        command
            .args(["serve", "--log-format", "json", "--listen", listen, "--config"])
            .arg(&self.config)
            .env("NOTIFY_SOCKET", &self.notify.path);
        command
    }
}

/// A config with one route injecting a file secret, written into `dir`.
fn config_with_secret(dir: &std::path::Path, upstream: &Upstream) -> std::path::PathBuf {
    let secret = dir.join("key.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        format!(
            "[secrets.key]\nfile = {:?}\n[routes.api]\npath = \"/api/{{*rest}}\"\nupstream = \"{}/{{rest}}\"\nauth = {{ bearer = \"key\" }}\n",
            secret.display().to_string(),
            upstream.url()
        ),
    )
    .unwrap();
    path
}

/// `STATUS=serving 1 route on ADDR; ...` -> ADDR.
fn status_address(message: &str) -> SocketAddr {
    let status = message
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS= in {message:?}"));
    status
        .split(" on ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {status:?}"))
}

#[tokio::test]
async fn notify_ready_only_when_serving_then_stopping_on_sigterm() {
    let unit = Unit::new().await;
    let mut daemon = Spawned::start(unit.serve("127.0.0.1:0"));

    let ready = unit.notify.expect("READY=1", Duration::from_secs(30));
    assert!(
        ready.contains("STATUS=serving 1 route on 127.0.0.1:") && ready.contains("all secrets available"),
        "{ready:?}"
    );
    // The moment READY=1 arrives, the port accepts and the secret is already loaded.
    let addr = status_address(&ready);
    std::net::TcpStream::connect(addr).expect("port accepts as soon as READY=1 is sent");
    let response = client().get(format!("http://{addr}/api/charges")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        unit.upstream.only().header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );

    daemon.signal("TERM");
    let stopping = unit.notify.expect("STOPPING=1", Duration::from_secs(10));
    assert!(!stopping.contains("READY=1"), "{stopping:?}");
    daemon.exits_cleanly();
    assert_no_secret(&ready, &[SECRET], "notify messages");
}

#[tokio::test]
async fn notify_no_ready_when_the_port_cannot_be_bound() {
    let unit = Unit::new().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut daemon = Spawned::start(unit.serve(&taken.local_addr().unwrap().to_string()));
    let (status, logs) = daemon.wait(Duration::from_secs(30));
    assert!(!status.success(), "{logs}");
    assert!(logs.contains("cannot listen on"), "{logs}");
    let mut messages = Vec::new();
    while let Some(message) = unit.notify.recv(Duration::from_millis(200)) {
        messages.push(message);
    }
    assert!(
        messages.iter().all(|m| !m.contains("READY=1")),
        "READY=1 sent without a listener: {messages:?}"
    );
    assert_no_secret(&logs, &[SECRET], "daemon logs");
}

#[tokio::test]
async fn notify_reloading_then_ready_on_sighup() {
    let unit = Unit::new().await;
    let mut daemon = Spawned::start(unit.serve("127.0.0.1:0"));
    let ready = unit.notify.expect("READY=1", Duration::from_secs(30));
    let addr = status_address(&ready);

    daemon.signal("HUP");
    let reloading = unit.notify.expect("RELOADING=1", Duration::from_secs(10));
    let usec = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading:?}"));
    assert!(usec.parse::<u64>().unwrap() > 0);
    let ready_again = unit.notify.expect("READY=1", Duration::from_secs(10));
    assert!(ready_again.contains("STATUS=serving 1 route"), "{ready_again:?}");
    // Still serving after the reload.
    let response = client().get(format!("http://{addr}/api/after")).send().await.unwrap();
    assert_eq!(response.status(), 200);

    daemon.signal("TERM");
    unit.notify.expect("STOPPING=1", Duration::from_secs(10));
    daemon.exits_cleanly();
}

#[tokio::test]
async fn watchdog_pings_at_half_the_interval() {
    let unit = Unit::new().await;
    let mut command = unit.serve("127.0.0.1:0");
    command.env("WATCHDOG_USEC", "200000");
    let mut daemon = Spawned::start(command);
    unit.notify.expect("READY=1", Duration::from_secs(30));
    let started = Instant::now();
    for _ in 0..3 {
        unit.notify.expect("WATCHDOG=1", Duration::from_secs(2));
    }
    // Three pings at 100 ms intervals, well inside one 200 ms watchdog period each.
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    daemon.signal("TERM");
    let logs = daemon.exits_cleanly();
    assert!(logs.contains("systemd watchdog enabled"), "{logs}");
}

#[tokio::test]
async fn socket_activation_serves_on_the_passed_socket() {
    let unit = Unit::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A loopback port held by this test: the daemon could never bind `--listen` itself, so only
    // the passed socket can serve.
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let blocked = blocker.local_addr().unwrap();
    let mut command = Command::new("systemd-socket-activate");
    command
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg("-E")
        .arg("RUST_LOG=info")
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", unit.notify.path.display()))
        .arg(env!("CARGO_BIN_EXE_secretproxy"))
        .args([
            "serve",
            "--log-format",
            "json",
            "--listen",
            &blocked.to_string(),
            "--config",
        ])
        .arg(&unit.config);
    let mut daemon = Spawned::start(command);
    // systemd-socket-activate starts the daemon on the first connection; until it has bound the
    // port itself (it was just spawned), a connection is refused: try again.
    let response = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match client().get(format!("http://127.0.0.1:{port}/api/x")).send().await {
                Err(error) if error.is_connect() => tokio::time::sleep(Duration::from_millis(50)).await,
                answer => break answer,
            }
        }
    })
    .await
    .expect("answered")
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        unit.upstream.only().header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    let ready = unit.notify.expect("READY=1", Duration::from_secs(5));
    assert_eq!(status_address(&ready).port(), port, "{ready:?}");
    daemon.signal("TERM");
    let logs = daemon.exits_cleanly();
    assert!(logs.contains("socket activation"), "{logs}");
}

#[tokio::test]
async fn credential_secret_is_read_from_credentials_directory() {
    let upstream = Upstream::echo().await;
    let credentials = tempfile::tempdir().unwrap();
    std::fs::write(credentials.path().join("stripe"), format!("{SECRET}\n")).unwrap();
    let config = format!(
        "[secrets.stripe]\ncredential = \"stripe\"\n[routes.api]\npath = \"/api/{{*rest}}\"\nupstream = \"{}/{{rest}}\"\nquery = {{ key = \"${{stripe}}\" }}\n",
        upstream.url()
    );
    let daemon = Daemon::start(
        &config,
        &[("CREDENTIALS_DIRECTORY", credentials.path().to_str().unwrap())],
    );
    let response = client().get(daemon.url("/api/v1/a?b=1")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.only().target, format!("/v1/a?b=1&key={SECRET}"));
    let (status, logs) = daemon.terminate();
    assert!(status.success(), "{logs}");
    assert_no_secret(&logs, &[SECRET], "daemon logs");

    // Without $CREDENTIALS_DIRECTORY the daemon still starts, says why and how to fix it, and the
    // route answers 503.
    let daemon = Daemon::start(&config, &[]);
    let response = client().get(daemon.url("/api/v1/a")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body = response.text().await.unwrap();
    assert!(body.contains("$CREDENTIALS_DIRECTORY is not set"), "{body}");
    assert!(body.contains("LoadCredential=stripe:"), "{body}");
    let (status, logs) = daemon.terminate();
    assert!(status.success(), "{logs}");
    // Outside systemd the log line is short: a terminal user cannot provide a credential.
    assert!(
        logs.contains("secret unavailable: `stripe` is a systemd credential, given only to a systemd service"),
        "{logs}"
    );
    assert!(!logs.contains("systemd-creds encrypt"), "{logs}");
    assert_no_secret(&logs, &[SECRET], "daemon logs");
    assert_no_secret(&body, &[SECRET], "error body");
}

/// Runs the binary with pretty logs written to a file and `JOURNAL_STREAM` set to `stream`
/// (or to the file's own device:inode when `None`), and returns the log lines.
fn pretty_logs_with_journal_stream(stream: Option<&str>) -> String {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        "[secrets.gone]\nenv = \"SECRETPROXY_TEST_UNSET\"\n[routes.a]\npath = \"/a\"\nupstream = \"https://example.invalid/\"\nauth = { bearer = \"gone\" }\n",
    )
    .unwrap();
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let meta = log.metadata().unwrap();
    let own = format!("{}:{}", meta.dev(), meta.ino());
    let mut child = binary()
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("JOURNAL_STREAM", stream.unwrap_or(&own))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log_path).unwrap().contains("listening") {
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill").arg(child.id().to_string()).status().unwrap();
    assert!(child.wait().unwrap().success());
    std::fs::read_to_string(&log_path).unwrap()
}

#[test]
fn journal_lines_have_priority_and_no_timestamp_or_colour() {
    let logs = pretty_logs_with_journal_stream(None);
    assert!(!logs.contains('\x1b'), "ANSI escape in journal lines:\n{logs}");
    for line in logs.lines() {
        let rest = line
            .strip_prefix('<')
            .and_then(|l| l.split_once('>'))
            .unwrap_or_else(|| panic!("no <N> priority prefix: {line:?}"));
        assert!(matches!(rest.0, "3" | "4" | "6" | "7"), "{line:?}");
        // No timestamp: the level comes first (journald stamps the line itself).
        let text = rest.1.trim_start();
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
                .iter()
                .any(|l| text.starts_with(l)),
            "{line:?}"
        );
    }
    assert!(
        logs.lines()
            .any(|l| l.starts_with("<4>") && l.contains("secret unavailable")),
        "{logs}"
    );
    assert!(
        logs.lines().any(|l| l.starts_with("<6>") && l.contains("listening")),
        "{logs}"
    );

    // An inherited JOURNAL_STREAM that is not our stderr changes nothing: timestamps stay.
    let logs = pretty_logs_with_journal_stream(Some("1:1"));
    assert!(
        logs.lines().all(|l| l.starts_with(|c: char| c.is_ascii_digit())),
        "expected timestamped lines:\n{logs}"
    );
}
