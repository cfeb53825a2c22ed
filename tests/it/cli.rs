//! The command line, run as the built binary: init, check, route management, completions and
//! help, exit codes, and no secret value in any output (`secret` commands: `cli_secret.rs`).

use std::path::Path;
use std::process::Output;

use crate::harness::{assert_no_secret, binary};

pub const NO_BUS: (&str, &str) = ("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/secretproxy-bus");

pub fn run(args: &[&str], config: &Path) -> Output {
    binary().args(args).arg("--config").arg(config).output().unwrap()
}

/// `secretproxy route add NAME --path PATH --upstream UPSTREAM EXTRA... --config CONFIG`.
fn route_add(config: &Path, name: &str, path: &str, upstream: &str, extra: &[&str]) -> Output {
    let mut args = vec!["route", "add", name, "--path", path, "--upstream", upstream];
    args.extend_from_slice(extra);
    run(&args, config)
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[test]
fn init_then_check_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("conf").join("proxy.toml");
    let init = run(&["init"], &path);
    assert_eq!(init.status.code(), Some(0), "{init:?}");
    assert!(stdout(&init).starts_with(&format!("wrote {}\n", path.display())));
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(written.starts_with("# secretproxy configuration."), "{written}");

    // Valid, with no routes yet: check says what to do next.
    let check = binary()
        .args(["check", "--config"])
        .arg(&path)
        .env(NO_BUS.0, NO_BUS.1)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    assert_eq!(
        stdout(&check),
        format!(
            "{} is valid\nlisten 127.0.0.1:8787\n\nno routes yet; add one with `secretproxy route add NAME --preset PRESET` (see `route add --help`)\n\nno secrets declared\n",
            path.display()
        )
    );

    // A preset route; the keyring is out of reach here: exit 1 and say so per secret.
    let added = run(&["route", "add", "github", "--preset", "github"], &path);
    assert_eq!(added.status.code(), Some(0), "{added:?}");
    let check = binary()
        .args(["check", "--config"])
        .arg(&path)
        .env(NO_BUS.0, NO_BUS.1)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1), "{check:?}");
    let out = stdout(&check);
    let expected_head = format!(
        "{} is valid\nlisten 127.0.0.1:8787\n\n\
         ROUTE   METHODS   PATH                 UPSTREAM                       SECRETS\n\
         github  GET,HEAD  /api/github/{{*rest}}  https://api.github.com/{{rest}}  github\n\n\
         SECRET  SOURCE                                             STATUS             ROUTES\n\
         github  keyring (service `secretproxy`, account `github`)  store unreachable  github\n\n\
         github: keyring (service `secretproxy`, account `github`) is unreachable: ",
        path.display()
    );
    assert!(out.starts_with(&expected_head), "{out}");
    assert!(out.contains("the keyring itself is unreachable"), "{out}");
    assert_eq!(stderr(&check), "error: 1 of 1 secrets is not available: github\n");

    // No overwrite without --force; the file is untouched.
    std::fs::write(&path, "# mine\n").unwrap();
    let again = run(&["init"], &path);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(
        stderr(&again),
        format!("error: {} already exists; pass --force to replace it\n", path.display())
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "# mine\n");
    let forced = run(&["init", "--force"], &path);
    assert_eq!(forced.status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), written);

    // $SECRETPROXY_CONFIG is where init writes without --config.
    let env_path = dir.path().join("env.toml");
    let by_env = binary()
        .arg("init")
        .env("SECRETPROXY_CONFIG", &env_path)
        .output()
        .unwrap();
    assert!(by_env.status.success());
    assert_eq!(std::fs::read_to_string(&env_path).unwrap(), written);
}

#[test]
fn check_errors_are_golden() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let cases = [
        (
            "# my proxy\n[secrets.gh]\nkeyrng = \"gh\"\n",
            "3:1: secrets.gh.keyrng: unknown field `keyrng`, expected one of `keyring`, `env`, `file`, `credential`\n  help: did you mean `keyring`?\n",
        ),
        (
            "[secrets.gh]\nkeyring = \"gh\"\n\n[routes.gh]\npath = \"/gh/{*rest}\"\nupstream = \"https://api.github.com/{rest}\"\nheaders = { Authorization = \"Bearer ${githb}\" }\n",
            "7:29: routes.gh.headers.Authorization: unknown secret `githb`\n  help: declared secrets are `gh`; or add a `[secrets.githb]` table\n",
        ),
        (
            "[routes.gh]\npath = \"/gh/{id}\"\nupstream = \"https://api.github.com/{rest}\"\n",
            "3:12: routes.gh.upstream: `{rest}` is not a parameter of path `/gh/{id}`\n  help: the path defines `{id}`\n",
        ),
    ];
    for (text, expected) in cases {
        std::fs::write(&path, text).unwrap();
        let output = run(&["check"], &path);
        assert_eq!(output.status.code(), Some(78), "{output:?}");
        assert_eq!(stderr(&output), format!("error: {}:{expected}", path.display()));
        assert_eq!(stdout(&output), "");
    }
    let missing = run(&["check"], &dir.path().join("nope.toml"));
    assert_eq!(missing.status.code(), Some(78));
    assert_eq!(
        stderr(&missing),
        format!(
            "error: cannot read config file {}: No such file or directory (os error 2)\n",
            dir.path().join("nope.toml").display()
        )
    );
}

