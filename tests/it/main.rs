//! All integration tests, in one binary: real upstreams on 127.0.0.1:0, the proxy in process or
//! as the built binary, and the real Secret Service (started by scripts/test).

mod admin;
mod api_shape;
mod api_static;
mod api_transform;
mod api_uploads;
mod api_validate;
mod api_webhooks;
mod browser;
mod cli;
mod cli_jobs;
mod cli_messages;
mod cli_secret;
mod config_fuzz;
mod daemon;
mod harness;
mod jq_conformance;
mod keyring;
mod kubernetes;
mod oauth2;
mod presets;
mod proxy;
mod quickstart;
mod redteam;
mod redteam_limits;
mod redteam_path;
mod redteam_scrub;
mod refusals;
mod reload;
mod reload_state;
mod service;
mod websocket;
