//! Golden output of the messages a newcomer meets in the first hour (issue 11): each says what
//! is wrong and how to fix it, every config error at once, `check` lints with file:line:column
//! and `--strict`, listen address forms, the port-in-use hint, the startup lines for secrets a
//! terminal cannot have, and no panic when the reader of stdout goes away.

use std::path::Path;
use std::process::Output;

use crate::cli::{NO_BUS, stderr, stdout};
use crate::harness::{Daemon, assert_no_secret, binary};

fn write(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn check(path: &Path, extra: &[&str]) -> Output {
    binary()
        .arg("check")
        .args(extra)
        .arg("--config")
        .arg(path)
        .env(NO_BUS.0, NO_BUS.1)
        .env("CLI_MSG_TOKEN", "present-value-cli-msg")
        .output()
        .unwrap()
}

#[test]
fn config_mistakes_are_all_reported_with_their_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        r#"[server]
allowed-origins = ["localhost:5173"]
listen = "nonsense"

[secrets.gh]
env = ""

[routes.api]
path = "/api/{id}"
upstream = "api.github.com/{id}"

[routes.zeta]
path = "/b/{id}"
upstream = "https://x.example/"

[routes.alpha]
path = "/b/{other}"
upstream = "https://x.example/"
"#,
    );
    let output = check(&path, &[]);
    assert_eq!(output.status.code(), Some(78), "{output:?}");
    let p = path.display();
    assert_eq!(
        stderr(&output),
        format!(
            "error: {p}:2:20: server.allowed-origins: `localhost:5173` has no scheme; write \"http://localhost:5173\" (or https:// if the page is served over TLS)\n\
             error: {p}:3:10: server.listen: `nonsense` is not a listen address; write a port (\"8787\"), \"localhost:8787\", \"127.0.0.1:8787\" or \"[::1]:8787\"\n\
             error: {p}:6:7: secrets.gh.env: may not be empty\n\
             error: {p}:10:12: routes.api.upstream: `api.github.com/{{id}}` has no scheme; write \"https://api.github.com/{{id}}\"\n\
             error: {p}:17:8: routes.alpha.path: conflicts with route `zeta` (`/b/{{id}}`): a request could match both\n  \
             help: give one of them a distinct literal segment, e.g. `/api/a/{{*rest}}` and `/api/b/{{*rest}}`\n\
             5 errors in the config\n"
        )
    );
    assert_eq!(stdout(&output), "");
}

#[test]
fn a_string_where_a_list_belongs_shows_the_list_form() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "[server]\nallowed-origins = \"http://localhost:5173\"\n");
    let output = check(&path, &[]);
    assert_eq!(output.status.code(), Some(78));
    assert_eq!(
        stderr(&output),
        format!(
            "error: {}:2:19: server.allowed-origins: invalid type: string \"http://localhost:5173\", expected a sequence\n  help: `allowed-origins` takes a list, even for one value: allowed-origins = [\"http://localhost:5173\"]\n",
            path.display()
        )
    );
}

#[test]
fn listen_accepts_localhost_and_a_bare_port() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "[server]\nlisten = \"localhost:8787\"\n");
    let output = check(&path, &[]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(
        stdout(&output).contains("\nlisten 127.0.0.1:8787\n"),
        "{}",
        stdout(&output)
    );

    let bad = binary().args(["serve", "--listen", "nowhere"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains(
            "invalid value 'nowhere' for '--listen <ADDR>': `nowhere` is not a listen address; write a port (\"8787\"), \"localhost:8787\""
        ),
        "{}",
        stderr(&bad)
    );
}

/// `--listen PORT`, `:PORT` and `localhost:PORT` all mean 127.0.0.1:PORT: proven by the port
/// being taken there, which also shows the port-in-use hint.
#[test]
fn port_in_use_says_what_to_do_for_every_listen_form() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for form in [port.to_string(), format!(":{port}"), format!("localhost:{port}")] {
        let output = binary()
            .args(["serve", "--listen", &form, "--config"])
            .arg(&path)
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{form}: {output:?}");
        let next = port.wrapping_add(1).max(1);
        assert_eq!(
            stderr(&output),
            format!(
                "error: cannot listen on 127.0.0.1:{port}: Address already in use (os error 98)\n  help: another program already listens on port {port}, perhaps another secretproxy (see `ss -ltnp 'sport = :{port}'`); stop it, or use another port with `--listen {next}` or `[server] listen = \"127.0.0.1:{next}\"`\n"
            ),
            "{form}"
        );
    }
}