const COMMENTED: &str = r#"# My proxy. Hand-written; keep my comments!
[server]
listen   =   "127.0.0.1:8787"   # odd spacing survives

[secrets.gh]
env = "GH_TOKEN"     # from the environment

# GitHub, read-only.
[routes.github]
path = "/api/github/{*rest}"
upstream = "https://api.github.com/{rest}"
headers = {   Authorization = "Bearer ${gh}"   }

# Weather: no secret at all.
[routes.weather]
path = "/api/weather"
upstream = "https://api.example.com/weather"

# trailing notes
#   - indented
"#;

#[test]
fn route_add_then_remove_leaves_a_commented_file_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, COMMENTED).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    }

    let add = route_add(
        &path,
        "items",
        "/api/items/{id}",
        "https://items.example.com/v1/items/{id}",
        &[
            "--method",
            "get",
            "--method",
            "PUT",
            "--header",
            "X-Api-Key: ${gh}",
            "--header",
            "Accept: application/json",
            "--query",
            "token=${gh}",
        ],
    );
    assert_eq!(add.status.code(), Some(0), "{add:?}");
    let added = std::fs::read_to_string(&path).unwrap();
    let block = "\n[routes.items]\npath = \"/api/items/{id}\"\nmethods = [\"GET\", \"PUT\"]\nupstream = \"https://items.example.com/v1/items/{id}\"\nheaders = { X-Api-Key = \"${gh}\", Accept = \"application/json\" }\nquery = { token = \"${gh}\" }\n";
    let at = COMMENTED.find("\n# trailing notes").unwrap();
    assert_eq!(added, format!("{}{block}{}", &COMMENTED[..at], &COMMENTED[at..]));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "the write changed the file's permissions");
    }
    assert!(
        stdout(&add).contains("header            x-api-key: ${gh}"),
        "{}",
        stdout(&add)
    );

    let list = run(&["route", "list"], &path);
    assert_eq!(
        stdout(&list),
        "ROUTE    METHODS   PATH                 UPSTREAM                                 SECRETS\n\
         github   GET,HEAD  /api/github/{*rest}  https://api.github.com/{rest}            gh\n\
         items    GET,PUT   /api/items/{id}      https://items.example.com/v1/items/{id}  gh\n\
         weather  GET,HEAD  /api/weather         https://api.example.com/weather          -\n"
    );
    let show = run(&["route", "show", "items"], &path);
    assert_eq!(
        stdout(&show),
        "route             items\npath              /api/items/{id}\nmethods           GET, PUT\n\
         upstream          https://items.example.com/v1/items/{id}\nheader            accept: application/json\n\
         header            x-api-key: ${gh}\nquery             token=${gh}\n\
         strips            origin, referer, sec-gpc, dnt, sec-fetch-*, sec-ch-*\n\
         connect-timeout   10s\nresponse-timeout  1m\nsecret            gh: environment variable `GH_TOKEN`\n"
    );

    // With the secret set, check passes and no output shows its value.
    let check = binary()
        .args(["check", "--config"])
        .arg(&path)
        .env("GH_TOKEN", "ghp_cli_route_Secret_77")
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0), "{check:?}");
    let printed = [&add, &list, &show, &check]
        .iter()
        .map(|o| stdout(o) + &stderr(o))
        .collect::<String>();
    assert_no_secret(&printed, &["ghp_cli_route_Secret_77"], "command output");

    let remove = run(&["route", "remove", "items"], &path);
    assert_eq!(remove.status.code(), Some(0), "{remove:?}");
    assert_eq!(std::fs::read(&path).unwrap(), COMMENTED.as_bytes());

    // Removing a route in the middle takes its own comment and nothing else.
    let remove = run(&["route", "remove", "github"], &path);
    assert_eq!(remove.status.code(), Some(0));
    let expected = COMMENTED.replace(
        "\n# GitHub, read-only.\n[routes.github]\npath = \"/api/github/{*rest}\"\nupstream = \"https://api.github.com/{rest}\"\nheaders = {   Authorization = \"Bearer ${gh}\"   }\n",
        "",
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "temp files left: {leftovers:?}");
}

