//! Response shaping (`response.transform`, `response.headers`) against a real upstream.

use serde_json::{Value, json};

use crate::harness::{Recorded, TestProxy, Upstream, assert_no_secret, client, text};

const SECRET: &str = "sk_shape_SecretValue_42";
const PRODUCTS: &str = "[.[] | {id, name: .title, price, imageUrl: .images[0].url}]";

/// An upstream that serves a product list, or other bodies by path.
async fn shop() -> Upstream {
    Upstream::start(|request: Recorded| async move {
        let (status, content_type, body) = match request.target.as_str() {
            "/products" => (
                200,
                "application/json; charset=utf-8",
                json!([
                    {"id": 1, "title": "Mug", "price": 9.5, "stock": 12, "description": "A mug",
                     "images": [{"url": "https://cdn.example/mug-1.png"}, {"url": "https://cdn.example/mug-2.png"}]},
                    {"id": 2, "title": "Cap", "price": 15, "stock": 0, "description": "A cap",
                     "images": [{"url": "https://cdn.example/cap.png"}]}
                ])
                .to_string(),
            ),
            "/html" => (200, "text/html", "<html>not json</html>".to_string()),
            "/big" => (200, "application/json", format!("[{}]", vec!["1"; 10_000].join(","))),
            "/missing" => (404, "application/json", json!({"message": "Not Found"}).to_string()),
            _ => (200, "application/json", "{}".to_string()),
        };
        let mut response = text(status, body);
        let headers = response.headers_mut();
        headers.insert("content-type", content_type.parse().unwrap());
        headers.insert("x-powered-by", "shop 1.0".parse().unwrap());
        headers.insert("etag", "\"upstream-etag\"".parse().unwrap());
        response
    })
    .await
}

fn route(name: &str, path: &str, upstream: &Upstream, extra: &str) -> String {
    format!(
        "[routes.{name}]\npath = \"{path}\"\nupstream = \"{}{path}\"\nheaders = {{ Authorization = \"Bearer ${{shop}}\" }}\n{extra}\n",
        upstream.url()
    )
}

#[tokio::test]
async fn transform_reshapes_a_real_json_body_and_headers_are_set_and_removed() {
    let upstream = shop().await;
    let proxy = TestProxy::builder()
        .secret("shop", SECRET)
        .toml(&route(
            "products",
            "/products",
            &upstream,
            &format!(
                "response.transform = '{PRODUCTS}'\nresponse.headers = {{ set = {{ Cache-Control = \"max-age=60\" }}, remove = [\"X-Powered-By\"] }}"
            ),
        ))
        .start()
        .await;

    let response = client()
        .get(proxy.url("/products"))
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["cache-control"], "max-age=60");
    assert!(headers.get("x-powered-by").is_none());
    assert!(
        headers.get("etag").is_none(),
        "the upstream's ETag no longer describes the body"
    );
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(
        body,
        json!([
            {"id": 1, "name": "Mug", "price": 9.5, "imageUrl": "https://cdn.example/mug-1.png"},
            {"id": 2, "name": "Cap", "price": 15, "imageUrl": "https://cdn.example/cap.png"}
        ])
    );
    let seen = upstream.only();
    assert_eq!(seen.header("authorization"), Some(format!("Bearer {SECRET}").as_str()));
    assert_eq!(
        seen.header("accept-encoding"),
        Some("identity"),
        "a transformed route asks for an unencoded body"
    );
}

#[tokio::test]
async fn untransformable_bodies_get_502_or_pass_through() {
    let upstream = shop().await;
    let transform = "response.transform = '.[0]'\nresponse.transform-limit = \"1KiB\"";
    let pass = format!("{transform}\nresponse.on-transform-error = \"pass\"");
    let proxy = TestProxy::builder()
        .secret("shop", SECRET)
        .toml(&route("html", "/html", &upstream, transform))
        .toml(&route("big", "/big", &upstream, transform))
        .toml(&route("missing", "/missing", &upstream, transform))
        .toml(&format!(
            "[routes.bigpass]\npath = \"/pass/big\"\nupstream = \"{}/big\"\nheaders = {{ Authorization = \"Bearer ${{shop}}\" }}\n{pass}\n",
            upstream.url()
        ))
        .toml(&format!(
            "[routes.htmlpass]\npath = \"/pass/html\"\nupstream = \"{}/html\"\n{pass}\n",
            upstream.url()
        ))
        .start()
        .await;

    for (path, reason) in [("/html", "not JSON"), ("/big", "larger than the transform limit")] {
        let response = client().get(proxy.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 502, "{path}");
        let body = response.text().await.unwrap();
        assert_no_secret(&body, &[SECRET], "transform error body");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], "transform_failed");
        assert!(body["error"].as_str().unwrap().contains(reason), "{body}");
    }

    // An upstream error keeps its own shape.
    let response = client().get(proxy.url("/missing")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        serde_json::from_str::<Value>(&response.text().await.unwrap()).unwrap(),
        json!({"message": "Not Found"})
    );

    // Pass-through: the whole body, byte for byte, including past the buffered prefix.
    let response = client().get(proxy.url("/pass/big")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert_eq!(body, format!("[{}]", vec!["1"; 10_000].join(",")));
    let response = client().get(proxy.url("/pass/html")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "<html>not json</html>");
}

#[test]
fn transform_errors_name_the_position_in_the_config() {
    let text = "[routes.a]\npath = \"/a\"\nupstream = \"https://x/\"\nresponse.transform = \".items | mapp(.id)\"\n";
    let error = secretproxy::config::Config::parse(text, "proxy.toml")
        .unwrap_err()
        .to_string();
    // Line 4; the program starts at column 23, `mapp` is its 10th character.
    assert!(
        error.starts_with("proxy.toml:4:32: routes.a.response.transform: jq: undefined filter `mapp`"),
        "{error}"
    );
    let text = "[routes.a]\npath = \"/a\"\nupstream = \"https://x/\"\nresponse.headers = { set = { X = \"${k}\" } }\n";
    let error = secretproxy::config::Config::parse(text, "proxy.toml")
        .unwrap_err()
        .to_string();
    assert!(error.contains("cannot hold a secret"), "{error}");
}
