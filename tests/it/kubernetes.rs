//! Kubernetes readiness without a cluster: the manifests in deploy/kubernetes/ checked against
//! the daemon they run (probe paths answered by the built binary, ports, Secret keys, security
//! context, grace period), the kubelet's atomic `..data` symlink swap of a mounted Secret and of
//! a ConfigMap, SIGTERM with a shutdown delay (not ready, still serving, then exit), trusted
//! forwarding headers in the access log, and the probes answered over a real veth link from a
//! network namespace (the pod network), without the client token.

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_norway::Value;

use crate::harness::{Daemon, Netns, Recorded, Upstream, assert_no_secret, client, text};

const LIVE: &str = "/_secretproxy/health/live";
const READY: &str = "/_secretproxy/health/ready";

/// A directory the way the kubelet writes a Secret or ConfigMap volume: every key is a symlink
/// `NAME -> ..data/NAME`, `..data` is a symlink to a timestamped directory, and an update writes
/// a new timestamped directory and renames a new `..data` link over the old one.
struct AtomicDir {
    dir: PathBuf,
    version: u32,
    current: Option<PathBuf>,
}

impl AtomicDir {
    fn new(dir: &Path) -> AtomicDir {
        std::fs::create_dir_all(dir).unwrap();
        AtomicDir {
            dir: dir.to_path_buf(),
            version: 0,
            current: None,
        }
    }

    /// Writes `files` as the kubelet's atomic writer does (`pkg/volume/util/atomic_writer.go`).
    fn write(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let stamp = format!("..2026_12_01_18_00_00.{}", self.version);
        let stamped = self.dir.join(&stamp);
        std::fs::create_dir(&stamped).unwrap();
        for (name, content) in files {
            std::fs::write(stamped.join(name), content).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        symlink(&stamp, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        for (name, _) in files {
            let link = self.dir.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                symlink(format!("..data/{name}"), &link).unwrap();
            }
        }
        if let Some(old) = self.current.replace(stamped) {
            std::fs::remove_dir_all(old).unwrap();
        }
    }
}

/// Polls until `check` holds (at most `limit`), sleeping briefly between tries.
async fn eventually(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An upstream that answers 200 and records the requests.
async fn recording_upstream() -> Upstream {
    Upstream::start(|_: Recorded| async { text(200, "ok") }).await
}

// ------------------------------------------------------------------------------------------
// The manifests
// ------------------------------------------------------------------------------------------

fn manifests() -> BTreeMap<String, Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut objects = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for document in serde_norway::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
            let kind = value["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no kind", path.display()));
            let name = value["metadata"]["name"].as_str().unwrap_or("");
            objects.insert(format!("{kind}/{name}"), value);
        }
    }
    objects
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
}

fn seq_of<'a>(value: &'a Value, what: &str) -> &'a Vec<Value> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("{what} is not a list: {value:?}"))
}

/// The port number a probe or Service names: a number, or the name of a container port.
fn port_number(port: &Value, container: &Value) -> u64 {
    match port {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::String(name) => seq_of(&container["ports"], "ports")
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port named {name}")),
        other => panic!("a port must be a number or a name: {other:?}"),
    }
}

/// Every file the config's `[secrets]` read from, as `(directory, file name)`.
fn secret_files(config: &toml::Table) -> Vec<(String, String)> {
    config["secrets"]
        .as_table()
        .unwrap()
        .values()
        .filter_map(|secret| secret.get("file")?.as_str())
        .map(|file| {
            let path = Path::new(file);
            (
                path.parent().unwrap().display().to_string(),
                path.file_name().unwrap().to_string_lossy().into_owned(),
            )
        })
        .collect()
}

fn seconds(text: &str) -> u64 {
    humantime::parse_duration(text).unwrap().as_secs()
}

