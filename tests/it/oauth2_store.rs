//! OAuth2 tokens shared through the store: a real `redis-server`, replicas of the built binary
//! (three behind a real haproxy, round robin) and the Authlib token endpoint and API of
//! tests/oauth2/server.py, whose `/stats` counts every mint.
//!
//! Checked: a burst across the replicas costs one mint in all; a revoked token (401 everywhere)
//! costs one re-mint in all; a value in the store that does not open is overwritten; with Redis
//! hung every replica still mints locally within the store's timeout, and sharing resumes when it
//! is back. Redis never holds a token, the client secret or the client id in clear (nor their
//! base64); neither do the logs or responses.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

use crate::harness::{Daemon, assert_no_secret, client, get_text};
use crate::oauth2::{AuthServer, CLIENT_ID, CLIENT_SECRET};
use crate::store::{Balancer, Redis, free_port, lb_client, served};

fn config(redis: &Redis, server: &AuthServer, lb_port: u16, state: &str) -> String {
    format!(
        r#"[server]
allowed-hosts = ["lb.test:{lb_port}"]

[secrets.pay-id]
env = "PAY_ID"
[secrets.pay-secret]
env = "PAY_SECRET"

[state]
url = "{url}"
{state}

[oauth2.pay]
token-url = "{token}"
client-id = "${{pay-id}}"
client-secret = "${{pay-secret}}"
scopes = ["orders:read"]

[routes.pay]
path = "/pay/{{*rest}}"
upstream = "{api}/{{rest}}"
methods = ["GET", "POST"]
auth = {{ oauth2 = "pay" }}
"#,
        url = redis.url(),
        token = server.url("/token"),
        api = server.url("/api"),
    )
}

/// `count` replicas of the built binary sharing `config`, logging at debug level.
async fn replicas(config: &str, count: usize) -> (tempfile::TempDir, Vec<Daemon>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let mut daemons = Vec::new();
    for _ in 0..count {
        let path = path.clone();
        daemons.push(
            tokio::task::spawn_blocking(move || {
                Daemon::start_listening(
                    tempfile::tempdir().unwrap(),
                    path,
                    "127.0.0.1:0",
                    &[
                        ("PAY_ID", CLIENT_ID),
                        ("PAY_SECRET", CLIENT_SECRET),
                        ("RUST_LOG", "secretproxy=debug,info"),
                    ],
                )
            })
            .await
            .unwrap(),
        );
    }
    (dir, daemons)
}

