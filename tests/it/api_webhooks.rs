//! Webhooks through the real binary: GitHub and Stripe signatures computed here, and Standard
//! Webhooks / Svix signatures computed independently by Python's `hmac` and `base64` the way the
//! reference libraries do, verify and the request reaches a real local target unchanged;
//! tampered, unsigned, stale and replayed ones get 401 and never reach it. The signing secrets
//! never show up in responses or logs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::harness::{Daemon, Upstream, assert_no_secret, client};

const GITHUB_SECRET: &str = "gh-webhook-SigningSecret-123";
const STRIPE_SECRET: &str = "whsec_StripeSigningSecret456";

fn hmac_hex(key: &str, parts: &[&[u8]]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes()).unwrap();
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn stripe_header(timestamp: u64, body: &str, secret: &str) -> String {
    let ts = timestamp.to_string();
    format!(
        "t={ts},v1={}",
        hmac_hex(secret, &[ts.as_bytes(), b".", body.as_bytes()])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_and_stripe_signatures_verify_and_bad_ones_never_reach_the_target() {
    let target = Upstream::echo().await;
    let config = format!(
        r#"[secrets.gh-hook]
env = "GH_HOOK_SECRET"
[secrets.stripe-hook]
env = "STRIPE_HOOK_SECRET"

[webhooks.github]
path = "/hooks/github"
verify = "github"
secret = "gh-hook"
target = "{t}/github"

[webhooks.stripe]
path = "/hooks/stripe"
verify = "stripe"
secret = "stripe-hook"
target = "{t}/stripe"
tolerance = "5m"
"#,
        t = target.url()
    );
    let daemon = tokio::task::spawn_blocking(move || {
        Daemon::start(
            &config,
            &[("GH_HOOK_SECRET", GITHUB_SECRET), ("STRIPE_HOOK_SECRET", STRIPE_SECRET)],
        )
    })
    .await
    .unwrap();
    let mut bodies = String::new();

    // GitHub: a valid signature reaches the target with body, headers and query unchanged.
    let payload = r#"{"action":"opened","number":7}"#;
    let signature = format!("sha256={}", hmac_hex(GITHUB_SECRET, &[payload.as_bytes()]));
    let response = client()
        .post(daemon.url("/hooks/github?source=test"))
        .header("content-type", "application/json")
        .header("x-github-event", "pull_request")
        .header("x-hub-signature-256", &signature)
        .body(payload)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    bodies.push_str(&response.text().await.unwrap());
    let seen = target.only();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/github?source=test");
    assert_eq!(seen.body, payload.as_bytes());
    assert_eq!(seen.header("x-hub-signature-256"), Some(signature.as_str()));
    assert_eq!(seen.header("x-github-event"), Some("pull_request"));
    assert_eq!(seen.header("content-type"), Some("application/json"));

    // Refusals: 401 (405 for GET), nothing reaches the target.
    let tampered = r#"{"action":"opened","number":8}"#;
    let stale = stripe_header(now() - 3600, payload, STRIPE_SECRET);
    let fresh = stripe_header(now(), payload, STRIPE_SECRET);
    let wrong_key = stripe_header(now(), payload, "whsec_not_the_secret");
    let refusals: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            client()
                .post(daemon.url("/hooks/github"))
                .header("x-hub-signature-256", &signature)
                .body(tampered),
            401,
            "does not match",
        ),
        (
            client().post(daemon.url("/hooks/github")).body(payload),
            401,
            "missing x-hub-signature-256",
        ),
        (
            client()
                .post(daemon.url("/hooks/github"))
                .header("x-hub-signature-256", "sha256=zz")
                .body(payload),
            401,
            "malformed",
        ),
        (
            client()
                .post(daemon.url("/hooks/stripe"))
                .header("stripe-signature", &stale)
                .body(payload),
            401,
            "outside the allowed tolerance",
        ),
        (
            client()
                .post(daemon.url("/hooks/stripe"))
                .header("stripe-signature", &wrong_key)
                .body(payload),
            401,
            "does not match",
        ),
        (
            client()
                .post(daemon.url("/hooks/stripe"))
                .header("stripe-signature", &fresh)
                .body(tampered),
            401,
            "does not match",
        ),
        (client().get(daemon.url("/hooks/github")), 405, "POST only"),
    ];
    for (request, status, reason) in refusals {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{reason}");
        let text = response.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap();
        assert!(
            body["error"].as_str().unwrap().contains(reason),
            "{reason:?} not in {body}"
        );
        bodies.push_str(&text);
    }
    assert_eq!(target.received().len(), 1, "a refused webhook reached the target");

    // Stripe: a fresh signature verifies once; the same request again is a replay.
    let send_fresh = || {
        client()
            .post(daemon.url("/hooks/stripe"))
            .header("content-type", "application/json")
            .header("stripe-signature", &fresh)
            .body(payload)
            .send()
    };
    let response = send_fresh().await.unwrap();
    assert_eq!(response.status(), 200);
    let received = target.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[1].target, "/stripe");
    assert_eq!(received[1].body, payload.as_bytes());
    assert_eq!(received[1].header("stripe-signature"), Some(fresh.as_str()));
    let replay = send_fresh().await.unwrap();
    assert_eq!(replay.status(), 401);
    bodies.push_str(&replay.text().await.unwrap());
    assert!(bodies.contains("already used"));
    assert_eq!(target.received().len(), 2, "the replay reached the target");

    let (status, logs) = tokio::task::spawn_blocking(move || daemon.terminate()).await.unwrap();
    assert!(status.success(), "{logs}");
    assert!(logs.contains("webhook signature refused"), "{logs}");
    assert!(logs.contains("\"route\":\"webhook:github\""), "{logs}");
    assert_no_secret(&logs, &[GITHUB_SECRET, STRIPE_SECRET], "daemon logs");
    assert_no_secret(&bodies, &[GITHUB_SECRET, STRIPE_SECRET], "webhook responses");
}

