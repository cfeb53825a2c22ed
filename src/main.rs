//! The `secretproxy` binary: parse the command line, run it, exit with its status.

use clap::Parser;

fn main() -> std::process::ExitCode {
    quiet_broken_pipe();
    secretproxy::run(secretproxy::cli::Cli::parse())
}

/// Command output goes through writes that ignore errors (see `outln!` in lib.rs); this is the
/// backstop for any print that still panics when the reader has gone (`... | head -1`): exit
/// quietly with 141, what a shell reports for a process ended by SIGPIPE, instead of a panic
/// message and 101. Rust ignores SIGPIPE, and restoring it needs `unsafe`, which the crate
/// forbids.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to std") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}