#[test]
fn check_lints_warn_with_places_and_strict_fails_on_them() {
    let dir = tempfile::tempdir().unwrap();
    let literal = "sk-proj-CliMsgLiteral0123456789";
    let path = write(
        dir.path(),
        &format!(
            r#"[secrets.token]
env = "CLI_MSG_TOKEN"

[secrets.spare]
env = "CLI_MSG_TOKEN"

[routes.dollar]
path = "/api/dollar/{{*rest}}"
upstream = "https://api.example.com/${{rest}}"
headers = {{ Authorization = "Bearer $token", X-Other = "${{token}}" }}

[routes.braces]
path = "/api/braces"
upstream = "https://api.example.com/"
headers = {{ Authorization = "Bearer {{token}}", X-Other = "${{token}}" }}

[routes.empty]
path = "/api/empty"
upstream = "https://api.example.com/"
headers = {{ Authorization = "Bearer ", X-Other = "${{token}}" }}

[routes.literal]
path = "/api/literal/*"
upstream = "https://api.example.com/"
query = {{ key = "{literal}" }}
"#
        ),
    );
    let output = check(&path, &[]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let p = path.display();
    let expected = format!(
        "warning: {p}:4:1: secrets.spare: declared but used by no route, webhook or client-token\n  help: inject it with `${{spare}}` in a route's `headers` or `query`, or remove the table\n\
         warning: {p}:9:12: routes.dollar.upstream: `${{...}}` in an upstream is sent as a literal `$` followed by the path parameter\n  help: path parameters are written `{{rest}}`; secrets go in `headers` or `query`, never in the URL\n\
         warning: {p}:10:29: routes.dollar.headers.Authorization: `$token` is sent literally, not replaced by the secret\n  help: write `${{token}}`\n\
         warning: {p}:15:29: routes.braces.headers.Authorization: `{{token}}` is sent literally, not replaced by the secret\n  help: write `${{token}}`\n\
         warning: {p}:20:29: routes.empty.headers.Authorization: Bearer has nothing after it: no credential is sent\n  help: write `Bearer ${{NAME}}`; on a command line, quote it with single quotes so the shell does not expand `${{NAME}}` to nothing\n\
         warning: {p}:23:8: routes.literal.path: `*` matches only a literal `*`, not any path\n  help: write `/api/literal/{{*rest}}` to match everything below, and `{{rest}}` in the upstream\n\
         warning: {p}:23:8: routes.literal: this route injects no secret\n  help: fine for a public API; otherwise add e.g. `auth = {{ bearer = \"NAME\" }}` or `headers = {{ Authorization = \"Bearer ${{NAME}}\" }}`\n\
         warning: {p}:25:17: routes.literal.query.key: this looks like an OpenAI API key written into the config file\n  help: keep secret values out of the config: store it with `secretproxy secret set NAME` and write `${{NAME}}` here\n"
    );
    assert_eq!(stderr(&output), expected);
    assert!(stdout(&output).contains(" is valid\n"));

    let strict = check(&path, &["--strict"]);
    assert_eq!(strict.status.code(), Some(1));
    assert_eq!(
        stderr(&strict),
        format!("{expected}error: 8 warnings (--strict treats warnings as errors)\n")
    );
    // The literal token is named by kind only, never quoted, in any output.
    let printed = [&output, &strict]
        .iter()
        .map(|o| stdout(o) + &stderr(o))
        .collect::<String>();
    assert_no_secret(
        &printed,
        &[literal, &literal[8..20], "present-value-cli-msg"],
        "check output",
    );
}

#[test]
fn an_unreachable_keyring_is_named_as_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "[secrets.gh]\nkeyring = \"gh\"\n[routes.gh]\npath = \"/gh/{*rest}\"\nupstream = \"https://api.github.com/{rest}\"\nauth = { bearer = \"gh\" }\n",
    );
    let output = check(&path, &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).ends_with(
            "\nthe keyring itself is unreachable, so `secretproxy secret set` would fail too: unlock it, or start a Secret Service (e.g. gnome-keyring) in this session; without one, declare these secrets with `env` or `file` instead\n"
        ),
        "{}",
        stdout(&output)
    );
    let line = stdout(&output)
        .lines()
        .find(|l| l.starts_with("gh: "))
        .unwrap()
        .to_string();
    assert!(
        line.starts_with("gh: keyring (service `secretproxy`, account `gh`) is unreachable: "),
        "{line}"
    );
    assert!(!line.contains("secret set"), "{line}");
}

/// Reader gone before the first byte: every command that prints must end without a panic and
/// with its usual status, not 101.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "[secrets.t]\nenv = \"CLI_MSG_TOKEN\"\n[routes.a]\npath = \"/a\"\nupstream = \"https://x.example/\"\nauth = { bearer = \"t\" }\n",
    );
    let with_config: &[&[&str]] = &[
        &["check"],
        &["route", "list"],
        &["route", "show", "a"],
        &["route", "test", "a"],
        &["secret", "list"],
    ];
    let plain: &[&[&str]] = &[&["completions", "bash"], &["--help"], &["route", "add", "--help"]];
    let runs = with_config
        .iter()
        .map(|args| (args, true))
        .chain(plain.iter().map(|args| (args, false)));
    for (args, config) in runs {
        let code = 0;
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut command = binary();
        command.args(*args);
        if config {
            command.arg("--config").arg(&path);
        }
        let output = command
            .env("CLI_MSG_TOKEN", "present-value-cli-msg")
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = stderr(&output);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(output.status.code(), Some(code), "{args:?}: {err}");
    }
}

#[test]
fn startup_lines_for_unavailable_secrets_are_short_and_name_their_users() {
    let config = r#"
[secrets.cred]
credential = "openai"

[secrets.hook]
env = "CLI_MSG_HOOK_NOT_SET"

[routes.ai]
path = "/api/ai/{*rest}"
upstream = "https://api.openai.com/{rest}"
auth = { bearer = "cred" }

[webhooks.gh]
path = "/hooks/gh"
verify = "github"
secret = "hook"
target = "http://127.0.0.1:9/hooks"
"#;
    let daemon = Daemon::start(config, &[("CREDENTIALS_DIRECTORY", "")]);
    let logs = daemon.wait_for_log("secret unavailable", 2, std::time::Duration::from_secs(30));
    let messages: Vec<String> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "WARN")
        .map(|v| v["message"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        messages,
        [
            "secret unavailable: `cred` is a systemd credential, given only to a systemd service",
            "secret unavailable: `hook` (not found in environment variable `CLI_MSG_HOOK_NOT_SET`); set `CLI_MSG_HOOK_NOT_SET` in the daemon's environment; used by webhook gh (503 until it is set)",
        ],
        "{logs}"
    );
    assert!(!logs.contains("/run/credentials"), "{logs}");
}
