//! Commands that finish a job by themselves (issue 11): `route add` with `--bearer`,
//! `--header NAME=TEMPLATE`, `--query`, `--methods`, `--allow-http`; `secret set --env/--file`
//! declaring the secret; `init --origin/--static-dir`; `route test` showing the outbound request
//! with secrets masked (and `--send` through a real local upstream); the `--help` examples
//! running as pasted.

use std::path::Path;

use crate::cli::{NO_BUS, run, stderr, stdout};
use crate::harness::{Upstream, assert_no_secret, binary, text};

const BASE: &str = "# mine\n[server]\nlisten = \"127.0.0.1:8787\"\n\n[secrets.owm]\nenv = \"CLI_JOBS_OWM\"\n";

fn config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn route_add_flags_write_the_route_and_declare_the_bearer_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), BASE);
    let added = run(
        &[
            "route",
            "add",
            "lan",
            "--path",
            "/api/lan/{*rest}",
            "--upstream",
            "http://192.168.1.20/{rest}",
            "--allow-http",
            "--methods",
            "GET,post",
            "--bearer",
            "lan",
            "--header",
            "X-Client=web",
            "--query",
            "appid=${owm}",
        ],
        &path,
    );
    assert_eq!(added.status.code(), Some(0), "{}", stderr(&added));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!(
            "{BASE}\n[secrets.lan]\nkeyring = \"lan\"\n\n[routes.lan]\npath = \"/api/lan/{{*rest}}\"\nmethods = [\"GET\", \"POST\"]\nupstream = \"http://192.168.1.20/{{rest}}\"\nheaders = {{ Authorization = \"Bearer ${{lan}}\", X-Client = \"web\" }}\nquery = {{ appid = \"${{owm}}\" }}\nallow-http = true\n"
        )
    );
    let out = stdout(&added);
    let flag = format!(" --config {}", path.display());
    assert!(
        out.contains(&format!(
            "declared secret `lan` (OS keyring); store its value with: secretproxy secret set lan{flag}\n"
        )),
        "{out}"
    );
    assert!(
        out.ends_with(&format!(
            "see what a call sends (secrets masked): secretproxy route test lan '/api/lan/'{flag}\n"
        )),
        "{out}"
    );

    // A preset into an empty file: the secret is declared before the route.
    let empty = config(dir.path(), "");
    let preset = run(
        &["route", "add", "ai", "--preset", "openai", "--secret", "work-openai"],
        &empty,
    );
    assert_eq!(preset.status.code(), Some(0), "{}", stderr(&preset));
    assert_eq!(
        std::fs::read_to_string(&empty).unwrap(),
        "[secrets.work-openai]\nkeyring = \"work-openai\"\n\n[routes.ai]\npath = \"/api/ai/{*rest}\"\nmethods = [\"GET\", \"POST\"]\nupstream = \"https://api.openai.com/{rest}\"\nheaders = { Authorization = \"Bearer ${work-openai}\" }\n"
    );
    assert!(
        stdout(&preset).contains("secretproxy route test ai '/api/ai/v1/models'"),
        "{}",
        stdout(&preset)
    );
}

