//! Request validation and rate limits: refusals never reach the real upstream.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{TestProxy, Upstream, assert_no_secret, client};

const SECRET: &str = "sk_validate_SecretValue_7";

#[tokio::test]
async fn each_validation_failure_is_refused_before_the_upstream() {
    let upstream = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let schema_path = dir.path().join("order.json");
    std::fs::write(
        &schema_path,
        json!({
            "type": "object",
            "required": ["email", "quantity"],
            "properties": {
                "email": {"type": "string", "pattern": "^[^@]+@[^@]+$"},
                "quantity": {"type": "integer", "minimum": 1}
            }
        })
        .to_string(),
    )
    .unwrap();
    let proxy = TestProxy::builder()
        .secret("api", SECRET)
        .toml(&format!(
            r#"[routes.search]
path = "/search"
upstream = "{u}/search"
query = {{ key = "${{api}}" }}
request.query = {{ q = {{ pattern = ".{{1,20}}" }}, page = {{ required = false, pattern = "[0-9]+" }} }}

[routes.orders]
path = "/orders"
methods = ["POST"]
upstream = "{u}/orders"
headers = {{ Authorization = "Bearer ${{api}}" }}
request.schema = {schema:?}
request.schema-limit = "1KiB"

[routes.upload]
path = "/upload"
methods = ["POST"]
upstream = "{u}/upload"
request.content-types = ["image/png", "multipart/form-data"]
"#,
            u = upstream.url(),
            schema = schema_path.display().to_string()
        ))
        .start()
        .await;

    let cases: Vec<(reqwest::RequestBuilder, u16, &str, &str)> = vec![
        (
            client().get(proxy.url("/search")),
            400,
            "invalid_request",
            "query parameter `q` is required",
        ),
        (
            client().get(proxy.url("/search?q=&page=2")),
            400,
            "invalid_request",
            "query parameter `q` must match `.{1,20}`",
        ),
        (
            client().get(proxy.url("/search?q=mugs&page=two")),
            400,
            "invalid_request",
            "query parameter `page` must match `[0-9]+`",
        ),
        (
            client()
                .post(proxy.url("/orders"))
                .header("content-type", "text/plain")
                .body("{}"),
            400,
            "invalid_request",
            "content type `text/plain` is not accepted",
        ),
        (
            client()
                .post(proxy.url("/orders"))
                .header("content-type", "application/json")
                .body("{not json"),
            400,
            "invalid_request",
            "",
        ),
        (
            client()
                .post(proxy.url("/orders"))
                .header("content-type", "application/json")
                .body(json!({"email": "nobody", "quantity": 0}).to_string()),
            422,
            "schema_violation",
            "/quantity",
        ),
        (
            client()
                .post(proxy.url("/orders"))
                .header("content-type", "application/json")
                .body(json!({"pad": "x".repeat(2048)}).to_string()),
            413,
            "body_too_large",
            "",
        ),
        (
            client()
                .post(proxy.url("/upload"))
                .header("content-type", "application/zip")
                .body("PK"),
            400,
            "invalid_request",
            "send one of image/png, multipart/form-data",
        ),
    ];
    for (request, status, code, reason) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status);
        let body = response.text().await.unwrap();
        assert_no_secret(&body, &[SECRET], "validation error body");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], code, "{body}");
        let reasons = body["reasons"].as_array().unwrap();
        assert!(
            reason.is_empty() || reasons.iter().any(|r| r.as_str().unwrap().contains(reason)),
            "{reason:?} not in {body}"
        );
        if status == 422 {
            assert_eq!(reasons.len(), 2, "both schema errors are reported: {body}");
        }
    }
    assert!(
        upstream.received().is_empty(),
        "a refused request reached the upstream: {:?}",
        upstream.received()
    );

    // Valid requests go through, the buffered body byte for byte.
    let order = r#"{"email": "me@example.com", "quantity": 2}"#;
    let response = client()
        .post(proxy.url("/orders"))
        .header("content-type", "application/json; charset=utf-8")
        .body(order)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = client().get(proxy.url("/search?q=mugs&page=2")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response = client()
        .post(proxy.url("/upload"))
        .header("content-type", "image/png")
        .body(vec![0x89u8, b'P', b'N', b'G'])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let received = upstream.received();
    assert_eq!(received.len(), 3);
    assert_eq!(received[0].body, order.as_bytes());
    assert_eq!(
        received[0].header("content-length"),
        Some(order.len().to_string().as_str())
    );
    assert!(received[1].target.starts_with("/search?q=mugs&page=2&key="));
    assert_eq!(&received[2].body[..], &[0x89u8, b'P', b'N', b'G']);
}

#[tokio::test]
async fn rate_limit_refuses_after_the_burst_and_recovers_after_the_period() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::builder()
        .secret("api", SECRET)
        .toml("[server]\nallowed-origins = [\"http://a.localhost\", \"http://b.localhost\"]")
        .toml(&format!(
            "[routes.limited]\npath = \"/limited\"\nupstream = \"{u}/limited\"\nauth = {{ bearer = \"api\" }}\nrate-limit = {{ requests = 1, per = \"1s\", burst = 2 }}\n\
             [routes.per-origin]\npath = \"/per-origin\"\nupstream = \"{u}/per-origin\"\nrate-limit = {{ requests = 1, per = \"1h\", key = \"origin\" }}\n\
             [routes.daily]\npath = \"/daily\"\nupstream = \"{u}/daily\"\nrate-limit = {{ requests = 100, per = \"1s\", daily = 2 }}\n",
            u = upstream.url()
        ))
        .start()
        .await;
    let get = |path: &'static str| client().get(proxy.url(path)).send();

    assert_eq!(get("/limited").await.unwrap().status(), 200);
    assert_eq!(get("/limited").await.unwrap().status(), 200);
    let limited = get("/limited").await.unwrap();
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body = limited.text().await.unwrap();
    assert_no_secret(&body, &[SECRET], "429 body");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["code"], "rate_limited");
    assert_eq!(
        upstream.received().len(),
        2,
        "the refused request never reached the upstream"
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        get("/limited").await.unwrap().status(),
        200,
        "one request per second recovers"
    );
    assert_eq!(upstream.received().len(), 3);

    // Per origin: each Origin has its own bucket.
    let from = |origin: &str| client().get(proxy.url("/per-origin")).header("Origin", origin).send();
    assert_eq!(from("http://a.localhost").await.unwrap().status(), 200);
    assert_eq!(from("http://a.localhost").await.unwrap().status(), 429);
    assert_eq!(from("http://b.localhost").await.unwrap().status(), 200);

    // The daily quota.
    assert_eq!(get("/daily").await.unwrap().status(), 200);
    assert_eq!(get("/daily").await.unwrap().status(), 200);
    let over = get("/daily").await.unwrap();
    assert_eq!(over.status(), 429);
    let retry_after: u64 = over.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry_after));
    assert_eq!(
        serde_json::from_str::<Value>(&over.text().await.unwrap()).unwrap()["code"],
        "daily_quota_exceeded"
    );
}
