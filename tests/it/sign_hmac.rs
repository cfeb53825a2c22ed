//! HMAC request signing through the real binary, one route per supported scheme, each checked by
//! the upstream (tests/sign/server.py) with Python's `hmac`: Binance (query signature), Coinbase
//! Exchange (base64 key and signature, headers), OKX (RFC 3339 timestamps) and a SHA-512 B2B
//! scheme over a body hash. A route with the wrong key is refused by the upstream (the check is
//! real); a hashing route refuses a chunked body. No key or signature reaches logs or answers.

use base64::Engine;

use crate::harness::{assert_no_secret, client};
use crate::sign_sigv4::{SignServer, json, start_daemon};

const API_KEY: &str = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A";
const SECRET: &str = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j";
const PASSPHRASE: &str = "pass-phrase-for-tests";

fn config(server: &SignServer) -> String {
    format!(
        r#"[secrets.ex-key]
env = "EX_KEY"
[secrets.ex-secret]
env = "EX_SECRET"
[secrets.ex-secret-b64]
env = "EX_SECRET_B64"
[secrets.ex-pass]
env = "EX_PASS"
[secrets.wrong]
env = "EX_WRONG"

[routes.binance]
path = "/binance/{{*rest}}"
upstream = "{base}/binance/{{rest}}"
methods = ["GET", "POST"]
headers = {{ X-MBX-APIKEY = "${{ex-key}}" }}
query = {{ recvWindow = "5000" }}
auth = {{ hmac = {{ secret = "ex-secret", message = "{{query}}{{body}}", signature-query = "signature", timestamp = "unix-ms", timestamp-query = "timestamp" }} }}

[routes.coinbase]
path = "/coinbase/{{*rest}}"
upstream = "{base}/coinbase/{{rest}}"
methods = ["GET", "POST"]
headers = {{ CB-ACCESS-KEY = "${{ex-key}}", CB-ACCESS-PASSPHRASE = "${{ex-pass}}" }}
auth = {{ hmac = {{ secret = "ex-secret-b64", secret-encoding = "base64", encoding = "base64", message = "{{timestamp}}{{method}}{{target}}{{body}}", signature-header = "CB-ACCESS-SIGN", timestamp-header = "CB-ACCESS-TIMESTAMP" }} }}

[routes.okx]
path = "/okx/{{*rest}}"
upstream = "{base}/okx/{{rest}}"
methods = ["GET", "POST"]
headers = {{ OK-ACCESS-KEY = "${{ex-key}}", OK-ACCESS-PASSPHRASE = "${{ex-pass}}" }}
auth = {{ hmac = {{ secret = "ex-secret", encoding = "base64", message = "{{timestamp}}{{method}}{{target}}{{body}}", signature-header = "OK-ACCESS-SIGN", timestamp = "rfc3339", timestamp-header = "OK-ACCESS-TIMESTAMP" }} }}

[routes.b2b]
path = "/b2b/{{*rest}}"
upstream = "{base}/b2b/{{rest}}"
methods = ["POST"]
max-body = 2048
auth = {{ hmac = {{ secret = "ex-secret", algorithm = "sha512", message = "{{method}}\n{{path}}\n{{timestamp}}\n{{body-sha256}}", signature-header = "X-Signature", signature-prefix = "v1=", timestamp = "unix-ms", timestamp-header = "X-Timestamp" }} }}

[routes.wrong]
path = "/wrong/{{*rest}}"
upstream = "{base}/binance/{{rest}}"
headers = {{ X-MBX-APIKEY = "${{ex-key}}" }}
auth = {{ hmac = {{ secret = "wrong", message = "{{query}}{{body}}", signature-query = "signature", timestamp = "unix-ms", timestamp-query = "timestamp" }} }}
"#,
        base = server.url(""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_schemes_verified_by_the_upstream() {
    let secret_b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
    let server = SignServer::start(&[
        ("HMAC_KEY", API_KEY),
        ("HMAC_SECRET", SECRET),
        ("HMAC_PASSPHRASE", PASSPHRASE),
    ]);
    let daemon = start_daemon(
        config(&server),
        vec![
            ("EX_KEY", API_KEY.to_string()),
            ("EX_SECRET", SECRET.to_string()),
            ("EX_SECRET_B64", secret_b64.clone()),
            ("EX_PASS", PASSPHRASE.to_string()),
            ("EX_WRONG", "a-key-the-exchange-never-issued".to_string()),
        ],
    )
    .await;
    // Coinbase's key is the base64 text; the upstream decodes it itself.
    let coinbase = SignServer::start(&[
        ("HMAC_KEY", API_KEY),
        ("HMAC_SECRET", &secret_b64),
        ("HMAC_PASSPHRASE", PASSPHRASE),
    ]);
    let coinbase_daemon = start_daemon(
        config(&coinbase),
        vec![
            ("EX_KEY", API_KEY.to_string()),
            ("EX_SECRET", SECRET.to_string()),
            ("EX_SECRET_B64", secret_b64.clone()),
            ("EX_PASS", PASSPHRASE.to_string()),
            ("EX_WRONG", "x".to_string()),
        ],
    )
    .await;
    let http = client();
    let mut bodies = String::new();
    let mut signatures = Vec::new();

    let order = "symbol=LTCBTC&side=BUY&type=LIMIT&quantity=1&price=0.1";
    let cases = [
        (&daemon, "GET", "/binance/api/v3/account?omitZeroBalances=true", ""),
        (&daemon, "POST", "/binance/api/v3/order?test=1", order),
        (&coinbase_daemon, "GET", "/coinbase/orders?status=open&limit=2", ""),
        (
            &coinbase_daemon,
            "POST",
            "/coinbase/orders",
            r#"{"size":"0.01","side":"buy"}"#,
        ),
        (&daemon, "GET", "/okx/api/v5/account/balance?ccy=BTC", ""),
        (
            &daemon,
            "POST",
            "/okx/api/v5/trade/order",
            r#"{"instId":"BTC-USDT","sz":"2"}"#,
        ),
        (&daemon, "POST", "/b2b/v2/invoices", r#"{"amount":12}"#),
    ];
    for (proxy, method, path, body) in cases {
        let request = match method {
            "GET" => http.get(proxy.url(path)),
            _ => http.post(proxy.url(path)).body(body.to_string()),
        };
        let (status, answer, text) = json(request.send().await.unwrap()).await;
        assert_eq!(status, 200, "{method} {path}: {text}");
        bodies.push_str(&text);
        // The signature travelled in the query for Binance: it is not to be logged.
        if let Some(signature) = answer["target"].as_str().and_then(|t| t.split("&signature=").nth(1)) {
            signatures.push(signature.to_string());
        }
    }
    assert_eq!(signatures.len(), 2);

    // The wrong key is refused by the upstream's own check.
    let (status, answer, text) = json(http.get(daemon.url("/wrong/api/v3/account")).send().await.unwrap()).await;
    assert_eq!(status, 403, "{text}");
    assert_eq!(answer["error"], "signature mismatch");

    // A scheme that hashes the body cannot take a chunked one.
    let stream = futures_util::stream::iter((0..3).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{}"))));
    let response = http
        .post(daemon.url("/b2b/v2/invoices"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 411);
    let response = http
        .post(daemon.url("/b2b/v2/invoices"))
        .body(vec![b'1'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);

    let mut secrets: Vec<&str> = vec![SECRET, &secret_b64, PASSPHRASE];
    secrets.extend(signatures.iter().map(String::as_str));
    // The debug log shows the Binance query with its signature redacted.
    assert!(daemon.logs().contains("&signature=[REDACTED]"), "{}", daemon.logs());
    for proxy in [&daemon, &coinbase_daemon] {
        assert_no_secret(&proxy.logs(), &secrets, "daemon logs");
    }
    assert_no_secret(&bodies, &[SECRET, &secret_b64, PASSPHRASE], "responses");
}
