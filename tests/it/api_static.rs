//! The static site next to the routes: content types, validators and 304s, the SPA fallback,
//! no listings, and no way out of the directory (raw requests, so no client normalises `..`).

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{TestProxy, Upstream, assert_no_secret, client};

const SECRET: &str = "sk_static_SecretValue_5";
const OUTSIDE: &str = "TOP-SECRET-FILE-CONTENT";

/// A site directory next to a file that must never be served.
fn site(root: &Path) -> std::path::PathBuf {
    let dist = root.join("dist");
    std::fs::create_dir_all(dist.join("css")).unwrap();
    std::fs::create_dir_all(dist.join("docs")).unwrap();
    std::fs::create_dir_all(dist.join("empty")).unwrap();
    std::fs::create_dir_all(root.join("outside")).unwrap();
    std::fs::write(dist.join("index.html"), "<!doctype html><title>app</title>").unwrap();
    std::fs::write(dist.join("app.js"), "console.log('app')").unwrap();
    std::fs::write(dist.join("css/site.css"), "body{}").unwrap();
    std::fs::write(dist.join("docs/index.html"), "<h1>docs</h1>").unwrap();
    std::fs::write(dist.join(".env"), OUTSIDE).unwrap();
    std::fs::write(dist.join("empty/.keep"), "").unwrap();
    std::fs::write(root.join("outside/secret.txt"), OUTSIDE).unwrap();
    std::os::unix::fs::symlink(root.join("outside/secret.txt"), dist.join("escape.txt")).unwrap();
    dist
}

/// Sends `GET target` byte for byte and returns the status and the whole response.
async fn raw_get(addr: std::net::SocketAddr, target: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn serves_the_site_with_validators_spa_fallback_and_no_escape() {
    let root = tempfile::tempdir().unwrap();
    let dist = site(root.path());
    let upstream = Upstream::echo().await;
    let proxy = TestProxy::builder()
        .secret("api", SECRET)
        .toml(&format!(
            "[routes.api]\npath = \"/api/{{*rest}}\"\nupstream = \"{}/{{rest}}\"\nauth = {{ bearer = \"api\" }}\n\
             [server]\nstatic-dir = {:?}\nspa-fallback = true\n",
            upstream.url(),
            dist.display().to_string()
        ))
        .start()
        .await;
    let mut seen = String::new();

    // Routes win over files.
    let response = client().get(proxy.url("/api/user")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(upstream.only().target, "/user");

    let index = client().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(index.status(), 200);
    let headers = index.headers().clone();
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let etag = headers["etag"].to_str().unwrap().to_string();
    let modified = headers["last-modified"].to_str().unwrap().to_string();
    assert_eq!(index.text().await.unwrap(), "<!doctype html><title>app</title>");

    for (path, kind) in [("/app.js", "javascript"), ("/css/site.css", "text/css")] {
        let response = client().get(proxy.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(
            response.headers()["content-type"].to_str().unwrap().contains(kind),
            "{path}"
        );
    }

    // Conditional requests.
    let response = client()
        .get(proxy.url("/"))
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 304);
    assert_eq!(response.headers()["etag"].to_str().unwrap(), etag);
    let response = client()
        .get(proxy.url("/"))
        .header("If-Modified-Since", &modified)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 304);
    let response = client()
        .get(proxy.url("/"))
        .header("If-None-Match", "\"other\"")
        .header("If-Modified-Since", &modified)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "If-None-Match wins over If-Modified-Since");

    // SPA fallback for navigations only.
    let response = client()
        .get(proxy.url("/dashboard/settings"))
        .header("Accept", "text/html,application/xhtml+xml")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "<!doctype html><title>app</title>");
    let response = client()
        .get(proxy.url("/missing.js"))
        .header("Accept", "*/*")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    // Directories: index.html or a redirect to the slash form, never a listing.
    let response = client().get(proxy.url("/docs")).send().await.unwrap();
    assert_eq!(response.status(), 301);
    assert_eq!(response.headers()["location"], "/docs/");
    assert_eq!(
        client()
            .get(proxy.url("/docs/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "<h1>docs</h1>"
    );
    let response = client().get(proxy.url("/empty/")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert!(!response.text().await.unwrap().contains(".keep"));

    // Dot files and symlinks out of the directory are not served.
    for path in ["/.env", "/escape.txt", "/%2eenv"] {
        let (status, text) = raw_get(proxy.addr, path).await;
        assert_eq!(status, 404, "{path}: {text}");
        seen.push_str(&text);
    }

    // `..` tricks are refused before the file system is asked.
    for path in [
        "/../outside/secret.txt",
        "/%2e%2e/outside/secret.txt",
        "/%2E%2e/%2e%2e/outside/secret.txt",
        "/css/..%2f..%2foutside/secret.txt",
        "/css/%2e%2e%2f%2e%2e%2foutside%2fsecret.txt",
        "/..\\outside\\secret.txt",
        "/%2e%2e%5coutside%5csecret.txt",
        "/css/%00/../../outside/secret.txt",
    ] {
        let (status, text) = raw_get(proxy.addr, path).await;
        assert!(status == 400 || status == 404, "{path}: {text}");
        seen.push_str(&text);
    }
    assert!(!seen.contains(OUTSIDE), "a file outside the site was served:\n{seen}");

    // Other methods on non-route paths are still "no route".
    let response = client().post(proxy.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body = response.text().await.unwrap();
    assert!(body.contains("no_route"));
    seen.push_str(&body);
    assert_no_secret(&seen, &[SECRET], "static responses");
    assert_eq!(upstream.received().len(), 1, "static requests never reach the upstream");
}

#[tokio::test]
async fn without_spa_fallback_unknown_paths_are_404() {
    let root = tempfile::tempdir().unwrap();
    let dist = site(root.path());
    let proxy = TestProxy::builder()
        .toml(&format!("[server]\nstatic-dir = {:?}\n", dist.display().to_string()))
        .start()
        .await;
    let response = client()
        .get(proxy.url("/dashboard"))
        .header("Accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(client().get(proxy.url("/")).send().await.unwrap().status(), 200);
}

#[test]
fn static_dir_must_exist() {
    let error = secretproxy::config::Config::parse("[server]\nstatic-dir = \"/no/such/dir\"\n", "proxy.toml")
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("proxy.toml:2:14: server.static-dir: `/no/such/dir` is not a directory"),
        "{error}"
    );
    let error = secretproxy::config::Config::parse("[server]\nspa-fallback = true\n", "proxy.toml")
        .unwrap_err()
        .to_string();
    assert!(error.contains("server.spa-fallback: needs `static-dir`"), "{error}");
}
