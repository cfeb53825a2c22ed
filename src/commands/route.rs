//! `secretproxy route list|show|add|remove`: read the route table, or edit it through
//! [`config::edit`] so the rest of the file stays as written.

use crate::cli::RouteCommand;
use crate::commands::check::routes_table;
use crate::commands::table::Table;
use crate::config::edit::{ConfigFile, NewRoute};
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
        RouteCommand::Add(args) => {
            let path = config::locate(args.config.config.as_deref())?;
            let mut file = ConfigFile::open(&path)?;
            file.add_route(&NewRoute {
                name: args.name.clone(),
                path: args.path,
                upstream: args.upstream,
                methods: args.methods,
                headers: args.headers,
                query: args.query,
            })?;
            let config = file.save()?;
            outln!("added route `{}` to {}", args.name, path.display());
            out!("{}", describe(&config, &args.name)?);
        }
        RouteCommand::Remove { name, config } => {
            let path = config::locate(config.config.as_deref())?;
            let mut file = ConfigFile::open(&path)?;
            file.remove_route(&name)?;
            file.save()?;
            outln!("removed route `{name}` from {}", path.display());
        }
    }
    Ok(())
}

/// One route in detail. Templates are shown with `${secret}` placeholders, never values.
fn describe(config: &Config, name: &str) -> anyhow::Result<Table> {
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
    if route.keep_set_cookie {
        table.row(["set-cookie", "passed to the client"]);
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