#[test]
fn secret_set_env_and_file_declare_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), BASE);
    let env = run(&["secret", "set", "stripe", "--env", "STRIPE_SECRET_KEY"], &path);
    assert_eq!(env.status.code(), Some(0), "{}", stderr(&env));
    assert_eq!(
        stdout(&env),
        format!(
            "declared secret `stripe` in {} (environment variable `STRIPE_SECRET_KEY`)\nset `STRIPE_SECRET_KEY` in the daemon's environment\n",
            path.display()
        )
    );
    let token = dir.path().join("mapbox.token");
    let file = run(&["secret", "set", "mapbox", "--file", token.to_str().unwrap()], &path);
    assert_eq!(file.status.code(), Some(0), "{}", stderr(&file));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!(
            "{BASE}\n[secrets.stripe]\nenv = \"STRIPE_SECRET_KEY\"\n\n[secrets.mapbox]\nfile = \"{}\"\n",
            token.display()
        )
    );
    // Again, the same: nothing changes. Another source: refused, the file is unchanged.
    let before = std::fs::read_to_string(&path).unwrap();
    let same = run(&["secret", "set", "stripe", "--env", "STRIPE_SECRET_KEY"], &path);
    assert_eq!(same.status.code(), Some(0));
    assert!(
        stdout(&same).starts_with("secret `stripe` is already declared with environment variable `STRIPE_SECRET_KEY`")
    );
    let other = run(&["secret", "set", "stripe", "--env", "OTHER"], &path);
    assert_eq!(other.status.code(), Some(1));
    assert_eq!(
        stderr(&other),
        format!(
            "error: secret `stripe` is already declared with environment variable `STRIPE_SECRET_KEY`; edit [secrets.stripe] in {} to change its source\n",
            path.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
    let both = run(&["secret", "set", "x", "--env", "A", "--file", "/b"], &path);
    assert_eq!(both.status.code(), Some(2));
}

#[test]
fn init_takes_the_page_origin_and_static_dir() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("site").join("proxy.toml");
    let init = run(
        &["init", "--origin", "http://localhost:5173", "--static-dir", "dist"],
        &path,
    );
    assert_eq!(init.status.code(), Some(0), "{}", stderr(&init));
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(
        written.contains("\nallowed-origins = [\"http://localhost:5173\"]\n"),
        "{written}"
    );
    assert!(written.contains("\nstatic-dir = \"dist\"\n"), "{written}");
    assert!(dir.path().join("site").join("dist").is_dir());
    assert!(
        stdout(&init).starts_with(&format!(
            "wrote {}\ncreated {} (empty; your build writes the site there)\n",
            path.display(),
            dir.path().join("site").join("dist").display()
        )),
        "{}",
        stdout(&init)
    );
    let check = binary()
        .args(["check", "--config"])
        .arg(&path)
        .env(NO_BUS.0, NO_BUS.1)
        .output()
        .unwrap();
    assert!(stdout(&check).contains(" is valid\n"), "{check:?}");

    // Without flags (and no terminal) both keys are still there, commented.
    let plain = dir.path().join("plain.toml");
    let init = run(&["init"], &plain);
    assert_eq!(init.status.code(), Some(0));
    let written = std::fs::read_to_string(&plain).unwrap();
    assert!(
        written.contains("\n# allowed-origins = [\"http://localhost:5173\"]\n"),
        "{written}"
    );
    assert!(written.contains("\n# static-dir = \"dist\"\n"), "{written}");

    let bad = run(&["init", "--origin", "localhost:5173"], &dir.path().join("bad.toml"));
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(
        stderr(&bad),
        "error: --origin: `localhost:5173` has no scheme; write \"http://localhost:5173\" (or https:// if the page is served over TLS)\n"
    );
    assert!(!dir.path().join("bad.toml").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_test_shows_the_request_masked_and_sends_only_when_asked() {
    let secret = "route-test-Secret-4242";
    // The stand-in echoes the credential in a response header: the printout must redact it.
    let upstream = Upstream::start(|request: crate::harness::Recorded| async move {
        let mut response = text(200, "ok");
        let echoed = request.header("authorization").unwrap_or_default().to_string();
        response.headers_mut().insert("x-echo", echoed.parse().unwrap());
        response
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        dir.path(),
        &format!(
            "[secrets.api]\nenv = \"CLI_JOBS_API\"\n\n[routes.items]\npath = \"/api/items/{{*rest}}\"\nmethods = [\"GET\", \"POST\"]\nupstream = \"{}/v1/{{rest}}\"\nheaders = {{ Authorization = \"Bearer ${{api}}\" }}\nquery = {{ key = \"${{api}}\" }}\n",
            upstream.url()
        ),
    );
    let route_test = |args: &[&str]| {
        let path = path.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                binary()
                    .args(&args)
                    .arg("--config")
                    .arg(&path)
                    .env("CLI_JOBS_API", "route-test-Secret-4242")
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };

    let shown = route_test(&["route", "test", "items", "/api/items/7?full=1", "--method", "post"]).await;
    assert_eq!(shown.status.code(), Some(0), "{}", stderr(&shown));
    assert_eq!(
        stdout(&shown),
        format!(
            "POST {}/v1/7?full=1&key=****\n\
             Authorization: Bearer ****  (secret api, environment variable `CLI_JOBS_API`: present)\n\
             query key=****  (secret api, environment variable `CLI_JOBS_API`: present)\n\
             \nclient headers: Authorization, Cookie and Host are withheld; stripped: origin, referer, sec-gpc, dnt, sec-fetch-*, sec-ch-*\n\
             \nnot sent; add --send to send it (without a body) and see the response\n",
            upstream.url()
        )
    );
    assert!(upstream.received().is_empty(), "route test sent without --send");

    let sent = route_test(&["route", "test", "items", "/api/items/7", "--send"]).await;
    assert_eq!(sent.status.code(), Some(0), "{}", stderr(&sent));
    let seen = upstream.only();
    assert_eq!(seen.header("authorization"), Some(format!("Bearer {secret}").as_str()));
    assert_eq!(seen.target, format!("/v1/7?key={secret}"));
    let out = stdout(&sent);
    assert!(out.contains("\nsent; the upstream answered 200 OK\n"), "{out}");
    assert!(out.contains("X-Echo: Bearer [REDACTED]\n"), "{out}");

    let wrong = route_test(&["route", "test", "items", "/other"]).await;
    assert_eq!(wrong.status.code(), Some(1));
    assert_eq!(
        stderr(&wrong),
        "error: `/other` is not a path of route `items` (`/api/items/{*rest}`); give one it matches, e.g. `/api/items/x`\n"
    );
    let method = route_test(&["route", "test", "items", "--method", "DELETE"]).await;
    assert_eq!(
        stderr(&method),
        "error: route `items` answers DELETE with 405: it allows GET, POST; add the method with `methods = [...]` in [routes.items]\n"
    );
    let printed = [&shown, &sent, &wrong, &method]
        .iter()
        .map(|o| stdout(o) + &stderr(o))
        .collect::<String>();
    assert_no_secret(&printed, &[secret], "route test output");
}

/// Every example in `route add --help` and `route --help`, pasted as one line into a shell,
/// runs; clap does not wrap them even on a narrow terminal.
#[test]
fn help_examples_paste_as_whole_commands() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "[secrets.owm]\nenv = \"O\"\n[secrets.lan]\nenv = \"L\"\n");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_secretproxy"))
        .parent()
        .unwrap()
        .to_path_buf();
    let search_path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut ran = 0;
    for help in [&["route", "add", "--help"][..], &["route", "--help"][..]] {
        let output = binary().args(help).env("COLUMNS", "40").output().unwrap();
        let examples = stdout(&output);
        let examples = examples.split("Examples:\n").nth(1).unwrap().to_string();
        for line in examples.lines().filter(|l| l.starts_with("  secretproxy route ")) {
            let command = line.trim();
            if command.starts_with("secretproxy route test") || command.contains(" remove ") {
                continue;
            }
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("{command} --config '{}' >/dev/null 2>&1", path.display()))
                .env("PATH", &search_path)
                .status()
                .unwrap();
            // `route add github` appears in both helps: the second run finds it exists (1).
            let code = status.code();
            assert!(code == Some(0) || (code == Some(1) && ran > 0), "{command}: {status:?}");
            ran += 1;
        }
    }
    assert!(ran >= 6, "{ran} examples");
    let list = run(&["route", "list"], &path);
    for name in ["openai", "github", "weather", "stripe", "lan"] {
        assert!(stdout(&list).contains(&format!("\n{name} ")), "{}", stdout(&list));
    }
}
