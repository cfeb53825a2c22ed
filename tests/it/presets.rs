//! `route add NAME --preset PRESET`, per provider: the written route has the provider's path,
//! upstream and methods, and — served by the built binary, with the upstream pointed at a real
//! local server standing in for the provider — injects the key exactly where that provider
//! expects it. The expectations are spelled out here from the providers' documentation, not
//! read from the preset table.

use crate::cli::{run, stderr, stdout};
use crate::harness::{Daemon, Upstream, assert_no_secret, client};

/// How a provider expects its key: (preset, upstream origin, methods, header or query name,
/// value prefix, extra header the provider requires, a path to call).
struct Expected {
    preset: &'static str,
    origin: &'static str,
    methods: &'static str,
    key_header: Option<&'static str>,
    key_query: Option<&'static str>,
    prefix: &'static str,
    extra: Option<(&'static str, &'static str)>,
    call: &'static str,
}

const PROVIDERS: &[Expected] = &[
    Expected {
        preset: "openai",
        origin: "https://api.openai.com",
        methods: "[\"GET\", \"POST\"]",
        key_header: Some("authorization"),
        key_query: None,
        prefix: "Bearer ",
        extra: None,
        call: "v1/models",
    },
    Expected {
        preset: "anthropic",
        origin: "https://api.anthropic.com",
        methods: "[\"GET\", \"POST\"]",
        key_header: Some("x-api-key"),
        key_query: None,
        prefix: "",
        extra: Some(("anthropic-version", "2023-06-01")),
        call: "v1/models",
    },
    Expected {
        preset: "github",
        origin: "https://api.github.com",
        methods: "[\"GET\", \"HEAD\"]",
        key_header: Some("authorization"),
        key_query: None,
        prefix: "Bearer ",
        extra: Some(("x-github-api-version", "2022-11-28")),
        call: "user",
    },
    Expected {
        preset: "stripe",
        origin: "https://api.stripe.com",
        methods: "[\"GET\", \"POST\", \"DELETE\"]",
        key_header: Some("authorization"),
        key_query: None,
        prefix: "Bearer ",
        extra: None,
        call: "v1/balance",
    },
    Expected {
        preset: "gemini",
        origin: "https://generativelanguage.googleapis.com",
        methods: "[\"GET\", \"POST\"]",
        key_header: Some("x-goog-api-key"),
        key_query: None,
        prefix: "",
        extra: None,
        call: "v1beta/models",
    },
    Expected {
        preset: "mistral",
        origin: "https://api.mistral.ai",
        methods: "[\"GET\", \"POST\"]",
        key_header: Some("authorization"),
        key_query: None,
        prefix: "Bearer ",
        extra: None,
        call: "v1/models",
    },
    Expected {
        preset: "sendgrid",
        origin: "https://api.sendgrid.com",
        methods: "[\"GET\", \"POST\"]",
        key_header: Some("authorization"),
        key_query: None,
        prefix: "Bearer ",
        extra: None,
        call: "v3/scopes",
    },
    Expected {
        preset: "openweathermap",
        origin: "https://api.openweathermap.org",
        methods: "[\"GET\"]",
        key_header: None,
        key_query: Some("appid"),
        prefix: "",
        extra: None,
        call: "data/2.5/weather?q=Berlin",
    },
];

fn key_of(preset: &str) -> String {
    format!("preset-key-{preset}-Zq81")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_preset_writes_a_route_that_injects_as_the_provider_expects() {
    let upstream = Upstream::echo().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    // The secrets exist already (from the environment), so `route add` declares none.
    let mut config = String::from("# presets\n");
    for p in PROVIDERS {
        config.push_str(&format!(
            "[secrets.{0}]\nenv = \"PRESET_{1}\"\n\n",
            p.preset,
            p.preset.to_uppercase()
        ));
    }
    std::fs::write(&path, &config).unwrap();

    let mut outputs = String::new();
    for p in PROVIDERS {
        let added = run(&["route", "add", p.preset, "--preset", p.preset], &path);
        assert_eq!(added.status.code(), Some(0), "{}: {}", p.preset, stderr(&added));
        assert!(!stdout(&added).contains("declared secret"), "{}", stdout(&added));
        outputs.push_str(&(stdout(&added) + &stderr(&added)));
        let written = std::fs::read_to_string(&path).unwrap();
        let block = format!(
            "[routes.{0}]\npath = \"/api/{0}/{{*rest}}\"\nmethods = {1}\nupstream = \"{2}/{{rest}}\"\n",
            p.preset, p.methods, p.origin
        );
        assert!(written.contains(&block), "{}: {written}", p.preset);
    }

    // Point every provider at the local stand-in, then serve the file with the built binary.
    let mut served = std::fs::read_to_string(&path).unwrap();
    for p in PROVIDERS {
        served = served.replace(p.origin, &upstream.url());
    }
    std::fs::write(&path, &served).unwrap();
    let envs: Vec<(String, String)> = PROVIDERS
        .iter()
        .map(|p| (format!("PRESET_{}", p.preset.to_uppercase()), key_of(p.preset)))
        .collect();
    let daemon = tokio::task::spawn_blocking(move || {
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Daemon::start_at(dir, path, &envs)
    })
    .await
    .unwrap();

    for (index, p) in PROVIDERS.iter().enumerate() {
        let response = client()
            .get(daemon.url(&format!("/api/{}/{}", p.preset, p.call)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", p.preset);
        let seen = upstream.received()[index].clone();
        let key = key_of(p.preset);
        if let Some(header) = p.key_header {
            assert_eq!(
                seen.header(header),
                Some(format!("{}{key}", p.prefix).as_str()),
                "{}",
                p.preset
            );
            let (path, _) = p.call.split_once('?').unwrap_or((p.call, ""));
            assert_eq!(seen.target, format!("/{path}"), "{}", p.preset);
        }
        if let Some(param) = p.key_query {
            assert_eq!(seen.target, format!("/{}&{param}={key}", p.call), "{}", p.preset);
        }
        if let Some((name, value)) = p.extra {
            assert_eq!(seen.header(name), Some(value), "{}", p.preset);
        }
    }
    let keys: Vec<String> = PROVIDERS.iter().map(|p| key_of(p.preset)).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    outputs.push_str(&daemon.logs());
    assert_no_secret(&outputs, &keys, "route add output and daemon logs");
}

#[test]
fn an_unknown_preset_lists_the_known_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, "").unwrap();
    let output = run(&["route", "add", "x", "--preset", "openapi"], &path);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "error: no preset `openapi`; presets are openai, anthropic, github, stripe, gemini, mistral, sendgrid, openweathermap, paypal. For another API give --path, --upstream and --bearer/--header/--query\n"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
}
