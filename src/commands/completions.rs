//! `secretproxy completions SHELL`: a completion script generated from the clap definition, so
//! it always matches the commands and flags of this build.

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs};

pub fn run(args: CompletionsArgs) -> anyhow::Result<()> {
    clap_complete::generate(args.shell, &mut Cli::command(), "secretproxy", &mut std::io::stdout());
    Ok(())
}
