use clap::Parser;

fn main() -> std::process::ExitCode {
    secretproxy::run(secretproxy::cli::Cli::parse())
}
