//! Webhooks through the real binary: GitHub and Stripe signatures computed here verify and the
//! request reaches a real local target unchanged; tampered, unsigned, stale and replayed ones get
//! 401 and never reach it. The signing secrets never show up in responses or logs.

use std::time::{SystemTime, UNIX_EPOCH};

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
