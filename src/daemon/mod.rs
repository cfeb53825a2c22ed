//! The process around the pipeline: the per-core workers and their accept loops, the HTTP/1.1
//! fast path, the framing sniffer, live reload, systemd notification, shutdown and logging setup (the metrics registry
//! is the pipeline's).

pub mod fast;
pub mod framing;
pub mod notify;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod telemetry;
