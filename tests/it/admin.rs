//! `/_secretproxy/health` and `/_secretproxy/metrics`: content after real traffic, the metrics
//! text parsed as OpenMetrics/Prometheus exposition, the prefix never forwarded, and refusal of
//! non-loopback clients over a real veth link into a network namespace the test creates.

use std::process::Command;

use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};

use crate::harness::{Netns, TestProxy, Upstream, assert_no_secret, client};

const SECRET: &str = "sk_admin_Metrics_5150";

type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

/// The value of the sample of `family` whose labels are exactly `labels`.
fn sample(metrics: &Exposition, family: &str, labels: &[(&str, &str)]) -> Option<OpenMetricsValue> {
    let family = metrics.families.get(family)?;
    family
        .iter_samples()
        .find(|s| {
            let set = s.get_labelset().unwrap();
            set.iter().count() == labels.len() && labels.iter().all(|(k, v)| set.get_label_value(k) == Some(*v))
        })
        .map(|s| s.value.clone())
}

fn counter(metrics: &Exposition, family: &str, labels: &[(&str, &str)]) -> f64 {
    match sample(metrics, family, labels) {
        Some(OpenMetricsValue::Counter(c)) => c.value.as_f64(),
        other => panic!("{family}{labels:?} is not a counter: {other:?}"),
    }
}