#[test]
fn invalid_route_edits_are_refused_and_the_file_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, COMMENTED).unwrap();
    let before = std::fs::metadata(&path).unwrap().modified().unwrap();

    let plain_http = route_add(&path, "bad", "/bad", "http://example.com/", &["--header", "X: ${gh}"]);
    assert_eq!(plain_http.status.code(), Some(78), "{plain_http:?}");
    assert_eq!(
        stderr(&plain_http),
        format!(
            "error: refused, {p} is unchanged: the edit would make the config invalid: {p}:21:12: routes.bad.upstream: plain http would send the secret unencrypted\n  help: use https, or set `allow-http = true` on this route if the network path is trusted\n",
            p = path.display()
        )
    );

    let unknown_secret = route_add(&path, "bad", "/bad", "https://x.example/", &["--query", "k=${nope}"]);
    assert_eq!(unknown_secret.status.code(), Some(78));
    assert!(stderr(&unknown_secret).contains("routes.bad.query.k: unknown secret `nope`"));

    let conflict = route_add(&path, "bad", "/api/weather", "https://x.example/", &[]);
    assert_eq!(conflict.status.code(), Some(78));
    assert!(
        stderr(&conflict).contains("routes.bad.path: conflicts with route `weather` (`/api/weather`)"),
        "{}",
        stderr(&conflict)
    );

    let exists = route_add(&path, "github", "/x", "https://x.example/", &[]);
    assert_eq!(exists.status.code(), Some(1));
    assert_eq!(
        stderr(&exists),
        "error: a route named `github` already exists; remove it first with `secretproxy route remove github`\n"
    );

    let not_there = run(&["route", "remove", "nope"], &path);
    assert_eq!(not_there.status.code(), Some(1));
    assert_eq!(
        stderr(&not_there),
        "error: no route named `nope`; routes are github, weather\n"
    );

    let malformed = route_add(&path, "bad", "/b", "https://x.example/", &["--header", "no colon"]);
    assert_eq!(malformed.status.code(), Some(2));

    assert_eq!(std::fs::read_to_string(&path).unwrap(), COMMENTED);
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), before);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn every_command_has_help_with_examples_and_completions_generate() {
    let commands: &[&[&str]] = &[
        &["serve"],
        &["init"],
        &["check"],
        &["route"],
        &["route", "list"],
        &["route", "show"],
        &["route", "add"],
        &["route", "remove"],
        &["secret"],
        &["secret", "set"],
        &["secret", "delete"],
        &["secret", "list"],
        &["completions"],
    ];
    for command in commands {
        let output = binary().args(*command).arg("--help").output().unwrap();
        assert!(output.status.success(), "{command:?}");
        assert!(
            stdout(&output).contains("Examples:"),
            "{command:?} --help has no examples"
        );
    }
    for shell in ["bash", "zsh", "fish"] {
        let output = binary().args(["completions", shell]).output().unwrap();
        assert!(output.status.success(), "{shell}");
        let script = stdout(&output);
        assert!(
            script.contains("secretproxy") && script.contains("remove"),
            "{shell}: {script}"
        );
    }
    let bad = binary().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let unknown = binary().arg("frobnicate").output().unwrap();
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn config_lookup_uses_the_environment_then_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("proxy.toml"),
        "[routes.here]\npath = \"/here\"\nupstream = \"https://x.example/\"\n",
    )
    .unwrap();
    let env_file = dir.path().join("other.toml");
    std::fs::write(
        &env_file,
        "[routes.env]\npath = \"/env\"\nupstream = \"https://x.example/\"\n",
    )
    .unwrap();
    let cwd = binary()
        .args(["route", "list"])
        .current_dir(dir.path())
        .env_remove("SECRETPROXY_CONFIG")
        .output()
        .unwrap();
    assert!(stdout(&cwd).contains("\nhere "), "{cwd:?}");
    let env = binary()
        .args(["route", "list"])
        .current_dir(dir.path())
        .env("SECRETPROXY_CONFIG", &env_file)
        .output()
        .unwrap();
    assert!(stdout(&env).contains("\nenv "), "{env:?}");
}