/// Waits until `daemon` reports the store up (each readiness probe sends a PING).
async fn store_up(daemon: &Daemon) {
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = http.get(daemon.url("/_secretproxy/health/ready")).send().await.unwrap();
        let response = http.get(daemon.url("/_secretproxy/health")).send().await.unwrap();
        let health: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        if health["state"]["status"] == "up" {
            return;
        }
        assert!(Instant::now() < deadline, "the store is not up: {health}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `count` concurrent GETs through `http` to `url(i)`: every status and body.
async fn wave(http: &reqwest::Client, count: usize, url: impl Fn(usize) -> String) -> Vec<(u16, String)> {
    let requests = (0..count).map(|i| {
        let (http, url) = (http.clone(), url(i));
        async move {
            let response = http.get(url).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    });
    futures_util::future::join_all(requests).await
}

/// Stops every replica; each must exit 0. Returns their logs, one after the other.
async fn stop_all(daemons: Vec<Daemon>) -> String {
    let mut logs = String::new();
    for daemon in daemons {
        let (status, output) = tokio::task::spawn_blocking(move || daemon.terminate()).await.unwrap();
        assert!(status.success(), "no crash: {output}");
        logs.push_str(&output);
    }
    logs
}

/// No token the server minted and not the client secret, in the daemons' logs or the responses.
async fn assert_no_token_shown(server: &AuthServer, logs: &str, bodies: &str) {
    let tokens = server.tokens().await;
    let mut secrets: Vec<&str> = tokens.iter().map(String::as_str).collect();
    secrets.push(CLIENT_SECRET);
    assert_no_secret(logs, &secrets, "daemon logs");
    assert_no_secret(bodies, &secrets, "responses");
}

/// The token, the client secret, the client id and the base64 of each: none may be in `dump`.
async fn assert_store_holds_nothing_in_clear(server: &AuthServer, dump: &str) {
    let mut secrets = server.tokens().await;
    assert!(!secrets.is_empty());
    secrets.push(CLIENT_SECRET.to_string());
    secrets.push(CLIENT_ID.to_string());
    let encoded: Vec<String> = secrets
        .iter()
        .flat_map(|s| {
            [
                base64::engine::general_purpose::STANDARD.encode(s),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s),
                hex::encode(s),
            ]
        })
        .collect();
    secrets.extend(encoded);
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    assert_no_secret(dump, &secrets, "redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_mint_once_and_converge_on_one_remint_after_a_401() {
    let redis = Redis::start();
    // A slow token endpoint: the replicas' first requests overlap the one mint in flight.
    let server = AuthServer::start(&["--mint-delay-ms", "300"]);
    let lb_port = free_port();
    // A generous store timeout: this test is about the counts, not about a slow store.
    let config = config(&redis, &server, lb_port, "timeout = \"2s\"");
    let (_dir, daemons) = replicas(&config, 3).await;
    for daemon in &daemons {
        store_up(daemon).await;
    }
    let addrs: Vec<SocketAddr> = daemons.iter().map(|d| d.addr).collect();
    let balancer = Balancer::start(lb_port, &addrs);
    let http = lb_client(lb_port);
    let mut bodies = String::new();

    // 90 concurrent requests over three replicas: one mint in all, every call accepted.
    for (status, body) in wave(&http, 90, |i| balancer.url(&format!("/pay/orders/{i}"))).await {
        assert_eq!(status, 200, "{body}");
        bodies.push_str(&body);
    }
    let stats = server.stats().await;
    assert_eq!(stats["mints"], 1, "one mint across the replicas: {stats}");
    assert_eq!(stats["api_ok"], 90, "{stats}");
    for daemon in &daemons {
        assert!(served(daemon, "pay").await >= 10, "round robin reached every replica");
    }
    let keys = redis.cli(&["--scan", "--pattern", "secretproxy:oauth2:*"]);
    let mut keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
    keys.sort();
    assert_eq!(keys.len(), 1, "one token key, the lock released: {keys:?}");
    let key = keys[0].to_string();
    assert!(key.starts_with("secretproxy:oauth2:{") && key.ends_with('}'), "{key}");
    // The key lives as long as the token (Authlib's default: an hour).
    let ttl: u64 = redis.cli(&["PTTL", &key]).parse().unwrap();
    assert!((3_000_000..=3_600_000).contains(&ttl), "{ttl}");
    assert_store_holds_nothing_in_clear(&server, &redis.dump()).await;

    // The local cache is the first layer: requests with a fresh local token read nothing from
    // the store.
    let reads = || {
        let stats = redis.cli(&["INFO", "commandstats"]);
        ["cmdstat_get:", "cmdstat_mget:"]
            .iter()
            .filter_map(|name| {
                let line = stats.lines().find(|l| l.starts_with(name))?;
                line.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok()
            })
            .sum::<u64>()
    };
    let before = reads();
    assert!(before > 0, "the replicas' reads are counted");
    for (status, body) in wave(&http, 30, |i| balancer.url(&format!("/pay/cached/{i}"))).await {
        assert_eq!(status, 200, "{body}");
        bodies.push_str(&body);
    }
    assert_eq!(reads(), before, "fresh local tokens do not touch the store");
    assert_eq!(server.count("mints").await, 1);

    // Revoked: every replica meets a 401 with the shared token; one re-mint in all.
    server.revoke().await;
    for (status, body) in wave(&http, 60, |i| balancer.url(&format!("/pay/after-401/{i}"))).await {
        assert_eq!(status, 200, "{body}");
        bodies.push_str(&body);
    }
    let stats = server.stats().await;
    assert_eq!(stats["mints"], 2, "one re-mint across the replicas: {stats}");
    assert_eq!(stats["api_ok"], 180, "{stats}");
    assert!(
        stats["api_401"].as_u64().unwrap() >= 3,
        "each replica met the revoked token: {stats}"
    );

    // A value that does not open (tampered, or sealed under a rotated secret) counts as absent
    // and is overwritten by the next mint, here after another revocation.
    assert_eq!(redis.cli(&["SET", &key, "not-a-sealed-token", "PX", "600000"]), "OK");
    server.revoke().await;
    for (status, body) in wave(&http, 30, |i| balancer.url(&format!("/pay/tampered/{i}"))).await {
        assert_eq!(status, 200, "{body}");
        bodies.push_str(&body);
    }
    assert_eq!(server.count("mints").await, 3);
    let stored = redis.cli(&["GET", &key]);
    assert!(!stored.is_empty() && stored != "not-a-sealed-token");
    assert_store_holds_nothing_in_clear(&server, &redis.dump()).await;

    let logs = stop_all(daemons).await;
    assert_eq!(logs.matches("minted an OAuth2 token").count(), 3, "{logs}");
    assert_no_token_shown(&server, &logs, &bodies).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_hung_tokens_are_minted_locally_in_time_and_sharing_resumes() {
    let redis = Redis::start();
    let server = AuthServer::start(&[]);
    let config = config(
        &redis,
        &server,
        free_port(),
        "timeout = \"200ms\"\ncool-down = \"200ms\"",
    );
    let (_dir, daemons) = replicas(&config, 2).await;
    for daemon in &daemons {
        store_up(daemon).await;
    }
    let http = client();
    let mut bodies = String::new();

    // Hung (SIGSTOP): each replica's read times out and it mints its own token, as without a
    // store; nothing waits much past the store's timeout.
    redis.signal("STOP");
    for daemon in &daemons {
        for round in 0..3 {
            let started = Instant::now();
            let response = http
                .get(daemon.url(&format!("/pay/hung/{round}")))
                .send()
                .await
                .unwrap();
            let took = started.elapsed();
            assert_eq!(response.status(), 200);
            bodies.push_str(&response.text().await.unwrap());
            assert!(took < Duration::from_secs(2), "{took:?}");
        }
    }
    assert_eq!(server.count("mints").await, 2, "one local mint per replica");
    let metrics = get_text(&daemons[0].url("/_secretproxy/metrics")).await;
    assert!(
        metrics.contains("secretproxy_state_fallbacks_total{op=\"oauth2\",policy=\"local\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("secretproxy_state_errors_total{op=\"oauth2_get\"}"),
        "{metrics}"
    );

    // Back: the next mint is shared again. Both local tokens revoked; the first replica mints
    // and shares, the second takes the shared one.
    redis.signal("CONT");
    for daemon in &daemons {
        store_up(daemon).await;
    }
    server.revoke().await;
    for daemon in &daemons {
        let response = http.get(daemon.url("/pay/back")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        bodies.push_str(&response.text().await.unwrap());
    }
    assert_eq!(
        server.count("mints").await,
        3,
        "one mint for both replicas once the store is back"
    );
    assert_store_holds_nothing_in_clear(&server, &redis.dump()).await;

    let logs = stop_all(daemons).await;
    assert!(logs.contains("minting locally"), "{logs}");
    assert_no_token_shown(&server, &logs, &bodies).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_renew_a_shared_token_with_one_mint_per_renewal() {
    let redis = Redis::start();
    // Four-second tokens: renewed from two seconds on (half their life).
    let server = AuthServer::start(&["--expires-in", "4"]);
    let config = config(&redis, &server, free_port(), "timeout = \"2s\"");
    let (_dir, daemons) = replicas(&config, 3).await;
    for daemon in &daemons {
        store_up(daemon).await;
    }
    let http = client();
    let mut bodies = String::new();
    // Traffic on every replica until the third mint. Minting per replica would reach three at
    // once; shared, each mint is a renewal of the one before, requested no earlier than two
    // seconds after it (a lower bound: a loaded machine only makes it later).
    let started = Instant::now();
    let mut round = 0;
    while server.count("mints").await < 3 {
        assert!(started.elapsed() < Duration::from_secs(60), "no third mint");
        for (status, body) in wave(&http, 6, |i| daemons[i % 3].url(&format!("/pay/renew/{round}"))).await {
            assert_eq!(status, 200, "{body}");
            bodies.push_str(&body);
        }
        round += 1;
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "three mints within {took:?}: not shared"
    );
    assert_eq!(server.count("mints").await, 3);
    assert_store_holds_nothing_in_clear(&server, &redis.dump()).await;
    let logs: String = daemons.iter().map(Daemon::logs).collect();
    assert_no_token_shown(&server, &logs, &bodies).await;
}