/// The manifests are consistent with each other and with the daemon: the probes' paths are the
/// daemon's (GET on the built binary, serving the ConfigMap's own config with the Secret's keys
/// as files, answers 200 without the token and with a pod IP as `Host`), the container port is
/// the config's listen port, the Secret's keys are the files `[secrets]` read, the config mount
/// is a directory (a subPath mount would never see updates), the pod runs as non-root on a
/// read-only root, and the grace period covers the shutdown delay plus the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_match_the_daemon() {
    let objects = manifests();
    for kind in [
        "Deployment/secretproxy",
        "Service/secretproxy",
        "ConfigMap/secretproxy-config",
        "Secret/secretproxy-secrets",
        "PodDisruptionBudget/secretproxy",
    ] {
        assert!(
            objects.contains_key(kind),
            "{kind} missing from deploy/kubernetes: {:?}",
            objects.keys()
        );
    }
    let deployment = &objects["Deployment/secretproxy"];
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = seq_of(&pod["containers"], "containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];

    // The config the ConfigMap holds is valid for the daemon, and the container reads it.
    let config_map = &objects["ConfigMap/secretproxy-config"];
    let config_text = str_of(&config_map["data"]["proxy.toml"], "proxy.toml");
    secretproxy::config::Config::parse(config_text, "configmap.yaml").unwrap_or_else(|e| panic!("{e}"));
    let config: toml::Table = toml::from_str(config_text).unwrap();
    let server = config["server"].as_table().unwrap();
    let volumes = seq_of(&pod["volumes"], "volumes");
    let mounts = seq_of(&container["volumeMounts"], "volumeMounts");
    let mount_of = |volume: &str| {
        mounts
            .iter()
            .find(|m| m["name"].as_str() == Some(volume))
            .unwrap_or_else(|| panic!("volume {volume} is not mounted"))
    };
    let volume_with = |key: &str, name: &str| -> String {
        let volume = volumes
            .iter()
            .find(|v| v[key]["name"].as_str() == Some(name) || v[key]["secretName"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no volume from {key} {name}"));
        str_of(&volume["name"], "volume name").to_string()
    };
    let config_mount = mount_of(&volume_with("configMap", "secretproxy-config"));
    assert!(
        config_mount.get("subPath").is_none(),
        "a subPath mount never sees ConfigMap updates"
    );
    let args: Vec<&str> = seq_of(&container["args"], "args")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect();
    let config_arg = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    assert_eq!(
        config_arg,
        format!("{}/proxy.toml", str_of(&config_mount["mountPath"], "mountPath"))
    );
    assert_eq!(args[0], "serve");

    // Ports: container == the config's listen port; the Service and probes point at it.
    let listen: std::net::SocketAddr = server["listen"].as_str().unwrap().parse().unwrap();
    let container_port = container["ports"][0]["containerPort"].as_u64().unwrap();
    assert_eq!(container_port, u64::from(listen.port()));
    let service = &objects["Service/secretproxy"];
    for port in seq_of(&service["spec"]["ports"], "service ports") {
        assert_eq!(port_number(&port["targetPort"], container), container_port);
    }
    let probes: Vec<(&str, &Value)> = [("livenessProbe", LIVE), ("readinessProbe", READY)]
        .into_iter()
        .map(|(probe, path)| {
            let get = &container[probe]["httpGet"];
            assert_eq!(str_of(&get["path"], probe), path, "{probe}");
            assert_eq!(port_number(&get["port"], container), container_port, "{probe}");
            (path, get)
        })
        .collect();

    // Labels: the Service and the PodDisruptionBudget select the Deployment's pods.
    let labels = deployment["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .unwrap();
    for (key, value) in service["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(labels.get(key), Some(value), "service selector");
    }
    let pdb = &objects["PodDisruptionBudget/secretproxy"];
    for (key, value) in pdb["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(labels.get(key), Some(value), "pdb selector");
    }
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"],
        pdb["spec"]["selector"]["matchLabels"]
    );

    // The Secret's keys are exactly the files the config reads, in the Secret's mount.
    let secret = &objects["Secret/secretproxy-secrets"];
    let secret_values: BTreeMap<String, String> = secret["stringData"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (str_of(k, "key").to_string(), str_of(v, "value").to_string()))
        .collect();
    let secret_mount = mount_of(&volume_with("secret", "secretproxy-secrets"));
    let secret_dir = str_of(&secret_mount["mountPath"], "mountPath");
    let files = secret_files(&config);
    let mut read: Vec<&str> = files.iter().map(|(_, name)| name.as_str()).collect();
    read.sort();
    assert_eq!(read, secret_values.keys().map(String::as_str).collect::<Vec<_>>());
    for (dir, name) in &files {
        assert_eq!(dir, secret_dir, "secret {name} is read outside the Secret's mount");
    }

    // Non-root, read-only, nothing to escalate; the Secret's files readable by the pod's group.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], Value::Bool(true));
    assert_ne!(pod["securityContext"]["runAsUser"].as_u64(), Some(0));
    let security = &container["securityContext"];
    assert_eq!(security["runAsNonRoot"], Value::Bool(true));
    assert_eq!(security["readOnlyRootFilesystem"], Value::Bool(true));
    assert_eq!(security["allowPrivilegeEscalation"], Value::Bool(false));
    assert_eq!(
        seq_of(&security["capabilities"]["drop"], "drop"),
        &vec![Value::from("ALL")]
    );
    let secret_volume = volumes
        .iter()
        .find(|v| v["secret"]["secretName"].as_str() == Some("secretproxy-secrets"))
        .unwrap();
    let mode = secret_volume["secret"]["defaultMode"].as_u64().unwrap();
    assert_eq!(mode & 0o007, 0, "the Secret's files are not world-readable");
    assert_eq!(mode & 0o040, 0o040, "the fsGroup can read the Secret's files");
    assert_eq!(pod["securityContext"]["fsGroup"], pod["securityContext"]["runAsGroup"]);

    // The kubelet's SIGKILL comes after the delay and the drain.
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let delay = seconds(server["shutdown-delay"].as_str().unwrap());
    let drain = seconds(server["shutdown-timeout"].as_str().unwrap());
    assert!(
        grace > delay + drain,
        "grace {grace}s <= delay {delay}s + drain {drain}s"
    );
    let period = container["readinessProbe"]["periodSeconds"].as_u64().unwrap();
    let failures = container["readinessProbe"]["failureThreshold"].as_u64().unwrap();
    assert!(
        period * failures < delay,
        "the readiness probe notices the delay in time"
    );

    // The Containerfile builds the binary the Deployment runs, as a non-root user.
    let containerfile = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Containerfile")).unwrap();
    let from: Vec<&str> = containerfile.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(from.first().is_some_and(|l| l.contains("rust:1-bookworm")), "{from:?}");
    assert!(
        from.last()
            .is_some_and(|l| l.contains("distroless/cc-debian12:nonroot")),
        "{from:?}"
    );
    assert!(containerfile.contains("\nUSER 65532:65532\n"));
    assert!(containerfile.contains(&format!("EXPOSE {container_port}")));

    // The built daemon, serving the ConfigMap's config with the Secret's keys as kubelet-made
    // files, answers the probe paths without the token, with the pod IP as Host.
    let root = tempfile::tempdir().unwrap();
    let mut secrets_dir = AtomicDir::new(&root.path().join("secrets"));
    let pairs: Vec<(&str, &str)> = secret_values.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    secrets_dir.write(&pairs);
    let local_config = config_text.replace(secret_dir, &secrets_dir.dir.display().to_string());
    let mut config_dir = AtomicDir::new(&root.path().join("config"));
    config_dir.write(&[("proxy.toml", &local_config)]);
    let daemon = Daemon::start_at(root, config_dir.dir.join("proxy.toml"), &[]);
    let http = client();
    let mut bodies = String::new();
    for (path, get) in probes {
        assert_eq!(
            get.get("httpHeaders"),
            None,
            "the probes need no header (no Host, no token)"
        );
        let response = http
            .get(daemon.url(path))
            .header("host", format!("10.244.1.17:{}", daemon.addr.port()))
            .header("user-agent", "kube-probe/1.31")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        bodies += &response.text().await.unwrap();
    }
    // Everything else still needs the Host rules and the token.
    let health = http
        .get(daemon.url("/_secretproxy/health"))
        .header("host", format!("10.244.1.17:{}", daemon.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 403);
    let routed = http.get(daemon.url("/openai/models")).send().await.unwrap();
    assert_eq!(routed.status(), 401, "no client token");
    bodies += &routed.text().await.unwrap();
    let values: Vec<&str> = secret_values.values().map(String::as_str).collect();
    assert_no_secret(&bodies, &values, "probe and refusal bodies");
    let (status, logs) = daemon.terminate();
    assert!(status.success(), "{logs}");
    assert_no_secret(&logs, &values, "daemon logs");
}

// ------------------------------------------------------------------------------------------
// Secret and ConfigMap updates
// ------------------------------------------------------------------------------------------

const OLD_KEY: &str = "sk_k8s_Rotated_Old_4411";
const NEW_KEY: &str = "sk_k8s_Rotated_New_8822";

/// The kubelet rotates a mounted Secret: the daemon injects the new value within seconds, with no
/// reload and no restart, and neither value shows in its logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_volume_is_picked_up() {
    let upstream = recording_upstream().await;
    let root = tempfile::tempdir().unwrap();
    let mut secrets = AtomicDir::new(&root.path().join("secrets"));
    secrets.write(&[("api-key", &format!("{OLD_KEY}\n"))]);
    let config = format!(
        "[secrets.api-key]\nfile = {:?}\n[routes.api]\npath = \"/api\"\nupstream = \"{}/api\"\nauth = {{ bearer = \"api-key\" }}\n",
        secrets.dir.join("api-key").display().to_string(),
        upstream.url()
    );
    let config_path = root.path().join("proxy.toml");
    std::fs::write(&config_path, config).unwrap();
    let daemon = Daemon::start_at(root, config_path, &[]);
    let http = client();
    let seen = |upstream: &Upstream| {
        upstream
            .received()
            .last()
            .and_then(|r| r.header("authorization").map(str::to_string))
    };

    assert_eq!(http.get(daemon.url("/api")).send().await.unwrap().status(), 200);
    assert_eq!(seen(&upstream).as_deref(), Some(format!("Bearer {OLD_KEY}").as_str()));

    secrets.write(&[("api-key", &format!("{NEW_KEY}\n"))]);
    let expected = format!("Bearer {NEW_KEY}");
    eventually(
        Duration::from_secs(15),
        "the rotated secret reaching the upstream",
        async || {
            http.get(daemon.url("/api")).send().await.unwrap().status() == 200
                && seen(&upstream).as_deref() == Some(expected.as_str())
        },
    )
    .await;
    let logs = daemon.wait_for_log("secret changed; the new value is in use", 1, Duration::from_secs(5));
    assert!(!logs.contains("config reloaded"), "a secret rotation is not a reload");
    let (status, logs) = daemon.terminate();
    assert!(status.success());
    assert_no_secret(&logs, &[OLD_KEY, NEW_KEY], "daemon logs");
}

fn routes_config(upstream: &str, routes: &[&str]) -> String {
    let mut text = "[secrets.key]\nenv = \"K8S_TEST_KEY\"\n".to_string();
    for route in routes {
        text += &format!(
            "[routes.{route}]\npath = \"/{route}\"\nupstream = \"{upstream}/{route}\"\nheaders = {{ x-key = \"${{key}}\" }}\n"
        );
    }
    text
}

/// A ConfigMap mounted as a directory and updated twice by the kubelet: each `..data` swap
/// reloads the config (a new route appears), so the watcher follows the swap and the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_update_reloads_the_config() {
    let upstream = recording_upstream().await;
    let root = tempfile::tempdir().unwrap();
    let mut config = AtomicDir::new(&root.path().join("config"));
    config.write(&[("proxy.toml", &routes_config(&upstream.url(), &["a"]))]);
    let path = config.dir.join("proxy.toml");
    let daemon = Daemon::start_at(root, path, &[("K8S_TEST_KEY", OLD_KEY)]);
    let http = client();
    assert_eq!(http.get(daemon.url("/a")).send().await.unwrap().status(), 200);
    assert_eq!(http.get(daemon.url("/b")).send().await.unwrap().status(), 404);

    for (generation, routes) in [(2, vec!["a", "b"]), (3, vec!["a", "b", "c"])] {
        config.write(&[("proxy.toml", &routes_config(&upstream.url(), &routes))]);
        let logs = daemon.wait_for_log("config reloaded", generation - 1, Duration::from_secs(15));
        assert!(logs.contains(&format!("\"generation\":{generation}")), "{logs}");
        let newest = format!("/{}", routes.last().unwrap());
        assert_eq!(
            http.get(daemon.url(&newest)).send().await.unwrap().status(),
            200,
            "{newest}"
        );
    }
    assert_eq!(upstream.received().last().unwrap().header("x-key"), Some(OLD_KEY));
    let (status, logs) = daemon.terminate();
    assert!(status.success());
    assert_eq!(
        logs.matches("config reloaded").count(),
        2,
        "one reload per swap:\n{logs}"
    );
    assert_no_secret(&logs, &[OLD_KEY], "daemon logs");
}

// ------------------------------------------------------------------------------------------
// SIGTERM
// ------------------------------------------------------------------------------------------

/// SIGTERM with `shutdown-delay`: readiness turns 503 at once, liveness stays 200, and requests
/// are still proxied during the delay; then the daemon drains and exits 0. The probe documents
/// hold states and counts only: no secret value, no secret or route name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_reports_not_ready_and_serves_through_the_delay() {
    let upstream = recording_upstream().await;
    let config = format!(
        "[server]\nshutdown-delay = \"5s\"\nshutdown-timeout = \"5s\"\n{}",
        routes_config(&upstream.url(), &["a"])
    );
    let daemon = Daemon::start(&config, &[("K8S_TEST_KEY", OLD_KEY)]);
    let http = client();
    let mut documents = String::new();
    let ready = http.get(daemon.url(READY)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    documents += &ready.text().await.unwrap();

    daemon.signal("TERM");
    let started = Instant::now();
    let mut not_ready = String::new();
    eventually(Duration::from_secs(4), "readiness turning 503", async || {
        let response = http.get(daemon.url(READY)).send().await.unwrap();
        let status = response.status();
        not_ready = response.text().await.unwrap();
        status == 503
    })
    .await;
    let document: serde_json::Value = serde_json::from_str(&not_ready).unwrap();
    assert_eq!(document["status"], "not_ready");
    let shutdown = document["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "shutdown")
        .unwrap();
    assert_eq!(shutdown["state"], "draining");
    documents += &not_ready;

    // Still serving: a proxied request and the liveness probe, on new connections.
    let served = client().get(daemon.url("/a")).send().await.unwrap();
    assert_eq!(served.status(), 200);
    let live = client().get(daemon.url(LIVE)).send().await.unwrap();
    assert_eq!(live.status(), 200);
    documents += &live.text().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the checks ran within the delay ({:?}); the machine is too slow for this test",
        started.elapsed()
    );
    assert_eq!(upstream.received().len(), 1);

    let (status, logs) = daemon.wait(Duration::from_secs(30));
    assert!(status.success(), "{logs}");
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "exited before the delay ended"
    );
    assert!(
        logs.contains("not ready: still serving during the shutdown delay"),
        "{logs}"
    );
    assert_no_secret(&documents, &[OLD_KEY], "probe documents");
    for name in ["K8S_TEST_KEY", "\"key\"", "/a"] {
        assert!(!documents.contains(name), "{name} in {documents}");
    }
    assert_no_secret(&logs, &[OLD_KEY], "daemon logs");
}

