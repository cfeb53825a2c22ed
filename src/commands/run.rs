//! `secretproxy run [--routes a,b] -- CMD ARGS...`: run a command (an AI agent, a script, a
//! notebook) that reaches the APIs through the proxy and never holds a real key.
//!
//! 1. A fresh client key, scoped to `--routes` (default: all), is added to the state file as
//!    `run-<pid>-<tag>`; it is revoked when CMD exits, whatever the exit (errors, Ctrl-C,
//!    SIGTERM). Entries of earlier `run`s whose process is gone (killed with SIGKILL) are
//!    removed on the way.
//! 2. The daemon on the config's `listen` address is used when `/_secretproxy/health` answers;
//!    otherwise this binary's `serve` is started (in its own process group, so a Ctrl-C meant
//!    for CMD does not stop it) and stopped after CMD. Either way CMD starts only once the
//!    daemon accepts the new key.
//! 3. CMD's environment: this one, minus every variable the config reads as an `env` secret and
//!    every variable whose value equals a secret's value, plus the base URLs of the routes
//!    (`SECRETPROXY_URL`, `SECRETPROXY_<ROUTE>_URL`, and for preset routes the variables their
//!    SDKs read: `OPENAI_BASE_URL`, ...) and the key in `SECRETPROXY_TOKEN` and the SDKs' key
//!    variables, which those SDKs send as `Authorization: Bearer`, where the daemon swaps it for
//!    the real key.
//! 4. SIGINT, SIGTERM, SIGHUP and SIGQUIT are forwarded to CMD (SIGINT not when the terminal
//!    already sent it to CMD's process group); the exit status is CMD's, or 128+N when a signal
//!    N ended it.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::cli::RunArgs;
use crate::commands::client::{NewClient, add_client};
use crate::commands::presets::PRESETS;
use crate::config::{self, Config, Route};
use crate::features::clients;
use crate::secrets::{SecretSource, SecretStore, SystemStore};

/// The variables an SDK reads, for routes made from a preset.
struct SdkVars {
    preset: &'static str,
    /// Appended to the route's base URL (the OpenAI SDK expects `/v1` in its base URL).
    suffix: &'static str,
    base: &'static [&'static str],
    /// Set to the client key: the SDK sends it as `Authorization: Bearer` (or `token`).
    key: &'static [&'static str],
}

/// Presets whose SDKs take a base URL from the environment. Anthropic's SDK sends
/// `ANTHROPIC_AUTH_TOKEN` as Bearer (and `ANTHROPIC_API_KEY` in `x-api-key`, which the route's
/// injected header replaces). Gemini's SDK sends its key only in `x-goog-api-key`, so it gets no
/// key variable: give it `SECRETPROXY_TOKEN` yourself or mark the route `allow-keyless`.
const SDK_VARS: &[SdkVars] = &[
    SdkVars {
        preset: "openai",
        suffix: "/v1",
        base: &["OPENAI_BASE_URL", "OPENAI_API_BASE"],
        key: &["OPENAI_API_KEY"],
    },
    SdkVars {
        preset: "anthropic",
        suffix: "",
        base: &["ANTHROPIC_BASE_URL"],
        key: &["ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_API_KEY"],
    },
    SdkVars {
        preset: "github",
        suffix: "",
        base: &["GITHUB_API_URL"],
        key: &["GITHUB_TOKEN"],
    },
    SdkVars {
        preset: "mistral",
        suffix: "",
        base: &["MISTRAL_BASE_URL"],
        key: &["MISTRAL_API_KEY"],
    },
    SdkVars {
        preset: "gemini",
        suffix: "",
        base: &["GOOGLE_GEMINI_BASE_URL"],
        key: &[],
    },
];

/// How long a daemon started here may take to answer (it reads every secret first).
const START_LIMIT: Duration = Duration::from_secs(30);
/// How long a running daemon may take to load the new key (it watches the file: < 1 s).
const KEY_LIMIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(25);

