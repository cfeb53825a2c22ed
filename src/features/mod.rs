//! One module per feature of a route or of the daemon's own endpoints: its runtime layer, built
//! once per generation and run by the [`crate::pipeline`] in its fixed phase.

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