// ------------------------------------------------------------------------------------------
// Forwarded headers
// ------------------------------------------------------------------------------------------

/// The access log's client is the forwarded one only when the peer is a trusted proxy:
/// 127.0.0.1 is trusted, 127.0.0.2 (the same machine, another source address) is not. The Host
/// rule still applies to what the balancer sends: its name must be in `allowed-hosts`, and
/// `X-Forwarded-Host` does not help.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_count_only_from_trusted_proxies() {
    let upstream = recording_upstream().await;
    let config = format!(
        "[server]\ntrusted-proxies = [\"127.0.0.1/32\"]\nallowed-hosts = [\"lb.example\"]\n{}",
        routes_config(&upstream.url(), &["a"])
    );
    let daemon = Daemon::start(&config, &[("K8S_TEST_KEY", OLD_KEY)]);
    let from = |ip: &str| {
        secretproxy::upstream::install_crypto_provider();
        reqwest::Client::builder()
            .no_proxy()
            .local_address(ip.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap()
    };
    let send = async |client: &reqwest::Client, query: &str, host: &str, extra: &[(&str, &str)]| {
        let mut request = client.get(daemon.url(&format!("/a?case={query}"))).header("host", host);
        for (name, value) in extra {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap().status().as_u16()
    };
    let (trusted, untrusted) = (from("127.0.0.1"), from("127.0.0.2"));
    let xff = [("x-forwarded-for", "192.0.2.1, 203.0.113.7")];
    assert_eq!(send(&trusted, "trusted-xff", "lb.example", &xff).await, 200);
    let forwarded = [("forwarded", "for=\"[2001:db8::7]:443\";proto=https")];
    assert_eq!(send(&trusted, "trusted-forwarded", "lb.example", &forwarded).await, 200);
    assert_eq!(send(&untrusted, "untrusted-xff", "lb.example", &xff).await, 200);
    assert_eq!(send(&trusted, "direct", "lb.example", &[]).await, 200);
    let spoofed = [("x-forwarded-host", "localhost"), ("x-forwarded-for", "203.0.113.7")];
    assert_eq!(
        send(&trusted, "other-host", "other.example", &spoofed).await,
        403,
        "the Host rule applies behind a balancer"
    );

    let logs = daemon.wait_for_log("case=other-host", 1, Duration::from_secs(10));
    let client_of = |case: &str| -> String {
        let line = logs
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == "request" && v["query"] == format!("case={case}"))
            .unwrap_or_else(|| panic!("no access line for {case}:\n{logs}"));
        line["client"].as_str().unwrap().to_string()
    };
    assert_eq!(client_of("trusted-xff"), "203.0.113.7");
    assert_eq!(client_of("trusted-forwarded"), "2001:db8::7");
    assert_eq!(client_of("untrusted-xff"), "127.0.0.2");
    assert_eq!(client_of("direct"), "127.0.0.1");
    assert_eq!(client_of("other-host"), "203.0.113.7");
    let (status, logs) = daemon.terminate();
    assert!(status.success());
    assert_no_secret(&logs, &[OLD_KEY], "daemon logs");
}

