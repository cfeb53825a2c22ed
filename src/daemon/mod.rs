//! The process around the pipeline: the accept loop and its framing sniffer, live reload,
//! systemd notification, shutdown, logging setup and metrics.

pub mod framing;
pub mod metrics;
pub mod notify;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod telemetry;
