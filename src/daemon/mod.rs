//! The process around the pipeline: the accept loop and its framing sniffer, live reload,
//! systemd notification, shutdown and logging setup (the metrics registry is the pipeline's).

pub mod framing;
pub mod notify;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod telemetry;
