//! mTLS to the upstream through the real binary: an rcgen CA issues the upstream's server
//! certificate and the client certificates; the upstream (tokio-rustls with rustls's
//! `WebPkiClientVerifier`) requires a client certificate from that CA. The route with the
//! certificate gets 200; a route to the same origin without one, or with a certificate from
//! another CA, gets the handshake refused: 502 `upstream_tls_refused`. Replacing the secret's
//! value takes effect without a restart (a new pool for the new certificate). The client key PEM
//! never reaches the logs or an answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;

use crate::harness::{Daemon, Upstream, assert_no_secret, client, text};

struct Pair {
    cert: String,
    key: String,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn issue(ca: &CertifiedIssuer<'static, KeyPair>, name: &str) -> Pair {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, ca)
        .unwrap();
    Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

async fn status_of(http: &reqwest::Client, url: String) -> (u16, String) {
    let response = http.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Polls `url` until it answers `want` (bounded): the secret cache re-reads files every 2 s.
async fn wait_for_status(http: &reqwest::Client, url: String, want: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = status_of(http, url.clone()).await;
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "still {status} (wanted {want}): {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_from_secrets_is_presented_and_required() {
    secretproxy::upstream::install_crypto_provider();
    let authority = ca("secretproxy test CA");
    let server = issue(&authority, "localhost");
    let good = issue(&authority, "shop-client");
    let rogue = issue(&ca("some other CA"), "rogue-client");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(authority.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .unwrap();
    let server_key = rustls::pki_types::PrivateKeyDer::from_pem_slice(server.key.as_bytes()).unwrap();
    let server_chain = vec![rustls::pki_types::CertificateDer::from_pem_slice(server.cert.as_bytes()).unwrap()];
    let tls = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(server_chain, server_key)
        .unwrap();
    let upstream = Upstream::start_tls(Arc::new(tls), |_| async { text(200, "hello, authenticated client") }).await;
    let port = upstream.addr.port();

    let files = tempfile::tempdir().unwrap();
    let path = |name: &str| files.path().join(name).display().to_string();
    std::fs::write(files.path().join("ca.pem"), authority.pem()).unwrap();
    std::fs::write(files.path().join("client.pem"), &good.cert).unwrap();
    std::fs::write(files.path().join("client.key"), &good.key).unwrap();
    std::fs::write(files.path().join("rogue.pem"), &rogue.cert).unwrap();
    std::fs::write(files.path().join("rogue.key"), &rogue.key).unwrap();
    let config = format!(
        r#"[secrets.bank-cert]
file = {cert:?}
[secrets.bank-key]
file = {key:?}
[secrets.rogue-cert]
file = {rogue_cert:?}
[secrets.rogue-key]
file = {rogue_key:?}

[routes.bank]
path = "/bank/{{*rest}}"
upstream = "https://localhost:{port}/{{rest}}"
ca-file = {ca:?}
client-cert = "bank-cert"
client-key = "bank-key"

[routes.anonymous]
path = "/anonymous/{{*rest}}"
upstream = "https://localhost:{port}/{{rest}}"
ca-file = {ca:?}

[routes.rogue]
path = "/rogue/{{*rest}}"
upstream = "https://localhost:{port}/{{rest}}"
ca-file = {ca:?}
client-cert = "rogue-cert"
client-key = "rogue-key"
"#,
        cert = path("client.pem"),
        key = path("client.key"),
        rogue_cert = path("rogue.pem"),
        rogue_key = path("rogue.key"),
        ca = path("ca.pem"),
    );
    let daemon = tokio::task::spawn_blocking(move || Daemon::start(&config, &[("RUST_LOG", "secretproxy=debug,info")]))
        .await
        .unwrap();
    let http = client();
    let mut bodies = String::new();

    // With the route's certificate: through, twice (the second on the route's pooled connection).
    for _ in 0..2 {
        let (status, body) = status_of(&http, daemon.url("/bank/accounts")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, "hello, authenticated client");
    }
    // Without a certificate, and with one the upstream does not trust: refused, clearly.
    for route in ["anonymous", "rogue"] {
        let (status, body) = status_of(&http, daemon.url(&format!("/{route}/accounts"))).await;
        assert_eq!(status, 502, "{route}: {body}");
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["code"], "upstream_tls_refused", "{route}: {body}");
        bodies.push_str(&body);
    }
    // The certificated route's pool was not used by the others: still only its requests got in,
    // on one connection.
    assert_eq!(upstream.received().len(), 2);

    // A reload with the same certificate keeps the route's pool: no new connection.
    let connections = upstream.connections.load(std::sync::atomic::Ordering::SeqCst);
    let mut config = std::fs::read_to_string(&daemon.config_path).unwrap();
    config.push_str("\n[routes.other]\npath = \"/other\"\nupstream = \"https://localhost:1/\"\n");
    std::fs::write(&daemon.config_path, config).unwrap();
    daemon.signal("HUP");
    daemon.wait_for_log("config reloaded", 1, Duration::from_secs(20));
    let (status, body) = status_of(&http, daemon.url("/bank/accounts")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        upstream.connections.load(std::sync::atomic::Ordering::SeqCst),
        connections,
        "the reload reconnected"
    );

    // A replaced secret value takes effect: the rogue pair in the bank's files is refused, and
    // the good pair back is accepted again.
    std::fs::write(files.path().join("client.pem"), &rogue.cert).unwrap();
    std::fs::write(files.path().join("client.key"), &rogue.key).unwrap();
    bodies.push_str(&wait_for_status(&http, daemon.url("/bank/accounts"), 502).await);
    std::fs::write(files.path().join("client.pem"), &good.cert).unwrap();
    std::fs::write(files.path().join("client.key"), &good.key).unwrap();
    wait_for_status(&http, daemon.url("/bank/accounts"), 200).await;

    let logs = daemon.logs();
    // The PEM body lines of both keys (any one of them would be a leak).
    let key_lines: Vec<&str> = good
        .key
        .lines()
        .chain(rogue.key.lines())
        .filter(|line| !line.starts_with("-----"))
        .collect();
    assert!(!key_lines.is_empty());
    assert_no_secret(&logs, &key_lines, "daemon logs");
    assert_no_secret(&bodies, &key_lines, "responses");
}
