//! Red team for `response.transform`, against the built daemon: hostile programs and hostile
//! upstream bodies hit the worker's bounds (stack, memory, time, output) and get
//! `502 transform_limit`, while other requests keep being served; a `200` from a transform is
//! always strict JSON; the worker processes hold no secret and run under their limits.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Daemon, Recorded, Upstream, assert_no_secret, client, text};

const SECRET: &str = "sk_transform_SecretValue_77";

/// An upstream serving hostile and normal JSON bodies by path; `/echo` echoes the request's
/// `Authorization` header (an upstream that leaks what it was sent).
async fn hostile() -> Upstream {
    Upstream::start(|request: Recorded| async move {
        let body = match request.target.as_str() {
            // 16 KiB of nested brackets inside a string: harmless until `fromjson`.
            "/deep-string" => json!({ "s": "[".repeat(16 * 1024) }).to_string(),
            "/deep" => format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
            "/echo" => json!({ "auth": request.header("authorization") }).to_string(),
            _ => json!({ "a": 1, "items": [1, 2, 3] }).to_string(),
        };
        let mut response = text(200, body);
        response
            .headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        response
    })
    .await
}

fn route(name: &str, upstream: &Upstream, path: &str, program: &str) -> String {
    format!(
        "[routes.{name}]\npath = \"/{name}\"\nupstream = \"{}{path}\"\nheaders = {{ Authorization = \"Bearer ${{key}}\" }}\nresponse.transform = {}\n",
        upstream.url(),
        toml_string(program)
    )
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// (route name, upstream path, program): each must hit a bound of the sandbox.
const ATTACKS: &[(&str, &str, &str)] = &[
    ("deep_fromjson", "/deep-string", ".s | fromjson"),
    ("deep_input", "/deep", "."),
    ("huge_string", "/ok", "\"x\" * 1000000000 | length"),
    ("huge_array", "/ok", "[range(1e8)] | length"),
    ("endless_reduce", "/ok", "reduce range(1e9) as $i (0; . + $i)"),
    ("endless_repeat", "/ok", "last(repeat(.))"),
    ("endless_recursion", "/ok", "def f: f; f"),
    ("deep_recursion", "/ok", "def f: [f]; f"),
    (
        "deep_value",
        "/ok",
        "reduce range(1e6) as $i (0; [.]) | tojson | length",
    ),
];

/// Programs whose value JSON has no spelling for, as jaq would print it.
const NOT_JSON: &[&str] = &[
    "nan",
    "[nan, infinite, -infinite]",
    "{a: (1e1000)}",
    "\"+5.43\" | tonumber",
    "{(1): 2}",
    "{(null): 1}",
    "\"\\u0000\" | tojson",
    "[.[] | tostring]",
    "{a: getpath([\"a\"])} | .[\"\\u0000\"] = .a",
    "[limit(3; repeat(1))]",
    "\"\\(1e1000)\"",
    "tobytes? // 0",
];

async fn get(daemon: &Daemon, path: &str) -> (u16, String) {
    let response = client()
        .get(daemon.url(path))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The normal route answers with its transformed body.
async fn assert_normal(daemon: &Daemon) {
    let (status, body) = get(daemon, "/normal").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"sum": 6}));
}

fn start(upstream: &Upstream) -> Daemon {
    let mut config = "[secrets.key]\nenv = \"TEST_TRANSFORM_KEY\"\n".to_string();
    config.push_str(&route("normal", upstream, "/ok", "{sum: (.items | add)}"));
    config.push_str(&route("echo", upstream, "/echo", "{auth}"));
    config.push_str(&format!(
        "[routes.plain]\npath = \"/plain\"\nupstream = \"{}/ok\"\n",
        upstream.url()
    ));
    for (name, path, program) in ATTACKS {
        config.push_str(&route(name, upstream, path, program));
    }
    for (i, program) in NOT_JSON.iter().enumerate() {
        config.push_str(&route(&format!("loose{i}"), upstream, "/ok", program));
    }
    Daemon::start(&config, &[("TEST_TRANSFORM_KEY", SECRET)])
}