pub fn run(args: RunArgs) -> anyhow::Result<u8> {
    let path = config::locate(args.config.config.as_deref())?;
    let config = config::load(&path)?;
    let routes: Vec<&Route> = if args.routes.is_empty() {
        config.routes.iter().collect()
    } else {
        args.routes.iter().filter_map(|name| config.route(name)).collect()
    };
    forget_dead_runs(&path);

    let mut tag = [0u8; 3];
    getrandom::fill(&mut tag).map_err(std::io::Error::other)?;
    let name = format!("run-{}-{}", std::process::id(), hex::encode(tag));
    let (key, _) = add_client(
        &path,
        &config,
        &NewClient {
            name: name.clone(),
            routes: args.routes.clone(),
            rate: None,
            daily: None,
            expires: None,
        },
    )?;
    let _revoke = Revoke {
        config: path.clone(),
        name: name.clone(),
    };

    let addr = probe_address(config.server.listen);
    let mut daemon = match probe(addr, &key) {
        Probe::Absent => Some(start_daemon(&path)?),
        Probe::Answered(_) => None,
        Probe::Other(status) => anyhow::bail!(
            "{addr} answers but is not a secretproxy of this config (HTTP {status} from /_secretproxy/health); check `[server] listen` in {}",
            path.display()
        ),
    };
    let ready = wait_for_key(addr, &key, &path, daemon.as_mut());
    if let Err(error) = ready {
        stop_daemon(daemon);
        return Err(error);
    }

    let env = child_env(&config, &routes, addr, &key);
    let code = run_command(&args.command, env);
    stop_daemon(daemon);
    code
}

/// Revokes the run's key when `run` ends, however it ends.
struct Revoke {
    config: PathBuf,
    name: String,
}

impl Drop for Revoke {
    fn drop(&mut self) {
        if let Err(error) = super::client::revoke(&self.config, &self.name) {
            eoutln!(
                "secretproxy: could not revoke client `{}`: {error:#}; revoke it with `secretproxy client revoke {}`",
                self.name,
                self.name
            );
        }
    }
}

/// Removes `run-<pid>-*` entries whose process no longer exists (a `run` killed by SIGKILL
/// could not revoke its key). Best effort.
fn forget_dead_runs(config: &Path) {
    let state = clients::state_path(config);
    let Ok(file) = clients::read_file(&state) else { return };
    let dead: Vec<String> = file
        .clients
        .keys()
        .filter(|name| {
            let pid = name
                .strip_prefix("run-")
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<i32>().ok());
            pid.is_some_and(|pid| !process_alive(pid))
        })
        .cloned()
        .collect();
    if dead.is_empty() {
        return;
    }
    let _ = clients::update(&state, |file| {
        for name in &dead {
            file.clients.remove(name);
        }
        Ok(())
    });
}

#[cfg(unix)]
fn process_alive(pid: i32) -> bool {
    match rustix::process::Pid::from_raw(pid) {
        Some(pid) => !matches!(rustix::process::test_kill_process(pid), Err(rustix::io::Errno::SRCH)),
        None => false,
    }
}

#[cfg(not(unix))]
fn process_alive(_pid: i32) -> bool {
    true
}

/// Where to reach the daemon: its listen address, with a wildcard replaced by loopback.
fn probe_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

enum Probe {
    /// Nothing listens.
    Absent,
    /// A secretproxy answered: 200 (key accepted) or 401 (key not loaded yet).
    Answered(u16),
    /// Something else answered.
    Other(u16),
}

/// `GET /_secretproxy/health` with the key, over a plain connection.
fn probe(addr: SocketAddr, key: &str) -> Probe {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return Probe::Absent;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let request = zeroize::Zeroizing::new(format!(
        "GET /_secretproxy/health HTTP/1.1\r\nHost: {addr}\r\nX-Secretproxy-Token: {key}\r\nConnection: close\r\n\r\n"
    ));
    if stream.write_all(request.as_bytes()).is_err() {
        return Probe::Other(0);
    }
    let mut head = [0u8; 12];
    if stream.read_exact(&mut head).is_err() {
        return Probe::Other(0);
    }
    let status = std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(0);
    match (&head[..5], status) {
        (b"HTTP/", 200 | 401) => Probe::Answered(status),
        _ => Probe::Other(status),
    }
}

