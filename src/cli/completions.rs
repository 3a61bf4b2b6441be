//! `dht-store completions SHELL`: the shell completion script for every subcommand and flag,
//! generated from the clap definitions (clap_complete), printed to stdout.

use clap::CommandFactory;
use clap_complete::Shell;

use dht_store::Error;

use super::{Cli, FOUND};

pub fn print(shell: Shell) -> Result<u8, Error> {
    let mut cmd = Cli::command();
    let name = cmd.get_name().to_string();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    std::io::Write::flush(&mut out)?;
    Ok(FOUND)
}
