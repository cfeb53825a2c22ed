//! `secretproxy init`: write a small, commented starter config that parses as written.
//! `proxy.toml.example` is the full reference; this is the shortest useful file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cli::InitArgs;
use crate::config::edit::write_atomic;

/// The starter config. A unit test parses it.
pub const STARTER: &str = r#"# secretproxy configuration. Full reference: proxy.toml.example and the README.
# Secret VALUES never go in this file, only where to find them.
# A running daemon reloads this file when it changes; check it with `secretproxy check`.

[server]
# Loopback only: nothing but this machine can call the proxy.
listen = "127.0.0.1:8787"
# How long in-flight requests may run on after SIGTERM/SIGINT.
shutdown-timeout = "30s"

# A secret from the OS keyring (service "secretproxy", account "github").
# Store its value with:  secretproxy secret set github
[secrets.github]
keyring = "github"

# GET http://127.0.0.1:8787/api/github/user  ->  https://api.github.com/user with the token.
# Add more with `secretproxy route add NAME --path P --upstream U --header 'Name: template'`.
[routes.github]
path = "/api/github/{*rest}"
methods = ["GET", "HEAD"]
upstream = "https://api.github.com/{rest}"
headers = { Authorization = "Bearer ${github}", X-GitHub-Api-Version = "2022-11-28" }
"#;

pub fn run(args: InitArgs) -> anyhow::Result<()> {
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
        write_atomic(&path, STARTER).with_context(|| format!("cannot write {}", path.display()))?;
    } else {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        file.write_all(STARTER.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let flag = config_flag(&path);
    outln!("wrote {}", path.display());
    outln!("next:");
    outln!("  secretproxy secret set github{flag}   # paste a GitHub token");
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
        let config = crate::config::Config::parse(STARTER, "proxy.toml").unwrap();
        assert_eq!(config.routes.len(), 1);
        assert_eq!(config.server.shutdown_timeout, std::time::Duration::from_secs(30));
    }
}
