#![allow(dead_code)] // Harness pieces are shared by test files that use different subsets.
//! Test harness: real upstream HTTP(S) servers on 127.0.0.1:0 that record what they received,
//! the proxy started in process on 127.0.0.1:0 with file-sourced secrets, and the built binary
//! for end-to-end runs.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use secretproxy::config::Config;
use secretproxy::pipeline::Proxy;
use secretproxy::pipeline::generation::{Generation, Live};
use secretproxy::secrets::SystemStore;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;
type Handler = Arc<dyn Fn(Recorded) -> Pin<Box<dyn Future<Output = Response<TestBody>> + Send>> + Send + Sync>;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// Path and query, exactly as received.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers.get_all(name).iter().count()
    }
}

pub fn text(status: u16, body: impl Into<Bytes>) -> Response<TestBody> {
    let mut response = Response::new(Full::new(body.into()).map_err(|never| match never {}).boxed());
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
}

/// A real HTTP/1.1 server on 127.0.0.1:0 that records every request.
pub struct Upstream {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// Connections accepted so far (keep-alive and HTTP/2 reuse show as fewer than requests).
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

impl Upstream {
    /// An upstream answering 200 with a JSON echo of method, path and query.
    pub async fn echo() -> Upstream {
        Upstream::start(|request: Recorded| async move {
            let body = serde_json::json!({ "method": request.method.as_str(), "target": request.target });
            let mut response = text(200, body.to_string());
            response
                .headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            response
        })
        .await
    }

    pub async fn start<F, Fut>(handler: F) -> Upstream
    where
        F: Fn(Recorded) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let handler: Handler = Arc::new(move |request| Box::pin(handler(request)));
        Upstream::serve(listener, handler, None).await
    }

    /// An HTTPS upstream with the given rustls server config.
    pub async fn start_tls<F, Fut>(tls: Arc<tokio_rustls::rustls::ServerConfig>, handler: F) -> Upstream
    where
        F: Fn(Recorded) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let handler: Handler = Arc::new(move |request| Box::pin(handler(request)));
        Upstream::serve(listener, handler, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn serve(listener: TcpListener, handler: Handler, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let recorded = requests.clone();
        let accepted_count = connections.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => accepted.unwrap(),
                    _ = &mut stopped => return,
                };
                accepted_count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let handler = handler.clone();
                let recorded = recorded.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let handler = handler.clone();
                        let recorded = recorded.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let request = Recorded {
                                version: parts.version,
                                method: parts.method,
                                target: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
                                headers: parts.headers,
                                body,
                            };
                            recorded.lock().unwrap().push(request.clone());
                            Ok::<_, Infallible>(handler(request).await)
                        }
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                                let h2 = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
                                let _ = h2.serve_connection(TokioIo::new(stream), service).await;
                            } else {
                                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            requests,
            connections,
            _stop: stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn only(&self) -> Recorded {
        let received = self.received();
        assert_eq!(
            received.len(),
            1,
            "expected exactly one upstream request, got {received:?}"
        );
        received.into_iter().next().unwrap()
    }
}

/// The proxy running in this process on 127.0.0.1:0.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub secrets: BTreeMap<String, String>,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// Builds a [`TestProxy`]: secrets become files in a temp dir, declared ahead of the routes.
#[derive(Default)]
pub struct ProxyBuilder {
    secrets: BTreeMap<String, String>,
    extra_secrets: String,
    routes: String,
}

impl ProxyBuilder {
    /// A secret `name` read from a file holding `value`.
    pub fn secret(mut self, name: &str, value: &str) -> Self {
        self.secrets.insert(name.to_string(), value.to_string());
        self
    }

    /// Raw TOML for secrets with other sources (keyring, env, ...).
    pub fn secret_toml(mut self, toml: &str) -> Self {
        self.extra_secrets.push_str(toml);
        self.extra_secrets.push('\n');
        self
    }

    /// Raw TOML appended after the secrets (routes, server settings as `[server]` ...).
    pub fn toml(mut self, toml: &str) -> Self {
        self.routes.push_str(toml);
        self.routes.push('\n');
        self
    }