// ------------------------------------------------------------------------------------------
// The pod network
// ------------------------------------------------------------------------------------------

const CLIENT_TOKEN: &str = "k8s-client-token-Never_Logged_31";

/// The daemon in a namespace ("the pod") listening on all addresses with a client token; a
/// client over the veth link ("the kubelet", peer 10.214.x.1, `Host` = the pod's IP, no token)
/// gets both probes, `ready` turning 200 once a missing secret file appears (the probe itself
/// reads it again), while `/_secretproxy/health` and the routes stay closed to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_the_pod_network_without_a_token() {
    let ns = Netns::create("sp-k8s", 214);
    let root = tempfile::tempdir().unwrap();
    let mut secrets = AtomicDir::new(&root.path().join("secrets"));
    secrets.write(&[("client-token", CLIENT_TOKEN)]);
    let config = root.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nallow-remote = true\nclient-token = \"${{client-token}}\"\n\
             [secrets.client-token]\nfile = {:?}\n[secrets.api-key]\nfile = {:?}\n\
             [routes.a]\npath = \"/a\"\nupstream = \"http://127.0.0.1:9/a\"\nauth = {{ bearer = \"api-key\" }}\n",
            secrets.dir.join("client-token").display().to_string(),
            secrets.dir.join("api-key").display().to_string(),
        ),
    )
    .unwrap();
    let log_path = root.path().join("stderr.log");
    let (mut daemon, port) = ns.serve(&config, &log_path);
    let url = |path: &str| format!("http://{}:{port}{path}", ns.inner);
    let http = client();
    let mut bodies = String::new();

    let live = http.get(url(LIVE)).send().await.unwrap();
    assert_eq!(live.status(), 200);
    bodies += &live.text().await.unwrap();
    let ready = http.get(url(READY)).send().await.unwrap();
    assert_eq!(ready.status(), 503, "the api-key file is missing");
    let document: serde_json::Value = serde_json::from_str(&ready.text().await.unwrap()).unwrap();
    assert_eq!(document["checks"][1]["missing"], 1, "{document}");
    bodies += &document.to_string();

    secrets.write(&[("client-token", CLIENT_TOKEN), ("api-key", OLD_KEY)]);
    eventually(
        Duration::from_secs(15),
        "readiness after the secret appeared",
        async || {
            let response = http.get(url(READY)).send().await.unwrap();
            let ok = response.status() == 200;
            bodies += &response.text().await.unwrap();
            ok
        },
    )
    .await;

    let head = http.head(url(READY)).send().await.unwrap();
    assert_eq!(head.status(), 200);
    // A page of another site may not read the probes either.
    for (name, value) in [("origin", "https://evil.example"), ("sec-fetch-site", "cross-site")] {
        let refused = http.get(url(READY)).header(name, value).send().await.unwrap();
        assert_eq!(refused.status(), 403, "{name}");
    }
    let health = http.get(url("/_secretproxy/health")).send().await.unwrap();
    assert_eq!(health.status(), 403, "health stays loopback-only");
    let routed = http.get(url("/a")).send().await.unwrap();
    assert_eq!(routed.status(), 403, "Host rule: the pod IP is not an allowed host");
    bodies += &routed.text().await.unwrap();
    let routed = http
        .get(url("/a"))
        .header("host", format!("localhost:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(routed.status(), 401, "the routes need the client token");
    bodies += &routed.text().await.unwrap();

    Command::new("kill").arg(daemon.id().to_string()).status().unwrap();
    assert!(daemon.wait().unwrap().success());
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert_no_secret(&logs, &[CLIENT_TOKEN, OLD_KEY], "daemon logs");
    assert_no_secret(&bodies, &[CLIENT_TOKEN, OLD_KEY], "responses");
    for name in ["api-key", "client-token"] {
        assert!(!bodies.contains(name), "{name} in {bodies}");
    }
}
