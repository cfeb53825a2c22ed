//! The jq project's own test file (`../shared/conformance/jq.test`, beside the checkout), run
//! through the built daemon's transform path: every single-output case becomes a route whose
//! upstream serves the case's input and whose `response.transform` is the case's program.
//!
//! Asserted: the daemon survives every case and keeps serving, every answer is a `200` with
//! strict JSON or a `502` JSON error (never a 5xx of another kind, never non-JSON text), no
//! secret shows, and the pass rate stays at or above [`FLOOR`].
//!
//! Reading and counting follow jq's own runner (and `tests/conformance/jq17.py`, which gives jq
//! 1.7.1's number on the same cases): a case is a program line, an input line and output lines
//! up to a blank or `#` line; `%%FAIL` blocks are left out; only cases with exactly one
//! expected output count. A case passes when the daemon answers `200` with a value equal to the
//! expected one (numbers compared as doubles). A program the engine cannot compile fails
//! (it would be a config error) and gets no route.
//!
//! Measured on commit 579e6f76's jq.test (459 single-output cases): jq 1.7.1 passes 372 (81.0 %);
//! this daemon (jaq 3 plus the definitions in `features::jq`) passes the number printed by this
//! test, at least [`FLOOR`].

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;

use crate::harness::{Daemon, Recorded, Upstream, assert_no_secret, client, text};

/// The fewest cases that must pass (jq 1.7.1 passes 372; 90 % of that is 335).
const FLOOR: usize = 335;
const SECRET: &str = "sk_conformance_SecretValue_31";

struct Case {
    line: usize,
    program: String,
    input: String,
    expected: String,
}

/// The single-output cases of a jq.test file.
fn cases(text: &str) -> Vec<Case> {
    let lines: Vec<&str> = text.split('\n').collect();
    let skip = |line: &str| line.trim().is_empty() || line.starts_with('#');
    let (mut i, mut out) = (0, Vec::new());
    while i < lines.len() {
        if skip(lines[i]) {
            i += 1;
            continue;
        }
        if lines[i].starts_with("%%FAIL") {
            i += 2;
            while i < lines.len() && !skip(lines[i]) {
                i += 1;
            }
            continue;
        }
        let (line, program) = (i + 1, lines[i]);
        let input = lines.get(i + 1).copied().unwrap_or("");
        i += 2;
        let mut expected = Vec::new();
        while i < lines.len() && !skip(lines[i]) {
            expected.push(lines[i]);
            i += 1;
        }
        if let [one] = expected[..] {
            out.push(Case {
                line,
                program: program.to_string(),
                input: input.to_string(),
                expected: one.to_string(),
            });
        }
    }
    out
}

/// JSON equality with numbers compared as doubles (as jq's runner compares them).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

#[tokio::test]
async fn the_jq_test_suite_runs_through_the_daemon_without_harm() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/jq.test");
    let suite = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} ({e}): CI has shared/ beside the checkout", path.display()));
    let cases = cases(&suite);
    assert!(
        cases.len() > 400,
        "only {} cases read from {}",
        cases.len(),
        path.display()
    );
    let compiles: Vec<bool> = cases
        .iter()
        .map(|case| secretproxy::features::jq::Program::compile(&case.program).is_ok())
        .collect();

    let inputs: Vec<String> = cases.iter().map(|case| case.input.clone()).collect();
    let upstream = Upstream::start(move |request: Recorded| {
        let body = request
            .target
            .strip_prefix("/case/")
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| inputs.get(i).cloned())
            .unwrap_or_else(|| "null".into());
        async move {
            let mut response = text(200, body);
            response
                .headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            response
        }
    })
    .await;
    let mut config = "[secrets.key]\nenv = \"TEST_CONFORMANCE_KEY\"\n".to_string();
    let route = |name: &str, target: &str, program: &str| {
        format!(
            "[routes.{name}]\npath = \"/{name}\"\nupstream = \"{}{target}\"\nheaders = {{ Authorization = \"Bearer ${{key}}\" }}\nresponse.transform = {}\n",
            upstream.url(),
            toml::Value::String(program.to_string())
        )
    };
    config.push_str(&route("alive", "/case/none", "{alive: true}"));
    for (i, case) in cases.iter().enumerate() {
        if compiles[i] {
            config.push_str(&route(&format!("c{i}"), &format!("/case/{i}"), &case.program));
        }
    }
    let daemon = Daemon::start(&config, &[("TEST_CONFORMANCE_KEY", SECRET)]);
    let started = Instant::now();

    // A few in flight: the pool's queue holds the rest, well within its timeout.
    let http = client();
    let answers: Vec<(usize, u16, String)> = futures_util::stream::iter((0..cases.len()).filter(|i| compiles[*i]))
        .map(|i| {
            let url = daemon.url(&format!("/c{i}"));
            let http = http.clone();
            async move {
                let response = http
                    .get(url)
                    .timeout(Duration::from_secs(60))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("case {i}: the daemon did not answer: {e}"));
                let status = response.status().as_u16();
                (i, status, response.text().await.unwrap())
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;

    let mut passed = 0;
    let mut failures = Vec::new();
    for (i, status, body) in &answers {
        let case = &cases[*i];
        assert_no_secret(body, &[SECRET], "a transformed answer");
        match status {
            200 => {
                let value: Value = serde_json::from_str(body).unwrap_or_else(|e| {
                    panic!(
                        "line {}: `{}` answered 200 with non-JSON ({e}): {body}",
                        case.line, case.program
                    )
                });
                let expected: Value = serde_json::from_str(&case.expected).unwrap();
                if same(&value, &expected) {
                    passed += 1;
                } else {
                    failures.push(format!("line {}: {} -> {body}", case.line, case.program));
                }
            }
            502 => {
                let error: Value = serde_json::from_str(body)
                    .unwrap_or_else(|e| panic!("line {}: 502 not JSON ({e}): {body}", case.line));
                let code = error["code"].as_str().unwrap_or_default();
                assert!(
                    code == "transform_failed" || code == "transform_limit",
                    "line {}: {body}",
                    case.line
                );
                failures.push(format!("line {}: {} -> {code}", case.line, case.program));
            }
            other => panic!("line {}: `{}` answered {other}: {body}", case.line, case.program),
        }
    }
    for (i, case) in cases.iter().enumerate() {
        if !compiles[i] {
            failures.push(format!("line {}: {} -> does not compile", case.line, case.program));
        }
    }

    // The daemon is still the same process, and still serves.
    let alive = client().get(daemon.url("/alive")).send().await.unwrap();
    assert_eq!(alive.status(), 200);
    assert_eq!(alive.text().await.unwrap(), r#"{"alive":true}"#);
    let logs = daemon.logs();
    assert_no_secret(&logs, &[SECRET], "daemon logs");
    eprintln!(
        "jq.test: {passed} of {} single-output cases pass ({:.1} %) in {:?}; jq 1.7.1 passes 372\n{}",
        cases.len(),
        100.0 * passed as f64 / cases.len() as f64,
        started.elapsed(),
        failures.join("\n")
    );
    assert!(
        passed >= FLOOR,
        "{passed} of {} cases pass, fewer than the floor {FLOOR}",
        cases.len()
    );
    let (status, _) = daemon.terminate();
    assert!(status.success());
}