/// Key (`whsec_` prefix optional, then base64, padding optional) and signature as the Standard
/// Webhooks reference libraries compute them, in Python: an implementation independent of ours.
const PYTHON_SIGN: &str = r#"
import base64, hashlib, hmac, sys
secret, msg_id, ts, body = sys.argv[1:5]
if secret.startswith("whsec_"):
    secret = secret[len("whsec_"):]
key = base64.b64decode(secret + "==")
mac = hmac.new(key, f"{msg_id}.{ts}.{body}".encode(), hashlib.sha256).digest()
print("v1," + base64.b64encode(mac).decode())
"#;

fn python_sign(secret: &str, id: &str, ts: u64, body: &str) -> String {
    let output = std::process::Command::new("python3")
        .args(["-c", PYTHON_SIGN, secret, id, &ts.to_string(), body])
        .output()
        .expect("python3 runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// A Svix-style secret (base64 of 24 bytes) with and without `whsec_`.
const SVIX_KEY_B64: &str = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_webhooks_accept_svix_headers_and_unprefixed_secrets() {
    let target = Upstream::echo().await;
    let prefixed = format!("whsec_{SVIX_KEY_B64}");
    let config = format!(
        r#"[secrets.prefixed]
env = "PREFIXED_SECRET"
[secrets.bare]
env = "BARE_SECRET"

[webhooks.prefixed]
path = "/hooks/clerk"
verify = "standard-webhooks"
secret = "prefixed"
target = "{t}/clerk"

[webhooks.bare]
path = "/hooks/resend"
verify = "standard-webhooks"
secret = "bare"
target = "{t}/resend"
"#,
        t = target.url()
    );
    let envs = [
        ("PREFIXED_SECRET", prefixed.clone()),
        ("BARE_SECRET", SVIX_KEY_B64.to_string()),
    ];
    let daemon = tokio::task::spawn_blocking(move || {
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Daemon::start(&config, &envs)
    })
    .await
    .unwrap();
    let mut bodies = String::new();
    let payload = r#"{"type":"user.created","data":{"id":"user_1"}}"#;

    // Both header spellings, both secret spellings (each hook's secret as configured), one
    // message id each so no request is a replay of another.
    let mut n = 0;
    for (hook, secret) in [("/hooks/clerk", prefixed.as_str()), ("/hooks/resend", SVIX_KEY_B64)] {
        for prefix in ["svix", "webhook"] {
            n += 1;
            let id = format!("msg_{n}");
            let ts = now();
            let signature = python_sign(secret, &id, ts, payload);
            let response = client()
                .post(daemon.url(hook))
                .header("content-type", "application/json")
                .header(format!("{prefix}-id"), &id)
                .header(format!("{prefix}-timestamp"), ts.to_string())
                .header(format!("{prefix}-signature"), format!("v1,bm90IGl0 {signature}"))
                .body(payload)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let text = response.text().await.unwrap();
            assert_eq!(status, 200, "{hook} with {prefix}-*: {text}");
            bodies.push_str(&text);
            let received = target.received();
            let seen = received.last().unwrap();
            assert_eq!(seen.body, payload.as_bytes());
            assert_eq!(seen.header(&format!("{prefix}-id")), Some(id.as_str()));
        }
    }
    assert_eq!(target.received().len(), 4);

    // Refusals: tampered body, a signature made with the secret's text as raw key bytes (not
    // what the reference does), a stale timestamp, mixed-up ids; nothing reaches the target.
    let raw_key_signature = {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SVIX_KEY_B64.as_bytes()).unwrap();
        let ts = now();
        mac.update(format!("msg_raw.{ts}.{payload}").as_bytes());
        use base64::Engine;
        (
            ts,
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
            ),
        )
    };
    let ts = now();
    let good = python_sign(SVIX_KEY_B64, "msg_x", ts, payload);
    let stale_ts = now() - 3600;
    let stale = python_sign(SVIX_KEY_B64, "msg_s", stale_ts, payload);
    let cases: Vec<(&str, String, u64, String, &str, &str)> = vec![
        (
            "msg_x",
            good.clone(),
            ts,
            r#"{"type":"user.deleted"}"#.to_string(),
            "svix",
            "does not match",
        ),
        ("msg_y", good.clone(), ts, payload.to_string(), "svix", "does not match"),
        (
            "msg_raw",
            raw_key_signature.1,
            raw_key_signature.0,
            payload.to_string(),
            "webhook",
            "does not match",
        ),
        (
            "msg_s",
            stale,
            stale_ts,
            payload.to_string(),
            "svix",
            "outside the allowed tolerance",
        ),
    ];
    for (id, signature, ts, body, prefix, reason) in cases {
        let response = client()
            .post(daemon.url("/hooks/resend"))
            .header(format!("{prefix}-id"), id)
            .header(format!("{prefix}-timestamp"), ts.to_string())
            .header(format!("{prefix}-signature"), signature)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{id}");
        let text = response.text().await.unwrap();
        assert!(text.contains(reason), "{id}: {reason:?} not in {text}");
        bodies.push_str(&text);
    }
    assert_eq!(target.received().len(), 4, "a refused webhook reached the target");

    let (status, logs) = tokio::task::spawn_blocking(move || daemon.terminate()).await.unwrap();
    assert!(status.success(), "{logs}");
    assert_no_secret(&logs, &[&prefixed, SVIX_KEY_B64], "daemon logs");
    assert_no_secret(&bodies, &[&prefixed, SVIX_KEY_B64], "webhook responses");
}