    pub fn config_text(&self, dir: &std::path::Path) -> String {
        let mut text = String::new();
        for (name, value) in &self.secrets {
            let path = dir.join(format!("{name}.secret"));
            std::fs::write(&path, format!("{value}\n")).unwrap();
            text.push_str(&format!("[secrets.{name}]\nfile = {:?}\n", path.display().to_string()));
        }
        text.push_str(&self.extra_secrets);
        text.push_str(&self.routes);
        text
    }

    pub async fn start(self) -> TestProxy {
        // In process, the current executable is this test binary: transforms need the real one.
        secretproxy::features::transform::pool::use_worker_binary(env!("CARGO_BIN_EXE_secretproxy"));
        let dir = tempfile::tempdir().unwrap();
        let text = self.config_text(dir.path());
        let config = Config::parse(&text, "test.toml").unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"));
        let generation =
            tokio::task::spawn_blocking(move || Generation::build(config, Arc::new(SystemStore), 1).unwrap())
                .await
                .unwrap();
        let live = Arc::new(Live::new(generation));
        let listener = secretproxy::daemon::server::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(secretproxy::daemon::server::serve(
            listener,
            Arc::new(Proxy::new(live)),
            async {
                let _ = stopped.await;
            },
            Duration::from_secs(5),
            1,
        ));
        TestProxy {
            addr,
            secrets: self.secrets,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

impl TestProxy {
    pub fn builder() -> ProxyBuilder {
        ProxyBuilder::default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops accepting and waits for the drain.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// The body of a plain GET of `url` (with [`client`]), whatever the status.
pub async fn get_text(url: &str) -> String {
    client().get(url).send().await.unwrap().text().await.unwrap()
}

/// A plain client that follows no redirects and uses no proxy.
pub fn client() -> reqwest::Client {
    secretproxy::upstream::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

/// Asserts that none of `secrets` occurs in `haystack` (plain or percent-encoded).
pub fn assert_no_secret(haystack: &str, secrets: &[&str], what: &str) {
    for secret in secrets {
        assert!(
            !haystack.contains(secret),
            "{what} contains the secret {secret:?}:\n{haystack}"
        );
        let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        assert!(
            !haystack.contains(&encoded),
            "{what} contains the encoded secret:\n{haystack}"
        );
    }
}

/// Panics with a pointer to the test script when no session bus (and so no keyring) is around.
/// The Python of `tests/.venv`, where scripts/test installs `tests/requirements.txt` (the real
/// peers some tests run: Authlib, ...).
pub fn python() -> std::path::PathBuf {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/.venv/bin/python");
    assert!(
        path.exists(),
        "this test needs the Python packages of tests/requirements.txt in tests/.venv: run \
         scripts/test, which creates it (or: python3 -m venv tests/.venv && \
         tests/.venv/bin/pip install -r tests/requirements.txt)"
    );
    path
}

pub fn require_session_bus() {
    assert!(
        std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some(),
        "keyring tests need the Secret Service: run them through scripts/test, which starts a private D-Bus session with gnome-keyring"
    );
}

/// The built `secretproxy` binary serving a config file, with its stderr captured.
pub struct Daemon {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub logs: Arc<Mutex<String>>,
    pub dir: tempfile::TempDir,
    pub config_path: std::path::PathBuf,
}

pub fn binary() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_secretproxy"))
}

impl Daemon {
    /// Starts `secretproxy serve --log-format json` on 127.0.0.1:0 and waits for it to listen.
    pub fn start(config: &str, envs: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("proxy.toml");
        std::fs::write(&config_path, config).unwrap();
        Daemon::start_at(dir, config_path, envs)
    }

    pub fn start_at(dir: tempfile::TempDir, config_path: std::path::PathBuf, envs: &[(&str, &str)]) -> Daemon {
        Daemon::start_listening(dir, config_path, "127.0.0.1:0", envs)
    }

    /// Like [`Daemon::start_at`], listening on `listen`.
    pub fn start_listening(
        dir: tempfile::TempDir,
        config_path: std::path::PathBuf,
        listen: &str,
        envs: &[(&str, &str)],
    ) -> Daemon {
        use std::io::BufRead;
        let mut command = binary();
        command
            .args(["serve", "--log-format", "json", "--listen", listen, "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                    && value["message"] == "listening"
                    && let Some(addr) = value["address"].as_str()
                {
                    let _ = addr_tx.send(addr.parse::<SocketAddr>().unwrap());
                }
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let addr = match addr_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("daemon did not start listening; logs:\n{}", logs.lock().unwrap());
            }
        };
        Daemon {
            child,
            addr,
            logs,
            dir,
            config_path,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Sends SIGTERM and waits for the exit status (at most 40 s).
    pub fn terminate(self) -> (std::process::ExitStatus, String) {
        self.signal("TERM");
        self.wait(Duration::from_secs(40))
    }
}

impl Daemon {
    /// Waits (at most `limit`) for the daemon to exit by itself, e.g. after a signal already sent.
    pub fn wait(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                return (status, self.logs());
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("daemon did not exit within {limit:?}; logs:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (at most `limit`) until the logs contain `needle` `count` times.
    pub fn wait_for_log(&self, needle: &str, count: usize, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let logs = self.logs();
            if logs.matches(needle).count() >= count {
                return logs;
            }
            if std::time::Instant::now() > deadline {
                panic!("{needle:?} did not appear {count} times within {limit:?}; logs:\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stores `value` in the real Secret Service with `secret-tool`, as a user would.
pub fn secret_tool_store(service: &str, account: &str, value: &str) {
    use std::io::Write;
    require_session_bus();
    let mut child = std::process::Command::new("secret-tool")
        .args([
            "store",
            "--label",
            &format!("test {account}"),
            "service",
            service,
            "username",
            account,
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("secret-tool (libsecret-tools) is installed by scripts/test");
    child.stdin.take().unwrap().write_all(value.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "secret-tool store failed");
}

/// A name no other test uses, for keyring accounts.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A network namespace joined to this one by a veth pair: `host` on our side, `inner` inside
/// (10.`net`.x.1 and .2, x from the process id, so tests with different `net`s can run at once).
/// Deleting the namespace removes both ends of the link. Needs root or CAP_NET_ADMIN.
pub struct Netns {
    pub name: String,
    pub host: String,
    pub inner: String,
}

impl Netns {
    pub fn create(prefix: &str, net: u8) -> Netns {
        use std::process::{Command, Stdio};
        let id = std::process::id() % 50_000;
        let subnet = format!("10.{net}.{}", id % 250);
        let ns = Netns {
            name: format!("{prefix}-{id}"),
            host: format!("{subnet}.1"),
            inner: format!("{subnet}.2"),
        };
        let veth = format!("sp{net}v{id}");
        let _ = Command::new("ip")
            .args(["netns", "del", &ns.name])
            .stderr(Stdio::null())
            .status();
        ns.ip(&["netns", "add", &ns.name]);
        ns.ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        ns.ip(&["addr", "add", &format!("{}/30", ns.host), "dev", &veth]);
        ns.ip(&["link", "set", &veth, "up"]);
        ns.ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{}/30", ns.inner),
            "dev",
            "eth0",
        ]);
        ns.ip(&["-n", &ns.name, "link", "set", "eth0", "up"]);
        ns.ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let output = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("iproute2 is installed");
        assert!(
            output.status.success(),
            "`ip {}` failed (this test needs root or CAP_NET_ADMIN to create a network namespace): {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &str) -> std::process::Command {
        let mut command = std::process::Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// The built daemon serving `config` inside the namespace on every address (JSON logs at
    /// info into `log_path`), once it has said which port it listens on: the child and the port.
    #[allow(clippy::zombie_processes, reason = "the caller owns the child and waits for it")]
    pub fn serve(&self, config: &std::path::Path, log_path: &std::path::Path) -> (std::process::Child, u16) {
        use std::process::Stdio;
        let mut daemon = self
            .command(env!("CARGO_BIN_EXE_secretproxy"))
            .args(["serve", "--log-format", "json", "--listen", "0.0.0.0:0", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log_path).unwrap())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let logs = std::fs::read_to_string(log_path).unwrap_or_default();
            if let Some(port) = logs
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["message"] == "listening")
                .and_then(|v| v["address"].as_str()?.parse::<std::net::SocketAddr>().ok())
                .map(|a| a.port())
            {
                return (daemon, port);
            }
            if std::time::Instant::now() >= deadline {
                let _ = daemon.kill();
                let _ = daemon.wait();
                panic!("daemon did not start:\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
