//! `secretproxy init`: write a small, commented starter config that parses as written.
//! `proxy.toml.example` is the full reference; this is the shortest useful file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cli::InitArgs;
use crate::config::edit::write_atomic;

/// The starter config for the given page origins and static directory. Both are always
/// mentioned: written when given, commented out with an example when not. A unit test parses
/// every variant.
pub fn starter(origins: &[String], static_dir: Option<&str>) -> String {
    let origins_line = if origins.is_empty() {
        "# allowed-origins = [\"http://localhost:5173\"]".to_string()
    } else {
        let quoted: Vec<String> = origins.iter().map(|o| toml_string(o)).collect();
        format!("allowed-origins = [{}]", quoted.join(", "))
    };
    let static_line = match static_dir {
        Some(dir) => format!("static-dir = {}", toml_string(dir)),
        None => "# static-dir = \"dist\"".to_string(),
    };
    format!(
        r#"# secretproxy configuration. Full reference: proxy.toml.example and the README.
# Secret VALUES never go in this file, only where to find them.
# A running daemon reloads this file when it changes; check it with `secretproxy check`.

[server]
# Loopback only: nothing but this machine can call the proxy.
listen = "127.0.0.1:8787"
# The exact origins (scheme://host:port) of the pages allowed to call from a browser. Any other
# page is refused with 403. `localhost` and `127.0.0.1` are different origins: list the one in
# the browser's address bar.
{origins_line}
# Serve the built site from this directory at `/`, on the same origin as the routes (then the
# page needs no allowed-origins entry). Relative to this file.
{static_line}
# How long in-flight requests may run on after SIGTERM/SIGINT.
shutdown-timeout = "30s"

# Routes: add one for a known API with a preset (openai, anthropic, github, stripe, gemini,
# mistral, sendgrid, openweathermap), which also declares its secret:
#   secretproxy route add openai --preset openai
#   secretproxy secret set openai
# or by hand, as in this example (remove the leading `# ` to use it):
#
# [secrets.github]         # the OS keyring, service "secretproxy", account "github"
# keyring = "github"
#
# # GET http://127.0.0.1:8787/api/github/user  ->  https://api.github.com/user with the token.
# [routes.github]
# path = "/api/github/{{*rest}}"
# methods = ["GET", "HEAD"]
# upstream = "https://api.github.com/{{rest}}"
# headers = {{ Authorization = "Bearer ${{github}}", X-GitHub-Api-Version = "2022-11-28" }}
"#
    )
}

/// `text` as a TOML string, quoted and escaped.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// Asks on the terminal for what was not given as a flag. Empty answers keep the default.
fn ask(args: &mut InitArgs) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal};
    if args.no_input || !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Ok(());
    }
    let line = |question: &str| -> anyhow::Result<String> {
        eprint!("{question}");
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        Ok(answer.trim().to_string())
    };
    if args.origins.is_empty() {
        let answer = line("origin of the page that calls the proxy (e.g. http://localhost:5173; empty: none): ")?;
        if !answer.is_empty() {
            args.origins.push(answer);
        }
    }
    if args.static_dir.is_none() {
        let answer = line("directory of built pages to serve at / (e.g. dist; empty: none): ")?;
        if !answer.is_empty() {
            args.static_dir = Some(answer);
        }
    }
    Ok(())
}

pub fn run(mut args: InitArgs) -> anyhow::Result<()> {
    ask(&mut args)?;
    for origin in &args.origins {
        crate::configkit::access::normalize_origin(origin).map_err(|message| anyhow::anyhow!("--origin: {message}"))?;
    }
    let text = starter(&args.origins, args.static_dir.as_deref());
    let path = args
        .config
        .or_else(|| {
            std::env::var_os("SECRETPROXY_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("proxy.toml"));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if path.exists() {
        if !args.force {
            anyhow::bail!("{} already exists; pass --force to replace it", path.display());
        }
        write_atomic(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    } else {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        file.write_all(text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut created = None;
    if let Some(dir) = &args.static_dir {
        let site = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(parent) if Path::new(dir).is_relative() => parent.join(dir),
            _ => PathBuf::from(dir),
        };
        if !site.is_dir() {
            // The config names it, so it must exist for the config to be valid; the build fills it.
            std::fs::create_dir_all(&site).with_context(|| format!("cannot create {}", site.display()))?;
            created = Some(site);
        }
    }
    let flag = config_flag(&path);
    outln!("wrote {}", path.display());
    if let Some(site) = created {
        outln!("created {} (empty; your build writes the site there)", site.display());
    }
    outln!("next:");
    outln!("  secretproxy route add openai --preset openai{flag}   # or github, stripe, ... (route add --help)");
    outln!("  secretproxy secret set openai{flag}   # paste the key; it is not echoed");
    outln!("  secretproxy check{flag}");
    outln!("  secretproxy serve{flag}");
    Ok(())
}

/// ` --config PATH` for hints, unless `PATH` is what the lookup finds anyway.
fn config_flag(path: &Path) -> String {
    if path == Path::new("proxy.toml") || std::env::var_os("SECRETPROXY_CONFIG").is_some_and(|v| v == path.as_os_str())
    {
        String::new()
    } else {
        format!(" --config {}", path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starter_config_parses() {
        let plain = starter(&[], None);
        assert!(plain.contains("# allowed-origins = [") && plain.contains("# static-dir = "));
        let config = crate::config::Config::parse(&plain, "proxy.toml").unwrap();
        assert!(config.routes.is_empty());
        // The commented example is valid once uncommented.
        let example: String = plain
            .lines()
            .skip_while(|l| !l.starts_with("# [secrets.github]"))
            .map(|l| format!("{}\n", l.strip_prefix("# ").or(l.strip_prefix('#')).unwrap_or(l)))
            .collect();
        let config = crate::config::Config::parse(&example, "proxy.toml").unwrap();
        assert_eq!(config.routes.len(), 1);
        assert_eq!(config.server.shutdown_timeout, std::time::Duration::from_secs(30));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("dist")).unwrap();
        let name = dir.path().join("proxy.toml").display().to_string();
        let full = starter(&["http://localhost:5173".into()], Some("dist"));
        let config = crate::config::Config::parse(&full, &name).unwrap();
        assert_eq!(config.server.access.allowed_origins, ["http://localhost:5173"]);
        assert!(config.server.static_site.is_some());
    }
}