/// Waits until the daemon accepts `key`, or fails with why not.
fn wait_for_key(
    addr: SocketAddr,
    key: &str,
    config: &Path,
    mut daemon: Option<&mut std::process::Child>,
) -> anyhow::Result<()> {
    let limit = if daemon.is_some() { START_LIMIT } else { KEY_LIMIT };
    let deadline = Instant::now() + limit;
    loop {
        if let Some(child) = daemon.as_deref_mut()
            && let Some(status) = child.try_wait()?
        {
            anyhow::bail!("the daemon started for the command exited ({status}); see its messages above");
        }
        match probe(addr, key) {
            Probe::Answered(200) => return Ok(()),
            Probe::Other(status) if daemon.is_none() => {
                anyhow::bail!("{addr} stopped answering as a secretproxy (HTTP {status})")
            }
            _ => {}
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the daemon at {addr} did not accept the new client key within {}s; is it serving {}? (it reads client keys from {})",
                limit.as_secs(),
                config.display(),
                clients::state_path(config).display()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Starts `secretproxy serve --config PATH` for the command's lifetime. It gets this process's
/// environment (it reads the `env` secrets) and stderr; only warnings are logged unless
/// `RUST_LOG` says otherwise.
fn start_daemon(config: &Path) -> anyhow::Result<std::process::Child> {
    let exe = std::env::current_exe().context("cannot find this program to start the daemon")?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "warn");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // Its own process group: a Ctrl-C in the terminal is for the command, not the daemon.
        command.process_group(0);
    }
    command.spawn().context("cannot start the daemon")
}

/// Stops a daemon started here (SIGTERM: it drains, then exits) and waits for it.
fn stop_daemon(daemon: Option<std::process::Child>) {
    let Some(mut child) = daemon else { return };
    #[cfg(unix)]
    {
        let pid = rustix::process::Pid::from_child(&child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(POLL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The command's environment: see the module docs.
fn child_env(config: &Config, routes: &[&Route], addr: SocketAddr, key: &str) -> Vec<(OsString, OsString)> {
    let secret_vars: Vec<&str> = config
        .secrets
        .values()
        .filter_map(|source| match source {
            SecretSource::Env(var) => Some(var.as_str()),
            _ => None,
        })
        .collect();
    // The values themselves, wherever they sit (a copy in another variable, a shell export).
    let values: Vec<secrecy::SecretString> = config
        .secrets
        .values()
        .filter_map(|source| SystemStore.fetch(source).ok())
        .collect();
    let holds_secret = |value: &OsStr| {
        let bytes = value.as_encoded_bytes();
        values
            .iter()
            .any(|secret| bool::from(bytes.ct_eq(secret.expose_secret().as_bytes())))
    };
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(name, value)| !secret_vars.iter().any(|var| OsStr::new(var) == name) && !holds_secret(value))
        .collect();
    let mut set = |name: &str, value: &str| {
        env.retain(|(n, _)| n != name);
        env.push((name.into(), value.into()));
    };
    let origin = format!("http://{addr}");
    set("SECRETPROXY_URL", &origin);
    set("SECRETPROXY_TOKEN", key);
    let mut done: Vec<&str> = Vec::new();
    for route in routes {
        let base = format!("{origin}{}", route_prefix(&route.path));
        let var = format!(
            "SECRETPROXY_{}_URL",
            route.name.to_ascii_uppercase().replace(['-', '.'], "_")
        );
        set(&var, &base);
        let Some(sdk) = preset_of(route).and_then(|id| SDK_VARS.iter().find(|s| s.preset == id)) else {
            continue;
        };
        if done.contains(&sdk.preset) {
            continue;
        }
        done.push(sdk.preset);
        for name in sdk.base {
            set(name, &format!("{base}{}", sdk.suffix));
        }
        for name in sdk.key {
            set(name, key);
        }
    }
    env
}

/// The literal start of a route's path, before its first parameter, without a trailing `/`:
/// `/api/openai/{*rest}` -> `/api/openai`.
fn route_prefix(path: &str) -> &str {
    let end = path.find('{').unwrap_or(path.len());
    path[..end].trim_end_matches('/')
}

/// The preset a route was made from: its name is a preset's id, or its upstream is the
/// preset's host.
fn preset_of(route: &Route) -> Option<&'static str> {
    if let Some(preset) = PRESETS.iter().find(|p| p.id == route.name) {
        return Some(preset.id);
    }
    let host = route.upstream.base.host_str()?;
    PRESETS
        .iter()
        .find(|p| {
            url::Url::parse(&p.upstream.replace("{rest}", ""))
                .ok()
                .is_some_and(|u| u.host_str() == Some(host))
        })
        .map(|p| p.id)
}

/// Runs CMD to its end, forwarding signals; its exit code, or 128+N for signal N.
fn run_command(command: &[OsString], env: Vec<(OsString, OsString)>) -> anyhow::Result<u8> {
    let (program, args) = command.split_first().context("no command given after `--`")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Installed before CMD starts: from then on no signal takes the default action (exit
        // without revoking the key).
        let mut signals = Signals::install()?;
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .env_clear()
            .envs(env)
            .spawn()
            .with_context(|| format!("cannot run `{}`", program.to_string_lossy()))?;
        let status = signals.wait_forwarding(&mut child).await?;
        Ok(exit_code(status))
    })
}

#[cfg(unix)]
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    async fn wait_forwarding(&mut self, child: &mut tokio::process::Child) -> anyhow::Result<std::process::ExitStatus> {
        use rustix::process::Signal;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(rustix::process::Pid::from_raw);
        let forward = |signal: Signal| {
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, signal);
            }
        };
        loop {
            tokio::select! {
                status = child.wait() => return Ok(status?),
                _ = self.int.recv() => {
                    if !terminal_sent_it() {
                        forward(Signal::INT);
                    }
                }
                _ = self.term.recv() => forward(Signal::TERM),
                _ = self.hup.recv() => forward(Signal::HUP),
                _ = self.quit.recv() => forward(Signal::QUIT),
            }
        }
    }
}