#[test]
fn webhook_config_errors_name_the_key() {
    let parse = |text: &str| {
        secretproxy::config::Config::parse(text, "proxy.toml")
            .unwrap_err()
            .to_string()
    };
    let base = "[secrets.s]\nenv = \"S\"\n[webhooks.w]\npath = \"/hooks/w\"\nsecret = \"s\"\n";
    let error = parse(&format!(
        "{base}verify = \"github\"\ntarget = \"http://example.com/hook\"\n"
    ));
    assert!(
        error.starts_with("proxy.toml:7:10: webhooks.w.target: the target must be an http(s) URL on this machine"),
        "{error}"
    );
    let error = parse(&format!(
        "{base}verify = \"gitlab\"\ntarget = \"http://127.0.0.1:9/\"\n"
    ));
    assert!(
        error.contains("webhooks.w.verify: `gitlab` is not a known signature scheme"),
        "{error}"
    );
    let error = parse(&format!(
        "{base}verify = \"github\"\ntarget = \"http://127.0.0.1:9/\"\ntolerance = \"1m\"\n"
    ));
    assert!(error.contains("this scheme signs no timestamp"), "{error}");
    let error = parse(
        "[secrets.s]\nenv = \"S\"\n[routes.r]\npath = \"/hooks/w\"\nupstream = \"https://x/\"\n\
         [webhooks.w]\npath = \"/hooks/w\"\nsecret = \"s\"\nverify = \"github\"\ntarget = \"http://localhost:9/\"\n",
    );
    assert!(error.contains("webhooks.w.path: conflicts"), "{error}");
}

/// The access line tells the truth: a delivered webhook counts its body in `bytes_in`, and a
/// static file that was sent whole is `complete` (not `client_gone`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_count_webhook_bodies_and_complete_static_files() {
    let target = Upstream::echo().await;
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("index.html"), "<!doctype html><p>hello</p>").unwrap();
    let config = format!(
        "[server]\nstatic-dir = {:?}\n[secrets.gh-hook]\nenv = \"GH_HOOK_SECRET\"\n\
         [webhooks.github]\npath = \"/hooks/github\"\nverify = \"github\"\nsecret = \"gh-hook\"\ntarget = \"{}/github\"\n",
        site.path().display().to_string(),
        target.url()
    );
    let daemon = tokio::task::spawn_blocking(move || Daemon::start(&config, &[("GH_HOOK_SECRET", GITHUB_SECRET)]))
        .await
        .unwrap();
    let payload = r#"{"action":"opened","number":42}"#;
    let signature = format!("sha256={}", hmac_hex(GITHUB_SECRET, &[payload.as_bytes()]));
    let response = client()
        .post(daemon.url("/hooks/github"))
        .header("x-hub-signature-256", signature)
        .header("content-type", "application/json")
        .body(payload)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let page = client().get(daemon.url("/index.html")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("hello"));
    let logs = daemon.wait_for_log("\"target\":\"secretproxy::access\"", 2, Duration::from_secs(10));
    let access: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "secretproxy::access")
        .collect();
    let hook = access.iter().find(|v| v["path"] == "/hooks/github").unwrap();
    assert_eq!(hook["bytes_in"], payload.len(), "{hook}");
    assert_eq!(hook["route"], "webhook:github");
    let file = access.iter().find(|v| v["path"] == "/index.html").unwrap();
    assert_eq!(file["outcome"], "complete", "{file}");
    let (_, logs) = daemon.terminate();
    assert_no_secret(&logs, &[GITHUB_SECRET], "daemon logs");
}
