//! One module per feature of a route or of the daemon's own endpoints: its runtime layer, built
//! once per generation and run by the pipeline in its fixed phase.
//!
//! A feature imports only what sits below it (`configkit`, `upstream`, `http`, `secrets`) and
//! other features; it sees a route as a `configkit::RouteBase`, or through a narrow trait that
//! `config::Route` implements.

pub mod admin;
pub mod clients;
pub mod cors;
pub mod decode;
pub mod forwarded;
pub mod guard;
pub mod inject;
pub mod jq;
pub mod limit;
pub mod oauth2;
pub mod path;
pub mod ratelimit;
pub mod scrub;
pub mod sign;
pub mod static_site;
pub mod store;
pub mod transform;
pub mod validate;
pub mod webhooks;
pub mod websocket;