/// True when this process is in the terminal's foreground group: a Ctrl-C there reached the
/// command (same group) already, and a second SIGINT would interrupt its cleanup.
#[cfg(unix)]
fn terminal_sent_it() -> bool {
    rustix::termios::tcgetpgrp(std::io::stdin()).is_ok_and(|group| group == rustix::process::getpgrp())
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals)
    }

    async fn wait_forwarding(&mut self, child: &mut tokio::process::Child) -> anyhow::Result<std::process::ExitStatus> {
        Ok(child.wait().await?)
    }
}

fn exit_code(status: std::process::ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        return u8::try_from(code & 0xff).unwrap_or(1);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return u8::try_from(128 + signal).unwrap_or(255);
        }
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sdk_entry_names_a_preset() {
        for sdk in SDK_VARS {
            assert!(PRESETS.iter().any(|p| p.id == sdk.preset), "{}", sdk.preset);
        }
    }

    #[test]
    fn prefixes_and_presets() {
        assert_eq!(route_prefix("/api/openai/{*rest}"), "/api/openai");
        assert_eq!(route_prefix("/api/weather"), "/api/weather");
        let config = Config::parse(
            "[secrets.k]\nenv = \"K\"\n\
             [routes.llm]\npath = \"/llm/{*rest}\"\nupstream = \"https://api.openai.com/{rest}\"\nauth = { bearer = \"k\" }\n\
             [routes.openai]\npath = \"/o/{*rest}\"\nupstream = \"http://127.0.0.1:9/{rest}\"\n\
             [routes.other]\npath = \"/x\"\nupstream = \"https://example.com/\"\n",
            "t",
        )
        .unwrap();
        let presets: Vec<Option<&str>> = config.routes.iter().map(preset_of).collect();
        assert_eq!(presets, [Some("openai"), Some("openai"), None]);
    }

    #[test]
    fn wildcards_are_probed_on_loopback() {
        assert_eq!(
            probe_address("0.0.0.0:8787".parse().unwrap()),
            "127.0.0.1:8787".parse().unwrap()
        );
        assert_eq!(probe_address("[::]:1".parse().unwrap()), "[::1]:1".parse().unwrap());
    }
}
