//! `secretproxy completions SHELL`: a completion script generated from the clap definition, so
//! it always matches the commands and flags of this build.

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs};

pub fn run(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "secretproxy", &mut script);
    // Written in one go with the error ignored: `completions bash | head` must not panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
    Ok(())
}