#[tokio::test]
async fn health_and_metrics_report_the_traffic() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::builder()
        .secret("key", SECRET)
        .secret_toml("[secrets.gone]\nenv = \"SECRETPROXY_TEST_NEVER_SET\"")
        .toml(&format!(
            "[routes.ok]\npath = \"/ok/{{*rest}}\"\nmethods = [\"GET\"]\nupstream = \"{u}/{{rest}}\"\nauth = {{ bearer = \"key\" }}\n\
             [routes.gone]\npath = \"/gone\"\nupstream = \"{u}/gone\"\nauth = {{ bearer = \"gone\" }}\n",
            u = upstream.url()
        ))
        .start()
        .await;
    let http = client();
    for i in 0..3 {
        let response = http.get(proxy.url(&format!("/ok/{i}"))).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    let statuses = [
        http.get(proxy.url("/gone")).send().await.unwrap().status(),
        http.get(proxy.url("/nowhere")).send().await.unwrap().status(),
        http.post(proxy.url("/ok/x"))
            .body("12345")
            .send()
            .await
            .unwrap()
            .status(),
    ];
    assert_eq!(statuses.map(|s| s.as_u16()), [503, 404, 405]);

    let response = http.get(proxy.url("/_secretproxy/health")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let health_text = response.text().await.unwrap();
    let health: serde_json::Value = serde_json::from_str(&health_text).unwrap();
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["routes"], 2);
    assert_eq!(health["missing_secrets"], serde_json::json!(["gone"]));
    assert_eq!(health["config_generation"], 1);
    assert!(health["uptime_seconds"].as_u64().is_some(), "{health}");

    let response = http.get(proxy.url("/_secretproxy/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        response.headers()
    );
    let text = response.text().await.unwrap();
    // OpenMetrics is the format Prometheus asks for first (and what the Content-Type says).
    let metrics = openmetrics_parser::openmetrics::parse_openmetrics(&text)
        .unwrap_or_else(|e| panic!("not valid OpenMetrics: {e:?}\n{text}"));
    let requests = "secretproxy_requests";
    assert_eq!(
        counter(
            &metrics,
            requests,
            &[("route", "ok"), ("method", "GET"), ("status", "200")]
        ),
        3.0
    );
    assert_eq!(
        counter(
            &metrics,
            requests,
            &[("route", "gone"), ("method", "GET"), ("status", "503")]
        ),
        1.0
    );
    assert_eq!(
        counter(
            &metrics,
            requests,
            &[("route", "-"), ("method", "GET"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        counter(
            &metrics,
            requests,
            &[("route", "ok"), ("method", "POST"), ("status", "405")]
        ),
        1.0
    );
    // The health request counts too; the metrics request is the one in flight.
    assert_eq!(
        counter(
            &metrics,
            requests,
            &[("route", "-"), ("method", "GET"), ("status", "200")]
        ),
        1.0
    );
    match sample(&metrics, "secretproxy_requests_in_flight", &[]) {
        Some(OpenMetricsValue::Gauge(n)) => assert_eq!(n.as_f64(), 1.0),
        other => panic!("in-flight gauge: {other:?}"),
    }
    match sample(&metrics, "secretproxy_upstream_duration_seconds", &[("route", "ok")]) {
        Some(OpenMetricsValue::Histogram(h)) => {
            assert_eq!(h.count, Some(3));
            assert!(h.sum.unwrap().as_f64() > 0.0);
        }
        other => panic!("latency histogram: {other:?}"),
    }
    assert!(counter(&metrics, "secretproxy_response_body_bytes", &[("route", "ok")]) > 0.0);
    assert_eq!(
        counter(&metrics, "secretproxy_secret_lookup_failures", &[("secret", "gone")]),
        1.0
    );
    assert_eq!(counter(&metrics, "secretproxy_reloads", &[]), 0.0);
    assert_eq!(counter(&metrics, "secretproxy_reload_failures", &[]), 0.0);

    assert_eq!(upstream.received().len(), 3, "only the /ok requests reach the upstream");
    assert_no_secret(&health_text, &[SECRET], "health");
    assert_no_secret(&text, &[SECRET], "metrics");
    proxy.shutdown().await;
}

#[tokio::test]
async fn reserved_paths_are_never_forwarded() {
    let upstream = Upstream::echo().await;
    // A catch-all route would take any path, the reserved ones included, if they were routed.
    let proxy = TestProxy::builder()
        .secret("key", SECRET)
        .toml(&format!(
            "[routes.all]\npath = \"/{{*rest}}\"\nmethods = [\"GET\", \"HEAD\", \"POST\"]\nupstream = \"{}/{{rest}}\"\nauth = {{ bearer = \"key\" }}\n",
            upstream.url()
        ))
        .start()
        .await;
    let http = client();
    let cases = [
        ("GET", "/_secretproxy/health", 200),
        ("HEAD", "/_secretproxy/metrics", 200),
        ("GET", "/_secretproxy/other", 404),
        ("GET", "/_secretproxy", 404),
        ("GET", "/_secretproxyX/health", 404),
        ("POST", "/_secretproxy/health", 405),
    ];
    let mut bodies = String::new();
    for (method, path, status) in cases {
        let response = http
            .request(method.parse().unwrap(), proxy.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
        if status == 405 {
            assert_eq!(response.headers()["allow"], "GET, HEAD");
        }
        bodies += &response.text().await.unwrap();
    }
    assert!(upstream.received().is_empty(), "{:?}", upstream.received());
    // The catch-all still works for other paths.
    assert_eq!(http.get(proxy.url("/x")).send().await.unwrap().status(), 200);
    assert_eq!(upstream.only().target, "/x");
    assert_no_secret(&bodies, &[SECRET], "reserved-path bodies");
    proxy.shutdown().await;
}

/// Behind a front proxy (Caddy, nginx) every peer is loopback: a request carrying a forwarding
/// header is refused on the reserved paths, while ordinary routes still answer it.
#[tokio::test]
async fn reserved_paths_refuse_requests_forwarded_by_a_reverse_proxy() {
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::builder()
        .secret("key", SECRET)
        .toml(&format!(
            "[routes.all]\npath = \"/api/{{*rest}}\"\nupstream = \"{}/{{rest}}\"\nauth = {{ bearer = \"key\" }}\n",
            upstream.url()
        ))
        .start()
        .await;
    let http = client();
    for (name, value) in [
        ("x-forwarded-for", "203.0.113.9"),
        ("forwarded", "for=203.0.113.9;proto=https"),
        ("x-real-ip", "203.0.113.9"),
        ("via", "1.1 caddy"),
        ("x-forwarded-host", "site.example"),
    ] {
        for path in ["/_secretproxy/health", "/_secretproxy/metrics"] {
            let response = http.get(proxy.url(path)).header(name, value).send().await.unwrap();
            assert_eq!(response.status(), 403, "{name} {path}");
            let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
            assert_eq!(body["code"], "forbidden");
            assert!(body["error"].as_str().unwrap().contains("reverse proxy"), "{body}");
        }
        let routed = http.get(proxy.url("/api/x")).header(name, value).send().await.unwrap();
        assert_eq!(routed.status(), 200, "{name}: ordinary routes still answer");
    }
    assert_eq!(
        http.get(proxy.url("/_secretproxy/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    proxy.shutdown().await;
}

/// The daemon runs inside the namespace listening on all of its addresses. A loopback client
/// (curl, inside the namespace) gets health and metrics; a client coming over the veth link
/// (this test process, peer address 10.213.x.1) is refused on both, while the same client gets
/// ordinary proxy answers on other paths — so the refusal is about the peer, not the link.
#[tokio::test]
async fn reserved_paths_refuse_non_loopback_clients() {
    let ns = Netns::create("sp-test", 213);
    let dir = tempfile::tempdir().unwrap();
    let secret_path = dir.path().join("key");
    std::fs::write(&secret_path, SECRET).unwrap();
    // Listening beyond loopback needs `allow-remote` and a client token (issue 3's rule).
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, CLIENT_TOKEN).unwrap();
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nallow-remote = true\nclient-token = \"${{token}}\"\nallowed-hosts = [\"{inner}\"]\n\
             [secrets.token]\nfile = {:?}\n\
             [secrets.key]\nfile = {:?}\n[routes.a]\npath = \"/a\"\nupstream = \"http://127.0.0.1:9/a\"\nauth = {{ bearer = \"key\" }}\n",
            token_path.display().to_string(),
            secret_path.display().to_string(),
            inner = ns.inner,
        ),
    )
    .unwrap();
    let log_path = dir.path().join("stderr.log");
    let (mut daemon, port) = ns.serve(&config, &log_path);

    let mut outputs = String::new();
    for path in ["/_secretproxy/health", "/_secretproxy/metrics"] {
        // Loopback, inside the namespace: answered.
        let local = ns
            .command("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
            .arg(format!("X-Secretproxy-Token: {CLIENT_TOKEN}"))
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&local.stdout), "200", "{path} from loopback");

        // Over the veth link: refused.
        let response = client()
            .get(format!("http://{}:{port}{path}", ns.inner))
            .header("X-Secretproxy-Token", CLIENT_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{path} from {}", ns.host);
        let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(body["code"], "forbidden");
        outputs += &body.to_string();
    }
    // The same remote client reaches the proxy itself (here: a 502 from the dead upstream).
    let routed = client()
        .get(format!("http://{}:{port}/a", ns.inner))
        .header("X-Secretproxy-Token", CLIENT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(routed.status(), 502);
    outputs += &routed.text().await.unwrap();

    Command::new("kill").arg(daemon.id().to_string()).status().unwrap();
    assert!(daemon.wait().unwrap().success());
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert_no_secret(&logs, &[SECRET, CLIENT_TOKEN], "daemon logs");
    assert_no_secret(&outputs, &[SECRET, CLIENT_TOKEN], "responses");
}

const CLIENT_TOKEN: &str = "client-token-for-the-netns-test";
