//! `secretproxy secret set|delete|list` as the built binary against the real Secret Service:
//! values from piped stdin and from a terminal without echo, never from argv, and never in any
//! output; one clear line when the keyring is unreachable.

use std::path::Path;
use std::process::{Output, Stdio};

use crate::cli::{NO_BUS, run, stderr, stdout};
use crate::harness::{assert_no_secret, binary, require_session_bus, unique};

/// Runs `secretproxy ARGS --config PATH` with `input` on a piped stdin.
pub fn run_with_stdin(args: &[&str], config: &Path, input: &str) -> Output {
    use std::io::Write;
    let mut child = binary()
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that refuses before reading may have exited already.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    child.wait_with_output().unwrap()
}

fn secret_tool_lookup(service: &str, account: &str) -> Option<String> {
    let output = std::process::Command::new("secret-tool")
        .args(["lookup", "service", service, "username", account])
        .output()
        .unwrap();
    output
        .status
        .success()
        .then(|| String::from_utf8(output.stdout).unwrap())
}

#[test]
fn secret_set_list_delete_through_the_secret_service() {
    require_session_bus();
    let account = unique("cli");
    let other_account = unique("cli-other");
    let value = format!("ghp_cli_{account}_value");
    let other_value = format!("other_{account}_value");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let secret_file = dir.path().join("owm");
    std::fs::write(&secret_file, "file-secret-value\n").unwrap();
    std::fs::write(
        &path,
        format!(
            "[secrets.gh]\nkeyring = \"{account}\"\n[secrets.shared]\nkeyring = {{ service = \"secretproxy-test-other\", account = \"{other_account}\" }}\n\
             [secrets.stripe]\nenv = \"TEST_CLI_STRIPE\"\n[secrets.owm]\nfile = {:?}\n\
             [routes.gh]\npath = \"/gh\"\nupstream = \"https://api.github.com/\"\nauth = {{ bearer = \"gh\" }}\n",
            secret_file.display().to_string()
        ),
    )
    .unwrap();
    let mut outputs = String::new();
    let mut keep = |output: &Output| {
        outputs.push_str(&stdout(output));
        outputs.push_str(&stderr(output));
    };

    let set = run_with_stdin(&["secret", "set", "gh"], &path, &format!("{value}\n"));
    keep(&set);
    assert_eq!(set.status.code(), Some(0), "{set:?}");
    assert!(stdout(&set).starts_with(&format!(
        "stored secret `gh` in the keyring (service `secretproxy`, account `{account}`)\n"
    )));
    assert_eq!(
        secret_tool_lookup("secretproxy", &account).as_deref(),
        Some(value.as_str())
    );
    let set = run_with_stdin(&["secret", "set", "shared"], &path, &other_value);
    keep(&set);
    assert!(set.status.success());
    assert_eq!(
        secret_tool_lookup("secretproxy-test-other", &other_account).as_deref(),
        Some(other_value.as_str())
    );

    let list = run(&["secret", "list"], &path);
    keep(&list);
    assert_eq!(list.status.code(), Some(0));
    let listed = stdout(&list);
    assert!(
        listed.starts_with("SECRET  SOURCE") && listed.lines().count() == 5,
        "{listed}"
    );
    let line = |name: &str| {
        listed
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap()
            .to_string()
    };
    assert!(
        line("gh").contains(&format!("account `{account}`)")) && line("gh").ends_with("present  gh"),
        "{listed}"
    );
    assert!(line("shared").ends_with("present  -"), "{listed}");
    assert!(
        line("stripe").contains("environment variable `TEST_CLI_STRIPE`") && line("stripe").ends_with("missing  -"),
        "{listed}"
    );
    assert!(line("owm").ends_with("present  -"), "{listed}");

    // Everything present: check exits 0.
    let check = binary()
        .args(["check", "--config"])
        .arg(&path)
        .env("TEST_CLI_STRIPE", "sk_test_cli_env")
        .output()
        .unwrap();
    keep(&check);
    assert_eq!(check.status.code(), Some(0), "{check:?}");

    // Sources secretproxy does not write, and a value on the command line.
    let env = run_with_stdin(&["secret", "set", "stripe"], &path, "x");
    keep(&env);
    assert_eq!(env.status.code(), Some(1));
    assert_eq!(
        stderr(&env),
        "error: secret `stripe` comes from environment variable `TEST_CLI_STRIPE`, which secretproxy does not write; set `TEST_CLI_STRIPE` in the daemon's environment\n"
    );
    // A secret the config lacks is declared (comments and the rest of the file kept), then stored.
    let fresh_account = unique("cli-fresh");
    let fresh_value = format!("fresh_{account}_value");
    let before = std::fs::read_to_string(&path).unwrap();
    let undeclared = run_with_stdin(
        &["secret", "set", "fresh", "--keyring", &fresh_account],
        &path,
        &fresh_value,
    );
    keep(&undeclared);
    assert_eq!(undeclared.status.code(), Some(0), "{undeclared:?}");
    assert_eq!(
        stdout(&undeclared).lines().next().unwrap(),
        format!(
            "declared secret `fresh` in {} (keyring (service `secretproxy`, account `{fresh_account}`))",
            path.display()
        )
    );
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(
        after.contains(&format!("[secrets.fresh]\nkeyring = \"{fresh_account}\"\n")) && after.len() > before.len(),
        "{after}"
    );
    assert_eq!(
        secret_tool_lookup("secretproxy", &fresh_account).as_deref(),
        Some(fresh_value.as_str())
    );
    run(&["secret", "delete", "fresh"], &path);
    let in_argv = binary()
        .args(["secret", "set", "gh", "argv-value-never-stored", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(in_argv.status.code(), Some(2));
    assert_eq!(
        secret_tool_lookup("secretproxy", &account).as_deref(),
        Some(value.as_str())
    );
    let empty = run_with_stdin(&["secret", "set", "gh"], &path, "\n");
    assert_eq!(empty.status.code(), Some(1));
    assert_eq!(
        secret_tool_lookup("secretproxy", &account).as_deref(),
        Some(value.as_str())
    );

    let delete = run(&["secret", "delete", "gh"], &path);
    keep(&delete);
    assert_eq!(delete.status.code(), Some(0), "{delete:?}");
    assert_eq!(secret_tool_lookup("secretproxy", &account), None);
    let list = run(&["secret", "list"], &path);
    keep(&list);
    assert!(
        stdout(&list)
            .lines()
            .any(|l| l.starts_with("gh ") && l.contains("missing"))
    );
    let again = run(&["secret", "delete", "gh"], &path);
    keep(&again);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(
        stderr(&again),
        "error: secret `gh` is not in the keyring; nothing to delete\n"
    );
    let check = run(&["check"], &path);
    keep(&check);
    assert_eq!(check.status.code(), Some(1));
    run(&["secret", "delete", "shared"], &path);

    assert_no_secret(
        &outputs,
        &[
            &value,
            &other_value,
            &fresh_value,
            "file-secret-value",
            "sk_test_cli_env",
        ],
        "command output",
    );
}

#[test]
fn secret_set_reads_a_terminal_without_echo() {
    use std::io::{Read, Write};
    require_session_bus();
    let account = unique("tty");
    let value = format!("typed_{account}_value");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, format!("[secrets.gh]\nkeyring = \"{account}\"\n")).unwrap();
    // `script` runs the command on a pseudo-terminal and copies everything it shows to stdout.
    let command = format!(
        "{} secret set gh --config {}",
        env!("CARGO_BIN_EXE_secretproxy"),
        path.display()
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs the command on a pty");
    let mut stdin = child.stdin.take().unwrap();
    let mut out = child.stdout.take().unwrap();
    // Type only once the prompt is up (echo is off by then), as a person would.
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("(not shown): ") {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "no prompt; got {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    // rpassword turns echo off right after printing the prompt; give it that moment.
    std::thread::sleep(std::time::Duration::from_millis(300));
    stdin.write_all(format!("{value}\r").as_bytes()).unwrap();
    stdin.flush().unwrap();
    out.read_to_end(&mut seen).unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());
    let shown = String::from_utf8_lossy(&seen).to_string();
    assert!(shown.contains("stored secret `gh`"), "{shown}");
    assert_no_secret(&shown, &[&value], "the terminal");
    assert_eq!(
        secret_tool_lookup("secretproxy", &account).as_deref(),
        Some(value.as_str())
    );
    run(&["secret", "delete", "gh"], &path);
}

#[test]
fn an_unreachable_keyring_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, "[secrets.gh]\nkeyring = \"gh\"\n").unwrap();
    for args in [&["secret", "set", "gh"][..], &["secret", "delete", "gh"][..]] {
        let mut child = binary()
            .args(args)
            .arg("--config")
            .arg(&path)
            .env(NO_BUS.0, NO_BUS.1)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"unreachable-secret-value")
                .unwrap();
        }
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let err = stderr(&output);
        assert_eq!(err.lines().count(), 1, "{err}");
        let action = if args[1] == "set" { "store" } else { "delete" };
        assert!(
            err.starts_with(&format!(
                "error: cannot {action} secret `gh`: the keyring is unreachable or locked ("
            )) && err.ends_with("); unlock it, or start a Secret Service such as gnome-keyring in this session\n"),
            "{err}"
        );
        assert_no_secret(&err, &["unreachable-secret-value"], "stderr");
    }
    let list = binary()
        .args(["secret", "list", "--config"])
        .arg(&path)
        .env(NO_BUS.0, NO_BUS.1)
        .output()
        .unwrap();
    assert!(list.status.success());
    assert!(stdout(&list).contains("store unreachable"), "{}", stdout(&list));
}
