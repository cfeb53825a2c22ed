//! `secretproxy route list|show|add|remove|test`: read the route table, or edit it through
//! [`config::edit`] so the rest of the file stays as written (`test`: `route_test.rs`).

use crate::cli::{RouteAddArgs, RouteCommand};
use crate::commands::check::routes_table;
use crate::commands::presets;
use crate::commands::table::Table;
use crate::config::edit::{ConfigFile, NewRoute, NewSecret};
use crate::config::{self, Config};

pub fn run(command: RouteCommand) -> anyhow::Result<()> {
    match command {
        RouteCommand::List { config } => {
            let config = config::load(&config::locate(config.config.as_deref())?)?;
            if config.routes.is_empty() {
                outln!("no routes; add one with `secretproxy route add NAME --path P --upstream U`");
            } else {
                out!("{}", routes_table(&config));
            }
        }
        RouteCommand::Show { name, config } => {
            let config = config::load(&config::locate(config.config.as_deref())?)?;
            out!("{}", describe(&config, &name)?);
        }
        RouteCommand::Add(args) => add(args)?,
        RouteCommand::Remove { name, config } => {
            let path = config::locate(config.config.as_deref())?;
            let mut file = ConfigFile::open(&path)?;
            file.remove_route(&name)?;
            file.save()?;
            outln!("removed route `{name}` from {}", path.display());
        }
        RouteCommand::Test(args) => super::route_test::run(args)?,
    }
    Ok(())
}

/// `route add`: a preset or explicit flags, plus `--bearer`; secrets named by `--bearer` or
/// the preset are declared (keyring) when the config lacks them, so one command finishes the
/// job and the next step is `secret set`.
fn add(args: RouteAddArgs) -> anyhow::Result<()> {
    let path = config::locate(args.config.config.as_deref())?;
    let mut file = ConfigFile::open(&path)?;
    let mut to_declare = Vec::new();
    let mut token_source = None;
    let mut route = match &args.preset {
        Some(id) => {
            let preset = presets::find(id)?;
            let secret = args.secret.clone().unwrap_or_else(|| preset.id.to_string());
            to_declare.extend(preset.secrets(&secret));
            token_source = preset.token_source(&args.name, &secret);
            preset.route(&args.name, &secret)
        }
        None => NewRoute {
            name: args.name.clone(),
            ..NewRoute::default()
        },
    };
    if let Some(p) = args.path {
        route.path = p;
    }
    if let Some(upstream) = args.upstream {
        route.upstream = upstream;
    }
    if !args.methods.is_empty() {
        route.methods = args.methods.iter().map(|m| m.trim().to_string()).collect();
    }
    if let Some(secret) = &args.bearer {
        route
            .headers
            .retain(|(name, _)| !name.eq_ignore_ascii_case("authorization"));
        route
            .headers
            .insert(0, ("Authorization".to_string(), format!("Bearer ${{{secret}}}")));
        to_declare.push(secret.clone());
    }
    for (name, template) in args.headers {
        route
            .headers
            .retain(|(existing, _)| !existing.eq_ignore_ascii_case(&name));
        route.headers.push((name, template));
    }
    for (name, template) in args.query {
        route.query.retain(|(existing, _)| *existing != name);
        route.query.push((name, template));
    }
    route.allow_http |= args.allow_http;
    // Secrets first, so a new `[secrets.X]` lands before the route that uses it.
    let mut declared = Vec::new();
    for secret in to_declare {
        if !file.has_secret(&secret) && !file.has_route(&route.name) {
            file.declare_secret(&secret, &NewSecret::Keyring(secret.clone()))?;
            declared.push(secret);
        }
    }
    if let Some(source) = &token_source {
        file.add_token_source(source)?;
    }
    file.add_route(&route)?;
    let config = file.save()?;
    outln!("added route `{}` to {}", args.name, path.display());
    out!("{}", describe(&config, &args.name)?);
    let flag = config_flag(&path);
    for secret in &declared {
        outln!("declared secret `{secret}` (OS keyring); store its value with: secretproxy secret set {secret}{flag}");
    }
    let example = args
        .preset
        .as_deref()
        .and_then(|id| presets::find(id).ok())
        .map_or("", |p| p.example);
    let client_path = route.path.replace("{*rest}", example);
    outln!(
        "see what a call sends (secrets masked): secretproxy route test {} '{client_path}'{flag}",
        args.name
    );
    Ok(())
}

/// ` --config PATH` for hints, unless the lookup finds `path` anyway.
pub(crate) fn config_flag(path: &std::path::Path) -> String {
    let found = config::locate(None).ok();
    if found.as_deref() == Some(path) {
        String::new()
    } else {
        format!(" --config {}", path.display())
    }
}

/// One route in detail. Templates are shown with `${secret}` placeholders, never values.
pub(crate) fn describe(config: &Config, name: &str) -> anyhow::Result<Table> {
    let Some(route) = config.route(name) else {
        let known: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        anyhow::bail!(
            "no route named `{name}`{}",
            if known.is_empty() {
                "; the config has no routes".to_string()
            } else {
                format!("; routes are {}", known.join(", "))
            }
        );
    };
    let methods: Vec<&str> = route.methods.iter().map(http::Method::as_str).collect();
    let mut table = Table::default();
    table
        .row(["route", &route.name])
        .row(["path", &route.path])
        .row(["methods", &methods.join(", ")])
        .row(["upstream".to_string(), route.upstream.to_string()]);
    for (header, template) in &route.headers {
        table.row(["header".to_string(), format!("{header}: {}", template.describe())]);
    }
    for (param, template) in &route.query {
        table.row(["query".to_string(), format!("{param}={}", template.describe())]);
    }
    for header in &route.forward_headers {
        table.row(["forwards".to_string(), header.to_string()]);
    }
    let strips = route.strip_headers.entries();
    table.row([
        "strips".to_string(),
        if strips.is_empty() {
            "nothing (strip-headers = [])".to_string()
        } else {
            strips.join(", ")
        },
    ]);
    if route.keep_set_cookie {
        table.row(["set-cookie", "passed to the client"]);
    }
    if route.allow_keyless {
        table.row(["keyless", "served without a client key (allow-keyless)"]);
    }
    if let Some(ca) = &route.ca_file {
        table.row(["ca-file".to_string(), ca.display().to_string()]);
    }
    table
        .row([
            "connect-timeout".to_string(),
            humantime::format_duration(route.connect_timeout).to_string(),
        ])
        .row([
            "response-timeout".to_string(),
            humantime::format_duration(route.response_timeout).to_string(),
        ]);
    for secret in &route.secrets {
        table.row(["secret".to_string(), format!("{secret}: {}", config.secrets[secret])]);
    }
    Ok(table)
}