#[tokio::test]
async fn hostile_transforms_hit_a_bound_and_the_daemon_serves_on() {
    let upstream = hostile().await;
    let daemon = start(&upstream);
    assert_normal(&daemon).await;
    for (name, _, program) in ATTACKS {
        // The attack and a normal transformed request at the same time: the pool has a worker
        // for each, and the normal one is not held up by the attack.
        let path = format!("/{name}");
        let attack = get(&daemon, &path);
        let normal = async {
            let started = std::time::Instant::now();
            assert_normal(&daemon).await;
            started.elapsed()
        };
        let ((status, body), normal_took) = tokio::join!(attack, normal);
        assert_eq!(status, 502, "{name} ({program}): {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], "transform_limit", "{name} ({program}): {body}");
        assert_eq!(body["route"], *name);
        assert!(
            normal_took < Duration::from_secs(20),
            "{name}: a normal request waited {normal_took:?}"
        );
        // Still serving, transforms and plain routes alike.
        assert_normal(&daemon).await;
        let (status, _) = get(&daemon, "/plain").await;
        assert_eq!(status, 200);
    }
    let logs = daemon.logs();
    assert_no_secret(&logs, &[SECRET], "daemon logs");
    assert!(logs.contains("transform_limit"), "{logs}");
    let (status, _) = daemon.terminate();
    assert!(status.success(), "the daemon exits cleanly after the attacks");
}

#[tokio::test]
async fn a_transform_never_answers_200_with_anything_but_strict_json() {
    let upstream = hostile().await;
    let daemon = start(&upstream);
    for (i, program) in NOT_JSON.iter().enumerate() {
        let (status, body) = get(&daemon, &format!("/loose{i}")).await;
        match status {
            200 => {
                serde_json::from_str::<Value>(&body).unwrap_or_else(|e| panic!("{program}: not JSON ({e}): {body}"));
                for word in ["NaN", "Infinity", "+5.43"] {
                    assert!(!body.contains(word), "{program}: {body}");
                }
            }
            502 => {
                let body: Value = serde_json::from_str(&body).unwrap();
                assert!(
                    body["code"] == "transform_failed" || body["code"] == "transform_limit",
                    "{program}: {body}"
                );
            }
            other => panic!("{program}: status {other}: {body}"),
        }
    }
    // jq's own choices for what JSON cannot spell.
    let (status, body) = get(&daemon, "/loose1").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "[null,1.7976931348623157e+308,-1.7976931348623157e+308]")
    );
    let (status, body) = get(&daemon, "/loose4").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("not a string"), "{body}");

    // An upstream echoing the secret: the scrubber ran first, the transform reshaped the rest.
    let (status, body) = get(&daemon, "/echo").await;
    assert_eq!(status, 200, "{body}");
    assert_no_secret(&body, &[SECRET], "transformed echo");
    assert_no_secret(&daemon.logs(), &[SECRET], "daemon logs");
}

/// The worker processes (children of the daemon): their limits as the kernel reports them,
/// and an empty environment (a secret from an `env` source is not inherited).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn workers_run_sandboxed_without_the_daemons_environment() {
    let upstream = hostile().await;
    let daemon = start(&upstream);
    assert_normal(&daemon).await;
    let pid = daemon.child.id();
    let children = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| std::fs::read_to_string(task.unwrap().path().join("children")).unwrap_or_default())
        .collect::<Vec<String>>()
        .join(" ");
    let workers: Vec<&str> = children.split_whitespace().collect();
    assert!(!workers.is_empty(), "the daemon has a worker after a transform");
    for worker in workers {
        let cmdline = std::fs::read(format!("/proc/{worker}/cmdline")).unwrap();
        assert!(
            String::from_utf8_lossy(&cmdline).contains("__transform-worker"),
            "{cmdline:?}"
        );
        let environ = std::fs::read(format!("/proc/{worker}/environ")).unwrap();
        assert!(
            environ.is_empty(),
            "worker environment: {}",
            String::from_utf8_lossy(&environ)
        );
        let limits = std::fs::read_to_string(format!("/proc/{worker}/limits")).unwrap();
        let limit = |name: &str| {
            limits
                .lines()
                .find(|line| line.starts_with(name))
                .unwrap_or_else(|| panic!("{name} in {limits}"))
                .split_whitespace()
                .rev()
                .skip(1)
                .take(2)
                .collect::<Vec<_>>()
        };
        assert_eq!(limit("Max open files"), ["3", "3"], "{limits}");
        assert_eq!(limit("Max core file size"), ["0", "0"], "{limits}");
        assert_eq!(limit("Max file size"), ["0", "0"], "{limits}");
        assert_eq!(limit("Max cpu time"), ["65", "60"], "{limits}");
        let address_space = limit("Max address space");
        assert_ne!(address_space[1], "unlimited", "{limits}");
        assert_no_secret(&limits, &[SECRET], "worker limits");
    }
}
