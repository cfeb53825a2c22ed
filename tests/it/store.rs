//! The shared store (`[state]`) with the real pieces: a `redis-server` (Debian package) started
//! here on a free loopback port with no persistence, three replicas of the built binary, and a
//! real haproxy on loopback balancing round robin across them (`allowed-hosts` names the
//! balancer, as a deployment must).
//!
//! Checked: a rate limit admits exactly N across the replicas under concurrent load; a daily
//! quota holds across replicas and across a restart of all of them; a webhook delivery replayed
//! to another replica is refused; with Redis stopped (SIGSTOP: a store that hangs) or killed each
//! `on-error` policy does what the README says, no request waits past a bound, nothing crashes,
//! and shared limits resume once it is back (waited for on a condition, never a sleep). Secrets
//! appear neither in Redis keys or values nor in logs or responses.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::harness::{Daemon, Upstream, assert_no_secret};

const API_KEY: &str = "sk-store-test-ApiKey-7f3a9c";
const HOOK_SECRET: &str = "whsec_StoreTestHookSecret-42";
const REDIS_PASSWORD: &str = "redis-pass-Store-Test-91b2";
const ENVS: [(&str, &str); 3] = [
    ("STORE_API_KEY", API_KEY),
    ("STORE_HOOK_SECRET", HOOK_SECRET),
    ("STORE_REDIS_PASSWORD", REDIS_PASSWORD),
];

/// A port nobody listens on right now (bound and released).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A `redis-server` of its own: loopback, no RDB or AOF, a temp dir.
pub(crate) struct Redis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// `requirepass`, when the server wants one.
    password: Option<&'static str>,
    /// TLS only (`rediss://`): the directory holding `cert.pem` (also the CA) and `key.pem`.
    tls: Option<std::path::PathBuf>,
}

impl Redis {
    pub(crate) fn start() -> Redis {
        Redis::start_with(None)
    }

    fn start_with(password: Option<&'static str>) -> Redis {
        let mut redis = Redis {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            password,
            tls: None,
        };
        redis.spawn();
        redis
    }

