//! All integration tests, in one binary: real upstreams on 127.0.0.1:0, the proxy in process or
//! as the built binary, and the real Secret Service (started by scripts/test).

mod browser;
mod config_fuzz;
mod daemon;
mod harness;
mod keyring;
mod proxy;
mod redteam;
