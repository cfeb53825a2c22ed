//! The README's quick start, run literally: the commands between the `quickstart:begin` and
//! `quickstart:end` markers, one by one, with the built binary on `PATH`, in an empty directory,
//! against the real Secret Service. Two things stand in for the outside world, and only just
//! before `serve`: the OpenAI origin in the written config becomes a local server, and the
//! listen port becomes one the system picks (8787 may be taken on a test machine); the `curl`
//! line is pointed at that port.

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{Upstream, assert_no_secret, require_session_bus};

const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));

/// The command lines of the quick start, comments and blank lines dropped.
fn quickstart_commands() -> Vec<String> {
    let block = README
        .split("<!-- quickstart:begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- quickstart:end -->").next())
        .expect("README has the quick start markers");
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("```"))
        .map(str::to_string)
        .collect()
}

/// Kills the daemon and removes the keyring entry even when an assertion fails.
struct Cleanup {
    daemon: Option<std::process::Child>,
    dir: std::path::PathBuf,
    path: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("secretproxy")
            .args(["secret", "delete", "openai"])
            .current_dir(&self.dir)
            .env("PATH", &self.path)
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quick_start_works_as_written() {
    require_session_bus();
    let commands = quickstart_commands();
    assert_eq!(
        commands
            .iter()
            .map(|c| c.split(' ').take(3).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>(),
        [
            "secretproxy init --origin",
            "secretproxy route add",
            "secretproxy secret set",
            "secretproxy check",
            "secretproxy serve",
            "curl http://127.0.0.1:8787/api/openai/v1/models",
        ],
        "the quick start changed; update this test with it"
    );
    let key = "sk-quickstart-Key-0f9e8d7c6b5a";
    let openai = Upstream::start(|request: crate::harness::Recorded| async move {
        let auth = request.header("authorization").unwrap_or_default().to_string();
        let body = if auth == "Bearer sk-quickstart-Key-0f9e8d7c6b5a" {
            serde_json::json!({ "object": "list", "data": [{ "id": "gpt-test" }], "target": request.target })
        } else {
            serde_json::json!({ "error": "no key" })
        };
        let mut response = crate::harness::text(200, body.to_string());
        response
            .headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        response
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_secretproxy"))
        .parent()
        .unwrap();
    let search_path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut cleanup = Cleanup {
        daemon: None,
        dir: dir.path().to_path_buf(),
        path: search_path.clone(),
    };
    let shell = |line: &str| {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(line)
            .current_dir(dir.path())
            .env("PATH", &search_path)
            .env_remove("SECRETPROXY_CONFIG")
            .env("XDG_CONFIG_HOME", dir.path().join("xdg"));
        command
    };

    let mut printed = String::new();
    let mut address = String::new();
    for line in &commands {
        if line == "secretproxy serve" {
            // The two stand-ins (see the module comment), then the literal command.
            let config = dir.path().join("proxy.toml");
            let text = std::fs::read_to_string(&config).unwrap();
            assert!(text.contains("upstream = \"https://api.openai.com/{rest}\""), "{text}");
            let text = text
                .replace("https://api.openai.com", &openai.url())
                .replace("listen = \"127.0.0.1:8787\"", "listen = \"127.0.0.1:0\"");
            std::fs::write(&config, text).unwrap();
            let mut child = shell(&format!("exec {line}"))
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let stderr = child.stderr.take().unwrap();
            cleanup.daemon = Some(child);
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line);
                }
            });
            let mut logs = String::new();
            address = loop {
                let line = rx
                    .recv_timeout(Duration::from_secs(30))
                    .unwrap_or_else(|_| panic!("serve did not start listening:\n{logs}"));
                logs.push_str(&line);
                logs.push('\n');
                if line.contains("listening")
                    && let Some(at) = line.find("address=")
                {
                    let rest = &line[at + "address=".len()..];
                    break rest.split_whitespace().next().unwrap().to_string();
                }
            };
            printed.push_str(&logs);
            continue;
        }
        let line = line.replace("127.0.0.1:8787", "QUICKSTART_ADDR");
        let output = if line.starts_with("curl ") {
            let line = line.replace("QUICKSTART_ADDR", &address);
            tokio::task::spawn_blocking({
                let mut command = shell(&format!("{line} --silent --show-error"));
                move || command.output().unwrap()
            })
            .await
            .unwrap()
        } else {
            let mut child = shell(&line)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // `secret set` reads the key from stdin when it is not a terminal.
            child.stdin.take().unwrap().write_all(key.as_bytes()).unwrap();
            child.wait_with_output().unwrap()
        };
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        let err = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(0), "{line}\nstdout:\n{out}\nstderr:\n{err}");
        assert!(err.is_empty() || line.starts_with("secretproxy check"), "{line}: {err}");
        if line.starts_with("curl ") {
            let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(answer["data"][0]["id"], "gpt-test", "{out}");
            assert_eq!(answer["target"], "/v1/models", "{out}");
        }
        printed.push_str(&out);
        printed.push_str(&err);
    }
    assert_eq!(
        openai.only().header("authorization"),
        Some(format!("Bearer {key}").as_str())
    );
    let config = std::fs::read_to_string(dir.path().join("proxy.toml")).unwrap();
    printed.push_str(&config);
    assert_no_secret(&printed, &[key], "quick start output and config");
    drop(cleanup);
}