    /// A server that speaks TLS only, with a self-signed certificate for 127.0.0.1.
    fn start_tls() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
        let mut redis = Redis {
            port: free_port(),
            tls: Some(dir.path().to_path_buf()),
            dir,
            child: None,
            password: None,
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        if let Some(password) = self.password {
            command.args(["--requirepass", password]);
        }
        match &self.tls {
            Some(dir) => {
                command.args(["--port", "0", "--tls-port", &self.port.to_string()]);
                command.arg("--tls-cert-file").arg(dir.join("cert.pem"));
                command.arg("--tls-key-file").arg(dir.join("key.pem"));
                command.arg("--tls-ca-cert-file").arg(dir.join("cert.pem"));
                command.args(["--tls-auth-clients", "no"]);
            }
            None => {
                command.args(["--port", &self.port.to_string()]);
            }
        }
        let child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) is installed by scripts/test");
        self.child = Some(child);
        wait_until("redis answers PING", Duration::from_secs(20), || {
            self.cli(&["PING"]) == "PONG"
        });
    }

    pub(crate) fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// `redis-cli` (the real client) against this server; its output, trimmed.
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let mut command = Command::new("redis-cli");
        if let Some(password) = self.password {
            command.args(["--no-auth-warning", "-a", password]);
        }
        if let Some(dir) = &self.tls {
            command.arg("--tls").arg("--cacert").arg(dir.join("cert.pem"));
        }
        let output = command
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Every key with its value (strings) and remaining time to live.
    pub(crate) fn dump(&self) -> String {
        let keys = self.cli(&["--scan"]);
        let mut dump = String::new();
        for key in keys.lines().filter(|k| !k.is_empty()) {
            let value = self.cli(&["GET", key]);
            let ttl = self.cli(&["PTTL", key]);
            dump.push_str(&format!("{key} = {value} (pttl {ttl})\n"));
        }
        dump
    }

    pub(crate) fn signal(&self, name: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(
            Command::new("kill")
                .args([&format!("-{name}"), &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A stopped process cannot die of SIGKILL until it is continued on some kernels' view
            // of the wait; continue it first.
            self.signal("CONT");
        }
        self.kill();
    }
}

/// A real haproxy on loopback, round robin over the replicas, no health checks (so every replica
/// gets its turn whatever state it is in).
pub(crate) struct Balancer {
    port: u16,
    _dir: tempfile::TempDir,
    child: Child,
}

impl Balancer {
    pub(crate) fn start(port: u16, backends: &[SocketAddr]) -> Balancer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = format!(
            "global\n    maxconn 512\n\ndefaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\nfrontend front\n    bind 127.0.0.1:{port}\n    default_backend replicas\n\nbackend replicas\n    balance roundrobin\n"
        );
        for (index, backend) in backends.iter().enumerate() {
            config.push_str(&format!("    server replica{index} {backend}\n"));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (Debian package) is installed by scripts/test");
        wait_until("haproxy listens", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Balancer { port, _dir: dir, child }
    }

    /// The balancer's URL under its name (`lb.test`, resolved to loopback by [`lb_client`]).
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://lb.test:{}{path}", self.port)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that reaches `lb.test` on loopback (so `Host: lb.test:PORT`, as behind a balancer).
pub(crate) fn lb_client(port: u16) -> reqwest::Client {
    secretproxy::upstream::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .resolve("lb.test", SocketAddr::from(([127, 0, 0, 1], port)))
        .build()
        .unwrap()
}

/// The replicas' config: one shared store, the balancer's name allowed, an env secret injected.
fn config(redis: &Redis, lb_port: u16, upstream: &str, state: &str, routes: &str) -> String {
    format!(
        r#"[server]
allowed-hosts = ["lb.test:{lb_port}"]

[secrets.api-key]
env = "STORE_API_KEY"
[secrets.hook]
env = "STORE_HOOK_SECRET"

[state]
url = "{url}"
{state}

{routes}
"#,
        url = redis.url(),
        routes = routes.replace("{upstream}", upstream),
    )
}

/// Starts `count` replicas of the built binary on `addrs` (or free ports), sharing `config`.
async fn replicas(config: &str, addrs: Option<&[SocketAddr]>, count: usize) -> (tempfile::TempDir, Vec<Daemon>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let mut daemons = Vec::new();
    for index in 0..count {
        let listen = addrs.map_or_else(|| "127.0.0.1:0".to_string(), |a| a[index].to_string());
        let path = path.clone();
        let daemon = tokio::task::spawn_blocking(move || {
            Daemon::start_listening(tempfile::tempdir().unwrap(), path, &listen, &ENVS)
        })
        .await
        .unwrap();
        daemons.push(daemon);
    }
    (dir, daemons)
}

/// Requests replica `daemon` answered on `route`, from its metrics.
pub(crate) async fn served(daemon: &Daemon, route: &str) -> u64 {
    let text = crate::harness::get_text(&daemon.url("/_secretproxy/metrics")).await;
    let label = format!("route=\"{route}\"");
    text.lines()
        .filter(|line| line.starts_with("secretproxy_requests_total{") && line.contains(&label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

const LIMITED_ROUTES: &str = r#"
[routes.limited]
path = "/limited"
upstream = "{upstream}/limited"
allow-http = true
headers = { Authorization = "Bearer ${api-key}" }
# 25 at once, then one per 144 s: the whole test runs within one emission interval.
rate-limit = { requests = 25, per = "1h" }

[routes.daily]
path = "/daily"
upstream = "{upstream}/daily"
allow-http = true
headers = { Authorization = "Bearer ${api-key}" }
rate-limit = { requests = 1000, per = "1s", daily = 5 }

[webhooks.stripe]
path = "/hooks/stripe"
verify = "stripe"
secret = "hook"
target = "{upstream}/stripe"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_haproxy_share_limits_quotas_and_replay_memory() {
    let redis = Redis::start();
    let upstream = Upstream::echo().await;
    let lb_port = free_port();
    // A generous timeout: this test is about the counts, not about a slow store.
    let config = config(&redis, lb_port, &upstream.url(), "timeout = \"2s\"", LIMITED_ROUTES);
    let (_dir, daemons) = replicas(&config, None, 3).await;
    let addrs: Vec<SocketAddr> = daemons.iter().map(|d| d.addr).collect();
    let balancer = Balancer::start(lb_port, &addrs);
    let client = lb_client(lb_port);
    let mut responses = String::new();

    // A limit of 25 admits exactly 25 of 75 concurrent requests spread over the replicas.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..75 {
        let (client, url) = (client.clone(), balancer.url("/limited"));
        tasks.spawn(async move {
            let response = client.get(url).send().await.unwrap();
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (status, retry_after, response.text().await.unwrap())
        });
    }
    let (mut admitted, mut limited) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        let (status, retry_after, body) = result.unwrap();
        match status {
            200 => admitted += 1,
            429 => {
                limited += 1;
                let seconds: u64 = retry_after.expect("429 carries Retry-After").parse().unwrap();
                assert!((1..=144).contains(&seconds), "{seconds}");
                assert!(body.contains("rate_limited"), "{body}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
        responses.push_str(&body);
    }
    assert_eq!((admitted, limited), (25, 50), "exactly the limit across the replicas");
    assert_eq!(upstream.received().len(), 25);
    for daemon in &daemons {
        let count = served(daemon, "limited").await;
        assert!(count >= 10, "round robin reached every replica: {count}");
    }

    // A daily quota of 5 holds across the replicas...
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let response = client.get(balancer.url("/daily")).send().await.unwrap();
        statuses.push(response.status().as_u16());
        responses.push_str(&response.text().await.unwrap());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    assert!(responses.contains("daily_quota_exceeded"), "{responses}");

    // ... and across a restart of all of them (same addresses, so the balancer carries on).
    let mut logs = String::new();
    for daemon in daemons {
        let (status, output) = tokio::task::spawn_blocking(move || daemon.terminate()).await.unwrap();
        assert!(status.success(), "{output}");
        logs.push_str(&output);
    }
    let (_dir2, daemons) = replicas(&config, Some(&addrs), 3).await;
    for _ in 0..3 {
        let response = client.get(balancer.url("/daily")).send().await.unwrap();
        assert_eq!(response.status(), 429);
        let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=86_400).contains(&retry_after), "{retry_after}");
        responses.push_str(&response.text().await.unwrap());
    }
    for daemon in &daemons {
        assert_eq!(served(daemon, "daily").await, 1, "each restarted replica answered once");
    }

    // A Stripe delivery accepted by one replica is refused as a replay by another.
    let payload = r#"{"id":"evt_1","type":"invoice.paid"}"#;
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{payload}").as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    let header = format!("t={timestamp},v1={signature}");
    let deliver = |url: String| {
        let (header, client) = (header.clone(), client.clone());
        async move {
            let response = client
                .post(url)
                .header("stripe-signature", header)
                .header("content-type", "application/json")
                .body(payload)
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (first, body) = deliver(daemons[0].url("/hooks/stripe")).await;
    assert_eq!(first, 200, "{body}");
    let (second, body) = deliver(daemons[1].url("/hooks/stripe")).await;
    assert_eq!(second, 401, "{body}");
    assert!(body.contains("already used"), "{body}");
    let (third, _) = deliver(balancer.url("/hooks/stripe")).await;
    assert_eq!(third, 401);
    assert_eq!(
        upstream.received().iter().filter(|r| r.target == "/stripe").count(),
        1,
        "the target saw the delivery once"
    );

    // Redis holds names, dates, digests and numbers: no key, no signature, no Origin.
    let dump = redis.dump();
    assert!(dump.contains("secretproxy:rl:{limited}"), "{dump}");
    assert!(dump.contains("secretproxy:quota:{daily}:"), "{dump}");
    assert!(dump.contains("secretproxy:wh:{stripe}:"), "{dump}");
    assert!(!dump.contains(&signature), "{dump}");
    assert_no_secret(&dump, &[API_KEY, HOOK_SECRET], "redis");
    for daemon in &daemons {
        logs.push_str(&daemon.logs());
    }
    assert_no_secret(&logs, &[API_KEY, HOOK_SECRET], "daemon logs");
    assert_no_secret(&responses, &[API_KEY, HOOK_SECRET], "responses");
}

const POLICY_ROUTES: &str = r#"
[routes.local]
path = "/local"
upstream = "{upstream}/local"
allow-http = true
headers = { Authorization = "Bearer ${api-key}" }
rate-limit = { requests = 3, per = "1h" }

[routes.allow]
path = "/allow"
upstream = "{upstream}/allow"
allow-http = true
headers = { Authorization = "Bearer ${api-key}" }
rate-limit = { requests = 3, per = "1h" }
on-error = "allow"

[routes.deny]
path = "/deny"
upstream = "{upstream}/deny"
allow-http = true
headers = { Authorization = "Bearer ${api-key}" }
rate-limit = { requests = 3, per = "1h" }
on-error = "deny"

[webhooks.local]
path = "/hooks/local"
verify = "stripe"
secret = "hook"
target = "{upstream}/hook-local"

[webhooks.deny]
path = "/hooks/deny"
verify = "stripe"
secret = "hook"
target = "{upstream}/hook-deny"
on-error = "deny"
"#;

/// A Stripe delivery signed now with the test's hook secret: (header, body).
fn stripe_delivery(id: &str) -> (String, String) {
    let payload = format!(r#"{{"id":"{id}","type":"invoice.paid"}}"#);
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{payload}").as_bytes());
    (
        format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes())),
        payload,
    )
}

/// Posts a delivery; status, code and how long it took.
async fn post_hook(
    client: &reqwest::Client,
    url: String,
    (header, body): &(String, String),
) -> (u16, String, Duration) {
    let started = Instant::now();
    let response = client
        .post(url)
        .header("stripe-signature", header)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap_or(Value::Null);
    (
        status,
        body["code"].as_str().unwrap_or_default().to_string(),
        started.elapsed(),
    )
}

/// One request: status, code and how long it took.
async fn timed(client: &reqwest::Client, url: String) -> (u16, String, Duration) {
    let started = Instant::now();
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap_or(Value::Null);
    let code = body["code"].as_str().unwrap_or_default().to_string();
    (status, code, started.elapsed())
}

async fn health(client: &reqwest::Client, daemon: &Daemon) -> Value {
    let response = client.get(daemon.url("/_secretproxy/health")).send().await.unwrap();
    serde_json::from_str(&response.text().await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_faults_follow_each_on_error_policy_and_recover() {
    let mut redis = Redis::start();
    let upstream = Upstream::echo().await;
    // A timeout a loaded CI never hits by accident, still far under the bound asserted below.
    let state = "timeout = \"300ms\"\ncool-down = \"300ms\"";
    let config = config(&redis, free_port(), &upstream.url(), state, POLICY_ROUTES);
    let (_dir, daemons) = replicas(&config, None, 2).await;
    let client = crate::harness::client();
    let bound = Duration::from_secs(2);

    // Store up: each route's limit is shared by both replicas (3 in all).
    for route in ["/local", "/allow", "/deny"] {
        let mut statuses = Vec::new();
        for round in 0..5 {
            statuses.push(timed(&client, daemons[round % 2].url(route)).await.0);
        }
        assert_eq!(statuses, [200, 200, 200, 429, 429], "{route}");
    }

    // Store hung (SIGSTOP): nothing waits past the bound; each policy as documented.
    redis.signal("STOP");
    let mut local = Vec::new();
    for _ in 0..6 {
        for (route, expected) in [("/allow", Some(200)), ("/deny", Some(503))] {
            let (status, code, took) = timed(&client, daemons[0].url(route)).await;
            assert!(took < bound, "{route} took {took:?}");
            if let Some(expected) = expected {
                assert_eq!(status, expected, "{route}: {code}");
            }
            if status == 503 {
                assert_eq!(code, "state_unavailable");
            }
        }
        let (status, code, took) = timed(&client, daemons[0].url("/local")).await;
        assert!(took < bound, "/local took {took:?}");
        local.push((status, code));
    }
    // `local`: this replica's own bucket of 3 (fresh: it was never used while the store was up).
    let statuses: Vec<u16> = local.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429], "{local:?}");

    // Webhooks: `local` keeps this replica's replay memory, `deny` refuses with 503.
    let delivery = stripe_delivery("evt_during_outage");
    let (status, _, took) = post_hook(&client, daemons[0].url("/hooks/local"), &delivery).await;
    assert_eq!(status, 200);
    assert!(took < bound, "{took:?}");
    let (status, code, _) = post_hook(&client, daemons[0].url("/hooks/local"), &delivery).await;
    assert_eq!(
        (status, code.as_str()),
        (401, "signature_invalid"),
        "a replay to the same replica"
    );
    let (status, code, took) = post_hook(&client, daemons[0].url("/hooks/deny"), &delivery).await;
    assert_eq!((status, code.as_str()), (503, "state_unavailable"));
    assert!(took < bound, "{took:?}");
    assert_eq!(
        upstream
            .received()
            .iter()
            .filter(|r| r.target.starts_with("/hook-"))
            .count(),
        1
    );

    // Health says so, metrics count it, and the daemons are alive.
    let health = health(&client, &daemons[0]).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["state"]["status"], "down", "{health}");
    // Routes fail closed: the readiness probe says not ready while the store is down.
    let ready = client
        .get(daemons[0].url("/_secretproxy/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let ready = ready.text().await.unwrap();
    assert!(ready.contains("\"store\""), "{ready}");
    let metrics = crate::harness::get_text(&daemons[0].url("/_secretproxy/metrics")).await;
    assert!(
        metrics.contains("secretproxy_state_errors_total{op=\"rate_limit\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("secretproxy_state_fallbacks_total{op=\"webhook_replay\",policy=\"deny\"}"),
        "{metrics}"
    );
    for policy in ["local", "allow", "deny"] {
        let series = format!("secretproxy_state_fallbacks_total{{op=\"rate_limit\",policy=\"{policy}\"}}");
        assert!(metrics.contains(&series), "{series}\n{metrics}");
    }

    // Back (SIGCONT): the breaker's probe finds it and `deny` serves again without a restart.
    redis.signal("CONT");
    let recovered = |daemon: &Daemon| {
        let url = daemon.url("/_secretproxy/health");
        let client = client.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                // Traffic drives the probe; any answer but 503 means the store answered.
                let (status, _, _) = timed(&client, url.replace("/_secretproxy/health", "/deny")).await;
                let health: Value =
                    serde_json::from_str(&client.get(&url).send().await.unwrap().text().await.unwrap()).unwrap();
                if status != 503 && health["state"]["status"] == "up" {
                    return;
                }
                assert!(Instant::now() < deadline, "the store was not used again: {health}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    recovered(&daemons[0]).await;
    let ready = client
        .get(daemons[0].url("/_secretproxy/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());

    // Killed: refused connections, same policies, still bounded.
    redis.kill();
    for _ in 0..4 {
        let (status, code, took) = timed(&client, daemons[1].url("/deny")).await;
        assert_eq!((status, code.as_str()), (503, "state_unavailable"));
        assert!(took < bound, "{took:?}");
        let (status, _, took) = timed(&client, daemons[1].url("/allow")).await;
        assert_eq!(status, 200);
        assert!(took < bound, "{took:?}");
    }

    // Started again (empty: no persistence): both replicas find it and share one bucket again.
    redis.spawn();
    recovered(&daemons[0]).await;
    recovered(&daemons[1]).await;
    // The recovery probes used some of `deny`'s fresh bucket; `allow` is untouched since the
    // restart: exactly 3 across the two replicas.
    let mut statuses = Vec::new();
    for round in 0..6 {
        statuses.push(timed(&client, daemons[round % 2].url("/allow")).await.0);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);

    let mut logs = String::new();
    for daemon in daemons {
        let (status, output) = tokio::task::spawn_blocking(move || daemon.terminate()).await.unwrap();
        assert!(status.success(), "no crash: {output}");
        logs.push_str(&output);
    }
    assert!(logs.contains("shared store unreachable"), "{logs}");
    assert!(logs.contains("shared store reachable again"), "{logs}");
    assert_no_secret(&logs, &[API_KEY, HOOK_SECRET], "daemon logs");
    assert_no_secret(&redis.dump(), &[API_KEY, HOOK_SECRET], "redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_password_is_a_secret_and_shows_nowhere() {
    let redis = Redis::start_with(Some(REDIS_PASSWORD));
    let upstream = Upstream::echo().await;
    // Fail closed: a store the daemon could not authenticate to would answer 503, not 200/429.
    // A timeout no loaded CI reaches by accident: this test is about the password.
    let state = "password = \"redis\"\non-error = \"deny\"\ntimeout = \"2s\"";
    let routes = r#"
[secrets.redis]
env = "STORE_REDIS_PASSWORD"

[routes.limited]
path = "/limited"
upstream = "{upstream}/limited"
allow-http = true
headers = { Authorization = "Bearer ${api-key}" }
rate-limit = { requests = 2, per = "1h" }
"#;
    let config = config(&redis, free_port(), &upstream.url(), state, routes);
    assert!(!config.contains(REDIS_PASSWORD));
    let (_dir, daemons) = replicas(&config, None, 2).await;
    let client = crate::harness::client();
    let mut statuses = Vec::new();
    let mut bodies = String::new();
    for round in 0..4 {
        let response = client.get(daemons[round % 2].url("/limited")).send().await.unwrap();
        statuses.push(response.status().as_u16());
        bodies.push_str(&response.text().await.unwrap());
    }
    assert_eq!(statuses, [200, 200, 429, 429], "{bodies}");
    assert_eq!(health(&client, &daemons[0]).await["state"]["status"], "up");

    let dump = redis.dump();
    assert!(dump.contains("secretproxy:rl:{limited}"), "{dump}");
    let mut logs = String::new();
    for daemon in daemons {
        let (status, output) = tokio::task::spawn_blocking(move || daemon.terminate()).await.unwrap();
        assert!(status.success(), "{output}");
        logs.push_str(&output);
    }
    let secrets = [API_KEY, REDIS_PASSWORD];
    assert_no_secret(&logs, &secrets, "daemon logs");
    assert_no_secret(&bodies, &secrets, "responses");
    assert_no_secret(&dump, &secrets, "redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_file() {
    let redis = Redis::start_tls();
    let upstream = Upstream::echo().await;
    let ca = redis.tls.as_ref().unwrap().join("cert.pem");
    let state = format!(
        "ca-file = {:?}\non-error = \"deny\"\ntimeout = \"2s\"",
        ca.display().to_string()
    );
    let routes = r#"
[routes.limited]
path = "/limited"
upstream = "{upstream}/limited"
allow-http = true
headers = { Authorization = "Bearer ${api-key}" }
rate-limit = { requests = 2, per = "1h" }
"#;
    let config = config(&redis, free_port(), &upstream.url(), &state, routes);
    let (_dir, daemons) = replicas(&config, None, 2).await;
    let client = crate::harness::client();
    // Each replica connects (TCP + TLS) in the background at start, not under a request's timeout.
    for daemon in &daemons {
        let deadline = Instant::now() + Duration::from_secs(20);
        while health(&client, daemon).await["state"]["status"] != "up" {
            assert!(Instant::now() < deadline, "{}", daemon.logs());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let mut statuses = Vec::new();
    for round in 0..4 {
        statuses.push(timed(&client, daemons[round % 2].url("/limited")).await.0);
    }
    // Fail closed: without a TLS session to the store these would be 503.
    assert_eq!(statuses, [200, 200, 429, 429]);
    assert!(redis.dump().contains("secretproxy:rl:{limited}"));
}
