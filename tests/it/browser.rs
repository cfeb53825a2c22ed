//! A real browser against the real daemon: Debian's Chromium, headless, driven by playwright-core
//! (tests/browser/run.mjs). A page from an allowed origin fetches a route and shows the answer;
//! the same kind of page from a disallowed origin fails, and its `<img>` GET and cross-site form
//! POST reach no upstream. Nothing the browser received holds the secret.
//!
//! Needs `node`, `/usr/bin/chromium` and `tests/browser/node_modules`: scripts/test installs them.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::harness::{Daemon, Recorded, Upstream, assert_no_secret, text};

const SECRET: &str = "sk_browser_NeverInThePage_5150";

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Fails (never skips) with a pointer to scripts/test when the browser tooling is missing.
fn require_browser_tooling() {
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let chromium = std::path::Path::new("/usr/bin/chromium").exists();
    let playwright = browser_dir().join("node_modules/playwright-core").is_dir();
    assert!(
        node && chromium && playwright,
        "the browser test needs node ({node}), /usr/bin/chromium ({chromium}) and tests/browser/node_modules ({playwright}): \
         run scripts/test, which installs chromium and nodejs with apt and runs `npm ci` in tests/browser"
    );
}

/// A static page server on 127.0.0.1:0 answering every path with the current `html`.
async fn page_server(html: Arc<Mutex<String>>) -> Upstream {
    Upstream::start(move |_: Recorded| {
        let html = html.lock().unwrap().clone();
        async move {
            let mut response = text(200, html);
            response
                .headers_mut()
                .insert("content-type", "text/html; charset=utf-8".parse().unwrap());
            response
        }
    })
    .await
}

fn allowed_page(proxy: &str) -> String {
    format!(
        r#"<!doctype html><html><head><title>allowed</title></head><body><pre id="out">loading</pre>
<script>
fetch("{proxy}/api/hello?from=page", {{ headers: {{ "X-Trace": "browser" }} }})
  .then(async (r) => {{
    const text = await r.text();
    document.getElementById("out").textContent = text;
    window.__result = {{ status: r.status, text }};
  }})
  .catch((e) => {{ window.__result = {{ error: String(e) }}; }});
</script></body></html>"#
    )
}

fn disallowed_page(proxy: &str) -> String {
    format!(
        r#"<!doctype html><html><head><title>disallowed</title></head><body>
<iframe name="sink"></iframe>
<form id="f" method="POST" action="{proxy}/api/evil-form" target="sink"><input name="amount" value="100"></form>
<script>
const result = {{}};
let submitted = false;
const done = () => {{ if ("fetch" in result && "img" in result && "form" in result) window.__result = result; }};
fetch("{proxy}/api/evil-fetch", {{ method: "POST", body: "amount=100" }})
  .then((r) => {{ result.fetch = "status " + r.status; done(); }}, (e) => {{ result.fetch = "error: " + e; done(); }});
const img = new Image();
img.onload = () => {{ result.img = "loaded"; done(); }};
img.onerror = () => {{ result.img = "error"; done(); }};
img.src = "{proxy}/api/evil-img.png";
document.querySelector("iframe").onload = () => {{ if (submitted) {{ result.form = "submitted"; done(); }} }};
document.getElementById("f").submit();
submitted = true;
</script></body></html>"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_allowed_page_works_and_disallowed_page_reaches_no_upstream() {
    require_browser_tooling();
    // A hostile upstream that echoes the key it was given: the page must still never see it.
    let upstream = Upstream::start(|request: Recorded| async move {
        let body = serde_json::json!({
            "greeting": "hello from upstream",
            "echo": request.header("authorization").unwrap_or(""),
        });
        let mut response = text(200, body.to_string());
        response
            .headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        response
    })
    .await;

    // The page servers start first (the daemon's config names the allowed origin); their pages
    // are filled in once the daemon's address is known.
    let allowed_html = Arc::new(Mutex::new(String::new()));
    let disallowed_html = Arc::new(Mutex::new(String::new()));
    let allowed = page_server(allowed_html.clone()).await;
    let disallowed = page_server(disallowed_html.clone()).await;
    let allowed_origin = format!("http://localhost:{}", allowed.addr.port());
    let config = format!(
        "[secrets.k]\nenv = \"BROWSER_TEST_KEY\"\n[server]\nallowed-origins = [\"{allowed_origin}\"]\n\
         [routes.api]\npath = \"/api/{{*rest}}\"\nmethods = [\"GET\", \"POST\"]\nupstream = \"{}/v1/{{rest}}\"\nauth = {{ bearer = \"k\" }}\n",
        upstream.url()
    );
    let daemon = Daemon::start(&config, &[("BROWSER_TEST_KEY", SECRET)]);
    let proxy = format!("http://127.0.0.1:{}", daemon.addr.port());

    *allowed_html.lock().unwrap() = allowed_page(&proxy);
    *disallowed_html.lock().unwrap() = disallowed_page(&proxy);
    let allowed_url = format!("{allowed_origin}/index.html");
    let disallowed_url = format!("http://127.0.0.1:{}/index.html", disallowed.addr.port());

    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("run.mjs")
            .current_dir(browser_dir())
            .env("SP_ALLOWED_PAGE", &allowed_url)
            .env("SP_DISALLOWED_PAGE", &disallowed_url)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "run.mjs failed:\n{stderr}\n{stdout}");
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));

    // Nothing the browser got (HTML, script, network responses with headers) holds the secret.
    assert_no_secret(&stdout, &[SECRET], "what the browser received");

    let shown = &report["allowed"]["result"];
    assert_eq!(shown["status"], 200, "{report:#}");
    let answer = report["allowed"]["responses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["url"].as_str().unwrap().contains("/api/hello") && r["status"] == 200)
        .expect("the fetch response was recorded");
    assert_eq!(
        answer["headers"]["access-control-allow-origin"],
        allowed_origin.as_str()
    );
    let text = shown["text"].as_str().unwrap();
    assert!(text.contains("hello from upstream"), "{text}");
    assert!(text.contains("Bearer [REDACTED]"), "{text}");
    assert!(
        report["allowed"]["html"]
            .as_str()
            .unwrap()
            .contains("hello from upstream")
    );

    let refused = &report["disallowed"]["result"];
    assert!(refused["fetch"].as_str().unwrap().starts_with("error"), "{report:#}");
    assert_eq!(refused["img"], "error");
    assert_eq!(refused["form"], "submitted");
    assert!(!disallowed.received().is_empty() && !allowed.received().is_empty());

    // The upstream saw exactly the allowed page's request, with the key.
    let received = upstream.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].target, "/v1/hello?from=page");
    assert_eq!(
        received[0].header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );

    // The disallowed page's requests did reach the proxy, and were refused there.
    let (_, logs) = daemon.terminate();
    let access: Vec<Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["path"].is_string())
        .collect();
    let status_of = |method: &str, path: &str| {
        access
            .iter()
            .find(|line| line["method"] == method && line["path"] == path)
            .map(|line| line["status"].as_u64().unwrap())
    };
    assert_eq!(status_of("OPTIONS", "/api/hello"), Some(204), "{logs}");
    assert_eq!(status_of("GET", "/api/hello"), Some(200), "{logs}");
    assert_eq!(status_of("POST", "/api/evil-fetch"), Some(403), "{logs}");
    assert_eq!(status_of("GET", "/api/evil-img.png"), Some(403), "{logs}");
    assert_eq!(status_of("POST", "/api/evil-form"), Some(403), "{logs}");
    assert_no_secret(&logs, &[SECRET], "daemon logs");
}
